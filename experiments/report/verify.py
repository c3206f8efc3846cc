"""Did it reproduce? A verdict per table cell, from our runs' summary against a reference's.

For one cell, d = mean(ours) − mean(reference) and its standard error se come from
- **two samples** (reference with std and n ≥ 2): Welch, se² = s₁²/n₁ + s₂²/n₂ with Welch–Satterthwaite df;
- **one sample** (a bare reference number, no std or n): our runs against the number, se = s₁/√n₁, df = n₁ − 1.
Then, at level α and with the equivalence margin ±δ the metric declares (experiments.engine.metrics.Measure):
- `reproduced`: equivalence shown by two one-sided t-tests (TOST): H₀ d ≤ −δ and H₀ d ≥ +δ both rejected at α,
  i.e. the (1 − 2α) interval of d lies inside (−δ, +δ);
- `differs`: the two-sided t-test of d = 0 is significant after Holm–Bonferroni over the table's compared cells
  *and* |d| > δ;
- `inconclusive`: neither; `delta_min` is the smallest margin the TOST would have shown equivalence for
  (the farther end of the (1 − 2α) interval).
With no spread at all (se = 0) d is known exactly: reproduced when |d| < δ, differs when |d| > δ. Pure pandas/scipy
(scipy.stats.t); docs/statistics.md, "The verdict procedure".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from experiments.engine.errors import UserError
from experiments.engine.metrics import MARGINS, RELATIVE_MARGIN, Measure, family
from experiments.report import stats
from experiments.report.compare import BOTH, align, canonical

ALPHA = stats.ALPHA
REPRODUCED, DIFFERS, INCONCLUSIVE = "reproduced", "differs", "inconclusive"
MARKS = {REPRODUCED: "✓", DIFFERS: "✗", INCONCLUSIVE: "?"}
WELCH, ONE_SAMPLE = "Welch TOST", "one-sample TOST"

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PAPER = re.compile(rf"^\s*(?P<mean>{_NUMBER})\s*(?:(?:±|\+/-|\+-)\s*(?P<std>{_NUMBER}))?\s*$")


def parse_paper_value(text: str) -> tuple[float, float | None]:
    """`71.3`, `71.3 ± 0.4`, `71.3±0.4` (or `+/-`) → (mean, std or None). ValueError with the accepted spellings
    otherwise, or for a negative std."""
    found = _PAPER.match(str(text))
    if found is None:
        raise ValueError(f"paper_value {text!r} does not parse; write a number, optionally `± std` "
                         f"(e.g. 71.3 or 71.3 ± 0.4)")
    std = None if found["std"] is None else float(found["std"])
    if std is not None and std < 0:
        raise ValueError(f"paper_value {text!r} has a negative std; a standard deviation is ≥ 0")
    return float(found["mean"]), std


@dataclass(frozen=True)
class Evidence:
    """One cell's comparison: d, its standard error and df, the test used, the TOST p-value (max of the two
    one-sided ones), the two-sided p-value of d = 0, the (1 − 2α) interval of d and `delta_min`."""

    test: str
    diff: float
    se: float
    df: float
    p_tost: float
    p_diff: float
    low: float
    high: float
    delta_min: float


def tost_p(diff: float, se: float, df: float, delta: float) -> float:
    """p-value of the TOST for |true difference| < δ: max(P(T ≥ (d + δ)/se), P(T ≤ (d − δ)/se)), T ~ t(df)."""
    if se == 0:
        return 0.0 if abs(diff) < delta else 1.0
    lower = sps.t.sf((diff + delta) / se, df)
    upper = sps.t.cdf((diff - delta) / se, df)
    return float(max(lower, upper))


def evidence(diff: float, se: float, df: float, delta: float, test: str, alpha: float = ALPHA) -> Evidence:
    """The TOST and the two-sided test of d = 0 for a difference `diff` with standard error `se`."""
    if se == 0:
        p_diff = 1.0 if diff == 0 else 0.0
        return Evidence(test, diff, 0.0, df, tost_p(diff, 0.0, df, delta), p_diff, diff, diff, abs(diff))
    half = sps.t.ppf(1 - alpha, df) * se
    p_diff = float(2 * sps.t.sf(abs(diff) / se, df))
    return Evidence(test, diff, se, df, tost_p(diff, se, df, delta), p_diff, diff - half, diff + half,
                    abs(diff) + half)


def two_sample(mean1: float, s1: float, n1: int, mean2: float, s2: float, n2: int, delta: float,
               alpha: float = ALPHA) -> Evidence:
    """Ours (mean1, s1, n1) against a reference sample (mean2, s2, n2): Welch TOST; both n ≥ 2."""
    se, df = stats.welch_se_df(s1, n1, s2, n2)
    return evidence(mean1 - mean2, se, df, delta, WELCH, alpha)


def one_sample(mean: float, s: float, n: int, value: float, delta: float, alpha: float = ALPHA) -> Evidence:
    """Ours (mean, s, n ≥ 2) against a number without spread: one-sample TOST, df = n − 1."""
    return evidence(mean - value, s / math.sqrt(n), n - 1, delta, ONE_SAMPLE, alpha)


def verdict(p_tost: float, p_holm: float, diff: float, delta: float, alpha: float = ALPHA) -> str:
    """reproduced (TOST at α) / differs (Holm-significant and |d| > δ) / inconclusive."""
    if p_tost < alpha:
        return REPRODUCED
    if p_holm < alpha and abs(diff) > delta:
        return DIFFERS
    return INCONCLUSIVE


def cell_evidence(row: pd.Series, alpha: float = ALPHA) -> Evidence | None:
    """The comparison of one aligned cell (`mean_ours`, `std_ours`, `n_ours`, `mean_ref`, `std_ref`, `n_ref`,
    `delta`); None when our side has fewer than 2 runs. A reference without a usable std or with n < 2 is a
    number: the one-sample form."""
    n1, n2 = _count(row["n_ours"]), _count(row.get("n_ref"))
    if n1 < 2 or not np.isfinite(row["std_ours"]):
        return None
    s2 = row.get("std_ref")
    if n2 >= 2 and s2 is not None and np.isfinite(s2):
        return two_sample(row["mean_ours"], row["std_ours"], n1, row["mean_ref"], s2, n2, row["delta"], alpha)
    return one_sample(row["mean_ours"], row["std_ours"], n1, row["mean_ref"], row["delta"], alpha)


def _count(value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) else 0


VERDICT_COLUMNS = ["test", "delta", "diff", "se", "df", "low", "high", "p_tost", "p_diff", "p_holm", "delta_min",
                   "verdict"]


def judge(cells: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Verdicts for the compared cells of one table (aligned rows with `delta` in raw units): the evidence of
    each cell, Holm–Bonferroni over the table's two-sided p-values (one family per table), the verdict. Cells
    with fewer than 2 of our runs are inconclusive with test `too few runs`."""
    found = [cell_evidence(r, alpha) for _, r in cells.iterrows()]
    out = cells.copy()
    for name in ("test", "diff", "se", "df", "low", "high", "p_tost", "p_diff", "delta_min"):
        out[name] = [getattr(e, name) if e is not None else (("too few runs" if name == "test" else np.nan))
                     for e in found]
    out["p_holm"] = stats.holm(out["p_diff"].to_numpy(dtype=float)) if len(out) else []
    out["verdict"] = [verdict(r.p_tost, r.p_holm, r["diff"], r["delta"], alpha) if e is not None else INCONCLUSIVE
                      for e, (_, r) in zip(found, out.iterrows())]
    return out


def counts(judged: pd.DataFrame) -> dict[str, int]:
    """How many cells got each verdict."""
    return {v: int((judged["verdict"] == v).sum()) for v in (REPRODUCED, DIFFERS, INCONCLUSIVE)}


# ------------------------------------------------------------------ reference files and whole tables
REFERENCE_COLUMNS = ("mean", "std", "n")


def _fail(source: str, line: int | None, message: str) -> UserError:
    where = f"{source} line {line}" if line is not None else source
    return UserError(f"{where}: {message}")


def _missing_columns(frame: pd.DataFrame, needed: list[str], source: str, fix: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise _fail(source, None, f"no column {', '.join(missing)}; {fix}")


def _paper_n(text: str, std: float | None, source: str, line: int) -> float:
    if text == "":
        return np.nan
    try:
        n = float(text)
    except ValueError:
        n = np.nan
    if not (n >= 1 and float(n).is_integer()):
        raise _fail(source, line, f"paper_n={text!r}: the number of seeds the paper averaged, an integer ≥ 1")
    if std is not None and n < 2:
        raise _fail(source, line, f"paper_n={text} with a std: a standard deviation needs paper_n ≥ 2; fix paper_n "
                                  f"or drop `± std` to compare with the bare number")
    return n


def paper_reference(frame: pd.DataFrame, keys: list[str], scales: dict[str, float], source: str) -> pd.DataFrame:
    """The filled rows of a `results/paper_reference/<table>.csv` (read as text, its index = file line numbers)
    as a long form in raw units: keys, `metric`, `mean`, `std` (NaN when not given), `n` (`paper_n`, NaN when not
    given). `paper_value` is in the table's printed unit (`scales[metric]`: 100 for rates shown in %)."""
    _missing_columns(frame, keys + ["metric", "paper_value"], source,
                     f"a paper reference needs the cell keys {', '.join(keys)}, `metric` and `paper_value` "
                     f"(re-render the table to get the template)")
    rows = []
    for line, r in frame.iterrows():
        text = str(r["paper_value"]).strip()
        if text == "":
            continue
        try:
            mean, std = parse_paper_value(text)
        except ValueError as e:
            raise _fail(source, line, str(e)) from None
        n = _paper_n(str(r.get("paper_n", "")).strip(), std, source, line)
        scale = scales.get(str(r["metric"]), 1.0)
        rows.append({**{k: r[k] for k in keys}, "metric": r["metric"], "mean": mean / scale,
                     "std": np.nan if std is None else std / scale, "n": n, "line": line})
    return pd.DataFrame(rows, columns=keys + ["metric", "mean", "std", "n", "line"]).set_index("line")


def long_reference(frame: pd.DataFrame, keys: list[str], source: str) -> pd.DataFrame:
    """A table's long form read back from its .csv (index = file line numbers): the cells with a mean, with
    `mean`, `std`, `n` as numbers; a negative std or an unparsable number names its line."""
    _missing_columns(frame, keys + ["metric", *REFERENCE_COLUMNS], source,
                     f"a table's long form has the cell keys {', '.join(keys)}, `metric`, `mean`, `std` and `n` "
                     f"(as `make tables` writes results/tables/<table>.csv)")
    out = frame[keys + ["metric"]].copy()
    for name in REFERENCE_COLUMNS:
        values = pd.to_numeric(frame[name].replace("", np.nan), errors="coerce")
        bad = values.isna() & frame[name].astype(str).str.strip().ne("") & frame[name].notna()
        if bad.any():
            line = bad.idxmax()
            raise _fail(source, line, f"{name}={frame.loc[line, name]!r} is not a number; fix or delete the row")
        out[name] = values
    if (out["std"] < 0).any():
        line = (out["std"] < 0).idxmax()
        raise _fail(source, line, f"std={out.loc[line, 'std']} is negative; a standard deviation is ≥ 0")
    return out[out["mean"].notna() & (out["n"].fillna(0) > 0)]


def override(overrides: dict[str, float], metric: str) -> float | None:
    """A table's `verify.margins` entry for `metric`, by its full, leaf or family name (`avgk_acc` covers
    `test/avgk_acc@3`); None when the table sets none."""
    leaf = str(metric).split("/")[-1]
    return next((overrides[k] for k in (metric, leaf, family(leaf)) if k in (overrides or {})), None)


def margins(aligned: pd.DataFrame, measures: dict[str, Measure], overrides: dict[str, float]) -> list[float]:
    """δ in raw units per aligned cell: the table's `verify.margins` (in the display scale), else the metric's
    declared Measure margin, else its unit's default."""
    return [measures[r["metric"]].delta(float(r["mean_ref"]), override(overrides, r["metric"]))
            for _, r in aligned.iterrows()]


def margin_text(metric: str, meaning: Measure, overrides: dict[str, float]) -> str:
    """How δ was set for `metric`, for the outputs: `test/mae ±0.2 years (default for years)`."""
    unit = "pp" if meaning.unit == "fraction" else meaning.suffix
    given = override(overrides, metric)
    if given is not None:
        return f"{metric} ±{given:g} {unit} (table verify.margins)"
    if meaning.margin is not None:
        return f"{metric} ±{meaning.margin:g} {unit} (declared by the metric)"
    if meaning.unit in MARGINS:
        return f"{metric} ±{MARGINS[meaning.unit]:g} {unit} (default for {meaning.unit})"
    return f"{metric} ±{RELATIVE_MARGIN:.0%} of |reference| (default for {meaning.unit})"


def check_overrides(overrides: dict, metrics: list[str], table: str) -> dict[str, float]:
    """A table's `verify.margins`: every key names one of its metrics (full, leaf or family name); values > 0."""
    names = {n for m in metrics for n in (m, m.split("/")[-1], family(m.split("/")[-1]))}
    for key, value in (overrides or {}).items():
        if key not in names:
            raise UserError(f"table {table}: verify.margins.{key}: no such metric in this table; use one of "
                            f"{', '.join(metrics)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise UserError(f"table {table}: verify.margins.{key}={value!r}: a margin is a number > 0 in the "
                            f"table's unit (percentage points for rates)")
    return dict(overrides or {})


def unknown_keys(reference_only: pd.DataFrame, ours: pd.DataFrame, keys: list[str],
                 metrics: list[str]) -> list[tuple[object, str]]:
    """Reference cells no cell of ours can ever match: a key value or metric that no cell of the table has (a
    typo), as (row label, `key=value`). Cells whose values all occur, only not together, are not run yet."""
    known = {k: set(ours[k].map(canonical)) for k in keys}
    found = []
    for _, r in reference_only.iterrows():
        bad = [f"{k}={r[k]}" for k in keys if r[k] not in known[k]]
        bad += [f"metric={r['metric']}"] if r["metric"] not in metrics else []
        if bad:
            found.append((r["row_ref"], ", ".join(bad)))
    return found


def compare_table(ours: pd.DataFrame, reference: pd.DataFrame, keys: list[str], measures: dict[str, Measure],
                  overrides: dict[str, float], source: str, alpha: float = ALPHA) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Verdicts for one table: `ours` and `reference` are long forms in raw units (cells with n > 0 of ours
    count). Returns (judged cells both sides have, with `delta` and the verdict columns; the aligned rows of the
    other cells, `match` saying which side lacks them)."""
    mine = ours[pd.to_numeric(ours["n"], errors="coerce").fillna(0) > 0]
    aligned = align(mine[keys + ["metric", *REFERENCE_COLUMNS]], reference[keys + ["metric", *REFERENCE_COLUMNS]],
                    keys, labels=("results", source))
    both = aligned[aligned["match"] == BOTH].copy()
    both["delta"] = margins(both, measures, overrides) if len(both) else []
    return judge(both, alpha), aligned[aligned["match"] != BOTH]


def read_reference(path, name: str | None = None) -> pd.DataFrame:
    """A reference .csv (a path or an open text) as text (nothing parsed yet), its index the file's line numbers
    (header = line 1); `name` names it in messages (default: the path)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{name or path}: cannot be read as CSV ({e}); fix or delete the file") from None
    return frame.set_axis(range(2, 2 + len(frame)))


ENVIRONMENTS = "Numerics environments of the runs: "   # the table footer line `environments_of_table` reads back


def environment_line(environments: dict[str, int]) -> str:
    """`Numerics environments of the runs: <label> (25 runs); <label> (3 runs).`, most runs first."""
    ordered = sorted(environments.items(), key=lambda kv: (-kv[1], kv[0]))
    return ENVIRONMENTS + "; ".join(f"{env} ({n} run{'' if n == 1 else 's'})" for env, n in ordered) + "."


def environments_of_table(markdown: str) -> list[str]:
    """The environment labels a rendered table's footer names (empty for tables rendered before they did)."""
    for line in markdown.splitlines():
        if line.startswith(ENVIRONMENTS):
            return [re.sub(r" \(\d+ runs?\)$", "", part) for part in line[len(ENVIRONMENTS):].rstrip(".").split("; ")]
    return []
