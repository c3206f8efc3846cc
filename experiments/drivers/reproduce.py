"""`make reproduce-table`: run every experiment of a profile, then render its tables and figures.

    python -m experiments.reproduce --profile default [--exp simloss_age] [--jobs 2] [--results-dir results]

Every config of every sweep is composed in-process and looked up in the results store first; only configs not
finished by the current code are run, by `--jobs` long-lived worker processes (`experiments.drivers.runner`), or with
`--launcher` through Hydra multirun for the sweeps that still have unfinished configs. A second call trains
nothing and re-renders. The `paper` profile first checks that the real datasets are present and says which are
missing, before starting anything; with `--allow-missing` it runs the configs whose data is present and records
the others as refused, "data missing: <path>" (experiments.drivers.missing).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments.drivers import missing as data_missing
from experiments.drivers import packed, plan, runner
from experiments.drivers.catalog import PROFILES, ROOT, Experiment, discover, discover_at, missing_data, results_folder
from experiments.drivers.train import compose_config
from experiments.engine.budget import at_budget, factor
from experiments.engine.errors import UserError
from experiments.report import render_cache, reproducibility
from experiments.report.plots import render_figure
from experiments.report.tables import render, write_paper_template
from experiments.store.frame import _flatten, load_runs


def paper_templates(results_dir: Path | None = None) -> list[Path]:
    """Ship `results/paper_reference/<table>.csv` for every paper-profile table: the cells of the sweep grid,
    one line per metric, `paper_value` empty for a user to fill from the PDF (no number is ever invented)."""
    import itertools

    import pandas as pd


    out_dir = ROOT / "results" / "paper_reference"
    written = []
    for exp in discover("paper", None, None):
        for spec in exp.tables:
            path = out_dir / f"{spec.stem}.csv"
            if path.exists() or spec.transform:
                continue
            keys = list(spec.rows) + list(spec.columns)
            cells = []
            for sweep in exp.sweeps or [{}]:
                swept = {k: str(v).split(",") for k, v in sweep.items() if k != "seed"}
                for combo in itertools.product(*swept.values()):
                    overrides = [f"experiment={exp.name}", "profile=paper"] + [
                        f"{k}={v}" for k, v in zip(swept, combo)]
                    cfg, choices = compose_config(overrides)
                    flat = {**_flatten(OmegaConf.to_container(cfg, resolve=False)), **choices}
                    cells.append({k: flat.get(k, "—") for k in keys})
            long = pd.DataFrame([{**c, "metric": m} for c in cells for m in spec.metrics])
            write_paper_template(path, long, keys)
            written.append(path)
    return written


def load_for_render(results_dir: Path, budget: float = 1.0, keep_stale: bool = False,
                    planned: set[str] | None = None):
    """The runs of `results_dir` trained at `budget` (runs at another budget never enter these tables) and, given
    `planned` (the run ids of the profile's configs), only those: a run of a config the profile no longer has (a
    changed sweep, another profile) would otherwise be pooled with the current config's runs of the same table cell.
    With `keep_stale`, tables keep runs of changed code, marked (experiments.report.tables.current_runs)."""
    df = at_budget(load_runs(results_dir), budget)
    if planned is not None and not df.empty and "run_id" in df:
        outside = ~df["run_id"].isin(planned)
        if outside.any():
            print(f"note: {int(outside.sum())} run(s) in {results_dir} belong to no config of this profile's plan "
                  f"(a changed sweep or another profile); tables leave them out", file=sys.stderr)
        df = df[~outside]
    df.attrs["keep_stale"] = keep_stale
    return df


def render_items(experiments: list[Experiment]) -> list[tuple[str, Any]]:
    """Every figure, then every table, of the experiments (figures first: they take longer)."""
    return ([("figure", spec) for exp in experiments for spec in exp.figures]
            + [("table", spec) for exp in experiments for spec in exp.tables])


def render_one(item: tuple[str, Any], results_dir: Path, df) -> Any:
    """A table's summary (`experiments.report.tables.render`) or a figure's files."""
    kind, spec = item
    if kind == "table":

        return render(df, spec, results_dir / "tables", ROOT / "results" / "paper_reference")

    return [] if df.empty else [str(p) for p in render_figure(df, spec, results_dir / "figures")]


def _render_safely(item: tuple[str, Any], results_dir: Path, df) -> tuple[str, Any]:
    """(an error line or "", the item's result): one broken table or figure does not stop the others."""
    kind, spec = item
    try:
        return "", render_one(item, results_dir, df)
    except Exception as e:  # noqa: BLE001
        return f"{kind} {spec.experiment}/{spec.name}: {type(e).__name__}: {e}", None


def render_everything(exps: list[Experiment], results_dir: Path, budget: float = 1.0, keep_stale: bool = False,
                      planned: set[str] | None = None, points: list[runner.Point] | None = None
                      ) -> tuple[list[dict], list[Path], list[str]]:
    """Every table and figure of the runs at `budget` (of the `planned` run ids, or of the `points` planned, if
    given), in this process. Given the `points`, an item whose inputs did not change since the last rendering is
    not drawn again (experiments.report.render_cache) and the runs are read only when some item must be drawn.
    Returns the table summaries, the figure files and the errors. (A forked second renderer saved ~4 s on the
    default profile but could hang: forking copies locks that other threads hold — torch's, or pyarrow's jemalloc
    thread, loaded with the GloVe index.)"""
    if points is not None:
        planned = {p.run_id for p in points if p.run_id}
    items = render_items(exps)
    cache = render_cache.RenderCache(results_dir) if points is not None else render_cache.NoCache()
    base = f"{render_cache.code_digest(ROOT)} budget={budget!r} keep_stale={keep_stale}"
    runs = render_cache.runs_digest(points or [])
    converged = results_dir / "converge" / "summary.json"
    paper_dir = ROOT / "results" / "paper_reference"

    def key_of(item: tuple[str, Any]) -> str:
        kind, spec = item
        extra = [converged, paper_dir / f"{spec.stem}.csv"] if kind == "table" else []
        return render_cache.item_key(f"{base} {kind} {spec.name}", runs.get(spec.experiment, "no plan"), extra)

    def draw(todo: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        df = load_for_render(results_dir, budget, keep_stale, planned)
        return [_render_safely(item, results_dir, df) for item in todo]

    results = render_cache.render_cached(items, cache, key_of, _outputs, draw)
    cache.save()
    summary = [r for (kind, _), (_, r) in zip(items, results) if kind == "table" and r is not None]
    figures = [Path(p) for (kind, _), (_, r) in zip(items, results) if kind == "figure" and r for p in r]
    return summary, figures, [error for error, _ in results if error]


def _outputs(item: tuple[str, Any], result: Any) -> list[str]:
    """The files an item wrote, which must still exist for its cached rendering to stand."""
    kind, _ = item
    if kind == "figure":
        return list(result or [])
    return [result["table"]] if isinstance(result, dict) and "table" in result else []


def train_missing(exps: list[Experiment], args: argparse.Namespace,
                  results_dir: Path) -> tuple[int, list[runner.Point]]:
    """Plan every config in-process, then run the unfinished ones; returns the number of failures and the planned
    points (their runs are the ones the tables read)."""
    t0 = time.time()
    points = runner.plan(exps, args.profile, results_dir)
    if args.profile == "paper":
        refused = data_missing.refuse_missing(points, exps)
        if refused:
            print(f"{refused} configs refused for missing data (ALLOW_MISSING=1): their cells read "
                  f"'n/a — data missing: <path>'; they run once the data is there")
    if args.keep_stale:
        for p in points:
            p.state = "kept stale" if p.why == "stale" else p.state
    for exp in exps:
        states = [p.state for p in points if p.exp == exp.name]
        stale = sum(p.why == "stale" for p in points if p.exp == exp.name)
        print(f"{exp.name}: {len(states)} configs, {states.count('done')} done, {states.count('refused')} refused, "
              f"{states.count('pending')} to run" + (f" ({stale} stale: made by code changed since)" if stale else "")
              + (f", {states.count('kept stale')} stale kept (KEEP_STALE=1)" if args.keep_stale else ""))
    errors = [p for p in points if p.state == "error"]
    for p in errors:
        print(f"error: {p.title}: {p.error}", file=sys.stderr)
    pending = [p for p in points if p.state == "pending"]
    print(f"planned {len(points)} configs in {time.time() - t0:.1f} s; {len(pending)} to run", flush=True)
    if args.launcher and args.packed:
        return len(errors) + packed.submit(pending, args.packed, results_dir), points
    if args.launcher:
        return len(errors) + launch(exps, pending, args, results_dir), points
    tally = runner.run_points(pending, args.jobs)
    if pending:
        print(tally.summary())
    for failure in tally.failures:
        print(f"  failed {failure}", file=sys.stderr)
    return len(errors) + tally.failed, points


def launch(exps: list[Experiment], pending: list[runner.Point], args: argparse.Namespace, results_dir: Path) -> int:
    """`--launcher`: Hydra multirun (`python -m experiments.train -m ...`) of the sweeps with unfinished configs."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    todo = [(exp, cmd) for exp in exps for cmd in exp.commands(
        args.profile, results_dir, args.jobs, args.launcher, {p.sweep for p in pending if p.exp == exp.name})]
    failures, t0 = 0, time.time()
    for i, (exp, cmd) in enumerate(todo, 1):
        print(f"==> sweep {i}/{len(todo)} ({(time.time() - t0) / 60:.1f} min so far) {exp.name}: "
              f"{' '.join(cmd[3:])}", flush=True)
        failures += subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", choices=PROFILES)
    ap.add_argument("--exp", default="", help="comma-separated experiment names (default: all of the profile)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (or joblib jobs per sweep with a launcher)")
    ap.add_argument("--launcher", default=None, help="hydra/launcher option, e.g. submitit_slurm")
    ap.add_argument("--pack-jobs", default=None, help="with --launcher slurm: pack the runs into this many SLURM "
                    "jobs, RUNS_PER_GPU (environment) per GPU of each (experiments.drivers.packed)")
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--render-only", action="store_true", help="only re-render tables and figures")
    ap.add_argument("--keep-stale", action="store_true", help="do not re-run runs of changed code; tables show them, "
                    "their cells marked, the footer naming their code versions (`make status` lists them)")
    ap.add_argument("--plan", action="store_true", help="print grids, runs, image-passes, files; train nothing")
    ap.add_argument("--allow-missing", action="store_true", help="paper profile: run the configs whose data is "
                    "present; the others are refused, 'n/a — data missing: <path>' in the tables")
    ap.add_argument("--img-per-s", type=float, default=None, help="with --plan: images/s of one GPU → GPU-hours")
    ap.add_argument("--budget", default="1", help="factor on every run's training length (config key `budget`); "
                    "tables show only the runs at this budget")
    args = ap.parse_args(argv)
    if args.plan:
        return plan.main(args.profile, [e for e in args.exp.split(",") if e], args.data_dir, args.img_per_s)
    t0 = time.time()
    try:
        args.packed = packed.mode(args.launcher, args.pack_jobs)   # RUNS_PER_GPU / PACK_JOBS checked first
        results_dir = results_folder(args.results_dir, "--results-dir")
        budget = factor(args.budget)
        exps = discover_at(args.profile, args.exp, args.data_dir, results_dir, budget)
        if args.profile == "paper":
            missing = missing_data(exps)
            if missing and not args.allow_missing:
                raise UserError("PROFILE=paper needs the real datasets; missing:\n  " + "\n  ".join(missing)
                                + "\nput them under LOSSLAB_DATA (see docs/real_data.md) and run again, or run "
                                  "the configs whose data is present with ALLOW_MISSING=1")
            for item in missing:
                print(f"warning: missing {item}; the configs that read it are refused (ALLOW_MISSING=1)",
                      file=sys.stderr)
        claims = reproducibility.load_claims(exps, results_dir)   # a bad claims file stops here, before any run
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.render_only:
        sweep_failures, points = 0, runner.plan(exps, args.profile, results_dir)
    else:
        try:
            sweep_failures, points = train_missing(exps, args, results_dir)
        except KeyboardInterrupt as e:
            print(f"\ninterrupted{f' ({e})' if str(e) else ''}: unfinished runs resume from their last checkpoint "
                  f"when started again", file=sys.stderr)
            return 130
    summary, figures, render_errors = render_everything(exps, results_dir, budget, args.keep_stale, points=points)
    planned = {p.run_id for p in points if p.run_id}
    for error in render_errors:
        print(f"error: {error}", file=sys.stderr)
    minutes = (time.time() - t0) / 60
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nreproduce-table PROFILE={args.profile}: {len(summary)} tables in {minutes:.1f} min "
          f"(peak memory of one process: {peak:.0f} MB)")
    for s in summary:
        print(f"  {s['table']}: {s['runs']} runs, {s['failed']} failed")
    print(f"  {len(figures) // 2} figures in {results_dir / 'figures'}")
    print("claims:\n  " + "\n  ".join(reproducibility.write_reports(
        results_dir, args.profile, exps, lambda: load_for_render(results_dir, budget, args.keep_stale, planned), claims)))
    failed = sum(s["failed"] for s in summary)
    return 1 if (failed or sweep_failures or render_errors) else 0
