"""`python -m experiments.train [overrides]` runs one config; `-m` runs a Hydra multirun.

A run writes exactly one JSON (`experiments.store.results`). A run completed by the current code is skipped, one
completed by other code (`code_version`) re-run, a failed one retried, an unfinished one resumed from its
checkpoint. A run claimed by another live process (experiments.store.claims) is left to it. SIGTERM, SIGINT and SIGUSR2
stop a run after its current batch with a checkpoint (status `interrupted`, nothing written to runs/); under the
submitit launcher the signal is then handed to submitit, which requeues the job. Errors print one `error:` line
(full traceback with `debug=true` or LOSSLAB_DEBUG=1).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.engine.budget import apply_budget
from experiments.engine.checkpoint import LAST, StopSignals, forward_signal
from experiments.engine.config import build_components, build_schedule, validate
from experiments.engine.environment import numerics_environment
from experiments.engine.errors import RunFailed, UserError, WriteError
from experiments.engine.metrics import describe
from experiments.engine.process import configure_process, seed_everything
from experiments.engine.schedules import Schedule
from experiments.engine.schemas import OptimConfig, TrainerConfig, check_name
from experiments.engine.trainer import Trainer
from experiments.store import results as store
from experiments.store.claims import Claim, ClaimLost

NOT_DONE_EXIT = 3     # single run: interrupted without a signal (trainer.interrupt_after), or claimed elsewhere


def _debugging(cfg: DictConfig | None = None) -> bool:
    return os.environ.get("LOSSLAB_DEBUG", "") not in ("", "0") or bool(cfg is not None and cfg.get("debug"))


# ---------------------------------------------------------------------- what a run is
PAIRING_KEYS = ("seed", "dataset.split_seed", "dataset.imbalance.seed", "dataset.seed")


def pairing_key(resolved: dict) -> dict[str, Any]:
    """What two runs of a table share when their keys agree: the training seed (batch order, augmentation
    stream, initial weights of an identical architecture) and the data draws (split, imbalance, generator)."""
    out = {}
    for dotted in PAIRING_KEYS:
        node: Any = resolved
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out[dotted] = node
    return out


def _folder_name(name: Any) -> str:
    """OmegaConf resolver `${folder_name:${experiment_name}}`: the name, refused before Hydra makes a folder of it."""
    check_name(name)
    return name


OmegaConf.register_new_resolver("folder_name", _folder_name, replace=True)


def _validated(cfg: DictConfig) -> tuple[TrainerConfig, OptimConfig, Schedule]:
    tcfg, ocfg = validate(cfg)
    return tcfg, ocfg, build_schedule(cfg)


# ---------------------------------------------------------------------- one run
@dataclass(frozen=True)
class RunSpec:
    """One run's config, composed once, with what is derived from it once and carried from there (planner,
    worker, `run`, its record or refusal record): the resolved config, the group choices, the run id."""
    cfg: DictConfig
    choices: dict[str, str]
    resolved: dict
    run_id: str

    @classmethod
    def of(cls, cfg: DictConfig, choices: dict[str, str] | None = None) -> "RunSpec":
        resolved = OmegaConf.to_container(cfg, resolve=True)
        return cls(cfg, dict(choices or {}), resolved, store.compute_run_id(resolved))

    @classmethod
    def carried(cls, resolved: dict, choices: dict[str, str], run_id: str) -> "RunSpec":
        """The spec of a config composed and identified elsewhere (the planner), rebuilt without composing."""
        cfg = OmegaConf.create(resolved)
        OmegaConf.set_struct(cfg, True)   # as Hydra hands it over: a misspelt key fails instead of reading None
        return cls(cfg, dict(choices), resolved, run_id)


def _done(path: Path, label: str, version: str, log, notes: bool = True) -> dict | None:
    """The record at `path` if the current code (`version` for this config) finished it (marked `skipped`); else
    None, saying why a completed one is re-run."""
    previous = store.read_record(path, warn_unreadable=notes)
    if store.is_finished(previous, version):
        log(f"already done: {label} ({path})")
        return {**previous, "skipped": True}
    if notes and previous is not None and previous.get("status") == "completed":
        log(f"stale: {label} was completed by code version {previous.get('code_version')}, the code is now "
            f"{version}; re-running it")
    return None


def _write_problem(e: WriteError) -> str:
    return (f"cannot write {e.filename}: {e.strerror}; free space (or fix permissions) under results_dir and run "
            f"again, it resumes from its last checkpoint")


def _fail(path: Path, record: dict, message: str, t0: float, cause: BaseException | None = None) -> NoReturn:
    """Record the run as failed with `message` (if even that cannot be written, say so) and raise RunFailed."""
    record.update(status="failed", error=message, duration_s=round(time.time() - t0, 3))
    try:
        store.write_record(path, record)
    except WriteError as e:
        message = f"{message}; the failure could not be recorded either ({e.strerror})"
    raise RunFailed(message) from cause


def _new_record(base: dict, data) -> dict[str, Any]:
    summary = data.summary()
    fingerprint = summary["fingerprint"] if "fingerprint" in summary else getattr(data, "fingerprint", None)
    return {**base, "metrics": {}, "details": {}, "history": [], "selected_epoch": None, "status": "running",
            "duration_s": None, "git_commit": store.git_commit(),
            "data_fingerprint": fingerprint, "versions": store.versions(), "device": None, "data": summary,
            "started_at": _dt.datetime.now().isoformat(timespec="seconds")}


def run(cfg: DictConfig, choices: dict[str, str] | None = None, log=print) -> dict[str, Any]:
    """Run one resolved config; returns its record. `completed` and `failed` records are written to the results
    store; `skipped` (done by the current code), `interrupted` (resumable: its checkpoint is kept) and `claimed`
    (another live process trains it; nothing done) are only returned. A record of a run stopped by a signal
    names it under `signal`.

    Raises UserError for bad input (nothing written), RunFailed after writing a `failed` record (or when even
    that could not be written).
    """
    return run_spec(RunSpec.of(cfg, choices), log)


def run_spec(spec: RunSpec, log=print) -> dict[str, Any]:
    """`run` of a config composed and identified once (`RunSpec`)."""
    cfg, choices, resolved, run_id = spec.cfg, spec.choices, spec.resolved, spec.run_id
    tcfg, ocfg, schedule = _validated(cfg)
    version = store.code_version(resolved)
    results_dir, label = Path(cfg.results_dir), f"{cfg.experiment_name}/{run_id}"
    path = store.run_json_path(results_dir, cfg.experiment_name, run_id)
    if (done := _done(path, label, version, log)) is not None:
        return done
    base = {"schema": store.SCHEMA_VERSION, "run_id": run_id, "experiment_name": cfg.experiment_name,
            "dataset": choices.get("dataset"), "model": choices.get("model"), "loss": choices.get("loss"),
            "seed": cfg.seed, "config": resolved, "choices": choices, "pairing": pairing_key(resolved),
            "code_version": version, "code_files": store.code_files(resolved)}
    claim = Claim(store.claim_path(results_dir, cfg.experiment_name, run_id), tcfg.claim_timeout_s)
    try:
        holder = claim.acquire()
    except WriteError as e:
        raise RunFailed(_write_problem(e)) from e
    if holder is not None:
        log(f"claimed: {label} is being trained by {holder.describe()}; not started here")
        return {**base, "status": "claimed", "claimed_by": asdict(holder)}
    try:
        if claim.took_over is not None:
            log(f"taking over {label} from {claim.took_over.describe()}: its claim is stale")
        if (done := _done(path, label, version, log, notes=False)) is not None:
            return done
        with StopSignals() as signals:
            record = _train(cfg, base, path, (tcfg, ocfg, schedule), claim, signals, log)
        return {**record, "signal": signals.requested()} if signals.requested() else record
    except ClaimLost as e:
        log(f"claimed: {label} was taken over by {e} while this process stalled; stopping here")
        return {**base, "status": "claimed", "claimed_by": asdict(e.holder) if e.holder is not None else None}
    finally:
        claim.release()


def _train(cfg: DictConfig, base: dict, path: Path, schemas: tuple, claim: Claim, signals: StopSignals,
           log) -> dict[str, Any]:
    """Train in the run's live log (`logger` group, instantiated by `_target_`, so no run's code includes it)."""
    node = cfg.get("logger") or {"_target_": "experiments.engine.loggers.RunLog"}
    try:
        run_log = hydra.utils.instantiate(node, experiment_name=cfg.experiment_name, run_id=base["run_id"])
    except Exception as e:  # noqa: BLE001 — a bad logger node is the user's input: one line
        raise UserError(f"logger: {_one_line(e)}; choose logger=none|tensorboard|csv (conf/logger/)") from e
    with run_log:
        return _train_logged(cfg, base, path, schemas, claim, signals, log, run_log)


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e.__cause__ or e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def _train_logged(cfg: DictConfig, base: dict, path: Path, schemas: tuple, claim: Claim, signals: StopSignals,
                  log, run_log) -> dict[str, Any]:
    tcfg, ocfg, schedule = schemas
    workdir = store.work_dir(cfg.results_dir, cfg.experiment_name, base["run_id"])
    configure_process(tcfg)  # before anything computes: data building runs with the run's threads too
    seed_everything(int(cfg.seed), tcfg.deterministic)  # model initialisation depends on it
    data, loss, model, metrics = build_components(cfg)
    record = _new_record(base, data)
    stamp = {k: record[k] for k in ("code_version", "data_fingerprint")}
    trainer = Trainer(tcfg, ocfg, workdir, int(cfg.seed), log=log, schedule=schedule, stamp=stamp,
                      on_epoch=run_log.epoch)
    record["device"] = str(trainer.device)
    t0 = time.time()
    try:
        fit = trainer.fit(model, loss, data, metrics, stop=signals.requested, beat=claim.beat)
    except (UserError, KeyboardInterrupt, ClaimLost):
        raise
    except RunFailed as e:
        _fail(path, record, str(e), t0)
    except WriteError as e:
        _fail(path, record, _write_problem(e), t0, e)
    except Exception as e:  # a crash inside training: record it, then surface it
        _fail(path, record, f"{type(e).__name__}: {e}", t0, e)
    if fit.interrupted:
        log(f"interrupted: {cfg.experiment_name}/{base['run_id']} stopped ({fit.interrupted}); run the same "
            f"command again to resume from {workdir / LAST}")
        return {**record, "status": "interrupted", "history": fit.history, "interrupted": fit.interrupted}
    record.update(status="completed", metrics=fit.metrics, details=fit.details, history=fit.history,
                  metric_info=describe(metrics, fit.metrics), metric_notes=dict(metrics.notes),
                  selected_epoch=fit.selected_epoch, duration_s=round(time.time() - t0, 3),
                  environment=numerics_environment(trainer.device, tcfg),
                  finished_at=_dt.datetime.now().isoformat(timespec="seconds"))
    try:
        store.write_record(path, record)
    except WriteError as e:
        _fail(path, record, _write_problem(e), t0, e)
    run_log.final(store.stable_config(base["config"]), fit.metrics)
    (workdir / LAST).unlink(missing_ok=True)
    if tcfg.keep_checkpoint == "none":
        shutil.rmtree(workdir, ignore_errors=True)
    headline = {k: v for k, v in fit.metrics.items() if k.startswith("test/") and v is not None}
    shown = ", ".join(f"{k}={v:.4f}" for k, v in list(headline.items())[:3])
    log(f"done {cfg.experiment_name}/{base['run_id']}: {shown} ({record['duration_s']:.1f} s) -> {path}")
    return record


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: list[str] | tuple[str, ...] = (),
                   budget: bool = True) -> tuple[DictConfig, dict[str, str]]:
    """The config `python -m experiments.train <overrides>` would run, plus its group choices (for tests,
    notebooks and tools). Relative `results_dir`/`data_dir` are taken from the current directory. `budget=False`:
    not yet scaled by `budget` (for a caller that applies more overrides first, then `apply_budget`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.results_dir = str(Path(cfg.results_dir).absolute())
        cfg.data_dir = str(Path(cfg.data_dir).absolute())
    return (apply_budget(cfg) if budget else cfg), choices


def _objective(record: dict, name: str) -> float:
    if not name.startswith("val/"):
        raise UserError(f"optimized_metric={name}: hyper-parameter search must optimise a validation metric")
    value = (record.get("metrics") or {}).get(name)
    if value is None:
        raise UserError(f"optimized_metric={name} is not among this run's metrics; pick one of "
                        f"{', '.join(k for k in record.get('metrics', {}) if k.startswith('val/'))}")
    return float(value)


def _status_file(status: str, message: str = "") -> None:
    """In a multirun, each job leaves its status in its Hydra output dir for the sweep summary."""
    try:
        out = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "losslab_status.json").write_text(json.dumps({"status": status, "message": message}))


def _exit_for(record: dict, multirun: bool) -> None:
    """Leave as a signal asks (after handing it to the launcher's own handler: submitit requeues the job), or
    with NOT_DONE_EXIT for a single run that is not finished here."""
    if record.get("signal"):
        signum = signal.Signals[record["signal"]]
        print(f"stopped: {record.get('interrupted') or signum.name + ' after the run finished'}", file=sys.stderr)
        forward_signal(signum)
        sys.exit(128 + signum)
    if record["status"] in ("interrupted", "claimed") and not multirun:
        sys.exit(NOT_DONE_EXIT)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> Any:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    cfg.results_dir = hydra.utils.to_absolute_path(cfg.results_dir)
    cfg.data_dir = hydra.utils.to_absolute_path(cfg.data_dir)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    try:
        apply_budget(cfg)
        record = run(cfg, choices)
        status = "skipped" if record.get("skipped") else record["status"]
        _status_file(status, record.get("interrupted") or "")
        _exit_for(record, multirun)
        if cfg.get("optimized_metric") and status in ("completed", "skipped"):
            return _objective(record, cfg.optimized_metric)
        return status
    except (UserError, RunFailed) as e:
        if _debugging(cfg):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        _status_file("failed", str(e))
        if not multirun:
            sys.exit(2 if isinstance(e, UserError) else 1)
        return "failed"
    except KeyboardInterrupt:
        print("error: interrupted; the run resumes from its last checkpoint when started again", file=sys.stderr)
        sys.exit(130)


def _chain(ex: BaseException):
    """An exception, its causes and contexts (OmegaConf wraps a resolver's own error)."""
    seen = set()
    while ex is not None and id(ex) not in seen:
        seen.add(id(ex))
        yield ex
        ex = ex.__cause__ or ex.__context__


def _one_line_errors() -> None:
    """Hydra's own errors (unknown override key, missing config option) as one `error:` line too."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func):
        if _debugging() or os.environ.get("HYDRA_FULL_ERROR") == "1":
            return original(func)
        try:
            return func()
        except Exception as ex:
            cause = next((e for e in _chain(ex) if isinstance(e, UserError)), None)
            if cause is not None:
                print(f"error: {cause}", file=sys.stderr)
                sys.exit(2)
            text = str(ex).split("Config search path")[0]
            parts = [p.strip().rstrip(".:") for p in text.splitlines() if p.strip()]
            print(f"error: {'; '.join(parts) or type(ex).__name__} (LOSSLAB_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
            sys.exit(2)

    hydra_utils.run_and_report = run_and_report


def cli() -> None:
    """`python -m experiments.train`: Hydra's errors as one line, then the Hydra app."""
    _one_line_errors()
    main()
