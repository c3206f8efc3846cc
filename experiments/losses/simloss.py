"""SimLoss (Kobs et al., ISMIS 2020): cross entropy with class similarities.

L = −mean_i log(Σ_c S[y_i, c]·softmax(z_i)_c + eps). S = identity gives cross entropy (up to eps).
`impl="prob"` is the official code's form: softmax → weighted sum → + eps → log, here one fused softmax, one
row gather of S and the closed-form gradient p ⊙ (A − S[y])/(A + eps) (`_SimLossProb`).
`impl="logsumexp"` has the log-space value log(Σ_c S[y,c]·p_c + eps) = logsumexp(log S[y,:] + log_softmax(z),
log eps) (log 0 = −inf; the diagonal log 1 = 0 always leaves one finite term), so it is finite where the
probability form underflows. It is computed in the probability form wherever that is exact (A + eps ≥ √tiny of
the dtype, always the case for eps ≥ 1e-19) and in log space only for the remaining rows.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from experiments.engine.loss import EngineLoss

IMPLS = ("logsumexp", "prob")
_IMPL_ALIASES = {"official_prob": "prob"}


def validate_similarity(similarity: Any, num_classes: int | None = None, atol: float = 1e-6) -> torch.Tensor:
    """S as a float64 tensor; ValueError unless square (num_classes × num_classes), in [0, 1], diagonal 1."""
    s = torch.as_tensor(similarity, dtype=torch.float64).detach().cpu()
    if s.dim() != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity must be a square C×C matrix, got shape {tuple(s.shape)}")
    if s.shape[0] == 0:
        raise ValueError("similarity must have at least one class")
    if num_classes is not None and s.shape[0] != num_classes:
        raise ValueError(f"similarity is {s.shape[0]}×{s.shape[0]} but there are {num_classes} classes")
    if not torch.isfinite(s).all():
        raise ValueError("similarity contains NaN or inf")
    if (s < -atol).any() or (s > 1 + atol).any():
        raise ValueError(f"similarity values must lie in [0, 1], got min {s.min().item():.4g}, "
                         f"max {s.max().item():.4g}")
    if not torch.allclose(s.diagonal(), torch.ones(s.shape[0], dtype=s.dtype), atol=atol, rtol=0):
        bad = int(torch.nonzero((s.diagonal() - 1).abs() > atol)[0])
        raise ValueError(f"similarity diagonal must be 1 (a class is fully similar to itself), "
                         f"S[{bad},{bad}] = {s[bad, bad].item():.6g}")
    s = s.clamp(0.0, 1.0)
    s.fill_diagonal_(1.0)
    return s


class _SimLossProb(torch.autograd.Function):
    """(scale·Σ_i −log(A_i + eps), keep), A_i = Σ_c S[y_i,c]·softmax(z_i)_c; gradient scale·p ⊙ (A − S[y_i])/(A + eps).
    With a `floor`, rows with A_i + eps < floor are left out (their term and gradient are 0) and flagged in `keep`."""

    @staticmethod
    def forward(ctx, z, rows, eps: float, scale: float, floor: float | None):
        p = torch.softmax(z, dim=1)
        weighted = rows.mul_(p)  # S[y_i, c]·p_ic, in the gathered rows (they are this call's own copy)
        a = weighted.sum(dim=1, keepdim=True)
        denom = a + eps
        keep = None if floor is None else denom >= floor
        log_terms = denom.log() if keep is None else denom.log().where(keep, 0.0)
        ctx.save_for_backward(p, weighted, a, denom, keep)
        ctx.scale = scale
        return -log_terms.sum() * scale, keep

    @staticmethod
    def backward(ctx, grad, _):
        p, weighted, a, denom, keep = ctx.saved_tensors
        k = (grad * ctx.scale) / denom
        if keep is not None:
            k = k.where(keep, 0.0)
        return torch.mul(p, a).sub_(weighted).mul_(k), None, None, None, None


class SimLoss(EngineLoss):
    """SimLoss as a drop-in `loss(logits, target)`, mean over the batch.

    similarity: C×C matrix S (tensor/array/nested list) with values in [0, 1] and ones on the diagonal.
    eps: added inside the log (official 1e-8); 0 makes S = identity exactly cross entropy.
    impl: "logsumexp" (stable, default) or "prob" (the official probability form; alias "official_prob").
    num_classes: optional, checks that S matches.
    """

    def __init__(self, similarity: Any, eps: float = 1e-8, impl: str = "logsumexp", *,
                 num_classes: int | None = None):
        super().__init__()
        impl = _IMPL_ALIASES.get(impl, impl)
        if impl not in IMPLS:
            raise ValueError(f"impl={impl!r}: choose one of {', '.join(IMPLS)}")
        if not eps >= 0:
            raise ValueError(f"eps={eps}: must be ≥ 0")
        self.eps = float(eps)
        self.impl = impl
        self.register_buffer("similarity", torch.empty(0), persistent=False)
        self.register_buffer("log_similarity", torch.empty(0), persistent=False)
        self.register_buffer("similarity_float", torch.empty(0), persistent=False)
        if similarity is not None:
            self.set_similarity(similarity, num_classes)

    def set_similarity(self, similarity: Any, num_classes: int | None = None) -> None:
        s = validate_similarity(similarity, num_classes)
        device = self.similarity.device
        self.similarity = s.to(device)
        self.log_similarity = s.log().to(device)  # log 0 = −inf
        self.similarity_float = s.float().to(device)

    @property
    def num_classes(self) -> int:
        return self.similarity.shape[0]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.similarity.numel() == 0:
            raise RuntimeError("SimLoss has no similarity matrix yet (call bind(meta) or set_similarity)")
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"SimLoss: logits of shape {tuple(logits.shape)} do not match the "
                             f"{self.num_classes}×{self.num_classes} similarity matrix")
        z = logits if logits.dtype == torch.float64 else logits.float()
        s = self.similarity if z.dtype == torch.float64 else self.similarity_float
        rows = s.to(z.dtype).index_select(0, target)
        floor = torch.finfo(z.dtype).tiny ** 0.5
        direct = self.impl == "prob" or self.eps >= floor
        loss, keep = _SimLossProb.apply(z, rows, self.eps, 1.0 / len(z), None if direct else floor)
        if direct or keep.all():
            return loss
        bad = (~keep).squeeze(1).nonzero().squeeze(1)
        terms = self.log_similarity.index_select(0, target[bad]).to(z.dtype) + z[bad].log_softmax(dim=1)
        if self.eps > 0:
            terms = torch.cat([terms, terms.new_full((len(terms), 1), math.log(self.eps))], dim=1)
        return loss - torch.logsumexp(terms, dim=1).sum() / len(z)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes if self.similarity.numel() else None}, eps={self.eps}, impl={self.impl}"
