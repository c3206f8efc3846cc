"""`make rehearse EXP=<paper experiment> DATA=<folder>`: a paper experiment at its datasets' real sizes, on
generated data, through the real code path, measured.

    python -m experiments.drivers.rehearse --exp avgk_paper --data /tmp/rehearse-data [--scale full|small]
        [--results DIR] [--only loss=role] [--limit N] [--loader-batches 50] [--set trainer.num_workers=4]

1. Every dataset folder the experiment requires (`requires_data`) that is absent under DATA is written by its
   generator (conf/local/rehearse_data.yaml: a `_target_` per folder and scale) in the real on-disk format at
   the real counts with tiny images; generation time and disk use are printed.
2. The experiment is planned as PROFILE=paper plans it (experiments.drivers.runner.plan), with `local=rehearse`
   (conf/local/rehearse.yaml: a small stand-in model), one seed, `budget` small enough for one epoch, and the
   scale's dataset keys on every sweep whose dataset has them. Sweeps whose data has no generator are refused
   as ALLOW_MISSING refuses them. One config per (dataset, loss) is kept (`--only` and `--limit` narrow it).
3. Each kept config runs in its own process: the dataset build (listing and indexing), the first training
   batch, the loader's images/s over `--loader-batches` batches, the final evaluation (validation fit + test,
   every metric) of the untrained model with its memory, then the run itself through `runner.execute` (train,
   validate, select, test, record). Then tables and figures render in another process (`reproduce`'s renderer).
4. The figures are printed and written to RESULTS/rehearse/<exp>-<scale>.json.
The runs are rehearsals: random pixels, one epoch; their numbers mean nothing and RESULTS must not be results/.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from experiments.drivers import missing as data_missing
from experiments.drivers import runner
from experiments.drivers.catalog import ROOT, Experiment, discover
from experiments.drivers.train import CONF_DIR, _validated, compose_config
from experiments.engine.checkpoint import atomic_write
from experiments.engine.errors import UserError
from experiments.drivers.plan import sweep_values
from experiments.drivers.reproduce import render_everything
from experiments.engine.config import build_components
from experiments.engine.data import make_loader
from experiments.engine.evaluation import Evaluator, autocast_for
from experiments.engine.process import configure_process, seed_everything
from experiments.engine.trainer import Trainer

SETTINGS = CONF_DIR / "local" / "rehearse_data.yaml"
SCALES = ("full", "small")
BUDGET = 1e-6           # every epoch-valued option × BUDGET rounds up to 1: one epoch, milestones at 1
MB = 2**20


def settings(scale: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(SETTINGS), resolve=True)[scale]


# ---------------------------------------------------------------------- 1. data
def generate_missing(exp: Experiment, generators: dict, out=print) -> list[dict]:
    """Write every required folder that is absent and has a generator; returns what each wrote."""
    import hydra.utils

    written = []
    for spec in exp.tables:
        for item in spec.requires_data:
            rel = item.partition(" ")[0]
            path = exp.data_dir / rel
            if path.exists():
                continue
            if rel not in generators:
                out(f"  no generator for {rel}: the configs that read it are refused (data missing)")
                continue
            out(f"  generating {path} ...")
            done = hydra.utils.instantiate(generators[rel], root=str(path))
            out(f"  wrote {done.line()}")
            written.append(vars(done))
    return written


# ---------------------------------------------------------------------- 2. plan
def rehearsal_overrides(exp: Experiment, profile: str, dataset_keys: dict, extra: list[str]) -> None:
    """One seed, `local=rehearse`, one epoch, `extra` overrides, and on each sweep the scale's dataset keys its
    dataset has."""
    exp.seeds = "0"
    exp.overrides += ["local=rehearse", f"budget={BUDGET!r}", *extra]
    for sweep in exp.sweeps or [{}]:
        first = [f"{k}={runner_first(v)}" for k, v in sweep.items() if k != "seed"]
        cfg, _ = compose_config([f"experiment={exp.name}", f"profile={profile}", f"data_dir={exp.data_dir}",
                                 "local=rehearse", *first])
        sweep.update({f"dataset.{k}": ("null" if v is None else str(v))
                      for k, v in dataset_keys.items() if k in cfg.dataset})
    if not exp.sweeps:
        exp.sweeps = [sweep]


def runner_first(value: str) -> str:

    return sweep_values(value)[0]


def _loss_of(point: runner.Point) -> str:
    return next((o.split("=", 1)[1] for o in point.overrides if o.startswith("loss=")), "")


def short_label(point: runner.Point, added: dict) -> str:
    """The point's sweep values, without the keys the rehearsal added, deletions and the seed."""
    skip = tuple(f"dataset.{k}=" for k in added) + ("~", "seed=")
    return " ".join(o for o in point.label.split() if not o.startswith(skip)) or point.exp


def choose(points: list[runner.Point], only: list[str], limit: int | None) -> list[runner.Point]:
    """Pending configs, one per (dataset, loss), those whose label holds every `only` string, at most `limit`."""
    kept, seen = [], set()
    for p in points:
        key = (p.dataset_key, _loss_of(p))
        if p.state != "pending" or key in seen or not all(s in p.label for s in only):
            continue
        seen.add(key)
        kept.append(p)
    return kept[:limit] if limit else kept


# ---------------------------------------------------------------------- 3. measure
def _peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def measure_data(cfg, loader_batches: int) -> dict:
    """Dataset build, first batch, loader images/s, and the final evaluation of the untrained model."""
    import torch

    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    data, loss, model, metrics = build_components(cfg)
    out = {"build_s": round(time.perf_counter() - t0, 2), "train": len(data.train), "val": len(data.val),
           "test": len(data.test), "classes": data.meta.num_classes, "peak_after_build_mb": _peak_mb()}
    bs, workers = int(cfg.trainer.batch_size), int(cfg.trainer.num_workers)
    loader = make_loader(data, "train", bs, cpu, train=True, generator=torch.Generator().manual_seed(0),
                         num_workers=workers)
    t0 = time.perf_counter()
    batches = iter(loader)
    next(batches)
    out["first_batch_s"] = round(time.perf_counter() - t0, 3)
    n, t0 = 0, time.perf_counter()
    for _ in range(min(loader_batches, len(loader) - 1)):
        n += len(next(batches).y)
    out["loader_img_s"] = round(n / max(time.perf_counter() - t0, 1e-9), 1) if n else None
    del batches, loader
    before = _peak_mb()
    evaluator = Evaluator(int(cfg.trainer.eval_batch_size), cpu, False, workers, autocast_for(False, "bfloat16", cpu))
    t0 = time.perf_counter()
    evaluator.final(model, loss, data, metrics)
    out.update(eval_s=round(time.perf_counter() - t0, 2), eval_peak_growth_mb=round(_peak_mb() - before, 1))
    return out


def measure_point(overrides: list[str], carried, loader_batches: int) -> dict:
    """In a fresh process: `measure_data`, then the run itself (runner.execute), with peak memory."""
    composer = runner.Composer()
    cfg, _ = composer(overrides)
    out = measure_data(cfg, loader_batches)
    gc.collect()
    t0 = time.perf_counter()
    result = runner.execute(overrides, composer, carried)
    out.update(status=result["status"], error=result.get("error", ""), run_wall_s=round(time.perf_counter() - t0, 2),
               train_epoch_s=round(result.get("train_s", 0.0), 2), peak_process_mb=_peak_mb(),
               peak_worker_mb=_peak_mb(resource.RUSAGE_CHILDREN))
    return out


def measure_steps(overrides: list[str], steps: int) -> dict:
    """In a fresh process: the run's trainer (real optimizers, schedule, loss state) for `steps` training batches
    of its first epoch, then the checkpoint an interruption writes. Per-step time is the median over the steps
    after the first; `epoch_est_s` is that times the epoch's batches. For an epoch too long for a CPU: nothing is
    recorded, so there is no run JSON or table."""
    import tempfile

    import torch

    cfg, _ = runner.Composer()(overrides)
    tcfg, ocfg, schedule = _validated(cfg)
    configure_process(tcfg)
    seed_everything(int(cfg.seed), tcfg.deterministic)
    data, loss, model, metrics = build_components(cfg)
    marks: list[float] = []

    def stop() -> str | None:
        marks.append(time.perf_counter())
        return "rehearsal steps" if len(marks) > steps else None

    with tempfile.TemporaryDirectory(prefix="rehearse-") as work:
        trainer = Trainer(tcfg, ocfg, Path(work), int(cfg.seed), log=lambda *a, **k: None, schedule=schedule)
        fit = trainer.fit(model, loss, data, metrics, stop=stop)
        end = time.perf_counter()
        ckpt = sum(p.stat().st_size for p in Path(work).rglob("*") if p.is_file())
    gaps = sorted(b - a for a, b in zip(marks[1:], marks[2:]))
    step_s = gaps[len(gaps) // 2] if gaps else None
    batches = -(-len(data.train) // int(tcfg.batch_size))
    return {"status": "steps" if fit.interrupted else "completed", "steps": len(marks) - 1,
            "step_s": round(step_s, 4) if step_s else None,
            "epoch_est_s": round(step_s * batches, 1) if step_s else None,
            "checkpoint_s": round(end - marks[-1], 2), "checkpoint_mb": round(ckpt / MB, 1),
            "peak_process_mb": _peak_mb(), "peak_worker_mb": _peak_mb(resource.RUSAGE_CHILDREN),
            "torch_threads": torch.get_num_threads()}


def measure_only_data(overrides: list[str], loader_batches: int) -> dict:

    cfg, _ = runner.Composer()(overrides)
    configure_process(_validated(cfg)[0])
    out = measure_data(cfg, loader_batches)
    out["peak_data_process_mb"] = _peak_mb()
    return out


def render_in_child(exp_names: list[str], data_dir: str, results_dir: str, planned: set[str]) -> dict:
    """Tables and figures of the rehearsal's runs (`planned`), as reproduce renders them, timed, with peak
    memory."""
    exps = discover("paper", exp_names, data_dir)
    t0 = time.perf_counter()
    summary, figures, errors = render_everything(exps, Path(results_dir), BUDGET, False, planned)
    return {"render_s": round(time.perf_counter() - t0, 2), "tables": len(summary), "figures": len(figures),
            "errors": errors, "peak_render_mb": _peak_mb()}


def _child(fn, args, queue) -> None:
    try:
        queue.put(fn(*args))
    except BaseException as e:  # noqa: BLE001 — reported as this config's failure
        queue.put({"status": "failed", "error": runner._one_line(e), "errors": [runner._one_line(e)]})


def in_child(fn, *args) -> dict:
    """`fn(*args)` in a spawned, non-daemon process (it may start loader workers; a clean peak-memory count)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    try:
        return queue.get()
    finally:
        proc.join()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# ---------------------------------------------------------------------- 4. report
COLUMNS = (("config", "config"), ("train", "train"), ("classes", "classes"), ("build_s", "listing+index s"),
           ("first_batch_s", "first batch s"), ("loader_img_s", "loader img/s"), ("eval_s", "eval s"),
           ("eval_peak_growth_mb", "eval +MB"), ("train_epoch_s", "epoch s"), ("step_s", "step s"),
           ("epoch_est_s", "epoch est. s"), ("checkpoint_mb", "ckpt MB"), ("checkpoint_s", "ckpt s"),
           ("peak_process_mb", "peak MB"),
           ("peak_worker_mb", "worker MB"), ("json_kb", "run JSON KB"), ("status", "status"))


def table(rows: list[dict]) -> list[str]:
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r.get(k, ''):,}" if isinstance(r.get(k), (int, float)) else str(r.get(k, ""))
                                        for k, _ in COLUMNS) + " |")
    return lines


def rehearse(exp_name: str, data: Path, results: Path, scale: str, only: list[str] = (), limit: int | None = None,
             loader_batches: int = 50, extra: list[str] = (), out=print, steps: int | None = None) -> dict:
    if results.resolve() == (ROOT / "results").resolve():
        raise UserError(f"RESULTS={results} is the project's results folder; give a scratch folder "
                        f"(e.g. RESULTS=/tmp/rehearse/results): rehearsal runs mean nothing")
    conf = settings(scale)
    exps = discover("paper", [exp_name], str(data))
    exp = exps[0]
    out(f"rehearse {exp_name} ({scale}) on {data}")
    written = generate_missing(exp, conf["generators"], out)
    rehearsal_overrides(exp, "paper", conf["dataset"], extra)
    t0 = time.perf_counter()
    points = runner.plan(exps, "paper", results)
    data_missing.refuse_missing(points, exps)
    kept = choose(points, only, limit)
    out(f"  planned {len(points)} configs in {time.perf_counter() - t0:.1f} s; rehearsing {len(kept)}")
    rows = []
    for p in kept:
        label = short_label(p, conf["dataset"])
        out(f"  running {label}")
        if steps:
            row = {"config": label, **in_child(measure_only_data, p.overrides, loader_batches),
                   **in_child(measure_steps, p.overrides, steps)}
        else:
            row = {"config": label, **in_child(measure_point, p.overrides, p.carried, loader_batches)}
        row["json_kb"] = round(p.path.stat().st_size / 1024, 1) if p.path.exists() else None
        rows.append(row)
    render = in_child(render_in_child, [exp_name], str(data), str(results),
                      {p.run_id for p in points if p.run_id})
    render["tables_kb"] = round(folder_bytes(results / "tables") / 1024, 1)
    report = {"experiment": exp_name, "scale": scale, "data": str(data), "generated": written, "runs": rows,
              "render": render}
    for line in table(rows):
        out(line)
    out(f"  render: {render['tables']} tables, {render['figures']} figures in {render['render_s']} s, peak "
        f"{render['peak_render_mb']} MB, tables {render['tables_kb']} KB" + "".join(
            f"\n  error: {e}" for e in render["errors"]))
    atomic_write(results / "rehearse" / f"{exp_name}-{scale}.json", json.dumps(report, indent=1).encode())
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", required=True, help="a paper experiment (conf/experiment/*_paper.yaml)")
    ap.add_argument("--data", required=True, help="folder of the generated datasets (written where absent)")
    ap.add_argument("--results", default="/tmp/rehearse/results", help="scratch results folder")
    ap.add_argument("--scale", default="full", choices=SCALES)
    ap.add_argument("--only", default="", help="comma-separated strings every kept config's label holds")
    ap.add_argument("--limit", type=int, default=None, help="at most this many configs")
    ap.add_argument("--set", action="append", default=[], help="an override for every run, e.g. trainer.num_workers=4")
    ap.add_argument("--steps", type=int, default=None,
                    help="train this many batches of the first epoch instead of running it whole (no run recorded)")
    ap.add_argument("--loader-batches", type=int, default=50, help="batches timed for the loader's images/s")
    args = ap.parse_args(argv)
    try:
        report = rehearse(args.exp, Path(args.data).absolute(), Path(args.results).absolute(), args.scale,
                          [s for s in args.only.split(",") if s], args.limit, args.loader_batches, args.set,
                          steps=args.steps)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = [r for r in report["runs"] if r.get("status") not in ("completed", "steps")] or report["render"]["errors"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
