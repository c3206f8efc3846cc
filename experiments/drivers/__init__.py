"""Drivers: one run (`train`), the experiment catalogue, planning, the worker pool, reproduce-table and bench.
The top floor: may import every floor below, nothing imports it except the entry points."""
