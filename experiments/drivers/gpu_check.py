"""`make gpu-check`: does the GPU path work, and how fast. Without a visible GPU: one line, exit 0.

With one (≤ 5 minutes): (1) the tests marked `cuda` (tests/test_cuda.py: every loss and metric on the device,
`amp` in both dtypes with the GradScaler, `channels_last`, `compile`, the `cuda` decoder against the CPU
decoders' pixels, a checkpoint moved GPU → CPU → GPU); (1b) each paper model's training images/s at its batch size,
written to results/gpu_check/rates.json for the run plan (`PLAN=1`); (2) a timed slice of the Pl@ntNet-300K paper experiment
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

from experiments.drivers import plan, rates
from experiments.drivers.catalog import ROOT, discover
from experiments.engine.checkpoint import atomic_write

SLICE_EXP, SLICE_ONLY = "avgk_paper", "loss=role"
TABLE_EXP = "cce_imbalanced"


def _run(cmd: list[str], env: dict | None = None) -> bool:
    print("==> " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    ok = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}).returncode == 0
    print(f"    {'ok' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s", flush=True)
    return ok


def paper_models() -> dict[str, tuple]:
    """Every (model, input size, batch size) the paper profile trains, by `rates.model_key`."""
    found, cache = {}, {}
    for exp in discover("paper", None, None):
        for sweep in exp.sweeps or [{}]:
            for part in plan.sweep_parts(exp, sweep, "paper", None, cache):
                cfg = part.cfg
                channels, side = rates.input_size(cfg.model, cfg.dataset)
                found.setdefault(rates.model_key(cfg.model, side),
                                 (cfg.model, channels, side, int(cfg.trainer.batch_size)))
    return found


def measure_paper_rates(device: str = "cuda", path=None) -> bool:
    """Time each paper model's training steps on `device` (rates.measure_rate) and write them where the run plan
    reads them (results/gpu_check/rates.json): `PLAN=1` then prices those models at the measured rate."""
    import json

    print("==> model rates (each paper model, its batch size, a few SGD steps)", flush=True)
    measured = {}
    try:
        for key, (model, channels, side, batch) in paper_models().items():
            measured[key] = rates.measure_rate(model, channels, side, batch, device)
            print(f"    {key} at batch {batch}: {measured[key]['img_per_s']:,.0f} img/s "
                  f"(compute {measured[key]['compute_img_per_s']:,.0f})", flush=True)
    except Exception as e:  # noqa: BLE001 — reported as this step's failure, the others still run
        print(f"    FAILED: {type(e).__name__}: {e}", flush=True)
        return False
    atomic_write(path or rates.RATES_JSON, json.dumps({"rates": measured}, indent=1).encode())
    return True


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
        measure_paper_rates(),
        _run([py, "-m", "experiments.drivers.rehearse", "--exp", SLICE_EXP, "--data", args.data, "--only",
              SLICE_ONLY, "--limit", "1", "--steps", "200", "--results", f"{scratch}/rehearse", "--set", "trainer.device=cuda",
              "--set", "trainer.num_workers=8"]),
        _run([py, "-m", "experiments.reproduce", "--profile", "smoke", "--exp", TABLE_EXP, "--results-dir",
              f"{scratch}/gpu"]),
        _run([py, "-m", "experiments.reproduce", "--profile", "smoke", "--exp", TABLE_EXP, "--results-dir",
              f"{scratch}/cpu"], env={"CUDA_VISIBLE_DEVICES": ""}),
        _run([py, "-m", "experiments.verify", "--profile", "smoke", "--exp", TABLE_EXP, "--results",
              f"{scratch}/gpu", "--reference", f"{scratch}/cpu"]),
    ]
    names = ("cuda tests", "model rates", "timed rehearsal slice", "table on GPU", "table on CPU", "verify GPU vs CPU")
    print("gpu-check: " + ", ".join(f"{n} {'ok' if s else 'FAILED'}" for n, s in zip(names, steps)))
    return 0 if all(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
