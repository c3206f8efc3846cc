"""The `logger` group: live logs written from the trainer's epoch log, read back with their own readers."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from experiments.engine.checkpoint import LAST
from experiments.engine.errors import UserError
from experiments.store import results as store

RUN = ("dataset=digits", "trainer.epochs=3", "trainer.checkpoint_every_s=1e9")


def _killed_after_logging(train_run, results_dir, logger: str) -> dict:
    """A run whose first process checkpointed epoch 1 and logged epoch 2 before dying without a checkpoint (as a
    SIGKILL between checkpoints leaves it), then started again: it resumes at epoch 2 and logs 2 and 3 again."""
    first = train_run(*RUN, f"logger={logger}", "trainer.interrupt_after=1")
    assert first["status"] == "interrupted"
    last = store.work_dir(results_dir, first["experiment_name"], first["run_id"]) / LAST
    shutil.copy(last, last.with_name("epoch1.pt"))
    assert train_run(*RUN, f"logger={logger}", "trainer.interrupt_after=1")["status"] == "interrupted"
    shutil.copy(last.with_name("epoch1.pt"), last)
    record = train_run(*RUN, f"logger={logger}")
    assert record["status"] == "completed" and [r["epoch"] for r in record["history"]] == [1, 2, 3]
    return record


def _run_dir(results_dir, kind: str, record: dict):
    return results_dir / "logs" / kind / record["experiment_name"] / record["run_id"]


def test_tensorboard_holds_every_epoch_number_once_and_the_hparams(train_run, results_dir):
    record = _killed_after_logging(train_run, results_dir, "tensorboard")
    run_dir = _run_dir(results_dir, "tensorboard", record)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 3      # one writer per process of the run
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    history = record["history"]
    logged = {k for row in history for k, v in row.items() if k != "epoch" and v is not None}
    assert {"lr", "train/loss", "val/accuracy", "time_s"} <= logged
    assert logged <= set(acc.Tags()["scalars"])
    for name in logged:
        events = acc.Scalars(name)
        assert [e.step for e in events] == [1, 2, 3], name
        assert [e.value for e in events] == pytest.approx([row[name] for row in history], rel=1e-6), name
    test_acc = acc.Scalars("test/accuracy")
    assert [e.value for e in test_acc] == pytest.approx([record["metrics"]["test/accuracy"]], rel=1e-6)

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["seed"].number_value == record["config"]["seed"]
    assert hp["loss._target_"].string_value == record["config"]["loss"]["_target_"]
    assert "results_dir" not in hp and "logger._target_" not in hp     # the run's own config only
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert "test/accuracy" in {m.name.tag for m in experiment.experiment.metric_infos}


def test_csv_one_row_per_epoch_and_the_final_metrics(train_run, results_dir):
    record = _killed_after_logging(train_run, results_dir, "csv")
    run_dir = _run_dir(results_dir, "csv", record)
    table = pd.read_csv(run_dir / "metrics.csv")
    assert table["epoch"].tolist() == [1, 2, 3]
    history = pd.DataFrame(record["history"])
    for name in ("lr", "train/loss", "val/accuracy"):
        assert table[name].tolist() == pytest.approx(history[name].tolist(), rel=1e-9), name
    saved = json.loads((run_dir / "hparams.json").read_text())
    assert saved["metrics"]["test/accuracy"] == pytest.approx(record["metrics"]["test/accuracy"])
    assert saved["config"] == store.stable_config(record["config"])


def test_the_logger_choice_is_no_part_of_a_run(compose):
    """Same run id and code version whatever the logger: a run logged to TensorBoard is the run without it."""
    seen = set()
    for logger in ("none", "tensorboard", "csv"):
        cfg, _ = compose("dataset=digits", f"logger={logger}")
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["logger"]["_target_"].startswith("experiments.engine.loggers.")
        files = store.code_files(resolved)
        assert not any(f.endswith("loggers.py") for f in files)
        seen.add((store.compute_run_id(resolved), store.code_version(resolved)))
    assert len(seen) == 1


def test_a_bad_logger_is_one_error_line(train_run):
    with pytest.raises(UserError, match=r"^logger: .*choose logger=none\|tensorboard\|csv"):
        train_run("dataset=digits", "logger._target_=experiments.engine.loggers.NoSuchLogger")
