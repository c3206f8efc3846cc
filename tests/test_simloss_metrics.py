"""Age and superclass metrics against per-sample formulas written out here."""
import math

import pytest
import torch

from age_estimation.metrics import AgeMetrics, ExpectedAgeMetrics
from experiments.engine.data import Meta
from experiments.engine.metrics import EvalOutputs, pairing
from image_classification.metrics import SuperclassMetrics, tree_distance


def outputs(logits, targets):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return EvalOutputs(outputs={"logits": logits}, scores={"probs": logits.softmax(1)},
                       targets=torch.as_tensor(targets))


def meta(k, superclass=None):
    return Meta(num_classes=k, class_names=[str(i) for i in range(k)], class_counts=torch.ones(k),
                superclass=None if superclass is None else torch.tensor(superclass))


def test_age_metrics():
    torch.manual_seed(0)
    logits = torch.randn(50, 12) * 3
    y = torch.randint(0, 12, (50,))
    res = AgeMetrics()(outputs(logits, y), meta(12)) | ExpectedAgeMetrics()(outputs(logits, y), meta(12))
    pred = logits.argmax(1).tolist()
    probs = logits.double().softmax(1).tolist()
    errs = [p - t for p, t in zip(pred, y.tolist())]
    exp_errs = [sum(c * pc for c, pc in enumerate(pr)) - t for pr, t in zip(probs, y.tolist())]
    wrong = [abs(e) for e in errs if e != 0]
    assert res["mae"] == pytest.approx(sum(abs(e) for e in errs) / 50)
    assert res["mse"] == pytest.approx(sum(e * e for e in errs) / 50)
    assert res["mae_expected"] == pytest.approx(sum(abs(e) for e in exp_errs) / 50, rel=1e-5)
    assert res["mse_expected"] == pytest.approx(sum(e * e for e in exp_errs) / 50, rel=1e-5)
    assert res["mae_mistakes"] == pytest.approx(sum(wrong) / len(wrong))


def test_age_metrics_all_correct():
    out = outputs(torch.eye(4) * 50, [0, 1, 2, 3])
    res = AgeMetrics()(out, meta(4)) | ExpectedAgeMetrics()(out, meta(4))
    assert res["mae"] == 0 and res["mse"] == 0 and math.isnan(res["mae_mistakes"])
    assert res["mae_expected"] < 1e-6


def test_expected_age_renormalises_independent_scores():
    scores = torch.tensor([[0.9, 0.9, 0.0], [0.0, 0.5, 0.5]])
    out = EvalOutputs(outputs={"logits": scores}, scores={"probs": scores}, targets=torch.tensor([0, 2]),
                      kinds={"probs": "independent"})
    res = ExpectedAgeMetrics()(out, meta(3))
    assert res["mae_expected"] == pytest.approx((0.5 + 0.5) / 2)


def test_superclass_metrics():
    sup = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 2, 4, 4, 0, 3, 3]
    y = [0, 0, 3, 5, 4, 1, 3, 2]
    logits = torch.full((8, 6), -5.0)
    logits[torch.arange(8), torch.tensor(pred)] = 5.0
    res = SuperclassMetrics()(outputs(logits, y), meta(6, sup))
    same = [sup[p] == sup[t] for p, t in zip(pred, y)]
    wrong = [p != t for p, t in zip(pred, y)]
    fsa = sum(s and w for s, w in zip(same, wrong)) / sum(wrong)
    dist = [0 if p == t else (1 if sup[p] == sup[t] else 2) for p, t in zip(pred, y)]
    assert res["superclass_accuracy"] == pytest.approx(sum(same) / 8)
    assert res["failed_superclass_accuracy"] == pytest.approx(fsa)
    assert res["mistake_severity"] == pytest.approx(sum(d for d, w in zip(dist, wrong) if w) / sum(wrong))
    assert res["mistake_severity"] == pytest.approx(2 - fsa)


def test_superclass_metrics_edge_cases():
    res = SuperclassMetrics()(outputs(torch.eye(3) * 9, [0, 1, 2]), meta(3, [0, 0, 1]))
    assert res["superclass_accuracy"] == 1.0
    assert math.isnan(res["failed_superclass_accuracy"]) and math.isnan(res["mistake_severity"])
    refusal, _ = pairing(SuperclassMetrics(), {"probs": "distribution"}, meta(3))
    assert "superclass" in refusal
    assert tree_distance(torch.tensor([0, 0, 1])).tolist() == [[0, 1, 2], [1, 0, 2], [2, 2, 0]]
