"""`make converge-check`: does twice the training change any conclusion of a profile's tables?

    python -m experiments.converge --profile default [--exp simloss_age] [--factor 2] [--budget 1] [--jobs 2]

Runs `make reproduce-table` for the chosen experiments at `--budget` (into `--results-dir`) and at `--factor` ×
that budget (into `<out>/runs-<budget>x`), finished runs skipped, then compares the two renderings of every table
(`<dir>/tables/<table>.csv`) cell by cell (experiments.report.converge). `--from-tables` skips the base run and
compares with the long forms already in `<results-dir>/tables/` (e.g. the committed ones). Writes `<out>/<table>.md` and `.csv` and updates
`<out>/summary.json` (read by the table footers). Exit 1 when a paper table (`role: paper`) changes a
conclusion, moves a cell by more than its MDE, or has a cell at one budget only, or a run failed; 2 on bad input.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from experiments.drivers import reproduce
from experiments.drivers.catalog import PROFILES, ROOT, discover_at, results_folder
from experiments.engine.budget import factor
from experiments.engine.checkpoint import atomic_write
from experiments.engine.environment import cpu_model
from experiments.engine.errors import UserError
from experiments.report import converge
from experiments.report.compare import key_columns
from experiments.report.tables import TableSpec, measure
from experiments.store.frame import load_runs, measures_of


def machine() -> str:
    """What ran the check, for the table footers: cores, CPU model, GPU, OS (no host name)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu_model()}), {gpu}, {platform.system()}"


def reproduce_at(args: argparse.Namespace, budget: float, results_dir: Path) -> int:
    """`make reproduce-table` of the chosen experiments at `budget` into `results_dir` (finished runs skipped);
    its tables, `<results_dir>/tables/<table>.csv`, are the long forms compared. Returns its exit code."""
    argv = ["--profile", args.profile, "--jobs", str(args.jobs), "--results-dir", str(results_dir),
            "--budget", repr(budget)]
    argv += (["--exp", args.exp] if args.exp else []) + (["--data-dir", args.data_dir] if args.data_dir else [])
    return reproduce.main(argv)


def read_long(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (OSError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _scales(spec: TableSpec, measures: dict) -> dict[str, float]:
    out = {}
    for metric in spec.metrics:
        try:
            out[metric] = measure(measures, metric).scale if spec.percent else 1.0
        except UserError:
            out[metric] = 1.0
    return out


def _base_versions(path: Path) -> list[str]:
    """The code versions of a table's base-budget runs, as its renderer recorded them beside the table (each run
    has its own version: experiments.store.versions)."""
    try:
        return sorted(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []


def check_table(spec: TableSpec, base: pd.DataFrame, check: pd.DataFrame, scales: dict[str, float],
                args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """Compare one table, write `<out>/<stem>.md|.csv`; returns its summary entry."""
    if base.empty or check.empty:
        missing = "base" if base.empty else "checked"
        return {**meta, "role": spec.role, "error": f"no completed runs at the {missing} budget", "passed": False,
                "verdict": f"not checked (no completed runs at the {missing} budget)"}
    keys = key_columns(base)
    result = converge.compare(base, check, keys)
    found = converge.summarize(result, keys)
    versions = _base_versions(args.results_dir / "tables" / f"{spec.stem}.versions.json")
    entry = {**meta, "code_versions": versions, "role": spec.role, **found, "passed": converge.passed(found)}
    lines = [f"Budget {args.budget:g} (base) against {args.budget * args.factor:g} ({args.factor:g}× the training "
             f"length): {meta['date']}, {meta['machine']}, profile {args.profile}, code versions of the base runs "
             f"{', '.join(versions) or 'unknown'}.",
             f"Role: {spec.role} ({'gates' if converge.gates(spec.role) else 'does not gate'} the check).",
             converge.headline(spec.stem, found, args.factor),
             f"Verdict: {found['verdict']} — {converge.findings(found)}. Criterion: converged when no conclusion "
             f"changes, no cell mean moves by more than its MDE and no cell is found at one budget only; a table with "
             f"one run per cell has no MDE, so it is not checked. Conclusion = the reading of a Δ cell: +† / −† "
             f"(significant after Holm, by sign) or n.s.; it changes when the reading differs and Δ moved by more "
             f"than the cell's MDE (a differing reading with Δ moving less is borderline: a Δ near its MDE gains or "
             f"loses † between any two sets of seeds); shift = mean at the checked budget − mean at the base budget; "
             f"MDE = the cell's minimum detectable effect at the base budget (baseline cells: the median of the "
             f"metric's).",
             "Shown in the table's units (percentage points for rates)."]
    text = converge.markdown(result, keys, spec.title or spec.stem, lines, scales, spec.digits)
    atomic_write(args.out / f"{spec.stem}.md", text.encode())
    atomic_write(args.out / f"{spec.stem}.csv", result.to_csv(index=False).encode())
    return entry


def write_summary(path: Path, entries: dict[str, dict]) -> None:
    """Merge this check's tables into `summary.json` (tables checked before keep their entries)."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    tables = {**known.get("tables", {}), **entries}
    atomic_write(path, (json.dumps({"tables": dict(sorted(tables.items()))}, indent=1) + "\n").encode())
    atomic_write(path.with_name(converge.SUMMARY_MD), converge.summary_markdown(tables).encode())


def _number(value: str, make_name: str, option: str) -> float:
    """`factor(value)` refused in the words the user typed (make's variable and the option), not the config key."""
    try:
        return factor(value)
    except UserError:
        raise UserError(f"{make_name}={value!r} ({option}): must be a number > 0, e.g. {make_name}=2") from None


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", choices=PROFILES)
    ap.add_argument("--exp", default="", help="comma-separated experiment names (default: all of the profile)")
    ap.add_argument("--factor", default="2", help="the checked budget is factor × --budget (default 2)")
    ap.add_argument("--budget", default="1", help="the base budget, whose tables are checked (default 1)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--results-dir", default=str(ROOT / "results"), help="the base runs and tables")
    ap.add_argument("--out", default=None, help="reports and the checked runs (default <results-dir>/converge)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--from-tables", action="store_true",
                    help="base long forms from <results-dir>/tables/<table>.csv; train only the checked budget")
    args = ap.parse_args(argv)
    args.factor, args.budget = _number(args.factor, "FACTOR", "--factor"), _number(args.budget, "BUDGET", "--budget")
    args.results_dir = results_folder(args.results_dir, "--results-dir")
    args.out = Path(args.out).absolute() if args.out else args.results_dir / "converge"
    return args


def run(args: argparse.Namespace) -> tuple[dict[str, dict], int]:
    """Train and render both budgets, compare every table; (summary entries, reproduce's worst exit code)."""
    exps = discover_at(args.profile, args.exp, args.data_dir, args.results_dir, args.budget)
    checked = args.budget * args.factor
    check_dir = args.out / f"runs-{checked:g}x"
    codes = [] if args.from_tables else [reproduce_at(args, args.budget, args.results_dir)]
    codes.append(reproduce_at(args, checked, check_dir))
    if {2, 130} & set(codes):
        return {}, max(codes)
    runs = load_runs(check_dir)
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"), "machine": machine(),
            "profile": args.profile, "budget": args.budget, "factor": args.factor}
    entries = {}
    for e in exps:   # each experiment's metric meanings from its own runs (one name may mean two things elsewhere)
        measures = measures_of(runs[runs["experiment_name"] == e.name]) if not runs.empty else {}
        entries.update({s.stem: check_table(s, read_long(args.results_dir / "tables" / f"{s.stem}.csv"),
                                            read_long(check_dir / "tables" / f"{s.stem}.csv"), _scales(s, measures),
                                            args, meta)
                        for s in e.tables if not s.renderer})
    return entries, max(codes)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        entries, code = run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if code in (2, 130):
        return code
    failures = int(code != 0)
    write_summary(args.out / converge.SUMMARY, entries)
    print(f"\nconverge-check PROFILE={args.profile}: budget {args.budget:g} against {args.budget * args.factor:g}")
    for stem, entry in entries.items():
        text = entry.get("error") or converge.headline(stem, entry, args.factor)
        print(f"  [{entry['role']}, {entry['verdict']}] {text}")
    if failures:
        print("error: runs failed or tables did not render (see above); the comparison is incomplete",
              file=sys.stderr)
    if converge.failing(entries):
        print(f"error: not converged: {', '.join(converge.failing(entries))} (reports in {args.out})",
              file=sys.stderr)
    return converge.exit_code(entries, failures)
