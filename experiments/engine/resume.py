"""A run's training state, its checkpoint (`last.pt`) and a bit-exact resume from it.

Resuming mid-epoch restores the data generator of the epoch's start, re-draws that epoch's order and augmentation
while skipping the batches already trained (a streamed split re-reads their images, it does not re-train them),
then restores every RNG to its saved state, so a resumed run gives the numbers of an uninterrupted one. A
checkpoint stamped with other code or data is not resumed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from experiments.engine.checkpoint import (
    LAST,
    load_checkpoint,
    module_state,
    restore_module_state,
    save_checkpoint,
)
from experiments.engine.loss import EngineLoss
from experiments.engine.progress import Progress
from experiments.engine.selection import Selection


def rng_state(gen: torch.Generator) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "data": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    gen.set_state(state["data"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class TrainState:
    """What changes while training; `SAVED` fields (and the selection's) go into the checkpoint as they are."""

    model: nn.Module
    train_model: nn.Module
    loss: EngineLoss
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    scaler: torch.amp.GradScaler
    gen: torch.Generator
    autocast: Callable
    selection: Selection
    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0                       # the epoch being trained (0-based)
    batch: int = 0                       # batches of `epoch` already trained
    epoch_rng: torch.Tensor | None = None  # the data generator at the start of `epoch`
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    pending_rng: dict | None = None      # RNG states to restore once a resumed epoch has skipped its batches
    first_epoch: int = 0
    n_batches: int = 0
    t0: float = 0.0
    bar: Progress | None = None

    SAVED = ("history", "epoch", "batch", "epoch_rng")


def save(state: TrainState, path: Path, stamp: dict | None) -> None:
    """Write `state` to `path` (atomically), stamped with the code version and data fingerprint."""
    out = {key: getattr(state, key) for key in TrainState.SAVED}
    out.update({key: getattr(state.selection, key) for key in Selection.SAVED})
    out.update(stamp=stamp, model=state.model.state_dict(), loss=module_state(state.loss),
               optimizers={n: o.state_dict() for n, o in state.optimizers.items()},
               schedulers={n: s.state_dict() for n, s in state.schedulers.items()},
               scaler=state.scaler.state_dict(), rng=rng_state(state.gen),
               sums={k: v.detach().cpu() for k, v in state.sums.items()})
    save_checkpoint(path, out)


def resume(state: TrainState, workdir: Path, device: torch.device, stamp: dict | None, epochs: int,
           log: Callable) -> None:
    """Load `workdir/last.pt` into `state` if it exists and carries `stamp`; says what it did."""
    path = workdir / LAST
    ck = load_checkpoint(path, device)
    if ck is None:
        return
    if ck.get("stamp") != stamp:
        theirs = ", ".join(f"{k} {v}" for k, v in (ck.get("stamp") or {}).items()) or "no stamp"
        log(f"not resuming {path}: it was written by other code or data ({theirs}); starting over")
        return
    if ck["batch"]:
        state.loss.on_epoch_start(ck["epoch"], epochs)
    state.model.load_state_dict(ck["model"])
    restore_module_state(state.loss, ck["loss"])
    for n, o in state.optimizers.items():
        o.load_state_dict(ck["optimizers"][n])
        state.schedulers[n].load_state_dict(ck["schedulers"][n])
    state.scaler.load_state_dict(ck["scaler"])
    for key in TrainState.SAVED:
        setattr(state, key, ck[key])
    for key in Selection.SAVED:
        setattr(state.selection, key, ck[key])
    state.sums = {k: v.to(device) for k, v in ck["sums"].items()}
    state.first_epoch = state.epoch
    if state.batch:
        state.pending_rng = ck["rng"]
    else:
        set_rng_state(ck["rng"], state.gen)
    log(f"resuming from epoch {state.epoch + 1}" + (f", batch {state.batch + 1}" if state.batch else "")
        + f" ({path})")


def skip_trained(batches: Iterator, state: TrainState) -> Iterator:
    """Draw (and drop) the batches of a resumed epoch that were trained before, then restore the RNGs."""
    for _ in range(state.batch):
        next(batches)
    if state.batch:
        state.bar.update(state.batch)
    if state.pending_rng is not None:
        set_rng_state(state.pending_rng, state.gen)
        state.pending_rng = None
    return batches
