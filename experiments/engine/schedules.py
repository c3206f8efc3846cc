"""Learning-rate schedules: a factor of the base learning rate per epoch, wrapped by the trainer in a LambdaLR.

Each class is the `_target_` of a file in conf/schedule/ (`schedule=cosine`, options as `schedule.<key>`) and is
called as `schedule(epoch, epochs)` with a 0-based epoch. `warmup_epochs` (every schedule but OneCycle) multiplies
the factor of epoch e < warmup_epochs by (e + 1) / warmup_epochs: a linear warm-up, per epoch.
"""
from __future__ import annotations

import math
from typing import Sequence

from experiments.engine.errors import UserError


class Schedule:
    """Constant factor 1 after the warm-up."""

    EPOCH_OPTIONS: tuple[str, ...] = ("warmup_epochs",)   # options in epochs: `budget` scales them

    def __init__(self, warmup_epochs: int = 0):
        if warmup_epochs < 0:
            raise UserError(f"schedule.warmup_epochs={warmup_epochs}: must be ≥ 0")
        self.warmup_epochs = int(warmup_epochs)

    def __call__(self, epoch: int, epochs: int) -> float:
        f = self.factor(epoch, epochs)
        if epoch < self.warmup_epochs:
            f *= (epoch + 1) / self.warmup_epochs
        return f

    def factor(self, epoch: int, epochs: int) -> float:
        return 1.0


Constant = Schedule


class MultiStep(Schedule):
    """× gamma at each milestone epoch, or the absolute `factors` (one per milestone) when given."""

    EPOCH_OPTIONS = ("warmup_epochs", "milestones")

    def __init__(self, milestones: Sequence[int] = (), gamma: float = 0.1, factors: Sequence[float] | None = None,
                 warmup_epochs: int = 0):
        super().__init__(warmup_epochs)
        if sorted(milestones) != list(milestones):
            raise UserError(f"schedule.milestones={list(milestones)}: must be increasing epochs")
        if factors is not None and len(factors) != len(milestones):
            raise UserError(f"schedule.factors has {len(factors)} entries but schedule.milestones has "
                            f"{len(milestones)}; give one factor per milestone")
        if gamma <= 0:
            raise UserError(f"schedule.gamma={gamma}: must be > 0")
        self.milestones, self.gamma = [int(m) for m in milestones], float(gamma)
        self.factors = None if factors is None else [float(f) for f in factors]

    def factor(self, epoch: int, epochs: int) -> float:
        passed = sum(epoch >= m for m in self.milestones)
        if not passed:
            return 1.0
        return self.factors[passed - 1] if self.factors is not None else self.gamma ** passed


class Cosine(Schedule):
    """Half a cosine from 1 after the warm-up down towards `final`, which the epoch after the last would reach."""

    def __init__(self, warmup_epochs: int = 0, final: float = 0.0):
        super().__init__(warmup_epochs)
        if not 0.0 <= final <= 1.0:
            raise UserError(f"schedule.final={final}: must be in [0, 1] (a fraction of optim.lr)")
        self.final = float(final)

    def factor(self, epoch: int, epochs: int) -> float:
        span = max(epochs - self.warmup_epochs, 1)
        cos = 0.5 * (1 + math.cos(math.pi * max(epoch - self.warmup_epochs, 0) / span))
        return self.final + (1.0 - self.final) * cos


class OneCycle(Schedule):
    """One cycle per run, by epoch (after torch's OneCycleLR): linear from 1/div_factor up to 1 at the epoch
    nearest `pct_start` of the run, then half a cosine down to 1/(div_factor·final_div_factor) at the last epoch."""

    EPOCH_OPTIONS = ()   # fractions of the run only

    def __init__(self, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4):
        super().__init__(0)
        if not 0.0 <= pct_start < 1.0 or div_factor < 1 or final_div_factor < 1:
            raise UserError(f"schedule: pct_start={pct_start} must be in [0, 1), div_factor={div_factor} and "
                            f"final_div_factor={final_div_factor} ≥ 1")
        self.pct_start, self.start = float(pct_start), 1.0 / div_factor
        self.end = self.start / final_div_factor

    def factor(self, epoch: int, epochs: int) -> float:
        peak = round(self.pct_start * (epochs - 1))
        if epoch <= peak:
            return 1.0 if peak == 0 else self.start + (1.0 - self.start) * epoch / peak
        down = (epoch - peak) / max(epochs - 1 - peak, 1)
        return self.end + (1.0 - self.end) * 0.5 * (1 + math.cos(math.pi * min(down, 1.0)))
