"""Sweeps through the parallel launchers land one result per config, without loss."""
import json

import pytest

from tests.test_engine_cli import FAST, cli


@pytest.mark.parametrize("launcher, extra", [
    ("joblib", ["hydra.launcher.n_jobs=2"]),
    ("submitit_local", ["hydra.launcher.timeout_min=10"]),
])
def test_two_job_sweep_writes_two_results(tmp_path, data_dir, launcher, extra):
    res = tmp_path / "r"
    out = cli("-m", f"hydra/launcher={launcher}", *extra, "seed=0,1", *FAST, tmp=res, data_dir=data_dir)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    files = sorted((res / "runs" / "adhoc").glob("*.json"))
    assert len(files) == 2
    recs = [json.loads(f.read_text()) for f in files]
    assert {r["seed"] for r in recs} == {0, 1} and {r["status"] for r in recs} == {"completed"}
    assert "2 completed" in out.stdout
