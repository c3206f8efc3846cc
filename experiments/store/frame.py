"""Runs as a pandas DataFrame: the read side of the run store.

Kept out of `experiments.store.results` on purpose: that module is imported by the one-run driver and so enters
every run's code version (experiments.store.versions), while how runs are read back into a frame cannot change a
result. Editing this file therefore stales no run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.engine.environment import label as environment_label
from experiments.engine.errors import UserError
from experiments.store.results import read_record


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


RECORD_COLUMNS = ("run_id", "experiment_name", "dataset", "model", "loss", "seed", "status", "selected_epoch",
                  "duration_s", "git_commit", "device", "error")


def load_runs(results_dir: str | Path, experiment: str | None = None) -> pd.DataFrame:
    """One row per run JSON: record fields, `metrics` as columns (`test/accuracy`, ...), the resolved config
    flattened to dotted columns (`loss.r`, `dataset.imbalance.ratio`, ...), and `data.*` sizes.

    Group choices (`dataset`, `model`, `loss`) are the config-group option names. Runs of every status are
    returned; filter `status == "completed"` for tables. `environment` names the run's numerics environment
    (experiments.engine.environment.label). `metric_info` is the run's own declared meaning of each metric it
    reports (JSON text); `measures_of(runs)` reads them for a set of runs.
    """
    root = Path(results_dir) / "runs"
    pattern = f"{experiment}/*.json" if experiment else "*/*.json"
    rows = []
    for path in sorted(root.glob(pattern)):
        rec = read_record(path, warn_unreadable=True)
        if rec is None:
            continue
        row = {k: rec.get(k) for k in RECORD_COLUMNS}
        row["metric_info"] = json.dumps(rec["metric_info"], sort_keys=True) if rec.get("metric_info") else None
        row.update({f"data.{k}": v for k, v in (rec.get("data") or {}).items() if not isinstance(v, list)})
        cfg = _flatten(rec.get("config") or {})
        for k, v in cfg.items():
            if k not in row and not k.startswith(("hydra.", "sweeps.", "tables.", "metrics.")):
                row[k] = v
        row.update(rec.get("metrics") or {})
        row["environment"] = environment_label(rec.get("environment"))
        row["path"] = str(path)
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(RECORD_COLUMNS) + ["metric_info", "path"])


class Measures(dict):
    """Reported name → declared meaning (`{"higher_is_better": …, "unit": …}`) for one set of runs. Shared, not
    copied, by the frames derived from them when kept in `DataFrame.attrs` (pandas deep-copies `attrs` on every
    operation); never modified after `measures_of` builds it."""

    def __deepcopy__(self, memo: dict) -> "Measures":
        return self


def measures_of(runs: pd.DataFrame) -> Measures:
    """The declared meaning of every metric these runs report, from each run's own `metric_info`; a name two of
    them declare differently (another direction or unit) is refused, never settled by the last one read."""
    out = Measures()
    for text in (runs["metric_info"].dropna().unique() if "metric_info" in runs else ()):
        for name, meaning in json.loads(text).items():
            known = out.setdefault(name, meaning)
            if known != meaning:
                raise UserError(f"metric {name!r} is declared as {_meaning_text(known)} by some runs and as "
                                f"{_meaning_text(meaning)} by others ({_example(runs, text)}); one name has one "
                                f"meaning: rename one of the metrics, or keep these runs in separate tables")
    return out


def _meaning_text(meaning: dict) -> str:
    direction = {True: "higher is better", False: "lower is better"}.get(meaning.get("higher_is_better"),
                                                                        "descriptive")
    return f"{meaning.get('unit')} ({direction})"


def _example(runs: pd.DataFrame, text: str) -> str:
    paths = runs.loc[runs["metric_info"] == text, "path"] if "path" in runs else pd.Series(dtype=object)
    return f"e.g. {paths.iloc[0]}" if len(paths) else "these runs"
