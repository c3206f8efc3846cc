"""`synthetic_age`: a seeded offline stand-in for UTKFace age estimation (ages 1..90, 90 classes).

Ages follow a UTKFace-like histogram (a bump of infants, most people 20–40, few very old). An image is an
age pattern — a smooth blend of `anchors` random patterns placed along the age axis, so appearance changes
continuously with age — plus a per-person identity pattern, a random shift, contrast/brightness jitter and
pixel noise. Neighbouring ages look alike, so a classifier's mistakes land mostly near the true age.
The pool is split like the real datasets: one permutation with `split_seed`, 60/20/20; `imbalance` (ratio 1 =
none) then subsamples the training part per age class, as for every in-memory dataset.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from experiments.engine.stand_in import generator_sources, render, smooth_patterns
from experiments.engine.data import Meta, TensorSplit, assemble, cache_file, cache_key, cached, seeded_split

GENERATOR_VERSION = 1
NUM_AGES = 90


def age_histogram(num_ages: int = NUM_AGES) -> np.ndarray:
    """Probabilities of ages 1..num_ages: infants (decaying from age 1), a 20–40 bulk, a long old-age tail."""
    a = np.arange(1, num_ages + 1, dtype=np.float64)
    infants = np.exp(-(a - 1) / 1.5)
    adults = np.exp(-0.5 * ((a - 29) / 7.0) ** 2)
    older = np.exp(-0.5 * ((a - 52) / 16.0) ** 2)
    p = 0.10 * infants / infants.sum() + 0.55 * adults / adults.sum() + 0.35 * older / older.sum()
    return p / p.sum()


def age_patterns(rng: np.random.RandomState, image_size: int, anchors: int, width: float) -> np.ndarray:
    """(NUM_AGES, 3, s, s): Gaussian-weighted blends of `anchors` patterns spaced evenly over the ages."""
    basis = smooth_patterns(rng, anchors, image_size, grid=4)
    centres = np.linspace(1, NUM_AGES, anchors)
    ages = np.arange(1, NUM_AGES + 1)
    w = np.exp(-0.5 * ((ages[:, None] - centres[None, :]) / width) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    pats = np.einsum("ak,kchw->achw", w, basis)
    return pats / pats.reshape(NUM_AGES, -1).std(axis=1)[:, None, None, None]


def generate(n_images: int, image_size: int, seed: int, anchors: int, width: float, identity: float,
             noise: float, max_shift: int) -> dict:
    rng = np.random.RandomState(seed)
    pats = age_patterns(rng, image_size, anchors, width)
    ages = rng.choice(np.arange(1, NUM_AGES + 1), size=n_images, p=age_histogram())
    x = pats[ages - 1] + identity * smooth_patterns(rng, n_images, image_size, grid=3)
    img = render(rng, x, max_shift, contrast=0.2, brightness=0.2, noise=noise)
    return {"x": torch.from_numpy(img), "age": torch.from_numpy(ages.astype(np.int64))}


class SyntheticAge:
    """Build the stand-in; `scale` multiplies the number of images (profiles shrink it)."""

    def __init__(self, root: str, n_images: int = 4000, image_size: int = 32, seed: int = 0, anchors: int = 12,
                 width: float = 6.0, identity: float = 0.6, noise: float = 0.5, max_shift: int = 1,
                 scale: float = 1.0, split_seed: int = 42, imbalance: dict | None = None):
        if scale <= 0:
            raise ValueError(f"scale={scale}: must be > 0")
        self.root = Path(root)
        self.gen = dict(n_images=max(10, int(round(n_images * scale))), image_size=image_size, seed=seed,
                        anchors=anchors, width=width, identity=identity, noise=noise, max_shift=max_shift)
        self.split_seed = split_seed
        self.imbalance = dict(imbalance) if imbalance else None

    @property
    def cache_path(self) -> Path:
        return cache_file(self.root / f"synthetic_age_v{GENERATOR_VERSION}_{cache_key(**self.gen)}.pt",
                          generator_sources(__file__))

    def __call__(self):
        raw = cached(self.cache_path, lambda: generate(**self.gen))
        y = raw["age"] - 1
        pool = TensorSplit(raw["x"], y)
        train_i, val_i, test_i = (torch.from_numpy(i) for i in seeded_split(len(y), (0.6, 0.2, 0.2), self.split_seed))
        meta = Meta(num_classes=NUM_AGES, class_names=[str(a) for a in range(1, NUM_AGES + 1)],
                    class_counts=torch.zeros(NUM_AGES, dtype=torch.long), channels=3,
                    image_size=self.gen["image_size"], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                    natural_similarity="ordinal", ordered=True, extras={"min_age": 1})
        return assemble(pool.subset(train_i), pool.subset(test_i), meta, val=pool.subset(val_i),
                        imbalance=self.imbalance)
