"""Drop-in losses: every class here is an `nn.Module` called as `loss(logits, target)` with integer targets.

Each paper's losses live in their own module and are re-exported here, so users write
`from experiments.losses import SimLoss`. See `base.py` for the engine protocol.
"""
from experiments.losses.base import CrossEntropy, EngineLoss

__all__ = ["CrossEntropy", "EngineLoss"]
from experiments.losses.complement import ComplementCrossEntropy, ComplementEntropy; from experiments.losses.longtail import BalancedSoftmax, ClassBalancedLoss, FocalLoss, LDAMLoss, LogitAdjustedLoss  # noqa: E402,E702 (CCE)
from experiments.losses.simloss import SimLoss  # noqa: E402,F401
