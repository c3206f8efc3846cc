"""Softmax focal loss (Lin et al. 2017): mean_i −α_{y_i} (1 − p_{y_i})^γ log p_{y_i}.

`alpha`: None (no α), a scalar (every sample, as the CCE v2 code's 0.25) or a per-class list of length K.
γ = 0 and α = None is cross entropy. LDAM-DRW's focal baseline is γ = 1, α = None (conf/loss/focal.yaml notes).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from experiments.data import Meta
from experiments.errors import UserError
from experiments.losses.base import EngineLoss


def as_float(x: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16 (autocast) logits; float64 stays float64 (exact tests)."""
    return x if x.dtype == torch.float64 else x.float()


def focal_terms(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample (1 − p_t)^γ · (−log p_t), computed from log-softmax."""
    logpt = torch.log_softmax(as_float(logits), dim=1).gather(1, target.long()[:, None]).squeeze(1)
    if gamma == 0:
        return -logpt
    one_minus = -torch.expm1(logpt)  # 1 − p_t without cancellation
    if gamma < 1:  # d/dx x^γ is infinite at 0 for γ < 1
        one_minus = one_minus.clamp_min(1e-12)
    return one_minus.pow(gamma) * (-logpt)


class FocalLoss(EngineLoss):
    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None):
        super().__init__()
        if gamma < 0:
            raise UserError(f"loss.gamma={gamma}: the focusing parameter must be ≥ 0")
        self.gamma = float(gamma)
        self.alpha_scalar: float | None = None
        if alpha is None:
            self.register_buffer("alpha", None, persistent=False)
        elif isinstance(alpha, (int, float)):
            self.alpha_scalar = float(alpha)
            self.register_buffer("alpha", None, persistent=False)
        else:
            self.register_buffer("alpha", torch.tensor([float(a) for a in alpha], dtype=torch.float64), persistent=False)

    def bind(self, meta: Meta) -> None:
        if self.alpha is not None and len(self.alpha) != meta.num_classes:
            raise UserError(f"loss.alpha has {len(self.alpha)} entries but the dataset has {meta.num_classes} "
                            f"classes; give one α per class or a scalar")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = focal_terms(logits, target, self.gamma)
        if self.alpha is not None:
            terms = terms * self.alpha.to(terms)[target]
        elif self.alpha_scalar is not None:
            terms = terms * self.alpha_scalar
        return terms.mean()

    def extra_repr(self) -> str:
        a = self.alpha.tolist() if self.alpha is not None else self.alpha_scalar
        return f"gamma={self.gamma}, alpha={a}"
