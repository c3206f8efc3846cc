"""Tables are a pure function of the run JSONs; checked against numbers recomputed here by hand."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from experiments.results import load_runs, write_record
from experiments.tables import TableSpec, render, summarize


def _write(results_dir, i, loss, r, acc, status="completed"):
    rec = {"run_id": f"id{i}", "experiment_name": "toy", "dataset": "d", "model": "m", "loss": loss, "seed": i,
           "status": status, "config": {"loss": {"r": r}, "seed": i}, "metrics": {"test/accuracy": acc},
           "data": {"n_train": 10}}
    write_record(results_dir / "runs" / "toy" / f"id{i}.json", rec)


def _welch_p(a, b):
    """Welch's t-test written out: t, Welch–Satterthwaite df, two-sided p from the t distribution."""
    from scipy.stats import t as tdist

    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return 2 * tdist.sf(abs(t), df)


@pytest.fixture
def toy(tmp_path):
    base = [0.50, 0.52, 0.51]
    better = [0.70, 0.72, 0.69]
    same = [0.50, 0.53, 0.49]
    i = 0
    for r, accs in ((0.0, base), (0.5, better), (0.9, same)):
        for a in accs:
            _write(tmp_path, i, "simloss", r, a)
            i += 1
    _write(tmp_path, 99, "simloss", 0.5, 0.0, status="failed")
    return tmp_path, {0.0: base, 0.5: better, 0.9: same}


def test_summary_matches_hand_computation(toy):
    results_dir, groups = toy
    df = load_runs(results_dir)
    spec = TableSpec(experiment="toy", rows=["loss.r"], metrics=["test/accuracy"], baseline={"loss.r": 0.0})
    long = summarize(df[df.status == "completed"], spec).set_index("loss.r")
    for r, vals in groups.items():
        assert long.loc[r, "mean"] == pytest.approx(np.mean(vals))
        assert long.loc[r, "std"] == pytest.approx(np.std(vals, ddof=1))
        assert long.loc[r, "n"] == 3
    assert long.loc[0.5, "p_value"] == pytest.approx(_welch_p(groups[0.5], groups[0.0]))
    assert long.loc[0.5, "significant"] and not long.loc[0.9, "significant"]
    assert math.isnan(long.loc[0.0, "p_value"]) and long.loc[0.0, "is_baseline"]


def test_render_writes_md_tex_csv_and_counts_failures(toy, tmp_path):
    results_dir, groups = toy
    spec = TableSpec(experiment="toy", title="Toy", rows=["loss.r"], metrics=["test/accuracy"],
                     baseline={"loss.r": 0.0}, profiles=["paper"])
    out = render(load_runs(results_dir), spec, tmp_path / "tables", tmp_path / "paper")
    assert out["runs"] == 9 and out["failed"] == 1
    md = (tmp_path / "tables" / "toy.md").read_text()
    assert "**70.33 ± 1.53 (3)†**" in md  # best in bold, significant vs baseline, ×100
    assert "Failed runs excluded: 1" in md
    assert r"\begin{tabular}" in (tmp_path / "tables" / "toy.tex").read_text()
    csv = pd.read_csv(tmp_path / "tables" / "toy.csv")
    assert csv["n"].tolist() == [3, 3, 3]
    # the paper-reference layout is shipped empty and read back when a user fills it
    ref = pd.read_csv(tmp_path / "paper" / "toy.csv", dtype=str, keep_default_na=False)
    assert set(ref["paper_value"]) == {""}
    ref.loc[ref["loss.r"] == "0.5", "paper_value"] = "68.0"
    ref.to_csv(tmp_path / "paper" / "toy.csv", index=False)
    render(load_runs(results_dir), spec, tmp_path / "tables", tmp_path / "paper")
    assert "[paper 68.0]" in (tmp_path / "tables" / "toy.md").read_text()


def test_run_json_round_trips_through_load_runs(toy):
    results_dir, _ = toy
    df = load_runs(results_dir)
    assert len(df) == 10 and set(df.status) == {"completed", "failed"}
    one = json.loads((results_dir / "runs" / "toy" / "id4.json").read_text())
    assert df.set_index("run_id").loc["id4", "test/accuracy"] == one["metrics"]["test/accuracy"]
    assert df.set_index("run_id").loc["id4", "loss.r"] == 0.5


def test_baseline_without_an_exact_twin_is_matched_on_its_own_keys(tmp_path):
    """CE (identity S) has no lower bound of its own; every embedding row is compared with it."""
    i = 0
    for sim, lb, accs in (("identity", None, [0.34, 0.35, 0.33]), ("embedding", 0.2, [0.18, 0.19, 0.17]),
                          ("embedding", 0.9, [0.34, 0.36, 0.33])):
        for a in accs:
            rec = {"run_id": f"r{i}", "experiment_name": "toy", "loss": "simloss", "seed": i, "status": "completed",
                   "config": {"loss": {"similarity": sim, "lower_bound": lb}}, "metrics": {"test/accuracy": a}}
            write_record(tmp_path / "runs" / "toy" / f"r{i}.json", rec)
            i += 1
    spec = TableSpec(experiment="toy", rows=["loss.similarity", "loss.lower_bound"], metrics=["test/accuracy"],
                     baseline={"loss.similarity": "identity"})
    long = summarize(load_runs(tmp_path), spec)
    low = long[long["loss.lower_bound"] == 0.2].iloc[0]
    assert low["p_value"] == pytest.approx(_welch_p([0.18, 0.19, 0.17], [0.34, 0.35, 0.33]))
    assert low["significant"]
    assert not long[long["loss.lower_bound"] == 0.9].iloc[0]["significant"]
