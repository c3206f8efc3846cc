"""Model selection on validation and early stopping.

The selection metric is a `val/` metric (or `last`); its direction comes from the metric's declared `Measure`
(`trainer.select_mode=auto`), never from its name. The weights of the best epoch so far are kept on the CPU; an
epoch whose value is NaN never replaces a finite best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from experiments.engine.data import Data
from experiments.engine.errors import UserError
from experiments.engine.metrics import Metric, measure_of
from experiments.engine.schemas import TrainerConfig


def select_mode(cfg: TrainerConfig, metrics: dict[str, Metric]) -> str:
    """`min`/`max` for the selection metric: as configured, or (auto) from the metric's declared direction."""
    if cfg.select_mode != "auto" or cfg.select_metric == "last":
        return "max" if cfg.select_mode == "auto" else cfg.select_mode
    measure = measure_of(metrics, cfg.select_metric)
    if measure is None or measure.higher_is_better is None:
        raise UserError(f"trainer.select_metric={cfg.select_metric}: no metric of this run reports it with a "
                        f"declared direction; pick another (e.g. val/accuracy) or set trainer.select_mode=min|max")
    return "max" if measure.higher_is_better else "min"


def selection_mode(cfg: TrainerConfig, data: Data, metrics: dict[str, Metric]) -> str:
    """`select_mode`, after refusing a validation metric on a dataset without a validation split."""
    if len(data.val) == 0 and cfg.select_metric != "last":
        raise UserError(f"this dataset has no validation split, so trainer.select_metric={cfg.select_metric} "
                        f"cannot be computed; set trainer.select_metric=last or give the dataset a validation "
                        f"split (dataset.val_per_class / dataset.val_fraction)")
    return select_mode(cfg, metrics)


def better(value: float, best: float | None, mode: str) -> bool:
    if best is None or (math.isnan(best) and not math.isnan(value)):
        return True
    if math.isnan(value):
        return False
    return value < best if mode == "min" else value > best


@dataclass
class Selection:
    """The best epoch so far and the early-stopping count; `SAVED` fields go into the checkpoint as they are."""

    metric: str
    mode: str
    patience: int | None = None
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "value": None, "state": None})
    bad_epochs: int = 0
    stopped_early: bool = False

    SAVED = ("best", "bad_epochs", "stopped_early")

    def update(self, row: dict[str, Any], epoch: int, model: nn.Module) -> float:
        """Keep `model`'s weights if 0-based `epoch` (its validation `row`) is the best so far; returns this
        epoch's value of the selection metric and decides on early stopping."""
        if self.metric != "last" and self.metric not in row:
            raise UserError(f"trainer.select_metric={self.metric} is not computed; available: "
                            f"{', '.join(sorted(k for k in row if k.startswith('val/')))}")
        value = float(epoch) if self.metric == "last" else row[self.metric]
        value = float("nan") if value is None else value
        if better(value, self.best["value"], self.mode):
            self.best = {"epoch": epoch + 1, "value": value,
                         "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.stopped_early = self.patience is not None and self.bad_epochs >= self.patience
        return value
