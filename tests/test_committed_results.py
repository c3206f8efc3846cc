"""The committed tables are what the current code produces: each names the code version of its runs."""
import re
from pathlib import Path

import pytest

from experiments.store.results import code_version

TABLES = sorted((Path(__file__).resolve().parent.parent / "results" / "tables").glob("*.md"))


@pytest.mark.parametrize("table", TABLES, ids=[t.stem for t in TABLES])
def test_committed_table_was_made_by_the_current_code(table):
    text = table.read_text()
    versions = set(re.findall(r"code version ([0-9a-f]{16})", text)) | set(re.findall(r"code_version ([0-9a-f]{16})",
                                                                                       text))
    assert versions == {code_version()}, (f"{table.name} was made by code version {versions or 'unknown'}, the code "
                                          f"is now {code_version()}: run `make reproduce-table` and commit the result")
