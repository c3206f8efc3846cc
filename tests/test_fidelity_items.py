"""Issue 22's four fidelity items, each against a reference written here (not the code under test):
(b) CDW-CE at saturated logits, (c) randomised RAPS under `raps_rule: official`, (d) float32 gradients of AN / AN-LS /
WAN, (a) one top-1 tie rule for the hierarchy metrics."""
from __future__ import annotations

import math

import pytest
import torch

from age_estimation.ordinal_losses import CDWCE
from average_k.conformal import aps_scores
from average_k.losses import AssumeNegative
from experiments.engine.data import Meta
from experiments.engine.errors import UserError
from experiments.engine.metrics import EvalOutputs
from image_classification.hierarchy import HierarchicalDistance
from image_classification.metrics import SuperclassMetrics

# ---------------------------------------------------------------- (b) CDW-CE

def cdw_ce_reference(z: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """The paper's −Σ_i |i − y|^α·log(1 − p_i) in float64, log(1 − p_i) = log Σ_{j≠i} e^{z_j} − log Σ_j e^{z_j}
    (1 − p_i itself is 0 in float64 once p_i is within 1e-16 of 1), one class at a time."""
    z = z.double()
    c = z.shape[1]
    total = z.new_zeros(())
    lse = torch.logsumexp(z, dim=1)
    for i in range(c):
        others = torch.logsumexp(torch.cat([z[:, :i], z[:, i + 1:]], dim=1), dim=1)
        weight = (i - y).abs().double() ** alpha
        total = total - (weight * (others - lse)).sum()
    return total / z.shape[0]


def cdw_ce_official(z: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Polat et al.'s `ClassDistanceWeightedLoss` (utils/loss.py): (1 − softmax).clamp_(min=1e-4), −log, × |k − y|^α."""
    sm = z.softmax(dim=1)
    weight = torch.stack([torch.tensor([abs(k - t) for k in range(z.shape[1])], dtype=z.dtype) for t in y.tolist()])
    return (-torch.log((1 - sm).clamp_(min=1e-4)) * weight.pow(alpha)).sum(dim=1).mean()


def value_and_grad(fn, z):
    z = z.clone().requires_grad_()
    out = fn(z)
    out.backward()
    return out.item(), z.grad


def test_cdw_ce_saturated_example_exact_and_official():
    z, y = torch.tensor([[30.0, -30.0, -30.0]]), torch.tensor([2])
    # 2·(60 − log 2) + 1·(≈ 0): the paper's value; its gradient ≈ [2, −1, −1]
    assert cdw_ce_reference(z, y, 1.0).item() == pytest.approx(120 - 2 * math.log(2), rel=1e-12)
    value, grad = value_and_grad(lambda t: CDWCE(1.0)(t, y), z)
    ref_value, ref_grad = value_and_grad(lambda t: cdw_ce_reference(t, y, 1.0), z.double())
    assert value == pytest.approx(ref_value, rel=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
    assert ref_grad[0].tolist() == pytest.approx([2.0, -1.0, -1.0], abs=1e-12)
    value, grad = value_and_grad(lambda t: CDWCE(1.0, one_minus_p="official")(t, y), z)
    assert value == pytest.approx(2 * -math.log(1e-4), rel=1e-6) == pytest.approx(18.42068, rel=1e-6)
    assert grad.abs().max().item() < 1e-20  # the clamp kills the gradient
    assert CDWCE(1.0, one_minus_p="dlordinal")(z, y).item() == pytest.approx(36.84136, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("scale", [1.0, 8.0, 40.0])
def test_cdw_ce_exact_matches_the_paper_formula_in_float64(alpha, scale):
    g = torch.Generator().manual_seed(22)
    z, y = torch.randn(16, 6, generator=g) * scale, torch.randint(0, 6, (16,), generator=g)
    z[0] = torch.tensor([50.0, 50.0, -3, -3, -3, -3])  # tied top: neither p exceeds ½
    z[1] = torch.tensor([-80.0, 80.0, -80, 0, 0, -80])  # p_1 rounds to 1 even in float64
    value, grad = value_and_grad(lambda t: CDWCE(alpha)(t, y), z)
    ref_value, ref_grad = value_and_grad(lambda t: cdw_ce_reference(t, y, alpha), z.double())
    assert value == pytest.approx(ref_value, rel=2e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_cdw_ce_official_option_matches_polat_code_away_from_and_at_the_clamp():
    g = torch.Generator().manual_seed(5)
    z, y = torch.randn(12, 5, generator=g, dtype=torch.float64) * 6, torch.randint(0, 5, (12,), generator=g)
    value, grad = value_and_grad(lambda t: CDWCE(2.0, one_minus_p="official")(t, y), z.float())
    ref_value, ref_grad = value_and_grad(lambda t: cdw_ce_official(t, y, 2.0), z)
    assert value == pytest.approx(ref_value, rel=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_cdw_ce_bad_option_and_too_few_classes():
    with pytest.raises(UserError, match="one_minus_p"):
        CDWCE(one_minus_p="clip")
    with pytest.raises(UserError, match="2 classes"):
        CDWCE()(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- (c) randomised RAPS

def official_giq_all_classes(p, U, lam, kreg):
    """aangelopoulos/conformal_classification `get_tau(randomized=True, allow_zero_sets=True)` (what `giq` feeds the
    calibration) with every class in turn as the target, U one draw per row."""
    n, c = p.shape
    penalties = [lam if j >= kreg else 0.0 for j in range(c)]  # penalties[:, kreg:] += lamda
    out = torch.empty(n, c, dtype=torch.float64)
    for i in range(n):
        order = sorted(range(c), key=lambda j: -p[i, j].item())
        ordered = [p[i, j].item() for j in order]
        cumsum = [sum(ordered[:r + 1]) for r in range(c)]
        for r, j in enumerate(order):
            if r == 0:
                out[i, j] = U[i] * cumsum[0] + penalties[0]
            else:
                out[i, j] = U[i] * ordered[r] + cumsum[r - 1] + sum(penalties[:r + 1])
    return out


def official_gcq_sizes(p, tau, U, lam, kreg, randomized):
    """The official `gcq` set sizes (allow_zero_sets=True): the first sizes[i] classes of row i by probability."""
    n, c = p.shape
    penalties_cumsum = [lam * max(0, r + 1 - kreg) for r in range(c)]
    sizes = []
    for i in range(n):
        ordered = sorted(p[i].tolist(), reverse=True)
        cumsum = [sum(ordered[:r + 1]) for r in range(c)]
        base = min(sum(cumsum[r] + penalties_cumsum[r] <= tau for r in range(c)) + 1, c)
        if randomized:
            v = (tau - (cumsum[base - 1] - ordered[base - 1]) - penalties_cumsum[base - 1]) / ordered[base - 1]
            base -= int(U[i] >= v)
        sizes.append(base)
    return sizes


def probs_and_draw(n=60, c=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 2, dim=1)
    return p, torch.rand(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("lam,kreg", [(0.01, 1), (0.1, 0), (0.3, 2), (0.0, 1)])
def test_raps_official_randomised_scores_are_the_official_giq(lam, kreg):
    p, U = probs_and_draw()
    u = U[:, None].expand_as(p).clone()  # one draw per row, as the official code
    ours = aps_scores(p, lam, kreg, u, rule="official")
    torch.testing.assert_close(ours, official_giq_all_classes(p, U, lam, kreg), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [0.3, 0.62, 0.9, 1.05])
@pytest.mark.parametrize("lam,kreg", [(0.01, 1), (0.1, 0), (0.3, 2)])
def test_raps_official_sets_are_the_official_gcq_in_both_modes(tau, lam, kreg):
    p, U = probs_and_draw()
    ranks = p.argsort(dim=1, descending=True).argsort(dim=1)
    randomised = aps_scores(p, lam, kreg, U[:, None].expand_as(p).clone(), rule="official") <= tau
    plain = aps_scores(p, lam, kreg, 0.0, rule="official") <= tau
    for sets, randomized in ((randomised, True), (plain, False)):
        sizes = official_gcq_sizes(p, tau, U, lam, kreg, randomized)
        assert sets.sum(dim=1).tolist() == sizes
        assert (sets == (ranks < torch.tensor(sizes)[:, None])).all()  # the top sizes[i] classes, not any others


def test_raps_randomised_before_after_known_answer():
    # p = [0.5, 0.3, 0.2], k_reg = 1, λ = 0.01, U = 0.005: the class at rank 2 scores 0.5 + 0.005·0.3 + 0.01 (the
    # official giq); the interpolated rule gave 0.5 + 0.005·0.3 + 0.005·0.01, λ·(1 − U) = 0.00995 less
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    s = aps_scores(p, 0.01, 1, torch.full((1, 3), 0.005, dtype=torch.float64), rule="official")
    assert s[0, 1].item() == pytest.approx(0.5 + 0.005 * 0.3 + 0.01, abs=1e-15)
    assert s[0, 2].item() == pytest.approx(0.8 + 0.005 * 0.2 + 0.02, abs=1e-15)


# ---------------------------------------------------------------- (d) AN / AN-LS / WAN float32 gradients

def an_reference(z: torch.Tensor, y: torch.Tensor, ls: float = 0.0, weak: bool = False) -> torch.Tensor:
    """Cole et al.'s losses.py (neg_log(x) = −log(x + 1e-5); loss_an / loss_an_ls / loss_wan, mean over B·C), written
    with σ(−z) for 1 − σ(z) so that the float64 value is exact to float64 rounding everywhere."""
    neg_log = lambda x: -torch.log(x + 1e-5)
    q, one_minus_q = torch.sigmoid(z), torch.sigmoid(-z)
    pos = torch.nn.functional.one_hot(y, z.shape[1]).bool()
    w_neg = 1.0 / (z.shape[1] - 1) if weak else 1.0
    loss = torch.where(pos, (1 - ls) * neg_log(q) + ls * neg_log(one_minus_q),
                       w_neg * ((1 - ls) * neg_log(one_minus_q) + ls * neg_log(q)))
    return loss.mean()


AN_VARIANTS = {"an": {}, "an_ls": {"label_smoothing": 0.1}, "wan": {"weak": True}}


def float32_gradient_against_float64(z64, y, kw):
    ref = value_and_grad(lambda t: an_reference(t, y, kw.get("label_smoothing", 0.0), kw.get("weak", False)), z64)
    ours = value_and_grad(lambda t: AssumeNegative(**kw)(t, y), z64.float())
    return ours, ref


def test_an_issue_example_gradient_is_float64_accurate():
    g = torch.Generator().manual_seed(72)
    z = torch.randn(7, 2, generator=g, dtype=torch.float64) * 4
    y = torch.randint(0, 2, (7,), generator=g)
    r, c = divmod((z + 11.82).abs().argmin().item(), 2)
    assert y[r].item() == c and z[r, c].item() == pytest.approx(-11.82, abs=0.01)  # a positive, σ(z) ≈ 7.4e-6
    (_, ours), (_, ref) = float32_gradient_against_float64(z, y, {})
    assert ref[r, c].item() == pytest.approx(-0.030227, abs=5e-7)
    assert ours[r, c].item() == pytest.approx(ref[r, c].item(), rel=1e-6)


@pytest.mark.parametrize("name", AN_VARIANTS)
def test_an_float32_gradients_near_the_constant_and_saturated(name):
    # logits where σ(z) or σ(−z) is near 1e-5 (|z| ≈ 9…14), saturated ones (|z| up to 60), and ordinary ones
    g = torch.Generator().manual_seed(9)
    b, c = 64, 12
    z = torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    near = torch.empty(b // 2, c, dtype=torch.float64).uniform_(9, 14, generator=g)
    z[: b // 2] = near * torch.where(torch.rand(b // 2, c, generator=g) < 0.5, -1.0, 1.0).double()
    z[b // 2: b // 2 + 8] = torch.empty(8, c, dtype=torch.float64).uniform_(-60, 60, generator=g)
    z = z.float().double()  # the float32 input exactly, so only the computation differs
    y = torch.randint(0, c, (b,), generator=g)
    (value, ours), (ref_value, ref) = float32_gradient_against_float64(z, y, AN_VARIANTS[name])
    assert value == pytest.approx(ref_value, rel=1e-5)
    # entrywise within a few float32 roundings (each entry's own scale), and normwise
    torch.testing.assert_close(ours.double(), ref, rtol=2e-6, atol=ref.abs().max().item() * 1e-7)
    assert ((ours.double() - ref).norm() / ref.norm()).item() < 1e-6


@pytest.mark.parametrize("name", AN_VARIANTS)
def test_an_float32_gradients_at_scale(name):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(256, 100, generator=g) * 4).double()
    y = torch.randint(0, 100, (256,), generator=g)
    (_, ours), (_, ref) = float32_gradient_against_float64(z, y, AN_VARIANTS[name])
    assert ((ours.double() - ref).norm() / ref.norm()).item() < 1e-6


def test_an_value_without_gradient_is_the_same():
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(10, 7, generator=g) * 9, torch.randint(0, 7, (10,), generator=g)
    for kw in AN_VARIANTS.values():
        with torch.no_grad():
            plain = AssumeNegative(**kw)(z, y).item()
        assert plain == AssumeNegative(**kw)(z.clone().requires_grad_(), y).item()


# ---------------------------------------------------------------- (a) one top-1 tie rule

def mbm_top1_severity_and_sa(logits: torch.Tensor, y: torch.Tensor, superclass: list[int]):
    """fiveai/making-better-mistakes `run_xent.py`: one `output.topk(max(topK_to_consider) = 100, 1, True, True)`
    (capped at C here), the tree distance of column 0, mistakes = samples whose column-0 distance is not 0; and the
    superclass accuracy of that same top-1."""
    _, ranked = logits.topk(min(100, logits.shape[1]), 1, True, True)
    dist = lambda a, b: 0 if a == b else (1 if superclass[a] == superclass[b] else 2)
    top1_dist = [dist(ranked[i][0].item(), y[i].item()) for i in range(len(y))]
    mistakes = [d for d in top1_dist if d != 0]
    sa = sum(superclass[ranked[i][0].item()] == superclass[y[i].item()] for i in range(len(y))) / len(y)
    return sum(mistakes) / len(mistakes), sa


def superclass_eval(logits, y, superclass):
    c = logits.shape[1]
    meta = Meta(num_classes=c, class_names=[str(i) for i in range(c)], class_counts=torch.ones(c),
                superclass=torch.tensor(superclass))
    return EvalOutputs(outputs={"logits": logits}, scores={"probs": logits.softmax(1)}, targets=y), meta


def test_superclass_metrics_tied_logits_c4_known_answer():
    superclass = [0, 0, 1, 1]
    logits = torch.tensor([[1.0, 0, 0, 1],    # y = 0: argmax 0 (right); ranked first: 3 (d = 2)
                           [1.0, 1, 1, 1],    # y = 0: argmax 0 (right); ranked first: 2 (d = 2)
                           [1.0, 0, 1, 0],    # y = 0: both 0 (a tie both rules break alike)
                           [5.0, 0, 0, 0],    # y = 1: both 0, d = 1
                           [0.0, 0, 5, 0],    # y = 0: both 2, d = 2
                           [0.0, 5, 0, 0],    # y = 3: both 1, d = 2
                           [0.0, 0, 0, 5]])   # y = 3: right
    y = torch.tensor([0, 0, 0, 1, 0, 3, 3])
    severity, sa = mbm_top1_severity_and_sa(logits, y, superclass)
    assert (severity, sa) == (pytest.approx(9 / 5), pytest.approx(3 / 7))  # the first index gave 5/3 and 5/7
    res = SuperclassMetrics()(*superclass_eval(logits, y, superclass))
    assert res["mistake_severity"] == pytest.approx(9 / 5)
    assert res["superclass_accuracy"] == pytest.approx(3 / 7)
    assert res["failed_superclass_accuracy"] == pytest.approx(1 / 5)  # severity = 2 − FSA still


@pytest.mark.parametrize("ks", [(1,), (1, 3), (1, 5), (1, 5, 20)])
def test_hierarchy_metrics_share_the_official_top1_under_ties_c100(ks):
    superclass = [i // 5 for i in range(100)]
    logits = torch.zeros(6, 100)
    logits[0, [3, 50, 97]] = 1  # topk(1) says 3, topk(5) and topk(100) say 50
    logits[1, [0, 1]] = 1       # argmax and topk(1) say 0, topk(100) says 1
    logits[2, 7], logits[3, 42], logits[4] = 2, 2, 0.5  # row 4: all 100 tied
    logits[5, [10, 11, 12]] = 3
    y = torch.tensor([3, 0, 8, 42, 0, 12])
    ev, meta = superclass_eval(logits, y, superclass)
    severity, sa = mbm_top1_severity_and_sa(logits, y, superclass)
    res = SuperclassMetrics()(ev, meta)
    assert res["mistake_severity"] == pytest.approx(severity)
    assert res["superclass_accuracy"] == pytest.approx(sa)
    assert HierarchicalDistance(ks=ks)(ev, meta)["hdist_mistakes@1"] == pytest.approx(severity)


def test_superclass_metrics_keep_the_loss_own_prediction():
    ev, meta = superclass_eval(torch.ones(2, 4), torch.tensor([0, 2]), [0, 0, 1, 1])
    ev.prediction = torch.tensor([1, 2])
    res = SuperclassMetrics()(ev, meta)
    assert res["mistake_severity"] == 1.0 and res["superclass_accuracy"] == 1.0
