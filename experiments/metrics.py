"""Metrics over a whole split, vectorised.

A metric is an object with
- `fit(val: EvalOutputs, meta) -> state`   (optional; e.g. an average-K threshold). The trainer fits on the
  validation split and passes the state unchanged to the test split: nothing is ever fitted on test.
- `__call__(out: EvalOutputs, meta, state) -> dict[name, float | list]`. Lower-case names without the split
  prefix (`accuracy`, `mae`, `avgk_acc@2`); the trainer prefixes `val/` or `test/`. Scalars go to the run's
  `metrics`, lists (per-class values, histograms) to its `details`.
Metrics are configured as a dict of `_target_` nodes: the top-level `metrics` plus the dataset's `metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from experiments.data import Meta


@dataclass
class EvalOutputs:
    """Everything a metric may read about one split, on the CPU."""

    outputs: dict[str, torch.Tensor]   # raw model outputs per head, N×C
    scores: dict[str, torch.Tensor]    # probabilities from `loss.scores` ("probs" is the primary)
    targets: torch.Tensor              # N, int64
    loss: float | None = None          # mean training objective on this split

    @property
    def logits(self) -> torch.Tensor:
        return self.outputs["logits"]

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)


class Metric:
    def fit(self, val: EvalOutputs, meta: Meta) -> Any:
        return None

    def __call__(self, out: EvalOutputs, meta: Meta, state: Any = None) -> dict[str, Any]:
        raise NotImplementedError


def per_class_accuracy(pred: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy of each class (NaN for classes absent from `targets`)."""
    correct = torch.bincount(targets[pred == targets], minlength=num_classes).double()
    total = torch.bincount(targets, minlength=num_classes).double()
    return correct / total  # 0/0 -> nan


class Accuracy(Metric):
    """Top-1 accuracy over samples (micro)."""

    def __call__(self, out, meta, state=None):
        return {"accuracy": (out.pred == out.targets).double().mean().item()}


class TopK(Metric):
    """Fraction of samples whose true class is among the k highest logits."""

    def __init__(self, ks: tuple[int, ...] = (5,)):
        self.ks = tuple(ks)

    def __call__(self, out, meta, state=None):
        res = {}
        for k in self.ks:
            k_eff = min(k, out.logits.shape[1])
            top = out.logits.topk(k_eff, dim=1).indices
            res[f"top{k}_accuracy"] = (top == out.targets[:, None]).any(dim=1).double().mean().item()
        return res


class ClassAccuracy(Metric):
    """Balanced (macro, mean of per-class) accuracy, per-class accuracy, and shot-group accuracy.

    Shot groups by training count (LDAM/OLTR convention): many > `many`, few < `few`, medium in between.
    """

    def __init__(self, many: int = 100, few: int = 20, per_class: bool = True):
        self.many, self.few, self.per_class = many, few, per_class

    def __call__(self, out, meta, state=None):
        acc = per_class_accuracy(out.pred, out.targets, meta.num_classes)
        present = ~torch.isnan(acc)
        res: dict[str, Any] = {"balanced_accuracy": acc[present].mean().item()}
        counts = meta.class_counts.double()
        groups = {"many": counts > self.many, "medium": (counts >= self.few) & (counts <= self.many),
                  "few": counts < self.few}
        for name, mask in groups.items():
            m = mask & present
            res[f"{name}_shot_accuracy"] = acc[m].mean().item() if m.any() else float("nan")
        if self.per_class:
            res["per_class_accuracy"] = [None if torch.isnan(a) else round(a.item(), 6) for a in acc]
        return res


class PredictionHistogram(Metric):
    """How often each class is predicted (`pred_hist`) next to how often it is true (`target_hist`): shows
    where a loss moves the predictions, e.g. the predicted-age distribution of an ordinal loss."""

    def __call__(self, out, meta, state=None):
        k = meta.num_classes
        return {"pred_hist": torch.bincount(out.pred, minlength=k).tolist(),
                "target_hist": torch.bincount(out.targets, minlength=k).tolist()}
