"""Softmax focal loss (Lin et al. 2017): mean_i −α_{y_i} (1 − p_{y_i})^γ log p_{y_i}.

`alpha`: None (no α), a scalar (every sample, as the CCE v2 code's 0.25) or a per-class list of length K.
γ = 0 and α = None is cross entropy. LDAM-DRW's focal baseline is γ = 1, α = None (conf/loss/focal.yaml notes).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from experiments.engine.data import Meta
from experiments.engine.errors import UserError
from experiments.engine.loss import EngineLoss
from experiments.engine.numeric import as_float


class _FocalReduce(torch.autograd.Function):
    """scale·Σ_i w_i·(1 − p_i)^γ·ce_i from per-sample ce_i = −log p_i (γ > 0), with its closed-form derivative.
    For γ < 1, 1 − p is clamped at 1e-12 (the derivative of x^γ is infinite at 0)."""

    @staticmethod
    def forward(ctx, ce, weight, gamma: float, scale: float):
        neg_ce = torch.neg(ce)
        p = neg_ce.exp()
        q = neg_ce.expm1_().neg_()  # 1 − p without cancellation
        # d/dce (1 − p)^γ·ce = (1 − p)^(γ−1)·((1 − p) + γ·p·ce)
        if gamma < 1:
            clamped = q.clamp_min(1e-12)
            mod = clamped.pow(gamma - 1)
            slope = torch.mul(p, ce).mul_(gamma).mul_(q >= 1e-12).add_(clamped).mul_(mod)
            terms = mod.mul_(clamped)
        else:
            mod = q if gamma == 2 else q.pow(gamma - 1)
            slope = torch.addcmul(q, p, ce, value=gamma).mul_(mod)
            terms = mod * q
        if weight is not None:
            terms.mul_(weight)
            slope.mul_(weight)
        ctx.save_for_backward(slope)
        ctx.scale = scale
        return torch.dot(terms, ce).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        slope, = ctx.saved_tensors
        return slope * (grad * ctx.scale), None, None, None


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, class_weight: torch.Tensor | None = None,
               scale: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """scale·Σ_i w_{y_i}(1 − p_i)^γ(−log p_i) / N (`mean`) or / Σ_i w_{y_i} (`weighted_mean`), p = softmax.

    One fused cross entropy (per sample) plus O(N) work; γ = 0 is `F.cross_entropy` with `weight=`."""
    z = as_float(logits)
    if gamma == 0 and class_weight is None:
        loss = F.cross_entropy(z, target)
        return loss if scale == 1.0 else loss * scale
    w = None if class_weight is None else class_weight.to(z)
    wy = None if w is None else w.index_select(0, target)
    weighted = reduction == "weighted_mean" and w is not None
    per = scale if weighted else scale / len(z)
    if gamma == 0:
        total = F.cross_entropy(z, target, weight=w, reduction="sum") * per
    else:
        total = _FocalReduce.apply(F.cross_entropy(z, target, reduction="none"), wy, float(gamma), per)
    return total / wy.sum().clamp_min(1e-12) if weighted else total


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
        scale = 1.0 if self.alpha_scalar is None else self.alpha_scalar
        return focal_loss(logits, target, self.gamma, self.alpha, scale)

    def extra_repr(self) -> str:
        a = self.alpha.tolist() if self.alpha is not None else self.alpha_scalar
        return f"gamma={self.gamma}, alpha={a}"
