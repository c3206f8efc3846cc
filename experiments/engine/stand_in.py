"""Building blocks shared by the seeded synthetic stand-in datasets (image_classification, age_estimation,
average_k): smooth random colour patterns, per-image nuisance rendered to uint8, and the cache sources."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def generator_sources(module_file: str) -> tuple[Path, Path]:
    """The files whose code determines a stand-in's images (its module and this one): the `sources` of its
    cache, so editing either regenerates the data (experiments.engine.data.cached)."""
    return Path(module_file), Path(__file__)


def smooth_patterns(rng: np.random.RandomState, n: int, size: int, grid: int) -> np.ndarray:
    """n smooth RGB patterns (n, 3, size, size) with unit std: grid×grid Gaussian noise, bicubic-upsampled."""
    coarse = torch.from_numpy(rng.randn(n, 3, grid, grid).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (fine / fine.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None, None]).numpy()


def render(rng: np.random.RandomState, x: np.ndarray, max_shift: int, contrast: float, brightness: float,
           noise: float) -> np.ndarray:
    """Images (n, 3, s, s) in pattern units → uint8: random circular shift up to `max_shift` pixels, contrast
    in [1−contrast, 1+contrast], per-channel brightness N(0, brightness²), pixel noise N(0, noise²)."""
    n = len(x)
    if max_shift:
        shifts = rng.randint(-max_shift, max_shift + 1, size=(n, 2))
        x = np.stack([np.roll(img, (dy, dx), axis=(1, 2)) for img, (dy, dx) in zip(x, shifts)])
    gain = rng.uniform(1 - contrast, 1 + contrast, size=(n, 1, 1, 1)).astype(np.float32)
    offset = rng.normal(0, brightness, size=(n, 3, 1, 1)).astype(np.float32)
    x = gain * x + offset + noise * rng.randn(*x.shape).astype(np.float32)
    return np.clip(128 + 40 * x, 0, 255).astype(np.uint8)
