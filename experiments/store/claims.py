"""One claim per run id, so that processes sharing a results folder never train the same run at the same time.

`<results_dir>/claims/<experiment>/<run_id>.claim` is created with O_CREAT|O_EXCL (atomic) and holds JSON
{host, pid, started, heartbeat, token}. The holder refreshes `heartbeat` (unix time) at least every
min(60 s, timeout/4) while it trains and deletes the file when the run ends, however it ends. Another process
finding the file leaves the run alone unless the claim is stale: its heartbeat is older than the timeout
(`trainer.claim_timeout_s`), or it was made on this host by a process that no longer exists. A stale claim is
taken over; an unreadable one is set aside as corrupt (unless seconds old: then it is still being written).
A holder whose claim was taken over meanwhile (it stalled past the timeout) learns it at its next heartbeat.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from experiments.engine.checkpoint import atomic_write, set_aside
from experiments.engine.errors import WriteError

HOST = socket.gethostname()
BEING_WRITTEN_S = 10.0


@dataclass
class Holder:
    host: str
    pid: int
    started: str
    heartbeat: float
    token: str

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        return f"{self.host} pid {self.pid} (started {self.started}, last heartbeat {age:.0f} s ago)"


class ClaimLost(Exception):
    """Another process took this run's claim over (`holder`, None if the file was removed); the run stops."""

    def __init__(self, holder: Holder | None):
        super().__init__(holder.describe() if holder is not None else "whoever removed its claim file")
        self.holder = holder


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in `path`; None if the file is gone; ValueError if it cannot be read as a claim."""
    try:
        data = json.loads(path.read_text())
        return Holder(**{k: data[k] for k in Holder.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{type(e).__name__}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class Claim:
    def __init__(self, path: str | os.PathLike, timeout_s: float):
        self.path, self.timeout_s = Path(path), float(timeout_s)
        self.interval = min(60.0, self.timeout_s / 4)
        self.token = uuid.uuid4().hex
        self.started = _dt.datetime.now().isoformat(timespec="seconds")
        self.held, self.last_beat = False, 0.0
        self.took_over: Holder | None = None

    def _content(self) -> bytes:
        return json.dumps({"host": HOST, "pid": os.getpid(), "started": self.started, "heartbeat": time.time(),
                           "token": self.token}).encode()

    def _create(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise WriteError(e.errno, e.strerror, str(self.path)) from e
        try:
            os.write(fd, self._content())
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise WriteError(e.errno, e.strerror, str(self.path)) from e
        os.close(fd)
        self.held, self.last_beat = True, time.time()
        return True

    def _read(self) -> Holder | None:
        """The current holder; a corrupt claim file is set aside (None), one being written counts as live."""
        try:
            return read_holder(self.path)
        except ValueError as e:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            if age < BEING_WRITTEN_S:
                return Holder("?", -1, "just now", time.time(), "?")
            set_aside(self.path, f"not a claim: {e}", "claiming the run afresh")
            return None

    def stale(self, holder: Holder) -> bool:
        if time.time() - holder.heartbeat > self.timeout_s:
            return True
        return holder.host == HOST and not _alive(holder.pid)

    def _take_over(self, holder: Holder) -> None:
        """Move the stale claim aside; if what moved was a fresh claim made meanwhile, put it back."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = read_holder(aside)
        except ValueError:
            moved = None
        if moved is not None and moved.token != holder.token:
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        else:
            self.took_over = holder
        aside.unlink(missing_ok=True)

    def acquire(self) -> Holder | None:
        """Take the claim: None when it is ours, else the live holder (who is training this run)."""
        holder = None
        for _ in range(3):
            if self._create():
                return None
            holder = self._read()
            if holder is not None and not self.stale(holder):
                return holder
            if holder is not None:
                self._take_over(holder)
        return holder or Holder("?", -1, "just now", time.time(), "?")

    def beat(self) -> None:
        """Refresh the heartbeat (at most every `interval` seconds); ClaimLost if another process took it over."""
        if not self.held or time.time() - self.last_beat < self.interval:
            return
        try:
            current = read_holder(self.path)
        except ValueError:
            current = None
        if current is None or current.token != self.token:
            self.held = False
            raise ClaimLost(current)
        atomic_write(self.path, self._content())
        self.last_beat = time.time()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            current = read_holder(self.path)
        except ValueError:
            return
        if current is not None and current.token == self.token:
            self.path.unlink(missing_ok=True)

