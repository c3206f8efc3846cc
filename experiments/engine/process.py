"""Process-wide settings of a run: intra-op threads, the allocator, seeds, the device.

Set once per run by the driver that owns the process (`experiments.drivers.train`), before the data is built,
so a run trains with the same settings whether it is started from the CLI or in a reproduce worker.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from experiments.engine.allocator import keep_freed_memory
from experiments.engine.errors import UserError
from experiments.engine.schemas import TrainerConfig


def configure_process(cfg: TrainerConfig) -> None:
    """`trainer.cpu_threads` (unset: torch's default) and `trainer.keep_freed_memory` for this process."""
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA device is visible; use trainer.device=auto or cpu")
    return dev
