"""The two-head average-K loss (reconstruction from the abstract of Garcin et al.) and the single-positive
multi-label baselines of Cole et al. 2021 (AN, AN-LS, WAN, EPR, ROLE), all in the engine's loss protocol.

Cole et al. conventions are kept: q = sigmoid(logits), −log(x + 1e-5), per-entry losses divided by B·C and summed,
regulariser added after. The baselines use only the "logits" head and score with its sigmoid.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from average_k.metrics import budget
from experiments.data import Batch, Meta
from experiments.errors import UserError
from experiments.losses.base import EngineLoss
from experiments.losses.focal import as_float, softplus_and_sigmoid

LOG_EPS = 1e-5


def neg_log(x: torch.Tensor) -> torch.Tensor:
    return -torch.log(x + LOG_EPS)


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"loss.{name}={value!r}: choose one of {', '.join(map(str, allowed))}")


def batch_pseudo_labels(probs: torch.Tensor, k: float, targets: torch.Tensor | None = None,
                        tie_rule: str = "midpoint", budget_rule: str = "extra") -> torch.Tensor:
    """0/1 pseudo-labels (B×C float) marking the K·B largest entries of a batch of probabilities.

    m = round(K·B). `tie_rule`: `midpoint` marks every entry ≥ the m-th largest value (the §1.3 midpoint
    threshold selects the same entries; ties at the boundary all enter), `exact` marks exactly m entries
    (ties broken by position). With `targets` the true classes are also marked; `budget_rule`: `extra`
    adds them on top of the m entries, `within` counts them in m (top m − B among the other entries).
    """
    _choice("pl_tie_rule", tie_rule, ("midpoint", "exact"))
    _choice("pl_budget", budget_rule, ("extra", "within"))
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


class _BCEWithLogits(torch.autograd.Function):
    """scale·Σ BCE-with-logits(x, y; pos_weight w) = scale·Σ [l·softplus(x) − w·y·x], l = 1 + (w − 1)·y (the value of
    `F.binary_cross_entropy_with_logits`), gradient scale·(l·σ(x) − w·y), from one sigmoid and one log per entry."""

    @staticmethod
    def forward(ctx, x, y, w, scale: float):
        sp, grad = softplus_and_sigmoid(x)
        if w is None:
            total = sp.sum() - torch.dot(y.reshape(-1), x.reshape(-1))
            grad.sub_(y)
        else:
            wy = y * w
            lw = (wy - y).add_(1)
            total = torch.dot(lw.reshape(-1), sp.reshape(-1)) - torch.dot(wy.reshape(-1), x.reshape(-1))
            grad.mul_(lw).sub_(wy)
        ctx.save_for_backward(grad)
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
        self.register_buffer("pos_weight", torch.ones(1), persistent=False)

    def bind(self, meta: Meta) -> None:
        c = meta.num_classes
        if self.k > c:
            raise UserError(f"avgk.k={self.k} exceeds the {c} classes of the dataset; lower avgk.k")
        w = self.pos_weight_opt
        value = (c - self.k) / self.k if w == "balanced" else (1.0 if w is None else float(w))
        self.pos_weight = torch.full((c,), value, device=self.pos_weight.device)

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
        pw = self.pos_weight.to(x) if self.pos_weight.numel() > 1 else None
        return _BCEWithLogits.apply(x, labels.to(x), pw, 1.0 / (x.numel() if self.ml_reduction == "mean" else len(x)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, ml_logits: torch.Tensor | None = None,
                update: bool = False) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target)
        if ml_logits is None:
            return ce
        probs = logits.detach().float().softmax(dim=1)
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


def epr_regularizer(q: torch.Tensor, k: float, norm: str = "2") -> torch.Tensor:
    """(mean_i Σ_j q_ij − k)^2 / C^2 (or |·| / C^2 for norm "1")."""
    d = q.sum() / q.shape[0] - k
    return (d.abs() if norm == "1" else d ** 2) / q.shape[1] ** 2


class _AssumeNegative(torch.autograd.Function):
    """Σ_ij ℓ_ij/(B·C) with, for u = σ(−z) and v = σ(z): negatives w_neg·[(1−ls)·n + ls·p], the observed positive
    (1−ls)·p + ls·n, n = −log(u + 1e-5), p = −log(v + 1e-5). ∂n/∂z = uv/(u+ε), ∂p/∂z = −uv/(v+ε); the gradient
    is formed here (from u + ε before its log is taken in place), `backward` only scales it."""

    @staticmethod
    def forward(ctx, z, target, ls: float, w_neg: float):
        target = target[:, None]
        u = torch.neg(z).sigmoid_()
        v = torch.sigmoid(z) if ls else None
        u_g = u.gather(1, target)
        v_g = torch.sigmoid(z.gather(1, target)) if v is None else v.gather(1, target)
        arg_n = u + LOG_EPS
        if ctx.needs_input_grad[0]:
            uv, uv_g = torch.rsub(u, 1).mul_(u), u_g * v_g
            grad = uv.div_(arg_n) if v is None else uv.div(arg_n).mul_(1 - ls).sub_(uv.div_(v + LOG_EPS), alpha=ls)
            g_pos = uv_g / (u_g + LOG_EPS) * ls - uv_g / (v_g + LOG_EPS) * (1 - ls)
            ctx.save_for_backward(grad.mul_(w_neg / z.numel()).scatter_(1, target, g_pos / z.numel()))
        n_g, p_g = -(u_g + LOG_EPS).log(), -(v_g + LOG_EPS).log()
        n_all = -arg_n.log_().sum()
        p_all = -(v + LOG_EPS).log_().sum() if ls else 0.0
        total = w_neg * ((1 - ls) * n_all + ls * p_all) + (((1 - ls) - w_neg * ls) * p_g
                                                             + (ls - w_neg * (1 - ls)) * n_g).sum()
        return total / z.numel()

    @staticmethod
    def backward(ctx, grad):
        g, = ctx.saved_tensors
        return g * grad, None, None, None


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
        g = torch.rsub(q, 1).mul_(q).mul_(grad * ctx.slope)
        g_pos = (q_g * q_g - q_g).div_(q_g + LOG_EPS).mul_(grad / q.numel())
        return g.scatter_add_(1, target, g_pos), None, None, None


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
    The table is a parameter group with its own lr multiplier `lr_mult` and no weight decay. On val/test
    (indices of another split) the reported loss is EPR's.
    """

    needs_index = True

    def __init__(self, k: float = 1.0, lr_mult: float = 10.0, seed: int = 0):
        super().__init__()
        if not float(k) > 0 or lr_mult <= 0:
            raise UserError(f"loss.k={k}, loss.lr_mult={lr_mult}: both must be > 0")
        self.k, self.lr_mult, self.seed = float(k), float(lr_mult), seed
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
        return [{"params": [self.table], "lr_mult": self.lr_mult, "weight_decay": 0.0}]

    def estimates(self, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.table.shape[0] == 0:
            raise UserError("ROLE's label table is empty: the loss was not bound to the dataset (bind(meta))")
        index = index.long().to(self.table.device)
        with torch.no_grad():
            new = ~self.seen[index]
            if new.any():
                self.table[index[new], target[new].long()] = math.log(0.995 / 0.005)
                self.seen[index[new]] = True
        return self.table[index].sigmoid()

    def role_loss(self, logits: torch.Tensor, target: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
        q = logits.float().sigmoid()
        b, c = q.shape
        t = target.long().view(-1, 1)
        pos = 0.5 * (neg_log(q.gather(1, t)) + neg_log(est.gather(1, t))).sum()
        e, p = est.detach(), q.detach()
        cross_1 = e * neg_log(q) + (1 - e) * neg_log(1 - q)
        cross_2 = p * neg_log(est) + (1 - p) * neg_log(1 - est)
        main = (pos + 0.5 * (cross_1 + cross_2).sum()) / (b * c)
        return main + 0.5 * (epr_regularizer(q, self.k) + epr_regularizer(est, self.k))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if index is None:
            q = logits.float().sigmoid()
            b, c = q.shape
            return neg_log(q.gather(1, target.long().view(-1, 1))).sum() / (b * c) + epr_regularizer(q, self.k)
        return self.role_loss(logits, target, self.estimates(index, target))

    def objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self(outputs["logits"], batch.y, batch.index)

    def eval_objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self(outputs["logits"], batch.y)
