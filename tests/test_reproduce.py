"""`make reproduce-table PROFILE=smoke` end to end through its Python entry."""
import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from experiments.drivers import reproduce, runner

TABLES = ["simloss_age", "simloss_cifar", "cce_imbalanced", "cce_imbalanced_shots", "avgk", "avgk_fewshot"]
EXPERIMENTS = "simloss_age,simloss_cifar,cce_imbalanced,avgk"


def _args(results, data):
    return ["--profile", "smoke", "--jobs", "2", "--exp", EXPERIMENTS, "--results-dir", str(results),
            "--data-dir", str(data)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke_results")
    data = tmp_path_factory.mktemp("smoke_data")
    t0 = time.perf_counter()
    code = reproduce.main(_args(results, data))
    return code, results, data, time.perf_counter() - t0


@pytest.mark.slow
def test_smoke_profile_renders_every_table_and_figure(smoke):
    code, results, _, _ = smoke
    assert code == 0
    for name in TABLES:
        for ext in ("md", "tex", "csv"):
            assert (results / "tables" / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
        assert "Failed runs excluded: 0" in (results / "tables" / f"{name}.md").read_text()
    pngs = sorted((results / "figures").glob("*.png"))
    assert len(pngs) >= 8 and all(p.stat().st_size > 5000 for p in pngs)
    assert len(list((results / "figures").glob("*.pdf"))) == len(pngs)


@pytest.mark.slow
def test_table_numbers_equal_a_recomputation_from_the_run_jsons(smoke):
    _, results, _, _ = smoke
    runs = [json.loads(p.read_text()) for p in (results / "runs" / "simloss_age").glob("*.json")]
    by_r: dict[float, list[float]] = {}
    for rec in runs:
        assert rec["status"] == "completed"
        by_r.setdefault(rec["config"]["loss"]["r"], []).append(rec["metrics"]["test/mae"])
    table = pd.read_csv(results / "tables" / "simloss_age.csv")
    rows = table[table["metric"] == "test/mae"].set_index("loss.r")
    assert set(rows.index) == set(by_r)
    for r, values in by_r.items():
        assert rows.loc[r, "n"] == len(values)
        assert rows.loc[r, "mean"] == pytest.approx(np.mean(values), abs=1e-12)
        expected_std = np.std(values, ddof=1) if len(values) > 1 else 0.0
        assert rows.loc[r, "std"] == pytest.approx(expected_std, abs=1e-12)
        md = (results / "tables" / "simloss_age.md").read_text()
        assert f"{np.mean(values):.2f} ± {expected_std:.2f} ({len(values)})" in md or math.isnan(np.mean(values))


@pytest.mark.slow
def test_second_call_starts_no_training_job_and_takes_a_fraction_of_the_first(smoke, capfd, monkeypatch):
    _, results, data, first_s = smoke
    before = {p: p.stat().st_mtime_ns for p in (results / "runs").rglob("*.json")}
    (results / "tables" / "simloss_age.md").unlink()

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started although every config is done")

    monkeypatch.setattr(runner, "Pool", no_pool)
    capfd.readouterr()
    t0 = time.perf_counter()
    assert reproduce.main(_args(results, data)) == 0
    second_s = time.perf_counter() - t0
    out = capfd.readouterr().out
    assert f"planned {len(before)} configs" in out and "; 0 to run" in out
    assert {p: p.stat().st_mtime_ns for p in (results / "runs").rglob("*.json")} == before
    assert (results / "tables" / "simloss_age.md").exists()
    assert second_s < first_s / 3, (first_s, second_s)


def test_paper_profile_names_missing_data_before_starting(tmp_path, capsys):
    code = reproduce.main(["--profile", "paper", "--results-dir", str(tmp_path / "r"),
                           "--data-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: PROFILE=paper needs the real datasets")
    for needed in ("UTKFace", "AFAD-Full", "cifar-100-python", "cifar-10-batches-py", "plantnet300k",
                   "GoogleNews-vectors-negative300.bin"):
        assert needed in err
    assert not (tmp_path / "r" / "runs").exists()
