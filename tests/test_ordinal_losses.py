"""Ordinal losses and metrics against formulas and known answers written out here (per sample, plain Python)."""
import math

import pytest
import torch

from age_estimation.metrics import AgeMetrics
from age_estimation.ordinal_losses import (
    CDWCE,
    CORAL,
    CORN,
    SORD,
    CoralLayer,
    MeanVariance,
    distribution_from_cumulative,
    level_encoding,
    prior_thresholds,
)
from age_estimation.ordinal_metrics import OrdinalMetrics, quadratic_weighted_kappa
from experiments.engine.data import Meta
from experiments.engine.metrics import Accuracy, EvalOutputs, TopK
from experiments.engine.models import Network


def meta(k):
    return Meta(num_classes=k, class_names=[str(i) for i in range(k)], class_counts=torch.ones(k), ordered=True)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def bce(z, label):
    p = sigmoid(z)
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_level_encoding_is_the_label_extension():
    assert level_encoding(torch.tensor([0, 2, 4]), 4).tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_coral_loss_is_the_sum_of_binary_cross_entropies():
    torch.manual_seed(0)
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 2])
    hand = sum(bce(z[i, k].item(), float(y[i] > k)) for i in range(6) for k in range(4)) / 6
    assert CORAL()(z, y).item() == pytest.approx(hand, rel=1e-5)


def test_corn_trains_task_k_only_on_samples_above_k_minus_1():
    torch.manual_seed(1)
    z, y = torch.randn(7, 4, requires_grad=True), torch.tensor([0, 1, 2, 3, 4, 1, 0])
    loss = CORN()(z, y)
    pairs = [(i, k) for k in range(4) for i in range(7) if y[i] > k - 1]
    hand = sum(bce(z[i, k].item(), float(y[i] > k)) for i, k in pairs) / len(pairs)
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    loss.backward()
    in_subset = torch.tensor([[y[i] > k - 1 for k in range(4)] for i in range(7)])
    assert (z.grad[~in_subset] == 0).all() and (z.grad[in_subset] != 0).all()


@pytest.mark.parametrize("loss", [CORAL(), CORN()])
def test_predictions_are_rank_consistent_and_count_the_tasks_above_one_half(loss):
    torch.manual_seed(2)
    layer = CoralLayer(8, 9) if isinstance(loss, CORAL) else torch.nn.Linear(8, 9)
    if isinstance(loss, CORAL):
        layer.bias.data = torch.randn(9).sort(descending=True).values * 3
    z = layer(torch.randn(50, 8) * 2).detach()
    above = loss.cumulative(z.double())
    assert (above[:, 1:] <= above[:, :-1] + 1e-12).all()
    pred = loss.predict({"ordinal": z})
    assert pred.tolist() == [sum(1 for p in row if p > 0.5) for row in above.tolist()]
    probs = loss.scores({"ordinal": z})["probs"].double()
    assert torch.allclose(probs.sum(1), torch.ones(50, dtype=torch.float64), atol=1e-6) and (probs >= 0).all()
    median = (probs.cumsum(1) >= 0.5 - 1e-6).double().argmax(1)
    assert pred.tolist() == median.tolist()


def test_corn_cumulative_probability_is_the_product_of_conditionals():
    z = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]])
    assert CORN().cumulative(z)[0].tolist() == pytest.approx([0.5, 0.375, 0.09375])


def test_distribution_from_non_monotone_cumulative_is_clipped_and_renormalised():
    probs = distribution_from_cumulative(torch.tensor([[0.6, 0.8, 0.1]]))
    assert probs[0].tolist() == pytest.approx([0.4 / 1.2, 0.0, 0.7 / 1.2, 0.1 / 1.2])


def test_coral_engine_path_accuracy_and_mae_read_the_counting_rule():
    loss = CORAL()
    backbone = torch.nn.Identity()
    backbone.out_features = 1
    net = Network(backbone, 4, loss.head_sizes(4), head=loss.head)
    net.heads["ordinal"].weight.weight.data = torch.ones(1, 1)
    net.heads["ordinal"].bias.data = torch.tensor([0.0, -2.0, -4.0])
    x = torch.tensor([[-1.0], [1.0], [3.0], [5.0], [1.5]])
    out = net(x)
    assert set(out) == {"ordinal"} and out["ordinal"].shape == (5, 3)
    y = torch.tensor([0, 1, 2, 3, 3])
    ev = EvalOutputs(outputs=out, scores=loss.scores(out), targets=y, kinds=dict(loss.score_kinds),
                     prediction=loss.predict(out))
    assert ev.pred.tolist() == [0, 1, 2, 3, 1]
    assert ev.logits.shape == (5, 4)
    assert Accuracy()(ev, meta(4))["accuracy"] == pytest.approx(4 / 5)
    assert AgeMetrics()(ev, meta(4))["mae"] == pytest.approx(2 / 5)
    assert TopK(ks=(1,))(ev, meta(4))["top1_accuracy"] == pytest.approx(
        (ev.scores["probs"].argmax(1) == y).double().mean().item())


def test_coral_prior_thresholds_are_the_training_cumulative_logits():
    b = prior_thresholds(torch.tensor([1.0, 1.0, 2.0]))
    assert b.tolist() == pytest.approx([math.log(3.0), math.log(1.0)], abs=1e-6)
    loss = CORAL(bias_init="prior")
    loss.bind(Meta(num_classes=3, class_names=["0", "1", "2"], class_counts=torch.tensor([1.0, 1.0, 2.0]),
                   ordered=True))
    assert loss.head(5, 2).bias.tolist() == pytest.approx(b.tolist())


def sord_hand(z, y, scale, power):
    total = 0.0
    for row, t in zip(z.tolist(), y.tolist()):
        e = [math.exp(-scale * abs(i - t) ** power) for i in range(len(row))]
        lse = math.log(sum(math.exp(v) for v in row))
        total += -sum(ei / sum(e) * (v - lse) for ei, v in zip(e, row))
    return total / len(y)


@pytest.mark.parametrize("distance,power", [("squared", 2), ("absolute", 1)])
def test_sord_is_cross_entropy_to_the_soft_ordinal_target(distance, power):
    torch.manual_seed(3)
    z, y = torch.randn(5, 7), torch.tensor([0, 3, 6, 2, 3])
    assert SORD(scale=0.7, distance=distance)(z, y).item() == pytest.approx(sord_hand(z, y, 0.7, power), rel=1e-5)


def test_sord_soft_target_known_answer():
    from age_estimation.ordinal_losses import sord_targets

    t = sord_targets(torch.tensor([1]), 3, scale=1.0, power=2)[0]
    z = 1 + 2 * math.exp(-1)
    assert t.tolist() == pytest.approx([math.exp(-1) / z, 1 / z, math.exp(-1) / z])


def test_cdw_ce_matches_the_hand_formula_and_survives_large_logits():
    torch.manual_seed(4)
    z, y = torch.randn(4, 5) * 2, torch.tensor([0, 2, 4, 1])
    p = z.double().softmax(1)
    hand = -sum(math.log(1 - p[n, i].item()) * abs(i - y[n].item()) ** 1.5 for n in range(4) for i in range(5)) / 4
    assert CDWCE(alpha=1.5)(z, y).item() == pytest.approx(hand, rel=1e-4)
    assert math.isfinite(CDWCE(alpha=1.0)(z * 100 + 200, y).item())


def test_mean_variance_loss_and_its_mean_prediction():
    torch.manual_seed(5)
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 2])
    p = z.double().softmax(1).tolist()
    ce = sum(-math.log(p[n][y[n]]) for n in range(6)) / 6
    means = [sum(c * pc for c, pc in enumerate(row)) for row in p]
    var = [sum(pc * (c - m) ** 2 for c, pc in enumerate(row)) for row, m in zip(p, means)]
    lm = sum((m - t) ** 2 for m, t in zip(means, y.tolist())) / (2 * 6)
    hand = ce + 2 * 0.2 * lm + 2 * 0.05 * sum(var) / 6
    assert MeanVariance(strength=2.0)(z, y).item() == pytest.approx(hand, rel=1e-5)
    assert MeanVariance().predict({"logits": z}).tolist() == [round(m) for m in means]
    assert MeanVariance(prediction="argmax").predict({"logits": z}) is None


def test_cumulative_score_one_off_and_qwk_known_answer():
    y, pred = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    ev = EvalOutputs(outputs={"logits": torch.nn.functional.one_hot(pred, 3).float()}, scores={}, targets=y)
    res = OrdinalMetrics(ks=(1, 2))(ev, meta(3))
    assert res["cs@1"] == pytest.approx(5 / 6) and res["cs@2"] == 1.0
    assert res["one_off_accuracy"] == pytest.approx(5 / 6)
    assert res["qwk"] == pytest.approx(0.25)
    assert math.isnan(quadratic_weighted_kappa(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 3))


def test_qwk_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    torch.manual_seed(6)
    y, pred = torch.randint(0, 12, (200,)), torch.randint(0, 12, (200,))
    pred[:120] = (y[:120] + torch.randint(-2, 3, (120,))).clamp(0, 11)
    want = metrics.cohen_kappa_score(y.numpy(), pred.numpy(), weights="quadratic", labels=list(range(12)))
    assert quadratic_weighted_kappa(pred, y, 12) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("loss", [SORD(), CDWCE(), MeanVariance(), CORAL(), CORN()])
def test_ordinal_losses_refuse_unordered_classes(loss):
    loss.bind(meta(3))
    with pytest.raises(ValueError, match="ordered"):
        loss.bind(Meta(num_classes=3, class_names=list("abc"), class_counts=torch.ones(3)))


def test_metric_declarations():
    m = OrdinalMetrics()
    assert m.requires == ("ordered",) and m.needs == "ranking"
    assert m.measure("cs@5").higher_is_better and m.measure("qwk").unit == "score"


@pytest.mark.parametrize("loss", ["coral", "corn", "sord", "cdw_ce", "mean_variance"])
def test_each_ordinal_loss_trains_in_the_engine(train_run, loss):
    rec = train_run("dataset=synthetic_age", "model=small_cnn", f"loss={loss}", "trainer.select_metric=val/mae")
    assert rec["status"] == "completed"
    for name in ("test/accuracy", "test/mae", "test/cs@5", "test/qwk", "test/mae_expected"):
        assert rec["metrics"][name] is not None


def test_engine_accuracy_and_mae_read_the_loss_prediction(train_run, monkeypatch):
    monkeypatch.setattr(CORAL, "predict", lambda self, outputs: torch.zeros(len(outputs["ordinal"]), dtype=torch.long))
    rec = train_run("dataset=synthetic_age", "model=small_cnn", "loss=coral", "trainer.select_metric=last")
    hist = torch.tensor(rec["details"]["test/target_hist"], dtype=torch.float64)
    ages = torch.arange(len(hist), dtype=torch.float64)
    assert rec["metrics"]["test/accuracy"] == pytest.approx((hist[0] / hist.sum()).item())
    assert rec["metrics"]["test/mae"] == pytest.approx((hist @ ages / hist.sum()).item())

