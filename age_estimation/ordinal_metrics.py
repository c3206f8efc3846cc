"""Ordinal metrics of the predicted class (`EvalOutputs.pred`: argmax, or the loss's own rule such as CORAL's).

- `cs@k` (cumulative score): share of samples with |ŷ − y| ≤ k, k = 1…10 by default.
- `one_off_accuracy`: share with |ŷ − y| ≤ 1 (= cs@1, under its usual name).
- `qwk`: quadratic weighted kappa over all C classes, κ = 1 − Σ w·O / Σ w·E with w_ij = (i − j)²/(C − 1)², O the
  confusion matrix and E the outer product of its marginals over N (sklearn's `cohen_kappa_score(weights=
  "quadratic", labels=range(C))`; NaN when E has no weight, e.g. a single class everywhere).
"""
from __future__ import annotations

from typing import Sequence

import torch

from experiments.engine.metrics import EvalOutputs, Measure, Metric


def quadratic_weighted_kappa(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    c = num_classes
    observed = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c).double()
    expected = observed.sum(dim=1)[:, None] * observed.sum(dim=0)[None, :] / observed.sum()
    idx = torch.arange(c, dtype=torch.float64)
    weights = (idx[:, None] - idx[None, :]).pow(2)
    denominator = (weights * expected).sum()
    return float("nan") if denominator == 0 else 1.0 - ((weights * observed).sum() / denominator).item()


class OrdinalMetrics(Metric):
    requires = ("ordered",)

    def __init__(self, ks: Sequence[int] = tuple(range(1, 11))):
        self.ks = tuple(int(k) for k in ks)
        self.measures = {"cs": Measure(True), "one_off_accuracy": Measure(True), "qwk": Measure(True, "score")}

    def __call__(self, out: EvalOutputs, meta, state=None):
        pred, y = out.pred.cpu().long(), out.targets.cpu().long()
        err = (pred - y).abs()
        res = {f"cs@{k}": (err <= k).double().mean().item() for k in self.ks}
        res["one_off_accuracy"] = (err <= 1).double().mean().item()
        res["qwk"] = quadratic_weighted_kappa(pred, y, meta.num_classes)
        return res

