"""Per-class subsampling of a balanced training pool: the LDAM-DRW convention and the official CCE code's.

Only the per-class counts change (as in LDAM-DRW's IMBALANCECIFAR); images, labels and test split do not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from experiments.engine.errors import UserError

_CHOICES = {"profile": ("exp", "step"), "order": ("label", "alphabetical"),
            "select": ("seeded", "last_by_name"), "counts": ("ldam", "official"), "n_max": ("largest", "smallest")}


@dataclass(init=False)
class Imbalance:
    """`ratio` ρ = N_max/N_min (1 = balanced). `profile`: exp | step. `order`: which class is the head —
    `label` (class 0, LDAM-DRW) or `alphabetical` (sorted class names, the official CCE code). `select`: which
    images survive — `seeded` (LDAM-DRW's rule: per class, in label order, a NumPy RandomState(`seed`) shuffle,
    keep the first n_i; independent of the training seed) or `last_by_name` (the last n_i file names in sorted
    order, the official CCE code's `os.remove` of the first files). `counts`: `ldam` (int(N_max·(1/ρ)^(i/(K−1))),
    step head = K//2) or `official` (the CCE code's numpy μ^i with μ = (1/ρ)^(1/(K−1)), step head = round(K/2)),
    which differ by one image in some classes (CIFAR-100 ρ=100: 10,847 vs 10,846). `n_max`: the head count
    N_max is the `largest` class of the pool (LDAM-DRW on a balanced pool; a head class smaller than that keeps
    all it has) or the `smallest` non-empty class (every class then gets exactly its formula count; for pools
    that are only roughly balanced, e.g. digits). On a balanced pool both are the same."""

    ratio: float = 1.0
    profile: str = "exp"
    order: str = "label"
    select: str = "seeded"
    seed: int = 0
    counts: str = "ldam"
    n_max: str = "largest"

    def __init__(self, ratio: float = 1.0, profile: str = "exp", order: str = "label", select: str = "seeded",
                 seed: int = 0, counts: str = "ldam", n_max: str = "largest", **unknown):
        if unknown:
            raise UserError(f"dataset.imbalance.{sorted(unknown)[0]} is not an option; use ratio, profile, order, "
                            f"select, seed, counts, n_max")
        try:
            self.ratio = float(ratio)
            self.seed = int(seed)
        except (TypeError, ValueError):
            raise UserError(f"dataset.imbalance.ratio={ratio!r}, seed={seed!r}: need a number ≥ 1 and an integer")
        self.profile, self.order, self.select, self.counts, self.n_max = profile, order, select, counts, n_max
        if not self.ratio >= 1:
            raise UserError(f"dataset.imbalance.ratio={ratio}: ρ = N_max/N_min must be ≥ 1 (1 = balanced)")
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"dataset.imbalance.{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")


def counts_per_rank(n_max: int, num_classes: int, ratio: float, profile: str = "exp",
                    formula: str = "ldam") -> list[int]:
    """Images kept for the class of rank i (0 = head).

    `ldam` (LDAM-DRW, imb_factor = 1/ρ): exp int(n_max·(1/ρ)^(i/(K−1))); step: the first K//2 classes keep
    n_max, the rest int(n_max·(1/ρ)). `official` (CCE `util_for_imbalance_setting.py`): exp
    int(n_max·μ^i) with μ = np.power(1/ρ, 1/(K−1)); step: the first round(K/2) keep n_max, the rest int(n_max/ρ).
    """
    if num_classes == 1 or ratio == 1:
        return [n_max] * num_classes
    if formula == "official":
        if profile == "exp":
            mu = np.power(1 / ratio, 1 / (num_classes - 1))
            return [int(n_max * np.power(mu, i)) for i in range(num_classes)]
        head = int(np.round(num_classes / 2))
        return [n_max] * head + [int(n_max / ratio)] * (num_classes - head)
    if profile == "exp":
        return [int(n_max * (1.0 / ratio) ** (i / (num_classes - 1))) for i in range(num_classes)]
    half = num_classes // 2
    return [n_max] * half + [int(n_max * (1.0 / ratio))] * (num_classes - half)


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
    """Sorted indices into `y` of the training images kept under `spec`.

    N_max is the largest (or, with `n_max=smallest`, the smallest non-empty) class of the pool handed in (after
    any validation hold-out). With `select=seeded`
    the subset is LDAM-DRW's: one RandomState(seed), classes visited in label order, `shuffle` of the class's
    indices (ascending), keep the first n_i — the same images LDAM keeps when the pool is CIFAR's file order.
    """
    k = len(class_names)
    y_np = y.cpu().numpy()
    per_class = [np.nonzero(y_np == c)[0] for c in range(k)]
    sizes = [len(i) for i in per_class if len(i)]
    n_max = (min if spec.n_max == "smallest" else max)(sizes, default=0)
    counts = counts_per_rank(n_max, k, spec.ratio, spec.profile, spec.counts)
    rank = class_ranks(class_names, spec.order)
    if spec.select == "last_by_name" and names is None:
        raise UserError("dataset.imbalance.select=last_by_name needs file names, which this dataset "
                        "does not carry; use dataset.imbalance.select=seeded")
    rng = np.random.RandomState(spec.seed)
    kept = []
    for c, idx in enumerate(per_class):
        n = min(counts[rank[c]], len(idx))
        if spec.select == "seeded":
            idx = idx.copy()
            rng.shuffle(idx)
            kept.append(idx[:n])
        else:
            order = sorted(idx.tolist(), key=lambda i: names[i])
            kept.append(np.asarray(order[len(order) - n:], dtype=np.int64))
    out = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(out.astype(np.int64))
