"""Render a table or figure again only when something it is drawn from changed.

An item's key is a digest of everything its output depends on: the project's code and configs (any `.py` of the
project's packages and any file under `conf/`: a table's spec, transform, renderer and footer live there), the
state of its experiment's planned runs (run id, planned state, and the size and mtime of each run's JSON: a run
re-trained, resumed, failed or made stale changes it), the training budget, `KEEP_STALE`, the convergence summary
the footers quote and the table's paper-reference CSV. The keys of the last rendering are kept in
`<results>/.render-cache.json` with each table's summary and each figure's files; an item whose key matches and
whose outputs all exist is not drawn again, so its files keep their bytes. Deleting the cache file renders
everything again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from experiments.engine.checkpoint import atomic_write

CACHE = ".render-cache.json"
PACKAGES = ("experiments", "age_estimation", "image_classification", "average_k")


def _digest(parts: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def code_digest(root: Path) -> str:
    """Every source file of the project's packages and every config file, by size and mtime (no file is read)."""
    files = sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")) + sorted((root / "conf").rglob("*"))
    return _digest((p.relative_to(root), *_stat(p)) for p in files if p.is_file())


def runs_digest(points: Iterable[Any]) -> dict[str, str]:
    """Per experiment: its planned runs' ids and their JSON files' size and mtime (a run trained, resumed, failed or
    refused rewrites its file; a run made stale by a code change changes the code digest)."""
    by_exp: dict[str, list] = {}
    for p in points:
        stat = _stat(p.path) if p.run_id else (-1, -1)
        by_exp.setdefault(p.exp, []).append((p.run_id, *stat))
    return {exp: _digest(sorted(rows)) for exp, rows in by_exp.items()}


class RenderCache:
    """The keys of a results folder's last rendering; `fresh(item_id, key, outputs)` says whether to skip it."""

    def __init__(self, results_dir: Path):
        self.path = Path(results_dir) / CACHE
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}

    def cached(self, item_id: str, key: str) -> dict | None:
        """The entry stored for `item_id` when its key matches and every output it names still exists."""
        entry = self.entries.get(item_id)
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        outputs = entry.get("outputs", [])
        return entry if all(Path(p).exists() for p in outputs) else None

    def store(self, item_id: str, key: str, outputs: list[str], result: Any) -> None:
        self.entries[item_id] = {"key": key, "outputs": outputs, "result": result}

    def forget(self, item_id: str) -> None:
        self.entries.pop(item_id, None)

    def save(self) -> None:
        atomic_write(self.path, (json.dumps(self.entries, indent=0, sort_keys=True) + "\n").encode())


class NoCache(RenderCache):
    """Draws every item (a caller that cannot say which runs the items read)."""

    def __init__(self):
        self.entries = {}

    def save(self) -> None:
        pass


def item_key(base: str, runs: str, extra_files: Iterable[Path]) -> str:
    return _digest([base, runs, *((str(p), *_stat(p)) for p in extra_files)])


def render_cached(items: list[tuple[str, Any]], cache: RenderCache, key_of: Callable[[tuple[str, Any]], str],
                  outputs_of: Callable[[tuple[str, Any], Any], list[str]],
                  draw: Callable[[list[tuple[str, Any]]], list[tuple[str, Any]]]) -> list[tuple[str, Any]]:
    """(error, result) per item: from the cache where its key matches, else from `draw` over the stale items only
    (called once, with those items, so the runs are loaded only when something must be drawn)."""
    keys = {id(item): key_of(item) for item in items}
    hits = {id(item): cache.cached(_item_id(item), keys[id(item)]) for item in items}
    todo = [item for item in items if hits[id(item)] is None]
    drawn = dict(zip((id(item) for item in todo), draw(todo) if todo else []))
    out = []
    for item in items:
        if hits[id(item)] is not None:
            out.append(("", hits[id(item)]["result"]))
            continue
        error, result = drawn[id(item)]
        if error:
            cache.forget(_item_id(item))
        else:
            cache.store(_item_id(item), keys[id(item)], outputs_of(item, result), result)
        out.append((error, result))
    return out


def _item_id(item: tuple[str, Any]) -> str:
    kind, spec = item
    return f"{kind}:{spec.experiment}/{spec.name}"
