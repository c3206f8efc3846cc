"""Run a profile with the data you have (`make reproduce-table ALLOW_MISSING=1`, `--allow-missing`).

A config whose dataset reads a missing `requires_data` path of its experiment is not run: it gets a refusal record
`data missing: <path>` (the mechanism every refused config uses), so its table cell reads "n/a — data missing:
<path>" while the configs whose data is present run. A config refused that way earlier goes back to the run queue
once its data is there (a refusal for another reason stays until the code changes).

Which entries a config reads: the folder it reads is its `dataset.root`, or `root/<folder>` when its dataset class
declares a `folder` attribute (CIFAR: `cifar-10-batches-py`, `cifar-100-python`, declared beside the reader in
image_classification/cifar.py); it reads an entry at, above or inside that folder, and no other.
"""
from __future__ import annotations

from pathlib import Path

import hydra.utils
from omegaconf import DictConfig

from experiments.drivers import runner
from experiments.store import results as store

DATA_MISSING = "data missing: "


def reads(entry: Path, folder: Path | None) -> bool:
    """Whether a config that reads `folder` (None: no files) needs the required path `entry`."""
    if folder is None:
        return False
    return entry == folder or entry in folder.parents or folder in entry.parents


def read_folder(dataset: DictConfig) -> Path | None:
    """The folder a dataset config reads: `root`, or `root/<folder>` as its class declares (module docstring)."""
    root = dataset.get("root")
    if not root:
        return None
    target = hydra.utils.get_object(str(dataset._target_)) if dataset.get("_target_") else None
    root, folder = Path(str(root)).absolute(), getattr(target, "folder", "")
    return root / folder if folder and root.name != folder else root   # a root naming the folder is read as it is


def _required(exp) -> list[Path]:
    data_dir = Path(exp.data_dir).absolute()
    return [data_dir / item.partition(" ")[0] for spec in exp.tables for item in spec.requires_data]


def missing_per_point(points: list, experiments: list) -> dict[int, list[Path]]:
    """id(point) → the missing paths it reads, for the pending and refused points (one composition per dataset)."""
    by_name = {e.name: e for e in experiments}
    composer, folders = runner.Composer(), {}
    for p in points:
        if p.state in ("pending", "refused") and (p.exp, p.dataset_key) not in folders:
            folders[p.exp, p.dataset_key] = read_folder(composer(p.overrides)[0].dataset)
    return {id(p): [e for e in _required(by_name[p.exp]) if not e.exists() and reads(e, folders[p.exp, p.dataset_key])]
            for p in points if (p.exp, p.dataset_key) in folders}


def refuse_missing(points: list, experiments: list) -> int:
    """Refuse (with a record) the pending points whose data is missing; send back to the queue the points refused
    for missing data whose data is now present. Returns the number refused."""
    missing, composer, refused = missing_per_point(points, experiments), runner.Composer(), 0
    for p in points:
        paths = missing.get(id(p))
        if paths is None:
            continue
        if p.state == "refused":
            if not paths and str((store.read_record(p.path) or {}).get("error", "")).startswith(DATA_MISSING):
                p.state, p.why = "pending", "missing"
            continue
        if paths:
            runner._record_refusal(runner._spec(p.overrides, composer, p.carried), f"{DATA_MISSING}{paths[0]}")
            p.state, refused = "refused", refused + 1
    return refused
