"""Fair tuning: each method's one hyper-parameter is chosen on validation; tables show the test runs of that value.

Table (or figure) `options` of `transform: experiments.report.tuning.select_on_validation`:

    options:
      select: val/mae                  # a validation metric; its direction is read from the runs' declared measures
      by: [dataset]                    # choose separately within each of these (default: dataset)
      where: {dataset: utkface}        # optional: keep only these runs first
      methods:                         # method → the runs that make it (column → value) and its grid key
        simloss: {match: {loss: simloss}, grid: loss.r}
        ce: {match: {loss: ce}}        # no grid: a method without a knob

Per method (and `by` group), the grid value with the best mean validation metric over seeds wins (ties: the
smallest value); its runs are returned with `method` and `chosen` ("r=0.5 (of 4)", "—" without a knob).
A test metric as the selection metric is refused. `grid_means` and `chosen_curve` reshape the same selection
for the `line` figure kind (a method's whole grid as a curve; a metric family such as `cs@k` against k).
"""
from __future__ import annotations

import pandas as pd

from experiments.engine.errors import UserError
from experiments.engine.metrics import family
from experiments.report.tables import measure

NO_KNOB = "—"


def _options(spec) -> dict:
    opts = dict(spec.options or {})
    if not opts.get("methods"):
        raise UserError(f"{spec.name}: options.methods is empty; name each method's runs (match) and grid key")
    return opts


def _selection(opts: dict, runs: pd.DataFrame) -> tuple[str, bool]:
    select = str(opts.get("select", ""))
    if not select.startswith("val/"):
        raise UserError(f"options.select={select or None}: choose hyper-parameters on a validation metric "
                        f"(val/<name>), never on test")
    meaning = measure(runs.attrs.get("measures", {}), select)
    if meaning.higher_is_better is None:
        raise UserError(f"options.select={select}: a descriptive number (no direction declared); select on a "
                        f"metric with a direction")
    return select, meaning.higher_is_better


def _same(column: pd.Series, value) -> pd.Series:
    try:
        return pd.to_numeric(column, errors="coerce").sub(float(value)).abs() < 1e-12
    except (TypeError, ValueError):
        return column.astype(str) == str(value)


def label_methods(runs: pd.DataFrame, spec) -> pd.DataFrame:
    """The runs of the declared methods (after `where`), with a `method` column."""
    opts = _options(spec)
    for col, value in (opts.get("where") or {}).items():
        runs = runs[_same(runs[col], value)] if col in runs else runs.iloc[:0]
    parts = []
    for name, method in opts["methods"].items():
        mask = pd.Series(True, index=runs.index)
        for col, value in (method.get("match") or {}).items():
            mask &= _same(runs[col], value) if col in runs else False
        parts.append(runs[mask].assign(method=name))
    out = pd.concat(parts) if parts else runs.iloc[:0]
    out.attrs = dict(runs.attrs)
    return out


def _order(value) -> tuple:
    try:
        return 0, float(value), ""
    except (TypeError, ValueError):
        return 1, 0.0, str(value)


def _shown(value) -> str:
    return f"{float(value):g}" if _order(value)[0] == 0 else str(value)


def _pick(group: pd.DataFrame, key: str, select: str, higher: bool):
    scores = pd.to_numeric(group[select], errors="coerce").groupby(group[key]).mean().dropna()
    if scores.empty:
        return None, 0
    ranked = sorted(scores.items(), key=lambda kv: ((-kv[1] if higher else kv[1]), _order(kv[0])))
    return ranked[0][0], int(group[key].nunique())


def select_on_validation(runs: pd.DataFrame, spec) -> pd.DataFrame:
    """Table transform: per method, the test runs of the grid value with the best mean validation metric."""
    opts = _options(spec)
    select, higher = _selection(opts, runs)
    labelled = label_methods(runs, spec)
    by = [c for c in opts.get("by", ["dataset"]) if c in labelled]
    chosen = []
    for (name, *_), group in labelled.groupby(["method"] + by, sort=False, dropna=False):
        key = opts["methods"][name].get("grid")
        if key is None:
            chosen.append(group.assign(chosen=NO_KNOB))
            continue
        best, trials = _pick(group, key, select, higher)
        if best is not None:
            label = f"{key.split('.')[-1]}={_shown(best)} (of {trials})"
            chosen.append(group[_same(group[key], best)].assign(chosen=label))
    out = pd.concat(chosen) if chosen else labelled.iloc[:0].assign(chosen=[])
    out.attrs = dict(runs.attrs)
    return out


def grid_means(runs: pd.DataFrame, spec) -> pd.DataFrame:
    """Figure transform: one row per (method, grid value) with every metric averaged over seeds — a method's
    whole tuning grid as one curve of the `line` kind (e.g. x: test/mistake_severity, metrics: [test/accuracy])."""
    opts = _options(spec)
    labelled = label_methods(runs, spec)
    rows = []
    for name, group in labelled.groupby("method", sort=False):
        key = opts["methods"][name].get("grid")
        values = group.groupby(key, dropna=False) if key else [(NO_KNOB, group)]
        for value, g in values:
            numeric = g.select_dtypes("number").mean(numeric_only=True)
            rows.append({**numeric.to_dict(), "method": name, "value": value, "seeds": len(g)})
    out = pd.DataFrame(rows)
    out.attrs = dict(runs.attrs)
    return out


def family_long(runs: pd.DataFrame, metric: str, x: str) -> pd.DataFrame:
    """One row per (run, parameter) of a metric family: `test/cs@3` → x = 3, column `test/cs`."""
    prefix = metric + "@"
    cols = [c for c in runs.columns if c.startswith(prefix)]
    parts = [runs.drop(columns=cols).assign(**{x: float(c[len(prefix):]), metric: runs[c]}) for c in cols]
    out = pd.concat(parts) if parts else runs.iloc[:0]
    out.attrs = dict(runs.attrs)
    return out


def chosen_curve(runs: pd.DataFrame, spec) -> pd.DataFrame:
    """Figure transform: the selected runs (`select_on_validation`) reshaped by `family_long`; options `family`
    (e.g. test/cs) and `x` (the parameter's column name, default k)."""
    opts = _options(spec)
    if "family" not in opts or family(opts["family"].split("/")[-1]) != opts["family"].split("/")[-1]:
        raise UserError(f"{spec.name}: options.family must name a metric family without @, e.g. test/cs")
    return family_long(select_on_validation(runs, spec), opts["family"], opts.get("x", "k"))
