"""Run a profile with the data you have (`make reproduce-table ALLOW_MISSING=1`, `--allow-missing`).

A config whose dataset reads a missing `requires_data` path of its experiment is not run: it gets a refusal record
`data missing: <path>` (the mechanism every refused config uses), so its table cell reads "n/a — data missing:
<path>" while the configs whose data is present run. A config refused that way earlier goes back to the run queue
once its data is there (a refusal for another reason stays until the code changes).

Which entries a config reads: those at or above its `dataset.root`, and those below it whose first folder below
the root names its dataset (`cifar-10-batches-py` for `cifar10`, `cifar-100-python` for `cifar100`: the longest
dataset name of the experiment that prefixes the folder name, compared without case and punctuation); an entry
below the root that names none of the experiment's datasets is read by all of them (we cannot tell).
"""
from __future__ import annotations

import re
from pathlib import Path

from experiments.drivers import runner
from experiments.store import results as store

DATA_MISSING = "data missing: "


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def reads(entry: Path, root: Path | None, choice: str, choices: set[str]) -> bool:
    """Whether a config of dataset `choice` with `dataset.root` `root` reads the required path `entry`; `choices`
    are the dataset names of the experiment (module docstring)."""
    if root is None:
        return False
    if entry == root or entry in root.parents:
        return True
    if root not in entry.parents:
        return False
    folder = _norm(entry.relative_to(root).parts[0])
    owners = [c for c in choices if folder.startswith(_norm(c))]
    return not owners or max(owners, key=lambda c: len(_norm(c))) == choice


def _required(exp) -> list[Path]:
    data_dir = Path(exp.data_dir).absolute()
    return [data_dir / item.partition(" ")[0] for spec in exp.tables for item in spec.requires_data]


def missing_per_point(points: list, experiments: list) -> dict[int, list[Path]]:
    """id(point) → the missing paths it reads, for the pending and refused points (one composition per dataset)."""
    by_name = {e.name: e for e in experiments}
    composer, datasets = runner.Composer(), {}
    for p in points:
        if p.state in ("pending", "refused") and (p.exp, p.dataset_key) not in datasets:
            cfg, choices = composer(p.overrides)
            root = cfg.dataset.get("root")
            datasets[p.exp, p.dataset_key] = (Path(str(root)).absolute() if root else None, choices["dataset"])
    names: dict[str, set[str]] = {}
    for (exp, _), (_, choice) in datasets.items():
        names.setdefault(exp, set()).add(choice)
    out = {}
    for p in points:
        if (p.exp, p.dataset_key) in datasets:
            root, choice = datasets[p.exp, p.dataset_key]
            out[id(p)] = [e for e in _required(by_name[p.exp]) if not e.exists()
                          and reads(e, root, choice, names[p.exp])]
    return out


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
            runner._record_refusal(runner.RunSpec.of(*composer(p.overrides)), f"{DATA_MISSING}{paths[0]}")
            p.state, refused = "refused", refused + 1
    return refused
