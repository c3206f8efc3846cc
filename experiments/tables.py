"""Tables from run JSONs: group over seeds → mean ± std (n), best in bold, Welch t-test against a baseline.

A table spec (the `tables.<name>` node of an experiment config) says which run columns make the rows and the
columns, which metrics fill the cells and which row/column is the baseline. Every number is recomputable
from `load_runs(results_dir)` alone. Outputs `results/tables/<experiment>[_<name>].{md,tex,csv}`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.data import atomic_write_bytes
from experiments.trainer import LOWER_IS_BETTER

ALPHA = 0.05
MARK = "†"


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

    @property
    def stem(self) -> str:
        return self.experiment if self.name == "main" else f"{self.experiment}_{self.name}"

    @classmethod
    def from_config(cls, experiment: str, name: str, node: dict) -> "TableSpec":
        known = set(cls.__dataclass_fields__)
        return cls(experiment=experiment, name=name, **{k: v for k, v in node.items() if k in known})


def higher_is_better(metric: str) -> bool:
    return not any(t in metric.split("/")[-1] for t in LOWER_IS_BETTER)


def _is_rate(metric: str) -> bool:
    leaf = metric.split("/")[-1]
    return "acc" in leaf or leaf.startswith("top")


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value; NaN when either side has fewer than 2 values or no variance at all."""
    from scipy import stats

    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return float("nan")
    with warnings.catch_warnings():  # near-identical samples: scipy warns, the p-value is still defined
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _key(values) -> tuple:
    return tuple("—" if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in values)


def summarize(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Long table: one row per (row key, column key, metric) with mean, std, n, p-value vs baseline."""
    keys = list(spec.rows) + list(spec.columns)
    for k in keys + list(spec.metrics):
        if k not in df.columns:
            df = df.assign(**{k: np.nan})
    records = []
    groups = {_key(k if isinstance(k, tuple) else (k,)): g
              for k, g in df.groupby(keys, dropna=False, sort=spec.sort)} if keys else {(): df}
    base_cols = [k for k in spec.baseline if k in keys]

    def baseline_of(gkey: tuple) -> tuple | None:
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

    for gkey, g in groups.items():
        bkey = baseline_of(gkey)
        for m in spec.metrics:
            vals = pd.to_numeric(g[m], errors="coerce").to_numpy(dtype=float)
            vals = vals[~np.isnan(vals)]
            p = float("nan")
            if bkey is not None and bkey != gkey:
                bvals = pd.to_numeric(groups[bkey][m], errors="coerce").to_numpy(dtype=float)
                p = welch_p(vals, bvals)
            rec = dict(zip(keys, gkey))
            rec.update(metric=m, mean=vals.mean() if len(vals) else np.nan,
                       std=vals.std(ddof=1) if len(vals) > 1 else (0.0 if len(vals) else np.nan),
                       n=len(vals), p_value=p, significant=bool(p < ALPHA) if not math.isnan(p) else False,
                       is_baseline=bkey == gkey)
            records.append(rec)
    return pd.DataFrame(records)


def _fmt(mean: float, std: float, n: int, metric: str, spec: TableSpec) -> str:
    if n == 0 or math.isnan(mean):
        return "–"
    scale = 100.0 if spec.percent and _is_rate(metric) else 1.0
    d = spec.digits
    return f"{mean * scale:.{d}f} ± {std * scale:.{d}f} ({n})"


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
    atomic_write_bytes(path, tmpl.to_csv(index=False).encode())


def render(df: pd.DataFrame, spec: TableSpec, out_dir: Path, paper_dir: Path | None = None) -> dict[str, Any]:
    """Write md/tex/csv for one spec; returns counts for the summary."""
    runs = df[df["experiment_name"] == spec.experiment] if "experiment_name" in df else df
    failed = int((runs["status"] == "failed").sum()) if len(runs) else 0
    done = runs[runs["status"] == "completed"] if len(runs) else runs
    n_done = len(done)
    if spec.transform and len(done):
        import hydra.utils

        done = hydra.utils.get_method(spec.transform)(done, spec)
    long = summarize(done, spec) if len(done) else pd.DataFrame()
    keys = list(spec.rows) + list(spec.columns)
    paper = {}
    if paper_dir is not None and "paper" in spec.profiles:
        ppath = Path(paper_dir) / f"{spec.stem}.csv"
        write_paper_template(ppath, long, keys)
        paper = _paper_values(ppath, keys)

    out_dir = Path(out_dir)
    if not long.empty:
        long = long.assign(paper_value=[paper.get(tuple(str(r[k]) for k in keys) + (r["metric"],), "")
                                        for _, r in long.iterrows()])
    atomic_write_bytes(out_dir / f"{spec.stem}.csv", (long.to_csv(index=False) if not long.empty else "").encode())
    md, tex = _grid(long, spec, bool(paper))
    atomic_write_bytes(out_dir / f"{spec.stem}.md", _markdown(md, spec, n_done, failed).encode())
    atomic_write_bytes(out_dir / f"{spec.stem}.tex", _latex(tex, spec).encode())
    return {"table": str(out_dir / f"{spec.stem}.md"), "runs": n_done, "failed": failed}


def _grid(long: pd.DataFrame, spec: TableSpec, with_paper: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide table of formatted cells: index = row keys, columns = (column keys…, metric)."""
    if long.empty:
        return pd.DataFrame(), pd.DataFrame()
    long = long.copy()
    metric_part = [] if spec.combine_metrics else ["metric"]
    long["col"] = [" · ".join([str(r[c]) for c in spec.columns] + [r[m] for m in metric_part]) or "value"
                   for _, r in long.iterrows()]
    long["row"] = [" · ".join(str(r[k]) for k in spec.rows) or "all" for _, r in long.iterrows()]
    long["cell"] = [_fmt(r["mean"], r["std"], r["n"], r["metric"], spec) + (MARK if r["significant"] else "")
                    + (f" [paper {r['paper_value']}]" if with_paper and r["paper_value"] else "")
                    for _, r in long.iterrows()]
    # best per table column (or per row) and metric, by mean; direction from the metric name
    long["bold"] = False
    axis = "col" if spec.best == "column" else "row"
    for (metric, _), g in long.groupby(["metric", axis]):
        g = g[~g["mean"].isna()]
        if len(g) > 1 and (spec.bold_metrics is None or metric in spec.bold_metrics):
            shown = (g["mean"] * (100.0 if spec.percent and _is_rate(metric) else 1.0)).round(spec.digits)
            best = shown.max() if higher_is_better(metric) else shown.min()  # ties as displayed are all bold
            long.loc[g.index[shown == best], "bold"] = True
    for key, values in reversed(list(spec.order.items())):  # stable sorts: the first key ends up primary
        rank = {str(v): i for i, v in enumerate(values)}
        long = long.sort_values(key, key=lambda col: col.astype(str).map(lambda v: rank.get(v, len(rank))),
                                kind="stable")
    rows = list(dict.fromkeys(long["row"]))
    cols = list(dict.fromkeys(long["col"]))
    md = pd.DataFrame("–", index=rows, columns=cols)
    tex = md.copy()
    for (row, col), g in long.groupby(["row", "col"], sort=False):
        md.loc[row, col] = " / ".join(f"**{r['cell']}**" if r["bold"] else r["cell"] for _, r in g.iterrows())
        tex_parts = [r["cell"].replace("±", r"$\pm$").replace(MARK, r"$^\dagger$") for _, r in g.iterrows()]
        tex.loc[row, col] = " / ".join(rf"\textbf{{{c}}}" if b else c for c, b in zip(tex_parts, g["bold"]))
    return md, tex


def _legend(spec: TableSpec) -> str:
    base = ", ".join(f"{k}={v}" for k, v in spec.baseline.items()) or "none"
    scale = " Rates in %." if spec.percent else ""
    return (f"Cells: mean ± sample std over seeds (n runs).{scale} Bold: best per {spec.best}. "
            f"{MARK}: differs from the baseline ({base}) by a two-sided Welch t-test over seeds, p < {ALPHA}.")


def _markdown(grid: pd.DataFrame, spec: TableSpec, n_done: int, failed: int) -> str:
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
    lines += ["", _legend(spec), f"Completed runs: {n_done}. Failed runs excluded: {failed}."]
    if spec.notes:
        lines += ["", spec.notes.strip()]
    return "\n".join(lines) + "\n"


def _latex(grid: pd.DataFrame, spec: TableSpec) -> str:
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
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"
