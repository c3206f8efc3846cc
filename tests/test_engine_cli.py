"""The CLI as a user runs it: subprocesses, exit codes, one-line errors, multirun skipping."""
import json

import pytest

from experiments.engine.errors import UserError
from tests.helpers.cli import FAST, cli


@pytest.mark.slow
def test_multirun_writes_each_config_once_then_skips(tmp_path, data_dir):
    res = tmp_path / "r"
    first = cli("-m", "seed=0,1", "trainer.epochs=1,2", *FAST[:1], *FAST[2:], tmp=res, data_dir=data_dir)
    assert first.returncode == 0, first.stderr[-2000:]
    files = sorted((res / "runs" / "adhoc").glob("*.json"))
    assert len(files) == 4
    assert {(json.loads(f.read_text())["seed"], len(json.loads(f.read_text())["history"])) for f in files} == {
        (0, 1), (0, 2), (1, 1), (1, 2)}
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = cli("-m", "seed=0,1", "trainer.epochs=1,2", *FAST[:1], *FAST[2:], tmp=res, data_dir=data_dir)
    assert again.returncode == 0
    assert again.stdout.count("already done") == 4
    assert "4 skipped" in again.stdout
    assert [f.stat().st_mtime_ns for f in sorted((res / "runs" / "adhoc").glob("*.json"))] == mtimes


def test_nan_loss_fails_the_run_with_a_record(tmp_path, data_dir):
    res = tmp_path / "r"
    out = cli(*FAST, "loss._target_=tests.helpers.NaNAfterFirstBatch", "~loss.label_smoothing", tmp=res,
              data_dir=data_dir)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: non-finite train/loss")
    assert "Traceback" not in out.stderr
    (rec_path,) = (res / "runs" / "adhoc").glob("*.json")
    rec = json.loads(rec_path.read_text())
    assert rec["status"] == "failed" and "non-finite" in rec["error"]


@pytest.mark.parametrize("override, culprit", [
    ("+trainer.patiance=3", "trainer.patiance"),
    ("+loss.gama=2", "loss.gama"),
    ("trainer.select_metric=test/accuracy", "never on test"),
    ("optim._target_=torch.optim.NoSuch", "optim._target_"),
    ("+optim.gamma=0.5", "schedule.gamma"),
    ("optim.lr=-1", "optim.lr"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("dataset.imbalance={ratio: 0.5}", "dataset.imbalance.ratio"),
])
def test_bad_input_names_the_culprit_and_writes_nothing(train_run, results_dir, override, culprit):
    with pytest.raises(UserError) as err:
        train_run(override)
    assert culprit in str(err.value) and "\n" not in str(err.value)
    assert not (results_dir / "runs").exists()


def test_bad_input_on_the_command_line_is_one_error_line(tmp_path, data_dir):
    out = cli(*FAST, "trainer.patiance=3", tmp=tmp_path, data_dir=data_dir)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("error: ") and "trainer.patiance" in out.stderr
    missing = cli(*FAST, "loss=no_such_loss", tmp=tmp_path, data_dir=data_dir)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "no_such_loss" in missing.stderr and "Traceback" not in missing.stderr


def test_debug_switch_shows_the_traceback(tmp_path, data_dir):
    out = cli(*FAST, "trainer.epochs=0", "debug=true", tmp=tmp_path, data_dir=data_dir)
    assert out.returncode == 2 and "Traceback" in out.stderr


@pytest.mark.slow
def test_optuna_search_returns_a_validation_objective(tmp_path, data_dir):
    out = cli("experiment=simloss_age", "hparams_search=simloss_r", "hydra.sweeper.n_trials=2", *FAST,
              tmp=tmp_path, data_dir=data_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    (result,) = tmp_path.glob("logs/simloss_age/multirun_*/optimization_results.yaml")
    text = result.read_text()
    assert "best_params" in text and "loss.r" in text and "best_value" in text
    assert len(list((tmp_path / "runs" / "simloss_age").glob("*.json"))) == 2
