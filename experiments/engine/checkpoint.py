"""Files that survive a kill, and runs that stop when asked.

- `atomic_write`: temp file in the same folder, fsync, rename over the target, fsync the folder. A process killed
  mid-write (even SIGKILL) leaves the previous file intact and at worst a `.<name>.*.tmp` leftover, which
  `load_checkpoint` removes. A failed write (full disk) raises `WriteError` naming the file, with nothing left.
- `set_aside`: an unreadable file is renamed `<name>.corrupt-<timestamp>` (kept, not deleted) with one warning line.
- `StopSignals`: while a run trains, SIGTERM / SIGINT / SIGUSR2 only record a stop request; the trainer finishes
  its batch, checkpoints and returns `interrupted`. A second signal raises KeyboardInterrupt at once. Afterwards
  `forward_signal` hands the signal to the handler installed before (submitit's, which requeues the job).
"""
from __future__ import annotations

import datetime as _dt
import os
import pickle
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

from experiments.engine.errors import WriteError, warn

LAST = "last.pt"
REQUIRED = ("model", "loss", "optimizers", "schedulers", "scaler", "rng", "history", "best", "epoch")


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, payload: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `payload` (bytes, or a function writing to a binary file) to `path` atomically and durably."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        with open(tmp, "wb") as f:
            if isinstance(payload, bytes):
                f.write(payload)
            else:
                payload(f)
            _sync(f)
        os.replace(tmp, path)
        tmp = None
        _sync_dir(path.parent)
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def set_aside(path: Path, problem: str, consequence: str = "starting over") -> Path:
    """Rename an unreadable `path` to `<name>.corrupt-<timestamp>` and say so in one warning line."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    warn(f"{path} is unreadable ({problem}); moved to {aside.name}; {consequence}")
    return aside


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def remove_leftovers(path: Path) -> None:
    """Delete temp files of `path` left by a process killed while writing it."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, device: torch.device | str) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none or it is unreadable (then it is set aside)."""
    remove_leftovers(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 — any unreadable checkpoint is set aside and the run starts over
        set_aside(path, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no detail'}")
        return None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        set_aside(path, f"missing {', '.join(missing)}")
        return None
    return state


def module_state(module: nn.Module) -> dict[str, Any]:
    """`state_dict()` plus the module's public plain attributes (epoch counters, accumulated statistics), which
    `state_dict` misses; attributes that cannot be pickled are left out."""
    attrs = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 — e.g. a lambda: not state, skipped
            continue
        attrs[key] = value
    return {"tensors": module.state_dict(), "attrs": attrs}


def restore_module_state(module: nn.Module, state: dict[str, Any]) -> None:
    module.load_state_dict(state["tensors"])
    for key, value in state["attrs"].items():
        setattr(module, key, value)


class StopSignals:
    """Context manager turning SIGTERM / SIGINT / SIGUSR2 into a stop request (`requested()`); see the module doc."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None


def forward_signal(signum: int) -> None:
    """Call the handler now installed for `signum` (after `StopSignals` restored it), unless it is Python's or the
    system's default: under submitit that handler checkpoints the job (its `checkpoint()`) and requeues it."""
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)
