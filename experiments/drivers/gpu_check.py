"""`make gpu-check`: does the GPU path work, and how fast. Without a visible GPU: one line, exit 0.

With one (≤ 5 minutes): (1) the tests marked `cuda` (tests/test_cuda.py: every loss and metric on the device,
`amp` in both dtypes with the GradScaler, `channels_last`, `compile`, the `cuda` decoder against the CPU
decoders' pixels, a checkpoint moved GPU → CPU → GPU); (2) a timed slice of the Pl@ntNet-300K paper experiment
on the rehearsal data (`make rehearse`, ROLE: the largest per-example state) on the GPU: loader images/s,
epoch time, peak memory; (3) the smoke profile's CCE table trained on the GPU and on the CPU, then `make verify`
of one against the other (expected: no cell differs). Exit 1 if any step fails.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from experiments.drivers.catalog import ROOT

SLICE_EXP, SLICE_ONLY = "avgk_paper", "loss=role"
TABLE_EXP = "cce_imbalanced"


def _run(cmd: list[str], env: dict | None = None) -> bool:
    print("==> " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    ok = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}).returncode == 0
    print(f"    {'ok' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/rehearse-data", help="rehearsal data folder (written where absent)")
    ap.add_argument("--scratch", default="/tmp/gpu-check", help="scratch results folder")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no GPU visible (torch.cuda.is_available() is False); nothing ran")
        return 0
    py, scratch = sys.executable, args.scratch
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    steps = [
        _run([py, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"]),
        _run([py, "-m", "experiments.drivers.rehearse", "--exp", SLICE_EXP, "--data", args.data, "--only",
              SLICE_ONLY, "--limit", "1", "--results", f"{scratch}/rehearse", "--set", "trainer.device=cuda",
              "--set", "trainer.num_workers=8"]),
        _run([py, "-m", "experiments.reproduce", "--profile", "smoke", "--exp", TABLE_EXP, "--results-dir",
              f"{scratch}/gpu"]),
        _run([py, "-m", "experiments.reproduce", "--profile", "smoke", "--exp", TABLE_EXP, "--results-dir",
              f"{scratch}/cpu"], env={"CUDA_VISIBLE_DEVICES": ""}),
        _run([py, "-m", "experiments.verify", "--profile", "smoke", "--exp", TABLE_EXP, "--results",
              f"{scratch}/gpu", "--reference", f"{scratch}/cpu"]),
    ]
    names = ("cuda tests", "timed rehearsal slice", "table on GPU", "table on CPU", "verify GPU vs CPU")
    print("gpu-check: " + ", ".join(f"{n} {'ok' if s else 'FAILED'}" for n, s in zip(names, steps)))
    return 0 if all(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
