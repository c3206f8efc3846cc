"""Packed SLURM mode (experiments.drivers.packed): several runs per GPU in one SLURM job, jobs sharing the pending
runs through the claims, requeued on USR2. No SLURM here: the sbatch script is generated without submitting, and
the jobs themselves run through submitit's debug (in-process) and local (subprocess) executors."""
import json
import math
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest
import submitit

from experiments.drivers import catalog, packed, reproduce, runner


def _points(results: Path, data: Path, seeds: str, epochs: int = 1) -> list[runner.Point]:
    exp = catalog.Experiment("simloss_age", "simloss_age", [{"loss.r": "0.5", "trainer.epochs": str(epochs)}],
                             [], [], seeds, data)
    points = runner.plan([exp], "smoke", results)
    assert {p.state for p in points} == {"pending"}
    return points


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").rglob("*.json"))]


def test_the_sbatch_script_carries_the_slurm_launcher_config(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    config = packed.launcher_config("slurm", ("hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                                              "hydra.launcher.setup=[module load cuda]", "hydra.launcher.qos=low",
                                              "+hydra.launcher.additional_parameters.mail-type=END"))
    res = packed.resources(config)
    ex = packed.executor("slurm", tmp_path / "%j", res)
    script = ex._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    lines = set(script.splitlines())
    for expected in ["#SBATCH --partition=gpu", "#SBATCH --qos=low", "#SBATCH --gpus-per-node=4",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --time=240",
                     "#SBATCH --signal=USR2@120", "#SBATCH --mail-type=END", "#SBATCH --nodes=1",
                     "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=losslab-packed", "module load cuda"]:
        assert expected in lines, (expected, script)
    # our checkout importable on the node, before the user's own setup lines
    assert script.index(f"export PYTHONPATH={catalog.ROOT}") < script.index("module load cuda")
    assert ex._executor.max_num_timeout == 20 and (res.gpus_per_node, res.array_parallelism) == (4, 32)
    with pytest.raises(packed.UserError, match="one node"):
        packed.resources({**config, "nodes": 2})


@pytest.mark.parametrize("pending, slots, parallelism, asked, expected", [
    (0, 4, 32, None, 0),        # nothing to run: no job
    (1, 4, 32, None, 1),
    (8, 4, 32, None, 2),        # ceil(pending / slots per job)
    (9, 4, 32, None, 3),
    (1000, 4, 32, None, 32),    # capped by array_parallelism
    (9, 4, 32, 5, 5),           # PACK_JOBS as given...
    (3, 4, 32, 5, 3),           # ...but never more jobs than pending runs
])
def test_job_count_rule(pending, slots, parallelism, asked, expected):
    assert packed.job_count(pending, slots, parallelism, asked) == expected
    if asked is None and pending:
        assert expected == min(parallelism, math.ceil(pending / slots))


def _mode(jobs: int, signal_delay_s: int = 120, **params) -> packed.Mode:
    res = packed.Resources({}, {"gpus_per_node": 0, **params}, array_parallelism=8, gpus_per_node=1,
                           signal_delay_s=signal_delay_s)
    return packed.Mode(res, runs_per_gpu=1, pack_jobs=jobs)


def _each_run_completed_once(results, points) -> None:
    """One completed record per point and no claim left behind."""
    records = _records(results)
    assert sorted(r["run_id"] for r in records) == sorted(p.run_id for p in points)
    assert {r["status"] for r in records} == {"completed"} and not list((results / "claims").rglob("*.claim"))


def test_two_debug_jobs_on_one_results_folder_train_every_pending_run_once(tmp_path, data_dir, capsys):
    results = tmp_path / "r"
    points = _points(results, data_dir, "0,1,2")
    assert packed.submit(points, _mode(2), results, kind="debug", poll_s=0.1) == 0
    _each_run_completed_once(results, points)
    assert "submitted 2 packed job(s) for 3 runs" in capsys.readouterr().out
    assert packed.submit(packed.unfinished(points), _mode(2), results, kind="debug") == 0   # nothing left: no job


def test_checkpoint_resubmits_the_same_job_with_the_same_points(tmp_path):
    point = runner.Point("e", "e", tmp_path, 0, ["seed=0"], "seed=0", run_id="abc", carried=({}, {}, "abc"))
    job = packed.PackedJob([point], runs_per_gpu=3, index=1, count=2, grace_s=100.0)
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is job and again.args == () and again.kwargs == {}
    assert job.points[0].carried is None and job.points[0].run_id == "abc"   # composed again in the job
    assert (job.runs_per_gpu, job.index, job.count) == (3, 1, 2)


def _worker(marker: str) -> None:
    def stop(signum, frame):
        time.sleep(0.3)                     # "finishing the batch"
        Path(marker).write_text(signal.Signals(signum).name)
        os._exit(0)
    signal.signal(signal.SIGUSR2, stop)
    time.sleep(30)


def test_usr2_reaches_the_workers_and_they_stop_before_the_requeue_handler_runs(tmp_path):
    marker = tmp_path / "stopped"
    worker = mp.get_context("fork").Process(target=_worker, args=(str(marker),))
    worker.start()
    time.sleep(0.3)
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append((worker.is_alive(), marker.exists())))
    try:
        with packed.workers_stop_first(signal.SIGUSR2, grace_s=10.0):
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.1)
        assert seen == [(False, True)] and marker.read_text() == "SIGUSR2"
    finally:
        signal.signal(signal.SIGUSR2, previous)
        if worker.is_alive():
            worker.kill()


@pytest.mark.parametrize("env, argv, message", [
    ({"RUNS_PER_GPU": "0"}, ["--launcher", "slurm"], "error: RUNS_PER_GPU='0'"),
    ({"RUNS_PER_GPU": "two"}, ["--launcher", "slurm"], "error: RUNS_PER_GPU='two'"),
    ({}, ["--launcher", "slurm", "--pack-jobs", "0"], "error: PACK_JOBS='0'"),
    ({}, ["--launcher", "slurm", "--pack-jobs", "x"], "error: PACK_JOBS='x'"),
    ({}, ["--pack-jobs", "2"], "error: PACK_JOBS=2 packs runs into SLURM jobs: add LAUNCHER=slurm"),
    ({"PATH": "/nonexistent"}, ["--launcher", "slurm"], "error: LAUNCHER=slurm: sbatch is not on this machine's PATH"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys, env, argv, message):
    monkeypatch.delenv("RUNS_PER_GPU", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert reproduce.main(["--profile", "smoke", "--results-dir", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()     # refused before anything is written


@pytest.mark.slow
def test_two_local_jobs_at_once_share_the_runs_through_the_claims(tmp_path, data_dir):
    results = tmp_path / "r"
    points = _points(results, data_dir, "0,1,2,3")
    assert packed.submit(points, _mode(2), results, kind="local", poll_s=0.5) == 0
    _each_run_completed_once(results, points)
    logs = [p.read_text() for p in (results / "logs" / "packed").rglob("*_0_log.out")]
    assert len(logs) == 2 and all("Job completed successfully" in log for log in logs), logs


@pytest.mark.slow
def test_a_job_warned_of_its_time_limit_is_requeued_and_its_run_resumes(tmp_path, data_dir, monkeypatch):
    results = tmp_path / "r"
    points = _points(results, data_dir, "0", epochs=150)
    make = packed.executor

    def short_limit(kind, folder, res):
        # the local executor sends USR2 `signal_delay_s` before `timeout_min` and restarts a job that exits with
        # submitit's requeue code (AutoExecutor does not pass these two through to it)
        ex = make(kind, folder, res)
        ex._executor.update_parameters(timeout_min=0.5, signal_delay_s=20)
        return ex

    monkeypatch.setattr(packed, "executor", short_limit)
    assert packed.submit(points, _mode(1, signal_delay_s=40), results, kind="local", poll_s=0.5) == 0
    (record,) = _records(results)
    assert record["status"] == "completed" and len(record["history"]) == 150
    log = next((results / "logs" / "packed").rglob("*_0_log.out")).read_text()
    assert "Caught signal SIGUSR2" in log or "Requeued job" in log, log
    assert "SIGUSR2: handed to 1 worker(s); exit codes [0]" in log, log   # its run checkpointed, then resumed
