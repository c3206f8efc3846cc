"""Converged means: twice the training changes no conclusion. One table's long form at budget B against the same
table at FACTOR × B, cell by cell (`experiments.report.compare.align`).

A table's **conclusions** are its Δ cells (a non-baseline cell with a difference to the baseline): each reads
`+†` (significantly above the baseline after Holm), `−†` (significantly below) or `n.s.` (no detectable
difference). A conclusion **changes** when that reading differs between the two budgets (a sign flip with † on
either side, or a † gained or lost) *and* the Δ itself moved by more than the cell's MDE: the longer training
changed the effect by more than the seeds resolve. A reading that differs while Δ moved by less than the MDE is
**borderline**: a Δ near its MDE gains or loses † between any two replications (another set of seeds would do
the same), so it says nothing about the budget; it is listed, not counted. A sign flip of a Δ that is n.s. at
both budgets changes no reading and is listed as a note. Each cell's **mean shift** (FACTOR × B minus
B) is set against the cell's minimum detectable effect at B (`mde`; a baseline cell, which has none, takes the
median MDE of its metric's other cells). A cell found at one budget only is **unverified**. Pure DataFrame
functions; the CLI is `experiments.drivers.converge`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.report.compare import BOTH, align, key_columns

MARK = "†"
SIGNIFICANT_UP, SIGNIFICANT_DOWN, NOT_SIGNIFICANT = f"+{MARK}", f"−{MARK}", "n.s."
GATING_ROLE = "paper"     # TableSpec.role whose changed conclusions (or shifts beyond the MDE) fail the check


def _truthy(value: Any) -> bool:
    """A long form's `significant` / `is_baseline` read back from CSV (`True`/`False` text) or from pandas."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else False


def reading(diff: Any, significant: Any) -> str | None:
    """The conclusion a Δ cell states: `+†`, `−†` or `n.s.`; None without a Δ (baseline, refused, no pairs)."""
    d = pd.to_numeric(diff, errors="coerce")
    if pd.isna(d):
        return None
    if not _truthy(significant):
        return NOT_SIGNIFICANT
    return SIGNIFICANT_UP if d > 0 else SIGNIFICANT_DOWN if d < 0 else NOT_SIGNIFICANT


def _metric_mde(long: pd.DataFrame) -> dict[str, float]:
    """Per metric, the median MDE over the non-baseline cells (the yardstick of a baseline cell's shift)."""
    if "mde" not in long:
        return {}
    mde = pd.to_numeric(long["mde"], errors="coerce")
    cells = long.assign(_mde=mde)[~long.get("is_baseline", pd.Series(False, index=long.index)).map(_truthy)]
    return cells.groupby("metric")["_mde"].median().dropna().to_dict()


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(np.nan, index=frame.index)


def compare(base: pd.DataFrame, check: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """One row per (cell keys, metric) of either long form: `mean_base`, `mean_check`, `shift`, `mde` (at base),
    `shift_over_mde`, `diff_*`, `diff_shift` (Δ at the checked budget − Δ at the base), `p_holm_*`,
    `reading_base` / `reading_check`, and the flags `changed` (the reading of a Δ differs and |diff_shift| > mde,
    or mde is unknown), `borderline` (the reading differs, |diff_shift| ≤ mde), `sign_flip_ns` (a Δ n.s. at both
    budgets changed sign), `beyond_mde` (|shift| > mde) and `unverified` (the cell exists at one budget only)."""
    keys = key_columns(base) if keys is None else list(keys)
    baseline_mde = _metric_mde(base)
    both = align(base, check, keys, labels=("long form at the base budget", "long form at the checked budget"))
    out = both[keys + ["metric", "match"]].copy()
    out["is_baseline"] = both.get("is_baseline_ours", pd.Series(False, index=both.index)).map(_truthy)
    for side, suffix in (("base", "_ours"), ("check", "_ref")):
        for column in ("mean", "diff", "p_holm", "n"):
            out[f"{column}_{side}"] = _numbers(both, column + suffix)
        sig = both.get("significant" + suffix, pd.Series(False, index=both.index))
        out[f"reading_{side}"] = [reading(d, s) for d, s in zip(out[f"diff_{side}"], sig)]
    out["shift"] = out["mean_check"] - out["mean_base"]
    own_mde = _numbers(both, "mde_ours")
    out["mde"] = own_mde.where(own_mde.notna(), out["metric"].map(baseline_mde))
    out["shift_over_mde"] = out["shift"].abs() / out["mde"].where(out["mde"] > 0)
    readings = out["reading_base"].notna() | out["reading_check"].notna()
    out["diff_shift"] = out["diff_check"] - out["diff_base"]
    differs = readings & (out["reading_base"] != out["reading_check"])
    within = out["diff_shift"].abs() <= out["mde"]
    out["changed"] = differs & ~within
    out["borderline"] = differs & within
    out["sign_flip_ns"] = ((out["reading_base"] == NOT_SIGNIFICANT) & (out["reading_check"] == NOT_SIGNIFICANT)
                           & (np.sign(out["diff_base"]) * np.sign(out["diff_check"]) < 0))
    out["beyond_mde"] = out["shift_over_mde"] > 1.0
    measured = (out["n_base"].fillna(0) > 0) | (out["n_check"].fillna(0) > 0)
    out["unverified"] = (out["match"] != BOTH) & measured
    return out


def cell_label(row: pd.Series, keys: list[str]) -> str:
    return " · ".join(str(row[k]) for k in keys) + f" {row['metric']}"


def summarize(result: pd.DataFrame, keys: list[str]) -> dict[str, Any]:
    """Counts and the cells behind them: conclusions (Δ cells at the base budget), changed, borderline, n.s. sign
    flips, cells beyond their MDE, unverified cells, and the median and max of |shift| / MDE."""
    ratio = result["shift_over_mde"].dropna()
    pick = {name: [cell_label(r, keys) for _, r in result[result[name]].iterrows()]
            for name in ("changed", "borderline", "sign_flip_ns", "beyond_mde", "unverified")}
    runs = result["n_base"].max() if "n_base" in result and len(result) else float("nan")
    found = {"conclusions": int(result["reading_base"].notna().sum()), "cells": int(len(result)),
             **{f"n_{name}": len(cells) for name, cells in pick.items()}, **pick,
             "runs_per_cell": None if pd.isna(runs) else int(runs),
             "shift_over_mde_median": None if ratio.empty else round(float(ratio.median()), 3),
             "shift_over_mde_max": None if ratio.empty else round(float(ratio.max()), 3)}
    return {**found, "verdict": verdict(found)}


CONVERGED, NOT_CONVERGED = "converged", "not converged"
NOT_CHECKED_ONE_RUN, NOT_CHECKED_NO_MDE = "not checked (one run per cell)", "not checked (no cell has an MDE)"


def verdict(summary: dict[str, Any]) -> str:
    """`converged` / `not converged`, or `not checked (…)` when no cell has an MDE to move beyond: with one run
    per cell nothing can move "beyond its MDE", so the comparison cannot fail and must not read as a pass."""
    if summary["shift_over_mde_median"] is None and not summary["n_changed"]:
        return NOT_CHECKED_ONE_RUN if (summary.get("runs_per_cell") or 0) <= 1 else NOT_CHECKED_NO_MDE
    return CONVERGED if passed(summary) else NOT_CONVERGED


def passed(summary: dict[str, Any]) -> bool:
    """No changed conclusion, no cell beyond its MDE, no unverified cell, and at least one cell with an MDE."""
    return not (summary["n_changed"] or summary["n_beyond_mde"] or summary["n_unverified"]
                or summary["shift_over_mde_median"] is None)


def findings(summary: dict[str, Any]) -> str:
    """What the check found, in words that cannot be read as the criterion: `12 of 66 conclusions changed, 31 of
    78 cells beyond their MDE`."""
    parts = [f"{summary['n_changed']} of {summary['conclusions']} conclusions changed",
             f"{summary['n_beyond_mde']} of {summary['cells']} cell means moved by more than their MDE"]
    if summary["n_unverified"]:
        parts.append(f"{summary['n_unverified']} cell(s) at one budget only")
    return ", ".join(parts)


def gates(role: str) -> bool:
    return role == GATING_ROLE


def failing(entries: dict[str, dict]) -> list[str]:
    """The tables whose role gates the check and that did not pass it."""
    return [stem for stem, entry in entries.items() if gates(entry["role"]) and not entry["passed"]]


def exit_code(entries: dict[str, dict], failures: int) -> int:
    """1 when a gating table did not pass or a run failed (the comparison is then incomplete), else 0."""
    return 1 if failing(entries) or failures else 0


def headline(stem: str, summary: dict[str, Any], factor: float, shown: int = 4) -> str:
    """One printed line: `simloss_age: 2 of 20 conclusions change at 2×: …; |shift|/MDE median 0.4, max 1.8`."""
    changed = summary["changed"]
    text = f"{stem}: {summary['n_changed']} of {summary['conclusions']} conclusions change at {factor:g}×"
    if changed:
        text += ": " + "; ".join(changed[:shown]) + (" …" if len(changed) > shown else "")
    if summary["n_borderline"]:
        text += f" ({summary['n_borderline']} more gain or lose {MARK} with Δ moving less than its MDE: borderline)"
    if summary["shift_over_mde_median"] is not None:
        text += (f"; |mean shift| / MDE median {summary['shift_over_mde_median']:.2f}, max "
                 f"{summary['shift_over_mde_max']:.2f} ({summary['n_beyond_mde']} of {summary['cells']} cells "
                 f"beyond their MDE)")
    if summary["n_unverified"]:
        text += f"; {summary['n_unverified']} cell(s) found at one budget only"
    return text


def _num(value: Any, scale: float, digits: int, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value * scale:{'+' if signed else ''}.{digits}f}"


def _side(row: pd.Series, side: str, scale: float, digits: int) -> str:
    text = _num(row[f"mean_{side}"], scale, digits)
    if row[f"reading_{side}"] is not None:
        text += f" (Δ {_num(row[f'diff_{side}'], scale, digits, True)} {row[f'reading_{side}']})"
    return text


def _verdict(row: pd.Series) -> str:
    flags = [("unverified", "found at one budget only"), ("changed", "**conclusion changed**"),
             ("borderline", f"{MARK} changed, Δ moved < MDE (borderline)"), ("beyond_mde", "shift > MDE"),
             ("sign_flip_ns", "sign of an n.s. Δ flipped")]
    return "; ".join(text for flag, text in flags if row[flag]) or "same"


def markdown(result: pd.DataFrame, keys: list[str], title: str, lines: list[str],
             scales: dict[str, float], digits: int = 2) -> str:
    """The per-table report: `lines` (what was compared, the summary) above one row per cell."""
    budgets = ("base", "check")
    out = [f"# Convergence check: {title}", "", *lines, "",
           "| cell | metric | base budget | checked budget | shift | MDE | shift / MDE | verdict |",
           "|---|---|---|---|---|---|---|---|"]
    for _, r in result.iterrows():
        scale = scales.get(r["metric"], 1.0)
        cell = " · ".join(str(r[k]) for k in keys) or "all"
        ratio = "–" if pd.isna(r["shift_over_mde"]) else f"{r['shift_over_mde']:.2f}"
        out.append(f"| {cell} | {r['metric']} | " + " | ".join(_side(r, s, scale, digits) for s in budgets)
                   + f" | {_num(r['shift'], scale, digits, True)} | {_num(r['mde'], scale, digits)} | {ratio} | "
                   f"{_verdict(r)} |")
    return "\n".join(out) + "\n"


SUMMARY = "summary.json"
SUMMARY_MD = "summary.md"


def summary_markdown(tables: dict[str, dict]) -> str:
    """Every checked table's verdict in one markdown table (`<out>/summary.md`, what docs and the report link to):
    table, role, budgets, conclusions changed, cells beyond their MDE, |shift| / MDE, verdict, when and where."""
    out = ["# Convergence check: every table", "",
           "Written by `make converge-check` (experiments/drivers/converge.py) from `summary.json`; one row per table "
           "checked, the latest check of each. Criterion and columns: docs/convergence.md.", "",
           "| table | role | budget → checked | conclusions changed | cells beyond their MDE | |shift| / MDE median, "
           "max | verdict | checked on |", "|---|---|---|---|---|---|---|---|"]
    for stem, e in sorted(tables.items()):
        if "conclusions" not in e:
            out.append(f"| {stem} | {e.get('role', '')} | – | – | – | – | {e.get('verdict') or e.get('error', '')} | "
                       f"{e.get('date', '')} |")
            continue
        budget = f"{e['budget']:g} → {e['budget'] * e['factor']:g}"
        ratio = ("–" if e["shift_over_mde_median"] is None
                 else f"{e['shift_over_mde_median']:.2f}, {e['shift_over_mde_max']:.2f}")
        state = e.get("verdict") or (CONVERGED if e.get("passed") else NOT_CONVERGED)
        out.append(f"| {stem} | {e['role']} | {budget} | {e['n_changed']} of {e['conclusions']} "
                   f"({e.get('n_borderline', 0)} borderline) | {e['n_beyond_mde']} of {e['cells']} | {ratio} | "
                   f"**{state}** | {e['date']}, {e['machine']} |")
    return "\n".join(out) + "\n"


def read_summary(path) -> dict[str, dict]:
    """The tables of a `summary.json` written by `make converge-check`; {} when there is none or it is unreadable."""
    try:
        tables = json.loads(Path(path).read_text()).get("tables", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return tables if isinstance(tables, dict) else {}
