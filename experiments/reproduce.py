"""`make reproduce-table`: run every experiment of a profile through Hydra multirun, then render its tables.

    python -m experiments.reproduce --profile default [--exp simloss_age] [--jobs 2] [--results-dir results]

Finished runs are skipped by the engine, so a second call trains nothing and re-renders. The `paper` profile
first checks that the real datasets are present and says which are missing, before starting anything.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from experiments.errors import UserError
from experiments.results import load_runs
from experiments.plots import FigureSpec, render_figure
from experiments.tables import TableSpec, render
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

    def commands(self, profile: str, results_dir: Path, jobs: int, launcher: str | None) -> list[list[str]]:
        cmds = []
        for sweep in self.sweeps or [{}]:
            args = [sys.executable, "-m", "experiments.train", "-m", f"experiment={self.name}",
                    f"profile={profile}", f"results_dir={results_dir}", f"data_dir={self.data_dir}"]
            args += [f"{k}={v}" for k, v in sweep.items()]
            if "seed" not in sweep:
                args.append(f"seed={self.seeds}")
            if launcher:
                args.append(f"hydra/launcher={launcher}")
            elif jobs > 1:
                args += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
            cmds.append(args)
        return cmds


def discover(profile: str, only: list[str] | None, data_dir: str | None) -> list[Experiment]:
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
                (OmegaConf.to_container(cfg.figures, resolve=False) if "figures" in cfg else {}).items()]
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


def render_all(experiments: list[Experiment], results_dir: Path) -> list[dict]:
    df = load_runs(results_dir)
    out = []
    for exp in experiments:
        for spec in exp.tables:
            out.append(render(df, spec, results_dir / "tables", ROOT / "results" / "paper_reference"))
    return out


def plot_all(experiments: list[Experiment], results_dir: Path) -> list[Path]:
    df = load_runs(results_dir)
    if df.empty:
        return []
    paths = []
    for exp in experiments:
        for spec in exp.figures:
            paths += render_figure(df, spec, results_dir / "figures")
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", choices=["smoke", "default", "paper"])
    ap.add_argument("--exp", default="", help="comma-separated experiment names (default: all of the profile)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel jobs per sweep (joblib launcher)")
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
        exps = discover(args.profile, [e for e in args.exp.split(",") if e], args.data_dir)
        if args.profile == "paper":
            missing = missing_data(exps)
            if missing:
                raise UserError("PROFILE=paper needs the real datasets; missing:\n  " + "\n  ".join(missing)
                                + "\nput them under LOSSLAB_DATA (see README, 'Real data') and run again")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sweep_failures = 0
    if not args.render_only:
        todo = [(exp, cmd) for exp in exps for cmd in exp.commands(args.profile, results_dir, args.jobs,
                                                                   args.launcher)]
        for i, (exp, cmd) in enumerate(todo, 1):
            elapsed = (time.time() - t0) / 60
            print(f"==> sweep {i}/{len(todo)} ({elapsed:.1f} min so far) {exp.name}: {' '.join(cmd[3:])}",
                  flush=True)
            sweep_failures += subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0
    summary = render_all(exps, results_dir)
    figures = plot_all(exps, results_dir)
    minutes = (time.time() - t0) / 60
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nreproduce-table PROFILE={args.profile}: {len(summary)} tables in {minutes:.1f} min "
          f"(peak memory of one process: {peak:.0f} MB)")
    for s in summary:
        print(f"  {s['table']}: {s['runs']} runs, {s['failed']} failed")
    print(f"  {len(figures) // 2} figures in {results_dir / 'figures'}")
    failed = sum(s["failed"] for s in summary)
    return 1 if (failed or sweep_failures) else 0


if __name__ == "__main__":
    sys.exit(main())
