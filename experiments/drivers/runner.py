"""The reproduce driver's engine: sweep points expanded and composed in-process, planned against the results
store (finished configs are never launched), the rest run by a pool of long-lived worker processes.

A worker imports torch once and calls `experiments.drivers.train.run` for many configs; configs sharing a dataset go to
the same worker where possible. A config that cannot run (`UserError`) gets a `refused` record; one claimed by
another live process (`status: claimed`) is polled until it is finished elsewhere or its claim goes stale.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import multiprocessing as mp
import os
import queue
import signal
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, open_dict

from experiments.drivers.train import CONF_DIR, RunSpec, compose_config, run_spec
from experiments.engine.budget import apply_budget
from experiments.engine.errors import RunFailed, UserError
from experiments.store import results as store
from experiments.store import versions as code_versions


@dataclass
class Point:
    """One config of a sweep: its overrides and, once planned, its run id, dataset key and state; `carried` is
    its composed config when the planner composed it (so the worker does not compose it again)."""
    exp: str
    experiment_name: str
    results_dir: Path
    sweep: int
    overrides: list[str]
    label: str
    run_id: str = ""
    dataset_key: str = ""
    state: str = "pending"      # pending | done | refused | duplicate | error
    why: str = ""               # of a pending one: missing | stale | failed (RECORD_STATES)
    error: str = ""
    carried: tuple[dict, dict, str] | None = None   # (resolved config, group choices, run id)

    @property
    def path(self) -> Path:
        return store.run_json_path(self.results_dir, self.experiment_name, self.run_id)

    @property
    def title(self) -> str:
        return f"{self.exp} {self.label}".strip()


@contextlib.contextmanager
def _config_loader():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        yield GlobalHydra.instance().config_loader()


def sweep_points(args: list[str]) -> list[list[str]]:
    """The jobs `python -m experiments.train -m <args>` would run: Hydra's own (BasicSweeper) expansion."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with _config_loader() as loader:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(args))
        return BasicSweeper.split_arguments(parsed, None)[0]


def expand(exp: Any, profile: str, results_dir: Path) -> list[Point]:
    """Every config of an experiment's sweeps (`catalog.Experiment`), in Hydra's order."""
    base = exp.base_overrides(profile, results_dir)
    points = []
    for i, args in enumerate(exp.sweep_args(profile, results_dir)):
        for overrides in sweep_points(args):
            label = " ".join(o for o in overrides if o not in base)
            points.append(Point(exp.name, exp.experiment_name, Path(results_dir), i, overrides, label))
    return points


class Composer:
    """`compose_config(overrides)` for many configs: Hydra composes once per distinct list of group overrides
    (which alone decide the defaults list); each config's value overrides are then applied to a copy the way
    Hydra applies them (`ConfigLoaderImpl._apply_overrides_to_config`)."""

    def __init__(self) -> None:
        self._bases: dict[tuple[str, ...], tuple[DictConfig, dict[str, str]]] = {}
        self._groups: dict[str, bool] = {}

    def _is_group(self, key: str) -> bool:
        if key not in self._groups:
            with _config_loader() as loader:
                self._groups[key] = loader.repository.group_exists(key)
        return self._groups[key]

    def __call__(self, overrides: Iterable[str]) -> tuple[DictConfig, dict[str, str]]:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(overrides))
        in_defaults = [o.is_hydra_override() or (not isinstance(o.value(), dict) and self._is_group(o.key_or_group))
                       for o in parsed]
        key = tuple(o.input_line for o, g in zip(parsed, in_defaults) if g)
        if key not in self._bases:
            self._bases[key] = compose_config(list(key), budget=False)
        base, choices = self._bases[key]
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config([o for o, g in zip(parsed, in_defaults) if not g], cfg)
        with open_dict(cfg):
            cfg.results_dir = str(Path(cfg.results_dir).absolute())
            cfg.data_dir = str(Path(cfg.data_dir).absolute())
        return apply_budget(cfg), dict(choices)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, (UserError, RunFailed)) else f"{type(e).__name__}: {text}"


RECORD_STATES = ("done", "refused", "stale", "failed", "missing")
TO_RUN = ("stale", "failed", "missing")


def record_state(record: dict | None) -> str:
    """What a config's record says (RECORD_STATES): `done` or `refused` by the current code (the version of the
    record's config), `stale` (completed or refused by other code), `failed`, or `missing` (no readable record)."""
    status = (record or {}).get("status")
    if status not in ("completed", "refused", "failed"):
        return "missing"
    if status == "failed":
        return "failed"
    if record.get("code_version") != store.code_version(record.get("config") or {}):
        return "stale"
    return "done" if status == "completed" else "refused"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def conf_digest() -> str:
    """sha256 (16 hex) of everything a composed config is made of besides the overrides: every YAML file of the
    config tree (path and bytes) and the environment variable the tree reads (`LOSSLAB_DATA`). Keys the caches
    of composed configs, so editing e.g. an experiment's epochs re-plans its runs."""
    h = hashlib.sha256(os.environ.get("LOSSLAB_DATA", "\0").encode())
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        h.update(b"\0" + path.relative_to(CONF_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


class PlanCache:
    """Run id and dataset key of every config composed before, by its overrides, in
    `<results_dir>/work/plan/<key>.json`; the key covers all that can change them: the code composing a config
    (the import closure of this module, experiments.store.versions: this module, the one-run driver whose
    resolvers the config uses, the engine and the store; not the losses, whose edits leave every run id as it
    was), the config tree (`conf_digest`), and the Hydra and OmegaConf versions. Saves composing finished
    configs again."""

    def __init__(self, results_dir: Path) -> None:
        import hydra
        import omegaconf

        code = code_versions.CURRENT.of_modules([__name__]).version
        key = digest(f"{code} {conf_digest()} {hydra.__version__} {omegaconf.__version__}")
        self.path = Path(results_dir) / "work" / "plan" / f"{key}.json"
        self.entries: dict[str, list[str]] = self._read()
        self.added: dict[str, list[str]] = {}

    def _read(self) -> dict[str, list[str]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def identify(self, point: Point, composer: Composer) -> None:
        """Set the point's run id and dataset key, from the cache or by composing it (then the composed config
        is carried to the worker that runs it)."""
        key = digest("\0".join(point.overrides))
        if key not in self.entries:
            spec = RunSpec.of(*composer(point.overrides))
            dataset = json.dumps(spec.resolved.get("dataset"), sort_keys=True, default=str)
            self.added[key] = self.entries[key] = [spec.run_id, digest(dataset)]
            point.carried = (spec.resolved, spec.choices, spec.run_id)
        point.run_id, point.dataset_key = self.entries[key]

    def save(self) -> None:
        if self.added:
            store.write_record(self.path, {**self._read(), **self.added})


def plan(experiments: Iterable[Any], profile: str, results_dir: Path) -> list[Point]:
    """Every config of the experiments with its run id and its state read from the results store."""
    composer, cache, seen = Composer(), PlanCache(results_dir), set()
    points = [p for exp in experiments for p in expand(exp, profile, results_dir)]
    for p in points:
        try:
            cache.identify(p, composer)
        except Exception as e:  # noqa: BLE001 — a config that does not compose is reported, the rest go on
            p.state, p.error = "error", _one_line(e)
            continue
        if (p.experiment_name, p.run_id) in seen:
            p.state = "duplicate"
            continue
        seen.add((p.experiment_name, p.run_id))
        state = record_state(store.read_record(p.path))
        p.state, p.why = ("pending", state) if state in TO_RUN else (state, "")
    for p in points:
        if p.state != "pending":
            p.carried = None
    cache.save()
    return points


def refused_record(spec: RunSpec, error: str) -> dict:
    cfg, choices = spec.cfg, spec.choices
    return {"schema": store.SCHEMA_VERSION, "run_id": spec.run_id,
            "experiment_name": cfg.experiment_name, "dataset": choices.get("dataset"), "model": choices.get("model"),
            "loss": choices.get("loss"), "seed": cfg.seed, "choices": choices, "config": spec.resolved,
            "status": "refused", "error": error, "code_version": store.code_version(spec.resolved),
            "code_files": store.code_files(spec.resolved), "git_commit": store.git_commit()}


def _record_refusal(spec: RunSpec, error: str) -> str:
    try:
        record = refused_record(spec, error)
        store.write_record(store.run_json_path(spec.cfg.results_dir, spec.cfg.experiment_name, spec.run_id), record)
    except Exception as e:  # noqa: BLE001 — the refusal is still reported; only its record is missing
        return f"{error} (its record could not be written: {_one_line(e)})"
    return error


def _spec(overrides: list[str], composer: Composer, carried: tuple[dict, dict, str] | None) -> RunSpec:
    """The config to run, progress bar off: the one the planner composed (`carried`), or composed here."""
    if carried is not None:
        resolved, choices, run_id = carried
        resolved["trainer"]["progress"] = "off"
        return RunSpec.carried(resolved, choices, run_id)
    cfg, choices = composer(overrides)
    with open_dict(cfg):
        cfg.trainer.progress = "off"
    return RunSpec.of(cfg, choices)


def execute(overrides: list[str], composer: Composer, carried: tuple[dict, dict, str] | None = None) -> dict:
    """Run one config in this process (a worker): its status, wall time, training-epoch time and error."""
    t0 = time.perf_counter()
    try:
        spec = _spec(overrides, composer, carried)
    except Exception as e:  # noqa: BLE001
        return {"status": "failed", "error": _one_line(e), "train_s": 0.0, "wall_s": time.perf_counter() - t0}
    out: dict[str, Any] = {"status": "failed", "error": "", "train_s": 0.0}
    try:
        record = run_spec(spec, log=lambda *a, **k: None)
        out["status"] = "skipped" if record.get("skipped") else record.get("status", "failed")
        out["signal"] = record.get("signal")
        out["train_s"] = 0.0 if record.get("skipped") else sum(h.get("time_s", 0.0) for h in record["history"])
    except UserError as e:
        out.update(status="refused", error=_one_line(e))
        out["error"] = _record_refusal(spec, out["error"])
    except Exception as e:  # noqa: BLE001 — any crash is this config's failure; the worker serves the next
        out["error"] = _one_line(e)
    out["wall_s"] = time.perf_counter() - t0
    return out


def _serve(wid: int, inbox: Any, outbox: Any, gpu: str | None = None) -> None:
    """A worker's loop: run configs until told to stop, interrupted, or orphaned by the driver. `gpu`: the one
    device this worker's runs see (`gpu_slots`), set before anything initialises CUDA."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    composer, parent = Composer(), os.getppid()
    try:
        while os.getppid() == parent:
            try:
                task = inbox.get(timeout=5.0)
            except queue.Empty:
                continue
            if task is None:
                break
            index, overrides, carried = task
            result = execute(overrides, composer, carried)
            outbox.put((wid, index, result))
            if result.get("signal"):
                break
    except KeyboardInterrupt:
        pass


RUNS_PER_GPU = "RUNS_PER_GPU"    # environment (a make variable): runs sharing one GPU; unset: every worker sees all


def gpu_slots(size: int, runs_per_gpu: int | None, visible: list[str]) -> list[str | None]:
    """The device each of `size` worker slots sees: GPU 0 takes `runs_per_gpu` slots, then GPU 1, ..., wrapping
    around when there are more slots than GPUs × runs_per_gpu; all None when not asked or no GPU is visible."""
    if not runs_per_gpu or not visible:
        return [None] * size
    return [visible[(slot // runs_per_gpu) % len(visible)] for slot in range(size)]


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand to workers (CUDA_VISIBLE_DEVICES if set, else 0..n-1)."""
    import torch

    n = torch.cuda.device_count()
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(n)])[:n]


def runs_per_gpu_from_env() -> int | None:
    value = os.environ.get(RUNS_PER_GPU, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{RUNS_PER_GPU}={value!r}: give the number of runs sharing one GPU (an integer ≥ 1)")
    return int(value)


@dataclass
class Worker:
    proc: Any
    inbox: Any
    task: int | None = None
    key: str | None = None
    slot: int = 0


class Pool:
    """`size` spawned worker processes, each with its own inbox and one shared outbox; with RUNS_PER_GPU set,
    each worker slot is pinned to one GPU (`gpu_slots`), a respawned worker taking its predecessor's slot."""
    def __init__(self, size: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.outbox = self.ctx.Queue()
        self.workers: dict[int, Worker] = {}
        self._next = 0
        share = runs_per_gpu_from_env()
        self.gpus = gpu_slots(size, share, visible_gpus() if share else [])
        for _ in range(size):
            self.spawn()

    def spawn(self) -> None:
        wid, self._next = self._next, self._next + 1
        slot = min(set(range(len(self.gpus))) - {w.slot for w in self.workers.values()})
        inbox = self.ctx.Queue()
        proc = self.ctx.Process(target=_serve, args=(wid, inbox, self.outbox, self.gpus[slot]),
                                name=f"losslab-worker-{wid}", daemon=True)
        proc.start()
        self.workers[wid] = Worker(proc, inbox, slot=slot)

    def send(self, worker: Worker, index: int, point: Point) -> None:
        worker.task, worker.key = index, point.dataset_key
        worker.inbox.put((index, point.overrides, point.carried))
        point.carried = None   # a config sent again (claimed elsewhere meanwhile) is composed by its worker

    def close(self, interrupted: bool = False, grace_s: float = 15.0) -> None:
        """Stop the workers: idle ones after their last config; on interruption at once (SIGTERM: a run stops
        after its current batch with a checkpoint, to resume when started again)."""
        for w in self.workers.values():
            if interrupted and w.proc.is_alive():
                w.proc.terminate()
            elif w.proc.is_alive():
                w.inbox.put(None)
        deadline = time.time() + grace_s
        for w in self.workers.values():
            w.proc.join(max(0.0, deadline - time.time()))
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
        for q in [self.outbox] + [w.inbox for w in self.workers.values()]:
            q.cancel_join_thread()
            q.close()


class Scheduler:
    """Pending configs grouped by dataset: a worker keeps to its dataset while that group lasts, an idle one
    takes the largest group no other worker is on."""

    def __init__(self, points: list[Point]) -> None:
        self.groups: dict[str, deque[int]] = {}
        for i, p in enumerate(points):
            self.groups.setdefault(p.dataset_key, deque()).append(i)

    def __len__(self) -> int:
        return sum(len(q) for q in self.groups.values())

    def take(self, prefer: str | None, busy: set[str]) -> int | None:
        if self.groups.get(prefer):
            return self.groups[prefer].popleft()
        live = [k for k, q in self.groups.items() if q]
        if not live:
            return None
        return self.groups[max(live, key=lambda k: (k not in busy, len(self.groups[k])))].popleft()


@dataclass
class Tally:
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    fixed: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        text = f"{self.total} configs run: {parts or 'none'}"
        if self.walls:
            text += (f"; per run: median {statistics.median(self.walls):.1f} s, of which "
                     f"{statistics.median(self.fixed):.2f} s outside training epochs")
        return text


class Report:
    """One line per finished run with an ETA on a terminal; on a pipe only failures and a line per tenth of the
    runs (refusals are counted in the summary)."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.n, self.t0, self.last_wait = total, 0, time.time(), 0.0

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def finished(self, point: Point, result: dict) -> None:
        self.n += 1
        elapsed = time.time() - self.t0
        eta = elapsed / self.n * (self.total - self.n) / 60
        status, note = result["status"], result.get("error", "")
        head = f"[{self.n}/{self.total}] {point.title}"
        if status in ("completed", "skipped"):
            tail = f"{result['wall_s']:.1f} s" + (" (done elsewhere)" if status == "skipped" else "")
        else:
            tail = f"{status.upper()}: {note}" if note else status.upper()
        if self.tty or status not in ("completed", "skipped", "refused"):
            self.line(f"{head}  {tail}" + (f"  ETA {eta:.1f} min" if self.tty and self.n < self.total else ""))
        elif self.n == self.total or self.n % max(1, self.total // 10) == 0:
            self.line(f"[{self.n}/{self.total}] {elapsed / 60:.1f} min, ETA {eta:.1f} min")

    def waiting(self, points: list[Point], poll_s: float) -> None:
        if points and time.time() - self.last_wait >= 30:
            self.last_wait = time.time()
            shown = ", ".join(p.title for p in points[:3]) + (" ..." if len(points) > 3 else "")
            self.line(f"waiting for {len(points)} run(s) claimed by another process (checked every {poll_s:.0f} s): "
                      f"{shown}")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM to the driver stops it like Ctrl-C: its workers are stopped too, not orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Driver:
    """Feeds pending configs to the pool, collects results, re-checks claimed configs every `poll_s` seconds
    (a config still unfinished is run again: `run` waits out a live claim and takes over a stale one)."""

    def __init__(self, points: list[Point], jobs: int, stream: Any = None, poll_s: float = 3.0) -> None:
        self.points, self.poll_s = points, poll_s
        self.todo = Scheduler(points)
        self.waiting: dict[int, float] = {}
        self.announced: set[int] = set()
        self.report = Report(len(points), stream)
        self.tally = Tally(len(points))
        self.pool = Pool(max(1, min(jobs, len(points))))

    def busy(self) -> list[Worker]:
        return [w for w in self.pool.workers.values() if w.task is not None]

    def run(self) -> Tally:
        try:
            with _sigterm_as_interrupt():
                while len(self.todo) or self.waiting or self.busy():
                    self.step()
        except BaseException:
            self.pool.close(interrupted=True)
            raise
        self.pool.close()
        return self.tally

    def step(self) -> None:
        self.feed()
        try:
            wid, index, result = self.pool.outbox.get(timeout=1.0)
        except queue.Empty:
            self.reap()
            self.report.waiting([self.points[i] for i in self.waiting], self.poll_s)
            return
        if wid in self.pool.workers and self.pool.workers[wid].task == index:
            self.pool.workers[wid].task = None
            self.finish(index, result)
        if result.get("signal"):
            raise KeyboardInterrupt(f"a worker's run was stopped by {result['signal']}")

    def feed(self) -> None:
        for w in list(self.pool.workers.values()):
            if w.task is None and w.proc.is_alive():
                index = self.todo.take(w.key, {b.key for b in self.busy()})
                index = self.due_claim() if index is None else index
                if index is None:
                    return
                self.pool.send(w, index, self.points[index])

    def due_claim(self) -> int | None:
        for index, due in list(self.waiting.items()):
            if due > time.time():
                continue
            del self.waiting[index]
            if record_state(store.read_record(self.points[index].path)) in TO_RUN:
                return index
            self.finish(index, {"status": "skipped", "wall_s": 0.0, "train_s": 0.0})
        return None

    def finish(self, index: int, result: dict) -> None:
        point, status = self.points[index], result["status"]
        if status == "claimed":
            self.waiting[index] = time.time() + self.poll_s
            if index not in self.announced:
                self.announced.add(index)
                self.report.line(f"claimed: {point.title} is being run by another process; waiting for it")
            return
        key = "done elsewhere" if status == "skipped" else status
        self.tally.counts[key] = self.tally.counts.get(key, 0) + 1
        if status not in ("completed", "skipped", "refused"):
            self.tally.failures.append(f"{point.title}: {result.get('error') or status}")
        if status == "completed":
            self.tally.walls.append(result["wall_s"])
            self.tally.fixed.append(result["wall_s"] - result["train_s"])
        self.report.finished(point, result)

    def reap(self) -> None:
        for wid, w in list(self.pool.workers.items()):
            if w.proc.is_alive():
                continue
            del self.pool.workers[wid]
            if w.task is not None:
                self.finish(w.task, {"status": "failed", "wall_s": 0.0, "train_s": 0.0,
                                     "error": f"worker process died (exit code {w.proc.exitcode})"})
            if len(self.todo) or self.waiting:
                self.pool.spawn()


def run_points(points: list[Point], jobs: int, stream: Any = None, poll_s: float = 3.0) -> Tally:
    """Run `points` (planned, pending) in `jobs` worker processes; never raises for a failed config."""
    return Driver(points, jobs, stream, poll_s).run() if points else Tally(0)
