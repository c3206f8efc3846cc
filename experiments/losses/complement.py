"""Complement Cross Entropy (Kim et al., PRL 2021) and COT's complement entropy (Chen et al., ICLR 2019).

Notation: ŷ = softmax(z), g = true class, p̃_j = ŷ_j / (1 − ŷ_g) for j ≠ g (the wrong-class distribution),
H_c = −Σ_{j≠g} p̃_j log p̃_j ∈ [0, log(K−1)].

Numerics: 1 − ŷ_g = Σ_{j≠g} ŷ_j, so log p̃ = log_softmax of the logits with the true column masked to −inf.
That is exact and finite however close ŷ_g gets to 1 (no division, no NaN). The official code's epsilons are
reproduced on top of this in log space: P = ŷ/((1−ŷ_g)+eps_div) (v1/v2, `eps_placement="inside"`) or
P = ŷ/(1−ŷ_g) + eps_div (current `cce.py`, `"outside"`), then P·log(P + eps_log).

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

from experiments.data import Batch
from experiments.errors import UserError
from experiments.losses.base import EngineLoss, StepFn
from experiments.losses.focal import as_float

_NORMS = ("K_minus_1", "K")
_PLACEMENTS = ("inside", "outside")


def _check_targets(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"complement losses want N×K logits, got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("complement entropy needs at least 2 classes (it is over the K−1 wrong classes)")


def complement_log_probs(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p̃, mask): log of the wrong-class distribution (true column = −inf) and the true-class mask."""
    _check_targets(logits, target)
    z = as_float(logits)
    mask = F.one_hot(target.long(), z.shape[1]).bool()
    return torch.log_softmax(z.masked_fill(mask, float("-inf")), dim=1), mask


def neg_complement_entropy(logits: torch.Tensor, target: torch.Tensor, eps_div: float = 0.0,
                           eps_log: float = 0.0, eps_placement: str = "inside") -> torch.Tensor:
    """Per-sample Σ_{j≠g} P_j · log(P_j + eps_log) (≤ 0; equals −H_c when both epsilons are 0).

    P_j = p̃_j exactly, or with the official code's `eps_div` inside ((1 − ŷ_g) + eps) or outside (+ eps).
    """
    log_pt, mask = complement_log_probs(logits, target)
    if eps_div and eps_placement == "inside":
        # log P = log ŷ_j − log((1 − ŷ_g) + eps) = log p̃_j + log(1−ŷ_g) − logaddexp(log(1−ŷ_g), log eps)
        log_rest = torch.logsumexp(torch.log_softmax(as_float(logits), dim=1).masked_fill(mask, float("-inf")),
                                   dim=1, keepdim=True)  # log(1 − ŷ_g), finite
        log_p = log_pt + log_rest - torch.logaddexp(log_rest, log_rest.new_tensor(math.log(eps_div)))
    elif eps_div:  # outside: P = p̃ + eps
        log_p = torch.logaddexp(log_pt, log_pt.new_tensor(math.log(eps_div)))
    else:
        log_p = log_pt
    log_p = log_p.masked_fill(mask, 0.0)
    p = log_p.exp().masked_fill(mask, 0.0)
    log_term = torch.logaddexp(log_p, log_p.new_tensor(math.log(eps_log))) if eps_log else log_p
    return (p * log_term.masked_fill(mask, 0.0)).sum(dim=1)


def complement_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample H_c (exact, ≥ 0)."""
    return -neg_complement_entropy(logits, target)


def _norm_value(norm: str, k: int) -> int:
    return k - 1 if norm == "K_minus_1" else k


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
        neg = neg_complement_entropy(logits, target, self.eps_div, self.eps_log, self.eps_placement)
        return neg.mean() / _norm_value(self.norm, logits.shape[1])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(as_float(logits), target)
        if self.gamma == 0:
            return ce
        return ce + self.sign * self.gamma * self.complement_term(logits, target)

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
        neg = neg_complement_entropy(logits, target, self.eps_div, self.eps_log, self.eps_placement)
        return neg.mean() / _norm_value(self.norm, logits.shape[1])

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
