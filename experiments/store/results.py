"""The results store: one JSON per run under `<results_dir>/runs/<experiment_name>/<run_id>.json`.

`run_id` hashes the resolved config without volatile keys (paths, device, display, sweep/table specs), so
the same experiment on another machine or data location is the same run. Writes are atomic (temp + fsync +
rename). `load_runs(results_dir)` is the one API for tables, plots and notebooks; it skips an unreadable run JSON
with one warning line naming it. Claims of runs being trained live in `<results_dir>/claims/` (experiments.store.claims).
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.engine.checkpoint import atomic_write
from experiments.engine.environment import label as environment_label
from experiments.engine.errors import UserError, warn
from experiments.store import versions as code_versions

SCHEMA_VERSION = 1

# Keys that do not change what a run computes; dotted paths into the resolved config.
VOLATILE_KEYS = (
    "results_dir", "data_dir", "debug", "optimized_metric", "sweep_values", "figures", "sweeps", "tables", "profile",
    "dataset.root", "dataset.download", "dataset.num_workers", "dataset.sizes",
    "trainer.device", "trainer.progress", "trainer.num_workers", "trainer.cpu_threads", "trainer.interrupt_after",
    "trainer.keep_checkpoint", "trainer.eval_batch_size", "trainer.claim_timeout_s",
    "trainer.keep_freed_memory",
)


def _drop(cfg: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        if not isinstance(node, dict) or p not in node:
            return
        node = node[p]
    if isinstance(node, dict):
        node.pop(last, None)


def stable_config(resolved: dict) -> dict:
    cfg = json.loads(json.dumps(resolved, default=str))
    for key in VOLATILE_KEYS:
        _drop(cfg, key)
    return cfg


def compute_run_id(resolved: dict) -> str:
    payload = json.dumps(stable_config(resolved), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_json_path(results_dir: str | Path, experiment_name: str, run_id: str) -> Path:
    return Path(results_dir) / "runs" / experiment_name / f"{run_id}.json"


def work_dir(results_dir: str | Path, experiment_name: str, run_id: str) -> Path:
    """Checkpoints of an unfinished run live here (the run dir)."""
    return Path(results_dir) / "work" / experiment_name / run_id


def claim_path(results_dir: str | Path, experiment_name: str, run_id: str) -> Path:
    return Path(results_dir) / "claims" / experiment_name / f"{run_id}.claim"


def write_record(path: Path, record: dict) -> None:
    payload = json.dumps(record, indent=1, sort_keys=False, allow_nan=True, default=str).encode()
    atomic_write(Path(path), payload)


def read_record(path: Path, warn_unreadable: bool = False) -> dict | None:
    """The run record at `path`; None if there is none or it is unreadable (then one warning line if asked)."""
    try:
        record = json.loads(Path(path).read_text())
        if isinstance(record, dict):
            return record
        problem = "not a JSON object"
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = f"{type(e).__name__}: {e}"
    if warn_unreadable:
        warn(f"run record {path} is unreadable ({problem}); skipped (its run is re-run when its config runs again)")
    return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("-dirty" if dirty else "")


def code_version(resolved: dict | None = None) -> str:
    """The version of the current code for a run of `resolved` (a run's resolved config; none: a run naming no
    target): sha256 (16 hex) over the digests of the files it executes (experiments.store.versions), read from
    the working tree so uncommitted edits count."""
    return code_versions.CURRENT.of_config(resolved or {}).version


def code_files(resolved: dict | None = None) -> dict[str, str]:
    """{path: digest} of the files behind `code_version(resolved)`: recorded per run, so a stale run can say which
    file changed."""
    return code_versions.CURRENT.of_config(resolved or {}).files


def is_finished(record: dict | None, current: str | None = None) -> bool:
    """A completed run made by the current code (skipped by `run` and the reproduce driver): its `code_version`
    equals the one the current code gives its config (`current`, when the caller has computed it already)."""
    if not record or record.get("status") != "completed":
        return False
    return record.get("code_version") == (current or code_version(record.get("config") or {}))


def versions() -> dict[str, str]:
    """Package versions from their metadata (importing torchvision here would cost seconds per worker)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "hydra-core", "numpy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


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
