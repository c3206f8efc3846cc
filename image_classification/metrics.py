"""Hierarchy-aware metrics for datasets with superclasses (CIFAR-100, synthetic_cifar).

superclass_accuracy (SA): mean 1[super(ŷ) = super(y)] over all samples (official `SuperclassAccuracy`).
failed_superclass_accuracy (FSA): the same over misclassified samples only (official `FailedSuperclassAccuracy`).
mistake_severity: mean tree distance d(ŷ, y) over misclassified samples ("Making Better Mistakes", top-1);
in the two-level class/superclass tree d = 1 within a superclass and 2 across, so severity = 2 − FSA.

ŷ is the loss's own prediction if it has one, else `ranked_classes`' top-1, which every hierarchy metric here
(and `HierarchicalDistance`) reads: making-better-mistakes' ranking by one `topk(100)` call. It differs from the first
index (`argmax`, SimLoss's `torch.max`) only between exactly tied logits.
"""
from __future__ import annotations

import torch

from experiments.engine.metrics import HIGHER, EvalOutputs, Measure, Metric


def tree_distance(superclass: torch.Tensor) -> torch.Tensor:
    """C×C distance in the two-level tree: 0 same class, 1 same superclass, 2 otherwise."""
    sup = superclass.long()
    d = torch.where(sup[:, None] == sup[None, :], 1, 2)
    d.fill_diagonal_(0)
    return d


MBM_MAX_K = 100  # making-better-mistakes ranks once, `output.topk(100, 1, True, True)`, for topK_to_consider ≤ 100


def ranked_classes(logits: torch.Tensor, k: int) -> torch.Tensor:
    """N×k: each row's k best classes as making-better-mistakes ranks them, the first k columns of one
    `logits.topk(max(k, 100))` (at most C wide). Exactly tied logits come in the order that one call gives them, which
    is neither the first index nor always what a `topk` of another width gives (torch's CPU `topk` orders ties by its
    selection algorithm), so every metric takes its top-1 from this one width."""
    width = min(max(k, MBM_MAX_K), logits.shape[1])
    return logits.topk(width, dim=1, largest=True, sorted=True).indices[:, :k]


def top1(out: EvalOutputs) -> torch.Tensor:
    """The loss's own prediction (CORAL, CORN, …) if it has one, else the first of `ranked_classes`."""
    return out.prediction if out.prediction is not None else ranked_classes(out.logits, 1)[:, 0]


class SuperclassMetrics(Metric):
    requires = ("superclass",)
    measures = {"superclass_accuracy": HIGHER, "failed_superclass_accuracy": HIGHER,
                "mistake_severity": Measure(False, "score")}

    def __call__(self, out: EvalOutputs, meta, state=None):
        sup = meta.superclass.long().cpu()
        pred, y = top1(out).cpu(), out.targets.cpu()
        wrong = pred != y
        same_super = sup[pred] == sup[y]
        n_wrong = int(wrong.sum())
        dist = tree_distance(sup)[pred, y].double()
        nan = float("nan")
        return {
            "superclass_accuracy": same_super.double().mean().item(),
            "failed_superclass_accuracy": (same_super & wrong).sum().item() / n_wrong if n_wrong else nan,
            "mistake_severity": dist[wrong].mean().item() if n_wrong else nan,
        }
