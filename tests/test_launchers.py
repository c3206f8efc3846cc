"""Sweeps through the parallel launchers land one result per config, without loss."""
import json

import pytest

from tests.helpers.cli import FAST, cli


@pytest.mark.parametrize("launcher, extra", [
    ("joblib", ["hydra.launcher.n_jobs=2"]),
    ("submitit_local", ["hydra.launcher.timeout_min=10"]),
])
@pytest.mark.slow
def test_two_job_sweep_writes_two_results(tmp_path, data_dir, launcher, extra):
    res = tmp_path / "r"
    out = cli("-m", f"hydra/launcher={launcher}", *extra, "seed=0,1", *FAST, tmp=res, data_dir=data_dir)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    files = sorted((res / "runs" / "adhoc").glob("*.json"))
    assert len(files) == 2
    recs = [json.loads(f.read_text()) for f in files]
    assert {r["seed"] for r in recs} == {0, 1} and {r["status"] for r in recs} == {"completed"}
    assert "2 completed" in out.stdout


def test_slurm_launcher_config_composes_with_its_documented_keys(compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments.drivers.train import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                            return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.array_parallelism == 32
    assert "setup" in launcher and "signal_delay_s" in launcher  # the plugin's own keys are kept
