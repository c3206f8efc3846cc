"""Every loss × every offline dataset for one short epoch: completed runs satisfy the metric invariants, and a
pair that cannot run is refused with one `error:` line (CLI) — never a silent wrong number."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.engine.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
LOSSES = sorted(p.stem for p in (ROOT / "conf" / "loss").glob("*.yaml"))


def _sweeps(compose) -> dict[str, list[str]]:
    cfg, _ = compose("experiment=matrix")
    out = {}
    for sweep in OmegaConf.to_container(cfg.sweeps, resolve=False):
        out[sweep["dataset"]] = [f"{k}={v}" for k, v in sweep.items() if k not in ("loss", "seed")]
    return out


def check_invariants(rec: dict) -> None:
    metrics, info = rec["metrics"], rec["metric_info"]
    c = rec["data"]["num_classes"]
    for name, value in metrics.items():
        if value is None:
            continue
        leaf = name.split("/", 1)[1]
        if info[leaf]["unit"] == "fraction":
            assert -1e-9 <= value <= 1 + 1e-9, (name, value)
        if leaf.startswith(("mae", "mistake_severity")) and rec["dataset"] == "synthetic_age":
            assert 0 <= value <= c - 1, (name, value)
        if "_size@" in leaf or leaf.startswith("avgk_size"):
            assert 0 <= value <= c, (name, value)
    for k in rec["config"]["avgk"]["eval_ks"]:
        size = metrics.get(f"val/avgk_size@{k}")
        if size is not None:
            assert abs(size - k) <= 1, (k, size)


@pytest.mark.parametrize("dataset", ["synthetic_age", "synthetic_cifar", "synthetic_cifar10", "plantnet_like",
                                     "digits"])
def test_every_loss_runs_or_is_refused(dataset, compose, results_dir):
    from experiments.drivers.train import run

    extra = _sweeps(compose)[dataset]
    refused = []
    for loss in LOSSES:
        cfg, choices = compose("experiment=matrix", f"loss={loss}", *extra, "dataset.scale=0.25",
                               "trainer.batch_size=128")
        try:
            rec = run(cfg, choices, log=lambda *a: None)
        except UserError:
            refused.append(loss)
            continue
        assert rec["status"] == "completed", (loss, rec.get("error"))
        check_invariants(rec)
    for loss in refused[:2]:
        _assert_one_line_refusal(["experiment=matrix", f"loss={loss}", *extra], results_dir)


def _assert_one_line_refusal(overrides: list[str], results_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOSSLAB_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "experiments.train", *overrides, "profile=smoke",
                           "trainer.epochs=1", f"results_dir={results_dir}", "trainer.progress=off"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_expected_age_of_independent_scores_is_within_the_label_range(train_run):
    rec = train_run("dataset=synthetic_age", "loss=an")
    assert "renormalised" in rec["metric_notes"]["age_expected"]
    assert 0 <= rec["metrics"]["test/mae_expected"] <= rec["data"]["num_classes"] - 1
    assert not math.isnan(rec["metrics"]["test/mae_expected"])
