"""The training budget: one top-level factor (`budget`, default 1) that scales a run's training length.

Every option measured in epochs or optimisation steps is multiplied by `budget` and rounded up: the trainer's
(`TRAINER_OPTIONS`; the trainer section has no `_target_` to declare them) and those a `_target_` class declares
in its own `EPOCH_OPTIONS` (a schedule's warm-up epochs and milestones, LDAM-DRW's switch epoch, the two-head
warm-up).
Schedules defined as fractions of the run (cosine, one-cycle, `drw_fraction`) stretch with `trainer.epochs`.

`apply_budget` runs once where a run's config is final (all overrides applied), so the resolved config that the
run id hashes carries the scaled values and the budget itself: a run at another budget is another run.
"""
from __future__ import annotations

import math
from typing import Any

import hydra.utils
from omegaconf import DictConfig, ListConfig, open_dict

from experiments.engine.errors import UserError

KEY = "budget"
TRAINER_OPTIONS = ("epochs", "min_steps", "patience")   # trainer.* in epochs or steps (tests check the schema)


def factor(value: Any) -> float:
    """The budget as a float > 0; a bad value is refused with one line naming the key."""
    number = None if isinstance(value, bool) else _number(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise UserError(f"{KEY}={value!r}: must be a number > 0 (the factor on every run's training length), "
                        f"e.g. {KEY}=2")
    return number


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def scaled(value: int, budget: float) -> int:
    """`value` × budget rounded up; the product is rounded to 9 decimals first so that 10 × 1.1 is 11, not 12."""
    return math.ceil(round(value * budget, 9))


def _declared(node: DictConfig) -> tuple[str, ...]:
    """The options a `_target_` node's class declares as epoch-valued; none if it does not import (the run's
    validation reports that with its own message)."""
    try:
        target = hydra.utils.get_object(str(node._target_))
    except Exception:  # noqa: BLE001 — validation names the bad target later
        return ()
    return tuple(getattr(target, "EPOCH_OPTIONS", ()))


def _targets(node: Any):
    """Every `_target_` node under `node`, depth first (values are not resolved on the way)."""
    if isinstance(node, DictConfig) and "_target_" in node:
        yield node
    if isinstance(node, (DictConfig, ListConfig)):
        for key in (node.keys() if isinstance(node, DictConfig) else range(len(node))):
            yield from _targets(node._get_node(key))


def _scale_options(node: DictConfig, options: tuple[str, ...], budget: float) -> None:
    for key in options:
        value = node.get(key) if key in node else None
        if value is None:
            continue
        if isinstance(value, ListConfig):
            node[key] = [scaled(int(v), budget) for v in value]
        else:
            node[key] = scaled(int(value), budget)


def apply_budget(cfg: DictConfig) -> DictConfig:
    """Scale `cfg` in place by its `budget` (absent = 1) and store the budget as a float, so `budget=2` and
    `budget=2.0` are one run. Call it once per config, after every override (it does not know whether it ran)."""
    budget = factor(cfg.get(KEY, 1))
    with open_dict(cfg):
        cfg[KEY] = budget
        if budget == 1.0:
            return cfg
        if isinstance(cfg.get("trainer"), DictConfig):
            _scale_options(cfg.trainer, TRAINER_OPTIONS, budget)
        for node in list(_targets(cfg)):
            _scale_options(node, _declared(node), budget)
    return cfg


def at_budget(runs, budget: float):
    """The rows of a runs DataFrame (`load_runs`) trained at `budget`; a run without the key ran at 1."""
    if KEY not in runs:
        return runs if float(budget) == 1.0 else runs.iloc[:0]
    return runs[runs[KEY].astype(float).fillna(1.0) == float(budget)]
