"""SimLoss: the loss against independent formulas, its gradient, S validation, and the config-facing builder."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.engine.data import Meta
from experiments.engine.errors import UserError
from experiments.losses import SimLoss
from image_classification.similarity import ConfiguredSimLoss


def random_similarity(c, seed=0, zeros=True):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(c, c, generator=g, dtype=torch.float64)
    if zeros:
        s[s < 0.3] = 0.0
    s.fill_diagonal_(1.0)
    return s


def reference_loss(logits, target, s, eps):
    """−mean_i log(Σ_c S[y_i,c]·softmax(z_i)_c + eps), written out per sample in numpy float64."""
    z = logits.detach().double().numpy()
    s = np.asarray(s, dtype=np.float64)
    total = 0.0
    for i, y in enumerate(target.tolist()):
        e = np.exp(z[i] - z[i].max())
        p = e / e.sum()
        total += -math.log(sum(s[y, c] * p[c] for c in range(len(p))) + eps)
    return total / len(z)


def reference_grad(logits, target, s):
    """∂L/∂z for the mean loss (eps = 0): (p − q)/N with q_j = S[y,j]p_j / Σ_c S[y,c]p_c."""
    z = logits.detach().double().numpy()
    s = np.asarray(s, dtype=np.float64)
    n = len(z)
    out = np.zeros_like(z)
    for i, y in enumerate(target.tolist()):
        e = np.exp(z[i] - z[i].max())
        p = e / e.sum()
        w = s[y] * p
        out[i] = (p - w / w.sum()) / n
    return out


@pytest.mark.parametrize("impl", ["logsumexp", "prob"])
def test_identity_equals_cross_entropy(impl):
    torch.manual_seed(0)
    logits, y = torch.randn(64, 10) * 3, torch.randint(0, 10, (64,))
    ce = F.cross_entropy(logits, y)
    assert torch.allclose(SimLoss(torch.eye(10), eps=0.0, impl=impl)(logits, y), ce, atol=1e-6, rtol=0)
    p_true = logits.double().softmax(1)[torch.arange(64), y]
    eps_shift = torch.log1p(1e-8 / p_true).mean().item()  # −log(p + eps) = −log p − log(1 + eps/p)
    assert SimLoss(torch.eye(10), impl=impl)(logits, y).item() == pytest.approx(ce.item() - eps_shift, abs=1e-6)
    mild = torch.randn(64, 10) * 0.5
    assert torch.allclose(SimLoss(torch.eye(10), impl=impl)(mild, y), F.cross_entropy(mild, y), atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", ["logsumexp", "prob"])
@pytest.mark.parametrize("eps", [1e-8, 0.0, 0.1])
def test_matches_independent_formula(impl, eps):
    torch.manual_seed(1)
    s = random_similarity(7)
    logits, y = torch.randn(32, 7, dtype=torch.float64) * 3, torch.randint(0, 7, (32,))
    got = SimLoss(s, eps=eps, impl=impl)(logits, y).item()
    assert got == pytest.approx(reference_loss(logits, y, s, eps), rel=1e-10, abs=1e-12)


def test_prob_and_logsumexp_agree_float32():
    torch.manual_seed(2)
    s = random_similarity(20, seed=3)
    logits, y = torch.randn(128, 20) * 4, torch.randint(0, 20, (128,))
    a = SimLoss(s, impl="prob")(logits, y)
    b = SimLoss(s, impl="logsumexp")(logits, y)
    assert a.dtype == b.dtype == torch.float32
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert torch.allclose(SimLoss(s, impl="official_prob")(logits, y), a)


@pytest.mark.parametrize("impl", ["logsumexp", "prob"])
def test_gradient_is_p_minus_adaptive_target(impl):
    torch.manual_seed(3)
    s = random_similarity(6, seed=4)
    logits = (torch.randn(16, 6, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, 6, (16,))
    SimLoss(s, eps=0.0, impl=impl)(logits, y).backward()
    assert np.allclose(logits.grad.numpy(), reference_grad(logits, y, s), atol=1e-12)


def test_gradient_by_finite_differences():
    torch.manual_seed(4)
    s = random_similarity(5, seed=5)
    logits, y = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 5, (4,))
    h, fd = 1e-6, np.zeros((4, 5))
    for i in range(4):
        for j in range(5):
            zp, zm = logits.clone(), logits.clone()
            zp[i, j] += h
            zm[i, j] -= h
            fd[i, j] = (reference_loss(zp, y, s, 0.0) - reference_loss(zm, y, s, 0.0)) / (2 * h)
    assert np.allclose(fd, reference_grad(logits, y, s), atol=1e-8)
    assert torch.autograd.gradcheck(lambda z: SimLoss(s, eps=0.0)(z, y), (logits.clone().requires_grad_(),))


def test_logsumexp_is_stable_where_prob_form_is_not():
    logits, y = torch.tensor([[200.0, -200.0, 0.0]]), torch.tensor([1])
    s = torch.eye(3)
    stable = SimLoss(s, eps=0.0)(logits, y)
    assert stable.item() == pytest.approx(400.0, rel=1e-6)
    assert torch.isinf(SimLoss(s, eps=0.0, impl="prob")(logits, y))
    assert SimLoss(s)(logits, y).item() == pytest.approx(-math.log(1e-8), rel=1e-6)


def test_zero_similarities_give_finite_gradients():
    s = torch.eye(4)
    s[0, 1] = s[1, 0] = 0.5
    logits = torch.tensor([[10.0, -10.0, 3.0, 0.0], [-50.0, 50.0, 0.0, 0.0]], requires_grad=True)
    loss = SimLoss(s)(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_batch_mean_and_half_precision_inputs():
    s = random_similarity(5, seed=6)
    logits, y = torch.randn(9, 5), torch.randint(0, 5, (9,))
    loss = SimLoss(s)
    per_sample = torch.stack([loss(logits[i:i + 1], y[i:i + 1]) for i in range(9)])
    assert torch.allclose(loss(logits, y), per_sample.mean(), atol=1e-6)
    assert loss(logits.half(), y).dtype == torch.float32


def test_similarity_is_precomputed_on_construction():
    s = random_similarity(4, seed=7)
    loss = SimLoss(s)
    assert torch.equal(loss.similarity, s)
    assert torch.equal(loss.log_similarity, s.log())


@pytest.mark.parametrize("bad, match", [
    (torch.ones(3, 4), "square"),
    (torch.eye(3)[None], "square"),
    (torch.full((3, 3), 0.5).fill_diagonal_(1.0) * torch.tensor([[1, 1, 3.0]] * 3), r"\[0, 1\]"),
    (torch.eye(3) - 0.1 * (1 - torch.eye(3)), r"\[0, 1\]"),
    (torch.full((3, 3), 0.5), "diagonal"),
    (torch.full((3, 3), float("nan")), "NaN"),
])
def test_invalid_similarity_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        SimLoss(bad)


def test_similarity_must_match_classes():
    with pytest.raises(ValueError, match="4 classes"):
        SimLoss(torch.eye(3), num_classes=4)
    with pytest.raises(ValueError, match="do not match"):
        SimLoss(torch.eye(3))(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="impl"):
        SimLoss(torch.eye(3), impl="softmax")
    with pytest.raises(ValueError, match="eps"):
        SimLoss(torch.eye(3), eps=-1.0)


# --------------------------------------------------------------------------- config-facing loss
def meta(k, natural=None, superclass=None, extras=None):
    return Meta(num_classes=k, class_names=[f"c{i}" for i in range(k)], class_counts=torch.ones(k),
                superclass=superclass, natural_similarity=natural, extras=extras or {})


def test_configured_natural_ordinal_uses_r():
    loss = ConfiguredSimLoss(similarity=None, r=0.3)
    loss.bind(meta(5, natural="ordinal"))
    expected = torch.tensor([[0.3 ** abs(i - j) for j in range(5)] for i in range(5)], dtype=torch.float64)
    assert torch.allclose(loss.similarity, expected)
    assert loss.source["kind"] == "ordinal"


def test_configured_natural_superclass_and_identity():
    sup = torch.tensor([0, 0, 1, 1, 1])
    loss = ConfiguredSimLoss(superclass_sim=0.25)
    loss.bind(meta(5, natural="superclass", superclass=sup))
    assert loss.similarity[0, 1] == 0.25 and loss.similarity[0, 2] == 0 and loss.similarity[2, 4] == 0.25
    ce = ConfiguredSimLoss(similarity="identity")
    ce.bind(meta(5, natural="superclass", superclass=sup))
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.allclose(ce(logits, y), F.cross_entropy(logits, y), atol=1e-6)


def test_configured_errors_are_user_errors():
    with pytest.raises(UserError, match="loss.similarity"):
        ConfiguredSimLoss(similarity="cosine")
    with pytest.raises(UserError, match="loss.r"):
        ConfiguredSimLoss(similarity="ordinal", r=1.0)
    with pytest.raises(UserError, match="loss.lower_bound"):
        ConfiguredSimLoss(similarity="embedding", lower_bound=-0.1)
    with pytest.raises(UserError, match="natural similarity"):
        ConfiguredSimLoss().bind(meta(3))
    with pytest.raises(UserError, match="no superclasses"):
        ConfiguredSimLoss(similarity="superclass").bind(meta(3))
    with pytest.raises(UserError, match="loss.embeddings"):
        ConfiguredSimLoss(similarity="embedding").bind(meta(3))
    with pytest.raises(RuntimeError, match="bind"):
        ConfiguredSimLoss()(torch.randn(2, 3), torch.tensor([0, 1]))
