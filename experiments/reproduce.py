"""`make reproduce-table`: run every experiment of a profile, then render its tables and figures.

    python -m experiments.reproduce --profile default [--exp simloss_age] [--jobs 2] [--results-dir results]

Every config of every sweep is composed in-process and looked up in the results store first; only configs not
finished by the current code are run, by `--jobs` long-lived worker processes (`experiments.runner`), or with
`--launcher` through Hydra multirun for the sweeps that still have unfinished configs. A second call trains
nothing and re-renders. The `paper` profile first checks that the real datasets are present and says which are
missing, before starting anything.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments import runner
from experiments.errors import UserError
from experiments.results import load_runs
from experiments.train import CONF_DIR, compose_config

ROOT = CONF_DIR.parent


@dataclass
class Experiment:
    name: str
    experiment_name: str
    sweeps: list[dict[str, str]]
    tables: list[TableSpec]
    figures: list[FigureSpec]
    seeds: str
    data_dir: Path

    def base_overrides(self, profile: str, results_dir: Path) -> list[str]:
        return [f"experiment={self.name}", f"profile={profile}", f"results_dir={results_dir}",
                f"data_dir={self.data_dir}"]

    def sweep_args(self, profile: str, results_dir: Path) -> list[list[str]]:
        """The multirun overrides of each sweep (the profile's seeds unless the sweep sets `seed`)."""
        base = self.base_overrides(profile, results_dir)
        return [base + [f"{k}={v}" for k, v in sweep.items()] + ([] if "seed" in sweep else [f"seed={self.seeds}"])
                for sweep in self.sweeps or [{}]]

    def commands(self, profile: str, results_dir: Path, jobs: int, launcher: str | None,
                 only: set[int] | None = None) -> list[list[str]]:
        """Hydra multirun commands of the sweeps (those numbered in `only`, if given)."""
        if launcher:
            launch = [f"hydra/launcher={launcher}"]
        else:
            launch = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
        return [[sys.executable, "-m", "experiments.train", "-m", *args, *launch]
                for i, args in enumerate(self.sweep_args(profile, results_dir)) if only is None or i in only]


def discover(profile: str, only: list[str] | None, data_dir: str | None,
             cache_dir: Path | None = None) -> list[Experiment]:
    """The experiments with a main table in `profile` (those in `only`, if given), their sweeps, tables and figures.
    With `cache_dir`, the result is kept in `<cache_dir>/<key>.pkl`, the key covering the arguments, the config
    tree and the source code (composing every experiment costs seconds; a no-op re-run should not pay it)."""
    if cache_dir is None:
        return _discover(profile, only, data_dir)
    import pickle

    from experiments.checkpoint import atomic_write
    from experiments.results import CODE_DIRS

    sources = "".join(runner.digest_file(p) for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py")))
    path = cache_dir / f"{runner.digest(repr((profile, only, data_dir, runner.conf_digest(), sources)))}.pkl"
    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 — missing, truncated or foreign: compose again and overwrite it
        found = _discover(profile, only, data_dir)
        atomic_write(path, pickle.dumps(found))
        return found


def _discover(profile: str, only: list[str] | None, data_dir: str | None) -> list[Experiment]:
    from experiments.plots import FigureSpec
    from experiments.tables import TableSpec

    names = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserError(f"EXP={','.join(unknown)}: no such experiment; choose from {', '.join(names)}")
        names = [n for n in names if n in only]
    found = []
    for name in names:
        overrides = [f"experiment={name}", f"profile={profile}"] + ([f"data_dir={data_dir}"] if data_dir else [])
        cfg, _ = compose_config(overrides)
        tables_node = OmegaConf.to_container(cfg.tables, resolve=False) if "tables" in cfg else {}
        specs = [TableSpec.from_config(cfg.experiment_name, tname, node) for tname, node in tables_node.items()]
        main = next((s for s in specs if s.name == "main"), None)
        if main is None or profile not in main.profiles:
            continue
        sweeps = OmegaConf.to_container(cfg.sweeps, resolve=True) if "sweeps" in cfg else []
        figs = [FigureSpec.from_config(cfg.experiment_name, fname, node) for fname, node in
                (OmegaConf.to_container(cfg.figures, resolve=False) if "figures" in cfg else {}).items()
                if node is not None]   # an experiment that extends another drops a figure with `<name>: null`
        found.append(Experiment(name, cfg.experiment_name, [{k: str(v) for k, v in s.items()} for s in sweeps],
                                specs, [f for f in figs if profile in f.profiles], str(cfg.profile.seeds),
                                Path(cfg.data_dir)))
    if only and not found:
        raise UserError(f"EXP={','.join(only)} has no table for PROFILE={profile}")
    return found


def missing_data(experiments: list[Experiment]) -> list[str]:
    missing = []
    for exp in experiments:
        for spec in exp.tables:
            for item in spec.requires_data:
                path, _, source = item.partition(" ")
                if not (exp.data_dir / path).exists():
                    missing.append(f"{exp.data_dir / path} (for {exp.name}){': ' + source if source else ''}")
    return sorted(set(missing))


def paper_templates(results_dir: Path | None = None) -> list[Path]:
    """Ship `results/paper_reference/<table>.csv` for every paper-profile table: the cells of the sweep grid,
    one line per metric, `paper_value` empty for a user to fill from the PDF (no number is ever invented)."""
    import itertools

    import pandas as pd

    from experiments.results import _flatten
    from experiments.tables import write_paper_template

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


class SharedAttr(dict):
    """A `DataFrame.attrs` value shared by the frames derived from it instead of deep-copied into each (pandas
    deep-copies `attrs` on every operation: that tripled the time to render the tables)."""

    def __deepcopy__(self, memo: dict) -> "SharedAttr":
        return self


def load_for_render(results_dir: Path):
    df = load_runs(results_dir)
    df.attrs = {k: SharedAttr(v) if isinstance(v, dict) else v for k, v in df.attrs.items()}
    return df


def render_items(experiments: list[Experiment]) -> list[tuple[str, Any]]:
    """Every figure, then every table, of the experiments (figures first: they take longer)."""
    return ([("figure", spec) for exp in experiments for spec in exp.figures]
            + [("table", spec) for exp in experiments for spec in exp.tables])


def render_one(item: tuple[str, Any], results_dir: Path, df) -> Any:
    """A table's summary (`experiments.tables.render`) or a figure's files."""
    kind, spec = item
    if kind == "table":
        from experiments.tables import render

        return render(df, spec, results_dir / "tables", ROOT / "results" / "paper_reference")
    from experiments.plots import render_figure

    return [] if df.empty else [str(p) for p in render_figure(df, spec, results_dir / "figures")]


def _render_share(items: list, counter, results_dir: Path, df) -> dict[int, tuple[str, Any]]:
    """Render the items nobody has taken yet (`counter`: the next index) until none is left."""
    out = {}
    while True:
        with counter.get_lock():
            i, counter.value = counter.value, counter.value + 1
        if i >= len(items):
            return out
        kind, spec = items[i]
        try:
            out[i] = ("", render_one(items[i], results_dir, df))
        except Exception as e:  # noqa: BLE001 — one broken table or figure does not stop the others
            out[i] = (f"{kind} {spec.experiment}/{spec.name}: {type(e).__name__}: {e}", None)


def _share_into(conn, *args) -> None:
    conn.send(_render_share(*args))


def render_everything(exps: list[Experiment], results_dir: Path) -> tuple[list[dict], list[Path], list[str]]:
    """Every table and figure, rendered by this process and a forked one taking items in turn (each takes
    seconds on the default profile). Returns the table summaries, the figure files and the errors."""
    df = load_for_render(results_dir)
    items = render_items(exps)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    counter = ctx.Value("i", 0)
    helper = None
    if ctx.get_start_method() == "fork" and len(items) > 1:
        receive, send = ctx.Pipe(duplex=False)
        helper = ctx.Process(target=_share_into, args=(send, items, counter, results_dir, df), name="losslab-render")
        helper.start()
        send.close()
    done = _render_share(items, counter, results_dir, df)
    if helper is not None:
        try:
            done.update(receive.recv())
        except EOFError:
            pass
        helper.join()
    results = [done.get(i, (f"{k} {s.experiment}/{s.name}: not rendered (its process died)", None))
               for i, (k, s) in enumerate(items)]
    summary = [r for (kind, _), (_, r) in zip(items, results) if kind == "table" and r is not None]
    figures = [Path(p) for (kind, _), (_, r) in zip(items, results) if kind == "figure" and r for p in r]
    return summary, figures, [error for error, _ in results if error]


def train_missing(exps: list[Experiment], args: argparse.Namespace, results_dir: Path) -> int:
    """Plan every config in-process, then run the unfinished ones; returns the number of failures."""
    t0 = time.time()
    points = runner.plan(exps, args.profile, results_dir)
    for exp in exps:
        states = [p.state for p in points if p.exp == exp.name]
        print(f"{exp.name}: {len(states)} configs, {states.count('done')} done, {states.count('refused')} refused, "
              f"{states.count('pending')} to run")
    errors = [p for p in points if p.state == "error"]
    for p in errors:
        print(f"error: {p.title}: {p.error}", file=sys.stderr)
    pending = [p for p in points if p.state == "pending"]
    print(f"planned {len(points)} configs in {time.time() - t0:.1f} s; {len(pending)} to run", flush=True)
    if args.launcher:
        return len(errors) + launch(exps, pending, args, results_dir)
    tally = runner.run_points(pending, args.jobs)
    if pending:
        print(tally.summary())
    for failure in tally.failures:
        print(f"  failed {failure}", file=sys.stderr)
    return len(errors) + tally.failed


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
    ap.add_argument("--profile", default="default", choices=["smoke", "default", "full", "paper"])
    ap.add_argument("--exp", default="", help="comma-separated experiment names (default: all of the profile)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (or joblib jobs per sweep with a launcher)")
    ap.add_argument("--launcher", default=None, help="hydra/launcher option, e.g. submitit_slurm")
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--render-only", action="store_true", help="only re-render tables and figures")
    ap.add_argument("--plan", action="store_true", help="print grids, runs, image-passes, files; train nothing")
    ap.add_argument("--img-per-s", type=float, default=None, help="with --plan: images/s of one GPU → GPU-hours")
    args = ap.parse_args(argv)
    if args.plan:
        from experiments import plan
        return plan.main(args.profile, [e for e in args.exp.split(",") if e], args.data_dir, args.img_per_s)
    t0 = time.time()
    results_dir = Path(args.results_dir).absolute()
    try:
        exps = discover(args.profile, [e for e in args.exp.split(",") if e], args.data_dir,
                        results_dir / "work" / "discover")
        if args.profile == "paper":
            missing = missing_data(exps)
            if missing:
                raise UserError("PROFILE=paper needs the real datasets; missing:\n  " + "\n  ".join(missing)
                                + "\nput them under LOSSLAB_DATA (see README, 'Real data') and run again")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sweep_failures = 0
    if not args.render_only:
        try:
            sweep_failures = train_missing(exps, args, results_dir)
        except KeyboardInterrupt as e:
            print(f"\ninterrupted{f' ({e})' if str(e) else ''}: unfinished runs resume from their last checkpoint "
                  f"when started again", file=sys.stderr)
            return 130
    summary, figures, render_errors = render_everything(exps, results_dir)
    for error in render_errors:
        print(f"error: {error}", file=sys.stderr)
    minutes = (time.time() - t0) / 60
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nreproduce-table PROFILE={args.profile}: {len(summary)} tables in {minutes:.1f} min "
          f"(peak memory of one process: {peak:.0f} MB)")
    for s in summary:
        print(f"  {s['table']}: {s['runs']} runs, {s['failed']} failed")
    print(f"  {len(figures) // 2} figures in {results_dir / 'figures'}")
    failed = sum(s["failed"] for s in summary)
    return 1 if (failed or sweep_failures or render_errors) else 0


if __name__ == "__main__":  # through the module, so cached Experiment objects pickle as experiments.reproduce's
    from experiments import reproduce

    sys.exit(reproduce.main())
