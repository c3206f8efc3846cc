"""Claims as data and their verdicts (experiments/report/claims.py) on constructed run sets whose answer is known,
the claims files' checks, the report and the README's claims block."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.engine.errors import UserError
from experiments.report import claims
from experiments.report import reproducibility as rp
from experiments.report.tables import TableSpec
from experiments.store.frame import load_runs
from tests.helpers.runs import write_run

SPEC = TableSpec(experiment="toy", rows=["dataset", "level"], columns=["loss"], metrics=["test/accuracy"],
                 baseline={"loss": "ce"})
VOCABULARY = "experiment_name: toy\nsweeps:\n  - {dataset: d, level: 'a,b,c,d', loss: 'ce,cce,bad,same'}\n"


def _runs(tmp_path: Path, gains: dict[str, list[float]], seeds: int, noise: float = 0.01, level: str = "a",
          base: float = 0.6) -> None:
    """Seeded runs of ce (the baseline) and of each method, whose per-seed gain over ce is `gains[m][level]`."""
    rng = np.random.default_rng(0)
    levels = "abcd"
    for seed in range(seeds):
        for i, lv in enumerate(levels[: max(len(g) for g in gains.values())] if gains else level):
            b = base + rng.normal(0, 0.02)
            write_run(tmp_path, "toy", f"ce-{lv}-{seed}", dataset="d", loss="ce", seed=seed,
                      metrics={"test/accuracy": b}, config={"level": lv})
            for method, g in gains.items():
                if i < len(g):
                    write_run(tmp_path, "toy", f"{method}-{lv}-{seed}", dataset="d", loss=method, seed=seed,
                              metrics={"test/accuracy": b + g[i] + rng.normal(0, noise)}, config={"level": lv})


def _paper(tmp_path: Path, text: str) -> claims.Paper:
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True, exist_ok=True)
    (conf / "experiment" / "toy.yaml").write_text(VOCABULARY)
    path = tmp_path / "toy_claims.yaml"
    path.write_text("paper: toy\ntitle: Toy\ndeviations: docs/x.md\nclaims:\n" + text)
    claims.experiment_vocabulary.cache_clear()
    return claims.read_paper(path, {"toy": SPEC}, conf)


IMPROVES = """  - {id: better, quote: "q", source: s, kind: improves, table: toy, method: {loss: [cce, bad, same]},
     baseline: {loss: ce}, cells: {dataset: [d], level: [a]}, metrics: {test/accuracy: higher}}
"""


def _evaluate(tmp_path, paper, entries=None):
    return claims.evaluate([paper], load_runs(tmp_path), {"toy": SPEC}, entries or {}).set_index("setting")


def test_improves_supported_contradicted_no_effect_and_not_run(tmp_path):
    _runs(tmp_path, {"cce": [0.05], "bad": [-0.05], "same": [0.0]}, seeds=20, noise=0.005)
    rows = _evaluate(tmp_path, _paper(tmp_path, IMPROVES))
    assert rows.loc["loss=cce, dataset=d, level=a", "verdict"] == claims.SUPPORTED
    assert rows.loc["loss=bad, dataset=d, level=a", "verdict"] == claims.CONTRADICTED
    assert rows.loc["loss=same, dataset=d, level=a", "verdict"] == claims.NO_EFFECT
    # the difference the verdict rests on is the per-seed mean difference of the runs, in raw units
    runs = load_runs(tmp_path)
    acc = runs.set_index(["loss", "seed"])["test/accuracy"]
    expected = float(np.mean([acc["cce", s] - acc["ce", s] for s in range(20)]))
    assert rows.loc["loss=cce, dataset=d, level=a", "diff"] == pytest.approx(expected)
    # Holm over the paper's three tests: the smallest p times 3
    p = rows["p_value"].to_numpy(dtype=float)
    assert rows["p_holm"].min() == pytest.approx(min(1.0, 3 * p.min()))


def test_two_seeds_are_inconclusive_with_an_mde(tmp_path):
    _runs(tmp_path, {"cce": [0.03]}, seeds=2, noise=0.05)
    row = _evaluate(tmp_path, _paper(tmp_path, IMPROVES)).loc["loss=cce, dataset=d, level=a"]
    assert row["verdict"] == claims.INCONCLUSIVE and row["n"] == 2 and row["mde"] > 0.05
    assert "MDE" in rp.deciding(row.to_dict() | {"setting": "x"})


def test_absent_cells_read_not_run_and_the_convergence_verdict_is_shown(tmp_path):
    _runs(tmp_path, {"cce": [0.05]}, seeds=5)
    paper = _paper(tmp_path, IMPROVES)
    rows = _evaluate(tmp_path, paper, {"toy": {"passed": False}})
    assert rows.loc["loss=same, dataset=d, level=a", "verdict"] == claims.NOT_RUN
    assert set(rows["converge"]) == {"not converged"}
    row = rows.reset_index().iloc[0].to_dict()
    assert "not converged" in rp.claim_line(row)
    rows = _evaluate(tmp_path, paper, {"toy": {"passed": True, "verdict": "not checked (one seed)"}})
    assert set(rows["converge"]) == {"not checked (one seed)"}      # read as converge-check states it
    assert set(_evaluate(tmp_path, paper)["converge"]) == {"not checked"}


TREND = """  - {id: grows, quote: "q", source: s, kind: trend, table: toy, method: {loss: cce}, baseline: {loss: ce},
     cells: {dataset: [d]}, along: level, levels: [a, b, c, d], metrics: {test/accuracy: higher}}
"""


def test_slopes_are_least_squares_over_ranks():
    gains = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 3.0]])
    assert claims.slopes(gains) == pytest.approx([1.0, 0.0, 0.0])
    x = np.arange(4)
    assert claims.slopes(np.array([[0.2, 0.1, 0.7, 0.4]]))[0] == pytest.approx(np.polyfit(x, [0.2, 0.1, 0.7, 0.4], 1)[0])


def test_a_growing_gain_supports_the_trend_and_a_flat_one_does_not(tmp_path):
    _runs(tmp_path, {"cce": [0.0, 0.02, 0.04, 0.06]}, seeds=6, noise=0.005)
    row = _evaluate(tmp_path, _paper(tmp_path, TREND)).iloc[0]
    assert row["verdict"] == claims.SUPPORTED and row["diff"] == pytest.approx(0.02, abs=0.005)
    flat = tmp_path / "flat"
    _runs(flat, {"cce": [0.03, 0.03, 0.03, 0.03]}, seeds=12, noise=0.003)
    paper = _paper(tmp_path, TREND)
    row = claims.evaluate([paper], load_runs(flat), {"toy": SPEC}, {}).iloc[0]
    assert row["verdict"] == claims.NO_EFFECT          # the gain is there, but it does not grow


def test_trade_off_combines_its_metrics():
    assert claims.combined([claims.SUPPORTED, claims.SUPPORTED]) == claims.SUPPORTED
    assert claims.combined([claims.SUPPORTED, claims.CONTRADICTED]) == claims.CONTRADICTED
    assert claims.combined([claims.SUPPORTED, claims.INCONCLUSIVE]) == claims.INCONCLUSIVE
    assert claims.combined([claims.NO_EFFECT, claims.NO_EFFECT]) == claims.NO_EFFECT
    assert claims.combined([claims.NOT_RUN, claims.SUPPORTED]) == claims.NOT_RUN


@pytest.mark.parametrize("claim, message", [
    ("{id: c1, quote: q, source: s, kind: improves, table: nope, method: {loss: cce}, baseline: {loss: ce}, "
     "metrics: {test/accuracy: higher}}", "claim c1: table 'nope' is no table"),
    ("{id: c2, quote: q, source: s, kind: improves, table: toy, method: {loss: cce}, baseline: {loss: ce}, "
     "metrics: {test/mae: lower}}", "claim c2: metric 'test/mae' is not in table toy"),
    ("{id: c3, quote: q, source: s, kind: improves, table: toy, method: {loss: cce}, baseline: {loss: ce}, "
     "cells: {dataset: [dd]}, metrics: {test/accuracy: higher}}", "claim c3: cells dataset='dd': no cell"),
    ("{id: c4, quote: q, source: s, kind: improves, table: toy, method: {loss: cce}, "
     "metrics: {test/accuracy: higher}}", "claim c4: a contrast needs a baseline"),
    ("{id: c5, quote: q, source: s, kind: improves, table: toy, method: {optim.lr: 1}, baseline: {loss: ce}, "
     "metrics: {test/accuracy: higher}}", "claim c5: method key 'optim.lr' is not a row or column key"),
    ("{id: c6, quote: q, source: s, kind: trend, table: toy, method: {loss: cce}, baseline: {loss: ce}, "
     "along: level, levels: [a, b], metrics: {test/accuracy: higher}}", "claim c6: a trend needs `levels`"),
    ("{id: c7, quote: q, source: s, kind: improves, table: toy, method: {loss: cce}, baseline: {loss: ce}, "
     "metrics: {test/accuracy: up}}", "claim c7: metric test/accuracy: direction 'up'"),
])
def test_a_bad_claims_file_names_file_and_claim(tmp_path, claim, message):
    with pytest.raises(UserError, match=message) as e:
        _paper(tmp_path, f"  - {claim}\n")
    assert str(e.value).startswith(str(tmp_path / "toy_claims.yaml")) and "\n" not in str(e.value)


def test_the_shipped_claims_files_read_against_the_experiments():
    papers, specs = rp.load_claims([], Path("results"))
    assert {p.paper for p in papers} == {"simloss", "cce", "average_k"}
    assert all(c.quote and c.source for p in papers for c in p.claims)
    assert {c.kind for p in papers for c in p.claims} == set(claims.KINDS)


def test_report_files_and_no_op(tmp_path):
    _runs(tmp_path, {"cce": [0.05], "bad": [-0.05], "same": [0.0]}, seeds=5)
    paper = _paper(tmp_path, IMPROVES)
    lines = rp.write_reports(tmp_path, "default", [], load_runs(tmp_path), ([paper], {"toy": SPEC}))
    assert lines[-1].endswith("index.html") and len(lines) == 4 and "supported" in lines[0]
    html = (tmp_path / "report" / "index.html").read_text()
    for section in ("Scope", "Methodology", "Results", "Checklist"):
        assert f">{section}</h2>" in html and f"## {section}" in (tmp_path / "report" / "toy.md").read_text()
    again = rp.write_reports(tmp_path, "default", [], lambda: pytest.fail("a no-op re-run reads no runs"),
                             ([paper], {"toy": SPEC}))
    assert again == lines


def test_readme_block_equals_what_the_committed_results_render():
    committed = rp.readme_between_markers()
    if committed is None:
        pytest.skip(f"README.md has no {rp.BEGIN} … {rp.END} markers yet")
    csv = Path(rp.ROOT / "results" / "report" / "claims.csv")
    assert csv.exists(), "results/report/claims.csv is missing: `make tables` writes it and the README block"
    rows = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    assert committed == rp.readme_block(rows)


def test_readme_block_is_replaced_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{rp.BEGIN}\nplaceholder\n{rp.END}\ntail\n")
    rows = pd.DataFrame([{"paper": "p", "claim": "c", "kind": "improves", "setting": "s", "metric": "m",
                          "verdict": claims.SUPPORTED, "diff": 0.0123, "low": 0.01, "high": 0.015, "scale": 100.0,
                          "unit": "pp", "mde": math.nan, "n": 5, "converge": "converged"}])
    assert rp.update_readme(rows, readme)
    text = readme.read_text()
    assert text.startswith("# x\n") and text.endswith(f"{rp.END}\ntail\n")
    assert "- p/c [s] m: supported — Δ +1.23 pp [+1.00, +1.50] (n=5)" in text
    assert not rp.update_readme(rows, readme)
