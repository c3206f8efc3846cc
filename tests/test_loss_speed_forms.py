"""The fused/closed-form losses against literal float64 formulas: value and gradient (torch.autograd.grad), at
ordinary and saturated logits (±30, ±100, the target far above or below the rest), plus finite float32 values and
gradients at saturation and finite-difference gradient checks. The references are written naively here (or are
the literal official-code ports of tests/test_cce_losses.py); where a naive float64 reference overflows to
inf/NaN only the implementation's finiteness is checked."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from average_k.losses import (
    AssumeNegative,
    ExpectedPositives,
    RegularizedOnlineLabelEstimation,
    TwoHeadLoss,
)
from experiments.engine.data import Batch, Meta
from experiments.losses import ComplementCrossEntropy, ComplementEntropy, SimLoss
from experiments.losses.longtail import (
    BalancedSoftmax,
    ClassBalancedLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    class_balanced_weights,
    ldam_margins,
)
from tests.helpers.reference_losses import cot_complement, official_cce

C = 5
COUNTS = [400, 90, 20, 6, 2]
META = Meta(num_classes=C, class_names=[f"c{i}" for i in range(C)], class_counts=torch.tensor(COUNTS))
IDX = torch.arange(C, dtype=torch.float64)
SIM = 0.5 ** (IDX[:, None] - IDX[None, :]).abs()
SIM[0, 3] = SIM[3, 0] = 0.0


# ----------------------------------------------------------------------------- naive float64 references
def ref_focal(z, y, gamma, alpha=None):
    pt = z.softmax(1).gather(1, y[:, None]).squeeze(1)
    a = 1.0 if alpha is None else torch.as_tensor(alpha, dtype=z.dtype)[y] if not isinstance(alpha, float) else alpha
    return (-a * (1 - pt) ** gamma * pt.log()).mean()


def ref_cb(z, y, beta, base, gamma, reduction):
    """Cui et al.: softmax bases as w_y·L; sigmoid bases as their cifar_main.py (BCE with one-hot labels, modulator
    exp(−γ·y·z − γ·log(1 + exp(−z))), sum over classes, divided by the number of positive labels)."""
    w = class_balanced_weights(torch.tensor(COUNTS), beta)[y]
    if base.startswith("sigmoid"):
        labels = F.one_hot(y, C).double()
        bce = F.binary_cross_entropy_with_logits(z, labels, reduction="none")
        mod = torch.exp(-gamma * labels * z - gamma * torch.log(1 + torch.exp(-z))) if base == "sigmoid_focal" else 1
        per = (mod * bce).sum(1)
    else:
        pt = z.softmax(1).gather(1, y[:, None]).squeeze(1)
        per = -(1 - pt) ** (gamma if base == "softmax_focal" else 0.0) * pt.log()
    return (w * per).sum() / (len(y) if reduction == "mean" else w.sum())


def ref_ldam(z, y, drw):
    m = ldam_margins(torch.tensor(COUNTS), 0.5)
    weight = class_balanced_weights(torch.tensor(COUNTS), 0.9999) if drw else None
    return F.cross_entropy(30.0 * (z - F.one_hot(y, C) * m[y][:, None]), y, weight=weight)


def ref_prior(z, y, tau):
    n = torch.tensor(COUNTS, dtype=torch.float64)
    return F.cross_entropy(z + tau * (n / n.sum()).log(), y)


def ref_paper_cce(z, y, gamma=-1.0, norm="K_minus_1"):
    """Holocron: CE + γ/(K−1)·mean H_c, p̃ = ŷ/(1 − ŷ_g) on the wrong classes (no epsilons)."""
    p = z.softmax(1)
    mask = F.one_hot(y, C).bool()
    pt = (p / (1 - p.gather(1, y[:, None]))).masked_fill(mask, 1.0)
    h = -(pt * pt.log()).sum(1)
    return F.cross_entropy(z, y) + gamma / (C - 1 if norm == "K_minus_1" else C) * h.mean()


def ref_cce_outside(z, y, gamma=-1.0):
    """The current cce.py: P = ŷ/(1 − ŷ_g) + 1e−7, CE − b·Σ P log(P + 1e−10)/(N·K)."""
    p = z.softmax(1)
    px = p / (1 - p.gather(1, y[:, None])) + 1e-7
    t = (px * torch.log(px + 1e-10)).masked_fill(F.one_hot(y, C).bool(), 0.0).sum() / (len(y) * C)
    return F.cross_entropy(z, y) + gamma * t


def ref_simloss(z, y, eps):
    return -((SIM[y] * z.softmax(1)).sum(1) + eps).log().mean()


def ref_an(z, y, ls=0.0, weak=False):
    q = z.sigmoid()
    pos = F.one_hot(y, C).bool()
    lp, ln = -torch.log(q + 1e-5), -torch.log(1 - q + 1e-5)
    neg = ((1 - ls) * ln + ls * lp) / ((C - 1) if weak else 1)
    return torch.where(pos, (1 - ls) * lp + ls * ln, neg).sum() / q.numel()


def ref_epr(z, y, k, norm):
    q = z.sigmoid()
    d = q.sum(1).mean() - k
    return -torch.log(q.gather(1, y[:, None]) + 1e-5).sum() / q.numel() + (d.abs() if norm == "1" else d ** 2) / C ** 2


def two_head_ml(pos_weight, reduction):
    loss = TwoHeadLoss(k=1.0, pos_weight=pos_weight, ml_reduction=reduction)
    loss.bind(META)
    labels = (torch.arange(12 * C).view(12, C) % 3 == 0).double()

    def ours(z, y):
        return loss.ml_loss(z, labels)

    def ref(z, y):
        value = {None: None, "balanced": (C - 1.0) / 1.0}.get(pos_weight, pos_weight)  # (C − K)/K with K = 1
        pw = None if value is None else torch.full((C,), float(value), dtype=torch.float64)
        per = F.binary_cross_entropy_with_logits(z, labels, pos_weight=pw, reduction="none")
        return per.mean() if reduction == "mean" else per.sum(1).mean()

    return ours, ref


def bound(loss):
    loss.bind(META)
    return loss


def ldam(drw):
    loss = bound(LDAMLoss(drw_epoch=1))
    loss.on_epoch_start(1 if drw else 0, 2)
    return loss


CASES = {
    "focal_g2": (FocalLoss(2.0), lambda z, y: ref_focal(z, y, 2.0)),
    "focal_g05_alpha_list": (bound(FocalLoss(0.5, alpha=[0.1, 0.2, 0.3, 0.4, 0.5])),
                             lambda z, y: ref_focal(z, y, 0.5, [0.1, 0.2, 0.3, 0.4, 0.5])),
    "focal_g1_alpha_scalar": (FocalLoss(1.0, alpha=0.25), lambda z, y: ref_focal(z, y, 1.0, 0.25)),
    **{f"cb_{base}_{red}": (ClassBalancedLoss(beta=0.99, base=base, gamma=2.0, reduction=red, class_counts=COUNTS),
                            lambda z, y, base=base, red=red: ref_cb(z, y, 0.99, base, 2.0, red))
       for base in ("ce", "softmax_focal", "sigmoid", "sigmoid_focal") for red in ("mean", "weighted_mean")},
    "ldam": (ldam(False), lambda z, y: ref_ldam(z, y, False)),
    "ldam_drw": (ldam(True), lambda z, y: ref_ldam(z, y, True)),
    "balanced_softmax": (BalancedSoftmax(class_counts=COUNTS), lambda z, y: ref_prior(z, y, 1.0)),
    "logit_adjusted_tau2": (LogitAdjustedLoss(tau=2.0, class_counts=COUNTS), lambda z, y: ref_prior(z, y, 2.0)),
    "cce_paper": (ComplementCrossEntropy(), ref_paper_cce),
    "cce_paper_gamma2_normK": (ComplementCrossEntropy(gamma=2.0, norm="K"),
                               lambda z, y: ref_paper_cce(z, y, 2.0, "K")),
    "cce_official": (ComplementCrossEntropy(variant="official"), lambda z, y: official_cce(z, y)),
    "cce_official_gamma3": (ComplementCrossEntropy(gamma=-3.0, variant="official"),
                            lambda z, y: official_cce(z, y, balancing_factor=3.0)),
    "cce_official_outside": (ComplementCrossEntropy(variant="official", eps_placement="outside"), ref_cce_outside),
    "cot": (ComplementEntropy(), cot_complement),
    "cot_exact_Kminus1": (ComplementEntropy(norm="K_minus_1", eps_div=0.0, eps_log=0.0),
                          lambda z, y: ref_paper_cce(z, y, -1.0) - F.cross_entropy(z, y)),
    "simloss": (SimLoss(SIM), lambda z, y: ref_simloss(z, y, 1e-8)),
    "simloss_eps0": (SimLoss(SIM, eps=0.0), lambda z, y: ref_simloss(z, y, 0.0)),
    "simloss_prob": (SimLoss(SIM, impl="prob"), lambda z, y: ref_simloss(z, y, 1e-8)),
    "an": (AssumeNegative(), ref_an),
    "an_ls": (AssumeNegative(label_smoothing=0.1), lambda z, y: ref_an(z, y, 0.1)),
    "wan": (AssumeNegative(weak=True), lambda z, y: ref_an(z, y, weak=True)),
    "epr_2": (ExpectedPositives(k=1.0), lambda z, y: ref_epr(z, y, 1.0, "2")),
    "epr_1": (ExpectedPositives(k=2.5, norm="1"), lambda z, y: ref_epr(z, y, 2.5, "1")),
    **{f"two_head_ml_{pw}_{red}": two_head_ml(pw, red) for pw in (None, "balanced", 3.0)
       for red in ("mean", "sum_classes")},
}


def logits(kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (12,), generator=g)
    if kind == "normal":
        return torch.randn(12, C, generator=g, dtype=torch.float64) * 2, y
    if kind.startswith("pm"):
        return (torch.randint(0, 2, (12, C), generator=g) * 2 - 1).double() * float(kind[2:]), y
    value = float(kind.rsplit("_", 1)[1])
    sign = 1.0 if kind.startswith("target_high") else -1.0
    z = torch.full((12, C), -sign * value, dtype=torch.float64)
    z[:, 1] = -sign * value / 3  # a second level among the wrong classes
    return z.scatter(1, y[:, None], sign * value), y


KINDS = ["normal", "pm30", "pm100", "target_high_30", "target_high_100", "target_low_30", "target_low_100"]


def call(loss, z, y):
    return loss(z, y) if isinstance(loss, torch.nn.Module) else loss(z, y)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_value_and_gradient_equal_reference_float64(name, kind):
    loss, ref = CASES[name]
    z, y = logits(kind)
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    got, want = call(loss, a, y), ref(b, y)
    g_got, = torch.autograd.grad(got, a)
    assert got.dtype == torch.float64 and torch.isfinite(got) and torch.isfinite(g_got).all()
    if torch.isfinite(want):
        assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-9)
        g_want, = torch.autograd.grad(want, b)
        if torch.isfinite(g_want).all():
            assert torch.allclose(g_got, g_want, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "normal"])
@pytest.mark.parametrize("name", list(CASES))
def test_float32_saturated_is_finite_and_close(name, kind):
    loss, ref = CASES[name]
    z64, y = logits(kind)
    z = z64.float().requires_grad_()
    got = call(loss, z, y)
    g, = torch.autograd.grad(got, z)
    assert got.dtype == torch.float32 and torch.isfinite(got) and torch.isfinite(g).all()
    exact = call(loss, z64, y)
    assert got.item() == pytest.approx(exact.item(), rel=1e-5, abs=1e-5)


GRADCHECK = ["focal_g2", "focal_g05_alpha_list", "cb_sigmoid_focal_mean", "cb_sigmoid_weighted_mean",
             "cb_softmax_focal_weighted_mean", "ldam", "cce_paper", "cce_official", "cce_official_outside", "cot",
             "simloss", "simloss_eps0", "an", "an_ls", "epr_1", "two_head_ml_balanced_sum_classes"]


@pytest.mark.parametrize("name", GRADCHECK)
def test_gradcheck(name):
    loss, _ = CASES[name]
    z, y = logits("normal", seed=3)
    assert torch.autograd.gradcheck(lambda t: call(loss, t, y), (z.requires_grad_(),))


def test_simloss_log_space_rows_only_where_needed():
    """eps = 0: a row whose weighted probability underflows is computed in log space (exact, finite), the others
    in the probability form; the mix equals the per-row log-space value."""
    z = torch.tensor([[200.0, -200.0, 0.0, 0.0, 0.0], [0.5, 0.2, -0.3, 1.0, 0.0]], requires_grad=True)
    y = torch.tensor([1, 2])
    s = torch.eye(C, dtype=torch.float64)
    loss = SimLoss(s, eps=0.0)(z, y)
    g, = torch.autograd.grad(loss, z)
    expect = (400.0 + F.cross_entropy(z[1:].detach(), y[1:]).item()) / 2
    assert loss.item() == pytest.approx(expect, rel=1e-6) and torch.isfinite(g).all()
    assert g[0, 1].item() == pytest.approx(-0.5, abs=1e-6)


@pytest.mark.parametrize("value", [30.0, 100.0])
def test_role_and_two_head_objective_saturated_finite(value):
    z = torch.full((6, C), -value)
    y = torch.arange(6) % C
    z[torch.arange(6), y] = value
    role = bound(RegularizedOnlineLabelEstimation(k=1.0))
    two = bound(TwoHeadLoss(k=1.0))
    for loss, extra in ((role, torch.arange(6)), (two, None)):
        a = z.clone().requires_grad_()
        out = {"logits": a, "ml": -a} if loss is two else {"logits": a}
        value_ = loss.objective(out, Batch(torch.zeros(6), y, extra if extra is not None else torch.arange(6)))
        g, = torch.autograd.grad(value_, a)
        assert torch.isfinite(value_) and torch.isfinite(g).all()


def test_cce_float32_matches_float64_at_moderate_logits():
    z, y = logits("normal", seed=5)
    for loss in (ComplementCrossEntropy(), ComplementCrossEntropy(variant="official"), ComplementEntropy()):
        a = z.float().requires_grad_()
        got = loss(a, y)
        g, = torch.autograd.grad(got, a)
        b = z.clone().requires_grad_()
        want = loss(b, y)
        gw, = torch.autograd.grad(want, b)
        assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
        assert torch.allclose(g.double(), gw, atol=1e-6)
        assert math.isfinite(got.item())
