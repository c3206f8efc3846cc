"""Test-only components referenced by `_target_` in tests."""
import torch

from experiments.engine.loss import EngineLoss


class NaNAfterFirstBatch(EngineLoss):
    """Cross entropy that turns NaN from the second batch on: drives the failed-run path."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, logits, target):
        self.calls += 1
        ce = torch.nn.functional.cross_entropy(logits, target)
        return ce * float("nan") if self.calls > 1 else ce
