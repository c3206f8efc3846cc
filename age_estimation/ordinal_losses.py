"""Ordinal losses for age estimation, drop-in beside cross entropy and SimLoss (class index = age − 1).

- `SORD` (Díaz & Marathe, CVPR 2019): cross entropy to the soft target softmax(−φ(y, i)), φ = scale·|i − y|^p
  with p = 2 (`squared`) or 1 (`absolute`). The absolute form is dlordinal's `SORDLoss` (alpha = scale); the
  squared form is ours (dlordinal has only |i − y|). CE to a fixed target = KL + the target's entropy.
- `CORAL` (Cao, Mirjalili & Raschka, PRL 2020): K−1 binary tasks "y > k" on one shared weight vector with K−1
  biases (`CoralLayer`, biases pre-initialised descending as coral-pytorch's `CoralLayer`), label extension
  y_k = 1[y > k], loss = Σ_k BCE averaged over the batch; prediction Σ_k 1[σ(g_k) > 0.5]. Ours: dlordinal has none.
- `CORN` (Shi, Cao & Raschka, 2023): K−1 independent logits of P(y > k | y > k−1); task k is trained only on
  samples with y > k−1; loss = dlordinal's `CORNLoss` (coral-pytorch's `corn_loss`); P(y > k) = Π_{j≤k} σ(g_j),
  prediction Σ_k 1[P(y > k) > 0.5].
- `CDWCE` (Polat et al. 2022): −Σ_i log(1 − p_i)·|i − y|^α, mean over the batch. `one_minus_p` says how log(1 − p_i)
  is taken: `exact` (default) in log space, right where p_i rounds to 1 (z = [30, −30, −30], y = 2, α = 1: 118.61,
  gradient [2, −1, −1]); `official` as Polat et al.'s code (GorkemP/labeled-images-for-ulcerative-colitis,
  utils/loss.py), 1 − p clamped at 1e-4 (18.42 there, gradient 0); `dlordinal` as dlordinal's `CDWCELoss` fed
  max-shifted logits (1e-8 added to 1 − p times the row's Σ exp: 36.84 there, gradient 0).
- `MeanVariance` (Pan et al., CVPR 2018): CE + λ1·(m − y)²/2 + λ2·v with m, v the mean and variance of the
  predicted class distribution; `strength` scales (λ1, λ2) jointly; prediction round(m) as in the paper.

CORAL and CORN have no C-wide "logits" head: their K−1 logits are the "ordinal" head, their primary score is the
class distribution p_c = P(y > c−1) − P(y > c) (clipped at 0 and renormalised when CORAL's P is not monotone),
and `predict` is the paper's counting rule, which the engine's accuracy and MAE read.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from experiments.engine.data import Batch
from experiments.engine.errors import UserError
from experiments.engine.loss import EngineLoss

DISTANCES = {"absolute": 1, "squared": 2}


def _lib():
    import dlordinal.losses

    return dlordinal.losses


class OrderedLoss(EngineLoss):
    """An ordinal loss: in the engine it refuses a dataset whose classes have no order (`Meta.ordered`)."""

    def bind(self, meta) -> None:
        if not meta.ordered:
            raise ValueError(f"{type(self).__name__} needs ordered classes (ages); this dataset's classes have "
                             f"no order (Meta.ordered is false)")


def sord_targets(target: torch.Tensor, num_classes: int, scale: float, power: int) -> torch.Tensor:
    """N×C soft labels softmax_i(−scale·|i − y|^power)."""
    ranks = torch.arange(num_classes, device=target.device, dtype=torch.float64)
    phi = scale * (ranks[None, :] - target.double()[:, None]).abs().pow(power)
    return torch.softmax(-phi, dim=1)


class SORD(OrderedLoss):
    def __init__(self, scale: float = 1.0, distance: str = "squared"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance={distance!r}: choose {' or '.join(DISTANCES)}")
        if scale <= 0:
            raise ValueError(f"scale={scale}: must be > 0")
        self.scale, self.distance = float(scale), distance
        self._dlordinal: dict[int, nn.Module] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        if self.distance == "absolute":
            return self._absolute(z.shape[1])(z, target).float()
        soft = sord_targets(target, z.shape[1], self.scale, DISTANCES[self.distance]).to(z.dtype)
        return -(soft * F.log_softmax(z, dim=1)).sum(dim=1).mean()

    def _absolute(self, num_classes: int) -> nn.Module:
        if num_classes not in self._dlordinal:
            self._dlordinal[num_classes] = _lib().SORDLoss(alpha=self.scale, num_classes=num_classes,
                                                           train_targets=torch.empty(0, dtype=torch.long))
        return self._dlordinal[num_classes]


def log_one_minus_softmax(z: torch.Tensor) -> torch.Tensor:
    """log(1 − p_i), p = softmax(z) over dim 1, without cancellation: log1p(−p_i) where p_i ≤ ½, which is every entry
    but possibly the row's largest, and for that one log Σ_{j≠i} exp z_j − log Σ_j exp z_j."""
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    top = z.argmax(dim=1, keepdim=True)
    others = torch.logsumexp(z.scatter(1, top, float("-inf")), dim=1, keepdim=True)
    # the top entry's p is zeroed before log1p, so its log1p(−1) = −inf never reaches the backward
    rest = torch.log1p(-torch.exp(z - lse).scatter(1, top, 0.0))
    return rest.scatter(1, top, others - lse)


class CDWCE(OrderedLoss):
    ONE_MINUS_P = ("exact", "official", "dlordinal")
    OFFICIAL_CLAMP = 1e-4  # Polat et al.'s `(1 - input_sm).clamp_(min=1e-4)`

    def __init__(self, alpha: float = 1.0, one_minus_p: str = "exact"):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha={alpha}: must be ≥ 0")
        if one_minus_p not in self.ONE_MINUS_P:
            raise UserError(f"loss.one_minus_p={one_minus_p!r}: choose {', '.join(self.ONE_MINUS_P)}")
        self.alpha, self.one_minus_p = float(alpha), one_minus_p
        self._dlordinal: dict[int, nn.Module] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        c = z.shape[1]
        if c < 2:
            raise UserError(f"CDW-CE needs at least 2 classes, got {c}")
        if self.one_minus_p == "dlordinal":
            return self._dlordinal_loss(z, target)
        if self.one_minus_p == "official":
            log_rest = (1 - z.softmax(dim=1)).clamp(min=self.OFFICIAL_CLAMP).log()
        else:
            log_rest = log_one_minus_softmax(z)
        distance = (torch.arange(c, device=z.device)[None, :] - target.view(-1, 1)).abs()
        return -(log_rest * distance.float().pow(self.alpha)).sum(dim=1).mean()

    def _dlordinal_loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = z.shape[1]
        if c not in self._dlordinal:
            self._dlordinal[c] = _lib().CDWCELoss(num_classes=c, alpha=self.alpha)
        return self._dlordinal[c](z - z.max(dim=1, keepdim=True).values.detach(), target)


def moments(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the class index under each row's distribution."""
    ranks = torch.arange(probs.shape[1], device=probs.device, dtype=probs.dtype)
    mean = probs @ ranks
    return mean, (probs * (ranks[None, :] - mean[:, None]).pow(2)).sum(dim=1)


class MeanVariance(OrderedLoss):
    PREDICTIONS = ("mean", "argmax")

    def __init__(self, lambda_mean: float = 0.2, lambda_var: float = 0.05, strength: float = 1.0,
                 prediction: str = "mean"):
        super().__init__()
        if prediction not in self.PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}: choose {' or '.join(self.PREDICTIONS)}")
        if min(lambda_mean, lambda_var, strength) < 0:
            raise ValueError("lambda_mean, lambda_var and strength must be ≥ 0")
        self.lambda_mean, self.lambda_var = strength * lambda_mean, strength * lambda_var
        self.prediction = prediction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        mean, var = moments(z.softmax(dim=1))
        penalty = self.lambda_mean * (mean - target.float()).pow(2).mean() / 2 + self.lambda_var * var.mean()
        return F.cross_entropy(z, target) + penalty

    def predict(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.prediction == "argmax":
            return None
        mean, _ = moments(outputs["logits"].double().softmax(dim=1))
        return mean.round().long()


class CoralLayer(nn.Module):
    """One weight vector shared by the K−1 tasks, one bias per task: initialised (K−1, …, 1)/(K−1) as coral-pytorch,
    or to given values (`bias`)."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.Linear(in_features, 1, bias=False)
        init = torch.arange(out_features, 0, -1).float() / max(out_features, 1) if bias is None else bias.float()
        if init.shape != (out_features,):
            raise ValueError(f"CoralLayer: {out_features} biases wanted, got shape {tuple(init.shape)}")
        self.bias = nn.Parameter(init.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight(x) + self.bias


def level_encoding(target: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """CORAL's label extension: N×(K−1) with y_k = 1[y > k]."""
    return (target[:, None] > torch.arange(num_tasks, device=target.device)[None, :]).float()


def distribution_from_cumulative(above: torch.Tensor) -> torch.Tensor:
    """N×K class probabilities from N×(K−1) P(y > k): p_c = P(y > c−1) − P(y > c), clipped at 0, renormalised."""
    ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
    padded = torch.cat([ones, above, zeros], dim=1)
    probs = (padded[:, :-1] - padded[:, 1:]).clamp_min(0)
    return probs / probs.sum(dim=1, keepdim=True)


class _Ordinal(OrderedLoss):
    """K−1 "ordinal" logits instead of C-wide "logits"; subclasses give P(y > k) and the loss."""

    head_name = "ordinal"

    def head_sizes(self, num_classes: int) -> dict[str, int]:
        if num_classes < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 ordered classes, got {num_classes}")
        return {self.head_name: num_classes - 1}

    def cumulative(self, ordinal_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self(outputs[self.head_name], batch.y)

    def scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"probs": distribution_from_cumulative(self.cumulative(outputs[self.head_name].double())).float()}

    def predict(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.cumulative(outputs[self.head_name].double()) > 0.5).sum(dim=1)


def prior_thresholds(class_counts: torch.Tensor) -> torch.Tensor:
    """logit P(y > k) of the training label distribution, k = 0…K−2 (clipped to ±10)."""
    counts = class_counts.double().clamp_min(0)
    above = 1 - counts.cumsum(0)[:-1] / counts.sum().clamp_min(1)
    return torch.logit(above.clamp(1e-6, 1 - 1e-6)).clamp(-10, 10).float()


class CORAL(_Ordinal):
    BIAS_INITS = ("descending", "prior")

    def __init__(self, bias_init: str = "descending"):
        super().__init__()
        if bias_init not in self.BIAS_INITS:
            raise ValueError(f"bias_init={bias_init!r}: choose {' or '.join(self.BIAS_INITS)}")
        self.bias_init = bias_init
        self.head = CoralLayer

    def bind(self, meta) -> None:
        super().bind(meta)
        if self.bias_init == "prior":
            self.head = partial(CoralLayer, bias=prior_thresholds(torch.as_tensor(meta.class_counts)))

    def forward(self, ordinal_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = ordinal_logits.float()
        levels = level_encoding(target, z.shape[1])
        per_task = F.logsigmoid(z) * levels + (F.logsigmoid(z) - z) * (1 - levels)
        return -per_task.sum(dim=1).mean()

    def cumulative(self, ordinal_logits: torch.Tensor) -> torch.Tensor:
        return ordinal_logits.sigmoid()


class CORN(_Ordinal):
    def __init__(self):
        super().__init__()
        self._dlordinal: dict[int, nn.Module] = {}

    def forward(self, ordinal_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = ordinal_logits.shape[1] + 1
        if k not in self._dlordinal:
            self._dlordinal[k] = _lib().CORNLoss(num_classes=k)
        return self._dlordinal[k](ordinal_logits.float(), target)

    def cumulative(self, ordinal_logits: torch.Tensor) -> torch.Tensor:
        return ordinal_logits.sigmoid().cumprod(dim=1)
