"""SimLoss (Kobs et al., ISMIS 2020): cross entropy with class similarities.

L = −mean_i log(Σ_c S[y_i, c]·softmax(z_i)_c + eps). S = identity gives cross entropy (up to eps).
`impl="logsumexp"` evaluates the log of the weighted sum in log space, exactly including eps:
log(Σ_c S[y,c]·p_c + eps) = logsumexp(log S[y,:] + log_softmax(z), log eps), with log 0 = −inf (the diagonal
log 1 = 0 always leaves one finite term). `impl="prob"` is the official code's form: softmax → weighted sum
→ + eps → log.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from experiments.data import Meta
from experiments.losses.base import EngineLoss

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
        if similarity is not None:
            self.set_similarity(similarity, num_classes)

    def set_similarity(self, similarity: Any, num_classes: int | None = None) -> None:
        s = validate_similarity(similarity, num_classes)
        device = self.similarity.device
        self.similarity = s.to(device)
        self.log_similarity = s.log().to(device)  # log 0 = −inf

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
        if self.impl == "prob":
            p = z.softmax(dim=1)
            return -((self.similarity[target].to(z.dtype) * p).sum(dim=1) + self.eps).log().mean()
        terms = self.log_similarity[target].to(z.dtype) + z.log_softmax(dim=1)
        if self.eps > 0:
            terms = torch.cat([terms, terms.new_full((len(terms), 1), math.log(self.eps))], dim=1)
        return -torch.logsumexp(terms, dim=1).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes if self.similarity.numel() else None}, eps={self.eps}, impl={self.impl}"
