"""The engine's shared metric and numeric helpers (used by the engine's metrics, average-K and conformal sets and the
long-tail losses) against values worked out by hand here."""
from __future__ import annotations

import math

import pytest
import torch

from experiments.engine.metrics import (
    nanmean,
    per_class_accuracy,
    per_class_mean,
    shot_masks,
    topk_hits,
)
from experiments.engine.numeric import as_float, log_prior, softplus_and_sigmoid


def test_per_class_mean_and_accuracy():
    targets = torch.tensor([0, 0, 0, 2, 2])
    hit = torch.tensor([True, False, True, False, False])
    got = per_class_mean(hit, targets, 4)
    assert got[0].item() == pytest.approx(2 / 3) and got[2].item() == 0.0
    assert math.isnan(got[1].item()) and math.isnan(got[3].item())          # classes absent from targets
    pred = torch.tensor([0, 1, 0, 2, 0])
    acc = per_class_accuracy(pred, targets, 3)
    assert acc[0].item() == pytest.approx(2 / 3) and math.isnan(acc[1].item()) and acc[2].item() == 0.5


def test_nanmean():
    assert nanmean(torch.tensor([1.0, float("nan"), 3.0])) == 2.0
    assert math.isnan(nanmean(torch.tensor([float("nan")]))) and math.isnan(nanmean(torch.tensor([])))


def test_shot_masks_follow_the_ldam_convention():
    masks = shot_masks(torch.tensor([5, 20, 100, 101]), few=20, many=100)
    assert masks["few"].tolist() == [True, False, False, False]              # < 20
    assert masks["medium"].tolist() == [False, True, True, False]            # 20 … 100, both ends
    assert masks["many"].tolist() == [False, False, False, True]             # > 100


def test_topk_hits():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    targets = torch.tensor([2, 2])
    assert topk_hits(scores, targets, 1).tolist() == [False, False]
    assert topk_hits(scores, targets, 2).tolist() == [True, False]          # 0.4 is second in row 0
    assert topk_hits(scores, targets, 5).tolist() == [True, True]           # k above C: every class


def test_log_prior_counts_an_empty_class_as_one():
    got = log_prior(torch.tensor([3, 0, 1]))
    assert got.tolist() == pytest.approx([math.log(3 / 5), math.log(1 / 5), math.log(1 / 5)])


def test_as_float_and_softplus_and_sigmoid():
    assert as_float(torch.zeros(1, dtype=torch.bfloat16)).dtype == torch.float32
    assert as_float(torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    s = torch.tensor([-30.0, -1.0, 0.0, 2.0, 40.0], dtype=torch.float64)
    sp, sig = softplus_and_sigmoid(s)
    # documented accuracy: absolute error about one ulp of the result's scale, so far below 0 only absolute
    assert sp.tolist() == pytest.approx([math.log1p(math.exp(x)) for x in s.tolist()], rel=1e-12, abs=1e-15)
    assert sig.tolist() == pytest.approx([1 / (1 + math.exp(-x)) for x in s.tolist()], rel=1e-12)
