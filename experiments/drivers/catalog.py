"""The experiment catalogue: which experiments a profile runs, their sweeps, tables and figures
(`conf/experiment/*.yaml`, composed with Hydra), and the data each one needs. Shared by reproduce, plan, status,
verify and bench, so none of them imports another to find the experiments."""
from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from experiments.drivers import runner
from experiments.drivers.train import CONF_DIR, compose_config
from experiments.engine.budget import KEY as BUDGET_KEY
from experiments.engine.budget import factor
from experiments.engine.checkpoint import atomic_write
from experiments.engine.errors import UserError, WriteError, warn
from experiments.report.plots import FigureSpec
from experiments.report.tables import TableSpec
from experiments.store import versions as code_versions

ROOT = CONF_DIR.parent
PROFILES = tuple(sorted(p.stem for p in (CONF_DIR / "profile").glob("*.yaml")))


@dataclass
class Experiment:
    name: str
    experiment_name: str
    sweeps: list[dict[str, str]]
    tables: list[TableSpec]
    figures: list[FigureSpec]
    seeds: str
    data_dir: Path
    overrides: list[str] = field(default_factory=list)   # given to every run, e.g. `budget=2`

    def base_overrides(self, profile: str, results_dir: Path) -> list[str]:
        return [f"experiment={self.name}", f"profile={profile}", f"results_dir={results_dir}",
                f"data_dir={self.data_dir}", *self.overrides]

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


def discover_at(profile: str, exp: str, data_dir: str | None, results_dir: Path, budget: str | float) -> list[Experiment]:
    """`discover` as the command-line drivers call it (`exp` comma-separated, the cache under the results
    folder), every experiment's runs at `budget` (experiments.engine.budget), so reproduce, status and
    converge plan the same configs and share the plan cache."""
    scale = factor(budget)
    exps = discover(profile, [e for e in exp.split(",") if e], data_dir, results_dir / "work" / "discover")
    for found in exps:
        found.overrides.append(f"{BUDGET_KEY}={scale!r}")
    return exps


def discover(profile: str, only: list[str] | None, data_dir: str | None,
             cache_dir: Path | None = None) -> list[Experiment]:
    """The experiments with a main table in `profile` (those in `only`, if given), their sweeps, tables and figures.
    With `cache_dir`, the result is kept in `<cache_dir>/<key>.pkl`, the key covering the arguments, the config
    tree and the code this module runs to build it (its import closure, experiments.store.versions: a loss or a
    comment edited elsewhere keeps the cache; composing every experiment costs seconds, a no-op re-run should not
    pay it)."""
    if cache_dir is None:
        return _discover(profile, only, data_dir)
    code = code_versions.CURRENT.of_modules([__name__]).version
    path = cache_dir / f"{runner.digest(repr((profile, only, data_dir, runner.conf_digest(), code)))}.pkl"
    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 — missing, truncated or foreign: compose again and overwrite it
        found = _discover(profile, only, data_dir)
        try:
            atomic_write(path, pickle.dumps(found))
        except WriteError as e:   # a cache only: the next call composes again
            warn(f"cannot write the experiment cache {e.filename} ({e.strerror}); continuing without it")
        return found


def results_folder(path: str | Path, option: str) -> Path:
    """The results folder `path` (RESULTS=, `option` on the command line), absolute and created if need be: a
    file, or a place that cannot be created or written, is refused in one line naming it, before anything is
    written under it."""
    path = Path(path).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(path, os.W_OK | os.X_OK) else "is not writable"
    except OSError as e:
        problem = "is a file, not a folder" if path.is_file() else f"cannot be created ({e.strerror})"
    if problem:
        raise UserError(f"RESULTS={path} ({option}) {problem}; give a folder the results can be written to, "
                        f"e.g. RESULTS=results")
    return path


SWEEP_PROFILES = "profiles"   # a sweep's own key: the profiles it runs in (default: every profile of its experiment)


def in_profile(sweeps: list[dict], profile: str) -> list[dict]:
    """The sweeps that run in `profile`, without their `profiles` key (a list, or a comma-separated string)."""
    out = []
    for sweep in sweeps:
        sweep = dict(sweep)
        only = sweep.pop(SWEEP_PROFILES, None)
        names = only.split(",") if isinstance(only, str) else only
        if names is None or profile in [str(n).strip() for n in names]:
            out.append(sweep)
    return out


def _discover(profile: str, only: list[str] | None, data_dir: str | None) -> list[Experiment]:
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
        specs = [TableSpec.from_config(cfg.experiment_name, tname, node) for tname, node in tables_node.items()
                 if node is not None]   # and a table with `<name>: null`, as figures below
        main = next((s for s in specs if s.name == "main"), None)
        if main is None or profile not in main.profiles:
            continue
        sweeps = in_profile(OmegaConf.to_container(cfg.sweeps, resolve=True) if "sweeps" in cfg else [], profile)
        figs = [FigureSpec.from_config(cfg.experiment_name, fname, node) for fname, node in
                (OmegaConf.to_container(cfg.figures, resolve=False) if "figures" in cfg else {}).items()
                if node is not None]   # an experiment that extends another drops a figure with `<name>: null`
        found.append(Experiment(name, cfg.experiment_name, [{k: str(v) for k, v in s.items()} for s in sweeps],
                                [s for s in specs if profile in s.profiles], [f for f in figs if profile in f.profiles],
                                str(cfg.profile.seeds),
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
