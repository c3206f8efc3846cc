"""Drop-in losses: every class here is an `nn.Module` called as `loss(logits, target)` with integer targets.

The engine-independent loss library (CE, SimLoss with a given S, CCE/COT, focal and the long-tail baselines),
re-exported so users write `from experiments.losses import SimLoss`. Task-specific losses (SimLoss's S from a
dataset, ordinal losses, the Average-K losses) live in the task folders. The engine protocol every loss follows
is `experiments.engine.loss.EngineLoss`.
"""
from experiments.engine.loss import CrossEntropy, EngineLoss
from experiments.losses.complement import ComplementCrossEntropy, ComplementEntropy
from experiments.losses.longtail import (
           BalancedSoftmax,
           ClassBalancedLoss,
           FocalLoss,
           LDAMLoss,
           LogitAdjustedLoss,
)
from experiments.losses.simloss import SimLoss

__all__ = ["CrossEntropy", "EngineLoss", "ComplementCrossEntropy", "ComplementEntropy", "BalancedSoftmax",
           "ClassBalancedLoss", "FocalLoss", "LDAMLoss", "LogitAdjustedLoss", "SimLoss"]
