"""The reproduce runner: Hydra's sweep expansion composed in-process, refused configs recorded, claims waited on."""
import io
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from experiments.drivers import catalog, runner
from experiments.drivers.train import compose_config
from experiments.store import results as store

ROOT = Path(__file__).resolve().parent.parent


def tiny(name: str, sweep: dict[str, str], data_dir: Path, seeds: str = "0") -> catalog.Experiment:
    return catalog.Experiment(name, name, [{**sweep, "trainer.epochs": "1"}], [], [], seeds, data_dir)


def test_sweep_expansion_and_run_ids_equal_hydra_multirun_composed_one_by_one(tmp_path, data_dir):
    exp = catalog.discover("smoke", ["cce_imbalanced"], str(data_dir))[0]
    points = runner.plan([exp], "smoke", tmp_path)
    expected = []
    for sweep in exp.sweeps:
        grid = {k: str(v).split(",") for k, v in {**sweep, "seed": exp.seeds}.items()}
        expected += [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    got = [dict(o.split("=", 1) for o in p.label.split()) for p in points]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))
    composer = runner.Composer()
    for p in [p for p in points if p.label.endswith("seed=0")]:
        cfg, choices = compose_config(p.overrides)
        assert p.run_id == store.compute_run_id(OmegaConf.to_container(cfg, resolve=True)), p.label
        assert composer(p.overrides)[1] == choices
    assert {p.state for p in points} == {"pending"}
    again = runner.plan([exp], "smoke", tmp_path)
    assert [p.run_id for p in again] == [p.run_id for p in points]


def test_a_refused_config_gets_a_refused_record_and_counts_as_done(tmp_path, data_dir):
    exp = tiny("cce_imbalanced", {"metric_sets": "[ordinal]"}, data_dir)
    (point,) = runner.plan([exp], "smoke", tmp_path)
    result = runner.execute(point.overrides, runner.Composer())
    assert result["status"] == "refused" and "ordered classes" in result["error"]
    record = json.loads(point.path.read_text())
    assert record["status"] == "refused" and record["error"] == result["error"]
    assert record["run_id"] == point.run_id and record["seed"] == 0 and record["dataset"] == "digits"
    assert record["code_version"] == store.code_version(record["config"])
    assert record["config"]["metric_sets"] == ["ordinal"]
    assert [p.state for p in runner.plan([exp], "smoke", tmp_path)] == ["refused"]


def _hold_claim(path: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom experiments.store.claims import Claim\n"
            f"assert Claim({str(path)!r}, 600).acquire() is None\nprint('held', flush=True)\ntime.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_a_config_claimed_elsewhere_is_waited_for_then_taken_over(tmp_path, data_dir):
    exp = tiny("simloss_age", {"loss.r": "0.5"}, data_dir)
    (point,) = runner.plan([exp], "smoke", tmp_path)
    holder = _hold_claim(store.claim_path(tmp_path, point.experiment_name, point.run_id))
    threading.Timer(6.0, lambda: (holder.kill(), holder.wait())).start()
    out = io.StringIO()
    t0 = time.time()
    tally = runner.run_points([point], jobs=1, stream=out, poll_s=1.0)
    assert tally.counts == {"completed": 1} and not tally.failures, out.getvalue()
    assert time.time() - t0 >= 6.0 and "claimed: simloss_age loss.r=0.5 trainer.epochs=1 seed=0" in out.getvalue()
    assert store.is_finished(store.read_record(point.path))


def test_failures_are_counted_and_the_driver_goes_on(tmp_path, data_dir):
    targets = "experiments.losses.CrossEntropy,tests.helpers.NaNAfterFirstBatch"
    exp = tiny("cce_imbalanced", {"loss._target_": targets, "~loss.label_smoothing": "0.0"}, data_dir)
    points = runner.plan([exp], "smoke", tmp_path)
    out = io.StringIO()
    tally = runner.run_points(points, jobs=2, stream=out)
    assert tally.counts == {"completed": 1, "failed": 1}, out.getvalue()
    assert len(tally.failures) == 1 and "NaNAfterFirstBatch" in tally.failures[0]
    assert "FAILED" in out.getvalue()


def _reproduce(exp: str, results: Path, data: Path) -> subprocess.Popen:
    args = ["--profile", "smoke", "--jobs", "1", "--exp", exp, "--results-dir", str(results), "--data-dir", str(data)]
    return subprocess.Popen([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_drivers_on_one_results_folder_train_each_config_once(tmp_path, data_dir):
    results = tmp_path / "r"
    drivers = [_reproduce("simloss_age,simloss_cifar", results, data_dir), _reproduce("simloss_age", results, data_dir)]
    outputs = [d.communicate(timeout=900)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").rglob("*.json"))]
    assert len(records) == 12 and len({(r["experiment_name"], r["run_id"]) for r in records}) == 12
    assert {r["status"] for r in records} == {"completed"} and not list((results / "claims").rglob("*.claim"))
    trained = [int(n) for o in outputs for n in re.findall(r"configs run: (\d+) completed", o)]
    assert sum(trained) == 12, outputs
    for name in ("simloss_age", "simloss_cifar"):
        table = pd.read_csv(results / "tables" / f"{name}.csv")
        assert table[table["metric"] == "test/accuracy"]["n"].sum() == 6


@pytest.mark.slow
def test_bench_sections_on_tiny_sizes():
    from experiments.drivers import bench_runs

    fixed = bench_runs.bench_fixed_cost(runs=2, own_runs=1)
    assert fixed["runs"] == 2 and 0 < fixed["fixed_s"] < fixed["own_process_fixed_s"]
    noop = bench_runs.bench_noop_rerun("simloss_cifar")
    assert 0 < noop["noop_s"] and noop["ratio_noop_to_first"] > 0
    whole = bench_runs.bench_profile("smoke", "simloss_age")  # BENCH_PROFILE=1 runs it on the default profile
    assert 0 < whole["noop_s"] < whole["first_s"] and whole["peak_memory_mb"] > 0


def _conf_copy(tmp_path, monkeypatch) -> Path:
    import shutil

    from experiments.drivers import train

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    monkeypatch.setattr(runner, "CONF_DIR", conf)
    monkeypatch.setattr(train, "CONF_DIR", conf)
    monkeypatch.setattr(catalog, "CONF_DIR", conf)
    return conf


def test_editing_an_experiment_yaml_replans_its_run_ids(tmp_path, monkeypatch, data_dir):
    """The plan cache maps overrides to run ids; an edited config file must not leave the old ids (and the old,
    now wrong, 'done' state) in place."""
    conf = _conf_copy(tmp_path, monkeypatch)
    exp = tiny("simloss_age", {"loss.r": "0.5"}, data_dir)
    (before,) = runner.plan([exp], "smoke", tmp_path / "r")
    yaml = conf / "experiment" / "simloss_age.yaml"
    yaml.write_text(yaml.read_text().replace("batch_size: 64", "batch_size: 32"))
    (after,) = runner.plan([exp], "smoke", tmp_path / "r")
    assert after.run_id != before.run_id
    cfg, _ = compose_config(after.overrides)
    assert cfg.trainer.batch_size == 32
    assert after.run_id == store.compute_run_id(OmegaConf.to_container(cfg, resolve=True))


def test_discover_is_cached_and_the_cache_follows_the_config_tree(tmp_path, monkeypatch, data_dir):
    conf = _conf_copy(tmp_path, monkeypatch)
    cache = tmp_path / "discover"
    first = catalog.discover("smoke", ["simloss_age"], str(data_dir), cache)
    assert first == catalog.discover("smoke", ["simloss_age"], str(data_dir))

    def composing(*args):
        raise AssertionError("composed although nothing changed")

    with monkeypatch.context() as m:
        m.setattr(catalog, "_discover", composing)
        assert catalog.discover("smoke", ["simloss_age"], str(data_dir), cache) == first
    yaml = conf / "experiment" / "simloss_age.yaml"
    yaml.write_text(yaml.read_text().replace("smoke: \"0.0,0.5,0.9\"", "smoke: \"0.0,0.9\""))
    (again,) = catalog.discover("smoke", ["simloss_age"], str(data_dir), cache)
    assert again.sweeps != first[0].sweeps and again.sweeps == [{"loss.r": "0.0,0.9"}]
    (cache / "junk.pkl").write_bytes(b"not a pickle")
    for path in cache.glob("*.pkl"):
        path.write_bytes(b"\x80garbage")
    assert catalog.discover("smoke", ["simloss_age"], str(data_dir), cache) == [again]
