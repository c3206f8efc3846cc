"""Long-tail baselines that read the training class counts n_c from `bind(meta)` (or `class_counts=` when used
drop-in): class-balanced re-weighting (Cui 2019), LDAM with deferred re-weighting (Cao 2019), balanced softmax
(Ren 2020), logit adjustment as a loss and post-hoc (Menon 2021).

Empty classes (n_c = 0) never produce inf/NaN: CB weight 0, LDAM margin = the largest margin, and the log-prior
of balanced softmax / logit adjustment uses max(n_c, 1).

Post-hoc logit adjustment is an evaluation-time metric, not a loss: it lives with the other metrics
(`experiments.engine.metrics.PostHocLogitAdjustment`, metric set `longtail`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from experiments.engine.data import Meta
from experiments.engine.errors import UserError
from experiments.engine.loss import EngineLoss
from experiments.engine.numeric import as_float, log_prior, softplus_and_sigmoid
from experiments.losses.focal import FocalLoss, focal_loss  # noqa: F401 (FocalLoss re-exported)


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al.: w_c = (1−β)/(1−β^{n_c}), normalised to sum K (LDAM-DRW's code); 0 for empty classes.
    β = 1 is the inverse-frequency limit 1/n_c; β = 0 gives all ones."""
    n = counts.double()
    present = n > 0
    if beta >= 1.0:
        w = torch.where(present, 1.0 / n.clamp_min(1), torch.zeros_like(n))
    else:
        w = torch.where(present, (1.0 - beta) / (1.0 - beta ** n).clamp_min(1e-300), torch.zeros_like(n))
    if w.sum() == 0:
        return torch.ones_like(n)
    return w / w.sum() * len(n)


def ldam_margins(counts: torch.Tensor, max_m: float) -> torch.Tensor:
    """m_c = n_c^{−1/4} rescaled so the largest margin is `max_m` (LDAM-DRW `LDAMLoss`)."""
    n = counts.double()
    present = n > 0
    if not present.any():
        return torch.full_like(n, max_m)
    m = torch.where(present, n.clamp_min(1) ** -0.25, torch.zeros_like(n))
    m = m * (max_m / m.max())
    return torch.where(present, m, torch.full_like(m, max_m))


class _CountsLoss(EngineLoss):
    """Holds n_c from `bind(meta)` or the `class_counts` argument; subclasses precompute in `_prepare`."""

    def __init__(self):
        super().__init__()
        self.register_buffer("counts", None, persistent=False)

    def _init_counts(self, class_counts: Sequence[int] | torch.Tensor | None) -> None:
        if class_counts is not None:
            self._set_counts(torch.as_tensor(list(class_counts) if not torch.is_tensor(class_counts)
                                             else class_counts))

    def _set_counts(self, counts: torch.Tensor) -> None:
        counts = counts.long().flatten()
        if (counts < 0).any():
            raise UserError("class counts must be ≥ 0")
        self.counts = counts
        self._prepare(counts)

    def _prepare(self, counts: torch.Tensor) -> None:
        raise NotImplementedError

    def bind(self, meta: Meta) -> None:
        self._set_counts(torch.as_tensor(meta.class_counts))

    def _require(self, logits: torch.Tensor) -> None:
        if self.counts is None:
            raise UserError(f"{type(self).__name__} needs class counts: call bind(meta) or pass class_counts=")
        if logits.shape[1] != len(self.counts):
            raise ValueError(f"{type(self).__name__}: {logits.shape[1]} logits but {len(self.counts)} class counts")


class _SigmoidFocal(torch.autograd.Function):
    """Σ_i w_i Σ_j σ(s_ij)^γ·softplus(s_ij)·scale, s = (1 − 2·onehot)·z: Cui's sigmoid (γ = 0) and sigmoid focal
    terms, since BCE = softplus(s) and exp(−γ·y·z − γ·log(1 + e^{−z})) = σ(s)^γ. Closed-form gradient."""

    @staticmethod
    def forward(ctx, z, target, weight, gamma: float, scale: float):
        target = target[:, None]
        s = z.scatter(1, target, -z.gather(1, target))
        sp, sig = softplus_and_sigmoid(s)
        if gamma:  # d/ds σ^γ·softplus = σ^γ·(σ + γ(1 − σ)·softplus) = σ^γ·(σ(1 − γ·softplus) + γ·softplus)
            mod = torch.pow(sig, gamma, out=s)
            slope = torch.mul(sp, -gamma).add_(1).mul_(sig).add_(sp, alpha=gamma).mul_(mod)
            sp.mul_(mod)
        else:
            slope = sig
        ctx.save_for_backward(target, slope, weight)
        ctx.scale = scale
        return (sp.sum(dim=1) * weight).sum() * scale

    @staticmethod
    def backward(ctx, grad):
        target, slope, weight = ctx.saved_tensors
        g = slope * (weight * (grad * ctx.scale))[:, None]
        return g.scatter_(1, target, -g.gather(1, target)), None, None, None, None


CB_BASES = ("ce", "softmax_focal", "sigmoid", "sigmoid_focal")


class ClassBalancedLoss(_CountsLoss):
    """w_{y}·L(z, y) with Cui's effective-number weights w_c = (1−β)/(1−β^{n_c}), normalised to sum K.

    `base`: `ce` (softmax CE) | `softmax_focal` ((1−p_y)^γ·CE, `gamma`) | `sigmoid` (Cui's official `sigmoid`:
    per-class BCE with one-hot labels, w_y on every class of the sample) | `sigmoid_focal` (Cui's official `focal`:
    the sigmoid BCE times σ(s)^γ = exp(−γ·y·z − γ·log(1 + e^{−z}))). `focal` is a deprecated alias of
    `softmax_focal`.
    `reduction`: mean (Σ_i w_i L_i / N; for the sigmoid bases N is the number of positive labels, Cui's
    `reduce_sum(loss)/reduce_sum(labels)`) | weighted_mean (Σ w_i L_i / Σ w_i, PyTorch `weight=` as in LDAM-DRW).
    (The PyTorch port vandit15/Class-balanced-loss-pytorch divides its `sigmoid` base by N·K instead.)"""

    def __init__(self, beta: float = 0.9999, base: str = "ce", gamma: float = 1.0, reduction: str = "mean",
                 class_counts: Sequence[int] | None = None):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise UserError(f"loss.beta={beta}: must be in [0, 1]")
        base = "softmax_focal" if base == "focal" else base
        if base not in CB_BASES:
            raise UserError(f"loss.base={base!r}: choose one of {', '.join(CB_BASES)} (focal = softmax_focal)")
        if reduction not in ("mean", "weighted_mean"):
            raise UserError(f"loss.reduction={reduction!r}: choose mean or weighted_mean")
        self.beta, self.base, self.gamma, self.reduction = float(beta), base, float(gamma), reduction
        self._init_counts(class_counts)

    def _prepare(self, counts):
        self.register_buffer("weights", class_balanced_weights(counts, self.beta), persistent=False)

    def forward(self, logits, target):
        self._require(logits)
        gamma = self.gamma if self.base.endswith("focal") else 0.0
        if self.base.startswith("softmax") or self.base == "ce":
            return focal_loss(logits, target, gamma, self.weights, reduction=self.reduction)
        z = as_float(logits)
        w = self.weights.to(z).index_select(0, target)
        if self.reduction == "mean":
            return _SigmoidFocal.apply(z, target, w, gamma, 1.0 / len(z))
        return _SigmoidFocal.apply(z, target, w, gamma, 1.0) / w.sum().clamp_min(1e-12)


class LDAMLoss(_CountsLoss):
    """LDAM-DRW: CE(s·(z − m_y·e_y), y, weight=w), m_c ∝ n_c^{−1/4} (max `max_m`). DRW: w = 1 before the switch
    epoch, CB weights (β) from it on (`epoch >= drw_epoch`, epochs from 0; LDAM: 160 of 200). `drw_fraction`
    sets the switch as a fraction of trainer.epochs instead; both null = LDAM without DRW.
    `s` multiplies all logits; LDAM pairs s = 30 with a cosine (NormedLinear) head: `normed_head=True` asks the
    engine for one (`head = "cosine"`)."""

    EPOCH_OPTIONS = ("drw_epoch",)   # `budget` scales it (experiments.engine.budget)

    def __init__(self, max_m: float = 0.5, s: float = 30.0, drw_epoch: int | None = 160,
                 drw_fraction: float | None = None, beta: float = 0.9999,
                 class_counts: Sequence[int] | None = None, normed_head: bool = True):
        super().__init__()
        self.head = "cosine" if normed_head else "linear"
        if max_m < 0 or s <= 0:
            raise UserError(f"loss.max_m={max_m}, loss.s={s}: need max_m ≥ 0 and s > 0")
        if drw_epoch is not None and drw_fraction is not None:
            raise UserError("set loss.drw_epoch or loss.drw_fraction, not both (null the other)")
        if drw_fraction is not None and not 0.0 <= drw_fraction <= 1.0:
            raise UserError(f"loss.drw_fraction={drw_fraction}: must be in [0, 1]")
        if not 0.0 <= beta <= 1.0:
            raise UserError(f"loss.beta={beta}: must be in [0, 1]")
        self.max_m, self.s, self.beta = float(max_m), float(s), float(beta)
        self.drw_epoch, self.drw_fraction = drw_epoch, drw_fraction
        self.drw_active = False
        self._init_counts(class_counts)

    def _prepare(self, counts):
        self.register_buffer("margins", ldam_margins(counts, self.max_m), persistent=False)
        self.register_buffer("scaled_margins", -self.s * self.margins, persistent=False)
        self.register_buffer("drw_weights", class_balanced_weights(counts, self.beta), persistent=False)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if self.drw_fraction is not None:
            start = int(round(self.drw_fraction * num_epochs))
        elif self.drw_epoch is not None:
            start = int(self.drw_epoch)
        else:
            self.drw_active = False
            return
        self.drw_active = epoch >= start

    def forward(self, logits, target):
        self._require(logits)
        z = as_float(logits) * self.s
        z.scatter_add_(1, target[:, None], self.scaled_margins.to(z).index_select(0, target)[:, None])
        weight = self.drw_weights.to(z) if self.drw_active else None
        return F.cross_entropy(z, target, weight=weight)


class BalancedSoftmax(_CountsLoss):
    """Ren et al. 2020: CE(z + log n, y) (the official `logits + spc.log()`); n_c clamped to ≥ 1."""

    def __init__(self, class_counts: Sequence[int] | None = None):
        super().__init__()
        self._init_counts(class_counts)

    def _prepare(self, counts):
        self.register_buffer("log_counts", counts.double().clamp_min(1).log(), persistent=False)

    def forward(self, logits, target):
        self._require(logits)
        z = as_float(logits)
        return F.cross_entropy(z + self.log_counts.to(z), target)


class LogitAdjustedLoss(_CountsLoss):
    """Menon et al. 2021 logit-adjusted loss: CE(z + τ·log π, y), π = n/Σn (τ = 1 ≡ balanced softmax)."""

    def __init__(self, tau: float = 1.0, class_counts: Sequence[int] | None = None):
        super().__init__()
        self.tau = float(tau)
        self._init_counts(class_counts)

    def _prepare(self, counts):
        self.register_buffer("log_prior", log_prior(counts), persistent=False)
        self.register_buffer("adjustment", self.tau * self.log_prior, persistent=False)

    def forward(self, logits, target):
        self._require(logits)
        z = as_float(logits)
        return F.cross_entropy(z + self.adjustment.to(z), target)
