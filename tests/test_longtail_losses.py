"""Focal, class-balanced, LDAM-DRW, balanced softmax, logit adjustment (loss and post-hoc) vs written-out formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from experiments.engine.data import Meta
from experiments.engine.errors import UserError
from experiments.engine.metrics import EvalOutputs, PostHocLogitAdjustment
from experiments.losses import (
    BalancedSoftmax,
    ClassBalancedLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
)

COUNTS = [500, 120, 40, 9, 3]


@pytest.fixture
def zy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 5, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (32,), generator=g)
    return z, y


def meta(counts=COUNTS):
    return Meta(num_classes=len(counts), class_names=[f"c{i}" for i in range(len(counts))],
                class_counts=torch.tensor(counts))


def probs(z):
    e = [[math.exp(v) for v in row] for row in z.tolist()]
    return [[v / sum(row) for v in row] for row in e]


# ----------------------------------------------------------------------------- focal
def test_focal_gamma0_is_ce(zy):
    z, y = zy
    assert FocalLoss(gamma=0.0)(z, y).item() == pytest.approx(F.cross_entropy(z, y).item(), abs=1e-12)


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (1.0, 0.25), (0.5, [0.1, 0.2, 0.3, 0.4, 0.5])])
def test_focal_formula(zy, gamma, alpha):
    z, y = zy
    p = probs(z)
    terms = []
    for i, g in enumerate(y.tolist()):
        a = 1.0 if alpha is None else alpha if isinstance(alpha, float) else alpha[g]
        terms.append(-a * (1 - p[i][g]) ** gamma * math.log(p[i][g]))
    loss = FocalLoss(gamma=gamma, alpha=alpha)
    loss.bind(meta())
    assert loss(z, y).item() == pytest.approx(sum(terms) / len(terms), abs=1e-9)


def test_focal_confident_finite():
    z = torch.tensor([[80.0, 0.0, 0.0]], requires_grad=True)
    loss = FocalLoss(gamma=0.5)(z, torch.zeros(1, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_focal_alpha_length_checked():
    with pytest.raises(UserError):
        FocalLoss(alpha=[0.5, 0.5]).bind(meta())
    with pytest.raises(UserError):
        FocalLoss(gamma=-1)


# ----------------------------------------------------------------------------- class-balanced
def cb_weights(counts, beta):
    w = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [v / sum(w) * len(counts) for v in w]


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_class_balanced_ce(zy, beta):
    z, y = zy
    w = cb_weights(COUNTS, beta)
    ce = [-math.log(probs(z)[i][g]) for i, g in enumerate(y.tolist())]
    loss = ClassBalancedLoss(beta=beta)
    loss.bind(meta())
    expect = sum(w[g] * c for g, c in zip(y.tolist(), ce)) / len(ce)
    assert loss(z, y).item() == pytest.approx(expect, rel=1e-9)
    wm = ClassBalancedLoss(beta=beta, reduction="weighted_mean", class_counts=COUNTS)(z, y)
    ref = F.cross_entropy(z, y, weight=torch.tensor(w, dtype=torch.float64))
    assert wm.item() == pytest.approx(ref.item(), rel=1e-6)


def test_class_balanced_focal_and_empty(zy):
    z, y = zy
    p = probs(z)
    w = cb_weights(COUNTS, 0.99)
    terms = [w[g] * (1 - p[i][g]) * -math.log(p[i][g]) for i, g in enumerate(y.tolist())]
    got = ClassBalancedLoss(beta=0.99, base="focal", gamma=1.0, class_counts=COUNTS)(z, y)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    empty = ClassBalancedLoss(class_counts=[10, 0, 5, 5, 5])
    assert empty.weights[1] == 0 and torch.isfinite(empty(z, y))
    assert empty.weights.sum().item() == pytest.approx(5.0)


def test_counts_required(zy):
    with pytest.raises(UserError):
        BalancedSoftmax()(*zy)


# ----------------------------------------------------------------------------- LDAM-DRW
def test_ldam_formula_and_drw(zy):
    z, y = zy
    m = [n ** -0.25 for n in COUNTS]
    m = [v * 0.5 / max(m) for v in m]
    s = 30.0

    def ldam(weights):
        tot, wsum = 0.0, 0.0
        for i, g in enumerate(y.tolist()):
            row = [s * (v - (m[g] if j == g else 0.0)) for j, v in enumerate(z[i].tolist())]
            mx = max(row)
            lse = mx + math.log(sum(math.exp(r - mx) for r in row))
            w = 1.0 if weights is None else weights[g]
            tot += w * (lse - row[g])
            wsum += w
        return tot / wsum

    loss = LDAMLoss(max_m=0.5, s=s, drw_epoch=3)
    loss.bind(meta())
    loss.on_epoch_start(2, 10)
    assert loss(z, y).item() == pytest.approx(ldam(None), rel=1e-9)
    loss.on_epoch_start(3, 10)
    assert loss(z, y).item() == pytest.approx(ldam(cb_weights(COUNTS, 0.9999)), rel=1e-6)
    frac = LDAMLoss(drw_epoch=None, drw_fraction=0.8, class_counts=COUNTS)
    frac.on_epoch_start(7, 10)
    assert not frac.drw_active
    frac.on_epoch_start(8, 10)
    assert frac.drw_active
    plain = LDAMLoss(drw_epoch=None, class_counts=COUNTS)
    plain.on_epoch_start(500, 1000)
    assert not plain.drw_active


def test_ldam_empty_class_and_options():
    m = LDAMLoss(class_counts=[100, 0, 1]).margins
    assert torch.isfinite(m).all() and m.max().item() == pytest.approx(0.5)
    with pytest.raises(UserError):
        LDAMLoss(drw_epoch=160, drw_fraction=0.8)


# ----------------------------------------------------------------------------- balanced softmax / logit adjustment
def test_balanced_softmax(zy):
    z, y = zy
    tot = 0.0
    for i, g in enumerate(y.tolist()):
        num = COUNTS[g] * math.exp(z[i, g].item())
        den = sum(n * math.exp(v) for n, v in zip(COUNTS, z[i].tolist()))
        tot += -math.log(num / den)
    assert BalancedSoftmax(class_counts=COUNTS)(z, y).item() == pytest.approx(tot / len(y), rel=1e-9)
    assert torch.isfinite(BalancedSoftmax(class_counts=[5, 0, 1, 1, 1])(z, y))


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_loss(zy, tau):
    z, y = zy
    pi = [n / sum(COUNTS) for n in COUNTS]
    tot = 0.0
    for i, g in enumerate(y.tolist()):
        den = sum(p ** tau * math.exp(v) for p, v in zip(pi, z[i].tolist()))
        tot += -math.log(pi[g] ** tau * math.exp(z[i, g].item()) / den)
    loss = LogitAdjustedLoss(tau=tau)
    loss.bind(meta())
    assert loss(z, y).item() == pytest.approx(tot / len(y), rel=1e-9)
    if tau == 1.0:  # τ = 1 is balanced softmax
        assert loss(z, y).item() == pytest.approx(BalancedSoftmax(class_counts=COUNTS)(z, y).item(), rel=1e-9)


def test_posthoc_logit_adjustment(zy):
    z, y = zy
    pi = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    out = EvalOutputs(outputs={"logits": z}, scores={}, targets=y)
    res = PostHocLogitAdjustment(tau=1.0)(out, meta())
    pred = [max(range(5), key=lambda c: z[i, c].item() - math.log(pi[c].item())) for i in range(len(y))]
    acc = sum(p == g for p, g in zip(pred, y.tolist())) / len(y)
    assert res["la_accuracy"] == pytest.approx(acc)
    per = [sum(p == g == c for p, g in zip(pred, y.tolist())) / max(1, (y == c).sum().item()) for c in range(5)]
    present = [c for c in range(5) if (y == c).any()]
    assert res["la_balanced_accuracy"] == pytest.approx(sum(per[c] for c in present) / len(present))
    # τ chosen on validation, passed unchanged to test
    metric = PostHocLogitAdjustment(taus=[0.0, 1.0, 2.0])
    state = metric.fit(out, meta())
    assert state in (0.0, 1.0, 2.0)
    assert metric(out, meta(), state)["la_tau"] == state


# ----------------------------------------------------------------------------- Cui et al.'s sigmoid bases
def cui_sigmoid_loop(z, y, counts, beta, gamma, focal):
    """cifar_main.py `sigmoid`/`focal` written as plain loops: w_y·Σ_j modulator·BCE(z_j, 1[j=y]), summed over the
    batch and divided by the number of positive labels (one per sample)."""
    eff = [(1 - beta) / (1 - beta ** n) for n in counts]
    w = [v / sum(eff) * len(counts) for v in eff]
    total = 0.0
    for row, g in zip(z.tolist(), y.tolist()):
        for j, v in enumerate(row):
            lab = 1.0 if j == g else 0.0
            bce = max(v, 0.0) - v * lab + math.log(1 + math.exp(-abs(v)))
            mod = math.exp(-gamma * lab * v - gamma * math.log(1 + math.exp(-v))) if focal else 1.0
            total += w[g] * mod * bce
    return total / len(y)


def test_cb_sigmoid_focal_known_answer():
    """logits [1, −1], target 0, counts [500, 5], β = 0.9, γ = 2: Cui's sigmoid focal 0.02633, softmax focal 0.00105."""
    z, y = torch.tensor([[1.0, -1.0]]), torch.tensor([0])
    sig = ClassBalancedLoss(beta=0.9, base="sigmoid_focal", gamma=2.0, class_counts=[500, 5])(z, y)
    soft = ClassBalancedLoss(beta=0.9, base="softmax_focal", gamma=2.0, class_counts=[500, 5])(z, y)
    assert sig.item() == pytest.approx(0.02633, abs=5e-6)
    assert soft.item() == pytest.approx(0.00105, abs=5e-6)
    assert sig.item() == pytest.approx(cui_sigmoid_loop(z, y, [500, 5], 0.9, 2.0, True), rel=1e-6)


@pytest.mark.parametrize("base,gamma", [("sigmoid", 0.0), ("sigmoid_focal", 1.0), ("sigmoid_focal", 2.0),
                                        ("sigmoid_focal", 0.5)])
def test_cb_sigmoid_bases_match_loops(zy, base, gamma):
    z, y = zy
    got = ClassBalancedLoss(beta=0.999, base=base, gamma=gamma, class_counts=COUNTS)(z, y)
    want = cui_sigmoid_loop(z, y, COUNTS, 0.999, gamma, base == "sigmoid_focal")
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_cb_focal_is_deprecated_softmax_focal_alias(zy):
    z, y = zy
    old = ClassBalancedLoss(beta=0.99, base="focal", gamma=2.0, class_counts=COUNTS)
    assert old.base == "softmax_focal"
    new = ClassBalancedLoss(beta=0.99, base="softmax_focal", gamma=2.0, class_counts=COUNTS)
    assert old(z, y).item() == new(z, y).item()
    with pytest.raises(UserError):
        ClassBalancedLoss(base="sigmoid_ce")


def test_ldam_gradient_matches_formula(zy):
    z, y = zy
    m = torch.tensor(COUNTS, dtype=torch.float64) ** -0.25
    m = m * 0.5 / m.max()
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    got = LDAMLoss(drw_epoch=None, class_counts=COUNTS)(a, y)
    want = F.cross_entropy(30.0 * (b - F.one_hot(y, 5) * m[y][:, None]), y)
    ga, = torch.autograd.grad(got, a)
    gb, = torch.autograd.grad(want, b)
    assert torch.allclose(ga, gb, atol=1e-12) and got.item() == pytest.approx(want.item(), rel=1e-12)
