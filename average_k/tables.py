"""Average-K tables: rows K, columns methods, from the runs of one experiment.

A run covers K when its loss does not depend on K (no `loss.k` option: CE thresholding, AN, …; one run serves
every K in `avgk.eval_ks`) or when `loss.k == K` (two-head, EPR, ROLE). Cells: micro / macro average-K accuracy
(mean ± std over seeds, n) and the mean test set size; a second table breaks macro accuracy down by
class-frequency bin (few / medium / many training images). The two-head model's head A is its own column.

`python -m average_k.tables --results results --experiment avgk` writes results/tables/avgk{,_fewshot}.{md,csv,tex}.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from average_k.metrics import k_label

METHOD_NAMES = {"ce": "ce_threshold"}
BINS = ("few", "medium", "many")


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def long_table(runs: pd.DataFrame, ks: Sequence[float]) -> pd.DataFrame:
    """One row per (run, K, head) with micro, macro, size and per-bin macro accuracy."""
    rows = []
    done = runs[runs["status"] == "completed"] if "status" in runs else runs
    for _, r in done.iterrows():
        method = METHOD_NAMES.get(r.get("loss"), r.get("loss"))
        loss_k = _num(r.get("loss.k"))
        for k in ks:
            if not math.isnan(loss_k) and abs(loss_k - float(k)) > 1e-9:
                continue
            lab = k_label(k)
            for suffix, name in (("", method), ("_a", f"{method} (head A)")):
                micro = r.get(f"test/avgk_acc{suffix}@{lab}")
                if micro is None or (isinstance(micro, float) and math.isnan(micro)):
                    continue
                row = {"dataset": r.get("dataset"), "K": float(k), "method": name, "seed": r.get("seed"), "micro": micro,
                       "macro": r.get(f"test/avgk_macro_acc{suffix}@{lab}"), "size": r.get(f"test/avgk_size{suffix}@{lab}")}
                for b in BINS:
                    row[b] = r.get(f"test/avgk_{b}_acc@{lab}") if not suffix else math.nan
                rows.append(row)
    return pd.DataFrame(rows, columns=["dataset", "K", "method", "seed", "micro", "macro", "size", *BINS])


def _cell(values: pd.Series, pct: bool = True) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "–"
    scale = 100.0 if pct else 1.0
    sd = v.std(ddof=1) * scale if len(v) > 1 else 0.0
    return f"{v.mean() * scale:.1f} ± {sd:.1f} ({len(v)})"


def _order(methods: Sequence[str], preferred: Sequence[str]) -> list[str]:
    first = [m for p in preferred for m in methods if m == p or m == f"{p} (head A)"]
    return first + sorted(m for m in methods if m not in first)


def render_frames(long: pd.DataFrame, methods: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols = _order(list(dict.fromkeys(long["method"])), [METHOD_NAMES.get(m, m) for m in methods])
    main, fewshot = [], []
    several = long["dataset"].nunique() > 1
    for (ds, k), g in long.groupby(["dataset", "K"], sort=True):
        key = {"dataset": ds} if several else {}
        row = {**key, "K": k_label(k)}
        for m in cols:
            s = g[g["method"] == m]
            row[m] = "–" if s.empty else (f"{_cell(s['micro'])} / {_cell(s['macro'])}; "
                                          f"size {pd.to_numeric(s['size']).mean():.2f}")
        main.append(row)
        for b in BINS:
            row = {**key, "K": k_label(k), "classes": b}
            for m in cols:
                s = g[g["method"] == m]
                row[m] = _cell(s[b]) if not s.empty and s[b].notna().any() else "–"
            fewshot.append(row)
    return pd.DataFrame(main), pd.DataFrame(fewshot)


def _markdown(df: pd.DataFrame, title: str) -> str:
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in df.itertuples(index=False))
    return f"## {title}\n\n{head}{body}"


def _latex(df: pd.DataFrame, title: str) -> str:
    esc = lambda s: str(s).replace("±", r"$\pm$").replace("_", r"\_")  # noqa: E731
    lines = [f"% {title}", r"\begin{tabular}{" + "l" * len(df.columns) + "}", r"\toprule",
             " & ".join(esc(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def write(runs: pd.DataFrame, out_dir: Path, name: str, ks: Sequence[float], methods: Sequence[str] = (),
          title: str = "Average-K accuracy") -> list[Path]:
    main, fewshot = render_frames(long_table(runs, ks), methods)
    out_dir.mkdir(parents=True, exist_ok=True)
    note = ("Cells: micro / macro test average-K accuracy in %, mean ± std over seeds (n); mean test set size. "
            "λ_K fitted on validation. K-independent methods (no loss.k) use one run for every K.")
    written = []
    for df, stem, t in ((main, name, title), (fewshot, f"{name}_fewshot",
                                             f"{title}: macro accuracy by class-frequency bin")):
        md, tex, csv = (out_dir / f"{stem}.{ext}" for ext in ("md", "tex", "csv"))
        md.write_text(_markdown(df, t) + "\n" + note + "\n")
        tex.write_text(_latex(df, t))
        df.to_csv(csv, index=False)
        written += [md, tex, csv]
    return written


def main(argv: Sequence[str] | None = None) -> None:
    from experiments.results import load_runs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results")
    p.add_argument("--experiment", default="avgk")
    p.add_argument("--out", default=None)
    p.add_argument("--ks", default="1,2,3,5")
    p.add_argument("--methods", default="ce,two_head,an,epr,role")
    a = p.parse_args(argv)
    runs = load_runs(a.results, a.experiment)
    out = Path(a.out) if a.out else Path(a.results) / "tables"
    for path in write(runs, out, a.experiment, [float(k) for k in a.ks.split(",")], a.methods.split(",")):
        print(path)


if __name__ == "__main__":
    main()
