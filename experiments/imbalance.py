"""Per-class subsampling of a balanced training pool: the LDAM-DRW convention and the official CCE code's.

Only the per-class counts change (as in LDAM-DRW's IMBALANCECIFAR); images, labels and test split do not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from experiments.errors import UserError


@dataclass
class Imbalance:
    """`ratio` ρ = N_max/N_min (1 = balanced). `order`: which class is the head — `label` (class 0, LDAM-DRW)
    or `alphabetical` (sorted class names, the official CCE code). `select`: which images survive —
    `seeded` (a random subset drawn with `seed`, independent of the training seed) or `last_by_name`
    (the last n_i file names in sorted order, the official CCE code's `os.remove` of the first files)."""

    ratio: float = 1.0
    profile: str = "exp"
    order: str = "label"
    select: str = "seeded"
    seed: int = 0

    def __post_init__(self):
        if self.ratio < 1:
            raise UserError(f"dataset.imbalance.ratio={self.ratio}: ρ = N_max/N_min must be ≥ 1 (1 = balanced)")
        for key, allowed in (("profile", ("exp", "step")), ("order", ("label", "alphabetical")),
                             ("select", ("seeded", "last_by_name"))):
            if getattr(self, key) not in allowed:
                raise UserError(f"dataset.imbalance.{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")


def counts_per_rank(n_max: int, num_classes: int, ratio: float, profile: str = "exp") -> list[int]:
    """Images kept for the class of rank i (0 = head), LDAM-DRW's formula with imb_factor = 1/ρ.

    exp: int(n_max · (1/ρ)^(i/(K−1))); step: the first K//2 classes keep n_max, the rest int(n_max/ρ).
    """
    if num_classes == 1 or ratio == 1:
        return [n_max] * num_classes
    if profile == "exp":
        return [int(n_max * (1.0 / ratio) ** (i / (num_classes - 1))) for i in range(num_classes)]
    half = num_classes // 2
    return [n_max] * half + [int(n_max / ratio)] * (num_classes - half)


def class_ranks(class_names: Sequence[str], order: str) -> list[int]:
    """rank[c] = position of class c in the head-to-tail order."""
    k = len(class_names)
    if order == "label":
        return list(range(k))
    by_name = sorted(range(k), key=lambda c: class_names[c])
    rank = [0] * k
    for r, c in enumerate(by_name):
        rank[c] = r
    return rank


def select_indices(y: torch.Tensor, class_names: Sequence[str], spec: Imbalance,
                   names: Sequence[str] | None = None) -> torch.Tensor:
    """Sorted indices into `y` of the training images kept under `spec`."""
    k = len(class_names)
    per_class = [torch.nonzero(y == c).flatten() for c in range(k)]
    n_max = max(len(i) for i in per_class)
    counts = counts_per_rank(n_max, k, spec.ratio, spec.profile)
    rank = class_ranks(class_names, spec.order)
    g = torch.Generator().manual_seed(spec.seed)
    kept = []
    for c, idx in enumerate(per_class):
        n = min(counts[rank[c]], len(idx))
        if spec.select == "seeded":
            kept.append(idx[torch.randperm(len(idx), generator=g)[:n]])
        else:
            if names is None:
                raise UserError("dataset.imbalance.select=last_by_name needs file names, which this dataset "
                                "does not carry; use dataset.imbalance.select=seeded")
            order = sorted(idx.tolist(), key=lambda i: names[i])
            kept.append(torch.tensor(order[len(order) - n:], dtype=torch.long))
    return torch.cat(kept).sort().values
