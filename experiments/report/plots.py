"""Figures from run JSONs (`results/figures/<experiment>_<name>.{png,pdf}`), declared per experiment.

An experiment's `figures:` node maps a name to a spec with a generic `kind`:
- `line`:   metric(s) vs a numeric run column `x`, one line per `hue`, mean ± std band over seeds;
- `bars`:   metric(s) as grouped bars per `hue` (e.g. accuracy per class-frequency bin per method);
- `per_class`: per-class test accuracy vs training images of the class (from `details`), per `hue`;
- `curves`: a `history` metric vs epoch, per `hue`, mean over seeds;
- `hist`:   a `details` histogram (e.g. `test/avgk_size_hist@3`, `test/pred_hist`), averaged per `hue`;
            `options.reference` names a details histogram drawn dashed for comparison, `options.bin` merges bins;
- `forest`: per setting (`rows`, one line each) every `hue` value's difference to `baseline` with its 95 %
            interval, paired on `pair_on` (or `test: welch`), exactly as the tables compute it; filled markers
            are significant after Holm correction over the panel; one panel per metric; `options.hue_order`.
Optional keys: `transform` (as in table specs), `where` (column → value or list of values), `title`, `xlabel`, `ylabel`,
`logx`, `options`. Everything is recomputed from the run JSONs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.engine.checkpoint import atomic_write
from experiments.engine.metrics import Measure, family
from experiments.report.matrix import rank_heatmap
from experiments.report.tables import TableSpec, current_runs, summarize
from experiments.store.frame import measures_of


@dataclass
class FigureSpec:
    experiment: str
    name: str
    kind: str
    metrics: list[str] = field(default_factory=list)
    x: str | None = None
    hue: str | None = None
    where: dict[str, Any] = field(default_factory=dict)
    transform: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    xlabel: str | None = None
    ylabel: str | None = None
    logx: bool = False
    profiles: list[str] = field(default_factory=lambda: ["smoke", "default", "full", "paper"])
    rows: list[str] = field(default_factory=list)          # forest: the settings (one line each)
    baseline: dict[str, Any] = field(default_factory=dict)  # forest: what every cell is compared with
    pair_on: list[str] = field(default_factory=lambda: ["seed"])
    test: str = "paired"

    @classmethod
    def from_config(cls, experiment: str, name: str, node: dict) -> "FigureSpec":
        known = set(cls.__dataclass_fields__)
        return cls(experiment=experiment, name=name, **{k: v for k, v in node.items() if k in known})


def _canon(value) -> str:
    """Compare 100, 100.0 and "100" as equal."""
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def _meaning(metric: str, df: pd.DataFrame) -> dict:
    """The declared unit and direction of a metric, from the runs' `metric_info` (empty when undeclared)."""
    leaf = metric.split("/")[-1]
    measures = df.attrs.get("measures") or measures_of(df)  # attrs: the figure's runs, kept through a transform
    return measures.get(leaf) or measures.get(family(leaf)) or {}


def _pretty(name: str, df: pd.DataFrame) -> str:
    leaf = name.split("/")[-1].replace("_", " ")
    meaning = _meaning(name, df)
    return leaf + (f" ({Measure(**meaning).suffix})" if meaning else "")


def _scale(metric: str, df: pd.DataFrame) -> float:
    return 100.0 if _meaning(metric, df).get("unit") == "fraction" else 1.0


def _records(df: pd.DataFrame) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in df["path"]]


def _hues(df: pd.DataFrame, hue: str | None):
    if hue is None or hue not in df:
        return [("all", df)]
    return [(str(k), g) for k, g in df.groupby(hue, sort=False, dropna=False)]


def _line(ax, df, spec, metric):
    for label, g in _hues(df, spec.hue):
        g = g.assign(_x=pd.to_numeric(g[spec.x], errors="coerce"), _y=pd.to_numeric(g[metric], errors="coerce"))
        stats = g.dropna(subset=["_x"]).groupby("_x")["_y"].agg(["mean", "std", "count"]).sort_index()
        if stats.empty:
            continue
        s = _scale(metric, df)
        ax.plot(stats.index, stats["mean"] * s, marker="o", label=label)
        ax.fill_between(stats.index, (stats["mean"] - stats["std"].fillna(0)) * s,
                        (stats["mean"] + stats["std"].fillna(0)) * s, alpha=0.2)
    ax.set_xlabel(spec.xlabel or spec.x)
    if spec.logx:
        _log_x(ax)


def _bars(ax, df, spec, _metric):
    groups = _hues(df, spec.hue)
    width = 0.8 / max(len(groups), 1)
    pos = np.arange(len(spec.metrics))
    for i, (label, g) in enumerate(groups):
        vals = [pd.to_numeric(g[m], errors="coerce") * _scale(m, df) for m in spec.metrics]
        ax.bar(pos + i * width, [v.mean() for v in vals], width, yerr=[v.std() for v in vals], label=label,
               capsize=2)
    ax.set_xticks(pos + width * (len(groups) - 1) / 2, [_pretty(m, df) for m in spec.metrics], rotation=15)


def _per_class(ax, df, spec, metric):
    for label, g in _hues(df, spec.hue):
        xs, ys = [], []
        for rec in _records(g):
            acc = rec.get("details", {}).get(metric)
            counts = rec.get("data", {}).get("train_class_counts")
            if acc is None or counts is None:
                continue
            for c, a in zip(counts, acc):
                if a is not None:
                    xs.append(c)
                    ys.append(a * 100)
        if not xs:
            continue
        frame = pd.DataFrame({"x": xs, "y": ys}).groupby("x")["y"].mean().sort_index()
        ax.plot(frame.index, frame.values, marker=".", linestyle="-", label=label, alpha=0.8)
    _log_x(ax)
    ax.set_xlabel(spec.xlabel or "training images of the class (log)")


def _log_x(ax) -> None:
    """A log x axis labelled at its decades only, as plain numbers: matplotlib's default also labels minor ticks
    (2×10², 3×10², …), which collide within a decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _curves(ax, df, spec, metric):
    for label, g in _hues(df, spec.hue):
        rows = [{"epoch": h["epoch"], "y": h.get(metric)} for rec in _records(g) for h in rec.get("history", [])]
        frame = pd.DataFrame(rows).dropna() if rows else pd.DataFrame()
        if frame.empty:
            continue
        stats = frame.groupby("epoch")["y"].mean() * _scale(metric, df)
        ax.plot(stats.index, stats.values, label=label)
    ax.set_xlabel("epoch")


def _binned(h: np.ndarray, width: int) -> np.ndarray:
    pad = (-len(h)) % width
    return np.pad(h, (0, pad)).reshape(-1, width).sum(axis=1)


def _hist(ax, df, spec, metric):
    groups = _hues(df, spec.hue)
    width = int(spec.options.get("bin", 1))
    offset = spec.options.get("offset", 0)
    for label, g in groups:
        hists = [rec.get("details", {}).get(metric) for rec in _records(g)]
        hists = [_binned(np.asarray(h, dtype=float), width) for h in hists if h]
        if not hists:
            continue
        n = max(len(h) for h in hists)
        mean = np.mean([np.pad(h, (0, n - len(h))) / max(h.sum(), 1) for h in hists], axis=0)
        ax.step(np.arange(n) * width + offset, mean, where="post", label=label)
    reference = spec.options.get("reference")
    if reference:
        ref = next((rec["details"][reference] for rec in _records(df) if reference in rec.get("details", {})), None)
        if ref:
            ref = _binned(np.asarray(ref, dtype=float), width)
            ax.step(np.arange(len(ref)) * width + offset, ref / max(ref.sum(), 1), where="post",
                    color="black", linestyle="--", label="true")
    ax.set_xlabel(spec.xlabel or "value")
    ax.set_ylabel(spec.ylabel or "share of test images")


def _differences(df: pd.DataFrame, spec: FigureSpec, metric: str) -> pd.DataFrame:
    """The non-baseline cells of the table these rows × hue would make, with their paired differences."""
    table = TableSpec(experiment=spec.experiment, name=spec.name, rows=list(spec.rows),
                      columns=[spec.hue] if spec.hue else [], metrics=[metric], baseline=dict(spec.baseline),
                      pair_on=list(spec.pair_on), test=spec.test)
    long = summarize(df, table)
    long = long[~long["is_baseline"] & long["diff"].notna()]
    return long.assign(_setting=[" · ".join(str(r[k]) for k in spec.rows) or "all" for _, r in long.iterrows()],
                       _hue=long[spec.hue].astype(str) if spec.hue else "")


def _forest(ax, df, spec, metric):
    long = _differences(df, spec, metric)
    s = _scale(metric, df)
    settings = list(dict.fromkeys(long["_setting"]))
    appearance = df[spec.hue].astype(str).unique().tolist() if spec.hue in df else sorted(set(long["_hue"]))
    hues = [h for h in dict.fromkeys(list(map(str, spec.options.get("hue_order", []))) + appearance)
            if h in set(long["_hue"])]
    step = 0.8 / max(len(hues), 1)
    for j, hue in enumerate(hues):
        g = long[long["_hue"] == hue]
        y = [settings.index(v) + (j - (len(hues) - 1) / 2) * step for v in g["_setting"]]
        x = (g["diff"] * s).to_numpy()
        err = [((g["diff"] - g["ci_low"]) * s).fillna(0).to_numpy(),
               ((g["ci_high"] - g["diff"]) * s).fillna(0).to_numpy()]
        ax.errorbar(x, y, xerr=err, fmt="none", ecolor=f"C{j}", capsize=2, lw=1)
        ax.scatter(x, y, s=22, zorder=3, edgecolors=f"C{j}", label=hue or None,
                   facecolors=[f"C{j}" if sig else "white" for sig in g["significant"]])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(settings)), settings, fontsize=7)
    ax.set_ylim(len(settings) - 0.5, -0.5)
    meaning = _meaning(metric, df)
    unit = "pp" if meaning.get("unit") == "fraction" else (Measure(**meaning).suffix if meaning else "")
    better = {True: "; higher is better", False: "; lower is better"}.get(meaning.get("higher_is_better"), "")
    base = ", ".join(f"{k}={v}" for k, v in spec.baseline.items())
    ax.set_xlabel(spec.xlabel or f"Δ {metric.split('/')[-1]} vs {base} ({unit})\n"
                                 f"95 % {spec.test} interval{better}; filled: † after Holm", fontsize=8)


def _heatmap(ax, df, spec, _metric):
    """The rank of each loss (rows) per dataset (columns) by `options.headline` (experiments.report.matrix)."""
    rank_heatmap(ax, df, spec, spec.options["headline"])


KINDS = {"line": _line, "bars": _bars, "per_class": _per_class, "curves": _curves, "hist": _hist,
         "forest": _forest, "heatmap": _heatmap}


# Figure sizes follow their content: a fixed height per forest line or heat-map row, a fixed width per panel or
# heat-map column, plus the width of the longest label, so 23 rows never share the height meant for five.
PANEL_IN = (4.4, 3.0)     # one plot panel (width, height), inches
LINE_IN = 0.2             # one forest line (8-pt labels need ~0.15 in)
ROW_IN, COLUMN_IN = 0.3, 1.0  # one heat-map cell: room for a two-digit rank at 8 pt
LABEL_PT = 8              # tick and legend labels


def text_inches(labels, points: float = LABEL_PT) -> float:
    """Width of the longest label at `points`: DejaVu Sans averages ~0.6 em per character."""
    return max((len(str(label)) for label in labels), default=0) * points * 0.6 / 72


def _legend_inches(runs: pd.DataFrame, spec: FigureSpec) -> float:
    labels = runs[spec.hue].astype(str).unique().tolist() if spec.hue in runs else []
    return text_inches(labels + [spec.hue or ""]) + 0.7 if labels else 0.0


def _plot_size(runs: pd.DataFrame, spec: FigureSpec, panels: int) -> tuple[float, float]:
    return PANEL_IN[0] * panels + _legend_inches(runs, spec), PANEL_IN[1] + 0.8


def _forest_size(runs: pd.DataFrame, spec: FigureSpec, panels: int) -> tuple[float, float]:
    keys = [k for k in spec.rows if k in runs]
    settings = runs[keys].astype(str).agg(" · ".join, axis=1).unique() if keys else ["all"]
    hues = runs[spec.hue].nunique() if spec.hue in runs else 1
    width = text_inches(settings) + 4.2 * panels + _legend_inches(runs, spec)
    return width, 1.6 + LINE_IN * len(settings) * hues


def heatmap_column_inches(columns) -> float:
    """Wide enough for the longest column label, set horizontally at 9 pt."""
    return max(COLUMN_IN, text_inches(columns, 9) + 0.25)


def _heatmap_size(runs: pd.DataFrame, spec: FigureSpec, _panels: int) -> tuple[float, float]:
    rows, columns = runs["loss"].astype(str).unique(), list(spec.options["headline"])
    width = text_inches(rows, 9) + heatmap_column_inches(columns) * len(columns) + 1.4
    return width, 1.4 + ROW_IN * len(rows)


SIZES = {"forest": _forest_size, "heatmap": _heatmap_size}


def _figure_legend(axes, spec: FigureSpec) -> None:
    """One legend for the figure, right of the last panel (the panels' hues share colours), so it never covers
    data; constrained layout makes room for it."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        axes[-1].legend(list(entries.values()), list(entries), loc="upper left", bbox_to_anchor=(1.02, 1.0),
                        fontsize=LABEL_PT, title=spec.hue, title_fontsize=LABEL_PT, borderaxespad=0.0)


def render_figure(df: pd.DataFrame, spec: FigureSpec, out_dir: Path) -> list[Path]:
    """Draw the figure (`draw_figure`) and write it as png and pdf; nothing when it has no runs."""
    import matplotlib.pyplot as plt

    fig = draw_figure(df, spec)
    if fig is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{spec.experiment}_{spec.name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:  # no creation date in the PDF: an unchanged figure re-renders to the same bytes
        fmt = p.suffix[1:]
        atomic_write(p, lambda f: fig.savefig(f, format=fmt, dpi=130,
                                              metadata={"CreationDate": None} if fmt == "pdf" else None))
    plt.close(fig)
    return paths


def draw_figure(df: pd.DataFrame, spec: FigureSpec):
    """The matplotlib Figure of one spec, laid out (constrained layout) at its content's size; None without runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if spec.kind not in KINDS:
        raise ValueError(f"figure {spec.name}: kind={spec.kind!r}; choose one of {', '.join(KINDS)}")
    runs, _, _ = current_runs(df[df["experiment_name"] == spec.experiment])
    runs = runs[runs["status"] == "completed"]
    measures = runs.attrs["measures"] = measures_of(runs)  # the figure's own runs declare its units
    if spec.transform and len(runs):
        import hydra.utils

        runs = hydra.utils.get_method(spec.transform)(runs, spec)
    runs.attrs["measures"] = measures
    for k, v in spec.where.items():  # a list keeps rows whose value is any of its items
        if k in runs:
            allowed = {_canon(x) for x in (v if isinstance(v, (list, tuple)) else [v])}
            runs = runs[runs[k].map(_canon).isin(allowed)]
    if runs.empty:
        return None
    panels = [None] if spec.kind in ("bars", "heatmap") else spec.metrics
    width, height = SIZES.get(spec.kind, _plot_size)(runs, spec, len(panels))
    fig = plt.figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, metric in zip(axes, panels):
        ax.grid(alpha=0.3)  # before drawing: a kind may turn it off (the heat map's cells are its grid)
        KINDS[spec.kind](ax, runs, spec, metric)
        if metric is not None and spec.kind not in ("hist", "forest"):
            ax.set_ylabel(spec.ylabel or _pretty(metric, runs))
    _figure_legend(axes, spec)
    import textwrap

    title = spec.title or f"{spec.experiment}: {spec.name}"
    fig.suptitle(textwrap.fill(title, width=int(width * 72 / (10 * 0.62))), fontsize=10)  # characters that fit
    return fig
