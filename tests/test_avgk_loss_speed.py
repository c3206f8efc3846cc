"""The fast forms in average_k/losses.py against references written from the formulas (plain autograd, float64)
or, for the pseudo-labels, against the previous implementation kept verbatim here."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from average_k.losses import (
    RegularizedOnlineLabelEstimation,
    TwoHeadLoss,
    _kth_largest,
    _sum_log,
    batch_pseudo_labels,
)
from average_k.metrics import budget
from experiments.engine.data import Meta


def reference_pseudo_labels(probs, k, targets=None, tie_rule="midpoint", budget_rule="extra"):
    """The implementation before the speed-up (global top-k over all B·C entries), verbatim."""
    p = probs.detach()
    b, c = p.shape
    m = min(max(budget(b, k), 1), b * c)
    truth = None
    if targets is not None:
        truth = torch.zeros_like(p, dtype=torch.bool).scatter_(1, targets.long().view(-1, 1), True)
        if budget_rule == "within":
            m = max(m - b, 0)
            p = p.masked_fill(truth, float("-inf"))
    flat = p.reshape(-1)
    if m == 0:
        marked = torch.zeros_like(flat, dtype=torch.bool)
    elif tie_rule == "exact":
        marked = torch.zeros_like(flat, dtype=torch.bool).scatter_(0, flat.topk(m).indices, True)
    else:
        marked = flat >= flat.topk(m).values[-1]
    marked = marked.view(b, c)
    if truth is not None:
        marked = marked | truth
    return marked.to(probs.dtype)


def probs_with_ties(b, c, seed, levels=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(b, c, generator=g, dtype=dtype) * 3, 1)
    if levels:  # coarse values: many entries tied at the boundary
        p = (p * levels).round() / levels
    return p, torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("b,c", [(64, 100), (100, 37), (1024, 100), (33, 1081), (7, 5)])
@pytest.mark.parametrize("levels", [None, 20, 3])
def test_pseudo_labels_identical_to_previous_implementation(b, c, levels):
    p, y = probs_with_ties(b, c, seed=b * c, levels=levels)
    for k in (0.3, 1.0, 2.5, min(c, 4.0)):
        for tie in ("midpoint", "exact"):
            for targets, rule in ((None, "extra"), (y, "extra"), (y, "within")):
                got = batch_pseudo_labels(p, k, targets, tie, rule)
                want = reference_pseudo_labels(p, k, targets, tie, rule)
                assert got.dtype == p.dtype and torch.equal(got, want), (k, tie, rule)


@pytest.mark.parametrize("n", [1, 100, 4096, 6400, 102400, 102401, 1107 * 64 + 13])
def test_kth_largest_equals_topk(n):
    g = torch.Generator().manual_seed(n)
    for x in (torch.rand(n, generator=g), torch.randint(0, 7, (n,), generator=g).float(),
              torch.randn(n, generator=g, dtype=torch.float64)):
        for m in sorted({1, min(2, n), max(1, n // 100), max(1, n // 17), n}):
            assert _kth_largest(x, m) == x.topk(m).values[-1], (n, m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("floor", [1e-5, 1e-10, 0.5])
def test_sum_log_equals_sum_of_logs_at_the_floor_and_above(dtype, floor):
    g = torch.Generator().manual_seed(0)
    for n in (1, 3, 1000, 4099):
        x = floor + (1 - floor) * torch.rand(n, generator=g, dtype=torch.float64)
        x[::3] = floor  # the smallest allowed products
        want = x.log().sum().item()
        got = _sum_log(x.to(dtype), floor).item()
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        assert math.isfinite(got) and got == pytest.approx(want, rel=tol, abs=tol * n)


# ----------------------------------------------------------------------------- ROLE against its formula
def role_reference(logits, table, index, target, k):
    """ROLE from the formula, autograd through the logits and the gathered table rows (float64)."""
    q, est = logits.sigmoid(), table[index].sigmoid()
    b, c = q.shape
    t = target.view(-1, 1)
    nl = lambda v: -torch.log(v + 1e-5)  # noqa: E731
    e, p = est.detach(), q.detach()
    total = 0.5 * (nl(q.gather(1, t)) + nl(est.gather(1, t))).sum()
    total = total + 0.5 * (e * nl(q) + (1 - e) * nl(1 - q) + p * nl(est) + (1 - p) * nl(1 - est)).sum()
    reg = lambda v: (v.sum(1).mean() - k) ** 2 / c ** 2  # noqa: E731
    return total / (b * c) + 0.5 * (reg(q) + reg(est))


def role_setup(b, c, n_rows, scale, seed):
    g = torch.Generator().manual_seed(seed)
    loss = RegularizedOnlineLabelEstimation(k=1.5, seed=seed)
    loss.bind(Meta(num_classes=c, class_names=[str(i) for i in range(c)],
                   class_counts=torch.full((c,), n_rows // c)))
    loss.double()
    logits = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    index = torch.randint(0, n_rows, (b,), generator=g)  # repeats: their rows' gradients add up
    return loss, logits, index, torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("scale", [1.0, 5.0, 30.0, 100.0])
def test_role_value_and_gradients_equal_formula(scale):
    loss, logits, index, target = role_setup(12, 7, 35, scale, seed=int(scale))
    for step in range(2):  # first call: rows seen for the first time get their positive set; then seen rows
        a = logits.clone().requires_grad_()
        loss.table.grad = None
        got = loss(a, target, index)
        got.backward()
        table = loss.table.detach().clone().requires_grad_()
        b = logits.clone().requires_grad_()
        want = role_reference(b, table, index, target, loss.k)
        want.backward()
        assert got.dtype == torch.float64 and got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
        assert torch.allclose(a.grad, b.grad, rtol=1e-7, atol=1e-12)
        assert torch.allclose(loss.table.grad, table.grad, rtol=1e-7, atol=1e-12)
        unseen = torch.ones(len(table), dtype=torch.bool)
        unseen[index] = False
        assert (loss.table.grad[unseen] == 0).all()
        with torch.no_grad():
            loss.table.sub_(loss.table.grad * 50)  # move the table so the second step sees other estimates


def test_role_float32_close_to_float64_and_eval_is_epr():
    loss, logits, index, target = role_setup(16, 9, 45, 3.0, seed=3)
    got64 = loss(logits, target, index)
    loss.float()
    got32 = loss(logits.float(), target, index)
    assert got32.dtype == torch.float32 and got32.item() == pytest.approx(got64.item(), rel=1e-5)
    q = logits.sigmoid()
    epr = -torch.log(q.gather(1, target[:, None]) + 1e-5).sum() / q.numel() + (q.sum(1).mean() - 1.5) ** 2 / 81
    assert loss(logits, target).item() == pytest.approx(epr.item(), rel=1e-9)


# ----------------------------------------------------------------------------- the two-head loss
def two_head_reference(logits, ml, target, k, pos_weight, tie_rule, budget_rule):
    """CE of head A in float32 (as the loss takes it) + BCE of head B on the previous pseudo-labels."""
    ce = F.cross_entropy(logits.float(), target)
    labels = reference_pseudo_labels(logits.detach().float().softmax(1), k, target, tie_rule, budget_rule).to(ml)
    pw = torch.full((logits.shape[1],), pos_weight, dtype=logits.dtype)
    return ce + F.binary_cross_entropy_with_logits(ml, labels, pos_weight=pw)


@pytest.mark.parametrize("scale", [1.0, 3.0, 30.0, 100.0])
@pytest.mark.parametrize("pos_weight,tie_rule,budget_rule", [(None, "midpoint", "extra"),
                                                             ("balanced", "exact", "within"), (3.0, "midpoint", "within")])
def test_two_head_value_and_gradients_equal_reference(scale, pos_weight, tie_rule, budget_rule):
    b, c, k = 24, 11, 2.0
    g = torch.Generator().manual_seed(int(scale))
    logits = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    ml = torch.randn(b, c, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, c, (b,), generator=g)
    loss = TwoHeadLoss(k=k, pos_weight=pos_weight, pl_tie_rule=tie_rule, pl_budget=budget_rule)
    loss.bind(Meta(num_classes=c, class_names=[str(i) for i in range(c)], class_counts=torch.ones(c)))
    w = (c - k) / k if pos_weight == "balanced" else (1.0 if pos_weight is None else pos_weight)
    a, m1 = logits.clone().requires_grad_(), ml.clone().requires_grad_()
    bb, m2 = logits.clone().requires_grad_(), ml.clone().requires_grad_()
    got = loss(a, target, m1)
    want = two_head_reference(bb, m2, target, k, w, tie_rule, budget_rule)
    got.backward()
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)  # the float32 CE: −log p_y vs log_softmax
    assert torch.allclose(a.grad, bb.grad, rtol=1e-5, atol=1e-8)
    assert torch.allclose(m1.grad, m2.grad, rtol=1e-9, atol=1e-15)


def test_two_head_cross_entropy_when_the_target_probability_underflows():
    z = torch.full((4, 6), -100.0)
    z[:, 0] = 100.0
    y = torch.tensor([1, 2, 0, 3])
    for dtype in (torch.float32, torch.float64):
        a, b = z.to(dtype).clone().requires_grad_(), z.to(dtype).clone().requires_grad_()
        got = TwoHeadLoss(k=1.0)(a, y, torch.zeros(4, 6, dtype=dtype)) - math.log(2)  # BCE at 0 logits: log 2
        want = F.cross_entropy(b, y)
        got.backward()
        want.backward()
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
        assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_a_numeric_pos_weight_applies_without_bind():
    """Drop-in use: a number needs no class count (only `balanced` does, set by `bind`)."""
    g = torch.Generator().manual_seed(3)
    x, labels = torch.randn(6, 4, generator=g, dtype=torch.float64), (torch.rand(6, 4, generator=g) < 0.3).double()
    got = TwoHeadLoss(k=1.0, pos_weight=3.0).ml_loss(x, labels)
    want = F.binary_cross_entropy_with_logits(x, labels, pos_weight=torch.full((4,), 3.0, dtype=torch.float64))
    assert got.item() == pytest.approx(want.item(), abs=1e-12)
