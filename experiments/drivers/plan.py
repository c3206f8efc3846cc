"""`make reproduce-table PROFILE=paper PLAN=1`: what a profile would run, without training anything.

    python -m experiments.drivers.plan [--profile paper] [--exp name,...] [--data-dir DIR] [--img-per-s RATE]
        [--runs-per-gpu R]

Per experiment (and the tables it fills): every sweep's grid and run count, the maximum epochs, the image-passes
(images a run touches: (train + val) × epochs + test, from the `sizes` each dataset config declares; early
stopping can end a run sooner), the data and weight files it needs, present or MISSING. With `--img-per-s`
(IMG_PER_S: one GPU's training images/s for ResNet-50 at 224 px) each group of runs is priced at its own model's
rate (experiments/drivers/rates.py: measured by `make gpu-check`, else scaled from the model's FLOPs per image,
said so): its GPU-hours with R runs per GPU (RUNS_PER_GPU), the GPU memory of R runs, for streamed datasets the
CPU cores one GPU needs (from the images/s per core `make bench` measured, results/bench/bench.json), and per
experiment the CPU side `make rehearse` measured at full size (loader seconds per epoch, evaluation, host
memory). Nothing is downloaded or decoded, so it runs in seconds.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from experiments.drivers import rates, runner
from experiments.drivers.catalog import PROFILES, discover
from experiments.drivers.train import CONF_DIR, compose_config
from experiments.engine.errors import UserError
from experiments.engine.imbalance import counts_per_rank
from experiments.engine.loss import EngineLoss
from experiments.engine.models import imagenet_checkpoint

PLAN_PREFIXES = ("dataset", "model", "trainer")   # overrides under these change a run's cost: runs are grouped by them
PLAN_KEYS = ("loss",)                             # priced: and by a loss with per-example parameters
REHEARSAL_DIR = Path("/tmp/rehearse/results/rehearse")   # `make rehearse`'s default scratch results folder
BENCH_JSON = Path(__file__).resolve().parents[2] / "results" / "bench" / "bench.json"


def sweep_values(value: str) -> list[str]:
    """Hydra sweep values: split on commas outside brackets and quotes (`[151,226]` is one value)."""
    out, depth, quote, cur = [], 0, "", ""
    for ch in str(value):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    return out + [cur]


def _pool_splits(name: str, ds, declared) -> tuple[tuple[int, int, int], str]:
    """A training pool with validation held out of it (per class or a fraction), then any imbalance; a config
    with fewer classes than declared (CIFAR-100's 96) keeps their share of the pool and test set."""
    k = int(ds.get("classes", declared["classes"]))
    pool, test = (int(declared[s]) * k // int(declared["classes"]) for s in ("pool", "test"))
    val = ds.get("val_per_class", 0) * k or int(round(ds.get("val_fraction", 0.0) * pool))
    train = pool - val
    imb = ds.get("imbalance") or {}
    if imb.get("ratio", 1) != 1:
        train = sum(counts_per_rank(train // k, k, float(imb["ratio"]), imb.get("profile", "exp"),
                                    imb.get("counts", "ldam")))
    return (train, val, test), f"{name}: {pool:,} training images ({val:,} held out for validation, before any imbalance), {test:,} test"


def _declared(ds) -> dict | None:
    """The dataset's own `sizes` declaration (conf/dataset/*.yaml), built when it names a `_target_`."""
    node = ds.get("sizes")
    if node is None:
        return None
    return dict(hydra.utils.instantiate(node) if "_target_" in node else OmegaConf.to_container(node, resolve=True))


def split_sizes(choice: str, ds) -> tuple[tuple[int, int, int] | None, str]:
    """(train, val, test) images of a dataset config, and where the numbers come from: the dataset's declared
    `sizes` — a fixed split (train, val, test), a total cut by `fractions`, or a pool with a held-out validation."""
    scale = float(ds.get("scale", 1.0) or 1.0)
    declared = _declared(ds)
    if declared is None:
        return None, f"{choice}: size unknown to the plan (its config declares no `sizes`)"
    if "pool" in declared:
        sizes, source = _pool_splits(choice, ds, declared)
    elif "total" in declared:
        total, source = int(declared["total"]), declared["source"]
        a, b = ds.get("fractions", (0.6, 0.2, 0.2))[:2]
        cut1, cut2 = int(a * total), int((a + b) * total)
        sizes = (cut1, cut2 - cut1, total - cut2)
    else:
        sizes, source = tuple(int(declared[s]) for s in ("train", "val", "test")), declared["source"]
    return tuple(int(math.ceil(n * scale)) for n in sizes), source


def num_classes(ds) -> int:
    """Classes of a dataset config (`classes`, else its declared `sizes`); 0 when neither says."""
    return int(ds.get("classes") or (_declared(ds) or {}).get("classes", 0) or 0)


def weight_files(model) -> dict[Path, str]:
    """Files a model config loads (torchvision's cached ImageNet checkpoint, `weights_path`) and where from."""
    files = {}
    if model.get("weights") == "imagenet":

        url, path = imagenet_checkpoint(str(model._target_).rsplit(".", 1)[1])
        files[path] = f"model.weights=imagenet; torchvision fetches {url} there when online"
    if model.get("weights_path"):
        files[Path(str(model.weights_path))] = "model.weights_path"
    return files


@dataclass
class Part:
    """One group of runs sharing dataset, model and schedule."""
    label: str
    runs: int
    epochs: int
    sizes: tuple[int, int, int] | None
    source: str
    weights: dict[Path, str] = field(default_factory=dict)
    decode: str | None = None      # streamed datasets (their config has `decode`): the decoder the loader runs
    cfg: object = None             # the composed config of the group (model, dataset, optim, batch size)

    @property
    def passes(self) -> float:
        if self.sizes is None:
            return math.nan
        train, val, test = self.sizes
        return self.runs * ((train + val) * self.epochs + test)


@functools.lru_cache(maxsize=None)
def declares_state(loss_value: str) -> bool:
    """Whether the loss config `conf/loss/<loss_value>.yaml` names a class with per-example parameters of its own
    (it overrides `trained_state`); False for a value that is no file (a glob, a path)."""
    path = CONF_DIR / "loss" / f"{loss_value}.yaml"
    if not path.is_file():
        return False
    cls = hydra.utils.get_class(str(OmegaConf.load(path)._target_))
    return getattr(cls, "trained_state", EngineLoss.trained_state).__func__ is not EngineLoss.trained_state.__func__


def sweep_parts(exp, sweep: dict[str, str], profile: str, data_dir: str | None, cache: dict,
                by_loss: bool = False) -> list[Part]:
    """Runs of one sweep, grouped by the overrides that change data, model or schedule; `by_loss` (pricing), a
    loss with per-example parameters is a group of its own (each group costs a config composition)."""
    grid = {k: sweep_values(v) for k, v in sweep.items() if k != "seed"}
    losses = grid.get("loss", [])
    if by_loss and len(losses) > 1 and any(map(declares_state, losses)):
        rest = ",".join(v for v in losses if not declares_state(v))
        subs = [{**sweep, "loss": v} for v in losses if declares_state(v)]
        subs += [{**sweep, "loss": rest}] if rest else []
        return [part for sub in subs for part in sweep_parts(exp, sub, profile, data_dir, cache, by_loss)]
    seeds = len(sweep_values(sweep.get("seed", exp.seeds)))
    keys = PLAN_KEYS if by_loss and len(losses) == 1 and declares_state(losses[0]) else ()
    relevant = [k for k in grid if k.lstrip("~+").split(".")[0] in PLAN_PREFIXES or k.lstrip("~+") in keys]
    per_group = seeds * math.prod(len(v) for k, v in grid.items() if k not in relevant)
    parts = []
    for combo in itertools.product(*(grid[k] for k in relevant)):
        overrides = tuple(f"{k}={v}" for k, v in zip(relevant, combo))
        if overrides not in cache:
            base = [f"experiment={exp.name}", f"profile={profile}"] + ([f"data_dir={data_dir}"] if data_dir else [])
            cache[overrides] = compose_config(base + list(overrides))
        cfg, choices = cache[overrides]
        sizes, source = split_sizes(choices["dataset"], cfg.dataset)
        label = ", ".join(f"{k.split('.')[-1] if k != 'dataset' else ''}{'=' if k != 'dataset' else ''}{v}"
                          for k, v in zip(relevant, combo) if not k.startswith("~")) or choices["dataset"]
        parts.append(Part(label, per_group, int(cfg.trainer.epochs), sizes, source, weight_files(cfg.model),
                          cfg.dataset.get("decode"), cfg))
    return parts


def _grid_line(sweep: dict[str, str], seeds: str) -> str:
    shown = {k: sweep_values(v) for k, v in sweep.items() if not k.startswith("~")}
    shown.setdefault("seed", sweep_values(seeds))
    return " × ".join(f"{k} ∈ {{{', '.join(v)}}}" if len(v) > 1 else f"{k}={v[0]}" for k, v in shown.items())


def _files(exp, parts: list[Part]) -> list[tuple[Path, str, bool]]:
    """(path, what/where from, present) for every data and weight file of an experiment."""
    out = {}
    for spec in exp.tables:
        for item in spec.requires_data:
            path, _, source = item.partition(" ")
            out[exp.data_dir / path] = source or "dataset"
    for part in parts:
        out.update(part.weights)
    return [(p, src, p.exists()) for p, src in out.items()]


def _bench_loader(bench: Path | None = None) -> dict | None:
    try:
        return json.loads((bench or BENCH_JSON).read_text())["loader"]
    except (OSError, ValueError, KeyError):
        return None


def per_core_rates(decoder: str, bench: Path | None = None) -> dict[str, float]:
    """{JPEG size: images/s per core} that `make bench` measured for a decoder's streamed path (with workers)."""
    loader = _bench_loader(bench) or {}
    return {size: float(list(sec[decoder].values())[-1]["img_per_s_per_core"]) for size, sec in loader.items()
            if isinstance(sec, dict) and decoder in sec}


def loader_cores(decoders: set[str], rate: float, bench: Path | None = None) -> str:
    """'; loader: …' — the CPU cores one GPU at `rate` images/s needs to stream these decoders' datasets:
    rate / (images/s per core that `make bench` measured with workers, per JPEG size); '' when nothing streams."""
    if not decoders:
        return ""
    loader = _bench_loader(bench)
    if loader is None:
        return "; loader CPU cores per GPU, and the cap the loader puts on the rate: run `make bench` to measure"
    found = []
    for dec in sorted(decoders):
        per_core = per_core_rates(dec, bench)
        found.append(f"{dec} path: " + (", ".join(f"{math.ceil(rate / r)} at {size} ({r:g} img/s per core)"
                                                  for size, r in per_core.items()) or "not measured by make bench"))
    return f"; loader CPU cores per GPU (make bench, {loader.get('cpu_capability', '?')}): {'; '.join(found)}"


def cores_per_gpu() -> tuple[int, str]:
    """Host cores one GPU has: CORES_PER_GPU if set, else the SLURM launcher config's cpus_per_task / gpus_per_node
    (conf/hydra/launcher/slurm.yaml), and where the number comes from."""
    value = os.environ.get("CORES_PER_GPU", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"CORES_PER_GPU={value!r}: give the host cores of one GPU (an integer ≥ 1)")
        return int(value), "CORES_PER_GPU"
    slurm = OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "slurm.yaml")
    return max(1, int(slurm.cpus_per_task) // max(1, int(slurm.gpus_per_node))), "conf/hydra/launcher/slurm.yaml"


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def plan_experiment(exp, profile: str, data_dir: str | None, rate: float | None, out,
                    runs_per_gpu: int = 1) -> tuple[int, float, float, list]:
    """Print one experiment's plan; returns (runs, image-passes, GPU-hours or nan, missing files)."""
    cache: dict = {}
    tables = ", ".join(s.name for s in exp.tables)
    out("")
    out(f"{exp.name} (tables: {tables}) — {exp.tables[0].title if exp.tables else ''}")
    parts_all, hours, priced = [], 0.0, Pricing(rate, runs_per_gpu) if rate else None
    for i, sweep in enumerate(exp.sweeps or [{}], 1):
        parts = sweep_parts(exp, sweep, profile, data_dir, cache, by_loss=priced is not None)
        parts_all += parts
        out(f"  sweep {i}: {_grid_line(sweep, exp.seeds)} = {sum(p.runs for p in parts)} runs")
        for p in parts:
            size = "size unknown" if p.sizes is None else "train/val/test " + " / ".join(f"{n:,}" for n in p.sizes)
            out(f"    {p.label}: {p.runs} runs × ≤ {p.epochs} epochs, {size} → {_fmt(p.passes)} image-passes")
            if priced:
                h, line = priced.part(p)
                hours += h
                out(f"      {line}")
    runs, passes = sum(p.runs for p in parts_all), sum(p.passes for p in parts_all)
    total = f", {hours:,.1f} GPU-hours" if priced else ""
    out(f"  total: {runs} runs, {_fmt(passes)} image-passes{total}")
    if priced:
        out(f"  per GPU: memory ≥ {priced.gpu_gb:.2g} GB (weights, gradients, optimizer state, leaf activations at "
            f"the batch size, a loss's per-example parameters such as ROLE's table, × runs per GPU); "
            f"rates: {priced.basis()}")
        out(rehearsal_line(exp.name))
    for src in dict.fromkeys(p.source for p in parts_all):
        out(f"  sizes: {src}")
    files = _files(exp, parts_all)
    for path, src, present in files:
        out(f"  {'present' if present else 'MISSING'}: {path} ({src})")
    return runs, passes, (hours if priced else math.nan), [(path, src) for path, src, present in files if not present]


def rehearsal_line(exp_name: str, folder: Path | None = None) -> str:
    """The measured CPU side of one epoch from `make rehearse`'s full-size report (a scratch folder, default
    REHEARSAL_DIR): per config, the loader's seconds per epoch at its images/s, a training step with the stand-in
    model (the loss, its per-example state and the optimizer: ROLE's table shows here), the evaluation's seconds
    (val + test, every metric), the peak host memory of the run process and of its loader workers."""
    path = (folder or REHEARSAL_DIR) / f"{exp_name}-full.json"
    try:
        rows = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return f"  CPU side per epoch: not measured (make rehearse EXP={exp_name} writes {path})"
    parts = []
    for r in rows:
        if not r.get("loader_img_s"):
            continue
        loader_s = r["train"] / r["loader_img_s"]
        host = max(r.get("peak_process_mb") or 0, r.get("peak_data_process_mb") or 0) / 1024
        label = " ".join(t for t in r["config"].split() if t.startswith(("dataset=", "loss="))) or r["config"]
        parts.append(f"{label} on {r['train']:,} × {r['classes']:,}: loader {loader_s:,.0f} s "
                     f"({r['loader_img_s']:,.0f} img/s), " + (f"training step with the stand-in model "
                     f"{r['step_s']} s ({r['epoch_est_s']:,.0f} s/epoch), " if r.get("step_s") else "")
                     + f"evaluation {r.get('eval_s', '?')} s, host peak "
                     f"{host:.1f} GB + workers {(r.get('peak_worker_mb') or 0) / 1024:.1f} GB")
    return ("  CPU side per epoch (make rehearse at full size, stand-in model, this machine): "
            + ("; ".join(parts) or "no rows"))


COSTS: dict = {}       # model costs by model_key, shared by every experiment of a plan (counting them is not free)


class Pricing:
    """GPU time, memory and loader cores of each group of runs, at its model's own rate (experiments/drivers/
    rates.py: measured by `make gpu-check`, else scaled from FLOPs from IMG_PER_S, the reference model's rate)."""

    def __init__(self, ref_img_per_s: float, runs_per_gpu: int = 1, measured: dict | None = None) -> None:
        self.ref, self.share = ref_img_per_s, runs_per_gpu
        self.measured = rates.measured_rates() if measured is None else measured
        self.cache = COSTS
        self.gpu_gb = 0.0
        self.cores, self.cores_from = cores_per_gpu()

    def basis(self) -> str:
        return (f"measured by make gpu-check where it ran (results/gpu_check/rates.json), else IMG_PER_S={self.ref:g} "
                f"images/s of resnet50@224px scaled by FLOPs per image plus {rates.STEP_OVERHEAD_S * 1e3:g} ms per "
                f"step assumed; {self.share} run(s) per GPU; {self.cores} host cores per GPU ({self.cores_from})")

    def part(self, p: Part) -> tuple[float, str]:
        """(GPU-hours, one line) for a group of runs; also keeps the experiment's largest memory and cores."""
        cfg = p.cfg
        batch, states = int(cfg.trainer.batch_size), rates.optimizer_states(cfg.optim)
        rate, cost = rates.rate_for(cfg.model, cfg.dataset, batch, self.ref, self.measured, self.cache)
        rate, table, table_note = self.with_loss_state(p, rate, batch, states)
        rate, loader_note = self.loader_cap(p, rate)
        together = rate.shared(self.share)
        hours = p.passes / together / 3600
        gpu_gb = rates.gpu_memory_gb(cost, batch, states, table) * self.share
        self.gpu_gb = max(self.gpu_gb, gpu_gb)
        fill = min(math.ceil(1 / rate.busy()), self.cores)
        hint = (f"; RUNS_PER_GPU={fill} would fill it (≤ 1 host core per run)"
                if fill > self.share and not loader_note else "")
        cores = loader_cores({p.decode}, together) if p.decode else ""
        key = rates.model_key(cfg.model, rates.input_size(cfg.model, cfg.dataset)[1])
        return hours, (f"{key}: {cost.flops / 1e9:.3g} GFLOPs/img, {cost.params / 1e6:.3g} M params → "
                       f"{rates.fmt_rate(rate.img_per_s)} img/s per run at batch {batch} ({rate.basis}"
                       f"; the GPU computes {rate.busy():.0%} of a step{hint}); {self.share} per GPU: "
                       f"{hours:,.1f} GPU-hours, GPU memory ≥ {gpu_gb:.2g} GB{table_note}{loader_note}{cores}")

    @staticmethod
    def with_loss_state(p: Part, rate: rates.Rate, batch: int, states: int) -> tuple[rates.Rate, int, str]:
        """The rate with the GPU traffic of the loss's per-example parameters (its `trained_state`), their floats,
        and a note saying so ('' for a loss without any)."""
        n, c = (p.sizes or (0,))[0], num_classes(p.cfg.dataset)
        declare = getattr(hydra.utils.get_class(str(p.cfg.loss._target_)), "trained_state", None)
        floats, per_step = declare(p.cfg.loss, n, c, batch) if declare and n and c else (0, 0)
        if not floats:
            return rate, 0, ""
        seconds, moved = rates.table_traffic(per_step, states)
        note = (f"; the loss's per-example parameters: {floats:,} floats ({rates.BYTES * floats / 2**30:.2g} GB, "
                f"with gradient and {states} optimizer state(s) in the memory above), {moved / 2**30:.2g} GB moved "
                f"per step ≈ {seconds * 1e3:.2g} ms at {rates.GPU_BYTES_PER_S / 1e12:g} TB/s (assumed), in the rate")
        return rate.plus_gpu_work(seconds, batch, "per-example parameter traffic"), floats, note

    def loader_cap(self, p: Part, rate: rates.Rate) -> tuple[rates.Rate, str]:
        """A streamed dataset's run goes no faster than its loader: `make bench`'s images/s per core (the slower
        JPEG size) × the host cores of one run (cores per GPU / runs per GPU). In-memory datasets are moved to the
        GPU and augmented there: no host loader to cap them."""
        if not p.decode:
            return rate, ""
        per_core = per_core_rates(p.decode)
        if not per_core:
            return rate, ""
        slowest, cores = min(per_core.values()), self.cores / self.share
        capped = rate.capped(slowest * cores, f"the loader ({cores:g} cores × {slowest:,.0f} img/s per core, "
                                              f"{p.decode}, make bench)")
        if capped is rate:
            return rate, ""
        return capped, ("; loader-bound: more runs per GPU share the same host cores; more cores per GPU "
                        "(CORES_PER_GPU) or a faster dataset.decode would speed it")


def main(profile: str = "paper", exps: list[str] | None = None, data_dir: str | None = None,
         img_per_s: float | None = None, out=print, runs_per_gpu: int | None = None) -> int:
    """Print the plan of a profile: 0, or 2 after one `error:` line for bad input (missing files are listed)."""
    try:
        return _plan(profile, exps, data_dir, img_per_s, out, runs_per_gpu)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _plan(profile: str, exps: list[str] | None, data_dir: str | None, img_per_s: float | None, out,
          runs_per_gpu: int | None = None) -> int:
    if runs_per_gpu is None:
        runs_per_gpu = runner.runs_per_gpu_from_env() or 1
    if img_per_s is not None and img_per_s <= 0:
        raise UserError(f"IMG_PER_S={img_per_s}: give the measured images per second of one GPU (> 0) for "
                        f"resnet50 at 224 px")
    if runs_per_gpu < 1:
        raise UserError(f"RUNS_PER_GPU={runs_per_gpu}: give the number of runs sharing one GPU (≥ 1)")
    out(f"PLAN PROFILE={profile}: nothing is trained; epochs are maxima (early stopping may end runs sooner); "
        f"image-passes = runs × ((train + val) × epochs + test)")
    total_runs, total_passes, total_hours, missing = 0, 0.0, 0.0, []
    for exp in discover(profile, exps or None, data_dir):
        runs, passes, hours, miss = plan_experiment(exp, profile, data_dir, img_per_s, out, runs_per_gpu)
        total_runs, total_passes, total_hours = total_runs + runs, total_passes + passes, total_hours + hours
        missing += miss
    hours = f", {total_hours:,.1f} GPU-hours" if img_per_s else " (IMG_PER_S=<rate> adds GPU-hours)"
    out("")
    out(f"ALL: {total_runs} runs, {_fmt(total_passes)} image-passes{hours}")
    for path, src in dict.fromkeys(missing):
        out(f"  MISSING {path} ({src})")
    return 0


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper", choices=PROFILES)
    ap.add_argument("--exp", default="", help="comma-separated experiment names (default: all of the profile)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--img-per-s", type=float, default=None,
                    help="images/s of one GPU training resnet50 at 224 px (large batch), for GPU-hours")
    ap.add_argument("--runs-per-gpu", type=int, default=None, help="runs sharing one GPU (default: RUNS_PER_GPU or 1)")
    args = ap.parse_args(argv)
    return main(args.profile, [e for e in args.exp.split(",") if e], args.data_dir, args.img_per_s,
                runs_per_gpu=args.runs_per_gpu)


if __name__ == "__main__":
    sys.exit(cli())
