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

from experiments.engine.checkpoint import atomic_write
from experiments.engine.errors import warn
from experiments.store import versions as code_versions

SCHEMA_VERSION = 1

# Keys that do not change what a run computes; dotted paths into the resolved config.
VOLATILE_KEYS = (
    "results_dir", "data_dir", "debug", "optimized_metric", "sweep_values", "figures", "sweeps", "tables", "profile",
    "dataset.root", "dataset.download", "dataset.num_workers", "dataset.sizes",
    "trainer.device", "trainer.progress", "trainer.num_workers", "trainer.cpu_threads", "trainer.interrupt_after",
    "trainer.keep_checkpoint", "trainer.eval_batch_size", "trainer.claim_timeout_s",
    "trainer.keep_freed_memory", "trainer.checkpoint_every_s", *code_versions.WATCHING_KEYS,
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
