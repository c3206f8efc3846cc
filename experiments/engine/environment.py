"""The numerics environment of a run: what, besides code, config and data, decides its floating-point results.

Two CPUs with different instruction sets (AVX2 vs AVX-512/AMX), thread counts, a GPU and its cuDNN, or AMP give
different rounding, so the same config yields slightly different numbers (issue 20: all committed tables moved
on another CPU). Each run JSON stores this under `environment`, outside the config, so the run id ignores it;
tables and `make verify` name the environments their runs came from.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

# Variables that cap or change the kernels a CPU run uses (ATen dispatch, oneDNN ISA, MKL's reproducibility mode).
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name: /proc/cpuinfo's `model name` on Linux, else `platform.processor()`."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpu(device: torch.device) -> dict[str, Any]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "gpu_capability": f"{major}.{minor}",
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}


def numerics_environment(device: torch.device | str = "cpu", trainer_cfg: Any = None) -> dict[str, Any]:
    """CPU model and ATen capability, intra/inter-op threads, the ISA-capping variables that are set, the GPU
    (name, compute capability, CUDA, cuDNN, TF32) when `device` is CUDA, and the numerics flags of `trainer_cfg`
    (a TrainerConfig: amp, amp_dtype, compile, channels_last, deterministic). `amp` is what ran: AMP only takes
    effect on CUDA. Call it where training ran, after its thread count was set."""
    device = torch.device(device)
    flags = {name: getattr(trainer_cfg, name, False) for name in ("amp", "compile", "channels_last", "deterministic")}
    env: dict[str, Any] = {
        "device": str(device), "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "intra_op_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__, "isa_variables": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ}}
    if device.type == "cuda":
        env.update(_gpu(device))
    amp = bool(flags.pop("amp")) and device.type == "cuda"
    env.update(amp=amp, amp_dtype=getattr(trainer_cfg, "amp_dtype", None) if amp else None,
               **{name: bool(value) for name, value in flags.items()})
    return env


def label(env: dict[str, Any] | None) -> str:
    """A one-line name for an environment, e.g. `AMD EPYC 7B13 · AVX512 · 1 thread` or `NVIDIA A100 (8.0) ·
    cuDNN 90100 · AMP bfloat16`; `unrecorded` for runs made before environments were recorded."""
    if not env:
        return "unrecorded"
    if env.get("gpu"):
        parts = [f"{env['gpu']} ({env.get('gpu_capability')})", f"cuDNN {env.get('cudnn')}"]
    else:
        threads = env.get("intra_op_threads")
        parts = [str(env.get("cpu")), str(env.get("cpu_capability")),
                 f"{threads} thread{'' if threads == 1 else 's'}"]
    parts += [f"{k}={v}" for k, v in sorted((env.get("isa_variables") or {}).items())]
    parts += [f"AMP {env.get('amp_dtype')}"] if env.get("amp") else []
    parts += [name for name in ("compile", "channels_last", "deterministic") if env.get(name)]
    return " · ".join(parts)
