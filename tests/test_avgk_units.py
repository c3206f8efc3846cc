"""Average-K metrics, pseudo-labels, losses and conformal sets against independent numpy formulas."""
import math

import numpy as np
import pytest
import torch

from average_k.conformal import ConformalSets, aps_scores, size_calibrated_threshold
from average_k.losses import (
    AssumeNegative,
    ExpectedPositives,
    RegularizedOnlineLabelEstimation,
    TwoHeadLoss,
    batch_pseudo_labels,
)
from average_k.metrics import AverageK, avgk_accuracy, avgk_threshold
from experiments.engine.data import Batch, Meta
from experiments.engine.errors import UserError
from experiments.engine.metrics import EvalOutputs


def fitted(metric, out, meta):
    """The metric on `out` with its state fitted on the same outputs (stands in for the validation split)."""
    return metric(out, meta, metric.fit(out, meta))

def midpoint_rule(scores: np.ndarray, k: float) -> float:
    s = np.sort(scores.ravel())[::-1]
    m = int(math.floor(scores.shape[0] * k + 0.5))
    return (float(s[m - 1]) + float(s[m])) / 2.0


def random_probs(n, c, seed=0):
    return torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * 2, dim=1)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def meta_for(c, counts=None):
    counts = torch.ones(c, dtype=torch.long) * 50 if counts is None else torch.as_tensor(counts)
    return Meta(num_classes=c, class_names=[str(i) for i in range(c)], class_counts=counts)


# --------------------------------------------------------------------------- threshold and accuracy
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_threshold_matches_numpy_and_mean_size_is_k(k):
    p = random_probs(57, 11, seed=k)
    lam = avgk_threshold(p, k)
    assert lam == pytest.approx(midpoint_rule(p.numpy().astype(np.float64), k), abs=0, rel=1e-12)
    sizes = (p.double().numpy() >= lam).sum(axis=1)
    assert sizes.mean() == k


@pytest.mark.parametrize("n,k,expected_total", [(4, 1.5, 6), (3, 1.5, 5), (7, 0.3, 2), (10, 2.25, 23)])
def test_fractional_sizes_round_half_up(n, k, expected_total):
    p = random_probs(n, 9, seed=n)
    lam = avgk_threshold(p, k)
    assert lam == pytest.approx(midpoint_rule(p.numpy().astype(np.float64), k), rel=1e-12)
    assert int((p.double().numpy() >= lam).sum()) == expected_total


def test_tie_at_boundary_is_inclusive():
    scores = torch.tensor([[0.5, 0.25, 0.125], [0.375, 0.25, 0.25], [0.625, 0.25, 0.125]])
    # sorted: .625 .5 .375 | .25 .25 .25 .25 .125 .125; K=1 → m=3 → midpoint .3125; K=4/3 → m=4: tie at .25
    assert avgk_threshold(scores, 1) == 0.3125
    lam = avgk_threshold(scores, 4 / 3)
    assert lam == 0.25
    assert int((scores.double() >= lam).sum()) == 7  # every tied entry enters: mean size 7/3 > 4/3
    targets = torch.tensor([1, 2, 2])
    assert avgk_accuracy(scores, targets, lam) == pytest.approx(2 / 3)
    assert avgk_accuracy(scores, targets, 0.25 + 1e-12) == 0.0


def test_threshold_edge_cases():
    p = random_probs(5, 4)
    assert avgk_threshold(p, 4) == pytest.approx(p.min().item())
    with pytest.raises(UserError):
        avgk_threshold(p, 5)
    with pytest.raises(UserError):
        avgk_threshold(p, 0)
    adjacent = torch.tensor([[np.float32(0.5), np.nextafter(np.float32(0.5), np.float32(0))]])
    lam = avgk_threshold(adjacent, 1)
    assert (adjacent.double() >= lam).sum() == 1  # float64 comparison keeps the midpoint strict


# --------------------------------------------------------------------------- the metric object
def test_average_k_metric_fits_on_val_and_reuses_on_test():
    c = 6
    val = random_probs(40, c, 1)
    test = random_probs(30, c, 2)
    yv, yt = val.argmax(1), torch.randint(0, c, (30,), generator=torch.Generator().manual_seed(3))
    counts = torch.tensor([5, 5, 30, 30, 200, 200])
    meta = meta_for(c, counts)
    m = AverageK(ks=[1, 2], few=10, many=100, hist_max=4)
    ev = EvalOutputs(outputs={"logits": val.log()}, scores={"probs": val, "probs_a": val ** 2}, targets=yv)
    et = EvalOutputs(outputs={"logits": test.log()}, scores={"probs": test, "probs_a": test ** 2}, targets=yt)
    state = m.fit(ev, meta)
    res_val, res = m(ev, meta, state), m(et, meta, state)
    assert res_val["avgk_size@1"] == 1.0 and res_val["avgk_size_a@2"] == 2.0
    t, s = yt.numpy(), test.double().numpy()
    for k in (1, 2):
        lam = midpoint_rule(val.double().numpy(), k)
        sets = s >= lam
        hit = sets[np.arange(30), t]
        assert res[f"avgk_threshold@{k}"] == pytest.approx(lam)
        assert res[f"avgk_acc@{k}"] == pytest.approx(hit.mean())
        per_class = [hit[t == j].mean() for j in range(c) if (t == j).any()]
        assert res[f"avgk_macro_acc@{k}"] == pytest.approx(np.mean(per_class))
        sizes = sets.sum(1)
        assert res[f"avgk_size@{k}"] == pytest.approx(sizes.mean())
        assert res[f"avgk_size_median@{k}"] == pytest.approx(np.sort(sizes)[(len(sizes) - 1) // 2])
        assert res[f"avgk_empty@{k}"] == pytest.approx((sizes == 0).mean())
        assert res[f"avgk_size_hist@{k}"] == [int((np.minimum(sizes, 4) == v).sum()) for v in range(5)]
        few = [hit[t == j].mean() for j in (0, 1) if (t == j).any()]
        assert res[f"avgk_few_acc@{k}"] == pytest.approx(np.mean(few))
        top = np.argsort(-s, axis=1)[:, :k]
        assert res[f"topk_acc@{k}"] == pytest.approx((top == t[:, None]).any(1).mean())
        lam_a = midpoint_rule(val.double().numpy() ** 2, k)
        assert res[f"avgk_acc_a@{k}"] == pytest.approx(((s ** 2)[np.arange(30), t] >= lam_a).mean(), abs=1e-12)


def test_metric_fractional_k_has_no_topk_and_checks_input():
    p = random_probs(20, 5)
    out = EvalOutputs(outputs={"logits": p}, scores={"probs": p}, targets=p.argmax(1))
    res = fitted(AverageK(ks=[1.5]), out, meta_for(5))
    assert res["avgk_size@1.5"] == 1.5 and "topk_acc@1.5" not in res
    with pytest.raises(UserError):
        AverageK(ks=[])
    with pytest.raises(UserError):
        fitted(AverageK(ks=[6]), out, meta_for(5))
    with pytest.raises(UserError, match="validation"):
        AverageK(ks=[1])(out, meta_for(5))   # no state: a threshold is never fitted on the split it scores


# --------------------------------------------------------------------------- pseudo-labels
@pytest.mark.parametrize("k", [1, 2, 3.5])
def test_batch_pseudo_labels_marks_kb_entries(k):
    p = random_probs(8, 10, seed=int(k * 10))
    pl = batch_pseudo_labels(p, k)
    m = int(math.floor(8 * k + 0.5))
    assert int(pl.sum()) == m
    flat = p.numpy().ravel()
    expect = np.zeros_like(flat)
    expect[np.argsort(-flat)[:m]] = 1
    np.testing.assert_array_equal(pl.numpy().ravel(), expect)


def test_batch_pseudo_labels_true_labels_and_budgets():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    y = torch.tensor([2, 0, 0])
    extra = batch_pseudo_labels(p, 1, y)
    np.testing.assert_array_equal(extra.numpy(), [[1, 0, 1], [1, 0, 0], [1, 0, 1]])
    within = batch_pseudo_labels(p, 4 / 3, y, budget_rule="within")  # 4 entries: 3 true labels + the best other
    np.testing.assert_array_equal(within.numpy(), [[0, 0, 1], [1, 0, 0], [1, 0, 1]])


def test_batch_pseudo_labels_tie_rules():
    p = torch.tensor([[0.4, 0.4, 0.2], [0.4, 0.3, 0.3]])
    assert int(batch_pseudo_labels(p, 1).sum()) == 3       # midpoint: all ties at the boundary enter
    assert int(batch_pseudo_labels(p, 1, tie_rule="exact").sum()) == 2
    with pytest.raises(UserError):
        batch_pseudo_labels(p, 1, tie_rule="random")


# --------------------------------------------------------------------------- Cole et al. baselines
LOGITS = np.array([[0.3, -1.2, 2.0, 0.1], [-0.5, 0.8, -2.0, 1.5], [1.0, 0.0, -0.7, -0.2]])
Y = np.array([2, 0, 3])
EPS = 1e-5


def hand_an(ls=0.0, weak=False):
    b, c = LOGITS.shape
    total = 0.0
    for i in range(b):
        for j in range(c):
            q = sig(LOGITS[i, j])
            if j == Y[i]:
                total += (1 - ls) * -np.log(q + EPS) + ls * -np.log(1 - q + EPS)
            else:
                w = 1.0 / (c - 1) if weak else 1.0
                total += w * ((1 - ls) * -np.log(1 - q + EPS) + ls * -np.log(q + EPS))
    return total / (b * c)


@pytest.mark.parametrize("ls,weak", [(0.0, False), (0.1, False), (0.0, True)])
def test_an_an_ls_wan(ls, weak):
    got = AssumeNegative(label_smoothing=ls, weak=weak)(torch.tensor(LOGITS), torch.tensor(Y))
    assert got.item() == pytest.approx(hand_an(ls, weak), rel=1e-6)


def hand_epr(k, q=None):
    q = sig(LOGITS) if q is None else q
    b, c = q.shape
    pos = sum(-np.log(q[i, Y[i]] + EPS) for i in range(b)) / (b * c)
    reg = (np.mean([q[i].sum() for i in range(b)]) - k) ** 2 / c ** 2
    return pos + reg


@pytest.mark.parametrize("k", [1, 2.5])
def test_epr(k):
    got = ExpectedPositives(k=k)(torch.tensor(LOGITS), torch.tensor(Y))
    assert got.item() == pytest.approx(hand_epr(k), rel=1e-6)


def test_role_matches_formula_and_owns_its_table():
    b, c = LOGITS.shape
    loss = RegularizedOnlineLabelEstimation(k=2, lr_mult=10, seed=0)
    loss.bind(meta_for(c, [4, 4, 4, 3]))
    assert tuple(loss.table.shape) == (15, c)
    assert loss.table.abs().max().item() <= math.log(0.6 / 0.4) + 1e-6
    idx = torch.tensor([4, 9, 0])
    before = loss.table.detach().clone()
    got = loss.objective({"logits": torch.tensor(LOGITS, dtype=torch.float32)},
                         Batch(torch.zeros(3), torch.tensor(Y), idx))
    table = before.numpy().astype(np.float64)
    table[idx.numpy(), Y] = math.log(0.995 / 0.005)
    est, q = sig(table[idx.numpy()]), sig(LOGITS)
    total = 0.0
    for i in range(b):
        total += 0.5 * (-np.log(q[i, Y[i]] + EPS) - np.log(est[i, Y[i]] + EPS))
        for j in range(c):
            total += 0.5 * (est[i, j] * -np.log(q[i, j] + EPS) + (1 - est[i, j]) * -np.log(1 - q[i, j] + EPS))
            total += 0.5 * (q[i, j] * -np.log(est[i, j] + EPS) + (1 - q[i, j]) * -np.log(1 - est[i, j] + EPS))
    reg = lambda x: (x.sum(1).mean() - 2) ** 2 / c ** 2  # noqa: E731
    expected = total / (b * c) + 0.5 * (reg(q) + reg(est))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert loss.table.grad[idx].abs().sum() > 0 and loss.table.grad[1].abs().sum() == 0
    group, = loss.param_groups()
    assert group["lr_mult"] == 10 and group["params"][0] is loss.table
    assert loss.seen[idx].all() and not loss.seen[1]


def _role_steps(update, batches, lr=0.1, betas=(0.9, 0.999), eps=1e-8):
    """ROLE's table after one optimizer step per batch of indices, the table's gradient a fixed function of the
    batch (only the estimates' part of the loss: Σ est, so each touched entry's gradient is est(1 − est))."""
    from experiments.engine.schemas import OptimConfig

    loss = RegularizedOnlineLabelEstimation(k=1, lr_mult=1.0, seed=3, table_update=update)
    loss.bind(meta_for(3, [2, 2, 2]))
    optim = OptimConfig(_target_="torch.optim.Adam", lr=lr, betas=list(betas), eps=eps)
    groups = [dict(g, lr=lr * g.pop("lr_mult")) for g in loss.param_groups()]
    opts = list(loss.own_optimizers(optim).values()) + ([torch.optim.Adam(groups, betas=betas, eps=eps)]
                                                        if groups else [])
    start = loss.table.detach().clone()
    for idx in batches:
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.estimates(torch.tensor(idx), torch.zeros(len(idx), dtype=torch.long)).sum().backward()
        for o in opts:
            o.step()
    return start, loss


def test_role_rows_is_lazy_adam_on_the_batch_rows_only():
    """rows: a step moves only its batch's rows, by Adam's update with the moments of those rows alone and the
    bias correction of the global step (SparseAdam); dense: a row keeps moving on its momentum after its batch."""
    lr, (b1, b2), eps = 0.1, (0.9, 0.999), 1e-8
    batches = [[0, 1], [2, 3], [0, 4]]
    start, rows = _role_steps("rows", batches, lr, (b1, b2), eps)
    table = start.double().numpy().copy()
    table[[0, 1, 2, 3, 4], 0] = math.log(0.995 / 0.005)     # each row's observed positive (class 0), set when first seen
    m, v = np.zeros_like(table), np.zeros_like(table)
    for t, idx in enumerate(batches, 1):
        g = sig(table[idx]) * (1 - sig(table[idx]))
        m[idx] = b1 * m[idx] + (1 - b1) * g
        v[idx] = b2 * v[idx] + (1 - b2) * g ** 2
        table[idx] -= lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m[idx] / (np.sqrt(v[idx]) + eps)
    np.testing.assert_allclose(rows.table.detach().double().numpy(), table, rtol=1e-5, atol=1e-6)
    assert torch.equal(rows.table.detach()[5], start[5])    # never in a batch: untouched
    _, dense = _role_steps("dense", batches, lr, (b1, b2), eps)
    after_first = _role_steps("dense", batches[:1], lr, (b1, b2), eps)[1].table.detach()
    assert not torch.equal(dense.table.detach()[1], after_first[1])   # row 1 kept moving after its batch
    assert torch.equal(rows.table.detach()[1], _role_steps("rows", batches[:1], lr, (b1, b2), eps)[1].table.detach()[1])


def test_role_rows_needs_a_lazy_optimizer_and_declares_what_it_trains():
    from experiments.engine.schemas import OptimConfig

    loss = RegularizedOnlineLabelEstimation(table_update="rows")
    loss.bind(meta_for(3, [2, 2]))
    with pytest.raises(UserError, match="loss.table_update=rows needs a lazy counterpart of the run's optimizer"):
        loss.own_optimizers(OptimConfig(_target_="torch.optim.RMSprop", lr=0.1))
    assert type(loss.own_optimizers(OptimConfig(_target_="torch.optim.SGD", lr=0.1, momentum=0.9))["table"]).__name__ \
        == "LazySGD"
    assert loss.param_groups() == []
    with pytest.raises(UserError, match="loss.table_update='sparse'"):
        RegularizedOnlineLabelEstimation(table_update="sparse")
    n, c, b = 243_916, 1_081, 32
    cfg = {"table_update": "rows"}
    assert RegularizedOnlineLabelEstimation.trained_state(cfg, n, c, b) == (n * c, b * c)
    assert RegularizedOnlineLabelEstimation.trained_state({"table_update": "dense"}, n, c, b) == (n * c, n * c)
    assert ExpectedPositives.trained_state({}, n, c, b) == (0, 0)


# --------------------------------------------------------------------------- the two-head loss
def two_head_outputs(seed=0, b=6, c=5):
    g = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(b, c, generator=g), "ml": torch.randn(b, c, generator=g)}, \
        torch.randint(0, c, (b,), generator=g)


def hand_two_head(out, y, k, lam, force, pos_weight=1.0):
    a, bl = out["logits"].double().numpy(), out["ml"].double().numpy()
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ce = np.mean([-np.log(p[i, y[i]]) for i in range(len(y))])
    flat = np.sort(p.ravel())[::-1]
    m = int(math.floor(len(y) * k + 0.5))
    pl = (p >= flat[m - 1]).astype(float)
    if force:
        pl[np.arange(len(y)), y] = 1
    q = sig(bl)
    bce = -(pos_weight * pl * np.log(q) + (1 - pl) * np.log(1 - q))
    return ce + lam * bce.mean()


@pytest.mark.parametrize("k,lam,force,pw", [(1, 1.0, True, None), (2, 0.5, False, None), (1, 1.0, True, "balanced")])
def test_two_head_objective(k, lam, force, pw):
    out, y = two_head_outputs()
    loss = TwoHeadLoss(k=k, lambda_ml=lam, pl_force_true=force, pos_weight=pw)
    loss.bind(meta_for(5))
    got = loss.objective(out, Batch(torch.zeros(6), y, torch.arange(6)))
    w = (5 - k) / k if pw == "balanced" else 1.0
    assert got.item() == pytest.approx(hand_two_head(out, y.numpy(), k, lam, force, w), rel=1e-5)


def test_two_head_warmup_scores_and_epoch_scope():
    out, y = two_head_outputs(1)
    batch = Batch(torch.zeros(6), y, torch.arange(6))
    ce = torch.nn.functional.cross_entropy(out["logits"], y).item()
    loss = TwoHeadLoss(k=1, warmup_epochs=2)
    loss.bind(meta_for(5))
    loss.on_epoch_start(0, 5)
    assert loss.objective(out, batch).item() == pytest.approx(ce)
    loss.on_epoch_start(2, 5)
    assert loss.objective(out, batch).item() > ce
    ramp = TwoHeadLoss(k=1, warmup_epochs=4, warmup="ramp")
    ramp.on_epoch_start(1, 5)
    assert ramp.ml_weight() == pytest.approx(0.25)
    s = loss.scores(out)
    assert torch.allclose(s["probs"], out["ml"].sigmoid()) and torch.allclose(s["probs_a"], out["logits"].softmax(1))
    assert set(TwoHeadLoss(infer_head="A").scores(out)) == {"probs", "probs_b"}
    ep = TwoHeadLoss(k=2, pl_scope="epoch", pl_force_true=False)
    ep.bind(meta_for(5))
    ep.on_epoch_start(0, 3)
    for seed in range(3):
        o, t = two_head_outputs(seed)
        ep.objective(o, Batch(torch.zeros(6), t, torch.arange(6)))
    ep.on_epoch_start(1, 3)
    allp = torch.cat([two_head_outputs(s)[0]["logits"].softmax(1) for s in range(3)]).flatten()
    assert ep.tau.item() == pytest.approx(allp.sort(descending=True).values[18 * 2 - 1].item())
    assert TwoHeadLoss.extra_heads == ("ml",)
    with pytest.raises(UserError):
        TwoHeadLoss(pl_scope="global")


# --------------------------------------------------------------------------- conformal sets
def test_aps_scores_and_size_calibration():
    p = random_probs(30, 6, seed=5)
    s = aps_scores(p, penalty=0.1, kreg=1).numpy()
    pn = p.double().numpy()
    for i in range(3):
        for j in range(6):
            above = pn[i] > pn[i, j]
            rank = int(above.sum()) + 1
            assert s[i, j] == pytest.approx(pn[i][above].sum() + pn[i, j] + 0.1 * max(rank - 1, 0))
    for k in (1, 2, 3):
        t = size_calibrated_threshold(torch.from_numpy(s), k)
        assert (s <= t).sum(1).mean() == k
    out = EvalOutputs(outputs={"logits": p}, scores={"probs": p}, targets=p.argmax(1))
    res = fitted(ConformalSets(ks=[2]), out, meta_for(6))
    assert res["aps_size@2"] == 2.0 and res["raps_size@2"] == 2.0
    assert res["aps_alpha@2"] == pytest.approx(1 - res["aps_acc@2"])


def test_aps_u_variants():
    p = random_probs(20, 5, seed=9)
    pn = p.double().numpy()
    pn = pn / pn.sum(1, keepdims=True)
    above = np.array([[pn[i][pn[i] > pn[i, j]].sum() for j in range(5)] for i in range(20)])
    np.testing.assert_allclose(aps_scores(p, u=0.0).numpy(), above, atol=1e-12)
    u = torch.rand(20, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(aps_scores(p, u=u).numpy(), above + u.numpy() * pn, atol=1e-12)
    out = EvalOutputs(outputs={"logits": p}, scores={"probs": p}, targets=p.argmax(1))
    res = fitted(ConformalSets(ks=[1], methods=["aps"]), out, meta_for(5))
    assert res["aps_size@1"] == 1.0 and res["aps_acc@1"] == 1.0   # u = 0, K = 1: every set is the top class
    assert fitted(ConformalSets(ks=[2], aps_u="random"), out, meta_for(5))["aps_size@2"] == pytest.approx(2.0)
    with pytest.raises(UserError, match="validation"):
        ConformalSets(ks=[2])(out, meta_for(5))
    with pytest.raises(UserError):
        ConformalSets(aps_u=2)


def test_by_k_names_option_variants_and_keeps_only_the_listed_methods():
    import pandas as pd

    from average_k.tables import by_k

    def run(loss, seed, **opts):
        return {"loss": loss, "seed": seed, "dataset": "d", "loss.k": 3.0 if loss != "ce" else math.nan,
                "test/avgk_acc@3": 0.5, "test/avgk_macro_acc@3": 0.4, "test/avgk_size@3": 3.0, **opts}

    runs = pd.DataFrame([run("role", 0, **{"loss.table_update": "dense"}),
                         run("role", 0, **{"loss.table_update": "rows"}),
                         run("two_head", 0, **{"loss.pl_budget": "within"}), run("ce", 0)])
    spec = type("Spec", (), {"options": {"ks": [3], "methods": ["role", "role_rows"]}})()
    assert list(by_k(runs, spec)["method"]) == ["role", "role_rows"]
    spec.options = {"ks": [3]}
    assert sorted(by_k(runs, spec)["method"]) == ["ce_threshold", "role", "role_rows", "two_head_within"]
