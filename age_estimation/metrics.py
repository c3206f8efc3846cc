"""Age metrics in class units (= years for the age datasets, class index = age − 1).

`AgeMetrics` (argmax class, as in the official code): mae, mse, and mae_mistakes = mean |ŷ − y| over misclassified
samples (the age form of a mistake severity; the hierarchy metrics' unitless `mistake_severity` is another
number). `ExpectedAgeMetrics`: mae_expected / mse_expected of the expected class Σ_c c·p_c under the predicted
distribution; a loss whose primary scores are independent per-class scores (AN, EPR, ROLE, two-head head B) is
read through `experiments.engine.metrics.renormalised` (each row divided by its sum), and the run records that
adaptation. Errors are in `unit` (years or classes), squared errors in its square.
"""
from __future__ import annotations

import torch

from experiments.engine.metrics import EvalOutputs, Measure, Metric

ERROR_UNITS = ("years", "classes")


def _error_measures(unit: str) -> tuple[Measure, Measure]:
    """(absolute error, squared error) measures in `unit`."""
    if unit not in ERROR_UNITS:
        raise ValueError(f"unit={unit!r}: choose one of {', '.join(ERROR_UNITS)}")
    return Measure(False, unit), Measure(False, f"{unit}²")


class AgeMetrics(Metric):
    requires = ("ordered",)

    def __init__(self, unit: str = "years"):
        err, squared = _error_measures(unit)
        self.measures = {"mae": err, "mse": squared, "mae_mistakes": err}

    def __call__(self, out: EvalOutputs, meta, state=None):
        y = out.targets.cpu().double()
        err = out.pred.cpu().double() - y
        wrong = err != 0
        return {
            "mae": err.abs().mean().item(),
            "mse": err.pow(2).mean().item(),
            "mae_mistakes": err[wrong].abs().mean().item() if wrong.any() else float("nan"),
        }


class ExpectedAgeMetrics(Metric):
    requires = ("ordered",)
    needs = "distribution"
    adapts_independent = True

    def __init__(self, unit: str = "years"):
        err, squared = _error_measures(unit)
        self.measures = {"mae_expected": err, "mse_expected": squared}

    def __call__(self, out: EvalOutputs, meta, state=None):
        y = out.targets.cpu().double()
        probs = out.distribution().cpu().double()
        err = probs @ torch.arange(probs.shape[1], dtype=torch.float64) - y
        return {"mae_expected": err.abs().mean().item(), "mse_expected": err.pow(2).mean().item()}
