"""Reliability on a cluster and with real data: pre-emption and resume, corrupt or half-written files, claims in a
shared results folder, stale runs after a code change, and bad input that must fail in one line."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import experiments.engine.checkpoint as ckpt
import experiments.engine.trainer as trainer_module
import experiments.store.results as store
from experiments.engine.errors import RunFailed, UserError
from experiments.engine.loss import CrossEntropy
from experiments.engine.schedules import Cosine, MultiStep, OneCycle, Schedule
from experiments.store.claims import HOST
from experiments.store.frame import load_runs
from tests.helpers.cli import ROOT
from tests.helpers.formats import make_plantnet

QUIET = lambda *a, **k: None  # noqa: E731
SMALL = ("dataset=synthetic_cifar10", "model.width=8", "trainer.batch_size=64", "trainer.epochs=3",
         "trainer.checkpoint_every_s=0")


class SlowCE(CrossEntropy):
    """Cross entropy that sleeps before each training batch, so that a test can signal a run mid-epoch."""

    def __init__(self, label_smoothing: float = 0.0, delay: float = 0.05):
        super().__init__(label_smoothing)
        self.delay = delay

    def training_step(self, model, batch, step, autocast=torch.autocast):
        time.sleep(self.delay)
        return super().training_step(model, batch, step, autocast)


class _SignalAt:
    """A training loader that sends SIGTERM to this process as it hands out batch `at` (0-based)."""

    def __init__(self, loader, at: int):
        self.loader, self.at = loader, at

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch


@pytest.fixture
def sigterm_at(monkeypatch):
    """Arm a one-shot SIGTERM at (1-based epoch, 0-based batch) of the next in-process run."""

    def arm(epoch: int, batch: int) -> None:
        original, seen = trainer_module.make_loader, {"train": 0}

        def make_loader(data, split, *args, train=False, **kwargs):
            loader = original(data, split, *args, train=train, **kwargs)
            seen["train"] += train
            return _SignalAt(loader, batch) if train and seen["train"] == epoch else loader

        monkeypatch.setattr(trainer_module, "make_loader", make_loader)

    return arm


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def same_numbers(a: dict, b: dict) -> None:
    assert a["status"] == b["status"] == "completed"
    assert a["metrics"] == b["metrics"]
    assert [h.get("train/loss") for h in a["history"]] == [h.get("train/loss") for h in b["history"]]


# ---------------------------------------------------------------------- pre-emption
def test_sigterm_mid_epoch_stops_after_the_batch_and_resumes_exactly(compose, tmp_path, sigterm_at):
    from experiments.drivers.train import run

    cfg, ch = compose(*SMALL, f"results_dir={tmp_path / 'a'}")
    sigterm_at(epoch=2, batch=3)
    handler = signal.getsignal(signal.SIGTERM)
    part = run(cfg, ch, log=QUIET)
    assert part["status"] == "interrupted" and part["signal"] == "SIGTERM"
    assert "during epoch 2 (after batch 4 of" in part["interrupted"]
    assert not list((tmp_path / "a" / "runs").rglob("*.json"))            # nothing in the store
    assert not list((tmp_path / "a" / "claims").rglob("*.claim"))         # claim released
    assert signal.getsignal(signal.SIGTERM) is handler
    logs = []
    resumed = run(*compose(*SMALL, f"results_dir={tmp_path / 'a'}"), log=logs.append)
    assert any("resuming from epoch 2, batch 5" in line for line in logs)
    straight = run(*compose(*SMALL, f"results_dir={tmp_path / 'b'}"), log=QUIET)
    same_numbers(resumed, straight)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_folder_run_resumes_mid_epoch_exactly(compose, tmp_path, sigterm_at, workers):
    """A folder dataset streamed through a DataLoader (random crops in the workers or the main process)."""
    from experiments.drivers.train import run

    root = make_plantnet(tmp_path / "pn", per_class=(6, 3, 3), size=(24, 20))
    args = ("dataset=plantnet300k", f"dataset.root={root}", "dataset.resize=20", "dataset.crop=16",
            "loss=ce", "model=small_cnn", "model.width=8", "trainer.batch_size=4", "trainer.epochs=2",
            "dataset.scale=1.0", "avgk.eval_ks=[1,2,3]", f"trainer.num_workers={workers}")
    sigterm_at(epoch=2, batch=2)
    part = run(*compose(*args, f"results_dir={tmp_path / 'a'}"), log=QUIET)
    assert part["status"] == "interrupted" and "during epoch 2" in part["interrupted"]
    resumed = run(*compose(*args, f"results_dir={tmp_path / 'a'}"), log=QUIET)
    straight = run(*compose(*args, f"results_dir={tmp_path / 'b'}"), log=QUIET)
    same_numbers(resumed, straight)


def _cli(args, res: Path, data_dir: Path, **popen):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("LOSSLAB_DEBUG", None)
    cmd = [sys.executable, "-m", "experiments.train", *args, f"results_dir={res}", f"data_dir={data_dir}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


CLI_RUN = ("profile=smoke", "trainer.progress=off", "trainer.num_workers=0", *SMALL,
           "loss._target_=tests.test_reliability.SlowCE", "+loss.delay=0.05")


@pytest.mark.slow
def test_cli_sigterm_after_first_checkpoint_then_resume_equals_uninterrupted(tmp_path, data_dir):
    res = tmp_path / "a"
    proc = _cli(CLI_RUN, res, data_dir)
    deadline = time.time() + 240
    while not list(res.glob("work/adhoc/*/last.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("stopped: SIGTERM")
    assert "interrupted:" in out and ("during epoch 2" in out or "after epoch 1" in out)
    assert not (res / "runs").exists()
    again = _cli(CLI_RUN, res, data_dir)
    out2, err2 = again.communicate(timeout=240)
    assert again.returncode == 0, err2[-2000:]
    assert "resuming from epoch 2" in out2
    straight = _cli(CLI_RUN, tmp_path / "b", data_dir)
    assert straight.wait(timeout=240) == 0
    (a,) = (res / "runs" / "adhoc").glob("*.json")
    (b,) = (tmp_path / "b" / "runs" / "adhoc").glob("*.json")
    same_numbers(json.loads(a.read_text()), json.loads(b.read_text()))


@pytest.mark.slow
def test_submitit_requeues_a_timed_out_job_which_resumes(tmp_path, data_dir, compose):
    """submitit_local sends USR2 30 s before a 1-minute limit; the launcher's checkpoint() requeues the job."""
    res = tmp_path / "a"
    args = ("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=1", *CLI_RUN[:-1],
            "+loss.delay=0.4", "trainer.epochs=14")  # the later trainer.epochs wins
    out, err = _cli(args, res, data_dir).communicate(timeout=600)
    logs = "".join(p.read_text() for p in res.glob("logs/adhoc/multirun_*/.submitit/*/*_0_log.*"))
    assert "Requeued job" in logs and "resuming from epoch" in logs, (out + err + logs)[-3000:]
    (path,) = (res / "runs" / "adhoc").glob("*.json")
    from experiments.drivers.train import run

    straight = run(*compose(*SMALL[:-1], "trainer.epochs=14", "loss._target_=tests.test_reliability.SlowCE",
                            "+loss.delay=0.0", f"results_dir={tmp_path / 'b'}"), log=QUIET)
    same_numbers(json.loads(path.read_text()), straight)


# ---------------------------------------------------------------------- corrupt and half-written files
def _interrupted_after_one_epoch(compose, res: Path) -> Path:
    from experiments.drivers.train import run

    part = run(*compose(*SMALL, f"results_dir={res}", "trainer.interrupt_after=1"), log=QUIET)
    assert part["status"] == "interrupted"
    (last,) = res.glob("work/adhoc/*/last.pt")
    return last


KILLED_MID_WRITE = """
import os, signal, sys
from experiments.engine.checkpoint import atomic_write

def half(f):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(sys.argv[1], half)
"""


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(compose, tmp_path):
    from experiments.drivers.train import run

    last = _interrupted_after_one_epoch(compose, tmp_path / "a")
    before = last.read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(last)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert last.read_bytes() == before
    assert list(last.parent.glob(".last.pt.*.tmp"))                     # the killed write's leftover
    logs = []
    resumed = run(*compose(*SMALL, f"results_dir={tmp_path / 'a'}"), log=logs.append)
    assert any("resuming from epoch 2" in line for line in logs) and resumed["status"] == "completed"
    assert not list(last.parent.glob(".last.pt.*.tmp"))


def test_truncated_checkpoint_is_set_aside_with_one_warning_and_the_run_starts_over(compose, tmp_path, capsys):
    from experiments.drivers.train import run

    last = _interrupted_after_one_epoch(compose, tmp_path / "a")
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    capsys.readouterr()
    logs = []
    rec = run(*compose(*SMALL, f"results_dir={tmp_path / 'a'}"), log=logs.append)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: ") and str(last) in err[0] and "corrupt-" in err[0]
    assert list(last.parent.glob("last.pt.corrupt-*")) and not any("resuming" in line for line in logs)
    straight = run(*compose(*SMALL, f"results_dir={tmp_path / 'b'}"), log=QUIET)
    same_numbers(rec, straight)


def test_checkpoint_of_other_code_is_not_resumed(compose, tmp_path, monkeypatch):
    from experiments.drivers.train import run

    _interrupted_after_one_epoch(compose, tmp_path / "a")
    monkeypatch.setattr(store, "code_version", lambda resolved=None: "edited")
    logs = []
    rec = run(*compose(*SMALL, f"results_dir={tmp_path / 'a'}"), log=logs.append)
    assert any("not resuming" in line and "other code or data" in line for line in logs)
    assert rec["status"] == "completed" and [h["epoch"] for h in rec["history"]] == [1, 2, 3]


def test_corrupt_run_json_is_skipped_by_load_runs_with_a_warning(train_run, results_dir, capsys):
    train_run()
    bad = results_dir / "runs" / "adhoc" / "0123456789abcdef.json"
    bad.write_text('{"run_id": "0123", "status": "compl')
    capsys.readouterr()
    df = load_runs(results_dir)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(df) == 1 and len(err) == 1 and err[0].startswith("warning: ") and str(bad) in err[0]


def test_corrupt_checkpoint_module_functions(tmp_path, capsys):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    assert ckpt.load_checkpoint(path, "cpu") is None and not path.exists()
    ckpt.save_checkpoint(path, {"epoch": 1})
    assert ckpt.load_checkpoint(path, "cpu") is None                     # readable but not a trainer checkpoint
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("warning: ") for line in err)
    assert len(list(tmp_path.glob("last.pt.corrupt-*"))) == 2


# ---------------------------------------------------------------------- changed code
def test_run_of_other_code_version_is_stale_and_rerun(compose, train_run, results_dir, monkeypatch):
    monkeypatch.setattr(store, "code_version", lambda resolved=None: "v1")
    first = train_run()
    assert first["code_version"] == "v1" and train_run().get("skipped")
    monkeypatch.setattr(store, "code_version", lambda resolved=None: "v2")
    from experiments.drivers.train import run

    logs = []
    again = run(*compose(), log=logs.append)
    assert not again.get("skipped") and again["code_version"] == "v2"
    assert sum(line.startswith("stale: ") and "v1" in line and "v2" in line for line in logs) == 1
    (path,) = (results_dir / "runs" / "adhoc").glob("*.json")
    on_disk = json.loads(path.read_text())
    assert on_disk["code_version"] == "v2" and on_disk["data_fingerprint"] == on_disk["data"]["fingerprint"]


# ---------------------------------------------------------------------- claims
def _claim_file(results_dir: Path, rec_or_id: str, **holder) -> Path:
    path = results_dir / "claims" / "adhoc" / f"{rec_or_id}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": HOST, "pid": os.getpid(), "started": "earlier", "heartbeat": time.time(),
                                "token": "theirs", **holder}))
    return path


def _run_id(compose, *overrides) -> str:
    from omegaconf import OmegaConf

    cfg, _ = compose(*overrides)
    return store.compute_run_id(OmegaConf.to_container(cfg, resolve=True))


def test_live_claim_makes_run_return_claimed_and_train_nothing(compose, train_run, results_dir):
    path = _claim_file(results_dir, _run_id(compose))
    rec = train_run()
    assert rec["status"] == "claimed" and rec["claimed_by"]["token"] == "theirs"
    assert not (results_dir / "runs").exists() and not (results_dir / "work").exists()
    assert json.loads(path.read_text())["token"] == "theirs"


@pytest.mark.parametrize("holder", [
    {"host": "elsewhere", "heartbeat": time.time() - 7200},                 # heartbeat older than the timeout
    {"pid": 2**22 + 12345},                                                 # this host, a process that is gone
])
def test_stale_claim_is_taken_over(compose, results_dir, holder):
    from experiments.drivers.train import run

    path = _claim_file(results_dir, _run_id(compose), **holder)
    logs = []
    rec = run(*compose(), log=logs.append)
    assert rec["status"] == "completed" and any(line.startswith("taking over") for line in logs)
    assert not path.exists()                                                # released when done


def test_corrupt_claim_is_set_aside_and_the_run_goes_ahead(compose, train_run, results_dir, capsys):
    path = _claim_file(results_dir, _run_id(compose))
    path.write_text("{garbage")
    os.utime(path, (time.time() - 600, time.time() - 600))
    capsys.readouterr()
    assert train_run()["status"] == "completed"
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(path) in err[0] and list(path.parent.glob("*.claim.corrupt-*"))


def test_claim_is_released_when_the_run_fails(train_run, results_dir):
    with pytest.raises(RunFailed):
        train_run("loss._target_=tests.helpers.NaNAfterFirstBatch", "~loss.label_smoothing")
    assert not list((results_dir / "claims").rglob("*.claim"))


def test_claim_taken_over_while_training_stops_the_run(compose, results_dir, monkeypatch):
    """A process that stalled past the timeout finds at its next heartbeat that another one took its claim."""
    from experiments.drivers.train import run

    original = trainer_module.make_loader

    def make_loader(data, split, *args, train=False, **kwargs):
        if train:
            _claim_file(results_dir, _run_id(compose, "trainer.epochs=2", "trainer.claim_timeout_s=0.01"),
                        token="newcomer")
        return original(data, split, *args, train=train, **kwargs)

    monkeypatch.setattr(trainer_module, "make_loader", make_loader)
    rec = run(*compose("trainer.epochs=2", "trainer.claim_timeout_s=0.01"), log=QUIET)
    assert rec["status"] == "claimed" and not (results_dir / "runs").exists()


# ---------------------------------------------------------------------- bad input
BAD = [
    (("trainer.epochs=[1,2]",), "trainer.epochs", "-m trainer.epochs=1,2"),
    (("seed=abc",), "seed", "an integer"),
    (("optim.lr=fast",), "optim.lr", "a number"),
    (("dataset=synthetic_cifar10", "metric_sets=[classification,set_valued]", "avgk.eval_ks=[100]"),
     "avgk.eval_ks", "K=100"),
    (("experiment_name=../x",), "experiment_name", "plain folder name"),
]


@pytest.mark.parametrize("overrides, culprit, fix", BAD, ids=[b[1] for b in BAD])
def test_bad_input_fails_in_one_line_before_anything_is_written(train_run, results_dir, overrides, culprit, fix):
    with pytest.raises(UserError) as err:
        train_run(*overrides)
    message = str(err.value)
    assert culprit in message and fix in message and "\n" not in message
    assert not files_under(results_dir) and not files_under(results_dir.parent / "x")


@pytest.mark.slow
def test_bad_input_on_the_command_line(tmp_path, data_dir):
    for overrides, culprit, _ in BAD:
        proc = _cli(("profile=smoke", "trainer.epochs=1", *overrides), tmp_path / "r", data_dir)
        out, err = proc.communicate(timeout=240)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert culprit in lines[0] and "Traceback" not in err
    assert not (tmp_path / "r" / "runs").exists() and not (tmp_path / "x").exists()


def _disk_full(monkeypatch, when):
    original = ckpt._sync

    def sync(f):
        if when(Path(f.name)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(f)

    monkeypatch.setattr(ckpt, "_sync", sync)


def test_full_disk_at_a_checkpoint_marks_the_run_failed_with_the_cause(train_run, results_dir, monkeypatch):
    _disk_full(monkeypatch, lambda p: ".last.pt." in p.name)
    with pytest.raises(RunFailed) as err:
        train_run()
    assert "No space left on device" in str(err.value) and "last.pt" in str(err.value)
    assert "\n" not in str(err.value)
    (path,) = (results_dir / "runs" / "adhoc").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "failed" and "No space left on device" in rec["error"]
    assert not [p for p in files_under(results_dir) if p.name.endswith(".tmp") or p.suffix in (".pt", ".claim")]


def test_full_disk_everywhere_leaves_nothing_half_written(train_run, results_dir, monkeypatch):
    _disk_full(monkeypatch, lambda p: True)
    with pytest.raises(RunFailed) as err:
        train_run()
    assert "could not be recorded either" in str(err.value)
    assert not files_under(results_dir)


# ---------------------------------------------------------------------- schedules
def test_schedules_give_the_documented_factors():
    assert [Schedule(warmup_epochs=4)(e, 10) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    step = MultiStep(milestones=[2, 4], gamma=0.1)
    assert [step(e, 6) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    absolute = MultiStep(milestones=[2, 4], factors=[0.01, 1e-4], warmup_epochs=2)
    assert [absolute(e, 6) for e in range(6)] == pytest.approx([0.5, 1, 0.01, 0.01, 1e-4, 1e-4])
    cos = Cosine()
    assert cos(0, 100) == 1.0 and cos(50, 100) == pytest.approx(0.5) and cos(99, 100) < 1e-3
    one = OneCycle(pct_start=0.25, div_factor=10, final_div_factor=100)
    values = [one(e, 9) for e in range(9)]
    assert values[0] == pytest.approx(0.1) and values[2] == 1.0 and values[-1] == pytest.approx(1e-3)
    assert values == sorted(values[:3]) + sorted(values[2:], reverse=True)[1:]
    with pytest.raises(UserError, match="schedule.milestones"):
        MultiStep(milestones=[4, 2])
