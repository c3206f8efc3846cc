"""Average-K metrics: one global threshold fitted on validation (the Pl@ntNet-300K rule), applied to test.

λ_K is the midpoint of the (m)-th and (m+1)-th largest of all N·C validation scores, m = round(N·K) (half up),
so the mean validation set size is m/N: exactly K whenever N·K is an integer and there is no tie at the boundary.
A set is {j : score_j ≥ λ_K} (inclusive, compared in float64, so a tie at the boundary lets every tied entry in).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from experiments.engine.errors import UserError
from experiments.engine.metrics import (HIGHER, EvalOutputs, Measure, Metric, family, nanmean, per_class_mean,
                                        shot_masks, topk_hits)


def k_label(k: float) -> str:
    return f"{float(k):g}"


def budget(n: int, k: float) -> int:
    """Number of (sample, class) entries a size-K budget allows for n samples: round(n·K), half up."""
    return int(math.floor(n * float(k) + 0.5))


def _check_k(k: float, num_classes: int, where: str = "avgk.eval_ks") -> None:
    if not 0 < float(k) <= num_classes:
        raise UserError(f"{where} contains K={k}: K must be in (0, num_classes={num_classes}]; fix {where}")


def avgk_threshold(scores: torch.Tensor, k: float) -> float:
    """λ_K = midpoint of the m-th and (m+1)-th largest entries of the N×C `scores`, m = round(N·K) ∈ [1, N·C]."""
    if scores.dim() != 2 or scores.numel() == 0:
        raise ValueError(f"avgk_threshold wants a non-empty N×C score matrix, got shape {tuple(scores.shape)}")
    n, c = scores.shape
    _check_k(k, c)
    m = min(max(budget(n, k), 1), n * c)
    flat = scores.detach().reshape(-1)
    if m == n * c:
        return float(flat.min().double())
    top = torch.topk(flat, m + 1, sorted=True).values.double()
    return float((top[m - 1] + top[m]) / 2)


def avgk_sets(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean N×C membership of the average-K sets."""
    return scores.detach().double() >= threshold


def true_class_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return scores.detach().gather(1, targets.long().view(-1, 1)).squeeze(1).double()


def avgk_accuracy(scores: torch.Tensor, targets: torch.Tensor, threshold: float) -> float:
    """Fraction of samples whose true-class score is ≥ λ (inclusive)."""
    return (true_class_scores(scores, targets) >= threshold).double().mean().item()


def size_stats(sets: torch.Tensor, hist_max: int) -> dict[str, Any]:
    """Mean, median, share of empty sets and a histogram of sizes 0..hist_max (last bin: ≥ hist_max)."""
    sizes = sets.sum(dim=1)
    hist = torch.bincount(sizes.clamp(max=hist_max), minlength=hist_max + 1)
    return {"mean": sizes.double().mean().item(), "median": sizes.double().median().item(),
            "empty": (sizes == 0).double().mean().item(), "hist": hist.tolist()}


def score_sources(scores: dict[str, torch.Tensor], heads: bool) -> dict[str, torch.Tensor]:
    """"probs" → no suffix; "probs_<x>" → suffix "_<x>" (e.g. the two-head model's head A as "_a")."""
    out = {"": scores["probs"]}
    if heads:
        out.update({key[len("probs"):]: v for key, v in scores.items() if key.startswith("probs_")})
    return out


FIT_ON_VALIDATION = ("a threshold is fitted on the validation split only and none was fitted; give the dataset a "
                     "validation split (dataset.val_fraction / dataset.val_per_class)")


class AverageK(Metric):
    """Average-K accuracy (micro and macro), set sizes and top-K for every K in `ks`, for every score source.

    The primary scores (loss.scores()["probs"]) are reported as `avgk_acc@K`, `avgk_macro_acc@K`, `avgk_size@K`,
    `avgk_size_median@K`, `avgk_empty@K`, `avgk_threshold@K`, `topk_acc@K`, `topk_macro_acc@K` (integer K only),
    `avgk_{few,medium,many}_acc@K` (macro within a class-frequency bin of training counts) and the list
    `avgk_size_hist@K`; every other source "probs_<x>" gets acc, macro acc, size, threshold with suffix `_<x>`.
    """

    needs = "set_scores"
    fitted_on_validation = True
    measures = {"avgk_acc": HIGHER, "avgk_macro_acc": HIGHER, "avgk_size": Measure(None, "classes"),
                "avgk_threshold": Measure(None, "score"), "avgk_size_median": Measure(None, "classes"),
                "avgk_empty": Measure(None), "avgk_few_acc": HIGHER, "avgk_medium_acc": HIGHER,
                "avgk_many_acc": HIGHER, "topk_acc": HIGHER, "topk_macro_acc": HIGHER}

    def __init__(self, ks: Sequence[float] = (1, 2, 3, 5), few: int = 20, many: int = 100,
                 hist_max: int | None = None, per_class: bool = False, heads: bool = True):
        if not len(ks):
            raise UserError("avgk.eval_ks is empty; give at least one K, e.g. avgk.eval_ks=[1,2,3,5]")
        if few > many:
            raise UserError(f"average-K shot bins: few={few} > many={many}; set few ≤ many")
        self.ks = tuple(float(k) for k in ks)
        self.few, self.many = int(few), int(many)
        self.hist_max = int(hist_max) if hist_max is not None else max(10, 2 * math.ceil(max(self.ks)))
        self.per_class, self.heads = per_class, heads

    def fit(self, val: EvalOutputs, meta) -> dict[str, dict[float, float]]:
        return {suffix: {k: avgk_threshold(s, k) for k in self.ks}
                for suffix, s in score_sources(val.scores, self.heads).items()}

    def measure(self, name: str) -> Measure | None:
        """Other score sources report `<family>_<source>@K` (e.g. `avgk_acc_a@1`) with the family's meaning."""
        fam = family(name)
        return self.measures.get(fam) or self.measures.get(fam.rsplit("_", 1)[0])

    def __call__(self, out: EvalOutputs, meta, state: Any = None) -> dict[str, Any]:
        if state is None:
            raise UserError(f"average-K metrics: {FIT_ON_VALIDATION}")
        c = meta.num_classes
        res: dict[str, Any] = {}
        bins = shot_masks(meta.class_counts, self.few, self.many)
        for suffix, scores in score_sources(out.scores, self.heads).items():
            if suffix not in state:
                continue
            for k in self.ks:
                lab, lam = k_label(k), state[suffix][k]
                sets = avgk_sets(scores, lam)
                hit = sets.gather(1, out.targets.long().view(-1, 1)).squeeze(1)
                per_class = per_class_mean(hit, out.targets, c)
                stats = size_stats(sets, self.hist_max)
                res[f"avgk_acc{suffix}@{lab}"] = hit.double().mean().item()
                res[f"avgk_macro_acc{suffix}@{lab}"] = nanmean(per_class)
                res[f"avgk_size{suffix}@{lab}"] = stats["mean"]
                res[f"avgk_threshold{suffix}@{lab}"] = lam
                if suffix:
                    continue
                res[f"avgk_size_median@{lab}"] = stats["median"]
                res[f"avgk_empty@{lab}"] = stats["empty"]
                res[f"avgk_size_hist@{lab}"] = stats["hist"]
                for name, mask in bins.items():
                    res[f"avgk_{name}_acc@{lab}"] = nanmean(per_class[mask])
                if self.per_class:
                    res[f"avgk_per_class_acc@{lab}"] = [None if math.isnan(a) else round(a, 6)
                                                        for a in per_class.tolist()]
                if float(k).is_integer():
                    top = topk_hits(scores, out.targets, int(k))
                    res[f"topk_acc@{lab}"] = top.double().mean().item()
                    res[f"topk_macro_acc@{lab}"] = nanmean(per_class_mean(top, out.targets, c))
        return res
