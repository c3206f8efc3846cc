"""Average-K tables: the run table reshaped so that K is a row key and the method a column key.

A run covers K when its loss does not depend on K (no `loss.k` option: CE thresholding, AN, …; one run serves
every K in `avgk.eval_ks`) or when `loss.k == K` (two-head, EPR, ROLE). `by_k` is the `transform` of the
avgk table specs; the generic renderer (experiments.report.tables) then does mean ± std (n), bold and significance.
The two-head model's head A is its own method column.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from average_k.metrics import k_label
from experiments.report.matrix import only

METHOD_NAMES = {"ce": "ce_threshold"}
VARIANTS = {"loss.pl_budget": {"within": "_within"},   # loss options whose non-default value is its own method
            "loss.table_update": {"rows": "_rows"}}
BINS = ("few", "medium", "many")


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def by_k(runs: pd.DataFrame, spec) -> pd.DataFrame:
    """Table transform: K from the spec's `options.ks`, the methods `options.methods` lists (all when it lists
    none) in its order, runs restricted to `options.where` (e.g. one dataset)."""
    ks = [float(k) for k in spec.options.get("ks", [1, 2, 3, 5])]
    long = long_table(only(runs, spec), ks)
    order = [METHOD_NAMES.get(m, m) for m in spec.options.get("methods", [])]
    rank = {m: i for i, m in enumerate(order)}
    base = long["method"].str.replace(" (head A)", "", regex=False)
    if rank:
        long, base = long[base.isin(rank)], base[base.isin(rank)]
    key = long["method"].map(lambda m: (rank.get(m.replace(" (head A)", ""), len(rank)), m))
    return long.iloc[sorted(range(len(long)), key=lambda i: (long["K"].iloc[i], key.iloc[i]))]


def long_table(runs: pd.DataFrame, ks: Sequence[float]) -> pd.DataFrame:
    """One row per (run, K, head) with micro, macro, size and per-bin macro accuracy."""
    rows = []
    for _, r in runs.iterrows():
        method = METHOD_NAMES.get(r.get("loss"), r.get("loss"))
        method += "".join(names.get(r.get(option), "") for option, names in VARIANTS.items())
        loss_k = _num(r.get("loss.k"))
        for k in ks:
            if not math.isnan(loss_k) and abs(loss_k - float(k)) > 1e-9:
                continue
            lab = k_label(k)
            for suffix, name in (("", method), ("_a", f"{method} (head A)")):
                micro = r.get(f"test/avgk_acc{suffix}@{lab}")
                if micro is None or (isinstance(micro, float) and math.isnan(micro)):
                    continue
                row = {"dataset": r.get("dataset"), "K": k_label(k), "method": name, "seed": r.get("seed"),
                       "avgk_acc": micro, "avgk_macro_acc": r.get(f"test/avgk_macro_acc{suffix}@{lab}"),
                       "avgk_size": r.get(f"test/avgk_size{suffix}@{lab}"), "path": r.get("path")}
                for b in BINS:
                    row[f"avgk_{b}_acc"] = r.get(f"test/avgk_{b}_acc@{lab}") if not suffix else math.nan
                rows.append(row)
    return pd.DataFrame(rows, columns=["dataset", "K", "method", "seed", "avgk_acc", "avgk_macro_acc", "avgk_size",
                                       *[f"avgk_{b}_acc" for b in BINS], "path"])
