"""Complement Cross Entropy (Kim et al., PRL 2021) and COT's complement entropy (Chen et al., ICLR 2019).

Notation: ŷ = softmax(z), g = true class, p̃_j = ŷ_j / (1 − ŷ_g) for j ≠ g (the wrong-class distribution),
H_c = −Σ_{j≠g} p̃_j log p̃_j ∈ [0, log(K−1)].

Numerics: p̃ is one softmax of the logits with the true column masked to −inf, L = log Σ_{j≠g} exp(z_j) is read
off its largest entry, H_c = L − Σ p̃ z, CE = logaddexp(z_g, L) − z_g and log(1 − ŷ_g) = L − z_g − CE: exact and
finite however close ŷ_g gets to 1 (no division, no NaN), with a closed-form gradient (`_ComplementLoss`). The
official code's epsilons are kept exactly: P = ŷ/((1−ŷ_g)+eps_div) = κ·p̃ with κ = (1−ŷ_g)/((1−ŷ_g)+eps_div)
(v1/v2, `eps_placement="inside"`) or P = ŷ/(1−ŷ_g) + eps_div (current `cce.py`, `"outside"`), then
P·log(P + eps_log). The official eps_log = 1e−10 changes each term by P·log(1 + eps_log/P) ∈ [0, eps_log], so the
normalised complement term by at most eps_log per sample and the loss by at most |γ|·eps_log (gradient entries
by at most 4|γ|·eps_log/N): up to `EPS_LOG_AS_BOUND` it is applied as that bound and the closed form is used (no
per-class log; float32 rounds the official code's own sum more coarsely). A larger eps_log, or the outside eps,
costs one per-class log and is exact.

`ComplementCrossEntropy(variant=...)`:
- `paper` (default): CE + γ/(K−1) · mean_i H_c(i). γ = −1 maximises H_c (the paper's text, Holocron).
- `official`: the official code's term literally, CE − b·T with b = −γ and
  T = Σ_i Σ_{j≠g} P_ij log(P_ij + 1e−10) / (N·K) (negated entropy, divisor N·K). With γ = −1 this *lowers* H_c.
`norm`, `eps_div`, `eps_log`, `eps_placement` override the variant's defaults (docs/cce.md).

`ComplementEntropy` is COT: `forward` is the complement loss Σ P log(P+eps)/(N·norm) (negated entropy,
minimised); `steps=2` performs COT's two forward/backward/optimizer steps per batch (CE with optimizer
"main", then the complement loss with optimizer "complement"); `steps=1` is the CCE repositories' "COT"
baseline: one update on CE + complement loss.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from experiments.engine.data import Batch
from experiments.engine.errors import UserError
from experiments.engine.loss import EngineLoss, StepFn
from experiments.engine.numeric import as_float

_NORMS = ("K_minus_1", "K")
EPS_LOG_AS_BOUND = 1e-8  # eps_log up to this moves the loss by ≤ |γ|·eps_log: closed form, no per-class log
_PLACEMENTS = ("inside", "outside")


def _check_targets(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"complement losses want N×K logits, got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("complement entropy needs at least 2 classes (it is over the K−1 wrong classes)")


def _complement_softmax(z: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p̃ = softmax of z with the true column masked (p̃_g = 0) and lse_rest = log Σ_{j≠g} exp(z_j), read off the
    largest p̃ (≥ 1/(K−1), so its log is exact): lse_rest = max_{j≠g} z_j − log max_j p̃_j."""
    masked = z.scatter(1, target, float("-inf"))
    pt = torch.softmax(masked, dim=1)
    return pt, masked.amax(dim=1, keepdim=True).sub_(pt.amax(dim=1, keepdim=True).log_())


class _ComplementLoss(torch.autograd.Function):
    """mean_i ([CE_i] + w_c·Σ_{j≠g} P_ij log(P_ij + eps_log)) from one softmax pass, with the closed-form gradient.

    P = κ·p̃ (inside, κ = r/(r + eps_div), r = 1 − ŷ_g) or p̃ + eps_div (outside). Without eps_log and additive
    eps the term is κ(log κ − H_c), H_c = lse_rest − Σ p̃ z: no per-class log. The gradient is p̃ ⊙ (α + β·x) off
    the target column, x = z (closed form) or f'(P) − 1 = log(P + eps_log) − eps_log/(P + eps_log); α, β and the
    target column's value are per-sample vectors computed here, so `backward` is three elementwise passes.
    """

    @staticmethod
    def forward(ctx, z, target, with_ce: bool, w_c: float, eps_div: float, eps_log: float, inside: bool):
        target = target[:, None]
        pt, lse_rest = _complement_softmax(z, target)
        zg = z.gather(1, target)
        ce = torch.logaddexp(zg, lse_rest).sub_(zg)
        log_r = lse_rest - zg - ce  # log(1 − ŷ_g)
        log_c = log_r - torch.logaddexp(log_r, log_r.new_tensor(math.log(eps_div))) if inside and eps_div else None
        c = 1.0 if log_c is None else log_c.exp()
        add = 0.0 if inside else eps_div
        if eps_log <= EPS_LOG_AS_BOUND and add == 0:
            x, offset = z, (pt * z).sum(dim=1, keepdim=True)
            neg = offset - lse_rest if log_c is None else c * (log_c - lse_rest + offset)
            t_kappa = None if log_c is None else log_c - lse_rest + offset + 1
        else:  # u = P + eps_log; f'(P) = log u + P/u = 1 + log u − eps_log/u
            u = torch.mul(pt, c).add_(add + eps_log)
            x = u.log()
            scratch = u * x
            neg = (scratch.sum(dim=1, keepdim=True) - eps_log * x.sum(dim=1, keepdim=True)
                   - add * x.gather(1, target))
            x.addcdiv_(x.new_ones(()), u, value=-eps_log)
            offset = torch.mul(pt, x, out=scratch).sum(dim=1, keepdim=True)
            t_kappa = offset + 1
        n = len(z)
        loss = (torch.add(ce, neg, alpha=w_c) if with_ce else neg * w_c).sum() / n
        if ctx.needs_input_grad[0]:
            g_target = torch.exp(log_r).mul_(-1.0 / n) if with_ce else torch.zeros_like(ce)  # CE: ŷ_g − 1 = −r
            bc = c * (w_c / n)
            if log_c is not None:  # κ depends on r: through κ the gradient is ψ·(p̃ off the target, −1 on it)
                g_target.sub_(t_kappa * (1 - c) * torch.exp(-ce) * bc)  # ψ = ∂T/∂κ · κ(1−κ) · ŷ_g
            alpha = (offset * bc).add_(g_target).neg_()
            ctx.save_for_backward(target, x, pt, alpha, torch.as_tensor(bc, dtype=z.dtype), g_target)
        return loss

    @staticmethod
    def backward(ctx, grad):
        target, x, pt, alpha, beta, g_target = ctx.saved_tensors
        grad_z = (x * (beta * grad)).add_(alpha * grad).mul_(pt).scatter_(1, target, g_target * grad)
        return grad_z, None, None, None, None, None, None


def complement_loss(logits: torch.Tensor, target: torch.Tensor, term_weight: float, norm: str = "K",
                    eps_div: float = 0.0, eps_log: float = 0.0, eps_placement: str = "inside",
                    with_ce: bool = True) -> torch.Tensor:
    """mean_i ([CE_i] + term_weight/norm·Σ_{j≠g} P_j log(P_j + eps_log)); the sum is −H_c when both eps are 0.
    P_j = p̃_j exactly, or with the official code's `eps_div` inside ((1 − ŷ_g) + eps) or outside (+ eps)."""
    _check_targets(logits, target)
    k = logits.shape[1]
    return _ComplementLoss.apply(as_float(logits), target.long(), with_ce,
                                 term_weight / (k - 1 if norm == "K_minus_1" else k),
                                 float(eps_div), float(eps_log), eps_placement == "inside")


class ComplementCrossEntropy(EngineLoss):
    """CCE. `variant="paper"`: CE + γ/(K−1)·mean H_c (γ=−1 raises H_c). `variant="official"`: the official
    code's CE − b·T, b = −γ, T = Σ P log(P+1e−10)/(N·K), P = ŷ/((1−ŷ_g)+1e−7) (γ=−1 lowers H_c)."""

    _DEFAULTS = {"paper": dict(norm="K_minus_1", eps_div=0.0, eps_log=0.0, eps_placement="inside"),
                 "official": dict(norm="K", eps_div=1e-7, eps_log=1e-10, eps_placement="inside")}

    def __init__(self, gamma: float = -1.0, variant: str = "paper", norm: str | None = None,
                 eps_div: float | None = None, eps_log: float | None = None, eps_placement: str | None = None):
        super().__init__()
        if variant not in self._DEFAULTS:
            raise UserError(f"loss.variant={variant!r}: choose paper (CE + γ/(K−1)·H_c) or official (the code's term)")
        d = self._DEFAULTS[variant]
        self.gamma = float(gamma)
        self.variant = variant
        self.norm = d["norm"] if norm is None else norm
        self.eps_div = d["eps_div"] if eps_div is None else float(eps_div)
        self.eps_log = d["eps_log"] if eps_log is None else float(eps_log)
        self.eps_placement = d["eps_placement"] if eps_placement is None else eps_placement
        if self.norm not in _NORMS:
            raise UserError(f"loss.norm={self.norm!r}: choose K_minus_1 (paper) or K (official code)")
        if self.eps_placement not in _PLACEMENTS:
            raise UserError(f"loss.eps_placement={self.eps_placement!r}: choose inside (v1/v2) or outside (cce.py)")
        if self.eps_div < 0 or self.eps_log < 0:
            raise UserError("loss.eps_div and loss.eps_log must be ≥ 0")
        # paper: + γ·H_c/norm = − γ·(−H_c)/norm;  official: − b·T = + γ·(Σ P log P)/norm
        self.sign = -1.0 if variant == "paper" else 1.0

    def complement_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mean_i Σ_{j≠g} P log P / norm (≤ 0): the quantity γ multiplies (with the variant's sign)."""
        return complement_loss(logits, target, 1.0, self.norm, self.eps_div, self.eps_log, self.eps_placement,
                               with_ce=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.gamma == 0:
            return F.cross_entropy(as_float(logits), target)
        return complement_loss(logits, target, self.sign * self.gamma, self.norm, self.eps_div, self.eps_log,
                               self.eps_placement)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, variant={self.variant}, norm={self.norm}, eps_div={self.eps_div}, "
                f"eps_log={self.eps_log}, eps_placement={self.eps_placement}")


class ComplementEntropy(EngineLoss):
    """COT. `forward(logits, target)` = Σ_i Σ_{j≠g} P log(P + eps_log)/(N·norm), the negated complement entropy
    COT minimises (COT code: norm K, eps_div 1e−7 inside, eps_log 1e−10; `eps_div=0, eps_log=0` is exact).

    `steps=2` (COT `main.py`): per batch, forward → CE → step("main"); forward again → complement loss →
    step("complement"), each optimizer built from the same `optim` config. `steps=1` (the CCE repos'
    "COT"/SCOT-1): one forward, one step on CE + complement loss.
    """

    def __init__(self, steps: int = 2, norm: str = "K", eps_div: float = 1e-7, eps_log: float = 1e-10,
                 eps_placement: str = "inside"):
        super().__init__()
        if steps not in (1, 2):
            raise UserError(f"loss.steps={steps}: choose 2 (COT: two updates per batch) or 1 (the CCE repos' "
                            f"single update on CE + complement)")
        if norm not in _NORMS:
            raise UserError(f"loss.norm={norm!r}: choose K (COT code) or K_minus_1 (COT paper)")
        if eps_placement not in _PLACEMENTS:
            raise UserError(f"loss.eps_placement={eps_placement!r}: choose inside or outside")
        self.steps = steps
        self.norm = norm
        self.eps_div, self.eps_log, self.eps_placement = float(eps_div), float(eps_log), eps_placement
        self.optimizer_names = ("main", "complement") if steps == 2 else ("main",)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return complement_loss(logits, target, 1.0, self.norm, self.eps_div, self.eps_log, self.eps_placement,
                               with_ce=False)

    def objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """CE + complement loss: the one-step objective, and the loss reported on val/test for both modes."""
        logits = outputs["logits"]
        return F.cross_entropy(as_float(logits), batch.y) + self(logits, batch.y)

    def training_step(self, model: torch.nn.Module, batch: Batch, step: StepFn,
                      autocast: Callable = torch.autocast) -> dict[str, torch.Tensor]:
        if self.steps == 1:
            with autocast():
                logits = model(batch.x)["logits"]
                ce = F.cross_entropy(as_float(logits), batch.y)
                comp = self(logits, batch.y)
                loss = ce + comp
            step(loss, "main")
            return {"loss": loss.detach(), "ce": ce.detach(), "complement": comp.detach()}
        with autocast():
            ce = F.cross_entropy(as_float(model(batch.x)["logits"]), batch.y)
        step(ce, "main")
        with autocast():
            comp = self(model(batch.x)["logits"], batch.y)
        step(comp, "complement")
        return {"loss": (ce + comp).detach(), "ce": ce.detach(), "complement": comp.detach()}

    def extra_repr(self) -> str:
        return f"steps={self.steps}, norm={self.norm}, eps_div={self.eps_div}, eps_log={self.eps_log}"
