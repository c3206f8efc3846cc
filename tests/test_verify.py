"""`make verify`: cell alignment, the equivalence/difference statistics, verdicts, paper-value parsing, the CLI
and the numerics environment of a run. Known answers are computed by hand in the tests."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from experiments.engine.errors import UserError
from experiments.report.compare import align, canonical


def _long(rows):
    return pd.DataFrame(rows, columns=["dataset", "loss.r", "metric", "mean", "std", "n"])


def test_align_matches_cells_across_spellings_and_reports_the_unmatched():
    ours = _long([["age", 0.0, "test/mae", 1.0, 0.1, 5], ["age", 0.3, "test/mae", 0.9, 0.1, 5],
                  ["age", None, "test/mae", 2.0, 0.2, 5]])
    ref = pd.DataFrame({"dataset": ["age", "age", "age", "age"], "loss.r": ["0", "0.30", "—", "0.7"],
                        "metric": ["test/mae"] * 4, "mean": ["1.1", "0.8", "2.1", "0.5"]})
    out = align(ours, ref)
    assert list(out["match"]) == ["both", "both", "both", "reference_only"]
    assert list(out["loss.r"]) == ["0", "0.3", "—", "0.7"]
    assert list(out["mean_ours"].iloc[:3]) == [1.0, 0.9, 2.0]
    assert list(out["mean_ref"]) == ["1.1", "0.8", "2.1", "0.5"]
    assert list(out["row_ref"]) == [0, 1, 2, 3]
    assert pd.isna(out["row_ours"].iloc[3]) and math.isnan(out["std_ours"].iloc[3])
    lone = align(ours, ref.iloc[:1])
    assert list(lone["match"]) == ["both", "ours_only", "ours_only"]


def test_align_refuses_duplicates_and_missing_keys():
    ours = _long([["age", 0.0, "test/mae", 1.0, 0.1, 5]])
    with pytest.raises(UserError, match="reference row 1: cell dataset=age, loss.r=0, metric=test/mae appears more"):
        align(ours, pd.concat([ours, ours], ignore_index=True))
    with pytest.raises(UserError, match="reference has no column loss.r"):
        align(ours, ours.drop(columns="loss.r"))


@pytest.mark.parametrize("value, text", [(10, "10"), (10.0, "10"), ("10.0", "10"), (0.3, "0.3"), ("0.30", "0.3"),
                                         (float("nan"), "—"), (None, "—"), ("", "—"), ("ce", "ce"),
                                         (True, "True"), ("1e-3", "0.001")])
def test_canonical_spelling(value, text):
    assert canonical(value) == text
