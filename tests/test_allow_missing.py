"""`make reproduce-table PROFILE=paper ALLOW_MISSING=1`: the configs whose data is present run, the others get a
refusal record "data missing: <path>" (experiments/drivers/missing.py); without the flag the profile refuses up
front."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from experiments.drivers import reproduce, runner
from experiments.drivers.catalog import discover
from experiments.drivers.missing import DATA_MISSING, reads, refuse_missing
from experiments.store import results as store

CIFAR = {"cifar10", "cifar100", "road_marking"}


def test_reads_matches_entries_to_the_dataset_that_reads_them():
    data = Path("/d")
    cifar, road = data / "cifar", data / "road_marking"
    assert reads(cifar / "cifar-10-batches-py", cifar, "cifar10", CIFAR)
    assert not reads(cifar / "cifar-100-python", cifar, "cifar10", CIFAR)     # cifar100 is the longer prefix
    assert reads(cifar / "cifar-100-python", cifar, "cifar100", CIFAR)
    assert not reads(cifar / "cifar-10-batches-py", cifar, "cifar100", CIFAR)
    assert reads(road, road, "road_marking", CIFAR) and not reads(road, cifar, "cifar10", CIFAR)
    assert reads(data, road, "road_marking", CIFAR)                            # an entry above the root
    assert reads(cifar / "extras", cifar, "cifar10", CIFAR)                    # names no dataset: read by all
    assert not reads(road, None, "synthetic_age", CIFAR)                       # no root: reads no file


def _small_experiment(data: Path):
    exp = discover("paper", ["cce_imbalanced_paper"], str(data))[0]
    return dataclasses.replace(exp, sweeps=[{"dataset": "cifar10,cifar100,road_marking", "loss": "cce"}], seeds="0")


def _by_dataset(points) -> dict:
    return {next(o.split("=")[1] for o in p.overrides if o.startswith("dataset=")): p for p in points}


def test_refuses_only_the_configs_whose_data_is_missing_and_retries_them_when_it_appears(tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    (data / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    exp = _small_experiment(data)
    points = _by_dataset(runner.plan([exp], "paper", results))
    assert refuse_missing(list(points.values()), [exp]) == 2
    assert points["cifar10"].state == "pending"
    assert points["cifar100"].state == points["road_marking"].state == "refused"
    records = {k: store.read_record(p.path) for k, p in points.items() if k != "cifar10"}
    assert records["cifar100"]["status"] == "refused"
    assert records["cifar100"]["error"] == f"{DATA_MISSING}{data / 'cifar' / 'cifar-100-python'}"
    assert records["road_marking"]["error"] == f"{DATA_MISSING}{data / 'road_marking'}"
    reproduce.render_everything([exp], results)
    table = (results / "tables" / "cce_imbalanced_paper.md").read_text()
    assert f"data missing: {data / 'road_marking'}" in table and "road_marking · 1" in table

    # road_marking's data appears; cifar100's record is made a refusal for another reason, which must stay
    (data / "road_marking").mkdir()
    (data / "cifar" / "cifar-100-python").mkdir()
    other = dict(records["cifar100"], error="loss cce cannot run here")
    points["cifar100"].path.write_text(json.dumps(other))
    again = _by_dataset(runner.plan([exp], "paper", results))
    assert again["road_marking"].state == again["cifar100"].state == "refused"   # as the store says
    assert refuse_missing(list(again.values()), [exp]) == 0
    assert again["road_marking"].state == "pending" and again["cifar100"].state == "refused"


def test_without_the_flag_the_paper_profile_refuses_up_front_naming_the_flag(tmp_path, capsys):
    rc = reproduce.main(["--profile", "paper", "--exp", "cce_imbalanced_paper", "--data-dir", str(tmp_path / "d"),
                         "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: PROFILE=paper needs the real datasets; missing:")
    assert "road_marking" in err and "ALLOW_MISSING=1" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "runs").exists()
