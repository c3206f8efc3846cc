"""The shared trainer: train → select on validation → test the selected checkpoint once.

It talks to the loss only through `experiments.losses.base.EngineLoss` hooks and to metrics only through
`experiments.metrics.Metric`; it never names a loss, dataset or paper.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from experiments.data import Data, atomic_torch_save, make_loader
from experiments.errors import RunFailed, UserError
from experiments.losses.base import EngineLoss
from experiments.metrics import EvalOutputs, Metric, measure_of
from experiments.progress import Progress


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    patience: int | None = None
    select_metric: str = "val/accuracy"
    select_mode: str = "auto"
    device: str = "auto"
    num_workers: int = 2
    cpu_threads: int | None = None
    deterministic: bool = False
    amp: bool = False
    amp_dtype: str = "bfloat16"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    progress: str = "auto"
    keep_checkpoint: str = "best"
    interrupt_after: int | None = None

    def check(self) -> None:
        if self.epochs < 1:
            raise UserError(f"trainer.epochs={self.epochs}: must be ≥ 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("trainer.batch_size and trainer.eval_batch_size must be ≥ 1")
        if self.patience is not None and self.patience < 1:
            raise UserError(f"trainer.patience={self.patience}: must be ≥ 1 or null (no early stopping)")
        if self.select_metric != "last" and not self.select_metric.startswith("val/"):
            raise UserError(f"trainer.select_metric={self.select_metric}: select on a validation metric "
                            f"(val/<name>) or `last`; never on test")
        choices = {"select_mode": ("auto", "min", "max"), "amp_dtype": ("bfloat16", "float16"),
                   "progress": ("auto", "on", "off"), "keep_checkpoint": ("best", "none")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"trainer.{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            raise UserError(f"trainer.device={self.device!r}: use auto, cpu, cuda or cuda:<n>")


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "constant"
    warmup_epochs: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    factors: list[float] | None = None

    def check(self) -> None:
        if self.name not in ("adam", "sgd", "adamw"):
            raise UserError(f"optim.name={self.name!r}: choose adam, adamw or sgd")
        if self.schedule not in ("constant", "multistep", "cosine"):
            raise UserError(f"optim.schedule={self.schedule!r}: choose constant, multistep or cosine")
        if self.lr <= 0 or self.weight_decay < 0:
            raise UserError(f"optim.lr={self.lr}, optim.weight_decay={self.weight_decay}: need lr > 0, wd ≥ 0")
        if sorted(self.milestones) != list(self.milestones):
            raise UserError(f"optim.milestones={list(self.milestones)}: must be increasing epochs")
        if self.factors is not None and len(self.factors) != len(self.milestones):
            raise UserError(f"optim.factors has {len(self.factors)} entries but optim.milestones has "
                            f"{len(self.milestones)}; give one factor per milestone")

    def lr_factor(self, epoch: int, epochs: int) -> float:
        """Multiplier of the base lr during `epoch` (0-based)."""
        f = 1.0
        if self.schedule == "multistep":
            passed = sum(epoch >= m for m in self.milestones)
            if passed:
                f = self.factors[passed - 1] if self.factors is not None else self.gamma ** passed
        elif self.schedule == "cosine":
            span = max(epochs - self.warmup_epochs, 1)
            f = 0.5 * (1 + math.cos(math.pi * max(epoch - self.warmup_epochs, 0) / span))
        if epoch < self.warmup_epochs:
            f *= (epoch + 1) / self.warmup_epochs
        return f


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA device is visible; use trainer.device=auto or cpu")
    return dev


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _rng_state(gen: torch.Generator) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "data": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class FitResult:
    metrics: dict[str, float]
    details: dict[str, Any]
    history: list[dict[str, float]]
    selected_epoch: int
    device: str
    interrupted: bool = False


class Trainer:
    def __init__(self, cfg: TrainerConfig, optim: OptimConfig, workdir: Path, seed: int, log: Callable = print):
        cfg.check()
        optim.check()
        self.cfg, self.optim_cfg, self.workdir, self.seed, self.log = cfg, optim, Path(workdir), seed, log
        self.device = resolve_device(cfg.device)

    # ------------------------------------------------------------------ building blocks
    def _optimizers(self, model: nn.Module, loss: EngineLoss) -> dict[str, torch.optim.Optimizer]:
        o = self.optim_cfg
        opts = {}
        for i, name in enumerate(loss.optimizer_names):
            groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
            if i == 0:
                for g in loss.param_groups():
                    g = dict(g)
                    g["lr"] = o.lr * g.pop("lr_mult", 1.0)
                    groups.append(g)
            if o.name == "sgd":
                opts[name] = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                             weight_decay=o.weight_decay)
            else:
                cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
                opts[name] = cls(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        return opts

    def _autocast(self):
        if self.cfg.amp and self.device.type == "cuda":
            dtype = torch.bfloat16 if self.cfg.amp_dtype == "bfloat16" else torch.float16
            return lambda: torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loss: EngineLoss, data: Data, split: str) -> EvalOutputs | None:
        if len(data.splits()[split]) == 0:
            return None
        model.eval()
        loader = make_loader(data, split, self.cfg.eval_batch_size, self.device, train=False,
                             num_workers=self.cfg.num_workers)
        outs: dict[str, list[torch.Tensor]] = {}
        targets, total, n = [], 0.0, 0
        autocast = self._autocast()
        for batch in loader:
            batch = batch.to(self.device, self.cfg.channels_last)
            with autocast():
                out = model(batch.x)
                value = loss.eval_objective(out, batch)
            total += value.float().item() * len(batch.y)
            n += len(batch.y)
            for k, v in out.items():
                outs.setdefault(k, []).append(v.float().cpu())
            targets.append(batch.y.cpu())
        outputs = {k: torch.cat(v) for k, v in outs.items()}
        return EvalOutputs(outputs=outputs, scores=loss.scores(outputs), targets=torch.cat(targets),
                           loss=total / max(n, 1), kinds=dict(loss.score_kinds), prediction=loss.predict(outputs))

    @staticmethod
    def compute_metrics(out: EvalOutputs, metrics: dict[str, Metric], meta, split: str,
                        states: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        scalars: dict[str, float | None] = {f"{split}/loss": out.loss}
        details: dict[str, Any] = {}
        for name, metric in metrics.items():
            for k, v in metric(out, meta, states.get(name)).items():
                if isinstance(v, (list, tuple, dict)):
                    details[f"{split}/{k}"] = v
                else:  # NaN (undefined, e.g. an empty shot group) is stored as null
                    scalars[f"{split}/{k}"] = None if v is None or math.isnan(float(v)) else float(v)
        return scalars, details

    def select_mode(self, metrics: dict[str, Metric]) -> str:
        """`min`/`max` for the selection metric: as configured, or (auto) from the metric's declared direction."""
        cfg = self.cfg
        if cfg.select_mode != "auto" or cfg.select_metric == "last":
            return "max" if cfg.select_mode == "auto" else cfg.select_mode
        measure = measure_of(metrics, cfg.select_metric)
        if measure is None or measure.higher_is_better is None:
            raise UserError(f"trainer.select_metric={cfg.select_metric}: no metric of this run reports it with a "
                            f"declared direction; pick another (e.g. val/accuracy) or set trainer.select_mode=min|max")
        return "max" if measure.higher_is_better else "min"

    @staticmethod
    def _better(value: float, best: float | None, mode: str) -> bool:
        if best is None or (math.isnan(best) and not math.isnan(value)):
            return True
        if math.isnan(value):
            return False
        return value < best if mode == "min" else value > best

    # ------------------------------------------------------------------ the loop
    def fit(self, model: nn.Module, loss: EngineLoss, data: Data, metrics: dict[str, Metric]) -> FitResult:
        cfg = self.cfg
        has_val = len(data.val) > 0
        if not has_val and cfg.select_metric != "last":
            raise UserError(f"this dataset has no validation split, so trainer.select_metric="
                            f"{cfg.select_metric} cannot be computed; set trainer.select_metric=last or give "
                            f"the dataset a validation split (dataset.val_per_class / dataset.val_fraction)")
        mode = self.select_mode(metrics)
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        seed_everything(self.seed, cfg.deterministic)
        gen = torch.Generator().manual_seed(self.seed)
        model.to(self.device)
        loss.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        train_model = torch.compile(model) if cfg.compile else model
        optimizers = self._optimizers(model, loss)
        schedulers = {n: torch.optim.lr_scheduler.LambdaLR(o, lambda e: self.optim_cfg.lr_factor(e, cfg.epochs))
                      for n, o in optimizers.items()}
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and cfg.amp_dtype == "float16"
                                      and self.device.type == "cuda")
        autocast = self._autocast()
        history: list[dict[str, float]] = []
        best = {"epoch": None, "value": None, "state": None}
        start, bad_epochs = 0, 0
        ckpt_path = self.workdir / "last.pt"
        if ckpt_path.exists():
            ck = torch.load(ckpt_path, map_location=self.device, weights_only=False)
            model.load_state_dict(ck["model"])
            loss.load_state_dict(ck["loss"])
            for n, o in optimizers.items():
                o.load_state_dict(ck["optimizers"][n])
                schedulers[n].load_state_dict(ck["schedulers"][n])
            scaler.load_state_dict(ck["scaler"])
            _set_rng_state(ck["rng"], gen)
            history, best, start, bad_epochs = ck["history"], ck["best"], ck["epoch"], ck["bad_epochs"]
            self.log(f"resuming from epoch {start + 1} ({ckpt_path})")

        def step(value: torch.Tensor, optimizer: str = "main") -> None:
            opt = optimizers[optimizer]
            opt.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()

        show = {"auto": None, "on": True, "off": False}[cfg.progress]
        epoch = start
        stopped_early = False
        for epoch in range(start, cfg.epochs):
            if cfg.interrupt_after is not None and epoch - start >= cfg.interrupt_after:
                return FitResult({}, {}, history, -1, str(self.device), interrupted=True)
            t0 = time.time()
            loss.on_epoch_start(epoch, cfg.epochs)
            model.train()
            loader = make_loader(data, "train", cfg.batch_size, self.device, train=True, generator=gen,
                                 num_workers=cfg.num_workers)
            bar = Progress(len(loader), f"epoch {epoch + 1}/{cfg.epochs}", show)
            sums: dict[str, torch.Tensor] = {}
            n_batches = 0
            for batch in loader:
                batch = batch.to(self.device, cfg.channels_last)
                stats = loss.training_step(train_model, batch, step, autocast)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v.float()
                n_batches += 1
                bar.update()
            row = {"epoch": epoch + 1, "lr": optimizers["main"].param_groups[0]["lr"]}
            row.update({f"train/{k}": (v / max(n_batches, 1)).item() for k, v in sums.items()})
            bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise RunFailed(f"non-finite {bad[0]} ({row[bad[0]]}) at epoch {epoch + 1}; lower optim.lr or "
                                f"check the loss options")
            for s in schedulers.values():
                s.step()
            if has_val:
                val = self.evaluate(model, loss, data, "val")
                states = {name: m.fit(val, data.meta) for name, m in metrics.items()}
                row.update(self.compute_metrics(val, metrics, data.meta, "val", states)[0])
            row["time_s"] = round(time.time() - t0, 3)
            history.append(row)
            if cfg.select_metric != "last" and cfg.select_metric not in row:
                raise UserError(f"trainer.select_metric={cfg.select_metric} is not computed; available: "
                                f"{', '.join(sorted(k for k in row if k.startswith('val/')))}")
            value = float(epoch) if cfg.select_metric == "last" else row[cfg.select_metric]
            value = float("nan") if value is None else value
            if self._better(value, best["value"], mode):
                best = {"epoch": epoch + 1, "value": value,
                        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
                bad_epochs = 0
            else:
                bad_epochs += 1
            bar.close(f"train/loss={row.get('train/loss', float('nan')):.4f} "
                      + (f"{cfg.select_metric}={value:.4f}" if cfg.select_metric != "last" else ""))
            stopped_early = cfg.patience is not None and bad_epochs >= cfg.patience
            atomic_torch_save({"model": model.state_dict(), "loss": loss.state_dict(),
                               "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                               "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                               "scaler": scaler.state_dict(), "rng": _rng_state(gen), "history": history,
                               "best": best, "epoch": cfg.epochs if stopped_early else epoch + 1,
                               "bad_epochs": bad_epochs}, ckpt_path)
            if stopped_early:
                self.log(f"early stop after epoch {epoch + 1}: no improvement of {cfg.select_metric} "
                         f"for {cfg.patience} epochs")
                break

        model.load_state_dict(best["state"])
        if cfg.keep_checkpoint == "best":
            atomic_torch_save({"model": best["state"], "epoch": best["epoch"]}, self.workdir / "best.pt")
        metrics_out: dict[str, float] = {}
        details: dict[str, Any] = {}
        val = self.evaluate(model, loss, data, "val") if has_val else None
        states = {name: m.fit(val, data.meta) for name, m in metrics.items()} if val is not None else {}
        if val is not None:
            s, d = self.compute_metrics(val, metrics, data.meta, "val", states)
            metrics_out.update(s)
            details.update(d)
        test = self.evaluate(model, loss, data, "test")
        if test is not None:
            s, d = self.compute_metrics(test, metrics, data.meta, "test", states)
            metrics_out.update(s)
            details.update(d)
        return FitResult(metrics_out, details, history, best["epoch"], str(self.device))
