"""Age metrics in class units (= years, class index = age − 1).

mae / mse: of the argmax class, as in the official code. mae_expected / mse_expected: of the expected class
Σ_c c·p_c under the predicted distribution. mistake_severity: mean |ŷ − y| over misclassified samples.
"""
from __future__ import annotations

import torch

from experiments.metrics import EvalOutputs, Metric


class AgeMetrics(Metric):
    def __call__(self, out: EvalOutputs, meta, state=None):
        y = out.targets.cpu().double()
        err = out.pred.cpu().double() - y
        probs = out.scores["probs"].cpu().double()
        expected = probs @ torch.arange(probs.shape[1], dtype=torch.float64)
        err_exp = expected - y
        wrong = err != 0
        return {
            "mae": err.abs().mean().item(),
            "mse": err.pow(2).mean().item(),
            "mae_expected": err_exp.abs().mean().item(),
            "mse_expected": err_exp.pow(2).mean().item(),
            "mistake_severity": err[wrong].abs().mean().item() if wrong.any() else float("nan"),
        }
