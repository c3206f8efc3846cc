"""`make rehearse` at a small scale: the generators write what the readers read, at the counts asked for, and the
driver takes a paper experiment through the planner, the streamed loader, training, selection, the final test,
every metric and the tables (in this process: the driver's own child processes only isolate peak memory)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.drivers import rehearse
from experiments.engine.generated import long_tail


def test_long_tail_sums_to_the_total_with_the_floor_and_falls_off():
    counts = long_tail(1000, 7, least=3, exponent=1.2)
    assert counts.sum() == 1000 and counts.min() >= 3
    assert list(counts) == sorted(counts, reverse=True)
    with pytest.raises(ValueError):
        long_tail(10, 7, least=2)


def test_plantnet_generator_writes_the_v11_layout_at_the_requested_counts(tmp_path):
    from average_k.plantnet import PlantNet300K
    from average_k.rehearsal import write_plantnet300k

    sizes = {"train": 40, "val": 9, "test": 8}
    written = write_plantnet300k(str(tmp_path / "pn"), species=6, sizes=sizes)
    assert written.files == sum(sizes.values()) + 3      # the images and the three metadata files
    data = PlantNet300K(str(tmp_path / "pn"))()
    assert (len(data.train), len(data.val), len(data.test)) == (40, 9, 8) and data.meta.num_classes == 6
    meta = json.loads((tmp_path / "pn" / "plantnet300K_metadata.json").read_text())
    assert sorted(np.unique([m["split"] for m in meta.values()], return_counts=True)[1]) == [8, 9, 40]
    with pytest.raises(FileExistsError):
        write_plantnet300k(str(tmp_path / "pn"), species=6, sizes=sizes)


def test_cifar_and_age_generators_are_read_by_the_readers(tmp_path):
    from age_estimation.datasets import AFAD
    from age_estimation.rehearsal import write_afad
    from image_classification.cifar import Cifar10, Cifar100
    from image_classification.rehearsal import write_cifar10, write_cifar100

    write_cifar100(str(tmp_path / "cifar" / "cifar-100-python"), 2, 1)
    write_cifar10(str(tmp_path / "cifar" / "cifar-10-batches-py"), 1, 1)
    c100 = Cifar100(str(tmp_path / "cifar"), val_fraction=0.0)()
    assert (len(c100.train), len(c100.test), c100.meta.num_classes) == (200, 100, 100)
    assert len(Cifar10(str(tmp_path / "cifar"), val_fraction=0.0)().train) == 50
    write_afad(str(tmp_path / "AFAD-Full"), total=120)
    afad = AFAD(str(tmp_path / "AFAD-Full"), cache_dir=str(tmp_path / "cache"))()
    assert len(afad.train) + len(afad.val) + len(afad.test) == 120


def test_road_marking_generator_goes_through_the_official_preprocessing(tmp_path):
    from image_classification.rehearsal import write_road_marking
    from image_classification.road_marking import RoadMarking, split_counts

    written = write_road_marking(str(tmp_path / "road_marking"), images=60, classes=3, per_dropped=1)
    root = tmp_path / "road_marking"
    assert sorted(p.name for p in (root / "train").iterdir()) == ["marking_00", "marking_01", "marking_02"]
    per_class = {c: sum(len(list((root / s / c).iterdir())) for s in ("train", "valid", "test"))
                 for c in ("marking_00", "marking_01", "marking_02")}
    assert sum(per_class.values()) == 60 and per_class["marking_00"] > per_class["marking_02"] >= 10
    assert all(len(list((root / "train" / c).iterdir())) == split_counts(n)[0] for c, n in per_class.items())
    assert written.files == 60 and not list(tmp_path.glob(".road_marking_raw.*"))   # the raw folder is gone
    data = RoadMarking(str(root))()
    assert len(data.train) + len(data.val) + len(data.test) == 60 and data.meta.num_classes == 3


@pytest.mark.slow   # ~30 s on this shared machine (44 configs planned, one run, tables); the fast tests cover the generators
def test_small_rehearsal_runs_a_paper_experiment_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(rehearse, "in_child", lambda fn, *args: fn(*args))
    lines = []
    report = rehearse.rehearse("avgk_paper", tmp_path / "data", tmp_path / "results", "small",
                               only=["loss=role"], limit=1, loader_batches=2,
                               extra=["trainer.num_workers=0"], out=lines.append)
    [row] = report["runs"]
    assert row["status"] == "completed", row
    assert (row["train"], row["classes"]) == (36, 12)            # rehearse_data.yaml's small Pl@ntNet
    assert row["first_batch_s"] >= 0 and row["eval_s"] >= 0 and row["json_kb"] > 0
    assert report["render"]["tables"] >= 1 and not report["render"]["errors"]
    assert (tmp_path / "results" / "rehearse" / "avgk_paper-small.json").exists()
    assert {g["root"].rsplit("/", 1)[1] for g in report["generated"]} == {"plantnet300k", "cifar-100-python"}


def test_rehearsal_refuses_the_project_results_folder(tmp_path):
    from experiments.drivers.catalog import ROOT
    from experiments.engine.errors import UserError

    with pytest.raises(UserError, match="scratch folder"):
        rehearse.rehearse("avgk_paper", tmp_path, ROOT / "results", "small")


@pytest.mark.slow   # ~25 s: plans avgk_paper and trains 3 batches of ROLE at small scale
def test_rehearsal_steps_mode_times_a_fixed_number_of_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(rehearse, "in_child", lambda fn, *args: fn(*args))
    report = rehearse.rehearse("avgk_paper", tmp_path / "data", tmp_path / "results", "small",
                               only=["loss=role"], limit=1, loader_batches=2, steps=3,
                               extra=["trainer.num_workers=0", "trainer.batch_size=4"], out=lambda *a: None)
    [row] = report["runs"]
    assert (row["status"], row["steps"]) == ("steps", 3), row       # 36 images / 4 = 9 batches: stopped after 3
    assert row["step_s"] > 0 and row["epoch_est_s"] == pytest.approx(row["step_s"] * 9, rel=0.01, abs=0.1)
    assert row["checkpoint_mb"] > 0                                 # the interruption's checkpoint (table + momentum)
    assert row["json_kb"] is None                                   # nothing recorded in steps mode
