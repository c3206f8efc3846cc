"""Synthetic run JSONs for table and figure tests: written with the store's own writer, read back by `load_runs`."""
from __future__ import annotations

from pathlib import Path

from experiments.store.results import code_version, write_record

INFO = {"accuracy": {"higher_is_better": True, "unit": "fraction"},
        "mae_expected": {"higher_is_better": False, "unit": "years"}}


def write_run(results_dir: Path, experiment: str, run_id: str, *, dataset: str, loss: str, seed: int = 0,
              metrics: dict | None = None, status: str = "completed", error: str | None = None,
              config: dict | None = None, **extra) -> None:
    rec = {"run_id": run_id, "experiment_name": experiment, "dataset": dataset, "model": "m", "loss": loss,
           "seed": seed, "status": status, "config": {"seed": seed, **(config or {})},
           "metrics": metrics or {}, "metric_info": INFO, **extra}
    rec.setdefault("code_version", code_version(rec["config"]))
    if error is not None:
        rec["error"] = error
    write_record(Path(results_dir) / "runs" / experiment / f"{run_id}.json", rec)
