"""Every option of every config group composes, validates and instantiates (catches broken `_target_`s)."""
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.drivers.catalog import SWEEP_PROFILES, in_profile
from experiments.engine.config import (
    build_schedule,
    check_target,
    dataset_node,
    validate,
)

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ["dataset", "model", "loss", "optim", "schedule", "trainer", "preset", "profile", "experiment",
          "hparams_search"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_validates(compose, group, option):
    cfg, choices = compose(f"{group}={option}", shrink=False)
    assert choices[group] == option
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate(cfg)
    build_schedule(cfg)
    check_target(dataset_node(cfg), "dataset")


def test_a_sweep_runs_in_the_profiles_it_names():
    sweeps = [{"loss": "ce"}, {"loss": "cce", SWEEP_PROFILES: "full,paper"}, {"loss": "cot", SWEEP_PROFILES: ["smoke"]}]
    assert in_profile(sweeps, "default") == [{"loss": "ce"}]
    assert in_profile(sweeps, "paper") == [{"loss": "ce"}, {"loss": "cce"}]
    assert in_profile(sweeps, "smoke") == [{"loss": "ce"}, {"loss": "cot"}]
    assert sweeps[1][SWEEP_PROFILES] == "full,paper"   # the experiment's own list is not changed


def test_experiment_sweeps_and_tables_are_well_formed(compose):
    groups = ("loss", "dataset", "model", "optim", "schedule", "preset")
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        cfg, _ = compose(f"experiment={path.stem}", shrink=False)
        assert cfg.experiment_name, path
        assert "main" in cfg.tables, f"{path.name}: tables.main missing"
        for sweep in cfg.get("sweeps") or []:
            chosen = [f"{k}={str(v).split(',')[0]}" for k, v in sweep.items()
                      if k in groups and re.fullmatch(r"[\w.-]+", str(v).split(",")[0])]
            swept = compose(f"experiment={path.stem}", *chosen, shrink=False)[0] if chosen else cfg
            for key in sweep:  # every swept key exists in the config composed with the sweep's group choices
                assert key in groups or key == SWEEP_PROFILES or OmegaConf.select(swept, key.lstrip("~"), default="__missing__") != \
                    "__missing__", f"{path.name}: {key}"
