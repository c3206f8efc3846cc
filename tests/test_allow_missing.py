"""`make reproduce-table PROFILE=paper ALLOW_MISSING=1`: the configs whose data is present run, the others get a
refusal record "data missing: <path>" (experiments/drivers/missing.py); without the flag the profile refuses up
front."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from experiments.drivers import reproduce, runner
from experiments.drivers.catalog import discover
from experiments.drivers.missing import DATA_MISSING, read_folder, reads, refuse_missing
from experiments.store import results as store

def test_reads_matches_entries_to_the_folder_a_dataset_declares():
    data = Path("/d")
    cifar, road = data / "cifar", data / "road_marking"
    c10, c100 = cifar / "cifar-10-batches-py", cifar / "cifar-100-python"
    assert reads(c10, c10) and not reads(c100, c10) and reads(c100, c100) and not reads(c10, c100)
    assert reads(road, road) and not reads(road, c10)
    assert reads(data, road) and reads(cifar, c10)                  # an entry above the folder
    assert reads(c10 / "data_batch_1", c10)                         # an entry inside it
    assert not reads(cifar / "extras", c10)                         # beside it: not read
    assert not reads(road, None)                                    # no root: reads no file


def test_the_folder_read_comes_from_the_dataset_class_declaration():
    from omegaconf import OmegaConf

    def folder(target, root):
        return read_folder(OmegaConf.create({"_target_": target, "root": root}))

    assert folder("image_classification.cifar.Cifar10", "/d/cifar") == Path("/d/cifar/cifar-10-batches-py")
    assert folder("image_classification.cifar.Cifar100", "/d/cifar") == Path("/d/cifar/cifar-100-python")
    assert folder("image_classification.cifar.Cifar10", "/d/cifar-10-batches-py") == Path("/d/cifar-10-batches-py")
    assert folder("image_classification.road_marking.RoadMarking", "/d/road_marking") == Path("/d/road_marking")
    assert read_folder(OmegaConf.create({"_target_": "image_classification.digits.Digits"})) is None


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
