"""Several runs per GPU on SLURM: `make reproduce-table LAUNCHER=slurm RUNS_PER_GPU=r [PACK_JOBS=n]`.

The submitting process plans as without a launcher (`runner.plan`), then submits `n` SLURM jobs through submitit,
each with the resources of the `slurm` Hydra launcher config (conf/hydra/launcher/slurm.yaml, composed with
conf/local/default.yaml as `python -m experiments.train hydra/launcher=slurm` composes it). Inside its allocation a
job runs the local launcher's worker pool (`runner.run_points`) with RUNS_PER_GPU=r: r worker slots per GPU of the
job. The jobs share the pending runs through the run claims (experiments.store.claims), not by a static split: a
job pre-empted, requeued or started late takes whatever is left, and runs of unequal length balance themselves.
A job leaves a run whose claim another live process holds (its heartbeat is fresh) to that process and ends when
nothing unclaimed is left, rather than keep a GPU allocation idle while it waits.

Time limit / pre-emption: SLURM sends USR2 `signal_delay_s` before the limit to the job's task (with proctrack/
cgroup only that process, not the workers it started), so the job hands the signal to its workers first: each
run finishes its batch, writes its checkpoint and releases its claim; then submitit's handler calls
`PackedJob.checkpoint()` (the same job resubmitted) and requeues it. The requeued job resumes the runs from their
checkpoints; finished runs are skipped.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import submitit

from experiments.drivers import runner
from experiments.drivers.catalog import ROOT
from experiments.engine.errors import UserError
from experiments.store import claims
from experiments.store import results as store

SLURM_LAUNCHERS = ("slurm", "submitit_slurm")
# Keys of the launcher config this mode sets itself: the job's name and folder (the plugin's defaults
# interpolate Hydra's sweep dir, which a packed job does not have) and the plugin's own class.
OWN_KEYS = ("_target_", "submitit_folder", "name")
# A live holder refreshes its claim at least every 60 s (claims.Claim.interval); one silent for longer than two
# intervals is probably dead, so its run is polled (and taken over once stale) rather than left to it.
FRESH_CLAIM_S = 120.0
# Of the warning SLURM gives before the time limit, what the workers' checkpoints may take; the rest is left
# to submitit for pickling the resubmission and calling scontrol requeue before the job is killed.
REQUEUE_MARGIN_S = 20.0


@dataclass(frozen=True)
class Resources:
    """The slurm launcher config as submitit takes it: `init` for AutoExecutor(...), `params` for
    update_parameters(...) (the names the hydra-submitit-launcher plugin gives them), and what the job count
    and the signal handling read."""
    init: dict
    params: dict
    array_parallelism: int
    gpus_per_node: int
    signal_delay_s: int


def launcher_config(launcher: str = "slurm", overrides: tuple[str, ...] = ()) -> dict:
    """The `hydra.launcher` node of `python -m experiments.train hydra/launcher=<launcher> <overrides>`
    (conf/local/default.yaml included, as for the multirun launcher), without the keys this mode sets itself."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(runner.CONF_DIR)):
            cfg = compose("config", overrides=[f"hydra/launcher={launcher}", *overrides], return_hydra_config=True)
        node = cfg.hydra.launcher
        with open_dict(node):
            for key in OWN_KEYS:
                node.pop(key, None)
        return OmegaConf.to_container(node, resolve=True)
    except Exception as e:  # noqa: BLE001 — a bad launcher setting (conf/local/default.yaml) is the user's input
        raise UserError(f"hydra/launcher={launcher} does not compose: {runner._one_line(e)}; check its settings "
                        f"(conf/hydra/launcher/{launcher}.yaml, conf/local/default.yaml)") from e


def resources(config: dict) -> Resources:
    """Map the launcher config onto submitit the way hydra-submitit-launcher does (generic queue keys as they
    are, the rest `slurm_`-prefixed, `max_num_timeout` an executor argument); one job is one task on one node,
    since its worker pool lives in one process."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    if config.get("nodes", 1) != 1 or config.get("tasks_per_node", 1) != 1:
        raise UserError(f"hydra.launcher.nodes={config.get('nodes')} tasks_per_node={config.get('tasks_per_node')}: "
                        f"a packed job runs one worker pool on one node; set both to 1 (RUNS_PER_GPU packs the GPUs)")
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    init = {"slurm_max_num_timeout": config["max_num_timeout"]} if "max_num_timeout" in config else {}
    params = {k if k in generic else f"slurm_{k}": v for k, v in config.items() if k != "max_num_timeout"}
    setup = [f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"] + list(config.get("setup") or [])
    params.update(slurm_setup=setup, name="losslab-packed")
    return Resources(init, params, int(config.get("array_parallelism") or 1), int(config.get("gpus_per_node") or 1),
                     int(config.get("signal_delay_s") or 0))


def job_count(pending: int, slots_per_job: int, array_parallelism: int, asked: int | None = None) -> int:
    """PACK_JOBS if given, else enough jobs for every pending run to have a slot at once (ceil(pending / slots
    per job)), at most the config's `array_parallelism` (jobs beyond it would only queue); never more jobs than
    pending runs (a job without a run to take is a wasted allocation), 0 when nothing is pending."""
    if pending <= 0:
        return 0
    wanted = asked if asked is not None else min(array_parallelism, math.ceil(pending / max(1, slots_per_job)))
    return max(1, min(wanted, pending))


def executor(kind: str, folder: Path, res: Resources) -> submitit.AutoExecutor:
    """`kind`: "slurm" on a cluster; "local" (subprocesses) or "debug" (in this process) run the same jobs
    without SLURM, for tests (AutoExecutor drops the `slurm_` keys there)."""
    ex = submitit.AutoExecutor(folder=folder, cluster=kind, **res.init)
    ex.update_parameters(**res.params)
    return ex


def unfinished(points: list[runner.Point]) -> list[runner.Point]:
    """The points whose record still says to run them (TO_RUN), read now: finished elsewhere meanwhile → gone."""
    return [p for p in points if runner.record_state(store.read_record(p.path)) in runner.TO_RUN]


def fresh_holder(point: runner.Point) -> claims.Holder | None:
    """The holder of the point's claim if it is beating (heartbeat younger than FRESH_CLAIM_S), else None."""
    try:
        holder = claims.read_holder(store.claim_path(point.results_dir, point.experiment_name, point.run_id))
    except ValueError:
        return None
    return holder if holder is not None and time.time() - holder.heartbeat < FRESH_CLAIM_S else None


class PackedDriver(runner.Driver):
    """The local launcher's driver, except that a run claimed by a live process is left to it instead of polled
    until it finishes there: a packed job ends when nothing unclaimed is left."""

    def finish(self, index: int, result: dict) -> None:
        holder = fresh_holder(self.points[index]) if result["status"] == "claimed" else None
        if holder is None:
            super().finish(index, result)
            return
        self.tally.counts["left to its holder"] = self.tally.counts.get("left to its holder", 0) + 1
        self.report.finished(self.points[index], {"status": "claimed elsewhere", "wall_s": 0.0,
                                                  "error": f"left to {holder.describe()}"})


@contextlib.contextmanager
def workers_stop_first(signum: int, grace_s: float):
    """While the pool runs: `signum` (SLURM's USR2) is first handed to every worker process, which stops its run
    after the current batch with a checkpoint, and waited for (at most `grace_s`); only then does the handler
    installed before run (submitit's: `checkpoint()`, requeue, exit), so the requeue does not kill a worker in
    the middle of writing. Without such a handler (not under submitit) the pool is stopped like on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signum)

    def forward(sig: int, frame: Any) -> None:
        workers = mp.active_children()
        for proc in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        deadline = time.time() + grace_s
        for proc in workers:
            proc.join(max(0.0, deadline - time.time()))
        # exit code 0: the worker's run stopped after its batch with a checkpoint (an idle worker just dies)
        codes = [proc.exitcode for proc in workers]
        print(f"{signal.Signals(sig).name}: handed to {len(workers)} worker(s); exit codes {codes} "
              f"(0: run checkpointed, None: still running after {grace_s:.0f} s)", flush=True)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(sig, frame)
        else:
            raise KeyboardInterrupt(f"{signal.Signals(sig).name}: runs stopped after their batch")

    signal.signal(signum, forward)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _usr_signal() -> int:
    """The signal submitit treats as 'time limit near / pre-empted' (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    return submitit.JobEnvironment._usr_sig()


class PackedJob(submitit.helpers.Checkpointable):
    """One SLURM job: a worker pool of (GPUs of the allocation) × `runs_per_gpu` slots over the pending points,
    shared with the other packed jobs through the claims. Its state is the results folder (records, checkpoints),
    so `checkpoint()` (Checkpointable's) resubmits this same job with the same points."""

    def __init__(self, points: list[runner.Point], runs_per_gpu: int, index: int, count: int,
                 grace_s: float, poll_s: float = 3.0) -> None:
        self.points = [replace(p, carried=None) for p in points]   # the job composes its own: a small pickle
        self.runs_per_gpu, self.index, self.count = runs_per_gpu, index, count
        self.grace_s, self.poll_s = grace_s, poll_s

    def todo(self) -> list[runner.Point]:
        """The points still to run, each job starting at its own share of the list so that jobs starting
        together do not all try the same runs first."""
        points = unfinished(self.points)
        start = len(points) * self.index // max(1, self.count)
        return points[start:] + points[:start]

    def slots(self) -> int:
        return max(1, len(runner.visible_gpus())) * self.runs_per_gpu

    def __call__(self) -> dict:
        os.environ[runner.RUNS_PER_GPU] = str(self.runs_per_gpu)   # read by the pool (runner.gpu_slots)
        todo = self.todo()
        if not todo:
            return {"counts": {}, "failures": [], "summary": "nothing left to run"}
        with workers_stop_first(_usr_signal(), self.grace_s):
            tally = PackedDriver(todo, self.slots(), poll_s=self.poll_s).run()
        return {"counts": tally.counts, "failures": tally.failures, "summary": tally.summary()}


@dataclass(frozen=True)
class Mode:
    res: Resources
    runs_per_gpu: int
    pack_jobs: int | None


def mode(launcher: str | None, pack_jobs: str | None, overrides: tuple[str, ...] = ()) -> Mode | None:
    """The packed mode asked for by LAUNCHER=slurm with RUNS_PER_GPU and/or PACK_JOBS, with the launcher
    config's resources, else None (LAUNCHER=slurm alone keeps Hydra's one-job-per-run launcher); UserError for
    bad input or a SLURM launcher without sbatch here (either mode), before anything is planned."""
    runs_per_gpu = runner.runs_per_gpu_from_env()
    jobs = None
    if pack_jobs is not None:
        if not pack_jobs.strip().isdigit() or int(pack_jobs) < 1:
            raise UserError(f"PACK_JOBS={pack_jobs!r}: give the number of SLURM jobs to pack the runs into (an "
                            f"integer ≥ 1), or leave it out for enough jobs for the pending runs")
        if launcher not in SLURM_LAUNCHERS:
            raise UserError(f"PACK_JOBS={pack_jobs} packs runs into SLURM jobs: add LAUNCHER=slurm (without a "
                            f"launcher, JOBS=n worker processes run here)")
        jobs = int(pack_jobs)
    if launcher in SLURM_LAUNCHERS and shutil.which("sbatch") is None:
        raise UserError(f"LAUNCHER={launcher}: sbatch is not on this machine's PATH; submit from a SLURM login node, "
                        f"or leave LAUNCHER out to run here with JOBS=n worker processes")
    if launcher not in SLURM_LAUNCHERS or (runs_per_gpu is None and jobs is None):
        return None
    return Mode(resources(launcher_config(launcher, overrides)), runs_per_gpu or 1, jobs)


@dataclass
class _Shown:
    """What `runner.Report` prints for one finished job (it reads `.title`)."""
    title: str


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _collect(job: Any, report: runner.Report, t0: float) -> int:
    """Report one finished job (its run failures on stderr); returns its failures (runs, or 1 if it failed)."""
    error = job.exception()
    if error is not None:
        report.finished(_Shown(f"packed job {job.job_id}"), {"status": "failed", "error": _last_line(error),
                                                             "wall_s": time.time() - t0})
        return 1
    result = job.result()
    for failure in result["failures"]:
        print(f"  failed {failure}", file=sys.stderr)
    report.finished(_Shown(f"packed job {job.job_id}: {result['summary']}"),
                    {"status": "completed", "wall_s": time.time() - t0})
    return len(result["failures"])


def _finished(job: Any) -> bool:
    try:
        return job.done()
    except Exception:  # noqa: BLE001 — the debug executor runs the job in done(); its error is read by _collect
        return True


def wait(jobs: list[Any], stream: Any = None, poll_s: float = 10.0) -> int:
    """Wait for the jobs, a progress line per finished one (on a terminal; off it only failures and every
    tenth, as runner.Report does); returns the failures."""
    report, left, failures, t0 = runner.Report(len(jobs), stream), list(jobs), 0, time.time()
    try:
        while left:
            done = [job for job in left if _finished(job)]
            for job in done:
                left.remove(job)
                failures += _collect(job, report, t0)
            if left and not done:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"packed job(s) {' '.join(j.job_id for j in left)} keep running; "
                                f"scancel them to stop them") from None
    return failures


def submit(pending: list[runner.Point], asked: Mode, results_dir: Path, kind: str = "slurm",
           stream: Any = None, poll_s: float = 10.0) -> int:
    """Submit the packed jobs of `pending`, wait for them; returns the failures (failed runs, failed jobs,
    runs left unfinished). `kind`: the submitit executor ("slurm"; "local"/"debug" in tests)."""
    res = asked.res
    slots = res.gpus_per_node * asked.runs_per_gpu
    count = job_count(len(pending), slots, res.array_parallelism, asked.pack_jobs)
    if count == 0:
        return 0
    folder = Path(results_dir) / "logs" / "packed" / _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    grace = max(1.0, res.signal_delay_s - REQUEUE_MARGIN_S)
    jobs = executor(kind, folder / "%j", res).submit_array(
        [PackedJob(pending, asked.runs_per_gpu, i, count, grace) for i in range(count)])
    print(f"submitted {count} packed job(s) for {len(pending)} runs, up to {slots} at once in each "
          f"({res.gpus_per_node} GPU × RUNS_PER_GPU={asked.runs_per_gpu}): {' '.join(j.job_id for j in jobs)}; "
          f"logs in {folder}", flush=True)
    failures = wait(jobs, stream, poll_s)
    left = [p for p in unfinished(pending) if runner.record_state(store.read_record(p.path)) != "failed"]
    if left:
        print(f"error: {len(left)} run(s) unfinished after the packed jobs ended (held by another process, or a job "
              f"stopped for good), e.g. {left[0].title}: run the same command again to resume them", file=sys.stderr)
    return failures + len(left)
