"""`python -m experiments.train [overrides]` runs one config; `-m` runs a Hydra multirun.

A run writes exactly one JSON (`experiments.results`). A completed run is skipped, a failed one retried, an
unfinished one resumed from its checkpoint. Errors print one `error:` line (full traceback with `debug=true`
or LOSSLAB_DEBUG=1).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import results as store
from experiments.config import build_components, validate
from experiments.errors import RunFailed, UserError
from experiments.metrics import describe
from experiments.trainer import Trainer, seed_everything


def _debugging(cfg: DictConfig | None = None) -> bool:
    return os.environ.get("LOSSLAB_DEBUG", "") not in ("", "0") or bool(cfg is not None and cfg.get("debug"))


def run(cfg: DictConfig, choices: dict[str, str] | None = None, log=print) -> dict[str, Any]:
    """Run one resolved config; returns the run record (also written to the results store).

    Raises UserError for bad input (nothing written), RunFailed after writing a `failed` record.
    """
    choices = choices or {}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tcfg, ocfg = validate(cfg)
    run_id = store.compute_run_id(resolved)
    results_dir = Path(cfg.results_dir)
    path = store.run_json_path(results_dir, cfg.experiment_name, run_id)
    previous = store.read_record(path)
    if store.is_finished(previous):
        log(f"already done: {cfg.experiment_name}/{run_id} ({path})")
        previous["skipped"] = True
        return previous

    workdir = store.work_dir(results_dir, cfg.experiment_name, run_id)
    seed_everything(int(cfg.seed), tcfg.deterministic)  # model initialisation depends on it
    data, loss, model, metrics = build_components(cfg)
    record: dict[str, Any] = {
        "schema": store.SCHEMA_VERSION, "run_id": run_id, "experiment_name": cfg.experiment_name,
        "dataset": choices.get("dataset"), "model": choices.get("model"), "loss": choices.get("loss"),
        "seed": cfg.seed, "config": resolved, "choices": choices, "metrics": {}, "details": {},
        "history": [], "selected_epoch": None, "status": "running", "duration_s": None,
        "git_commit": store.git_commit(), "code_version": store.code_version(), "versions": store.versions(), "device": None, "data": data.summary(),
        "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    t0 = time.time()
    trainer = Trainer(tcfg, ocfg, workdir, int(cfg.seed), log=log)
    record["device"] = str(trainer.device)
    try:
        fit = trainer.fit(model, loss, data, metrics)
    except RunFailed as e:
        record.update(status="failed", error=str(e), duration_s=round(time.time() - t0, 3))
        store.write_record(path, record)
        raise
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:  # a crash inside training: record it, then surface it
        record.update(status="failed", error=f"{type(e).__name__}: {e}", duration_s=round(time.time() - t0, 3))
        store.write_record(path, record)
        raise RunFailed(f"{type(e).__name__}: {e}") from e
    if fit.interrupted:
        log(f"interrupted after epoch {len(fit.history)} (trainer.interrupt_after); re-run to resume")
        return {**record, "status": "interrupted", "history": fit.history}
    record.update(status="completed", metrics=fit.metrics, details=fit.details, history=fit.history,
                  metric_info=describe(metrics, fit.metrics), metric_notes=dict(metrics.notes),
                  selected_epoch=fit.selected_epoch, duration_s=round(time.time() - t0, 3),
                  finished_at=_dt.datetime.now().isoformat(timespec="seconds"))
    store.write_record(path, record)
    last = workdir / "last.pt"
    if last.exists():
        last.unlink()
    if tcfg.keep_checkpoint == "none":
        shutil.rmtree(workdir, ignore_errors=True)
    headline = {k: v for k, v in fit.metrics.items() if k.startswith("test/") and v is not None}
    shown = ", ".join(f"{k}={v:.4f}" for k, v in list(headline.items())[:3])
    log(f"done {cfg.experiment_name}/{run_id}: {shown} ({record['duration_s']:.1f} s) -> {path}")
    return record


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> tuple[DictConfig, dict[str, str]]:
    """The config `python -m experiments.train <overrides>` would run, plus its group choices (for tests,
    notebooks and tools). Relative `results_dir`/`data_dir` are taken from the current directory."""
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
    return cfg, choices


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


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> Any:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    cfg.results_dir = hydra.utils.to_absolute_path(cfg.results_dir)
    cfg.data_dir = hydra.utils.to_absolute_path(cfg.data_dir)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    try:
        record = run(cfg, choices)
        status = "skipped" if record.get("skipped") else record["status"]
        _status_file(status)
        if cfg.get("optimized_metric"):
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
            text = str(ex).split("Config search path")[0]
            parts = [p.strip().rstrip(".:") for p in text.splitlines() if p.strip()]
            print(f"error: {'; '.join(parts) or type(ex).__name__} (LOSSLAB_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
            sys.exit(2)

    hydra_utils.run_and_report = run_and_report


if __name__ == "__main__":
    _one_line_errors()
    main()
