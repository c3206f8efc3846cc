"""`make status` / `python -m experiments.status`: where every run of a profile stands, training nothing.

    python -m experiments.status [--profile default] [--exp name,...] [--results-dir results] [--data-dir DIR]
                                 [--budget 1]

Per experiment: configs finished by the current code, stale (completed or refused by code changed since),
missing, failed and refused; then, for the stale runs, each changed file with the runs it makes stale per
experiment ("experiments/losses/focal.py changed: 40 runs of cce_imbalanced, 22 of matrix"), read from the
per-file digests each run records (`code_files`). Plans as `make reproduce-table` does, from cached run ids.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from experiments.drivers import runner
from experiments.drivers.catalog import PROFILES, ROOT, Experiment, discover_at, results_folder
from experiments.engine.errors import UserError
from experiments.store import results as store
from experiments.store import versions as code_versions

COLUMNS = ("finished", "stale", "missing", "failed", "refused")
UNRECORDED = "(files not recorded: the run predates per-file code digests)"


@dataclass
class Status:
    counts: dict[str, Counter] = field(default_factory=dict)                        # experiment -> column -> n
    changed: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # file -> experiment -> n
    errors: list[str] = field(default_factory=list)
    seconds: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (experiment, dataset) -> durations


def why_stale(record: dict) -> list[str]:
    """The files whose change made a stale record stale (its recorded digests against the current code's)."""
    recorded = record.get("code_files")
    if not isinstance(recorded, dict):
        return [UNRECORDED]
    return code_versions.changed_files(recorded, store.code_files(record.get("config") or {})) or [
        "(no file differs: the run's recorded version was made by another rule)"]


def collect(exps: list[Experiment], profile: str, results_dir: Path) -> Status:
    """The state of every config of `exps` in `results_dir`, and the changed files behind the stale ones."""
    out = Status()
    for p in runner.plan(exps, profile, results_dir):
        column = {"done": "finished", "refused": "refused", "pending": p.why}.get(p.state)
        if p.state == "error":
            out.errors.append(f"{p.title}: {p.error}")
        if column is None:
            continue
        out.counts.setdefault(p.exp, Counter())[column] += 1
        if column == "finished":
            record = store.read_record(p.path) or {}
            if isinstance(record.get("duration_s"), (int, float)):
                out.seconds.setdefault((p.exp, str(record.get("dataset"))), []).append(record["duration_s"])
        if column == "stale":
            for path in why_stale(store.read_record(p.path) or {}):
                out.changed[path][p.exp] += 1
    return out


def report(status: Status, out=print) -> None:
    width = max([len("experiment")] + [len(name) for name in status.counts])
    out(f"{'experiment':<{width}}  " + "  ".join(f"{c:>8}" for c in COLUMNS))
    for name, counts in status.counts.items():
        out(f"{name:<{width}}  " + "  ".join(f"{counts[c]:>8}" for c in COLUMNS))
    if status.changed:
        out("")
        out("stale runs, by changed file (a run counts under every file it depends on that changed):")
    for path, per_exp in sorted(status.changed.items(), key=lambda item: -sum(item[1].values())):
        parts = [f"{n} {'runs' if n != 1 else 'run'} of {exp}" if i == 0 else f"{n} of {exp}"
                 for i, (exp, n) in enumerate(per_exp.most_common())]
        out(f"  {path} changed: {', '.join(parts)}")
    report_seconds(status.seconds, out)
    for error in status.errors:
        out(f"error: {error}")


def report_seconds(seconds: dict[tuple[str, str], list[float]], out=print) -> None:
    """What each part of the profile costs: the finished runs' own durations (`duration_s`, training and
    evaluation in the worker, without its start-up) per experiment and dataset, summed, with their share."""
    if not seconds:
        return
    total = sum(sum(v) for v in seconds.values())
    out("")
    out(f"run time of the finished runs (s, one thread per run; {total:.0f} s in all):")
    width = max(len(f"{exp} / {data}") for exp, data in seconds)
    for (exp, data), values in sorted(seconds.items(), key=lambda item: -sum(item[1])):
        part = sum(values)
        out(f"  {f'{exp} / {data}':<{width}}  {part:7.1f} s  {len(values):4d} runs  {part / len(values):5.2f} s/run  "
            f"{100 * part / total:4.1f} %")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", choices=PROFILES)
    ap.add_argument("--exp", default="", help="comma-separated experiment names (default: all of the profile)")
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--budget", default="1", help="the runs at this training-length factor (as reproduce-table)")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        results_dir = results_folder(args.results_dir, "--results-dir")
        exps = discover_at(args.profile, args.exp, args.data_dir, results_dir, args.budget)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = collect(exps, args.profile, results_dir)
    print(f"status PROFILE={args.profile} of {results_dir} (nothing trained):")
    report(status)
    print(f"({time.time() - t0:.1f} s)")
    return 0
