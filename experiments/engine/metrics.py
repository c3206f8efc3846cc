"""Metrics over a whole split, vectorised, and the contract that pairs them with losses and datasets.

A metric is an object with
- `fit(val: EvalOutputs, meta) -> state`   (optional; e.g. an average-K threshold). The trainer fits on the
  validation split and passes the state unchanged to the test split: nothing is ever fitted on test.
- `__call__(out: EvalOutputs, meta, state) -> dict[name, float | list]`. Lower-case names without the split
  prefix (`accuracy`, `mae`, `avgk_acc@2`); the trainer prefixes `val/` or `test/`. Scalars go to the run's
  `metrics`, lists (per-class values, histograms) to its `details`.
and three declarations the engine reads (it never guesses meaning from a name):
- `needs`: the score kind it reads (`SCORE_NEEDS`): `ranking` (any per-class score or the logits),
  `distribution` (rows summing to 1), `set_scores` (a distribution or independent per-class scores).
  `adapts_independent`: a metric that needs a distribution but documents how it renormalises independent
  scores; the run records that adaptation. Otherwise an unmet need refuses the run with one `error:` line.
- `requires`: dataset structure it needs (`ordered` classes, `superclass`).
- `measures`: family name → `Measure` (direction and unit) for every scalar it reports. A reported name is
  either a family or `family@parameter` (`avgk_acc@3`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Sequence

import torch

from experiments.engine.data import Meta
from experiments.engine.errors import UserError
from experiments.engine.numeric import as_float, log_prior

DISTRIBUTION, INDEPENDENT, LOGITS = "distribution", "independent", "logits"
SCORE_KINDS = (DISTRIBUTION, INDEPENDENT, LOGITS)
SCORE_NEEDS = {"ranking": SCORE_KINDS, "distribution": (DISTRIBUTION,), "set_scores": (DISTRIBUTION, INDEPENDENT)}
UNITS = {"fraction": "%", "years": "years", "years²": "years²", "classes": "classes", "classes²": "classes²",
         "count": "count", "nats": "nats", "score": "score", "ratio": "ratio"}
# Equivalence margins δ of `make verify` (experiments.report.verify), in each unit's display scale: two results
# within ±δ count as the same. Chosen from the seed spreads of the committed default-profile tables (5 seeds):
# for rates the median seed sd is 1.7 pp and the TOST with 5 + 5 seeds can show equivalence at ±3 pp for 74 % of
# the cells when the means agree (61 % at ±2 pp); significant table effects are a median 14 pp. The age MAE sd
# is a median 0.10 years (0.02–0.23; equivalence reachable from ±0.12), the smallest † effect 0.26 years: ±0.2.
# Set sizes (sd 0.04–0.06 classes): ±0.1 classes. Docs: docs/statistics.md, "The verdict procedure".
MARGINS = {"fraction": 3.0, "years": 0.2, "classes": 0.1, "count": 1.0, "nats": 0.05}
# Units without a common scale (`score`: QWK, mistake severity, hdist; `ratio`; squared units: MSE): δ = 5 % of
# |reference mean|.
RELATIVE_MARGIN = 0.05


@dataclass(frozen=True)
class Measure:
    """What one reported number means. `higher_is_better=None` marks a descriptive number (a threshold, a
    count) that is never selected on nor bolded. `unit="fraction"` is shown ×100 with a % sign."""

    higher_is_better: bool | None
    unit: str = "fraction"
    margin: float | None = None   # equivalence margin δ in the display scale; None: the unit's default (MARGINS)

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"Measure unit {self.unit!r}: choose one of {', '.join(UNITS)}")

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "fraction" else 1.0

    @property
    def suffix(self) -> str:
        return UNITS[self.unit]

    def delta(self, reference: float, margin: float | None = None) -> float:
        """The equivalence margin in raw units (the scale of the stored numbers) for a cell whose reference mean
        is `reference`: `margin` (e.g. a table's `verify.margins`), else this measure's own, else the unit's
        default; all in the display scale (percentage points for fractions). Relative for units without a
        common scale (RELATIVE_MARGIN × |reference|)."""
        chosen = next((m for m in (margin, self.margin) if m is not None), None)
        if chosen is None:
            absolute = MARGINS.get(self.unit)
            return absolute / self.scale if absolute is not None else RELATIVE_MARGIN * abs(reference)
        if not chosen > 0:
            raise UserError(f"equivalence margin {chosen!r} for a {self.unit} metric: must be > 0")
        return chosen / self.scale

    def as_dict(self) -> dict[str, Any]:
        declared = asdict(self)
        return declared if self.margin is not None else {k: v for k, v in declared.items() if k != "margin"}


HIGHER, LOWER = Measure(True), Measure(False)
LOSS = Measure(False, "nats")


def family(name: str) -> str:
    """`avgk_acc@3` → `avgk_acc`; a name without a parameter is its own family."""
    return name.split("@", 1)[0]


def renormalised(scores: torch.Tensor) -> torch.Tensor:
    """Independent per-class scores turned into a distribution: each row divided by its sum (uniform when a
    row sums to 0). The documented adaptation of metrics with `adapts_independent = True`."""
    s = scores.double().clamp_min(0)
    total = s.sum(dim=1, keepdim=True)
    uniform = torch.full_like(s, 1.0 / s.shape[1])
    return torch.where(total > 0, s / total.clamp_min(1e-300), uniform).to(scores.dtype)


@dataclass
class EvalOutputs:
    """Everything a metric may read about one split, on the CPU."""

    outputs: dict[str, torch.Tensor]   # raw model outputs per head, N×C
    scores: dict[str, torch.Tensor]    # per-class scores from `loss.scores` ("probs" is the primary)
    targets: torch.Tensor              # N, int64
    loss: float | None = None          # mean training objective on this split
    kinds: dict[str, str] | None = None  # the loss's declared kind of each score (`EngineLoss.score_kinds`)
    prediction: torch.Tensor | None = None  # the loss's own decision rule (`EngineLoss.predict`), N labels

    @property
    def logits(self) -> torch.Tensor:
        """The C-wide "logits" head; for a loss without one (CORAL/CORN), the log of its primary score."""
        if "logits" in self.outputs:
            return self.outputs["logits"]
        return self.scores["probs"].double().clamp_min(1e-300).log().float()

    @property
    def pred(self) -> torch.Tensor:
        return self.prediction if self.prediction is not None else self.logits.argmax(dim=1)

    def kind(self, key: str = "probs") -> str:
        return (self.kinds or {}).get(key, DISTRIBUTION)

    def distribution(self, key: str = "probs") -> torch.Tensor:
        """The score `key` as a distribution: as is when declared one, renormalised when independent."""
        s = self.scores[key]
        return renormalised(s) if self.kind(key) == INDEPENDENT else s


class Metric:
    needs: ClassVar[str] = "ranking"
    adapts_independent: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    measures: dict[str, Measure] = {}

    def fit(self, val: EvalOutputs, meta: Meta) -> Any:
        return None

    def __call__(self, out: EvalOutputs, meta: Meta, state: Any = None) -> dict[str, Any]:
        raise NotImplementedError

    def measure(self, name: str) -> Measure | None:
        return self.measures.get(name) or self.measures.get(family(name))


def structure_of(meta: Meta) -> set[str]:
    """The structure a dataset offers to metrics: `ordered` classes, `superclass`."""
    have = set()
    if meta.ordered:
        have.add("ordered")
    if meta.superclass is not None:
        have.add("superclass")
    return have


def pairing(metric: Metric, kinds: dict[str, str], meta: Meta) -> tuple[str | None, str | None]:
    """(refusal, adaptation) of one metric for a loss's primary score kind and a dataset: a refusal is the
    reason the pair cannot be computed; an adaptation says how the metric reads an unmet kind."""
    missing = [r for r in metric.requires if r not in structure_of(meta)]
    if missing:
        return f"needs {' and '.join(missing)} classes, which this dataset does not have", None
    kind = kinds.get("probs", DISTRIBUTION)
    if kind in SCORE_NEEDS[metric.needs]:
        return None, None
    if metric.needs == "distribution" and kind == INDEPENDENT and metric.adapts_independent:
        return None, "independent scores renormalised to sum to 1 per sample"
    return f"needs {metric.needs} scores but the loss's primary score is {kind}", None


def check_kinds(kinds: dict[str, str], where: str) -> None:
    bad = {k: v for k, v in kinds.items() if v not in SCORE_KINDS}
    if "probs" not in kinds or bad:
        raise UserError(f"{where}.score_kinds={kinds}: declare a kind ({', '.join(SCORE_KINDS)}) for every "
                        f"score, including the primary `probs`")


def per_class_mean(hit: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean of a per-sample boolean (hit) vector; NaN for classes absent from `targets`."""
    t = targets.long()
    good = torch.bincount(t, weights=hit.double(), minlength=num_classes)
    total = torch.bincount(t, minlength=num_classes).double()
    return good / total  # 0/0 -> nan


def per_class_accuracy(pred: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy of each class (NaN for classes absent from `targets`)."""
    return per_class_mean(pred == targets, targets, num_classes)


def nanmean(x: torch.Tensor) -> float:
    """Mean over the non-NaN entries; NaN when there is none (e.g. an empty shot group)."""
    x = x[~torch.isnan(x)]
    return x.mean().item() if len(x) else float("nan")


def shot_masks(counts: torch.Tensor, few: float, many: float) -> dict[str, torch.Tensor]:
    """Classes by training count (LDAM/OLTR convention): many > `many`, few < `few`, medium in between."""
    counts = counts.double()
    return {"many": counts > many, "medium": (counts >= few) & (counts <= many), "few": counts < few}


def topk_hits(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Per sample: is the true class among the k highest scores (all of them when k ≥ the number of classes)?"""
    top = scores.topk(min(int(k), scores.shape[1]), dim=1).indices
    return (top == targets.long()[:, None]).any(dim=1)


class Accuracy(Metric):
    """Top-1 accuracy over samples (micro)."""

    measures = {"accuracy": HIGHER}

    def __call__(self, out, meta, state=None):
        return {"accuracy": (out.pred == out.targets).double().mean().item()}


class TopK(Metric):
    """Fraction of samples whose true class is among the k highest logits."""

    def __init__(self, ks: tuple[int, ...] = (5,)):
        self.ks = tuple(ks)
        self.measures = {f"top{k}_accuracy": HIGHER for k in self.ks}

    def __call__(self, out, meta, state=None):
        res = {}
        for k in self.ks:
            res[f"top{k}_accuracy"] = topk_hits(out.logits, out.targets, k).double().mean().item()
        return res


class ClassAccuracy(Metric):
    """Balanced (macro, mean of per-class) accuracy, per-class accuracy, and shot-group accuracy.

    Shot groups by training count (LDAM/OLTR convention): many > `many`, few < `few`, medium in between.
    """

    measures = {"balanced_accuracy": HIGHER, "many_shot_accuracy": HIGHER, "medium_shot_accuracy": HIGHER,
                "few_shot_accuracy": HIGHER}

    def __init__(self, many: int = 100, few: int = 20, per_class: bool = True):
        self.many, self.few, self.per_class = many, few, per_class

    def __call__(self, out, meta, state=None):
        acc = per_class_accuracy(out.pred, out.targets, meta.num_classes)
        res: dict[str, Any] = {"balanced_accuracy": nanmean(acc)}
        for name, mask in shot_masks(meta.class_counts, self.few, self.many).items():
            res[f"{name}_shot_accuracy"] = nanmean(acc[mask])
        if self.per_class:
            res["per_class_accuracy"] = [None if torch.isnan(a) else round(a.item(), 6) for a in acc]
        return res


class PredictionHistogram(Metric):
    """How often each class is predicted (`pred_hist`) next to how often it is true (`target_hist`): shows
    where a loss moves the predictions, e.g. the predicted-age distribution of an ordinal loss."""

    def __call__(self, out, meta, state=None):
        k = meta.num_classes
        return {"pred_hist": torch.bincount(out.pred, minlength=k).tolist(),
                "target_hist": torch.bincount(out.targets, minlength=k).tolist()}


class PostHocLogitAdjustment(Metric):
    """Post-hoc logit adjustment (Menon 2021): predict argmax_y z_y − τ·log π_y with π the training prior.

    Reports `la_accuracy`, `la_balanced_accuracy`, `la_{many,medium,few}_shot_accuracy` and `la_tau`.
    `taus` (optional list): τ is chosen by validation balanced accuracy in `fit` and reused on test.
    """

    measures = {"la_tau": Measure(None, "score"), "la_accuracy": HIGHER, **{f"la_{k}": m for k, m in
                                                                      ClassAccuracy.measures.items()}}

    def __init__(self, tau: float = 1.0, taus: Sequence[float] | None = None, many: int = 100, few: int = 20):
        self.tau = float(tau)
        self.taus = [float(t) for t in taus] if taus else None
        self.class_acc = ClassAccuracy(many=many, few=few, per_class=False)

    def _adjusted(self, out: EvalOutputs, meta: Meta, tau: float) -> EvalOutputs:
        z = as_float(out.logits)
        z = z - tau * log_prior(torch.as_tensor(meta.class_counts)).to(z)
        return EvalOutputs(outputs={"logits": z}, scores={}, targets=out.targets)

    def fit(self, val: EvalOutputs, meta: Meta) -> Any:
        if not self.taus:
            return self.tau
        scored = [(self.class_acc(self._adjusted(val, meta, t), meta)["balanced_accuracy"], -abs(t - 1.0), t)
                  for t in self.taus]
        return max(scored)[2]

    def __call__(self, out: EvalOutputs, meta: Meta, state: Any = None) -> dict[str, Any]:
        tau = self.tau if state is None else float(state)
        adj = self._adjusted(out, meta, tau)
        res = {"la_tau": tau, "la_accuracy": Accuracy()(adj, meta)["accuracy"]}
        res.update({f"la_{k}": v for k, v in self.class_acc(adj, meta).items()})
        return res


def measure_of(metrics: dict[str, "Metric"], name: str) -> Measure | None:
    """The declared meaning of a reported name (`val/accuracy`, `test/avgk_acc@3`, `avgk_acc`)."""
    leaf = name.split("/", 1)[-1]
    if leaf == "loss":
        return LOSS
    for metric in metrics.values():
        found = metric.measure(leaf)
        if found is not None:
            return found
    return None


def describe(metrics: dict[str, "Metric"], names) -> dict[str, dict[str, Any]]:
    """{leaf name: declared meaning} for the scalars of a run, as stored in its JSON (`metric_info`)."""
    out = {}
    for name in names:
        leaf = name.split("/", 1)[-1]
        measure = measure_of(metrics, leaf)
        if measure is None:
            raise UserError(f"metric {leaf!r} is reported but declared by no metric's `measures`; declare its "
                            f"direction and unit where the metric is defined")
        out[leaf] = out[family(leaf)] = measure.as_dict()
    return out
