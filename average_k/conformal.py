"""Split-conformal set predictors (APS, RAPS) calibrated on validation so the mean set size is K.

A conformal set is {j : s(x, j) ≤ t}. Split conformal picks t as a quantile of the true-label scores for a
target miscoverage α; here t is instead chosen so that the mean validation set size is K (the same midpoint rule
as average-K, applied to the ascending N·C non-conformity scores), which is what bisection over α converges to.
The implied α (1 − validation coverage) is reported as `<method>_alpha@K`.

LAC / THR (s = 1 − p_y) gives sets {j : p_j ≥ 1 − t}: calibrated to mean size K it *is* softmax average-K
thresholding, so it is not repeated here.
APS (Romano et al. 2020): s(x, j) = mass of the classes ranked above j + u·p_j; u = 1 is TorchCP's non-randomised
score, u = 0 (default here) Romano et al.'s non-randomised sets (the class at which the mass crosses t is always in,
so no set is empty while t > 0), u ~ U(0, 1) per entry the randomised version.
RAPS (Angelopoulos et al. 2021): the penalty λ·1[rank > k_reg] is added to each class's own mass (rank counted
from 1, as the official `penalties[:, kreg:] += lamda`), so s(x, j) = mass + penalties of the classes ranked above j
+ u·p_j + a share of j's own penalty that `raps_rule` sets. `raps_rule: official` (default) is the official code
(aangelopoulos/conformal_classification, conformal.py) in both of its modes: with a per-entry draw u (`aps_u:
random`) j's own penalty is charged in full, λ·max(0, rank(j) − k_reg), as the randomised `giq` (the calibration
score) and `gcq(randomized=True)` (sets); with a number u, u times it, so u = 0 charges the previous rank's cumulative
penalty, exactly `gcq(randomized=False)` (the official code has no other number). `raps_rule: own_rank` charges the
full own penalty whatever u (smaller sets). A randomised set can be empty, as with the official
`allow_zero_sets=True` (its default False would put the top class into an empty set).
Scores that are not a distribution (sigmoid heads) are renormalised to sum to one per row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from average_k.metrics import FIT_ON_VALIDATION, avgk_threshold, k_label
from experiments.engine.errors import UserError
from experiments.engine.metrics import HIGHER, EvalOutputs, Measure, Metric, nanmean, per_class_mean


RAPS_RULES = ("official", "own_rank")


@dataclass
class Ranked:
    """Each row's classes ranked by probability and the mass ranked above each (+ u·own mass), in rank order:
    what every APS / RAPS score of these probabilities shares."""
    order: torch.Tensor
    u_sorted: float | torch.Tensor
    randomized: bool
    cum: torch.Tensor


def ranked(probs: torch.Tensor, u: float | torch.Tensor = 1.0) -> Ranked:
    p = probs.detach().double()
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-300)
    ordered, order = p.sort(dim=1, descending=True, stable=True)
    randomized = torch.is_tensor(u)
    u_sorted = u.double().gather(1, order) if randomized else float(u)
    return Ranked(order, u_sorted, randomized, ordered.cumsum(dim=1) - (1 - u_sorted) * ordered)


def penalised(r: Ranked, penalty: float = 0.0, kreg: float = 0.0, rule: str = "official") -> torch.Tensor:
    """The N×C scores from the shared ranking: + the RAPS penalty (see `rule`), back in class order."""
    cum = r.cum
    if penalty:
        rank = torch.arange(1, cum.shape[1] + 1, dtype=torch.float64)
        charged = (rank - kreg).clamp_min(0)[None, :]
        if rule == "official" and not r.randomized:
            # gcq(randomized=False) admits rank r while the cumulative mass + penalty *up to r − 1* is ≤ τ
            charged = charged - (1 - r.u_sorted) * (rank > kreg).double()[None, :]
        cum = cum + penalty * charged
    return torch.empty_like(cum).scatter_(1, r.order, cum)


def aps_scores(probs: torch.Tensor, penalty: float = 0.0, kreg: float = 0.0,
               u: float | torch.Tensor = 1.0, rule: str = "official") -> torch.Tensor:
    """N×C non-conformity score of every class: mass ranked above + u·own mass (+ RAPS penalty, see `rule`).
    A tensor u (N×C, one draw per entry) makes the randomised scores, a number the non-randomised ones."""
    if rule not in RAPS_RULES:
        raise UserError(f"raps_rule={rule!r}: choose official (gcq) or own_rank")
    return penalised(ranked(probs, u), penalty, kreg, rule)


def size_calibrated_threshold(nonconformity: torch.Tensor, k: float) -> float:
    """t such that the mean size of {j : s_j ≤ t} over the calibration rows is K (midpoint rule, ascending)."""
    return -avgk_threshold(-nonconformity, k)


class ConformalSets(Metric):
    """APS / RAPS sets on the primary scores (or `score_key`), t fitted on validation for each K."""

    METHODS = ("aps", "raps")
    needs = "distribution"
    adapts_independent = True
    fitted_on_validation = True
    measures = {f"{m}_{name}": meaning for m in METHODS for name, meaning in
                (("acc", HIGHER), ("macro_acc", HIGHER), ("size", Measure(None, "classes")), ("alpha", Measure(None)))}

    def __init__(self, ks: Sequence[float] = (1, 2, 3, 5), methods: Sequence[str] = ("aps", "raps"),
                 score_key: str = "probs", aps_u: float | str = 0.0, seed: int = 0,
                 raps_penalty: float = 0.01, raps_kreg: float | None = None, raps_rule: str = "official"):
        bad = [m for m in methods if m not in self.METHODS]
        if bad:
            raise UserError(f"conformal methods {bad} unknown; choose from {', '.join(self.METHODS)}")
        if aps_u != "random" and not (isinstance(aps_u, (int, float)) and 0 <= aps_u <= 1):
            raise UserError(f"aps_u={aps_u!r}: use a number in [0, 1] or 'random'")
        if raps_penalty < 0:
            raise UserError(f"raps_penalty={raps_penalty} must be ≥ 0")
        if raps_rule not in RAPS_RULES:
            raise UserError(f"raps_rule={raps_rule!r}: choose official (gcq) or own_rank")
        self.ks = tuple(float(k) for k in ks)
        self.methods, self.score_key = tuple(methods), score_key
        self.aps_u, self.seed = aps_u, seed
        self.raps_penalty, self.raps_kreg, self.raps_rule = raps_penalty, raps_kreg, raps_rule

    def _each(self, probs: torch.Tensor):
        """(method, K, N×C scores) for every pair: the rows are ranked once, APS's scores (the same for every K)
        built once, RAPS's once per k_reg; the same operations as `aps_scores` per pair, so the same numbers."""
        u = self.aps_u
        if u == "random":
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + probs.shape[0])
            u = torch.rand(probs.shape, generator=g, dtype=torch.float64)
        shared, built = ranked(probs, u), {}
        for m in self.methods:
            for k in self.ks:
                key = (0.0, 0.0) if m == "aps" else (
                    self.raps_penalty, self.raps_kreg if self.raps_kreg is not None else float(math.floor(k)))
                if key not in built:
                    built = {key: penalised(shared, *key, self.raps_rule)}   # one score matrix held at a time
                yield m, k, built[key]

    def _probs(self, out: EvalOutputs) -> torch.Tensor:
        if self.score_key not in out.scores:
            raise UserError(f"conformal score_key={self.score_key!r} not among the loss's scores "
                            f"{sorted(out.scores)}; set it to one of them")
        return out.distribution(self.score_key)

    def fit(self, val: EvalOutputs, meta) -> dict[tuple[str, float], float]:
        return {(m, k): size_calibrated_threshold(s, k) for m, k, s in self._each(self._probs(val))}

    def __call__(self, out: EvalOutputs, meta, state: Any = None) -> dict[str, Any]:
        if state is None:
            raise UserError(f"conformal sets: {FIT_ON_VALIDATION}")
        probs, t = self._probs(out), out.targets.long()
        res: dict[str, Any] = {}
        for m, k, s in self._each(probs):
            sets = s <= state[(m, k)]
            hit = sets.gather(1, t.view(-1, 1)).squeeze(1)
            lab = k_label(k)
            res[f"{m}_acc@{lab}"] = hit.double().mean().item()
            res[f"{m}_macro_acc@{lab}"] = nanmean(per_class_mean(hit, t, meta.num_classes))
            res[f"{m}_size@{lab}"] = sets.sum(dim=1).double().mean().item()
            res[f"{m}_alpha@{lab}"] = 1.0 - res[f"{m}_acc@{lab}"]
        return res
