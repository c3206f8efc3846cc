"""The two-head average-K loss (reconstruction from the abstract of Garcin et al.) and the single-positive
multi-label baselines of Cole et al. 2021 (AN, AN-LS, WAN, EPR, ROLE), all in the engine's loss protocol.

Cole et al. conventions are kept: q = sigmoid(logits), −log(x + 1e-5), per-entry losses divided by B·C and summed,
regulariser added after. The baselines use only the "logits" head and score with its sigmoid.

Speed (CPU, one thread): the losses are autograd Functions with closed-form gradients. The elementwise log is the
dominant per-entry cost (~3× a sigmoid), so a sum of logs with uniform weights is taken as a sum of logs of products
(`_sum_log`), and the pseudo-labels find their threshold without a top-k over all B·C entries (`_kth_largest`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from average_k.metrics import budget
from experiments.engine.data import Batch, Meta
from experiments.engine.errors import UserError
from experiments.engine.lazy import lazy_optimizer
from experiments.engine.loss import EngineLoss
from experiments.engine.numeric import as_float

LOG_EPS = 1e-5
_DESCENT_BITS = 2  # `_kth_largest` looks at 2^bits·m candidates per step down its tree


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"loss.{name}={value!r}: choose one of {', '.join(map(str, allowed))}")


def _sum_log(x: torch.Tensor, floor: float) -> torch.Tensor:
    """Σ log x over every entry of x ∈ [floor, ~1]: the log of products of 2^L entries, L as large as keeps every
    product a normal float (floor^(2^L) ≥ the dtype's smallest normal), so one log per 2^L entries. Each product adds
    2^L − 1 roundings of half an ulp, about the error of the 2^L logs it replaces."""
    flat = x.reshape(-1)
    n = flat.numel()
    fits = int(math.log2(math.log(torch.finfo(x.dtype).tiny) / math.log(floor)))
    group = 1 << min(fits, max(n.bit_length() - 1, 0))
    size = n - n % group
    total = flat[:size].view(group, size // group).prod(0).log_().sum()
    return total + flat[size:].log().sum() if size < n else total


def _kth_largest(flat: torch.Tensor, m: int) -> torch.Tensor:
    """`flat.topk(m).values[-1]` (the m-th largest entry of a 1-D tensor) without a top-k over all n entries.

    Level l of a tree of pairwise maxima holds the maxima of groups of 2^l entries. The top-m groups of a level
    contain the top m entries of the level below (an entry above the m-th group maximum lies in a group whose
    maximum is above it too; if the m-th largest is tied, the m chosen groups' maxima already reach it), so from a
    level of ≥ 4m groups each step down looks at 2^s·m candidates only. Entries past the last whole group stay
    candidates to the end. NaN is the largest value, as for `topk`.
    """
    n = flat.numel()
    levels = max((n // (4 * m)).bit_length() - 1, 0)
    if levels < 2:
        return flat.topk(m).values[-1]
    size = n >> levels << levels
    tree = [flat[:size]]
    for _ in range(levels):
        half = tree[-1].numel() // 2
        tree.append(torch.maximum(tree[-1][:half], tree[-1][half:]))
    chosen = tree[-1].topk(m, sorted=False).indices
    while levels:
        step = min(_DESCENT_BITS, levels)
        width = tree[levels].numel()  # group j of this level is entries j + r·width, r < 2^step, of the one below
        members = (torch.arange(1 << step, device=flat.device)[:, None] * width + chosen).view(-1)
        levels -= step
        values = tree[levels].index_select(0, members)
        if not levels:
            return torch.cat((values, flat[size:])).topk(m).values[-1]
        chosen = members.index_select(0, values.topk(m, sorted=False).indices)
    raise AssertionError("unreachable")


def _top_entries(p: torch.Tensor, m: int, tie_rule: str) -> torch.Tensor:
    """0/1 (p's dtype) marking p ≥ its m-th largest entry; for `exact` with ties at that value, `topk`'s m."""
    flat = p.reshape(-1)
    labels = torch.ge(p, _kth_largest(flat, m), out=torch.empty_like(p))
    if tie_rule == "exact" and labels.sum(dtype=torch.float64).item() != m:
        labels = torch.zeros_like(flat).scatter_(0, flat.topk(m).indices, 1.0).view_as(p)
    return labels


def batch_pseudo_labels(probs: torch.Tensor, k: float, targets: torch.Tensor | None = None,
                        tie_rule: str = "midpoint", budget_rule: str = "extra") -> torch.Tensor:
    """0/1 pseudo-labels (B×C float) marking the K·B largest entries of a batch of probabilities.

    m = round(K·B). `tie_rule`: `midpoint` marks every entry ≥ the m-th largest value (the §1.3 midpoint
    threshold selects the same entries; ties at the boundary all enter), `exact` marks exactly m entries
    (which of the entries tied at the boundary enter is `torch.topk`'s choice). With `targets` the true classes are
    also marked; `budget_rule`: `extra` adds them on top of the m entries, `within` counts them in m (top m − B
    among the other entries).
    """
    _choice("pl_tie_rule", tie_rule, ("midpoint", "exact"))
    _choice("pl_budget", budget_rule, ("extra", "within"))
    p = probs.detach()
    b, c = p.shape
    m = min(max(budget(b, k), 1), b * c)
    t = None
    if targets is not None:
        t = targets.long().view(-1, 1).to(p.device)
        if budget_rule == "within":
            m = max(m - b, 0)
            p = p.clone().scatter_(1, t, float("-inf"))
    labels = _top_entries(p, m, tie_rule) if m else torch.zeros_like(p)
    return labels.scatter_(1, t, 1.0) if t is not None else labels


class EpochCandidates:
    """For `pl_scope=epoch`: keeps the `cap`·K·B largest training probabilities of each batch; `threshold()` is
    the (K·N)-th largest of the epoch (exact unless one batch holds more than that many entries above it)."""

    def __init__(self, k: float, cap: float):
        self.k, self.cap = k, cap
        self.kept: list[torch.Tensor] = []
        self.n = 0

    def add(self, probs: torch.Tensor) -> None:
        flat = probs.detach().float().reshape(-1)
        keep = min(flat.numel(), max(1, math.ceil(self.cap * self.k * probs.shape[0])))
        self.kept.append(flat.topk(keep).values.cpu())
        self.n += probs.shape[0]

    def threshold(self) -> float | None:
        if not self.kept:
            return None
        vals = torch.cat(self.kept)
        tau = float(vals.topk(min(max(budget(self.n, self.k), 1), vals.numel())).values[-1])
        self.kept, self.n = [], 0
        return tau


class _CrossEntropyAndProbs(torch.autograd.Function):
    """(`F.cross_entropy(x, target)`, softmax(x) detached) from one softmax pass: CE = mean −log p_y (from
    log_softmax only if some p_y is subnormal or 0, where its log would be inexact), gradient (p − onehot)/B."""

    @staticmethod
    def forward(ctx, x, target):
        t = target.view(-1, 1)
        probs = torch.softmax(x, 1)
        p_t = probs.gather(1, t)
        if p_t.min() >= torch.finfo(p_t.dtype).tiny:
            ce = -p_t.log_().mean()
        else:
            ce = -x.log_softmax(1).gather(1, t).mean()
        ctx.save_for_backward(probs, t)
        ctx.mark_non_differentiable(probs)
        return ce, probs

    @staticmethod
    def backward(ctx, grad, _):
        probs, t = ctx.saved_tensors
        scale = grad / len(t)
        return (probs * scale).scatter_add_(1, t, (-scale).expand(len(t), 1).to(probs.dtype)), None


class _BCEWithLogits(torch.autograd.Function):
    """scale·Σ BCE-with-logits(x, y; pos_weight w) for 0/1 labels y and a scalar w: scale·Σ [l·softplus(x) − w·y·x],
    l = 1 + (w − 1)·y (the value of `F.binary_cross_entropy_with_logits`), gradient scale·(l·σ(x) − w·y).
    softplus(x) = relu(x) − log s, s = σ(|x|) = max(σ(x), 1 − σ(x)) ∈ [½, 1], so Σ l·log s is a `_sum_log` (one
    log per 64 entries in float32) and only one sigmoid per entry is taken; for y ∈ {0, 1}, s^y = 1 + y·(s − 1)."""

    @staticmethod
    def forward(ctx, x, y, w: float, scale: float):
        sig = torch.sigmoid(x)
        s = torch.maximum(torch.rsub(sig, 1), sig)
        relu = torch.relu(x)
        y_flat = y.reshape(-1)
        total = relu.sum() - _sum_log(s, 0.5) - w * torch.dot(y_flat, x.reshape(-1))
        if w != 1:  # + (w − 1)·Σ y·softplus(x), and the gradient's l·σ(x)
            y_log_s = _sum_log(s.sub_(1).mul_(y).add_(1), 0.5)
            total = total + (w - 1) * (torch.dot(y_flat, relu.reshape(-1)) - y_log_s)
            sig.mul_(torch.mul(y, w - 1).add_(1))
        ctx.save_for_backward(sig.sub_(y, alpha=w))
        ctx.scale = scale
        return total * scale

    @staticmethod
    def backward(ctx, g):
        grad, = ctx.saved_tensors
        return grad * (g * ctx.scale), None, None, None


class TwoHeadLoss(EngineLoss):
    """CE on the softmax head A ("logits") + λ_ml · BCE of the sigmoid head B ("ml") on pseudo-labels.

    Pseudo-labels come from the detached softmax of A (see `batch_pseudo_labels`); every option is a config key
    (defaults and reasons: docs/average_k.md). `infer_head` picks which head's scores are primary ("probs");
    the other is reported as "probs_a" / "probs_b".
    """

    extra_heads = ("ml",)
    EPOCH_OPTIONS = ("warmup_epochs",)   # `budget` scales it (experiments.engine.budget)

    def __init__(self, k: float = 1.0, lambda_ml: float = 1.0, pl_scope: str = "batch", pl_force_true: bool = True,
                 pl_budget: str = "extra", pl_tie_rule: str = "midpoint", pos_weight: float | str | None = None,
                 ml_reduction: str = "mean", warmup_epochs: int = 0, warmup: str = "ce_only",
                 infer_head: str = "B", epoch_cap: float = 4.0):
        super().__init__()
        _choice("pl_scope", pl_scope, ("batch", "epoch"))
        _choice("pl_budget", pl_budget, ("extra", "within"))
        _choice("pl_tie_rule", pl_tie_rule, ("midpoint", "exact"))
        _choice("ml_reduction", ml_reduction, ("mean", "sum_classes"))
        _choice("warmup", warmup, ("ce_only", "ramp"))
        _choice("infer_head", infer_head, ("A", "B"))
        if not float(k) > 0:
            raise UserError(f"loss.k={k}: K must be > 0 (set avgk.k)")
        if lambda_ml < 0 or warmup_epochs < 0:
            raise UserError(f"loss.lambda_ml={lambda_ml}, loss.warmup_epochs={warmup_epochs}: both must be ≥ 0")
        if isinstance(pos_weight, str) and pos_weight != "balanced":
            raise UserError(f"loss.pos_weight={pos_weight!r}: use null, a number, or 'balanced'")
        self.k, self.lambda_ml = float(k), float(lambda_ml)
        self.pl_scope, self.pl_force_true, self.pl_budget, self.pl_tie_rule = pl_scope, pl_force_true, pl_budget, pl_tie_rule
        self.pos_weight_opt, self.ml_reduction = pos_weight, ml_reduction
        self.warmup_epochs, self.warmup, self.infer_head = int(warmup_epochs), warmup, infer_head
        self.score_kinds = ({"probs": "independent", "probs_a": "distribution"} if infer_head == "B"
                            else {"probs": "distribution", "probs_b": "independent"})
        self.epoch = 0
        self.candidates = EpochCandidates(self.k, epoch_cap)
        self.register_buffer("tau", torch.tensor(float("nan")))
        # one pos_weight for every class, so the BCE takes it as a scalar; `balanced` needs C and is set in `bind`
        self.pos_weight = 1.0 if pos_weight is None or pos_weight == "balanced" else float(pos_weight)

    def bind(self, meta: Meta) -> None:
        c = meta.num_classes
        if self.k > c:
            raise UserError(f"avgk.k={self.k} exceeds the {c} classes of the dataset; lower avgk.k")
        if self.pos_weight_opt == "balanced":
            self.pos_weight = (c - self.k) / self.k

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        tau = self.candidates.threshold() if self.pl_scope == "epoch" else None
        if tau is not None:
            self.tau.fill_(tau)
        self.epoch = epoch

    def ml_weight(self) -> float:
        if self.epoch >= self.warmup_epochs:
            return self.lambda_ml
        return 0.0 if self.warmup == "ce_only" else self.lambda_ml * self.epoch / self.warmup_epochs

    def pseudo_labels(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = targets if self.pl_force_true else None
        if self.pl_scope == "epoch" and not torch.isnan(self.tau):
            marked = probs >= self.tau.to(probs.device)
            if t is not None:
                marked = marked.scatter(1, t.long().view(-1, 1), True)
            return marked.to(probs.dtype)
        return batch_pseudo_labels(probs, self.k, t, self.pl_tie_rule, self.pl_budget)

    def ml_loss(self, ml_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = as_float(ml_logits)
        scale = 1.0 / (x.numel() if self.ml_reduction == "mean" else len(x))
        return _BCEWithLogits.apply(x, labels.to(x), self.pos_weight, scale)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, ml_logits: torch.Tensor | None = None,
                update: bool = False) -> torch.Tensor:
        if ml_logits is None:
            return F.cross_entropy(logits.float(), target)
        ce, probs = _CrossEntropyAndProbs.apply(logits.float(), target.long())  # probs: head A's detached softmax
        if update and self.pl_scope == "epoch":
            self.candidates.add(probs)
        w = self.ml_weight()
        if w == 0:
            return ce
        return ce + w * self.ml_loss(ml_logits, self.pseudo_labels(probs, target))

    def objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self(outputs["logits"], batch.y, outputs["ml"], update=torch.is_grad_enabled())

    def eval_objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self(outputs["logits"], batch.y, outputs["ml"], update=False)

    def scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a = outputs["logits"].float().softmax(dim=1)
        b = outputs["ml"].float().sigmoid()
        return {"probs": b, "probs_a": a} if self.infer_head == "B" else {"probs": a, "probs_b": b}


class _SigmoidHead(EngineLoss):
    score_kinds = {"probs": "independent"}

    def scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"probs": outputs["logits"].float().sigmoid()}


class _AssumeNegative(torch.autograd.Function):
    """Σ_ij ℓ_ij/(B·C) with, for u = σ(−z) and v = σ(z): negatives w_neg·[(1−ls)·n + ls·p], the observed positive
    (1−ls)·p + ls·n, n = −log(u + 1e-5), p = −log(v + 1e-5). With u + ε and v + ε swapped on the positives, every
    entry is (1−ls)·n + ls·p: two `_sum_log`s, then the positives' weight 1 instead of w_neg is added for WAN.
    ∂n/∂z = uv/(u+ε), ∂p/∂z = −uv/(v+ε), so the swapped form's gradient, once negated on the positives, is the loss's.
    It is formed here up to the factor w_neg·(1−ls)/(B·C), which `backward` applies with the incoming gradient.

    u and v are both taken from a sigmoid: where one of them is near 1 the other, small, is only exact from its own
    sigmoid (1 − u, or u − u² for uv, keeps u's absolute rounding of 3e-8, i.e. ~0.4 % of uv where v ≈ 1e-5, the
    scale of the constant, on a positive there)."""

    @staticmethod
    def forward(ctx, z, target, ls: float, w_neg: float):
        t = target[:, None]
        grad_wanted = ctx.needs_input_grad[0]
        u = torch.neg(z).sigmoid_()
        v = torch.sigmoid(z) if ls or grad_wanted else None
        arg_n = u + LOG_EPS
        if ls:
            arg_p = v + LOG_EPS
            pos_n, pos_p = arg_n.gather(1, t), arg_p.gather(1, t)
            arg_p.scatter_(1, t, pos_n)
        else:
            pos_n, pos_p = None, (v.gather(1, t) if grad_wanted else torch.sigmoid(z.gather(1, t))).add_(LOG_EPS)
        arg_n.scatter_(1, t, pos_p)
        logs = _sum_log(arg_n, LOG_EPS) * (1 - ls) + (_sum_log(arg_p, LOG_EPS) * ls if ls else 0.0)
        if w_neg != 1:
            logs = logs + (pos_p.log().sum() * (1 - ls) + (pos_n.log().sum() * ls if ls else 0.0)) * ((1 - w_neg) / w_neg)
        if grad_wanted:  # in place from here on: u, v and the logs' arguments are spent (saves B·C allocations)
            uv = u.mul_(v)  # σ'(z) = σ(z)·σ(−z)
            grad = torch.div(uv, arg_n, out=arg_n)
            if ls:
                grad.sub_(uv.div_(arg_p), alpha=ls / (1 - ls))
            ctx.save_for_backward(grad.scatter_(1, t, grad.gather(1, t).mul_(-1 / w_neg)))
            ctx.scale = w_neg * (1 - ls) / z.numel()
        return logs * (-w_neg / z.numel())

    @staticmethod
    def backward(ctx, grad):
        g, = ctx.saved_tensors
        return g * (grad * ctx.scale), None, None, None


class _ExpectedPositives(torch.autograd.Function):
    """EPR: Σ_i −log(q_{i,y_i} + 1e-5)/(B·C) + reg(mean_i Σ_j q_ij − k), q = σ(z), reg = d²/C² ("2") or |d|/C² ("1")."""

    @staticmethod
    def forward(ctx, z, target, k: float, norm: str):
        target = target[:, None]
        b, c = z.shape
        q = torch.sigmoid(z)
        q_g = q.gather(1, target)
        d = q.sum() / b - k
        reg = (d.abs() if norm == "1" else d * d) / c ** 2
        ctx.save_for_backward(target, q, q_g)
        ctx.slope = (d.sign() if norm == "1" else 2 * d) / (c ** 2 * b)
        return -(q_g + LOG_EPS).log().sum() / (b * c) + reg

    @staticmethod
    def backward(ctx, grad):
        target, q, q_g = ctx.saved_tensors
        g = torch.addcmul(q, q, q, value=-1).mul_(grad * ctx.slope)  # q(1 − q)·slope
        g_pos = (q_g * q_g - q_g).div_(q_g + LOG_EPS).mul_(grad / q.numel())
        return g.scatter_add_(1, target, g_pos), None, None, None


def _cross_grad(w: torch.Tensor, one_minus_w: torch.Tensor, ratio: torch.Tensor, arg: torch.Tensor,
                slope) -> torch.Tensor:
    """−(∂/∂q −[w·log(q + ε) + (1 − w)·log(1 − q + ε)] + slope) = (w − (1 − w)·ratio)/arg − slope, given arg = q + ε
    and ratio = (q + ε)/(1 − q + ε): ROLE's cross term for either side, w the other side detached (negated, so that
    it is one addcmul)."""
    return torch.addcmul(w, one_minus_w, ratio, value=-1).div_(arg).sub_(slope)


class _RoleLoss(torch.autograd.Function):
    """ROLE's objective from the classifier's logits x and the label estimates e, each side's cross term weighted by
    the other side detached (Cole et al.). With q = σ(x), a = q + ε, a' = 1 − q + ε, b = e + ε, b' = 1 − e + ε:
    [½Σ_i −log a_iy − log b_iy + ½Σ_ij −(e·log a + (1−e)·log a') − (q·log b + (1−q)·log b')]/(B·C)
    + ½[(Σq/B − k)² + (Σe/B − k)²]/C². As e·log a + (1−e)·log a' = log a' + e·log(a/a'), each entry takes the logs of
    a/a' and b/b' and Σ log(a'·b') is a `_sum_log`. The gradients are formed here up to the factor −½/(B·C), which
    `backward` applies: ∂/∂x ∝ q(1−q)·[`_cross_grad`(e) − 2(Σq/B − k)/C], plus q(1−q)/a on the positive;
    ∂/∂e ∝ `_cross_grad`(q) − 2(Σe/B − k)/C, plus 1/b on the positive."""

    @staticmethod
    def forward(ctx, x, e, target, k: float):
        t = target.view(-1, 1)
        b, c = x.shape
        q = torch.sigmoid(x)
        one_q, one_e = torch.rsub(q, 1), torch.rsub(e, 1)
        arg_q, arg_e = q + LOG_EPS, e + LOG_EPS
        rest_q, rest_e = one_q + LOG_EPS, one_e + LOG_EPS
        ratio_q, ratio_e = arg_q.div(rest_q), arg_e.div(rest_e)
        d_q, d_e = q.sum() / b - k, e.sum() / b - k
        arg_q_t, arg_e_t = arg_q.gather(1, t), arg_e.gather(1, t)
        grad_x = grad_e = None
        if ctx.needs_input_grad[0]:
            qq = q * one_q
            grad_x = _cross_grad(e, one_e, ratio_q, arg_q, 2 * d_q / c).mul_(qq)
            grad_x.scatter_add_(1, t, qq.gather(1, t).div_(arg_q_t))
        if ctx.needs_input_grad[1]:
            grad_e = _cross_grad(q, one_q, ratio_e, arg_e, 2 * d_e / c).scatter_add_(1, t, arg_e_t.reciprocal())
        ctx.save_for_backward(grad_x, grad_e)
        ctx.scale = -0.5 / x.numel()
        logs = (_sum_log(rest_q.mul_(rest_e), LOG_EPS ** 2) + torch.dot(e.reshape(-1), ratio_q.log_().reshape(-1))
                + torch.dot(q.reshape(-1), ratio_e.log_().reshape(-1)) + arg_q_t.mul_(arg_e_t).log_().sum())
        return logs * ctx.scale + 0.5 * (d_q * d_q + d_e * d_e) / c ** 2

    @staticmethod
    def backward(ctx, grad):
        grad_x, grad_e = ctx.saved_tensors
        scale = grad * ctx.scale
        return (None if grad_x is None else grad_x * scale), (None if grad_e is None else grad_e * scale), None, None


class AssumeNegative(_SigmoidHead):
    """AN (`label_smoothing=0`), AN-LS (`label_smoothing=0.1`) and WAN (`weak=True`: negatives × 1/(C−1))."""

    def __init__(self, label_smoothing: float = 0.0, weak: bool = False):
        super().__init__()
        if not 0 <= label_smoothing < 0.5:
            raise UserError(f"loss.label_smoothing={label_smoothing}: must be in [0, 0.5)")
        self.ls, self.weak = float(label_smoothing), weak

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w_neg = 1.0 / (logits.shape[1] - 1) if self.weak else 1.0
        return _AssumeNegative.apply(as_float(logits), target.long(), self.ls, w_neg)


class ExpectedPositives(_SigmoidHead):
    """EPR: −log q_y on the observed positive (/(B·C)) + the expected-positives regulariser with k̂ = K."""

    def __init__(self, k: float = 1.0, norm: str = "2"):
        super().__init__()
        _choice("norm", norm, ("1", "2"))
        if not float(k) > 0:
            raise UserError(f"loss.k={k}: the expected number of positives must be > 0 (set avgk.k)")
        self.k, self.norm = float(k), norm

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _ExpectedPositives.apply(as_float(logits), target.long(), self.k, self.norm)


class RegularizedOnlineLabelEstimation(_SigmoidHead):
    """ROLE: a per-training-example label table (logits, N×C) trained jointly with the classifier.

    Rows are initialised like Cole et al. (observed positive logit(0.995), the rest uniform in ±logit(0.6));
    the positive entry of a row is set the first time its example is seen, so only `bind` (N) is needed.
    The table trains at lr × `lr_mult`, without weight decay. On val/test (indices of another split) the reported
    loss is EPR's.

    `table_update`: `dense` (the official code): the table is a parameter group of the run's optimizer, whose
    step reads and writes all N × C entries and their moments every step (rows not in the batch keep moving on
    their momentum). `rows`: the lazy counterpart of the run's optimizer (experiments/engine/lazy.py: Adam →
    SparseAdam, SGD → LazySGD) on a sparse gradient: a step updates only the batch's B rows and their state —
    B·C instead of N·C per step (Pl@ntNet-300K: 32 × 1,081 instead of 243,916 × 1,081) — and other rows stay.
    """

    needs_index = True

    def __init__(self, k: float = 1.0, lr_mult: float = 10.0, seed: int = 0, table_update: str = "dense"):
        super().__init__()
        if not float(k) > 0 or lr_mult <= 0:
            raise UserError(f"loss.k={k}, loss.lr_mult={lr_mult}: both must be > 0")
        _choice("table_update", table_update, ("dense", "rows"))
        self.k, self.lr_mult, self.seed, self.table_update = float(k), float(lr_mult), seed, table_update
        self.table = nn.Parameter(torch.empty(0, 0))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))

    def bind(self, meta: Meta) -> None:
        n, c = int(meta.class_counts.sum()), meta.num_classes
        g = torch.Generator().manual_seed(self.seed)
        q = math.log(0.6 / 0.4)
        dev = self.table.device
        self.table = nn.Parameter((q * (2 * torch.rand(n, c, generator=g) - 1)).to(dev))
        self.seen = torch.zeros(n, dtype=torch.bool, device=dev)

    def param_groups(self) -> list[dict]:
        if self.table_update == "rows":
            return []
        return [{"params": [self.table], "lr_mult": self.lr_mult, "weight_decay": 0.0}]

    def own_optimizers(self, optim) -> dict[str, torch.optim.Optimizer]:
        if self.table_update == "dense":
            return {}
        return {"table": lazy_optimizer(optim, [self.table], optim.lr * self.lr_mult, "loss.table_update=rows")}

    @classmethod
    def trained_state(cls, cfg, n_train: int, num_classes: int, batch: int) -> tuple[int, int]:
        rows = cfg.get("table_update", "dense") == "rows"
        return n_train * num_classes, (batch if rows else n_train) * num_classes

    def estimates(self, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.table.shape[0] == 0:
            raise UserError("ROLE's label table is empty: the loss was not bound to the dataset (bind(meta))")
        index = index.long().to(self.table.device)
        with torch.no_grad():
            new = ~self.seen[index]
            if new.any():
                self.table[index[new], target[new].long()] = math.log(0.995 / 0.005)
                self.seen[index[new]] = True
        if self.table_update == "rows":
            return F.embedding(index, self.table, sparse=True).sigmoid()
        return self.table.index_select(0, index).sigmoid()  # backward: index_add (`table[index]`'s is far slower)

    def role_loss(self, logits: torch.Tensor, target: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
        x = as_float(logits)
        return _RoleLoss.apply(x, est.to(x.dtype), target.long(), self.k)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if index is None:
            return _ExpectedPositives.apply(as_float(logits), target.long(), self.k, "2")
        return self.role_loss(logits, target, self.estimates(index, target))

    def objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self(outputs["logits"], batch.y, batch.index)

    def eval_objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self(outputs["logits"], batch.y)
