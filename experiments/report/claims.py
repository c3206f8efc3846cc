"""The papers' claims as data (`conf/claims/<paper>.yaml`) and a verdict per claim, setting and metric from the runs.

A claim names a table (its stem), a contrast (`method` keys against `baseline` keys), the cells it holds in
(`cells`: key → values; a `method` key may list values too, each its own setting), its metrics with the claimed
direction (`higher` | `lower`) and its kind:
- `improves`: Δ = method − baseline per setting, the table's own comparison (paired on its `pair_on`, or Welch);
- `trend`: the gain grows along `along` over the ordered `levels`: per pairing key (seed) the least-squares slope
  of Δ over the level ranks 0…L−1, then the one-sample t-test of the mean slope (seeds are the unit);
  `higher` = Δ rises along the levels;
- `trade-off`: two or more metrics, each a trend in its own direction (one metric's gain rises along the sweep
  while another's falls); the setting's verdict combines them.
Verdicts (α = 0.05): **supported** (claimed direction, significant after Holm over every test of the paper),
**contradicted** (opposite direction, significant), **no effect** (TOST within the metric's margin δ, as `make
verify`: experiments.report.verify; for a slope δ/(L−1), a gain moving less than δ over the sweep), **inconclusive**
(neither; the MDE says what the test could have seen), **not run** (the cells are absent from this profile's runs).
Qualifier: the table's `make converge-check` verdict when it is not "converged". docs/statistics.md, "Claims".
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from experiments.engine.errors import UserError
from experiments.report import stats, tables, verify
from experiments.report.compare import canonical

ALPHA = stats.ALPHA
KINDS = ("improves", "trend", "trade-off")
DIRECTIONS = {"higher": 1.0, "lower": -1.0}
SUPPORTED, CONTRADICTED, NO_EFFECT, INCONCLUSIVE, NOT_RUN = (
    "supported", "contradicted", "no effect", "inconclusive", "not run")
CONVERGED = "converged"
PAPER_FIELDS = ("paper", "title", "deviations", "claims")
CLAIM_FIELDS = ("id", "quote", "source", "claim", "kind", "table", "method", "baseline", "cells", "metrics", "along",
                "levels")


@dataclass(frozen=True)
class Claim:
    paper: str
    id: str
    quote: str
    source: str
    claim: str
    kind: str
    table: str
    method: dict[str, list]
    baseline: dict[str, Any]
    metrics: dict[str, str]
    cells: dict[str, list] = field(default_factory=dict)
    along: str | None = None
    levels: list = field(default_factory=list)

    def settings(self) -> list[dict[str, Any]]:
        """Every combination of the method's and the cells' listed values (the `along` key excluded)."""
        lists = {**self.method, **self.cells}
        return [dict(zip(lists, combo)) for combo in itertools.product(*lists.values())]


@dataclass(frozen=True)
class Paper:
    paper: str
    title: str
    deviations: str
    claims: list[Claim]
    file: str


# ------------------------------------------------------------------ reading and checking a claims file
def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


@functools.lru_cache(maxsize=None)
def experiment_vocabulary(experiment: str, conf_dir: Path) -> frozenset[str]:
    """Every value and key an experiment's config file names (and the experiment files it extends), in canonical
    spelling, comma-separated sweep strings split: a claim's cell value outside it is a typo, not a cell another
    profile runs."""
    words: set[str] = set()
    todo, seen = [experiment], set()
    while todo:
        name = todo.pop()
        path = conf_dir / "experiment" / f"{name}.yaml"
        if name in seen or not path.exists():
            continue
        seen.add(name)
        node = yaml.safe_load(path.read_text()) or {}
        todo += [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                words.update(canonical(k) for k in item)
                stack += list(item.values())
            elif isinstance(item, list):
                stack += item
            elif item is not None:
                words.update(canonical(part) for part in str(item).split(","))
    return frozenset(words)


class _Checker:
    """The checks of one claim against the table specs; every failure names the file and the claim."""

    def __init__(self, file: str, cid: str, specs: Mapping[str, tables.TableSpec], conf_dir: Path):
        self.file, self.cid, self.specs, self.conf_dir = file, cid, specs, conf_dir

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.file}: claim {self.cid}: {message}")

    def table(self, stem: Any) -> tables.TableSpec:
        if stem not in self.specs:
            raise self.fail(f"table {stem!r} is no table of any experiment; use one of {', '.join(sorted(self.specs))}")
        return self.specs[stem]

    def keys(self, spec: tables.TableSpec, where: str, keys: Iterable[str]) -> None:
        known = list(spec.rows) + list(spec.columns)
        bad = [k for k in keys if k not in known]
        if bad:
            raise self.fail(f"{where} key {', '.join(map(repr, bad))} is not a row or column key of table "
                            f"{spec.stem}; use one of {', '.join(known) or '(none)'}")

    def values(self, spec: tables.TableSpec, where: str, node: Mapping[str, Any]) -> None:
        words = experiment_vocabulary(spec.experiment, self.conf_dir)
        for key, values in node.items():
            bad = [v for v in _as_list(values) if canonical(v) not in words]
            if bad:
                raise self.fail(f"{where} {key}={bad[0]!r}: no cell of table {spec.stem} can have it (its experiment's "
                                f"config never names it); fix the value")

    def metrics(self, spec: tables.TableSpec, metrics: Any, kind: str) -> dict[str, str]:
        if not isinstance(metrics, dict) or not metrics:
            raise self.fail("metrics: give a map metric → direction (higher | lower)")
        for metric, direction in metrics.items():
            if metric not in spec.metrics:
                raise self.fail(f"metric {metric!r} is not in table {spec.stem}; use one of {', '.join(spec.metrics)}")
            if direction not in DIRECTIONS:
                raise self.fail(f"metric {metric}: direction {direction!r}; choose higher or lower")
        if kind == "trade-off" and len(metrics) < 2:
            raise self.fail("a trade-off names two or more metrics (one rising, one falling along the sweep)")
        return dict(metrics)


def _claim(node: Any, paper: str, file: str, specs: Mapping[str, tables.TableSpec], conf_dir: Path) -> Claim:
    cid = node.get("id", "?") if isinstance(node, dict) else "?"
    check = _Checker(file, cid, specs, conf_dir)
    if not isinstance(node, dict):
        raise check.fail("each claim is a map with " + ", ".join(CLAIM_FIELDS))
    unknown = sorted(set(node) - set(CLAIM_FIELDS))
    missing = [k for k in ("id", "quote", "source", "kind", "table", "method", "metrics") if not node.get(k)]
    if unknown or missing:
        raise check.fail(f"{'unknown field ' + ', '.join(unknown) if unknown else 'missing ' + ', '.join(missing)}; "
                         f"a claim has {', '.join(CLAIM_FIELDS)}")
    if node["kind"] not in KINDS:
        raise check.fail(f"kind {node['kind']!r}; choose one of {', '.join(KINDS)}")
    spec = check.table(node["table"])
    if not isinstance(node.get("baseline"), dict) or not node["baseline"]:
        raise check.fail("a contrast needs a baseline: `baseline: {key: value}` (e.g. {loss: ce})")
    if not isinstance(node["method"], dict):
        raise check.fail("method: a map key → value or list of values")
    cells = node.get("cells") or {}
    for where, part in (("method", node["method"]), ("baseline", node["baseline"]), ("cells", cells)):
        check.keys(spec, where, part)
        check.values(spec, where, part)
    along, levels = node.get("along"), _as_list(node.get("levels") or [])
    if node["kind"] != "improves":
        check.keys(spec, "along", [along] if along else ["(none)"])
        if len(levels) < 3:
            raise check.fail(f"a {node['kind']} needs `levels`: three or more values of {along}, in order")
        check.values(spec, "levels", {along: levels})
    return Claim(paper, str(cid), str(node["quote"]).strip(), str(node["source"]).strip(),
                 str(node.get("claim") or "").strip(), node["kind"], spec.stem,
                 {k: _as_list(v) for k, v in node["method"].items()}, dict(node["baseline"]),
                 check.metrics(spec, node["metrics"], node["kind"]),
                 {k: _as_list(v) for k, v in cells.items()}, along, levels)


def read_paper(path: Path, specs: Mapping[str, tables.TableSpec], conf_dir: Path) -> Paper:
    """One claims file, checked against every experiment's table specs (`specs`, by stem): unknown table, key,
    cell value or metric, a contrast without baseline → UserError naming the file and the claim."""
    file = str(path)
    try:
        node = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{file}: cannot be read as YAML ({type(e).__name__}: {e}); fix the file") from None
    if not isinstance(node, dict) or not isinstance(node.get("claims"), list) or not node.get("paper"):
        raise UserError(f"{file}: a claims file is a map with {', '.join(PAPER_FIELDS)} (claims: a list)")
    claims = [_claim(c, str(node["paper"]), file, specs, conf_dir) for c in node["claims"]]
    ids = [c.id for c in claims]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise UserError(f"{file}: claim {twice[0]}: the id appears twice; give each claim its own id")
    return Paper(str(node["paper"]), str(node.get("title", "")), str(node.get("deviations", "")), claims, file)


def read_all(claims_dir: Path, specs: Mapping[str, tables.TableSpec], conf_dir: Path) -> list[Paper]:
    return [read_paper(p, specs, conf_dir) for p in sorted(Path(claims_dir).glob("*.yaml"))]


# ------------------------------------------------------------------ the evidence
def table_runs(df: pd.DataFrame, spec: tables.TableSpec) -> pd.DataFrame:
    """The runs a table reads (current code, completed), after its transform: the frame its cells group."""
    import hydra.utils

    if df.empty:
        return df
    done, _, _ = tables._select(df, spec)
    measures = tables.measures_of(done)
    if spec.transform and len(done):
        done = hydra.utils.get_method(spec.transform)(done, spec)
    done.attrs["measures"] = measures
    return done


def _match(frame: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    for key, value in where.items():
        if key not in frame:
            return frame.iloc[:0]
        keep &= frame[key].map(canonical) == canonical(value)
    return frame[keep]


@dataclass
class Test:
    """One test's numbers in raw units: Δ (or the mean slope), its 95 % interval, p, MDE, δ, n, se, df."""

    diff: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p: float = math.nan
    mde: float = math.nan
    delta: float = math.nan
    n: int = 0
    p_tost: float = math.nan
    detail: str = ""


def _tost(diff: float, se: float, df: float, delta: float) -> float:
    if not (math.isfinite(se) and df >= 1 and math.isfinite(delta)):
        return math.nan
    return verify.tost_p(diff, se, df, delta)


def _measure(frame: pd.DataFrame, metric: str) -> Any:
    return tables.measure(frame.attrs.get("measures") or tables.measures_of(frame), metric)


def improvement(runs: pd.DataFrame, spec: tables.TableSpec, setting: dict, baseline: dict, metric: str) -> Test | None:
    """The table's comparison of the setting's cell with its baseline cell; None when either has no run."""
    mine, base = _match(runs, setting), _match(runs, {**setting, **baseline})
    a, b = tables._by_pair(mine, metric, spec), tables._by_pair(base, metric, spec)
    if not a or not b:
        return None
    found = stats.compare(a, b, spec.test, ALPHA)
    if spec.test == "welch":
        va, vb = np.array(list(a.values())), np.array(list(b.values()))
        se, df = (stats.welch_se_df(va.std(ddof=1), len(va), vb.std(ddof=1), len(vb)) if min(len(va), len(vb)) > 1
                  else (math.nan, 0))
        n = min(len(va), len(vb))
    else:
        n = found.n_pairs
        se, df = (found.sd / math.sqrt(n), n - 1) if n >= 2 else (math.nan, 0)
    margin = verify.override(spec.verify.get("margins"), metric)
    delta = _measure(runs, metric).delta(float(np.mean(list(b.values()))), margin)
    return Test(found.diff, found.ci_low, found.ci_high, found.p_value, found.mde, delta, n,
                _tost(found.diff, se, df, delta))


def slopes(gains: np.ndarray) -> np.ndarray:
    """Per row (a pairing key), the least-squares slope of its gains over the column ranks 0…L−1."""
    x = np.arange(gains.shape[1], dtype=float)
    x -= x.mean()
    return (gains - gains.mean(axis=1, keepdims=True)) @ x / (x @ x)


def trend(runs: pd.DataFrame, spec: tables.TableSpec, claim: Claim, setting: dict, metric: str) -> Test | None:
    """The paired slope test along `claim.along`; None when a level has no method or baseline run."""
    per_level, base_means = [], []
    for level in claim.levels:
        at = {**setting, claim.along: level}
        a = tables._by_pair(_match(runs, at), metric, spec)
        b = tables._by_pair(_match(runs, {**at, **claim.baseline}), metric, spec)
        if not a or not b:
            return None
        per_level.append({k: a[k] - b[k] for k in set(a) & set(b)})
        base_means.append(float(np.mean(list(b.values()))))
    keys = sorted(set.intersection(*(set(d) for d in per_level)), key=repr)
    gains = np.array([[d[k] for d in per_level] for k in keys], dtype=float).reshape(len(keys), len(per_level))
    found = stats.paired(slopes(gains), np.zeros(len(keys)), ALPHA)
    n = found.n_pairs
    se, df = (found.sd / math.sqrt(n), n - 1) if n >= 2 else (math.nan, 0)
    margin = verify.override(spec.verify.get("margins"), metric)
    delta = _measure(runs, metric).delta(float(np.mean(base_means)), margin) / (len(claim.levels) - 1)
    detail = {canonical(lv): float(g) for lv, g in zip(claim.levels, gains.mean(axis=0))} if n else {}
    return Test(found.diff, found.ci_low, found.ci_high, found.p_value, found.mde, delta, n,
                _tost(found.diff, se, df, delta), detail=repr(detail))


def verdict(diff: float, sign: float, p_holm: float, p_tost: float, alpha: float = ALPHA) -> str:
    """supported / contradicted (significant after Holm, in / against the claimed direction), no effect (TOST),
    else inconclusive."""
    if p_holm < alpha and diff * sign != 0:
        return SUPPORTED if diff * sign > 0 else CONTRADICTED
    if p_tost < alpha:
        return NO_EFFECT
    return INCONCLUSIVE


def combined(verdicts: list[str]) -> str:
    """A trade-off's verdict from its metrics' trends: every one supported → supported; any contradicted →
    contradicted; any not run → not run; every one no effect → no effect; else inconclusive."""
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    for answer in (CONTRADICTED, NOT_RUN):
        if answer in verdicts:
            return answer
    return NO_EFFECT if all(v == NO_EFFECT for v in verdicts) else INCONCLUSIVE


def convergence(entry: Mapping[str, Any] | None) -> str:
    """The table's `make converge-check` verdict as it states it (`verdict`, else `passed`); `not checked` when
    the check has not run on it."""
    if not entry:
        return "not checked"
    if isinstance(entry.get("verdict"), str):
        return entry["verdict"]
    return CONVERGED if entry.get("passed") else "not converged"


def setting_text(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={canonical(v)}" for k, v in setting.items()) or "all"


ROW_COLUMNS = ["paper", "claim", "kind", "table", "setting", "metric", "direction", "verdict", "diff", "low",
               "high", "p_value", "p_holm", "p_tost", "mde", "delta", "n", "converge", "scale", "unit", "detail"]


def _row(claim: Claim, setting: dict, metric: str, test: Test | None, runs: pd.DataFrame, converge: str) -> dict:
    meaning = _measure(runs, metric) if test is not None else None
    spec_scale = meaning.scale if meaning is not None else 1.0
    unit = ("pp" if meaning.unit == "fraction" else meaning.suffix) if meaning is not None else ""
    values = vars(test) if test is not None else vars(Test())
    return {"paper": claim.paper, "claim": claim.id, "kind": claim.kind, "table": claim.table,
            "setting": setting_text(setting), "metric": metric, "direction": claim.metrics[metric],
            "verdict": NOT_RUN if test is None else "", "diff": values["diff"], "low": values["low"],
            "high": values["high"], "p_value": values["p"], "p_holm": math.nan, "p_tost": values["p_tost"],
            "mde": values["mde"], "delta": values["delta"], "n": values["n"], "converge": converge,
            "scale": spec_scale, "unit": unit, "detail": values["detail"]}


def evaluate(papers: list[Paper], df: pd.DataFrame, specs: Mapping[str, tables.TableSpec],
             converge_entries: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per (paper, claim, setting, metric), plus a `trade-off` row per setting of a trade-off claim; Holm
    over the tests of each paper; the verdicts."""
    rows, frames = [], {}
    for paper in papers:
        first = len(rows)
        for claim in paper.claims:
            spec = specs[claim.table]
            if claim.table not in frames:
                frames[claim.table] = table_runs(df, spec)
            runs, converge = frames[claim.table], convergence(converge_entries.get(claim.table))
            for setting in claim.settings():
                for metric in claim.metrics:
                    test = None if runs.empty else (
                        improvement(runs, spec, setting, claim.baseline, metric) if claim.kind == "improves"
                        else trend(runs, spec, claim, setting, metric))
                    rows.append(_row(claim, setting, metric, test, runs, converge))
        block = pd.DataFrame(rows[first:], columns=ROW_COLUMNS)
        adjusted = stats.holm(block["p_value"].to_numpy(dtype=float)) if len(block) else []
        for offset, (p_holm, (_, r)) in enumerate(zip(adjusted, block.iterrows())):
            rows[first + offset]["p_holm"] = p_holm
            if r["verdict"] != NOT_RUN:
                rows[first + offset]["verdict"] = verdict(r["diff"], DIRECTIONS[r["direction"]], p_holm, r["p_tost"])
        rows += _combined_rows(paper, rows[first:])
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def _combined_rows(paper: Paper, rows: list[dict]) -> list[dict]:
    out = []
    for claim in (c for c in paper.claims if c.kind == "trade-off"):
        for setting in claim.settings():
            mine = [r for r in rows if r["claim"] == claim.id and r["setting"] == setting_text(setting)]
            out.append({**{k: math.nan for k in ROW_COLUMNS}, "paper": paper.paper, "claim": claim.id,
                        "kind": claim.kind, "table": claim.table, "setting": setting_text(setting),
                        "metric": " + ".join(r["metric"] for r in mine), "direction": "",
                        "verdict": combined([r["verdict"] for r in mine]), "n": min(r["n"] for r in mine),
                        "converge": mine[0]["converge"], "unit": "", "detail": ""})
    return out
