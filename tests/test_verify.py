"""`make verify`: cell alignment, the equivalence/difference statistics, verdicts, paper-value parsing, the CLI
and the numerics environment of a run. Known answers are computed by hand in the tests."""
from __future__ import annotations

import math
import re

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


# ------------------------------------------------------------------ statistics, by hand
from experiments.engine.metrics import MARGINS, Measure  # noqa: E402
from experiments.report import verify  # noqa: E402


def _t2_cdf(t):
    """CDF of Student's t with 2 degrees of freedom, in closed form: 1/2 + t / (2 √(2 + t²))."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


T2_95 = 0.9 * math.sqrt(2 / (1 - 0.81))   # its 0.95 quantile: solve t/√(2 + t²) = 0.9 → 2.919986


def test_welch_tost_known_answer_with_two_degrees_of_freedom():
    # n = 2 per side with equal sd: Welch–Satterthwaite gives exactly df = 2, se = √(0.1²/2 + 0.1²/2) = 0.1
    e = verify.two_sample(1.0, 0.1, 2, 0.95, 0.1, 2, delta=0.2)
    assert e.test == "Welch TOST" and e.se == pytest.approx(0.1) and e.df == pytest.approx(2.0)
    p_low = 1 - _t2_cdf((0.05 + 0.2) / 0.1)      # H0: d ≤ −δ, t = 2.5 → 0.064806
    p_high = _t2_cdf((0.05 - 0.2) / 0.1)         # H0: d ≥ +δ, t = −1.5 → 0.136197
    assert p_low == pytest.approx(0.064806, abs=1e-6) and p_high == pytest.approx(0.136197, abs=1e-6)
    assert e.p_tost == pytest.approx(max(p_low, p_high), rel=1e-9)
    assert e.p_diff == pytest.approx(2 * (1 - _t2_cdf(0.5)), rel=1e-9)   # 2/3
    assert (e.low, e.high) == pytest.approx((0.05 - T2_95 * 0.1, 0.05 + T2_95 * 0.1), rel=1e-9)
    assert e.delta_min == pytest.approx(0.05 + 0.2919986, abs=1e-6)


def test_welch_degrees_of_freedom_for_unequal_samples():
    e = verify.two_sample(10.0, 2.0, 5, 9.0, 1.0, 4, delta=3.0)
    v1, v2 = 4 / 5, 1 / 4                            # s²/n of each side
    assert e.se == pytest.approx(math.sqrt(1.05))
    assert e.df == pytest.approx(1.05 ** 2 / (v1 ** 2 / 4 + v2 ** 2 / 3))   # 6.0968
    assert e.df == pytest.approx(6.096774, abs=1e-6)


def test_one_sample_tost_known_answer():
    # ours: mean 71, sd √3·0.5 over 3 runs → se 0.5, df 2; the paper's bare number 70; δ = 2
    e = verify.one_sample(71.0, math.sqrt(3) * 0.5, 3, 70.0, delta=2.0)
    assert e.test == "one-sample TOST" and e.df == 2 and e.se == pytest.approx(0.5)
    assert e.p_tost == pytest.approx(_t2_cdf((1 - 2) / 0.5), rel=1e-9)     # 0.091752: not shown equivalent
    assert e.p_tost == pytest.approx(0.091752, abs=1e-6)
    assert e.delta_min == pytest.approx(1 + T2_95 * 0.5, rel=1e-9)
    assert verify.verdict(e.p_tost, 1.0, e.diff, 2.0) == "inconclusive"
    wide = verify.one_sample(71.0, math.sqrt(3) * 0.5, 3, 70.0, delta=3.0)   # t = (1 − 3)/0.5 = −4
    assert wide.p_tost == pytest.approx(_t2_cdf(-4.0), rel=1e-9) and wide.p_tost < 0.05


def test_zero_spread_is_exact():
    assert verify.two_sample(0.5, 0.0, 3, 0.5, 0.0, 3, delta=0.01).p_tost == 0.0
    far = verify.two_sample(0.6, 0.0, 3, 0.5, 0.0, 3, delta=0.01)
    assert far.p_tost == 1.0 and far.p_diff == 0.0
    assert verify.verdict(far.p_tost, far.p_diff, far.diff, 0.01) == "differs"


@pytest.mark.parametrize("p_tost, p_holm, diff, verdict", [
    (0.01, 0.9, 0.0, "reproduced"), (0.2, 0.001, 0.5, "differs"),
    (0.2, 0.001, 0.05, "inconclusive"),   # significant but inside the margin: not a difference that matters
    (0.2, 0.2, 0.5, "inconclusive")])
def test_verdict_rules(p_tost, p_holm, diff, verdict):
    assert verify.verdict(p_tost, p_holm, diff, delta=0.1) == verdict


def test_judge_applies_holm_over_the_tables_cells():
    # three cells, each n = 2 vs 2 with sd 0.1 (df 2, se 0.1); only the p-values of d = 0 feed Holm
    cells = pd.DataFrame({"metric": ["m"] * 3, "mean_ours": [1.0, 1.0, 1.0], "std_ours": [0.1] * 3,
                          "n_ours": [2] * 3, "mean_ref": [0.0, 0.7, 1.0], "std_ref": [0.1] * 3, "n_ref": [2] * 3,
                          "delta": [0.2] * 3})
    out = verify.judge(cells)
    raw = [2 * (1 - _t2_cdf(d / 0.1)) for d in (1.0, 0.3, 0.0)]
    order = sorted(range(3), key=lambda i: raw[i])
    holm = [0.0] * 3
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        holm[i] = running
    assert list(out["p_holm"]) == pytest.approx(holm, rel=1e-9)
    # d = 1.0: raw p 0.0099, Holm 0.0297 → differs; d = 0.3: Holm 0.38 → inconclusive; d = 0 → not shown
    # equivalent with δ = 0.2 and df 2 (needs ±0.29) → inconclusive
    assert list(out["verdict"]) == ["differs", "inconclusive", "inconclusive"]


def _cells(means, std, n):
    return pd.DataFrame({"dataset": "age", "loss.r": [0.0, 0.3, 0.7][:len(means)],
                         "metric": "test/accuracy", "mean": means, "std": std, "n": n})


ACC = {"test/accuracy": Measure(True, "fraction")}


def test_reference_equal_to_results_is_reproduced_and_3_delta_shift_differs():
    ours = _cells([0.70, 0.62, 0.55], 0.01, 10)     # sd 1 pp, 10 seeds: equivalence provable well inside ±3 pp
    same, _ = verify.compare_table(ours, ours.copy(), ["dataset", "loss.r"], ACC, {}, "ref")
    assert list(same["verdict"]) == ["reproduced"] * 3
    assert list(same["delta"]) == pytest.approx([MARGINS["fraction"] / 100] * 3)
    shifted = ours.assign(mean=ours["mean"] + 3 * 0.03)
    far, _ = verify.compare_table(ours, shifted, ["dataset", "loss.r"], ACC, {}, "ref")
    assert list(far["verdict"]) == ["differs"] * 3


def test_two_seeds_with_a_wide_spread_are_inconclusive():
    ours = _cells([0.70, 0.62], 0.05, 2)     # sd 5 pp over 2 seeds
    judged, _ = verify.compare_table(ours, ours.copy(), ["dataset", "loss.r"], ACC, {}, "ref")
    assert list(judged["verdict"]) == ["inconclusive"] * 2
    # the interval half-width t(0.95, 2) · 0.05 is the margin the data could have shown
    assert list(judged["delta_min"]) == pytest.approx([T2_95 * 0.05] * 2, rel=1e-6)


def test_one_run_is_inconclusive_and_unmatched_cells_are_returned():
    ours = _cells([0.70, 0.62], [0.01, float("nan")], [5, 1])
    ref = _cells([0.70, 0.62, 0.5], 0.01, 5)
    judged, other = verify.compare_table(ours, ref, ["dataset", "loss.r"], ACC, {}, "ref")
    assert list(judged["verdict"]) == ["reproduced", "inconclusive"] and judged["test"].iloc[1] == "too few runs"
    assert list(other["match"]) == ["reference_only"] and other["loss.r"].iloc[0] == "0.7"


def test_measure_margins():
    assert Measure(True).delta(0.7) == pytest.approx(0.03)                       # 3 pp as a fraction
    assert Measure(False, "years").delta(5.0) == pytest.approx(0.2)
    assert Measure(False, "score").delta(-16.0) == pytest.approx(0.8)            # 5 % of |reference|
    assert Measure(True).delta(0.7, margin=1.5) == pytest.approx(0.015)          # a table's override, in pp
    assert Measure(False, "score", margin=2.0).delta(16.0) == pytest.approx(2.0)  # declared by the metric
    assert "margin" not in Measure(True).as_dict() and Measure(True, margin=1.0).as_dict()["margin"] == 1.0
    with pytest.raises(UserError, match="must be > 0"):
        Measure(True).delta(0.7, margin=0)


def test_margin_overrides_are_checked():
    metrics = ["test/accuracy", "test/avgk_acc@3"]
    assert verify.check_overrides({"accuracy": 2, "avgk_acc": 1.5}, metrics, "t") == {"accuracy": 2, "avgk_acc": 1.5}
    with pytest.raises(UserError, match=r"table t: verify.margins.acc: no such metric"):
        verify.check_overrides({"acc": 2}, metrics, "t")
    with pytest.raises(UserError, match=r"verify.margins.accuracy=-1: a margin is a number > 0"):
        verify.check_overrides({"accuracy": -1}, metrics, "t")


# ------------------------------------------------------------------ paper reference
@pytest.mark.parametrize("text, parsed", [("71.3", (71.3, None)), ("71.3 ± 0.4", (71.3, 0.4)),
                                          ("71.3±0.4", (71.3, 0.4)), (" 71.3 +/- 0.4 ", (71.3, 0.4)),
                                          ("-0.5", (-0.5, None)), (".5±.1", (0.5, 0.1)), ("1e1", (10.0, None))])
def test_paper_value_spellings(text, parsed):
    mean, std = verify.parse_paper_value(text)
    assert mean == pytest.approx(parsed[0])
    assert std == (None if parsed[1] is None else pytest.approx(parsed[1]))


@pytest.mark.parametrize("text", ["71.3%", "about 71", "71.3 ± ", "71.3 ± 0.4 ± 1", "", "± 0.4"])
def test_paper_value_that_does_not_parse(text):
    with pytest.raises(ValueError, match="does not parse"):
        verify.parse_paper_value(text)


def _paper_file(tmp_path, rows, columns=("dataset", "loss.r", "metric", "paper_value", "paper_n")):
    path = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path, verify.read_reference(path)


def test_paper_reference_in_table_units(tmp_path):
    path, frame = _paper_file(tmp_path, [["age", "0.0", "test/accuracy", "71.3 ± 0.4", "5"],
                                         ["age", "0.0", "test/mae", "4.5", ""],
                                         ["age", "0.3", "test/mae", "", ""]])
    ref = verify.paper_reference(frame, ["dataset", "loss.r"], {"test/accuracy": 100.0, "test/mae": 1.0}, str(path))
    assert list(ref.index) == [2, 3]                      # file lines; the empty value is not a reference cell
    assert ref["mean"].tolist() == pytest.approx([0.713, 4.5]) and ref["std"].iloc[0] == pytest.approx(0.004)
    assert ref["n"].iloc[0] == 5 and math.isnan(ref["n"].iloc[1]) and math.isnan(ref["std"].iloc[1])


@pytest.mark.parametrize("row, message", [
    (["age", "0.0", "test/mae", "4.5 ± x", ""], "line 2: paper_value '4.5 ± x' does not parse"),
    (["age", "0.0", "test/mae", "4.5 ± -0.1", ""], "line 2: paper_value '4.5 ± -0.1' has a negative std"),
    (["age", "0.0", "test/mae", "4.5 ± 0.1", "1"], "line 2: paper_n=1 with a std: a standard deviation needs"),
    (["age", "0.0", "test/mae", "4.5", "2.5"], "line 2: paper_n='2.5': the number of seeds")])
def test_bad_paper_rows_name_file_and_line(tmp_path, row, message):
    path, frame = _paper_file(tmp_path, [row])
    with pytest.raises(UserError, match=re.escape(f"{path} {message}")):
        verify.paper_reference(frame, ["dataset", "loss.r"], {}, str(path))


def test_paper_reference_missing_column(tmp_path):
    path, frame = _paper_file(tmp_path, [["age", "test/mae", "4.5"]], columns=("dataset", "metric", "paper_value"))
    with pytest.raises(UserError, match=r"t.csv: no column loss.r; a paper reference needs the cell keys"):
        verify.paper_reference(frame, ["dataset", "loss.r"], {}, str(path))


def test_long_reference_checks_numbers(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"dataset": ["age", "age"], "loss.r": [0.0, 0.3], "metric": ["m", "m"], "mean": [1.0, 2.0],
                  "std": [0.1, -0.2], "n": [5, 5]}).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"t.csv line 3: std=-0.2 is negative"):
        verify.long_reference(verify.read_reference(path), ["dataset", "loss.r"], str(path))
    pd.DataFrame({"dataset": ["age"], "loss.r": [0.0], "metric": ["m"], "mean": ["x"], "std": [0.1],
                  "n": [5]}).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"t.csv line 2: mean='x' is not a number"):
        verify.long_reference(verify.read_reference(path), ["dataset", "loss.r"], str(path))
    pd.DataFrame({"dataset": ["age"], "metric": ["m"], "mean": [1.0]}).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"t.csv: no column loss.r, std, n"):
        verify.long_reference(verify.read_reference(path), ["dataset", "loss.r"], str(path))


def test_environment_line_round_trip():
    line = verify.environment_line({"AMD EPYC · AVX512 · 1 thread": 20, "Intel Xeon · AVX2 · 1 thread": 1})
    assert line == ("Numerics environments of the runs: AMD EPYC · AVX512 · 1 thread (20 runs); "
                    "Intel Xeon · AVX2 · 1 thread (1 run).")
    assert verify.environments_of_table(f"# t\n\n{line}\nmore\n") == ["AMD EPYC · AVX512 · 1 thread",
                                                                     "Intel Xeon · AVX2 · 1 thread"]
    assert verify.environments_of_table("# t\n") == []


# ------------------------------------------------------------------ the CLI, end to end on hand-written runs
import json  # noqa: E402
import shutil  # noqa: E402

from experiments.drivers import verify as cli  # noqa: E402
from experiments.drivers.catalog import discover  # noqa: E402
from experiments.report.tables import cells  # noqa: E402
from experiments.store.frame import load_runs
from experiments.store.results import code_version, compute_run_id, write_record  # noqa: E402

INFO = {"accuracy": {"higher_is_better": True, "unit": "fraction"}, "mae": {"higher_is_better": False, "unit": "years"}}
ENV = {"device": "cpu", "cpu": "Test CPU", "cpu_capability": "AVX2", "intra_op_threads": 1}


def _runs(results, seeds=6):
    """simloss_age runs written by hand: r ∈ {0, 0.5}, accuracy within ±0.5 pp and MAE within ±0.02 years."""
    for r in (0.0, 0.5):
        for seed in range(seeds):
            wiggle = (seed % 3 - 1)
            rec = {"run_id": f"r{r}s{seed}", "experiment_name": "simloss_age", "dataset": "synthetic_age",
                   "model": "small_cnn", "loss": "simloss", "seed": seed, "status": "completed",
                   "config": {"loss": {"r": r}, "seed": seed, "trainer": {"epochs": 3}},
                   "metrics": {"test/accuracy": 0.5 + r / 10 + 0.005 * wiggle, "test/mae": 1.0 - r + 0.02 * wiggle},
                   "metric_info": INFO, "selected_epoch": 3, "environment": ENV}
            rec["code_version"] = code_version(rec["config"])    # made by the current code
            write_record(results / "runs" / "simloss_age" / f"r{r}s{seed}.json", rec)
    return results


def _main(results, reference, *extra):
    return cli.main(["--results", str(results), "--reference", str(reference), "--profile", "smoke",
                     "--exp", "simloss_age", *extra])


def _table_csv(results, folder, shift=None):
    """The results' own long form written as a reference table, optionally with each mean moved."""
    spec = next(s for e in discover("smoke", ["simloss_age"], None) for s in e.tables if s.name == "main")
    long, _ = cells(load_runs(results), spec)
    if shift:
        long["mean"] = long["mean"] + long["metric"].map(shift)
    folder.mkdir(parents=True, exist_ok=True)
    long.to_csv(folder / "simloss_age.csv", index=False)
    return folder


def test_cli_reference_equal_to_results_reproduces_and_exits_0(tmp_path, capsys):
    results = _runs(tmp_path / "a")
    other = tmp_path / "b"
    shutil.copytree(results, other)
    assert _main(results, other) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("simloss_age: reproduced 4 / differs 0 / inconclusive 0 of 4 cells, "
                                          "δ = test/accuracy ±3 pp (default for fraction); test/mae ±0.2 years")
    assert "α = 0.05, Welch TOST" in out
    md = (results / "verify" / "simloss_age.md").read_text()
    assert "✓ 50.00 vs 50.00 Δ +0.00" in md and "Test CPU · AVX2 · 1 thread" in md and "different numerics" not in md
    table = pd.read_csv(results / "verify" / "simloss_age.csv")
    assert set(table["verdict"]) == {"reproduced"} and set(table["alpha"]) == {0.05}


def test_cli_shifted_reference_differs_and_exits_1(tmp_path, capsys):
    results = _runs(tmp_path / "a")
    reference = _table_csv(results, tmp_path / "tables", shift={"test/accuracy": 3 * 0.03, "test/mae": 3 * 0.2})
    assert _main(results, reference) == 1
    out = capsys.readouterr().out
    assert "differs 4 / inconclusive 0 of 4 cells" in out and "numerics environments differ: Test CPU" in out
    md = (results / "verify" / "simloss_age.md").read_text()
    assert "✗ 50.00 vs 59.00 Δ -9.00" in md
    assert "different numerics environments: expected" in md    # the reference table names no environment


def test_cli_bad_reference_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    results = _runs(tmp_path / "a")
    reference = _table_csv(results, tmp_path / "tables")
    frame = pd.read_csv(reference / "simloss_age.csv")
    frame.drop(columns="std").to_csv(reference / "simloss_age.csv", index=False)
    assert _main(results, reference) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {reference / 'simloss_age.csv'}: no column std")
    assert not (results / "verify").exists()
    frame.assign(dataset="utkface").to_csv(reference / "simloss_age.csv", index=False)
    assert _main(results, reference) == 2
    assert "none of its 4 cells matches a cell of table simloss_age" in capsys.readouterr().err
    assert _main(results, tmp_path / "nowhere") == 2
    assert "error: --reference" in capsys.readouterr().err


def test_cli_paper_reference_one_sample_and_key_typos(tmp_path, capsys, monkeypatch):
    results = _runs(tmp_path / "a")
    paper = tmp_path / "paper"
    paper.mkdir()
    monkeypatch.setitem(cli.NAMED, "paper", ("paper", paper))
    rows = [["synthetic_age", "0.0", "test/accuracy", "50.0"], ["synthetic_age", "0.5", "test/mae", "0.5 ± 0.02"]]
    pd.DataFrame(rows, columns=["dataset", "loss.r", "metric", "paper_value"]).to_csv(paper / "simloss_age.csv",
                                                                                      index=False)
    assert _main(results, "paper") == 0
    table = pd.read_csv(results / "verify" / "simloss_age.csv")
    assert list(table["test"]) == ["one-sample TOST", "one-sample TOST"]   # no paper_n: bare numbers
    assert list(table["verdict"]) == ["reproduced", "reproduced"]
    rows.append(["synthetic_age", "0.35", "test/mae", "0.6"])
    pd.DataFrame(rows, columns=["dataset", "loss.r", "metric", "paper_value"]).to_csv(paper / "simloss_age.csv",
                                                                                      index=False)
    assert _main(results, "paper") == 2
    assert "simloss_age.csv line 4: loss.r=0.35 matches no cell of table simloss_age" in capsys.readouterr().err


# ------------------------------------------------------------------ the numerics environment
from experiments.engine import environment  # noqa: E402


def test_cpu_model_and_labels(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t: avx2\n")
    assert environment.cpu_model(info) == "AMD EPYC 7B13 64-Core Processor"
    assert environment.cpu_model(tmp_path / "missing") != ""
    cpu = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "intra_op_threads": 2, "isa_variables": {"MKL_CBWR": "AVX2"}}
    assert environment.label(cpu) == "AMD EPYC · AVX512 · 2 threads · MKL_CBWR=AVX2"
    gpu = {"gpu": "NVIDIA A100", "gpu_capability": "8.0", "cudnn": 90100, "amp": True, "amp_dtype": "bfloat16",
           "compile": True}
    assert environment.label(gpu) == "NVIDIA A100 (8.0) · cuDNN 90100 · AMP bfloat16 · compile"
    assert environment.label(None) == "unrecorded"


def test_environment_of_a_cpu_run_ignores_amp(monkeypatch):
    import torch

    class Flags:
        amp, amp_dtype, compile, channels_last, deterministic = True, "float16", False, True, False

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    env = environment.numerics_environment("cpu", Flags())
    assert env["amp"] is False and env["amp_dtype"] is None and env["channels_last"] is True
    assert env["isa_variables"] == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert env["intra_op_threads"] == torch.get_num_threads() and "gpu" not in env


def test_run_json_records_its_environment_outside_the_run_id(train_run, results_dir):
    import torch

    rec = train_run("experiment=simloss_age", "loss.r=0.5")
    stored = json.loads(next((results_dir / "runs" / "simloss_age").glob("*.json")).read_text())
    env = stored["environment"]
    assert {"device", "cpu", "cpu_capability", "intra_op_threads", "interop_threads", "torch", "isa_variables",
            "amp", "amp_dtype", "compile", "channels_last", "deterministic"} <= set(env)
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["device"] == "cpu"
    assert env["intra_op_threads"] == 1 and env["cpu"] == environment.cpu_model()
    assert compute_run_id(stored["config"]) == stored["run_id"] == rec["run_id"]   # the id is the config's alone
    assert load_runs(results_dir)["environment"].iloc[0] == environment.label(env)


# ------------------------------------------------------------------ the tables: paper verdict mark, environments
from experiments.report.tables import TableSpec, render  # noqa: E402


def test_paper_table_shows_the_verdict_beside_the_paper_value_and_names_environments(tmp_path, capsys):
    results = _runs(tmp_path / "a")
    spec = TableSpec(experiment="simloss_age", profiles=["paper"], rows=["dataset", "loss.r"],
                     metrics=["test/accuracy", "test/mae"], baseline={"loss.r": 0.0})
    paper = tmp_path / "paper"
    render(load_runs(results), spec, tmp_path / "tables", paper)       # writes the empty template
    template = pd.read_csv(paper / "simloss_age.csv", dtype=str, keep_default_na=False)
    assert set(template["paper_value"]) == {""}
    filled = {("0", "test/accuracy"): "50.0", ("0.5", "test/accuracy"): "80 ± 1",   # 80 vs our 55: far off
              ("0", "test/mae"): "1.0 ± 0.5"}                                         # n unknown: bare number
    template["paper_value"] = [filled.get((canonical(r["loss.r"]), r["metric"]), "") for _, r in template.iterrows()]
    template.to_csv(paper / "simloss_age.csv", index=False)
    render(load_runs(results), spec, tmp_path / "tables", paper)
    md = (tmp_path / "tables" / "simloss_age.md").read_text()
    assert "[paper 50.0 ✓]" in md and "[paper 80 ± 1 ✗]" in md and "[paper 1.0 ± 0.5 ✓]" in md
    assert "Numerics environments of the runs: Test CPU · AVX2 · 1 thread (12 runs)." in md
    long = pd.read_csv(tmp_path / "tables" / "simloss_age.csv", keep_default_na=False)
    assert sorted(long["paper_verdict"]) == ["", "✓", "✓", "✗"]
    template.loc[0, "paper_value"] = "fifty"
    template.to_csv(paper / "simloss_age.csv", index=False)
    render(load_runs(results), spec, tmp_path / "tables", paper)            # still renders, without marks
    assert "paper verdicts of table simloss_age left out" in capsys.readouterr().err
    assert "✓" not in (tmp_path / "tables" / "simloss_age.md").read_text()


def test_committed_tables_are_read_from_git_head_not_the_working_tree(tmp_path):
    import subprocess

    ref = cli.Reference.open("tables")
    assert ref.committed and ref.kind == "tables"
    path = ref.path / "simloss_age.csv"
    text, source = ref.read(path)
    head = subprocess.run(["git", "-C", str(cli.ROOT), "show", "HEAD:results/tables/simloss_age.csv"],
                          capture_output=True, text=True).stdout
    assert text == head and source == f"{path} (as committed)"
    outside = tmp_path / "t.csv"                    # not in the repository: the file itself is the reference
    outside.write_text("a,b\n1,2\n")
    assert cli.Reference("tables", tmp_path, committed=True).read(outside) == ("a,b\n1,2\n", str(outside))
    assert cli.Reference("tables", tmp_path).read(tmp_path / "missing.csv") == (None, str(tmp_path / "missing.csv"))


def test_runs_of_another_budget_stay_out(tmp_path, capsys):
    results = _runs(tmp_path / "a", seeds=2)
    rec = json.loads((results / "runs" / "simloss_age" / "r0.0s0.json").read_text())
    rec["config"]["budget"] = 2
    rec["run_id"] = "twice"
    write_record(results / "runs" / "simloss_age" / "twice.json", rec)
    assert len(cli._runs(results, keep_stale=True)) == 4
    assert list(cli._runs(results, keep_stale=True, budget=2.0)["run_id"]) == ["twice"]
    assert _main(results, results, "--budget", "0") == 2
    assert "error: budget='0': must be a number > 0" in capsys.readouterr().err


def test_committed_tables_are_only_compared_with_the_default_profile(tmp_path, capsys):
    assert _main(_runs(tmp_path / "a", seeds=2), "tables") == 2
    assert "the committed tables are the default profile's, so PROFILE=smoke runs" in capsys.readouterr().err


def test_margin_text_names_where_delta_came_from():
    assert verify.margin_text("test/accuracy", Measure(True), {}) == "test/accuracy ±3 pp (default for fraction)"
    assert verify.margin_text("test/avgk_acc@3", Measure(True), {"avgk_acc": 1.5}) == \
        "test/avgk_acc@3 ±1.5 pp (table verify.margins)"
    assert verify.margin_text("test/mse", Measure(False, "score", margin=2.0), {}) == \
        "test/mse ±2 score (declared by the metric)"
    assert verify.margin_text("test/qwk", Measure(True, "score"), {}) == "test/qwk ±5% of |reference| (default for score)"
