"""Hierarchy-aware metrics for datasets with superclasses (CIFAR-100, synthetic_cifar).

superclass_accuracy (SA): mean 1[super(ŷ) = super(y)] over all samples (official `SuperclassAccuracy`).
failed_superclass_accuracy (FSA): the same over misclassified samples only (official `FailedSuperclassAccuracy`).
mistake_severity: mean tree distance d(ŷ, y) over misclassified samples ("Making Better Mistakes", top-1);
in the two-level class/superclass tree d = 1 within a superclass and 2 across, so severity = 2 − FSA.
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


class SuperclassMetrics(Metric):
    requires = ("superclass",)
    measures = {"superclass_accuracy": HIGHER, "failed_superclass_accuracy": HIGHER,
                "mistake_severity": Measure(False, "score")}

    def __call__(self, out: EvalOutputs, meta, state=None):
        sup = meta.superclass.long().cpu()
        pred, y = out.pred.cpu(), out.targets.cpu()
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
