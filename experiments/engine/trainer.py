"""The shared trainer: train → select on validation → test the selected checkpoint once.

It talks to the loss only through `experiments.engine.loss.EngineLoss` hooks and to metrics only through
`experiments.engine.metrics.Metric`; it never names a loss, dataset or paper. `Trainer.fit` is its pieces in order:
`_set_up` (optimisers, schedules, resume), `_train_epoch`, `_end_epoch` (evaluate, select, early stop), `_save`
(the checkpoint) and `_final_test`. The optimiser is the `optim` node (a torch.optim `_target_` and its keyword
arguments), the learning-rate schedule an `experiments.engine.schedules.Schedule`.

`fit` stops when `stop()` names a reason (a signal; `trainer.interrupt_after` at epoch boundaries): it finishes
the current batch, checkpoints and returns `interrupted`. Resuming mid-epoch restores the data generator of the
epoch's start, re-draws that epoch's order and augmentation while skipping the batches already trained (a
streamed split re-reads their images, it does not re-train them), then restores every RNG to its saved state,
so a resumed run gives the numbers of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import hydra
import numpy as np
import torch
from torch import nn

from experiments.engine.allocator import keep_freed_memory
from experiments.engine.checkpoint import LAST, load_checkpoint, module_state, restore_module_state, save_checkpoint
from experiments.engine.data import Data, make_loader
from experiments.engine.errors import RunFailed, UserError
from experiments.engine.loss import EngineLoss
from experiments.engine.metrics import EvalOutputs, Metric, measure_of
from experiments.engine.progress import Progress
from experiments.engine.schedules import Constant, Schedule


@dataclass
class TrainerConfig:
    epochs: int = 10
    min_steps: int = 0              # at least this many optimisation steps: a small training split gets more epochs
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
    claim_timeout_s: float = 1800.0
    keep_freed_memory: bool = True  # glibc keeps freed memory: no page faults per batch (experiments.engine.allocator)

    def check(self) -> None:
        if self.epochs < 1:
            raise UserError(f"trainer.epochs={self.epochs}: must be ≥ 1")
        if self.min_steps < 0:
            raise UserError(f"trainer.min_steps={self.min_steps}: must be ≥ 0 (0 = trainer.epochs as given)")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("trainer.batch_size and trainer.eval_batch_size must be ≥ 1")
        if self.patience is not None and self.patience < 1:
            raise UserError(f"trainer.patience={self.patience}: must be ≥ 1 or null (no early stopping)")
        if self.select_metric != "last" and not self.select_metric.startswith("val/"):
            raise UserError(f"trainer.select_metric={self.select_metric}: select on a validation metric "
                            f"(val/<name>) or `last`; never on test")
        if self.claim_timeout_s <= 0:
            raise UserError(f"trainer.claim_timeout_s={self.claim_timeout_s}: must be > 0 seconds")
        choices = {"select_mode": ("auto", "min", "max"), "amp_dtype": ("bfloat16", "float16"),
                   "progress": ("auto", "on", "off"), "keep_checkpoint": ("best", "none")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"trainer.{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            raise UserError(f"trainer.device={self.device!r}: use auto, cpu, cuda or cuda:<n>")


@dataclass
class OptimConfig:
    """`optim`: a torch.optim class (`_target_`) and the keyword arguments it takes (unset ones are left out)."""

    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float | None = None
    dampening: float | None = None
    nesterov: bool | None = None
    betas: list[float] | None = None
    eps: float | None = None
    amsgrad: bool | None = None
    alpha: float | None = None
    centered: bool | None = None

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "_target_" and getattr(self, f.name) is not None}

    def factory(self) -> Callable[[list], torch.optim.Optimizer]:
        """The optimiser class with these arguments bound (hydra `_partial_`); call it with parameter groups."""
        return hydra.utils.instantiate({"_target_": self._target_, "_partial_": True, "_convert_": "all",
                                        **self.kwargs()})

    def check(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0:
            raise UserError(f"optim.lr={self.lr}, optim.weight_decay={self.weight_decay}: need lr > 0, wd ≥ 0")
        try:
            cls = hydra.utils.get_object(self._target_)
        except Exception:
            raise UserError(f"optim._target_={self._target_} cannot be imported; e.g. optim=sgd, optim=adam or "
                            f"optim._target_=torch.optim.RMSprop") from None
        params = inspect.signature(cls).parameters
        for key in self.kwargs():
            if key not in params:
                raise UserError(f"optim.{key}: not an option of {self._target_}; valid options: "
                                f"{', '.join(p for p in params if p not in ('self', 'params'))}")
        try:
            self.factory()([nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError) as e:
            raise UserError(f"optim ({self._target_}): {e}") from None


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
    torch.set_rng_state(state["torch"].cpu())
    gen.set_state(state["data"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class FitResult:
    metrics: dict[str, float]
    details: dict[str, Any]
    history: list[dict[str, float]]
    selected_epoch: int
    device: str
    interrupted: str | None = None     # why and where the run stopped early (resumable)


@dataclass
class _Loop:
    """What changes while training; `SAVED` fields go into the checkpoint as they are."""

    model: nn.Module
    train_model: nn.Module
    loss: EngineLoss
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    scaler: torch.amp.GradScaler
    gen: torch.Generator
    autocast: Callable
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "value": None, "state": None})
    epoch: int = 0                       # the epoch being trained (0-based)
    batch: int = 0                       # batches of `epoch` already trained
    bad_epochs: int = 0
    stopped_early: bool = False
    epoch_rng: torch.Tensor | None = None  # the data generator at the start of `epoch`
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    pending_rng: dict | None = None      # RNG states to restore once a resumed epoch has skipped its batches
    first_epoch: int = 0
    n_batches: int = 0
    t0: float = 0.0
    bar: Progress | None = None

    SAVED = ("history", "best", "epoch", "batch", "bad_epochs", "stopped_early", "epoch_rng")


SHOW = {"auto": None, "on": True, "off": False}


class Trainer:
    def __init__(self, cfg: TrainerConfig, optim: OptimConfig, workdir: Path, seed: int, log: Callable = print,
                 schedule: Schedule | None = None, stamp: dict | None = None):
        """`stamp` (code version, data fingerprint) is written into checkpoints; one with another stamp is not
        resumed."""
        cfg.check()
        optim.check()
        self.cfg, self.optim_cfg, self.workdir, self.seed, self.log = cfg, optim, Path(workdir), seed, log
        self.schedule = schedule or Constant()
        self.stamp = stamp
        self.device = resolve_device(cfg.device)

    # ------------------------------------------------------------------ building blocks
    def _optimizers(self, model: nn.Module, loss: EngineLoss) -> dict[str, torch.optim.Optimizer]:
        make, lr = self.optim_cfg.factory(), self.optim_cfg.lr
        opts = {}
        for i, name in enumerate(loss.optimizer_names):
            groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
            if i == 0:
                for g in loss.param_groups():
                    g = dict(g)
                    g["lr"] = lr * g.pop("lr_mult", 1.0)
                    groups.append(g)
            opts[name] = make(groups)
        return opts

    def _autocast(self):
        if self.cfg.amp and self.device.type == "cuda":
            dtype = torch.bfloat16 if self.cfg.amp_dtype == "bfloat16" else torch.float16
            return lambda: torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext

    @staticmethod
    def _eval_outputs(loss: EngineLoss, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
                      value: float) -> EvalOutputs:
        return EvalOutputs(outputs=outputs, scores=loss.scores(outputs), targets=targets, loss=value,
                           kinds=dict(loss.score_kinds), prediction=loss.predict(outputs))

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
        return self._eval_outputs(loss, outputs, torch.cat(targets), total / max(n, 1))

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

    @torch.no_grad()
    def preflight(self, model: nn.Module, loss: EngineLoss, data: Data, metrics: dict[str, Metric]) -> None:
        """Compute every metric once on random outputs of the model's shapes, so that an option no data can
        satisfy (a K above the number of classes, ...) fails before training instead of after the first epoch.
        Only `UserError`s count; anything else a metric does with random outputs is ignored."""
        meta = data.meta
        n, g = 2 * meta.num_classes, torch.Generator().manual_seed(0)
        try:
            model.eval()
            shapes = {k: v.shape[1:] for k, v in model(torch.zeros(2, meta.channels, meta.image_size,
                                                                    meta.image_size)).items()}
            outputs = {k: torch.randn((n, *s), generator=g) for k, s in shapes.items()}
            out = self._eval_outputs(loss, outputs, torch.arange(n) % meta.num_classes, 0.0)
        except Exception:  # noqa: BLE001 — a model that wants other inputs: nothing to check early
            return
        for metric in metrics.values():
            try:
                metric(out, meta, metric.fit(out, meta))
            except UserError:
                raise
            except Exception:  # noqa: BLE001
                continue

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

    @staticmethod
    def step_budget(cfg: TrainerConfig, n_train: int) -> TrainerConfig:
        """`cfg` with epochs raised to ceil(min_steps / batches per epoch): the schedule then spans the same number
        of optimisation steps whatever the size of the (e.g. imbalanced) training split."""
        batches = max(-(-n_train // cfg.batch_size), 1)
        return dataclasses.replace(cfg, epochs=max(cfg.epochs, -(-cfg.min_steps // batches)))

    # ------------------------------------------------------------------ the loop
    def fit(self, model: nn.Module, loss: EngineLoss, data: Data, metrics: dict[str, Metric],
            stop: Callable[[], str | None] = lambda: None, beat: Callable[[], None] = lambda: None) -> FitResult:
        """Train, select, test. `stop()` returns a reason to stop (checked after every batch), `beat()` is called
        after every batch and checkpoint (the run's claim heartbeat)."""
        mode = self._selection_mode(data, metrics)
        self.cfg = self.step_budget(self.cfg, len(data.train))
        self.preflight(model, loss, data, metrics)
        loop = self._set_up(model, loss)
        while loop.epoch < self.cfg.epochs and not loop.stopped_early:
            reason = stop() or self._budget_spent(loop)
            if reason is None:
                reason = self._train_epoch(loop, data, stop, beat)
            if reason is not None:
                where = self._position(loop)
                if loop.batch:
                    self._save(loop)
                return FitResult({}, {}, loop.history, -1, str(self.device), interrupted=f"{reason} {where}")
            self._end_epoch(loop, data, metrics, mode)
            self._save(loop)
            beat()
        return self._final_test(loop, data, metrics)

    def _selection_mode(self, data: Data, metrics: dict[str, Metric]) -> str:
        if len(data.val) == 0 and self.cfg.select_metric != "last":
            raise UserError(f"this dataset has no validation split, so trainer.select_metric="
                            f"{self.cfg.select_metric} cannot be computed; set trainer.select_metric=last or give "
                            f"the dataset a validation split (dataset.val_per_class / dataset.val_fraction)")
        return self.select_mode(metrics)

    def _set_up(self, model: nn.Module, loss: EngineLoss) -> _Loop:
        cfg = self.cfg
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        if cfg.keep_freed_memory:
            keep_freed_memory()
        seed_everything(self.seed, cfg.deterministic)
        gen = torch.Generator().manual_seed(self.seed)
        model.to(self.device)
        loss.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizers = self._optimizers(model, loss)
        schedule = self.schedule
        schedulers = {n: torch.optim.lr_scheduler.LambdaLR(o, lambda e: schedule(e, cfg.epochs))
                      for n, o in optimizers.items()}
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and cfg.amp_dtype == "float16"
                                      and self.device.type == "cuda")
        loop = _Loop(model, torch.compile(model) if cfg.compile else model, loss, optimizers, schedulers, scaler,
                     gen, self._autocast())
        self._resume(loop)
        return loop

    def _resume(self, loop: _Loop) -> None:
        path = self.workdir / LAST
        ck = load_checkpoint(path, self.device)
        if ck is None:
            return
        if ck.get("stamp") != self.stamp:
            theirs = ", ".join(f"{k} {v}" for k, v in (ck.get("stamp") or {}).items()) or "no stamp"
            self.log(f"not resuming {path}: it was written by other code or data ({theirs}); starting over")
            return
        if ck["batch"]:
            loop.loss.on_epoch_start(ck["epoch"], self.cfg.epochs)
        loop.model.load_state_dict(ck["model"])
        restore_module_state(loop.loss, ck["loss"])
        for n, o in loop.optimizers.items():
            o.load_state_dict(ck["optimizers"][n])
            loop.schedulers[n].load_state_dict(ck["schedulers"][n])
        loop.scaler.load_state_dict(ck["scaler"])
        for key in _Loop.SAVED:
            setattr(loop, key, ck[key])
        loop.sums = {k: v.to(self.device) for k, v in ck["sums"].items()}
        loop.first_epoch = loop.epoch
        if loop.batch:
            loop.pending_rng = ck["rng"]
        else:
            _set_rng_state(ck["rng"], loop.gen)
        self.log(f"resuming from epoch {loop.epoch + 1}" + (f", batch {loop.batch + 1}" if loop.batch else "")
                 + f" ({path})")

    def _budget_spent(self, loop: _Loop) -> str | None:
        n = self.cfg.interrupt_after
        return f"trainer.interrupt_after={n}" if n is not None and loop.epoch - loop.first_epoch >= n else None

    @staticmethod
    def _position(loop: _Loop) -> str:
        if loop.batch:
            return f"during epoch {loop.epoch + 1} (after batch {loop.batch} of {loop.n_batches})"
        return f"after epoch {loop.epoch}"

    def _step(self, loop: _Loop, value: torch.Tensor, optimizer: str = "main") -> None:
        opt = loop.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        loop.scaler.scale(value).backward()
        if self.cfg.grad_clip:
            loop.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(loop.model.parameters(), self.cfg.grad_clip)
        loop.scaler.step(opt)
        loop.scaler.update()

    def _train_epoch(self, loop: _Loop, data: Data, stop: Callable, beat: Callable) -> str | None:
        """Train (the rest of) `loop.epoch`; returns the stop reason if asked to stop before its last batch."""
        cfg = self.cfg
        if loop.batch == 0:
            loop.epoch_rng = loop.gen.get_state()
            loop.loss.on_epoch_start(loop.epoch, cfg.epochs)
            loop.sums = {}
        else:
            loop.gen.set_state(loop.epoch_rng.cpu())
        loop.t0 = time.time()
        loop.model.train()
        loader = make_loader(data, "train", cfg.batch_size, self.device, train=True, generator=loop.gen,
                             num_workers=cfg.num_workers)
        loop.n_batches = len(loader)
        loop.bar = Progress(len(loader), f"epoch {loop.epoch + 1}/{cfg.epochs}", SHOW[cfg.progress])
        step = functools.partial(self._step, loop)
        for batch in self._skip_trained(iter(loader), loop):
            stats = loop.loss.training_step(loop.train_model, batch.to(self.device, cfg.channels_last), step,
                                            loop.autocast)
            for k, v in stats.items():
                loop.sums[k] = loop.sums.get(k, 0.0) + v.float()
            loop.batch += 1
            loop.bar.update()
            beat()
            reason = stop()
            if reason is not None and loop.batch < loop.n_batches:
                return reason
        return None

    @staticmethod
    def _skip_trained(batches, loop: _Loop):
        """Draw (and drop) the batches of a resumed epoch that were trained before, then restore the RNGs."""
        for _ in range(loop.batch):
            next(batches)
        if loop.batch:
            loop.bar.update(loop.batch)
        if loop.pending_rng is not None:
            _set_rng_state(loop.pending_rng, loop.gen)
            loop.pending_rng = None
        return batches

    def _end_epoch(self, loop: _Loop, data: Data, metrics: dict[str, Metric], mode: str) -> None:
        """Log the epoch, step the schedules, evaluate on validation, select, decide on early stopping."""
        cfg = self.cfg
        row = {"epoch": loop.epoch + 1, "lr": loop.optimizers["main"].param_groups[0]["lr"]}
        row.update({f"train/{k}": (v / max(loop.batch, 1)).item() for k, v in loop.sums.items()})
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise RunFailed(f"non-finite {bad[0]} ({row[bad[0]]}) at epoch {loop.epoch + 1}; lower optim.lr or "
                            f"check the loss options")
        for s in loop.schedulers.values():
            s.step()
        if len(data.val) > 0:
            val = self.evaluate(loop.model, loop.loss, data, "val")
            states = {name: m.fit(val, data.meta) for name, m in metrics.items()}
            row.update(self.compute_metrics(val, metrics, data.meta, "val", states)[0])
        row["time_s"] = round(time.time() - loop.t0, 3)
        loop.history.append(row)
        value = self._select(loop, row, mode)
        loop.bar.close(f"train/loss={row.get('train/loss', float('nan')):.4f} "
                       + (f"{cfg.select_metric}={value:.4f}" if cfg.select_metric != "last" else ""))
        loop.epoch, loop.batch, loop.sums = loop.epoch + 1, 0, {}
        loop.stopped_early = cfg.patience is not None and loop.bad_epochs >= cfg.patience
        if loop.stopped_early:
            self.log(f"early stop after epoch {loop.epoch}: no improvement of {cfg.select_metric} "
                     f"for {cfg.patience} epochs")

    def _select(self, loop: _Loop, row: dict[str, Any], mode: str) -> float:
        """Keep the weights of the best epoch so far on the selection metric; returns this epoch's value."""
        metric = self.cfg.select_metric
        if metric != "last" and metric not in row:
            raise UserError(f"trainer.select_metric={metric} is not computed; available: "
                            f"{', '.join(sorted(k for k in row if k.startswith('val/')))}")
        value = float(loop.epoch) if metric == "last" else row[metric]
        value = float("nan") if value is None else value
        if self._better(value, loop.best["value"], mode):
            loop.best = {"epoch": loop.epoch + 1, "value": value,
                         "state": {k: v.detach().cpu().clone() for k, v in loop.model.state_dict().items()}}
            loop.bad_epochs = 0
        else:
            loop.bad_epochs += 1
        return value

    def _save(self, loop: _Loop) -> None:
        state = {key: getattr(loop, key) for key in _Loop.SAVED}
        state.update(stamp=self.stamp, model=loop.model.state_dict(), loss=module_state(loop.loss),
                     optimizers={n: o.state_dict() for n, o in loop.optimizers.items()},
                     schedulers={n: s.state_dict() for n, s in loop.schedulers.items()},
                     scaler=loop.scaler.state_dict(), rng=_rng_state(loop.gen),
                     sums={k: v.detach().cpu() for k, v in loop.sums.items()})
        save_checkpoint(self.workdir / LAST, state)

    def _final_test(self, loop: _Loop, data: Data, metrics: dict[str, Metric]) -> FitResult:
        """The selected weights: fit what metrics fit on validation, then evaluate test with it, once."""
        model, loss = loop.model, loop.loss
        model.load_state_dict(loop.best["state"])
        if self.cfg.keep_checkpoint == "best":
            save_checkpoint(self.workdir / "best.pt", {"model": loop.best["state"], "epoch": loop.best["epoch"]})
        metrics_out: dict[str, float] = {}
        details: dict[str, Any] = {}
        val = self.evaluate(model, loss, data, "val") if len(data.val) > 0 else None
        states = {name: m.fit(val, data.meta) for name, m in metrics.items()} if val is not None else {}
        test = self.evaluate(model, loss, data, "test")
        for split, out in (("val", val), ("test", test)):
            if out is not None:
                s, d = self.compute_metrics(out, metrics, data.meta, split, states)
                metrics_out.update(s)
                details.update(d)
        return FitResult(metrics_out, details, loop.history, loop.best["epoch"], str(self.device))
