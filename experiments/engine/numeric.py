"""Numeric helpers shared by the losses of the library and of the paper packages."""
from __future__ import annotations

import torch


def as_float(x: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16 (autocast) logits; float64 stays float64 (exact tests)."""
    return x if x.dtype == torch.float64 else x.float()


def softplus_and_sigmoid(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softplus(s), σ(s)) from one sigmoid and one log, without the (slow on CPU) log1p/softplus kernels:
    softplus(s) = relu(s) − log σ(|s|) with σ(|s|) = max(σ(s), 1 − σ(s)) ∈ [½, 1], so it is finite and accurate
    (absolute error ≈ one ulp) for every finite s."""
    sig = torch.sigmoid(s)
    log_sig_abs = torch.maximum(torch.rsub(sig, 1), sig).log_()
    return torch.relu(s).sub_(log_sig_abs), sig


def log_prior(counts: torch.Tensor) -> torch.Tensor:
    """log π_c of the training prior π_c = n_c / Σ n (an empty class counted as 1, so the log stays finite)."""
    n = counts.double().clamp_min(1)
    return (n / n.sum()).log()
