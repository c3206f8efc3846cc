"""The committed tables are what the current code produces: no run behind them would be stale now.

Each table names the code versions of its runs (footer line "Code versions of these runs") and records beside it,
in `<table>.versions.json`, the deps each version was computed from (the targets and metric sets of its runs'
configs). The current code must give every such deps the version recorded: a comment or docstring edit, or an
edit to code no table's runs execute, leaves them equal; an executable edit to a file a table's runs execute
does not (experiments.store.versions).
"""
import json
import re
from pathlib import Path

import pytest

from experiments.store import versions

TABLES = Path(__file__).resolve().parent.parent / "results" / "tables"
MARKDOWN = sorted(TABLES.glob("*.md"))
RECORDS = sorted(TABLES.glob("*.versions.json"))
LINE = "Code versions of these runs"


def _listed(table: Path) -> set[str]:
    line = next((ln for ln in table.read_text().splitlines() if ln.startswith(LINE)), "")
    return set(re.findall(r"\b[0-9a-f]{16}\b", line))


@pytest.mark.parametrize("record", RECORDS, ids=[r.name.removesuffix(".versions.json") for r in RECORDS])
def test_every_code_version_of_a_committed_table_is_what_the_current_code_gives_its_runs(record):
    recorded = json.loads(record.read_text())
    stale = {}
    for version, entry in recorded.items():
        now = {versions.CURRENT.of_deps(versions.Deps.from_list(deps)).version for deps in entry["deps"]}
        if now != {version}:
            stale[version] = sorted(now)
    assert not stale, (f"{record.name}: runs made by code version(s) {sorted(stale)} would be stale now (the current "
                       f"code gives {stale}); `make status` names the changed files; run `make reproduce-table` and "
                       f"commit the result")


@pytest.mark.parametrize("table", MARKDOWN, ids=[t.stem for t in MARKDOWN])
def test_every_committed_table_names_versions_that_a_versions_record_backs(table):
    """A table with runs lists their versions; each is recorded (with its deps) beside a table of the same run
    set: its own `<table>.versions.json`, or, for the matrix ranks, those of the matrix's per-dataset tables."""
    if "No completed runs yet." in table.read_text():
        return
    listed = _listed(table)
    assert listed, f"{table.name} does not name the code versions of its runs (a line starting {LINE!r})"
    own = TABLES / f"{table.stem}.versions.json"
    backing = [own] if own.exists() else [r for r in RECORDS if r.name.startswith(table.stem)]
    known = set().union(*(json.loads(r.read_text()) for r in backing)) if backing else set()
    assert listed <= known, f"{table.name} names versions {sorted(listed - known)} no versions record backs"
