"""The shared trainer: set up, then train epoch by epoch → select on validation → test the selected weights once.

It talks to the loss only through `experiments.engine.loss.EngineLoss` hooks and to metrics only through
`experiments.engine.metrics.Metric`; it never names a loss, dataset or paper. `Trainer.fit` is its pieces in order:
`_set_up` (optimisers, schedules, resume), `_train_epoch`, `_end_epoch` (evaluate, select, early stop), the
checkpoint and `_final_test`. The jobs around the loop live beside it: evaluation and the final test in
`experiments.engine.evaluation`, selection and early stopping in `experiments.engine.selection`, the checkpoint and
the bit-exact resume in `experiments.engine.resume`, process settings (threads, allocator, seeds) in
`experiments.engine.process`. The optimiser is the `optim` node (a torch.optim `_target_` and its keyword
arguments), the learning-rate schedule an `experiments.engine.schedules.Schedule`.

`fit` stops when `stop()` names a reason (a signal; `trainer.interrupt_after` at epoch boundaries): it finishes
the current batch, checkpoints and returns `interrupted`; the same run started again resumes from there.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from experiments.engine.checkpoint import LAST, save_checkpoint
from experiments.engine.data import Data, make_loader
from experiments.engine.errors import RunFailed, UserError
from experiments.engine.evaluation import Evaluator, autocast_for, preflight
from experiments.engine.loss import EngineLoss
from experiments.engine.metrics import Metric
from experiments.engine.process import resolve_device, seed_everything
from experiments.engine.progress import Progress
from experiments.engine.resume import TrainState, resume, save, skip_trained
from experiments.engine.schedules import Constant, Schedule
from experiments.engine.schemas import OptimConfig, TrainerConfig
from experiments.engine.selection import Selection, selection_mode


@dataclass
class FitResult:
    metrics: dict[str, float]
    details: dict[str, Any]
    history: list[dict[str, float]]
    selected_epoch: int
    device: str
    interrupted: str | None = None     # why and where the run stopped early (resumable)


SHOW = {"auto": None, "on": True, "off": False}


class Trainer:
    def __init__(self, cfg: TrainerConfig, optim: OptimConfig, workdir: Path, seed: int, log: Callable = print,
                 schedule: Schedule | None = None, stamp: dict | None = None,
                 on_epoch: Callable[[dict], None] = lambda row: None):
        """`stamp` (code version, data fingerprint) is written into checkpoints; one with another stamp is not
        resumed. `on_epoch` receives each epoch's log row (a live logger, experiments.engine.loggers)."""
        cfg.check()
        optim.check()
        self.cfg, self.optim_cfg, self.workdir, self.seed, self.log = cfg, optim, Path(workdir), seed, log
        self.schedule = schedule or Constant()
        self.stamp, self.on_epoch = stamp, on_epoch
        self.device = resolve_device(cfg.device)
        self.autocast = autocast_for(cfg.amp, cfg.amp_dtype, self.device)
        self.evaluator = Evaluator(cfg.eval_batch_size, self.device, cfg.channels_last, cfg.num_workers,
                                   self.autocast)

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
        mode = selection_mode(self.cfg, data, metrics)
        self.cfg = self.step_budget(self.cfg, len(data.train))
        preflight(model, loss, data, metrics)
        state = self._set_up(model, loss, Selection(self.cfg.select_metric, mode, self.cfg.patience))
        saved_at = time.monotonic()
        while state.epoch < self.cfg.epochs and not state.selection.stopped_early:
            reason = stop() or self._budget_spent(state)
            if reason is None:
                reason = self._train_epoch(state, data, stop, beat)
            if reason is not None:
                where = self._position(state)
                save(state, self.workdir / LAST, self.stamp)
                return FitResult({}, {}, state.history, -1, str(self.device), interrupted=f"{reason} {where}")
            self._end_epoch(state, data, metrics)
            if time.monotonic() - saved_at >= self.cfg.checkpoint_every_s:
                save(state, self.workdir / LAST, self.stamp)
                saved_at = time.monotonic()
            beat()
        return self._final_test(state, data, metrics)

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
        own = loss.own_optimizers(self.optim_cfg)
        if set(own) & set(opts):
            raise UserError(f"the loss's own optimizers {sorted(own)} reuse a name of `optimizer_names` "
                            f"{list(opts)}: give them other names")
        return {**opts, **own}

    @staticmethod
    def _riders(state: TrainState, optimizer: str) -> list[torch.optim.Optimizer]:
        """The loss's own optimizers, which step with the first of its `optimizer_names`."""
        names = state.loss.optimizer_names
        return [o for n, o in state.optimizers.items() if n not in names] if optimizer == names[0] else []

    def _set_up(self, model: nn.Module, loss: EngineLoss, selection: Selection) -> TrainState:
        cfg = self.cfg
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
        state = TrainState(model, torch.compile(model) if cfg.compile else model, loss, optimizers, schedulers,
                           scaler, gen, self.autocast, selection)
        resume(state, self.workdir, self.device, self.stamp, cfg.epochs, self.log)
        return state

    def _budget_spent(self, state: TrainState) -> str | None:
        n = self.cfg.interrupt_after
        return f"trainer.interrupt_after={n}" if n is not None and state.epoch - state.first_epoch >= n else None

    @staticmethod
    def _position(state: TrainState) -> str:
        if state.batch:
            return f"during epoch {state.epoch + 1} (after batch {state.batch} of {state.n_batches})"
        return f"after epoch {state.epoch}"

    def _step(self, state: TrainState, value: torch.Tensor, optimizer: str = "main") -> None:
        opt, riders = state.optimizers[optimizer], self._riders(state, optimizer)
        for o in (opt, *riders):
            o.zero_grad(set_to_none=True)
        state.scaler.scale(value).backward()
        if self.cfg.grad_clip:
            state.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(state.model.parameters(), self.cfg.grad_clip)
        for o in (opt, *riders):
            state.scaler.step(o)
        state.scaler.update()

    def _train_epoch(self, state: TrainState, data: Data, stop: Callable, beat: Callable) -> str | None:
        """Train (the rest of) `state.epoch`; returns the stop reason if asked to stop before its last batch."""
        cfg = self.cfg
        if state.batch == 0:
            state.epoch_rng = state.gen.get_state()
            state.loss.on_epoch_start(state.epoch, cfg.epochs)
            state.sums = {}
        else:
            state.gen.set_state(state.epoch_rng.cpu())
        state.t0 = time.time()
        state.model.train()
        loader = make_loader(data, "train", cfg.batch_size, self.device, train=True, generator=state.gen,
                             num_workers=cfg.num_workers)
        state.n_batches = len(loader)
        state.bar = Progress(len(loader), f"epoch {state.epoch + 1}/{cfg.epochs}", SHOW[cfg.progress])
        step = functools.partial(self._step, state)
        for batch in skip_trained(iter(loader), state):
            stats = state.loss.training_step(state.train_model, batch.to(self.device, cfg.channels_last), step,
                                             state.autocast)
            for k, v in stats.items():
                state.sums[k] = state.sums.get(k, 0.0) + v.float()
            state.batch += 1
            state.bar.update()
            beat()
            reason = stop()
            if reason is not None and state.batch < state.n_batches:
                return reason
        return None

    def _end_epoch(self, state: TrainState, data: Data, metrics: dict[str, Metric]) -> None:
        """Log the epoch, step the schedules, evaluate on validation, select, decide on early stopping."""
        cfg = self.cfg
        row = {"epoch": state.epoch + 1, "lr": state.optimizers["main"].param_groups[0]["lr"]}
        row.update({f"train/{k}": (v / max(state.batch, 1)).item() for k, v in state.sums.items()})
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise RunFailed(f"non-finite {bad[0]} ({row[bad[0]]}) at epoch {state.epoch + 1}; lower optim.lr or "
                            f"check the loss options")
        for s in state.schedulers.values():
            s.step()
        if len(data.val) > 0:
            row.update(self.evaluator.validate(state.model, state.loss, data, metrics))
        row["time_s"] = round(time.time() - state.t0, 3)
        state.history.append(row)
        self.on_epoch(row)
        value = state.selection.update(row, state.epoch, state.model)
        state.bar.close(f"train/loss={row.get('train/loss', float('nan')):.4f} "
                        + (f"{cfg.select_metric}={value:.4f}" if cfg.select_metric != "last" else ""))
        state.epoch, state.batch, state.sums = state.epoch + 1, 0, {}
        if state.selection.stopped_early:
            self.log(f"early stop after epoch {state.epoch}: no improvement of {cfg.select_metric} "
                     f"for {cfg.patience} epochs")

    def _final_test(self, state: TrainState, data: Data, metrics: dict[str, Metric]) -> FitResult:
        """The selected weights: fit what metrics fit on validation, then evaluate test with it, once."""
        best = state.selection.best
        state.model.load_state_dict(best["state"])
        if self.cfg.keep_checkpoint == "best":
            save_checkpoint(self.workdir / "best.pt", {"model": best["state"], "epoch": best["epoch"]})
        values, details = self.evaluator.final(state.model, state.loss, data, metrics)
        return FitResult(values, details, state.history, best["epoch"], str(self.device))
