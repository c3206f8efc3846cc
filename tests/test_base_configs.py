"""`python -m experiments.train experiment=<name>` runs a cell of that experiment's main table (issue 32): the base
config, composed as the one-run CLI composes it, is the same run (same run id) as one of the configs the planner
plans for the table's profile — not a point outside the grid such as SimLoss at l = 0 on the GloVe S."""
from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from experiments.drivers import runner
from experiments.drivers.catalog import CONF_DIR, discover
from experiments.drivers.train import RunSpec, compose_config

PREFERRED = ("default", "full", "paper", "smoke")      # the profile whose plan is searched: the one a user meets first


def _marked(path) -> object:
    """The experiments of the default profile in the fast suite (~0.6 s each), the others (full, paper) slow."""
    main = OmegaConf.to_container(OmegaConf.load(path)).get("tables", {}).get("main") or {}
    fast = "default" in (main.get("profiles") or [])
    marks = [] if fast else [pytest.mark.slow]
    return pytest.param(path.stem, marks=marks)


EXPERIMENTS = [_marked(p) for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))]


def _could_be(overrides: list[str], choices: dict[str, str], seed: int) -> bool:
    """False when an override picks another config-group option or seed than the base config has (such a point
    cannot be the base run; skipping it saves composing it). The profile is no part of a run (results.VOLATILE_KEYS)."""
    for o in OverridesParser.create().parse_overrides(overrides):
        key, value = o.key_or_group, o.value()
        if key == "seed" and str(value) != str(seed):
            return False
        if key in choices and key != "profile" and isinstance(value, str) and value != choices[key]:
            return False
    return True


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_base_config_is_a_cell_of_the_main_table(name, tmp_path):
    paths = [f"results_dir={tmp_path}", f"data_dir={tmp_path / 'data'}"]
    base = RunSpec.of(*compose_config([f"experiment={name}", *paths]))
    main = base.resolved["tables"]["main"]
    profile = next(p for p in PREFERRED if p in main.get("profiles", []))
    (exp,) = discover(profile, [name], str(tmp_path / "data"))
    composer, planned = runner.Composer(), []
    for point in runner.expand(exp, profile, tmp_path):
        if _could_be(point.overrides, base.choices, base.cfg.seed):
            spec = RunSpec.of(*composer(point.overrides))
            planned.append(spec.run_id)
            if spec.run_id == base.run_id:
                break
    assert base.run_id in planned, (f"experiment={name}: its base config is none of the {profile} profile's planned "
                                    f"configs of the same group choices and seed ({len(planned)} compared)")
    where = (main.get("options") or {}).get("where") or {}
    flat = _flat(base.resolved)
    assert all(str(flat.get(k, base.choices.get(k))) == str(v) for k, v in where.items()), \
        f"experiment={name}: the base config is a cell of another table than main ({where})"
