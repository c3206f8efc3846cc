"""CCE and COT against formulas written out independently here (float64), plus the reference's numbers."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from experiments.engine.data import Batch
from experiments.engine.errors import UserError
from experiments.losses import ComplementCrossEntropy, ComplementEntropy
from tests.helpers.reference_losses import cot_complement, official_cce


# ----------------------------------------------------------------------------- independent formulas
def paper_cce(z: torch.Tensor, y: torch.Tensor, gamma: float = -1.0) -> torch.Tensor:
    """CE + γ/(K−1) · mean_i H_c(i), H_c over p̃_j = ŷ_j/(1−ŷ_g), written with explicit loops."""
    p = (torch.exp(z) / torch.exp(z).sum(1, keepdim=True)).tolist()
    n, k = z.shape
    total_ce, total_h = 0.0, 0.0
    for i in range(n):
        g = int(y[i])
        total_ce += -math.log(p[i][g])
        h = 0.0
        for j in range(k):
            if j != g:
                q = p[i][j] / (1 - p[i][g])
                h -= q * math.log(q)
        total_h += h
    return torch.tensor(total_ce / n + gamma / (k - 1) * total_h / n, dtype=torch.float64)


def hc(z: torch.Tensor, y: torch.Tensor) -> float:
    p = z.double().softmax(1)
    pg = p.gather(1, y[:, None])
    q = (p / (1 - pg)).scatter(1, y[:, None], 1.0)  # true column -> q=1 -> q log q = 0
    return float(-(q * q.log()).sum(1).mean())


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 10, (16,), generator=g)
    return z, y


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("gamma", [-1.0, -0.5, 2.0])
def test_paper_matches_independent_formula(batch, gamma):
    z, y = batch
    got = ComplementCrossEntropy(gamma=gamma, variant="paper")(z, y)
    assert abs(got.item() - paper_cce(z, y, gamma).item()) < 1e-6


def test_paper_float32_matches(batch):
    z, y = batch
    got = ComplementCrossEntropy()(z.float(), y)
    assert got.dtype == torch.float32
    assert abs(got.item() - paper_cce(z, y).item()) < 1e-5


@pytest.mark.parametrize("gamma", [-1.0, -3.0])
def test_official_matches_literal_code(batch, gamma):
    z, y = batch
    got = ComplementCrossEntropy(gamma=gamma, variant="official")(z, y)
    assert abs(got.item() - official_cce(z, y, balancing_factor=-gamma).item()) < 1e-6


def test_issue8_example():
    """Issue #8: probabilities [0.5,0.4,0.1] vs [0.5,0.25,0.25], label 0 (reference §1.4)."""
    z = torch.tensor([[0.5, 0.4, 0.1], [0.5, 0.25, 0.25]], dtype=torch.float64).log()
    y = torch.zeros(1, dtype=torch.long)
    off = [ComplementCrossEntropy(variant="official")(z[i:i + 1], y).item() for i in range(2)]
    pap = [ComplementCrossEntropy(variant="paper")(z[i:i + 1], y).item() for i in range(2)]
    assert off == pytest.approx([0.8599, 0.9242], abs=5e-5)  # official: the flatter complement costs more
    assert pap == pytest.approx([0.4429, 0.3466], abs=5e-5)  # paper/Holocron: the flatter complement costs less


def test_options_cross_variants(batch):
    """paper with norm=K and γ=+1 is the official sign and normaliser without epsilons."""
    z, y = batch
    a = ComplementCrossEntropy(gamma=1.0, variant="paper", norm="K")(z, y)
    b = ComplementCrossEntropy(gamma=-1.0, variant="official", eps_div=0.0, eps_log=0.0)(z, y)
    assert abs(a.item() - b.item()) < 1e-12
    assert ComplementCrossEntropy(gamma=0.0)(z, y).item() == pytest.approx(F.cross_entropy(z, y).item())


# ----------------------------------------------------------------------------- gradient direction
def _step_hc(loss_fn, z, y, lr=1.0, alone=True):
    z = z.clone().requires_grad_(True)
    loss = loss_fn(z, y) - (F.cross_entropy(z, y) if alone else 0)
    loss.backward()
    return hc(z.detach(), y), hc((z - lr * z.grad).detach(), y)


def test_direction_pattern(batch):
    """Reference §1.4 pattern (1.9464 → 1.9495 Holocron/paper, → 1.9437 official): paper raises H_c, official lowers it."""
    z, y = batch
    before, after_paper = _step_hc(ComplementCrossEntropy(variant="paper"), z, y)
    _, after_official = _step_hc(ComplementCrossEntropy(variant="official"), z, y)
    assert after_paper > before > after_official
    # the whole paper loss (CE + complement) also raises H_c with γ = −1
    b2, a2 = _step_hc(ComplementCrossEntropy(variant="paper"), z, y, lr=0.5, alone=False)
    assert a2 > b2


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("placement", ["inside", "outside"])
def test_confident_no_nan(variant, placement):
    z = torch.tensor([[300.0, 0.0, 0.0, 0.0], [1e4, -5.0, 3.0, 2.0]], requires_grad=True)
    y = torch.zeros(2, dtype=torch.long)
    loss = ComplementCrossEntropy(variant=variant, eps_placement=placement)(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    if variant == "paper":  # H_c is exact whatever ŷ_g: equal wrong logits -> log 3
        one = ComplementCrossEntropy(variant=variant)(z[:1].detach(), y[:1])
        assert one.item() == pytest.approx(-math.log(3) / 3, abs=1e-6)


def test_two_classes_is_ce(batch):
    z, y = batch[0][:, :2], batch[1] % 2
    assert ComplementCrossEntropy()(z, y).item() == pytest.approx(F.cross_entropy(z, y).item(), abs=1e-12)
    assert ComplementCrossEntropy(variant="official")(z, y).item() == pytest.approx(
        official_cce(z, y).item(), abs=1e-6)


def test_bad_options():
    with pytest.raises(UserError):
        ComplementCrossEntropy(variant="holocron")
    with pytest.raises(UserError):
        ComplementCrossEntropy(norm="N")
    with pytest.raises(UserError):
        ComplementEntropy(steps=3)
    with pytest.raises(ValueError):
        ComplementCrossEntropy()(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- COT
def test_cot_complement_matches_literal(batch):
    z, y = batch
    assert abs(ComplementEntropy()(z, y).item() - cot_complement(z, y).item()) < 1e-9
    exact = ComplementEntropy(norm="K_minus_1", eps_div=0.0, eps_log=0.0)(z, y)
    assert exact.item() == pytest.approx(-hc(z, y) / 9, abs=1e-9)


class CountingSGD(torch.optim.SGD):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


class Counted(torch.nn.Module):
    def __init__(self, k=5):
        super().__init__()
        self.lin = torch.nn.Linear(4, k)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return {"logits": self.lin(x)}


def _fake_engine(model, names):
    opts = {n: CountingSGD(model.parameters(), lr=0.1) for n in names}
    log = []

    def step(loss, optimizer="main"):
        opt = opts[optimizer]
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append((optimizer, float(loss.detach())))

    return opts, step, log


@pytest.mark.parametrize("steps", [2, 1])
def test_cot_training_step_counts(steps):
    torch.manual_seed(0)
    loss = ComplementEntropy(steps=steps)
    assert loss.optimizer_names == (("main", "complement") if steps == 2 else ("main",))
    model = Counted()
    opts, step, log = _fake_engine(model, loss.optimizer_names)
    batches = 3
    for b in range(batches):
        x = torch.randn(8, 4)
        batch = Batch(x, torch.randint(0, 5, (8,)), torch.arange(8))
        out = loss.training_step(model, batch, step, autocast=contextlib.nullcontext)
        assert set(out) >= {"loss"}
    total = sum(o.steps for o in opts.values())
    assert total == steps * batches
    assert model.calls == steps * batches
    if steps == 2:
        assert [n for n, _ in log] == ["main", "complement"] * batches
        assert opts["main"].steps == opts["complement"].steps == batches


def test_cot_two_step_uses_updated_weights():
    """The complement pass runs after the CE update: its loss equals the complement of the updated model."""
    torch.manual_seed(1)
    loss = ComplementEntropy(steps=2)
    model = Counted()
    x, y = torch.randn(8, 4), torch.randint(0, 5, (8,))
    seen = []

    def step(value, optimizer="main"):
        seen.append((optimizer, value.detach().clone()))
        if optimizer == "main":
            with torch.no_grad():
                model.lin.bias.add_(1.0 * torch.arange(5.0))  # a visible "update"
        value.backward()

    loss.training_step(model, Batch(x, y, torch.arange(8)), step, autocast=contextlib.nullcontext)
    expected = cot_complement(model.lin(x).detach().double(), y)
    assert seen[1][0] == "complement"
    assert abs(seen[1][1].item() - expected.item()) < 1e-5


def test_cot_one_step_gradient_is_ce_plus_t():
    """The CCE repos' COT: CE.backward(); T.backward(); one step == gradient of CE + T."""
    torch.manual_seed(2)
    z = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (6,))
    (F.cross_entropy(z, y) + cot_complement(z, y)).backward()
    ref = z.grad.clone()
    z.grad = None
    ComplementEntropy(steps=1).objective({"logits": z}, Batch(None, y, None)).backward()
    assert torch.allclose(z.grad, ref, atol=1e-8)


# ----------------------------------------------------------------------------- the official eps_log as a bound
def _literal_term(z: torch.Tensor, y: torch.Tensor, eps_div: float, eps_log: float) -> torch.Tensor:
    """Σ_i Σ_{j≠g} P log(P + eps_log)/(N·K), P = ŷ/((1 − ŷ_g) + eps_div): the official formula, float64 autograd."""
    n, k = z.shape
    p = z.softmax(1)
    big_p = p / ((1 - p.gather(1, y[:, None])) + eps_div)
    off = torch.ones_like(z).scatter(1, y[:, None], 0.0)
    return (big_p * torch.log(big_p + eps_log) * off).sum() / (n * k)


@pytest.mark.parametrize("scale", [1.0, 3.0, 30.0, 100.0])
@pytest.mark.parametrize("eps_log", [1e-10, 1e-8])
def test_eps_log_up_to_the_bound_moves_value_and_gradient_within_it(scale, eps_log):
    """eps_log ≤ EPS_LOG_AS_BOUND is applied through its bound: |Δ term| ≤ eps_log, |Δ ∂/∂z| ≤ 4·eps_log/N,
    measured against the literal per-class formula, saturated logits included."""
    from experiments.losses.complement import EPS_LOG_AS_BOUND

    assert eps_log <= EPS_LOG_AS_BOUND
    g = torch.Generator().manual_seed(int(scale))
    z = (torch.randn(64, 100, generator=g, dtype=torch.float64) * scale).requires_grad_()
    y = torch.randint(0, 100, (64,), generator=g)
    ours = ComplementEntropy(eps_div=1e-7, eps_log=eps_log)(z, y)
    (g_ours,) = torch.autograd.grad(ours, z)
    ref = _literal_term(z, y, 1e-7, eps_log)
    (g_ref,) = torch.autograd.grad(ref, z)
    # P·log(P + eps) − P·log P = P·log(1 + eps/P) ∈ [0, eps]: the literal term is the larger one
    assert -1e-15 <= ref.item() - ours.item() <= eps_log + 1e-15
    assert (g_ours - g_ref).abs().max().item() <= 4 * eps_log / 64 + 1e-15


def test_a_larger_eps_log_is_exact_per_class():
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(32, 20, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 20, (32,), generator=g)
    ours = ComplementEntropy(eps_div=1e-7, eps_log=1e-3)(z, y)
    ref = _literal_term(z, y, 1e-7, 1e-3)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-12)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, z), torch.autograd.grad(ref, z)
    assert torch.allclose(g_ours, g_ref, atol=1e-12)
