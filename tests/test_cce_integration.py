"""CCE package through the real config and trainer: COT's two optimizer steps, every loss for one epoch, CIFAR
fixture pickles, Road Marking fixture, the presets."""
from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.formats import write_cifar10, write_cifar100, write_raw

FAST = ("trainer.progress=off", "trainer.num_workers=0", "trainer.cpu_threads=1", "trainer.keep_checkpoint=none")


def _ok(rec: dict) -> dict:
    assert rec["status"] == "completed", rec.get("error")
    m = rec["metrics"]
    for key in ("test/accuracy", "test/balanced_accuracy", "test/top5_accuracy"):
        assert math.isfinite(m[key]), key
    return m


@pytest.mark.parametrize("steps", [2, 1])
def test_cot_optimizer_steps_through_trainer(train_run, monkeypatch, steps):
    calls: dict[int, int] = {}
    original = torch.optim.SGD.step

    def counting(self, *a, **k):
        calls[id(self)] = calls.get(id(self), 0) + 1
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", counting)
    rec = train_run("experiment=cce_imbalanced", "loss=cot", f"loss.steps={steps}", "dataset.imbalance.ratio=10",
                    "trainer.epochs=2", "trainer.batch_size=16")
    _ok(rec)
    batches = -(-rec["data"]["n_train"] // 16)
    assert len(calls) == steps  # one optimizer per name: main (+ complement)
    assert all(v == batches * 2 for v in calls.values())
    assert sum(calls.values()) == steps * batches * 2
    if steps == 2:
        assert {"train/ce", "train/complement"} <= set(rec["history"][0])


@pytest.mark.parametrize("loss", ["cce", "cce loss.variant=official", "focal", "cb", "ldam_drw", "balanced_softmax",
                                  "logit_adjustment", "cot loss.steps=1"])
def test_losses_one_epoch_on_stand_in(train_run, loss):
    name, *opts = loss.split()
    rec = train_run("experiment=cce_imbalanced", f"loss={name}", *opts, "dataset.imbalance.ratio=10")
    m = _ok(rec)
    assert "test/la_balanced_accuracy" in m and "test/few_shot_accuracy" in m
    counts = rec["data"]["train_class_counts"]
    assert counts[0] > counts[-1] and len(counts) == 10
    assert len(rec["details"]["test/per_class_accuracy"]) == 10


def test_stand_in_100_classes_rho_100(train_run):
    """The experiment's 100-class sweep item (110 per class, 10 held out) at smoke scale 0.25: N_max = 28 − 10."""
    rec = train_run("experiment=cce_imbalanced_c100", "dataset=synthetic_cifar", "dataset.n_train_per_class=110",
                    "dataset.val_per_class=10", "dataset.val_fraction=0.0", "dataset.imbalance.ratio=100",
                    "loss=cce")
    _ok(rec)
    assert rec["data"]["train_class_counts"] == [int(18 * 0.01 ** (i / 99)) for i in range(100)]
    assert rec["data"]["n_val"] == 1000


def test_cifar_fixture_pickles_train(train_run, tmp_path):
    write_cifar10(tmp_path / "c10", n_per_batch_per_class=4, n_test_per_class=3)
    write_cifar100(tmp_path / "c100", n_train_per_class=10, n_test_per_class=2)
    for ds, root in (("cifar10", tmp_path / "c10"), ("cifar100", tmp_path / "c100")):
        rec = train_run("experiment=cce_imbalanced_paper", f"dataset={ds}", f"dataset.root={root}",
                        "dataset.imbalance.ratio=10", "loss=cce", "model=small_cnn", "model.width=8",
                        "trainer.epochs=1", "trainer.batch_size=64", *FAST, shrink=False)
        _ok(rec)
        assert rec["config"]["schedule"]["milestones"] == [100, 150]  # the cce_code preset
        assert rec["data"]["n_test"] == (30 if ds == "cifar10" else 200)


def test_road_marking_fixture_trains(train_run, tmp_path):
    from image_classification.road_marking import prepare

    prepare(write_raw(tmp_path / "raw"), tmp_path / "rm", seed=0, log=lambda *a: None)
    rec = train_run("dataset=road_marking", f"dataset.root={tmp_path / 'rm'}", "loss=cce", "trainer.epochs=1",
                    "model.width=8", *FAST, shrink=False)
    _ok(rec)
    assert rec["data"]["num_classes"] == 3 and rec["data"]["n_val"] == 2


def test_ldam_preset_reports_last_epoch(train_run):
    rec = train_run("preset=ldam", "dataset=synthetic_cifar10", "model=small_cnn", "model.width=8",
                    "dataset.imbalance.ratio=10", "loss=ldam_drw", "trainer.epochs=2", "schedule.warmup_epochs=1")
    _ok(rec)
    assert rec["data"]["n_val"] == 0 and rec["selected_epoch"] == 2
    assert rec["config"]["schedule"]["factors"] == [0.01, 0.0001] and rec["config"]["optim"]["weight_decay"] == 2e-4
