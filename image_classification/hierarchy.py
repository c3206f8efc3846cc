"""Hierarchy-aware losses and metrics of "Making Better Mistakes" (Bertinetto et al., CVPR 2020), as the official
code (fiveai/making-better-mistakes) computes them, on the two-level class/superclass tree of `Meta.superclass`
(root → superclasses → classes; tree distance d = height of the lowest common ancestor: 0, 1 or 2).

- `HXE` (`HierarchicalCrossEntropyLoss` with `get_exponential_weighting(hierarchy, α)`): with a flat softmax p and
  P(node) = Σ of p over its leaves, loss = −Σ_{edges on y's path} λ(edge)·log P(child | parent); the edge into a
  node at depth h weighs exp(−α·h) / Z, Z = Σ over every node of the tree, root included, of exp(−α·depth). On
  the two-level tree: λ₂·(−log p_y/P_s) + λ₁·(−log P_s), Z = 1 + S·e^{−α} + C·e^{−2α}. Computed in the log domain.
- `SoftLabels` (`make_all_soft_labels` + `nn.KLDivLoss()`): t_y[c] = exp(−β·D[c,y]) / Σ_a exp(−β·D[a,y]), D the
  tree distance divided by its maximum (β = 0: one-hot); loss = KL(t ‖ softmax(z)); the official
  `nn.KLDivLoss()` default reduction averages over the N·C entries (`reduction: mean`), `batchmean` per sample.
- `HierarchicalDistance` (`run_xent.py`): `hdist@k` = mean over samples and their top-k classes of d(ŷ_j, y)
  ("average hierarchical distance @k"); `hdist_mistakes@k` = the same over samples whose top-1 is wrong
  (at k = 1: the mistake severity). The ranking is that of `EvalOutputs.logits` (as top-k accuracy).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from experiments.engine.data import Meta
from experiments.engine.loss import EngineLoss
from experiments.engine.metrics import EvalOutputs, Measure, Metric
from image_classification.metrics import ranked_classes, tree_distance


def _superclass(meta: Meta, who: str) -> torch.Tensor:
    if meta.superclass is None:
        raise ValueError(f"{who} needs a class hierarchy; this dataset has no superclasses (Meta.superclass)")
    return meta.superclass.long()


def hxe_weights(superclass: torch.Tensor, alpha: float) -> tuple[float, float]:
    """(λ₁, λ₂): weights of the superclass edge (depth 1) and the class edge (depth 2), normalised over all nodes."""
    n_super, n_classes = int(superclass.unique().numel()), int(superclass.numel())
    total = math.fsum([1.0, n_super * math.exp(-alpha), n_classes * math.exp(-2 * alpha)])
    return math.exp(-alpha) / total, math.exp(-2 * alpha) / total


def soft_label_matrix(superclass: torch.Tensor, beta: float) -> torch.Tensor:
    """C×C, column y = the soft label of class y (official layout: `soft_labels[:, y]`); β = 0 gives one-hot
    labels, as the official `opts.soft_labels = opts.beta != 0`."""
    if beta == 0:
        return torch.eye(int(superclass.numel()), dtype=torch.float64)
    d = tree_distance(superclass).double()
    d = d / d.max().clamp_min(1)
    e = torch.exp(-beta * d)
    return e / e.sum(dim=0, keepdim=True)


class HXE(EngineLoss):
    def __init__(self, alpha: float = 0.1):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha={alpha}: must be ≥ 0")
        self.alpha = float(alpha)
        self.register_buffer("superclass", torch.zeros(0, dtype=torch.long), persistent=False)

    def bind(self, meta: Meta) -> None:
        self.superclass = _superclass(meta, "hxe")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.superclass.numel() != logits.shape[1]:
            raise ValueError(f"hxe: bound to {self.superclass.numel()} classes, got {logits.shape[1]} logits")
        sup = self.superclass.to(logits.device)
        logp = F.log_softmax(logits.float(), dim=1)
        same = sup[None, :] == sup[target][:, None]
        log_super = torch.logsumexp(logp.masked_fill(~same, float("-inf")), dim=1)
        log_class = logp.gather(1, target[:, None]).squeeze(1)
        w_super, w_class = hxe_weights(sup, self.alpha)
        return (w_class * (log_super - log_class) - w_super * log_super).mean()


class SoftLabels(EngineLoss):
    REDUCTIONS = ("mean", "batchmean")

    def __init__(self, beta: float = 10.0, reduction: str = "mean"):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta={beta}: must be ≥ 0")
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}: choose {' or '.join(self.REDUCTIONS)}")
        self.beta, self.reduction = float(beta), reduction
        self.register_buffer("labels", torch.zeros(0, 0), persistent=False)

    def bind(self, meta: Meta) -> None:
        self.labels = soft_label_matrix(_superclass(meta, "soft_labels"), self.beta).float()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.labels.shape[0] != logits.shape[1]:
            raise ValueError(f"soft_labels: bound to {self.labels.shape[0]} classes, got {logits.shape[1]} logits")
        soft = self.labels.to(logits.device)[:, target].T
        total = (torch.xlogy(soft, soft) - soft * F.log_softmax(logits.float(), dim=1)).sum()
        return total / (soft.numel() if self.reduction == "mean" else soft.shape[0])


class HierarchicalDistance(Metric):
    requires = ("superclass",)

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(int(k) for k in ks)
        self.measures = {"hdist": Measure(False, "score"), "hdist_mistakes": Measure(False, "score")}

    def __call__(self, out: EvalOutputs, meta, state=None):
        dist = tree_distance(meta.superclass.long().cpu()).double()
        logits, y = out.logits.cpu(), out.targets.cpu()
        top = ranked_classes(logits, min(max(self.ks), logits.shape[1]))
        d = dist[top, y[:, None]]
        wrong = d[:, 0] != 0
        res = {}
        for k in self.ks:
            res[f"hdist@{k}"] = d[:, :k].mean().item()
            res[f"hdist_mistakes@{k}"] = d[wrong, :k].mean().item() if wrong.any() else float("nan")
        return res
