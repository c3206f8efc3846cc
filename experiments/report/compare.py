"""Line up two long-form tables cell by cell: the shared step of `verify` (results vs a reference) and of any
other check that compares two renderings of one table (e.g. 1× vs 2× training budget).

A long form is what `experiments.report.tables.summarize` returns and what `results/tables/<table>.csv` holds:
one row per (cell keys…, metric) with `mean`, `std`, `n` and more. Cell keys are the table's row and column keys
(`dataset`, `loss.r`, …). Key values are compared as text in one canonical spelling, so `0.3` read from a CSV,
`0.3` from a run's config, `10` and `10.0`, and a missing key (`—`, NaN, None) all meet their twin.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from experiments.engine.errors import UserError

MISSING = "—"
BOTH, OURS_ONLY, REFERENCE_ONLY = "both", "ours_only", "reference_only"


def canonical(value: Any) -> str:
    """One spelling per key value: numbers as the shortest float text (`10` for 10 and 10.0), missing as `—`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    text = str(value).strip()
    if text in ("", "nan", "NaN", "None", MISSING):
        return MISSING
    if isinstance(value, bool) or text in ("True", "False"):
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return str(int(number)) if number.is_integer() and abs(number) < 2 ** 53 else repr(number)


def key_columns(long: pd.DataFrame) -> list[str]:
    """The cell keys of a long form written by `summarize`: the columns before `metric`."""
    if "metric" not in long.columns:
        raise UserError("long-form table has no `metric` column; pass a table's long form (tables.summarize or "
                        "results/tables/<table>.csv)")
    return list(long.columns[:list(long.columns).index("metric")])


def _indexed(long: pd.DataFrame, keys: list[str], name: str, label: str) -> pd.DataFrame:
    missing = [k for k in keys + ["metric"] if k not in long.columns]
    if missing:
        raise UserError(f"{label} has no column {', '.join(missing)}; its long form needs the cell keys "
                        f"{', '.join(keys) or '(none)'} and `metric`")
    frame = long.copy()
    frame[f"row_{name}"] = frame.index
    frame[f"_position_{name}"] = range(len(frame))
    for k in keys + ["metric"]:
        frame[k] = frame[k].map(canonical)
    twice = frame.duplicated(keys + ["metric"])
    if twice.any():
        first = frame[twice].iloc[0]
        cell = ", ".join(f"{k}={first[k]}" for k in keys + ["metric"])
        raise UserError(f"{label} row {int(first[f'row_{name}'])}: cell {cell} appears more than once; keep one row "
                        f"per cell and metric")
    rest = [c for c in frame.columns if c not in keys + ["metric"]]
    return frame.rename(columns={c: f"{c}_{name}" for c in rest if not c.startswith(("row_", "_position_"))})


def align(ours: pd.DataFrame, reference: pd.DataFrame, keys: Sequence[str] | None = None,
          labels: tuple[str, str] = ("ours", "reference")) -> pd.DataFrame:
    """Match two long forms on their cell keys and metric.

    Input: `ours` and `reference`, long forms with the columns `keys` (default: the columns of `ours` before
    `metric`, as `summarize` writes them), `metric`, and any value columns (`mean`, `std`, `n`, `diff`, …).
    Each (keys, metric) may appear once per side: a repeated cell or a missing key column is a UserError that
    names the side by `labels` (e.g. the reference file's path) and the repeated row by its index label.

    Output: one row per (keys, metric) found on either side, ours first in their order, then the reference's
    unmatched cells in theirs. Columns: the keys and `metric` in canonical text (`canonical`); every other column
    of `ours` suffixed `_ours` and of `reference` suffixed `_ref` (NaN where that side lacks the cell);
    `row_ours` / `row_ref`: the cell's index label in each input (NaN when absent; give a file's frame its line
    numbers as index to name them in messages); `match`: `both`, `ours_only` (a cell of ours the reference
    lacks) or `reference_only` (a reference cell that matches no cell of ours).
    """
    keys = key_columns(ours) if keys is None else list(keys)
    left, right = _indexed(ours, keys, "ours", labels[0]), _indexed(reference, keys, "ref", labels[1])
    merged = left.merge(right, on=keys + ["metric"], how="outer", sort=False, indicator="match")
    merged["match"] = merged["match"].map({"both": BOTH, "left_only": OURS_ONLY, "right_only": REFERENCE_ONLY})
    merged = merged.sort_values(["_position_ours", "_position_ref"], na_position="last", kind="stable")
    merged = merged.drop(columns=["_position_ours", "_position_ref"]).reset_index(drop=True)
    return merged.astype({"match": object})
