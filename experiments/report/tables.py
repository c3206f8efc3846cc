"""Tables from run JSONs: mean ± std (n) over seeds, best in bold, and each cell's difference to a baseline.

A table spec (the `tables.<name>` node of an experiment config) says which run columns make the rows and the
columns, which metrics fill the cells and which row/column is the baseline. Comparisons with the baseline are
paired on `pair_on` (default: the seed) or unpaired (`test: welch`), with a 95 % interval, Holm–Bonferroni
adjusted p-values per metric and the minimum detectable effect (experiments.report.stats, docs/statistics.md). Only
runs of the current code enter a table (each run's own code version, experiments.store.versions), unless stale
ones are kept on request (KEEP_STALE=1), their cells marked §. Every number is recomputable from
`load_runs(results_dir)` alone. Outputs `results/tables/<experiment>[_<name>].{md,tex,csv}` and
`<table>.versions.json` (the code versions of its runs and what each was computed from).
"""
from __future__ import annotations

import functools
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.engine.checkpoint import atomic_write
from experiments.engine.errors import UserError
from experiments.engine.metrics import Measure, family
from experiments.report import converge, stats, verify
from experiments.report.compare import canonical
from experiments.store import versions as code_versions
from experiments.store.frame import measures_of
from experiments.store.results import read_record

ALPHA = stats.ALPHA
MARK = "†"
ROLES = ("paper", "supporting", "screening")
LENGTH_KEYS = ("budget", "trainer.epochs", "trainer.min_steps")   # a run's training length, shown in the footer
NO_COMPARISON = {**dict.fromkeys(["n_base", "n_pairs", "diff", "ci_low", "ci_high", "boot_low", "boot_high",
                                   "p_value", "p_holm", "mde"], np.nan), "significant": False, "test": ""}


@dataclass
class TableSpec:
    experiment: str
    name: str = "main"
    title: str = ""
    profiles: list[str] = field(default_factory=lambda: ["smoke", "default"])
    rows: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["test/accuracy"])
    baseline: dict[str, Any] = field(default_factory=dict)
    best: str = "column"            # bold the best cell per table column (`column`) or per row (`row`)
    percent: bool = True            # show accuracies/rates ×100
    digits: int = 2
    requires_data: list[str] = field(default_factory=list)
    notes: str = ""
    sort: bool = True               # sort rows/columns by value; false keeps the order of the (transformed) runs
    transform: str | None = None    # dotted path of fn(runs_df, spec) -> df, e.g. to make K a row key
    options: dict[str, Any] = field(default_factory=dict)  # free-form settings read by `transform`
    combine_metrics: bool = False   # one table column per column key, its metrics joined " / " in one cell
    bold_metrics: list[str] | None = None  # metrics eligible for bold (default: all); e.g. leave out set sizes
    order: dict[str, list] = field(default_factory=dict)  # display order of a key's values, e.g. {loss: [ce, cce]}
    pair_on: list[str] = field(default_factory=lambda: ["seed"])  # run columns that pair a cell with its baseline
    test: str = "paired"            # paired (on `pair_on`) | welch (unpaired)
    renderer: str | None = None     # dotted fn(df, spec, out_dir, paper_dir) -> summary, for a table of its own kind
    footer: str | None = None       # dotted fn(spec) -> list of lines printed under the table
    verify: dict[str, Any] = field(default_factory=dict)  # `make verify`: {margins: {metric or family: δ}}, δ in
    #                                 the table's unit (pp for rates); default: the metric's Measure margin
    role: str = "supporting"        # paper: a paper's headline table (its conclusions gate `make converge-check`) |
    #                                 supporting (reported, never gating) | screening (a wide, short-budget survey)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise UserError(f"table {self.stem}: role={self.role!r}; choose one of {', '.join(ROLES)}")

    @property
    def stem(self) -> str:
        return self.experiment if self.name == "main" else f"{self.experiment}_{self.name}"

    @classmethod
    def from_config(cls, experiment: str, name: str, node: dict) -> "TableSpec":
        known = set(cls.__dataclass_fields__)
        return cls(experiment=experiment, name=name, **{k: v for k, v in node.items() if k in known})


def measure(measures: dict[str, dict], metric: str) -> Measure:
    """The declared meaning of a table metric, read from the runs' `metric_info` (see `load_runs`)."""
    leaf = metric.split("/")[-1]
    found = measures.get(leaf) or measures.get(family(leaf))
    if found is None:
        raise UserError(f"table metric {metric!r}: no run declares its direction and unit (metric_info); "
                        f"re-run with the current code or fix the metric name")
    return Measure(**found)


def _scale(spec: "TableSpec", meaning: Measure) -> float:
    return meaning.scale if spec.percent else 1.0


def _key(values) -> tuple:
    return tuple("—" if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in values)


def _groups(df: pd.DataFrame, keys: list[str], sort: bool) -> dict[tuple, pd.DataFrame]:
    if not keys:
        return {(): df}
    return {_key(k if isinstance(k, tuple) else (k,)): g for k, g in df.groupby(keys, dropna=False, sort=sort)}


def _baseline_of(gkey: tuple, groups: dict[tuple, pd.DataFrame], keys: list[str], spec: TableSpec) -> tuple | None:
    base_cols = [k for k in spec.baseline if k in keys]
    if not base_cols:
        return None
    bkey = list(gkey)
    for k in base_cols:
        bkey[keys.index(k)] = spec.baseline[k]
    bkey = _key(bkey)
    for candidate in groups:
        if all(str(a) == str(b) for a, b in zip(candidate, bkey)):
            return candidate
    # No exact twin (e.g. baseline CE has no lower bound): match on the baseline keys and the column keys
    # only, if that singles out one group.
    must = [keys.index(k) for k in base_cols] + [keys.index(k) for k in spec.columns]
    loose = [c for c in groups if all(str(c[i]) == str(bkey[i]) for i in must)]
    return loose[0] if len(loose) == 1 else None


def _values(g: pd.DataFrame, metric: str) -> np.ndarray:
    vals = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=float)
    return vals[~np.isnan(vals)]


def _by_pair(g: pd.DataFrame, metric: str, spec: TableSpec) -> dict:
    """The cell's values keyed by its pairing key (runs sharing a key are averaged); by row for Welch."""
    vals = pd.to_numeric(g[metric], errors="coerce")
    if spec.test == "welch":
        return {i: v for i, v in enumerate(vals) if not math.isnan(v)}
    frame = g[list(spec.pair_on)].assign(_v=vals).dropna(subset=["_v"])
    return frame.groupby(list(spec.pair_on))["_v"].mean().to_dict()


def _check_pairing(df: pd.DataFrame, spec: TableSpec) -> None:
    if spec.test not in ("paired", "welch"):
        raise UserError(f"table {spec.stem}: test={spec.test!r}; choose paired or welch")
    missing = [c for c in spec.pair_on if c not in df.columns] if spec.test == "paired" else []
    if missing or (spec.test == "paired" and not spec.pair_on):
        raise UserError(f"table {spec.stem}: pair_on={list(spec.pair_on)} but the runs have no column "
                        f"{', '.join(missing) or '(none given)'}; name run columns to pair on, or set test: welch")


def _cell(g: pd.DataFrame, base: pd.DataFrame | None, metric: str, spec: TableSpec) -> dict[str, Any]:
    """One cell; `base` is its baseline group (None for the baseline itself or when it has none)."""
    vals = _values(g, metric)
    rec = dict(mean=vals.mean() if len(vals) else np.nan,
               std=vals.std(ddof=1) if len(vals) > 1 else (0.0 if len(vals) else np.nan), n=len(vals),
               **NO_COMPARISON)
    if base is not None:
        found = stats.compare(_by_pair(g, metric, spec), _by_pair(base, metric, spec), spec.test, ALPHA)
        rec.update({k: v for k, v in found.as_dict().items() if k != "sd"}, n_base=len(_values(base, metric)))
    if "stale" in g and g["stale"].any():
        rec["n_stale"] = int(g.loc[g[metric].notna(), "stale"].sum())
    return rec


def _holm(long: pd.DataFrame) -> pd.DataFrame:
    """Holm–Bonferroni over the non-baseline cells of each metric (one family per metric)."""
    long = long.copy()
    for _, idx in long.groupby("metric", sort=False).groups.items():
        long.loc[idx, "p_holm"] = stats.holm(long.loc[idx, "p_value"].to_numpy(dtype=float))
    long["significant"] = long["p_holm"].lt(ALPHA)
    return long


def summarize(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Long table: one row per (row key, column key, metric): mean, std, n, and against the baseline the
    difference with its interval, p-value, Holm-adjusted p-value, significance and MDE (raw units)."""
    keys = list(spec.rows) + list(spec.columns)
    for k in keys + list(spec.metrics):
        if k not in df.columns:
            df = df.assign(**{k: np.nan})
    _check_pairing(df, spec)
    groups = _groups(df, keys, spec.sort)
    records = []
    for gkey, g in groups.items():
        bkey = _baseline_of(gkey, groups, keys, spec)
        base = groups[bkey] if bkey not in (None, gkey) else None
        records += [{**dict(zip(keys, gkey)), "metric": m, **_cell(g, base, m, spec), "is_baseline": bkey == gkey}
                    for m in spec.metrics]
    return _holm(pd.DataFrame(records)).astype({"n_base": "Int64", "n_pairs": "Int64"})


STALE_MARK = "§"   # a cell with a run of code that changed since (kept with KEEP_STALE=1)


def current_runs(runs: pd.DataFrame, keep_stale: bool | None = None) -> tuple[pd.DataFrame, int, list[str]]:
    """The runs made by the current code: each run's recorded `code_version` equals the version the current code
    gives its config (experiments.store.versions); a run of changed code is stale. Stale runs are left out, or,
    with `keep_stale` (default: the frame's `attrs["keep_stale"]`, set by `make reproduce-table KEEP_STALE=1`),
    kept with a True `stale` column. Returns (runs, number left out, the code versions of the stale runs kept).
    Runs without a record to read (no `path`) are taken as they come."""
    if runs.empty or "path" not in runs:
        return runs, 0, []
    keep_stale = bool(runs.attrs.get("keep_stale", False)) if keep_stale is None else keep_stale
    made = _provenance(runs)
    now = {deps: code_versions.CURRENT.of_deps(deps).version for deps in made["deps"].dropna().unique()}
    stale = made["code_version"].isna() | (made["code_version"] != made["deps"].map(now))
    if keep_stale:
        return runs.assign(stale=stale), 0, sorted(set(made.loc[stale, "code_version"].fillna("none")))
    return runs[~stale], int(stale.sum()), []


def code_versions_of(runs: pd.DataFrame) -> dict[str, int]:
    """Each code version among `runs` (read from their records) and how many of them it made."""
    return {version: entry["runs"] for version, entry in version_deps(runs).items()}


def version_deps(runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Each code version among `runs`, its number of runs and the deps it was computed from (targets and metric
    sets, experiments.store.versions.Deps): what `<table>.versions.json` records, so that
    tests/test_committed_results.py can recompute every version a committed table was made by."""
    if runs.empty or "path" not in runs:
        return {}
    made = _provenance(runs)
    out = {}
    for version, group in made.groupby(made["code_version"].fillna("none"), sort=True):
        deps = sorted(set(group["deps"].dropna()), key=lambda d: (d.targets, d.metric_sets))
        out[str(version)] = {"runs": len(group), "deps": [d.as_list() for d in deps]}
    return out


@functools.lru_cache(maxsize=None)
def _record_provenance(path: str, mtime_ns: int) -> tuple[str | None, float, code_versions.Deps | None]:
    rec = read_record(Path(path)) or {}
    history = rec.get("history")
    deps = code_versions.deps_of(rec["config"]) if isinstance(rec.get("config"), dict) else None
    return rec.get("code_version"), float(len(history)) if isinstance(history, list) else np.nan, deps


def _provenance(runs: pd.DataFrame) -> pd.DataFrame:
    """`code_version`, the number of `history` epochs and the version deps of each run, read from the run JSONs
    (cached per file version)."""
    columns = ["code_version", "epochs_run", "deps"]
    if "path" not in runs:
        return pd.DataFrame({"code_version": None, "epochs_run": np.nan, "deps": None}, index=runs.index)
    rows = [_record_provenance(p, Path(p).stat().st_mtime_ns) if Path(p).exists() else (None, np.nan, None)
            for p in runs["path"]]
    return pd.DataFrame(rows, columns=columns, index=runs.index)


def last_epoch_share(done: pd.DataFrame) -> tuple[int, int]:
    """(k, n): of n completed runs that select on a validation metric, k selected the last epoch of their
    budget (`trainer.epochs`, or the length of `history` where the config does not say). Runs selecting
    `last` (fixed-schedule protocols) always do and are not counted."""
    if done.empty or "selected_epoch" not in done:
        return 0, 0
    if "trainer.select_metric" in done:
        done = done[done["trainer.select_metric"] != "last"]
    selected = pd.to_numeric(done["selected_epoch"], errors="coerce")
    if "trainer.epochs" in done:
        last = pd.to_numeric(done["trainer.epochs"], errors="coerce")
    else:
        last = _provenance(done)["epochs_run"]
    return int((selected == last).sum()), int(selected.notna().sum())


def _unit(spec: TableSpec, meaning: Measure) -> str:
    if meaning.unit == "fraction":
        return "pp" if spec.percent else ""
    return meaning.suffix


REFUSED = "n/a — "  # a cell value that carries a refusal reason (rank frames, csv); tables show a numbered mark
_DIGITS, _SUPERSCRIPTS = "0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"


def refusal_reason(error: Any) -> str:
    """The reason a pair could not run, as one line: without `error: ` and without the config group that refused
    (`loss: CORN needs…` → `CORN needs…`), since the row or column already names it."""
    lines = str(error or "refused").strip().splitlines() or ["refused"]
    text = lines[0].removeprefix("error: ")
    return re.sub(r"^[\w.]+: ", "", text).replace("|", "/")


class RefusalNotes:
    """Each distinct refusal reason once, numbered in the order cells ask for it: a cell shows `n/a¹` and the
    reason goes under the table, so a reason repeated over many cells does not widen the table."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    @staticmethod
    def label(number: int) -> str:
        return "n/a" + str(number).translate(str.maketrans(_DIGITS, _SUPERSCRIPTS))

    def mark(self, error: Any) -> str:
        return self.label(self.numbers.setdefault(refusal_reason(error), len(self.numbers) + 1))

    def lines(self) -> list[str]:
        return [f"{self.label(n)}: {reason}" for reason, n in self.numbers.items()]


def tex_marks(text: str) -> str:
    """Superscript digits as `\\textsuperscript{…}` (plain LaTeX has no glyphs for most of them)."""
    plain = str.maketrans(_SUPERSCRIPTS, _DIGITS)
    return re.sub(f"[{_SUPERSCRIPTS}]+", lambda m: rf"\textsuperscript{{{m.group().translate(plain)}}}", text)


def _fmt_diff(r: pd.Series, scale: float, d: int) -> str:
    if pd.isna(r["diff"]):
        return ""

    def num(x: float) -> str:
        return f"{x * scale:+.{d}f}"

    out = f" Δ {num(r['diff'])}"
    if not pd.isna(r["ci_low"]):
        out += f" [{num(r['ci_low'])}, {num(r['ci_high'])}]"
    if not pd.isna(r["boot_low"]):
        out += f" b[{num(r['boot_low'])}, {num(r['boot_high'])}]"
    if r["test"] == "paired" and r["n_pairs"] != r["n"]:
        out += f" ({int(r['n_pairs'])} pairs)"
    return out


def _fmt(r: pd.Series, meaning: Measure | None, spec: TableSpec, with_paper: bool, notes: RefusalNotes) -> str:
    """`mean ± std (n) Δ +diff [low, high]†` in the metric's display unit; `n/a¹` (reason in `notes`) when refused."""
    if r["n"] == 0 and isinstance(r.get("refused"), str):
        return notes.mark(r["refused"])
    if r["n"] == 0 or pd.isna(r["mean"]) or meaning is None:
        return "–"
    scale, d = _scale(spec, meaning), spec.digits
    text = f"{r['mean'] * scale:.{d}f} ± {r['std'] * scale:.{d}f} ({r['n']})" + _fmt_diff(r, scale, d)
    text += MARK if r["significant"] else ""
    text += STALE_MARK if r.get("n_stale", 0) > 0 else ""
    mark = f" {r['paper_verdict']}" if r.get("paper_verdict") else ""
    return text + (f" [paper {r['paper_value']}{mark}]" if with_paper and r["paper_value"] else "")


def _paper_values(path: Path, keys: list[str]) -> dict[tuple, str]:
    if not path.exists():
        return {}
    ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = {}
    for _, r in ref.iterrows():
        if r.get("paper_value", "") != "":
            out[tuple(str(r[k]) for k in keys) + (r["metric"],)] = r["paper_value"]
    return out


def write_paper_template(path: Path, long: pd.DataFrame, keys: list[str]) -> None:
    """The layout a user fills with the paper's numbers (values left empty; never invented)."""
    if path.exists() or long.empty:
        return
    tmpl = long[keys + ["metric"]].astype(str).drop_duplicates().assign(paper_value="")
    tmpl = tmpl.replace({"nan": "—"})
    atomic_write(path, tmpl.to_csv(index=False).encode())


def _with_refused(long: pd.DataFrame, refused: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Cells that only refused runs fill (a loss × dataset pair that cannot run) as rows with n = 0 and the
    reason; tables with a `transform` only count them (their keys exist after the transform only)."""
    keys = list(spec.rows) + list(spec.columns)
    if refused.empty or spec.transform or any(k not in refused for k in keys):
        return long
    have = {tuple(str(v) for v in _key(r)) for r in (long[keys].itertuples(index=False) if len(long) else [])}
    records = []
    for gkey, g in _groups(refused, keys, spec.sort).items():
        if tuple(str(v) for v in gkey) in have:
            continue
        reason = g["error"].dropna().iloc[0] if "error" in g and g["error"].notna().any() else "refused"
        records += [{**dict(zip(keys, gkey)), "metric": m, "mean": np.nan, "std": np.nan, "n": 0, **NO_COMPARISON,
                     "is_baseline": False, "refused": str(reason)} for m in spec.metrics]
    if not records:
        return long
    extra = pd.DataFrame(records)
    long = pd.concat([long, extra.dropna(axis=1, how="all")], ignore_index=True) if len(long) else extra
    return long.sort_values(keys, key=lambda c: c.map(_sort_key), kind="stable") if spec.sort and keys else long


def _sort_key(value) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _select(df: pd.DataFrame, spec: TableSpec) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """This table's runs of one code version: (completed, refused, counts for the footer)."""
    runs = df[df["experiment_name"] == spec.experiment] if "experiment_name" in df else df
    runs, stale, kept = current_runs(runs)
    if stale:
        print(f"warning: table {spec.stem}: {stale} stale run(s) of changed code left out (KEEP_STALE=1 keeps "
              f"them, marked {STALE_MARK})", file=sys.stderr)
    status = runs["status"] if len(runs) else pd.Series(dtype=object)
    done, refused = runs[status == "completed"], runs[status == "refused"]
    made = version_deps(done)
    counts = {"runs": len(done), "failed": int((status == "failed").sum()), "refused": len(refused),
              "stale": stale, "stale_kept": kept, "versions": {v: e["runs"] for v, e in made.items()},
              "version_deps": made, "last": last_epoch_share(done)}
    return done, refused, counts


def cells(df: pd.DataFrame, spec: TableSpec) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table's long form (`summarize` of its current completed runs after its `transform`, plus refused
    cells) and the counts for its footer, including the numerics environments of its runs. What `render` writes
    to `<table>.csv` and what `make verify` compares."""
    import hydra.utils

    done, refused, counts = _select(df, spec)
    counts["measures"] = done.attrs["measures"] = measures_of(done)  # this table's own runs declare its units
    counts["environments"] = (done["environment"].fillna("unrecorded").value_counts().to_dict()
                              if "environment" in done else {"unrecorded": len(done)} if len(done) else {})
    if spec.transform and len(done):
        done = hydra.utils.get_method(spec.transform)(done, spec)
    return _with_refused(summarize(done, spec) if len(done) else pd.DataFrame(), refused, spec), counts


def _paper_marks(long: pd.DataFrame, path: Path, spec: TableSpec, declared: dict) -> dict[tuple, str]:
    """The `make verify` mark (✓ ✗ ?) of each cell with a paper value, keyed by the cell's canonical keys and
    metric; none, with one warning, when the file does not parse (`make verify REFERENCE=paper` names the line)."""
    keys = list(spec.rows) + list(spec.columns)
    measured = long[long["n"] > 0] if len(long) else long
    if measured.empty:
        return {}
    try:
        measures = {m: measure(declared, m) for m in spec.metrics}
        scales = {m: _scale(spec, meaning) for m, meaning in measures.items()}
        ref = verify.paper_reference(verify.read_reference(path), keys, scales, str(path))
        overrides = verify.check_overrides(spec.verify.get("margins"), spec.metrics, spec.stem)
        judged, _ = verify.compare_table(measured, ref, keys, measures, overrides, str(path))
    except UserError as e:
        print(f"warning: paper verdicts of table {spec.stem} left out: {e}", file=sys.stderr)
        return {}
    return {tuple(r[k] for k in keys + ["metric"]): verify.MARKS[r["verdict"]] for _, r in judged.iterrows()}


def render(df: pd.DataFrame, spec: TableSpec, out_dir: Path, paper_dir: Path | None = None) -> dict[str, Any]:
    """Write md/tex/csv for one spec; returns counts for the summary."""
    import hydra.utils

    if spec.renderer:
        return hydra.utils.get_method(spec.renderer)(df, spec, out_dir, paper_dir)
    long, counts = cells(df, spec)
    keys = list(spec.rows) + list(spec.columns)
    paper, marks = {}, {}
    if paper_dir is not None and "paper" in spec.profiles:
        ppath = Path(paper_dir) / f"{spec.stem}.csv"
        write_paper_template(ppath, long, keys)
        paper = _paper_values(ppath, keys)
        marks = _paper_marks(long, ppath, spec, counts["measures"]) if paper else {}

    out_dir = Path(out_dir)
    if not long.empty:
        cell_keys = [tuple(str(r[k]) for k in keys) + (r["metric"],) for _, r in long.iterrows()]
        long = long.assign(paper_value=[paper.get(c, "") for c in cell_keys],
                           paper_verdict=[marks.get(tuple(map(canonical, c)), "") for c in cell_keys])
    atomic_write(out_dir / f"{spec.stem}.csv", (long.to_csv(index=False) if not long.empty else "").encode())
    atomic_write(out_dir / f"{spec.stem}.versions.json", json.dumps(counts["version_deps"], indent=1).encode())
    measured = not long.empty and bool((long["n"] > 0).any())
    measures = {m: measure(counts["measures"], m) for m in spec.metrics} if measured else {}
    notes = RefusalNotes()
    md, tex = _grid(long, spec, bool(paper), measures, notes)
    footer = _footer(long, spec, measures, {**counts, **converge_facts(df, spec, out_dir)})
    if spec.footer:
        footer += list(hydra.utils.get_method(spec.footer)(spec))
    atomic_write(out_dir / f"{spec.stem}.md", _markdown(md, spec, footer, notes.lines()).encode())
    atomic_write(out_dir / f"{spec.stem}.tex", _latex(tex, spec, notes.lines()).encode())
    return {"table": str(out_dir / f"{spec.stem}.md"), **{k: counts[k] for k in ("runs", "failed", "refused", "stale")}}


def _grid(long: pd.DataFrame, spec: TableSpec, with_paper: bool, measures: dict[str, Measure],
          notes: RefusalNotes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide table of formatted cells: index = row keys, columns = (column keys…, metric); refusal reasons are
    numbered into `notes` in display order."""
    if long.empty:
        return pd.DataFrame(), pd.DataFrame()
    long = long.copy()
    metric_part = [] if spec.combine_metrics else ["metric"]
    long["col"] = [" · ".join([str(r[c]) for c in spec.columns] + [r[m] for m in metric_part]) or "value"
                   for _, r in long.iterrows()]
    long["row"] = [" · ".join(str(r[k]) for k in spec.rows) or "all" for _, r in long.iterrows()]
    # best per table column (or per row) and metric, by mean; direction as the metric declares it
    long["bold"] = False
    axis = "col" if spec.best == "column" else "row"
    for (metric, _), g in long.groupby(["metric", axis]):
        g = g[~g["mean"].isna()]
        meaning = measures.get(metric)
        if len(g) > 1 and meaning and meaning.higher_is_better is not None and (spec.bold_metrics is None
                                                                                or metric in spec.bold_metrics):
            shown = (g["mean"] * _scale(spec, meaning)).round(spec.digits)
            best = shown.max() if meaning.higher_is_better else shown.min()  # ties as displayed are all bold
            long.loc[g.index[shown == best], "bold"] = True
    for key, values in reversed(list(spec.order.items())):  # stable sorts: the first key ends up primary
        rank = {str(v): i for i, v in enumerate(values)}
        long = long.sort_values(key, key=lambda col: col.astype(str).map(lambda v: rank.get(v, len(rank))),
                                kind="stable")
    long["cell"] = [_fmt(r, measures.get(r["metric"]), spec, with_paper, notes) for _, r in long.iterrows()]
    rows = list(dict.fromkeys(long["row"]))
    cols = list(dict.fromkeys(long["col"]))
    md = pd.DataFrame("–", index=rows, columns=cols)
    tex = md.copy()
    for (row, col), g in long.groupby(["row", "col"], sort=False):
        if (g["n"] == 0).all() and g["cell"].nunique() == 1 and g["cell"].iloc[0].startswith("n/a"):
            g = g.iloc[:1]
        md.loc[row, col] = " / ".join(f"**{r['cell']}**" if r["bold"] else r["cell"] for _, r in g.iterrows())
        tex_parts = [tex_marks(r["cell"].replace("±", r"$\pm$").replace(MARK, r"$^\dagger$").replace("Δ", r"$\Delta$"))
                     for _, r in g.iterrows()]
        tex.loc[row, col] = " / ".join(rf"\textbf{{{c}}}" if b else c for c, b in zip(tex_parts, g["bold"]))
    return md, tex


def _legend(spec: TableSpec) -> str:
    base = ", ".join(f"{k}={v}" for k, v in spec.baseline.items()) or "none"
    scale = " Rates in %." if spec.percent else ""
    if spec.test == "paired":
        on = ", ".join(spec.pair_on)
        how = (f"mean of the per-{on} differences to the baseline ({base}), runs paired on {on}, with its 95 % "
               f"paired-t interval [low, high]; b[…]: 95 % percentile bootstrap interval over the pairs "
               f"({stats.N_BOOT:,} resamples), shown from {stats.MIN_BOOT} pairs on; (k pairs): fewer pairs than runs")
    else:
        how = f"difference of means to the baseline ({base}), unpaired, with its 95 % Welch-t interval [low, high]"
    return (f"Cells: mean ± sample std over seeds (n runs).{scale} Δ: {how}; in the cell's unit (percentage "
            f"points for rates). {MARK}: significant after Holm–Bonferroni correction at α = {ALPHA}, one family "
            f"per metric (all non-baseline cells of that metric in this table). Bold: best per {spec.best}, in "
            f"the direction the metric declares. The .csv has every p-value (raw and Holm), interval and MDE.")


def _mde_line(long: pd.DataFrame, spec: TableSpec, measures: dict[str, Measure]) -> str:
    cells = long[~long["is_baseline"].astype(bool) & long["mde"].notna()] if "mde" in long else long.iloc[:0]
    if cells.empty:
        return ""
    size, unit_n = ("n_pairs", "pairs") if spec.test == "paired" else ("n", "runs")
    parts = []
    for metric, g in cells.groupby("metric", sort=False):
        meaning, d = measures[metric], spec.digits
        v = g["mde"] * _scale(spec, meaning)
        lo, hi = int(g[size].min()), int(g[size].max())
        parts.append(f"{metric} {v.median():.{d}f} {_unit(spec, meaning)} (range {v.min():.{d}f}–{v.max():.{d}f}; "
                     f"{lo if lo == hi else f'{lo}–{hi}'} {unit_n})".replace("  ", " "))
    test = {"paired": "paired t-test", "welch": "Welch t-test"}[spec.test]
    return (f"Minimum detectable effect ({test}, α = {ALPHA}, 80 % power; median over the non-baseline "
            f"cells): " + "; ".join(parts) + ". With these n and this spread, the smallest true difference the "
            f"test finds 80 % of the time: a cell without {MARK} is evidence against a difference of about this "
            f"size or larger (before Holm correction), and says nothing about smaller ones.")


def converge_facts(df: pd.DataFrame, spec: TableSpec, out_dir: Path) -> dict[str, Any]:
    """The training length of this table's runs (`budget`, trainer.epochs, trainer.min_steps as run) and the
    table's entry of the last `make converge-check` (`<results>/converge/summary.json`, beside `out_dir`)."""
    runs = df[df["experiment_name"] == spec.experiment] if "experiment_name" in df else df
    length = {key: sorted({canonical(v) for v in runs[key].dropna()}) for key in LENGTH_KEYS if key in runs}
    entry = converge.read_summary(Path(out_dir).parent / "converge" / converge.SUMMARY).get(spec.stem)
    return {"length": length, "converge": entry}


def _converged_line(spec: TableSpec, counts: dict[str, Any]) -> str:
    """What "converged" means for this table: its budget and what twice the budget changed, when checked."""
    length = ", ".join(f"{k} {'/'.join(v)}" for k, v in counts.get("length", {}).items() if v) or "as configured"
    entry = counts.get("converge")
    screening = (" A screening table: one short budget for every method, not a converged comparison."
                 if spec.role == "screening" else "")
    if not entry or "conclusions" not in entry:
        return (f"Training length: {length}.{screening} Convergence not checked: `make converge-check "
                f"EXP={spec.experiment}` trains at twice the budget and compares every cell.")
    where = (f"`make converge-check` on {entry['date']}, {entry['machine']}, code versions "
             f"{', '.join(entry.get('code_versions', [])) or 'unknown'}")
    state = entry.get("verdict") or (converge.CONVERGED if entry["passed"] else converge.NOT_CONVERGED)
    if state.startswith("not checked"):
        text = (f"Convergence {state}: training length {length}; compared at {entry['factor']:g}× budget "
                f"{entry['budget']:g}, but no cell has a minimum detectable effect, so nothing could move beyond it: "
                f"{where}")
    else:
        text = (f"{'Converged' if state == converge.CONVERGED else 'NOT converged'}: training length {length}; "
                f"at {entry['factor']:g}× budget {entry['budget']:g} {entry['n_changed']} of {entry['conclusions']} "
                f"conclusions (sign or {MARK} of a Δ, with Δ moving by more than its MDE) changed "
                f"({entry.get('n_borderline', 0)} borderline {MARK} flips within the MDE) and {entry['n_beyond_mde']} "
                f"of {entry['cells']} cell means moved by more than their MDE (|shift| / MDE median "
                f"{entry['shift_over_mde_median']}, max {entry['shift_over_mde_max']}): {where}")
    if counts.get("runs") and set(entry.get("code_versions", [])) != set(counts.get("versions", {})):
        text += f" (these runs: {', '.join(sorted(counts.get('versions', {})))}; check again)"
    return text + f"; details in ../converge/{spec.stem}.md.{screening}"


def version_lines(versions: dict[str, int], stale_kept: list[str]) -> list[str]:
    """The code versions of a table's runs (each run's own, experiments.store.versions; what
    tests/test_committed_results.py checks), and the stale ones kept, named under the legend of their mark."""
    lines = []
    if stale_kept:
        lines.append(f"{STALE_MARK}: the cell has runs of code changed since they ran, kept by KEEP_STALE=1 instead "
                     f"of re-run; their code versions: {', '.join(stale_kept)} (`make status` names the changed "
                     f"files).")
    if versions:
        shown = ", ".join(f"{v} ({n} runs)" for v, n in versions.items())
        lines.append(f"Code versions of these runs (per run, experiments.store.versions): {shown}.")
    return lines


def _footer(long: pd.DataFrame, spec: TableSpec, measures: dict[str, Measure], counts: dict[str, Any]) -> list[str]:
    k, n = counts["last"]
    lines = [f"Completed runs: {counts['runs']}. Failed runs excluded: {counts['failed']}. "
             f"Refused: {counts['refused']}. Stale runs left out (another code version): {counts['stale']}."]
    lines += version_lines(counts["versions"], counts["stale_kept"])
    if counts.get("environments"):
        lines.append(verify.environment_line(counts["environments"]))
    lines.append(_converged_line(spec, counts))
    lines.append(f"Selected at the last epoch: {k} of {n} runs selecting on a validation metric (a diagnostic, not "
                 f"evidence of convergence: see the line above).")
    mde = _mde_line(long, spec, measures) if measures else ""
    return lines + ([mde] if mde else [])


def _markdown(grid: pd.DataFrame, spec: TableSpec, footer: list[str], notes: list[str] = ()) -> str:
    lines = [f"# {spec.title or spec.stem}", ""]
    if spec.combine_metrics:
        lines += ["Each cell: " + " / ".join(spec.metrics) + ".", ""]
    if grid.empty:
        lines.append("No completed runs yet.")
    else:
        header = " · ".join(spec.rows) or "runs"
        lines.append("| " + header + " | " + " | ".join(grid.columns) + " |")
        lines.append("|" + "---|" * (len(grid.columns) + 1))
        for idx, row in grid.iterrows():
            lines.append(f"| {idx} | " + " | ".join(row.tolist()) + " |")
        lines += [""] + [f"- {note}" for note in notes] if notes else []
    lines += ["", _legend(spec), ""] + footer
    if spec.notes:
        lines += ["", spec.notes.strip()]
    return "\n".join(lines) + "\n"


def _latex(grid: pd.DataFrame, spec: TableSpec, notes: list[str] = ()) -> str:
    if grid.empty:
        return "% no completed runs\n"

    def esc(s: str) -> str:
        return str(s).replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")

    cols = "l" + "c" * len(grid.columns)
    out = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(spec.title or spec.stem)}}}",
           rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
           " & ".join([esc(" · ".join(spec.rows) or "runs")] + [esc(c) for c in grid.columns]) + r" \\",
           r"\midrule"]
    for idx, row in grid.iterrows():
        out.append(" & ".join([esc(idx)] + [c.replace("_", r"\_") for c in row.tolist()]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [r"\par\footnotesize " + " ".join(tex_marks(esc(note)) + r"\\" for note in notes)] if notes else []
    out += [r"\end{table}"]
    return "\n".join(out) + "\n"
