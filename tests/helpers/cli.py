"""The CLI as a user runs it: `python -m experiments.train` in a subprocess, one thread, no debug traceback."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAST = ["profile=smoke", "trainer.epochs=1", "trainer.progress=off", "trainer.num_workers=0"]


def cli(*args, tmp, data_dir):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("LOSSLAB_DEBUG", None)
    cmd = [sys.executable, "-m", "experiments.train", *args, f"results_dir={tmp}", f"data_dir={data_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
