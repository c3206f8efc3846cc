"""`make bench` sections on the cost of runs themselves (registered in `experiments.drivers.bench`):

- fixed_cost_per_run: tiny runs (simloss_age, smoke profile, 1 epoch, one seed each) through the reproduce runner's
  worker pool (one worker, data already cached): per run, the wall time in the worker minus the training-epoch
  time recorded in its history (median over the runs): composition, data load, model build, final evaluation,
  writing the record. `amortised_fixed_s` also spreads the pool's start (process spawn, imports) over the runs.
  For comparison `own_process_fixed_s`: the same kind of run as its own process (`python -m experiments.train`,
  as each job of a Hydra sweep paid it): process start, imports and composition included.
- noop_rerun: `python -m experiments.reproduce --profile smoke --exp simloss_age,simloss_cifar` (12 configs: a
  subset of the smoke profile, to stay within the bench's time budget) on a fresh results folder, then again with
  every config done: the wall time of both and their ratio.
- profile (only with `BENCH_PROFILE=1`, ~8 minutes): `make reproduce-table`'s default profile with `--jobs 2` from
  scratch (fresh results and data folders), then again with every config done: wall times and the peak memory of
  the largest process.
"""
from __future__ import annotations

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.drivers import runner
from experiments.drivers.catalog import ROOT, Experiment

NOOP_EXPERIMENTS = "simloss_age,simloss_cifar"


def _tiny(data_dir: Path, seeds: str) -> Experiment:
    return Experiment("simloss_age", "simloss_age", [{"loss.r": "0.5", "trainer.epochs": "1"}], [], [], seeds, data_dir)


def _pool_runs(results: Path, data_dir: Path, seeds: str) -> tuple[runner.Tally, float]:
    points = runner.plan([_tiny(data_dir, seeds)], "smoke", results)
    t0 = time.perf_counter()
    tally = runner.run_points(points, jobs=1, stream=io.StringIO())
    return tally, time.perf_counter() - t0


def _own_process_fixed(results: Path, data_dir: Path, seed: int) -> float:
    args = ["experiment=simloss_age", "profile=smoke", "loss.r=0.5", "trainer.epochs=1", f"seed={seed}",
            "trainer.progress=off", f"results_dir={results}", f"data_dir={data_dir}"]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    (path,) = (results / "runs" / "simloss_age").glob("*.json")
    record = json.loads(path.read_text())
    path.unlink()
    return wall - sum(h.get("time_s", 0.0) for h in record["history"])


def bench_fixed_cost(runs: int = 5, own_runs: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        results, data = Path(tmp) / "r", Path(tmp) / "data"
        _pool_runs(results / "warm", data, "0")
        tally, elapsed = _pool_runs(results / "pool", data, ",".join(str(s) for s in range(1, runs + 1)))
        own = [_own_process_fixed(results / "own", data, 100 + seed) for seed in range(own_runs)]
    train = [w - f for w, f in zip(tally.walls, tally.fixed)]
    fixed = statistics.median(tally.fixed)
    return {"runs": len(tally.walls), "fixed_s": round(fixed, 3), "train_s": round(statistics.median(train), 3),
            "amortised_fixed_s": round((elapsed - sum(train)) / max(1, len(train)), 3),
            "own_process_fixed_s": round(statistics.median(own), 3),
            "ratio_fixed_to_training": round(fixed / max(statistics.median(train), 1e-9), 2),
            "ratio_fixed_to_own_process": round(fixed / statistics.median(own), 3)}


def _reproduce_s(experiments: str, results: Path, data: Path, profile: str = "smoke") -> float:
    args = ["--profile", profile, "--jobs", "2", "--results-dir", str(results), "--data-dir", str(data)]
    args += ["--exp", experiments] if experiments else []
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def bench_noop_rerun(experiments: str = NOOP_EXPERIMENTS) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        first = _reproduce_s(experiments, Path(tmp) / "r", Path(tmp) / "data")
        noop = _reproduce_s(experiments, Path(tmp) / "r", Path(tmp) / "data")
    return {"experiments": experiments, "first_s": round(first, 1), "noop_s": round(noop, 1),
            "ratio_noop_to_first": round(noop / first, 3)}


def bench_profile(profile: str = "default", experiments: str = "") -> dict:
    """A whole profile (all its experiments, or those named) from scratch, then with every config done."""
    with tempfile.TemporaryDirectory() as tmp:
        first = _reproduce_s(experiments, Path(tmp) / "r", Path(tmp) / "data", profile)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        noop = _reproduce_s(experiments, Path(tmp) / "r", Path(tmp) / "data", profile)
    return {"profile": profile, "experiments": experiments or "all", "jobs": 2, "first_s": round(first, 1),
            "first_min": round(first / 60, 2), "peak_memory_mb": round(peak_mb), "noop_s": round(noop, 1)}


SECTIONS = [("fixed_cost_per_run", bench_fixed_cost), ("noop_rerun", bench_noop_rerun)]
if os.environ.get("BENCH_PROFILE") == "1":
    SECTIONS.append(("profile", bench_profile))


if __name__ == "__main__":
    print(json.dumps({name: fn() for name, fn in SECTIONS}, indent=1))
