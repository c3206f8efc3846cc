"""Fixtures that compose the real config (conf/) and shrink it, in the lightning-hydra-template manner."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from experiments.drivers.train import compose_config, run  # noqa: E402

torch.set_num_threads(1)

# Applied before the test's own overrides: one thread, tiny stand-ins, few epochs, no progress bar.
SHRINK = ("profile=smoke", "trainer.epochs=1", "trainer.progress=off", "trainer.num_workers=0",
          "trainer.checkpoint_every_s=0")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Shared across the session so generated stand-ins are cached once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"


@pytest.fixture
def compose(data_dir, results_dir):
    def _compose(*overrides: str, shrink: bool = True):
        base = (SHRINK if shrink else ()) + (f"data_dir={data_dir}", f"results_dir={results_dir}")
        return compose_config(list(base) + list(overrides))

    return _compose


@pytest.fixture
def train_run(compose):
    """Run one shrunk config in-process; returns the run record (as written to the results store)."""

    def _run(*overrides: str, shrink: bool = True) -> dict:
        cfg, choices = compose(*overrides, shrink=shrink)
        return run(cfg, choices, log=lambda *a, **k: None)

    return _run
