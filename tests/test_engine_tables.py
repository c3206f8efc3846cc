"""Tables are a pure function of the run JSONs; checked against numbers recomputed here by hand."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from experiments.engine.errors import UserError
from experiments.report.tables import TableSpec, render, summarize
from experiments.store.frame import load_runs
from experiments.store.results import code_version, write_record

INFO = {"accuracy": {"higher_is_better": True, "unit": "fraction"}}
BASE, BETTER, SAME = [0.50, 0.52, 0.51], [0.70, 0.72, 0.69], [0.50, 0.53, 0.49]


def _write(results_dir, name, r, seed, acc, status="completed", version="current", **extra):
    rec = {"run_id": name, "experiment_name": "toy", "dataset": "d", "model": "m", "loss": "simloss", "seed": seed,
           "status": status, "config": {"loss": {"r": r}, "seed": seed, "trainer": {"epochs": 3}},
           "metrics": {"test/accuracy": acc}, "metric_info": INFO, "selected_epoch": 3, "data": {"n_train": 10},
           **extra}
    if version is not None:
        rec["code_version"] = code_version() if version == "current" else version
    write_record(results_dir / "runs" / "toy" / f"{name}.json", rec)


def _spec(**kw):
    return TableSpec(experiment="toy", rows=["loss.r"], metrics=["test/accuracy"], baseline={"loss.r": 0.0}, **kw)


def _paired_by_hand(a, b):
    """Paired t written out: mean and sample sd of the differences, t quantile and tail from scipy."""
    d = np.asarray(a) - np.asarray(b)
    n, mean = len(d), sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    half = sps.t.ppf(0.975, n - 1) * se
    return mean, mean - half, mean + half, 2 * sps.t.sf(abs(mean) / se, n - 1), sd


def _power(delta, sd, n):
    crit = sps.t.ppf(0.975, n - 1)
    nc = delta / (sd / math.sqrt(n))
    return sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)


@pytest.fixture
def toy(tmp_path):
    i = 0
    for r, accs in ((0.0, BASE), (0.5, BETTER), (0.9, SAME)):
        for seed, a in enumerate(accs):
            _write(tmp_path, f"id{i}", r, seed, a)
            i += 1
    _write(tmp_path, "id99", 0.5, 99, 0.0, status="failed")
    return tmp_path, {0.0: BASE, 0.5: BETTER, 0.9: SAME}


def test_summary_matches_hand_computation(toy):
    results_dir, groups = toy
    df = load_runs(results_dir)
    long = summarize(df[df.status == "completed"], _spec()).set_index("loss.r")
    for r, vals in groups.items():
        assert long.loc[r, "mean"] == pytest.approx(np.mean(vals))
        assert long.loc[r, "std"] == pytest.approx(np.std(vals, ddof=1))
        assert long.loc[r, "n"] == 3
    p = {}
    for r in (0.5, 0.9):
        diff, lo, hi, p[r], _ = _paired_by_hand(groups[r], groups[0.0])
        assert (long.loc[r, "diff"], long.loc[r, "ci_low"], long.loc[r, "ci_high"]) == pytest.approx((diff, lo, hi))
        assert long.loc[r, "p_value"] == pytest.approx(p[r]) and long.loc[r, "n_pairs"] == 3
    assert p[0.5] < p[0.9]                                   # Holm: 2 × smallest, then max(that, 1 × next)
    assert long.loc[0.5, "p_holm"] == pytest.approx(2 * p[0.5])
    assert long.loc[0.9, "p_holm"] == pytest.approx(max(2 * p[0.5], p[0.9]))
    assert long.loc[0.5, "significant"] and not long.loc[0.9, "significant"]
    assert math.isnan(long.loc[0.0, "p_value"]) and long.loc[0.0, "is_baseline"]


def test_csv_equals_a_recomputation_from_the_run_jsons(toy, tmp_path):
    results_dir, _ = toy
    render(load_runs(results_dir), _spec(), tmp_path / "tables")
    by_r: dict[float, dict[int, float]] = {}
    for path in (results_dir / "runs" / "toy").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["status"] == "completed":
            by_r.setdefault(rec["config"]["loss"]["r"], {})[rec["seed"]] = rec["metrics"]["test/accuracy"]
    csv = pd.read_csv(tmp_path / "tables" / "toy.csv").set_index("loss.r")
    base = by_r[0.0]
    hand = {}
    for r, runs in by_r.items():
        vals = list(runs.values())
        assert csv.loc[r, "mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert csv.loc[r, "std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
        assert csv.loc[r, "n"] == len(vals)
        if r == 0.0:
            assert csv.loc[r, "is_baseline"] and math.isnan(csv.loc[r, "diff"])
            continue
        seeds = sorted(set(runs) & set(base))
        hand[r] = _paired_by_hand([runs[s] for s in seeds], [base[s] for s in seeds])
        diff, lo, hi, p, sd = hand[r]
        row = csv.loc[r]
        assert (row["n_pairs"], row["n_base"], row["test"]) == (len(seeds), len(base), "paired")
        assert (row["diff"], row["ci_low"], row["ci_high"], row["p_value"]) == pytest.approx((diff, lo, hi, p))
        assert math.isnan(row["boot_low"]) and math.isnan(row["boot_high"])   # 3 pairs < 10
        assert _power(row["mde"], sd, len(seeds)) == pytest.approx(0.80, abs=1e-3)
    ps = sorted((h[3], r) for r, h in hand.items())
    holm = {ps[0][1]: 2 * ps[0][0], ps[1][1]: max(2 * ps[0][0], ps[1][0])}
    for r, expected in holm.items():
        assert csv.loc[r, "p_holm"] == pytest.approx(expected)
        assert csv.loc[r, "significant"] == (expected < 0.05)


def test_render_writes_md_tex_csv_and_counts_failures(toy, tmp_path):
    results_dir, groups = toy
    spec = _spec(title="Toy", profiles=["paper"])
    out = render(load_runs(results_dir), spec, tmp_path / "tables", tmp_path / "paper")
    assert out["runs"] == 9 and out["failed"] == 1
    md = (tmp_path / "tables" / "toy.md").read_text()
    diff, lo, hi, _, _ = _paired_by_hand(groups[0.5], groups[0.0])
    # best in bold, paired difference in percentage points with its interval, significant after Holm
    assert f"**70.33 ± 1.53 (3) Δ {diff * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}]†**" in md
    assert "50.67 ± 2.08 (3) Δ -0.33 [" in md and "51.00 ± 1.00 (3) |" in md
    assert "Failed runs excluded: 1" in md and "Selected at the last epoch: 9 of 9 runs" in md
    assert "Holm–Bonferroni" in md and "paired on seed" in md
    assert "Minimum detectable effect (paired t-test, α = 0.05, 80 % power" in md and "pp (range" in md
    tex = (tmp_path / "tables" / "toy.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\Delta$" in tex and r"$^\dagger$" in tex
    csv = pd.read_csv(tmp_path / "tables" / "toy.csv")
    assert csv["n"].tolist() == [3, 3, 3]
    # the paper-reference layout is shipped empty and read back when a user fills it
    ref = pd.read_csv(tmp_path / "paper" / "toy.csv", dtype=str, keep_default_na=False)
    assert set(ref["paper_value"]) == {""}
    ref.loc[ref["loss.r"] == "0.5", "paper_value"] = "68.0"
    ref.to_csv(tmp_path / "paper" / "toy.csv", index=False)
    render(load_runs(results_dir), spec, tmp_path / "tables", tmp_path / "paper")
    # the filled value is shown with make verify's mark beside it: 70.33 ± 1.53 (n = 3) against a bare 68.0 is
    # inconclusive at δ = 3 pp — Δ = 2.33, se = 0.883, 90 % interval 2.33 ± 2.92·0.883 = [−0.25, 4.91] is not inside
    # ±3 (no ✓), and t = 2.64 on 2 df (p ≈ 0.12) is not significant (no ✗)
    assert "[paper 68.0 ?]" in (tmp_path / "tables" / "toy.md").read_text()


def test_stale_refused_and_unpaired_runs(toy, tmp_path, capsys):
    results_dir, _ = toy
    _write(results_dir, "old", 0.5, 0, 0.10, version="0123456789abcdef")
    _write(results_dir, "older", 0.9, 1, 0.10, version=None)
    _write(results_dir, "lonely", 0.9, 7, 0.52)                       # no baseline run with seed 7
    _write(results_dir, "ref", 0.7, 0, None, status="refused",
           error="loss simloss needs ordered classes; dataset d has none")
    _write(results_dir, "early", 0.9, 8, 0.50, selected_epoch=1)
    out = render(load_runs(results_dir), _spec(), tmp_path / "tables")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "2 stale run(s)" in err
    assert out["stale"] == 2 and out["refused"] == 1 and out["runs"] == 11
    md = (tmp_path / "tables" / "toy.md").read_text()
    assert "Stale runs left out (another code version): 2." in md and "Refused: 1." in md
    assert "| 0.7 | n/a¹ |" in md and "\n- n/a¹: loss simloss needs ordered classes; dataset d has none\n" in md
    assert "Selected at the last epoch: 10 of 11 runs" in md
    csv = pd.read_csv(tmp_path / "tables" / "toy.csv").set_index("loss.r")
    assert csv.loc[0.5, "mean"] == pytest.approx(np.mean(BETTER))       # the stale 0.10 is not averaged in
    assert (csv.loc[0.9, "n"], csv.loc[0.9, "n_pairs"]) == (5, 3) and "(3 pairs)" in md
    assert csv.loc[0.7, "n"] == 0 and "ordered classes" in csv.loc[0.7, "refused"]


def test_only_stale_runs_are_left_out_unless_kept_then_marked(tmp_path, capsys):
    for seed, (a, b) in enumerate(zip(BASE, BETTER)):
        _write(tmp_path, f"a{seed}", 0.0, seed, a, version="v1")
        _write(tmp_path, f"b{seed}", 0.5, seed, b, version="v1")
    _write(tmp_path, "v2", 0.5, 9, 0.99, version="v2")
    df = load_runs(tmp_path)
    render(df, _spec(), tmp_path / "strict")
    md = (tmp_path / "strict" / "toy.md").read_text()
    assert "No completed runs yet." in md and "Stale runs left out (another code version): 7." in md
    df.attrs["keep_stale"] = True
    render(df, _spec(), tmp_path / "kept")
    md = (tmp_path / "kept" / "toy.md").read_text()
    assert "| 0.0 | 51.00 ± 1.00 (3)§ |" in md and "Stale runs left out (another code version): 0." in md
    assert "their code versions: v1, v2 (" in md and "v1 (6 runs), v2 (1 runs)." in md


def test_paired_table_finds_what_the_welch_table_misses(tmp_path):
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0.0, 0.05, size=10)
    for seed, e in enumerate(seed_effect):
        _write(tmp_path, f"ce{seed}", 0.0, seed, 0.60 + e)
        _write(tmp_path, f"sl{seed}", 0.5, seed, 0.605 + e + rng.normal(0.0, 0.001))
    runs = load_runs(tmp_path)
    paired = summarize(runs, _spec()).set_index("loss.r").loc[0.5]
    welch = summarize(runs, _spec(test="welch")).set_index("loss.r").loc[0.5]
    assert paired["significant"] and paired["boot_low"] > 0 and paired["test"] == "paired"
    assert not welch["significant"] and welch["test"] == "welch" and math.isnan(welch["boot_low"])
    render(runs, _spec(), tmp_path / "tables")
    md = (tmp_path / "tables" / "toy.md").read_text()
    assert " b[+" in md and "†" in md


def test_pair_on_must_name_run_columns(toy):
    results_dir, _ = toy
    with pytest.raises(UserError, match="pair_on"):
        summarize(load_runs(results_dir), _spec(pair_on=["pairing.batch_order"]))
    spec = TableSpec.from_config("toy", "main", {"rows": ["loss.r"]})
    assert spec.pair_on == ["seed"] and spec.test == "paired"


def test_run_json_round_trips_through_load_runs(toy):
    results_dir, _ = toy
    df = load_runs(results_dir)
    assert len(df) == 10 and set(df.status) == {"completed", "failed"}
    one = json.loads((results_dir / "runs" / "toy" / "id4.json").read_text())
    assert df.set_index("run_id").loc["id4", "test/accuracy"] == one["metrics"]["test/accuracy"]
    assert df.set_index("run_id").loc["id4", "loss.r"] == 0.5


def test_baseline_without_an_exact_twin_is_matched_on_its_own_keys(tmp_path):
    """CE (identity S) has no lower bound of its own; every embedding row is compared with it."""
    groups = (("identity", None, [0.34, 0.35, 0.33]), ("embedding", 0.2, [0.18, 0.19, 0.17]),
              ("embedding", 0.9, [0.34, 0.36, 0.33]))
    for i, (sim, lb, accs) in enumerate(groups):
        for seed, a in enumerate(accs):
            rec = {"run_id": f"r{i}{seed}", "experiment_name": "toy", "loss": "simloss", "seed": seed,
                   "status": "completed", "config": {"loss": {"similarity": sim, "lower_bound": lb}},
                   "metrics": {"test/accuracy": a}, "metric_info": INFO}
            write_record(tmp_path / "runs" / "toy" / f"r{i}{seed}.json", rec)
    spec = TableSpec(experiment="toy", rows=["loss.similarity", "loss.lower_bound"], metrics=["test/accuracy"],
                     baseline={"loss.similarity": "identity"})
    long = summarize(load_runs(tmp_path), spec)
    low = long[long["loss.lower_bound"] == 0.2].iloc[0]
    assert low["diff"] == pytest.approx(-0.16) and low["n_pairs"] == 3
    assert low["significant"]          # the same −0.16 on every seed: exact, p = 0
    high = long[long["loss.lower_bound"] == 0.9].iloc[0]
    assert high["p_value"] == pytest.approx(_paired_by_hand([0.34, 0.36, 0.33], [0.34, 0.35, 0.33])[3])
    assert not high["significant"]
