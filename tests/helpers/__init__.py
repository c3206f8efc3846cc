"""Shared test helpers: fixture writers in the real on-disk formats (`formats`), the CLI runner (`cli`),
reference formulas of official code (`reference_losses`) and test-only components (`components`).

`NaNAfterFirstBatch` is re-exported here because configs in tests name it as `tests.helpers.NaNAfterFirstBatch`.
"""
from tests.helpers.components import NaNAfterFirstBatch

__all__ = ["NaNAfterFirstBatch"]
