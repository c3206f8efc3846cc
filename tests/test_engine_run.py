import json

import pytest

from experiments.store.frame import load_runs

REQUIRED = {"run_id", "experiment_name", "dataset", "model", "loss", "seed", "config", "metrics", "history",
            "selected_epoch", "status", "duration_s", "git_commit", "versions", "device", "data"}


def test_one_run_writes_one_complete_json(train_run, results_dir):
    rec = train_run("dataset=synthetic_cifar", "model=small_cnn", "loss=ce")
    files = list((results_dir / "runs" / "adhoc").glob("*.json"))
    assert len(files) == 1
    on_disk = json.loads(files[0].read_text())
    assert REQUIRED <= set(on_disk)
    assert on_disk["status"] == "completed" and on_disk["run_id"] == rec["run_id"]
    assert on_disk["dataset"] == "synthetic_cifar" and on_disk["loss"] == "ce"
    assert set(on_disk["data"]) >= {"num_classes", "n_train", "n_val", "n_test", "train_class_counts"}
    assert on_disk["data"]["num_classes"] == 100
    assert sum(on_disk["data"]["train_class_counts"]) == on_disk["data"]["n_train"]
    for key in ("val/accuracy", "test/accuracy", "test/loss"):
        assert key in on_disk["metrics"]
    assert 0.0 <= on_disk["metrics"]["test/accuracy"] <= 1.0
    df = load_runs(results_dir)
    assert len(df) == 1 and df.loc[0, "test/accuracy"] == on_disk["metrics"]["test/accuracy"]


def test_finished_run_is_skipped(train_run, results_dir):
    first = train_run()
    again = train_run()
    assert again.get("skipped") and again["run_id"] == first["run_id"]
    assert len(list((results_dir / "runs").rglob("*.json"))) == 1


def test_same_seed_same_numbers(compose, tmp_path):
    from experiments.drivers.train import run

    metrics = []
    for i in range(2):
        cfg, choices = compose("trainer.epochs=2", f"results_dir={tmp_path / str(i)}")
        metrics.append(run(cfg, choices, log=lambda *a: None)["metrics"])
    assert metrics[0] == metrics[1]
    cfg, choices = compose("trainer.epochs=2", "seed=1", f"results_dir={tmp_path / 'other'}")
    assert run(cfg, choices, log=lambda *a: None)["metrics"] != metrics[0]


def test_interrupted_run_resumes_where_it_stopped(compose, tmp_path):
    from experiments.drivers.train import run

    quiet = lambda *a: None  # noqa: E731
    cfg, ch = compose("trainer.epochs=3", f"results_dir={tmp_path / 'a'}", "trainer.interrupt_after=1")
    part = run(cfg, ch, log=quiet)
    assert part["status"] == "interrupted" and [h["epoch"] for h in part["history"]] == [1]
    assert not list((tmp_path / "a" / "runs").rglob("*.json"))  # nothing half-written
    logs = []
    cfg, ch = compose("trainer.epochs=3", f"results_dir={tmp_path / 'a'}")
    resumed = run(cfg, ch, log=logs.append)
    assert any("resuming from epoch 2" in line for line in logs)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    cfg, ch = compose("trainer.epochs=3", f"results_dir={tmp_path / 'b'}")
    straight = run(cfg, ch, log=quiet)
    assert resumed["run_id"] == straight["run_id"]
    assert resumed["metrics"] == straight["metrics"]  # resuming restores weights, optimizer and RNG exactly


def test_sparse_epoch_checkpoints_still_resume_exactly_and_are_written_only_when_due(compose, tmp_path, monkeypatch):
    """`trainer.checkpoint_every_s` thins the end-of-epoch checkpoints; an interruption always writes one, so the
    resumed run still equals the uninterrupted one. The setting is not part of the run id."""
    import experiments.engine.trainer as trainer_module
    from experiments.drivers.train import run

    quiet = lambda *a: None  # noqa: E731
    writes = []
    real_save = trainer_module.save
    monkeypatch.setattr(trainer_module, "save", lambda state, *a: (writes.append(state.epoch), real_save(state, *a)))
    sparse = ("trainer.epochs=3", "trainer.checkpoint_every_s=1e9")
    cfg, ch = compose(*sparse, f"results_dir={tmp_path / 'a'}", "trainer.interrupt_after=2")
    assert run(cfg, ch, log=quiet)["status"] == "interrupted"
    assert writes == [2]                       # none at the end of epochs 1 and 2, one for the interruption
    resumed = run(*compose(*sparse, f"results_dir={tmp_path / 'a'}"), log=quiet)
    writes.clear()
    straight = run(*compose("trainer.epochs=3", f"results_dir={tmp_path / 'b'}"), log=quiet)
    assert writes == [1, 2, 3]                 # checkpoint_every_s=0 (the tests' setting): after every epoch
    assert resumed["run_id"] == straight["run_id"] and resumed["metrics"] == straight["metrics"]


def test_negative_checkpoint_interval_is_refused(train_run):
    from experiments.engine.errors import UserError

    with pytest.raises(UserError, match="trainer.checkpoint_every_s=-1"):
        train_run("trainer.checkpoint_every_s=-1")


def test_selected_epoch_is_chosen_on_validation(train_run):
    rec = train_run("trainer.epochs=3")
    vals = [h["val/accuracy"] for h in rec["history"]]
    assert rec["selected_epoch"] == 1 + max(range(3), key=lambda i: (vals[i], -i))
    assert rec["metrics"]["val/accuracy"] == pytest.approx(vals[rec["selected_epoch"] - 1])


def test_select_last_reports_final_epoch(train_run):
    rec = train_run("trainer.epochs=2", "trainer.select_metric=last")
    assert rec["selected_epoch"] == 2


def test_min_steps_raises_epochs_for_small_training_splits():
    from experiments.engine.trainer import Trainer, TrainerConfig

    cfg = TrainerConfig(epochs=6, min_steps=200, batch_size=32)
    assert Trainer.step_budget(cfg, 1197).epochs == 6          # 38 batches × 6 epochs ≥ 200 steps
    assert Trainer.step_budget(cfg, 314).epochs == 20          # 10 batches: 20 epochs = 200 steps
    assert Trainer.step_budget(cfg, 278).epochs == 23          # 9 batches: ⌈200 / 9⌉
    assert Trainer.step_budget(TrainerConfig(epochs=4), 10).epochs == 4   # min_steps 0: as given
