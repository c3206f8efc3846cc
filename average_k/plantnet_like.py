"""`plantnet_like`: a seeded offline stand-in for Pl@ntNet-300K with genuinely ambiguous images.

- Long tail: class c of (random) frequency rank r gets max(n_min, round(n_max·(r+1)^−zipf)) images.
- Genera: classes come in genera of `min_species`..`max_species` look-alike species; an image is its genus
  pattern plus a weaker species pattern (the genus is the dataset's `superclass`).
- Ambiguity: with probabilities `ambiguity` an image shows m = 1, 2, 3, … species of its genus (capped at the
  genus size) — its own and m−1 others drawn uniformly — rendered as the mean of their patterns. Such an image
  says nothing about which of the m species is the label, so the Bayes posterior is the class frequencies
  restricted to those m: good sets must vary in size (1 for clear images, up to 6 for the most ambiguous).
Test images follow the same long tail (`test_fraction` of each class, at least `min_test`); validation is carved
from the training pool by `experiments.engine.data.assemble`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.engine.stand_in import generator_sources, render, smooth_patterns
from experiments.engine.data import BatchAugment, Meta, TensorSplit, assemble, cache_file, cache_key, cached
from experiments.engine.errors import UserError

GENERATOR_VERSION = 1


def class_sizes(num_classes: int, n_max: int, n_min: int, zipf: float, rng: np.random.RandomState) -> np.ndarray:
    rank = rng.permutation(num_classes)
    return np.maximum(n_min, np.round(n_max * (rank + 1.0) ** -zipf)).astype(np.int64)


def generate(num_genera: int, min_species: int, max_species: int, n_max: int, n_min: int, zipf: float,
             test_fraction: float, min_test: int, ambiguity: Sequence[float], image_size: int,
             genus_strength: float, species_strength: float, noise: float, max_shift: int, seed: int) -> dict:
    rng = np.random.RandomState(seed)
    per_genus = rng.randint(min_species, max_species + 1, size=num_genera)
    genus = np.repeat(np.arange(num_genera), per_genus)
    c = len(genus)
    members = [np.flatnonzero(genus == g) for g in range(num_genera)]
    g_pat = smooth_patterns(rng, num_genera, image_size, grid=3)
    s_pat = smooth_patterns(rng, c, image_size, grid=5)
    n_pool = class_sizes(c, n_max, n_min, zipf, rng)
    n_test = np.maximum(min_test, np.round(n_pool * test_fraction)).astype(np.int64)
    amb = np.asarray(ambiguity, dtype=np.float64)
    amb = amb / amb.sum()

    def draw(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(c), counts)
        n = len(y)
        m = np.minimum(rng.choice(len(amb), size=n, p=amb) + 1, per_genus[genus[y]])
        species = np.zeros((n, c), dtype=np.float32)
        species[np.arange(n), y] = 1.0
        for i in np.flatnonzero(m > 1):
            others = members[genus[y[i]]]
            others = others[others != y[i]]
            species[i, rng.choice(others, size=m[i] - 1, replace=False)] = 1.0
        species /= species.sum(axis=1, keepdims=True)
        x = genus_strength * g_pat[genus[y]] + species_strength * np.einsum("nc,cshw->nshw", species, s_pat)
        img = render(rng, x, max_shift, contrast=0.25, brightness=0.25, noise=noise)
        perm = rng.permutation(n)
        return img[perm], y[perm], m[perm]

    xtr, ytr, mtr = draw(n_pool)
    xte, yte, mte = draw(n_test)
    return {"x_train": torch.from_numpy(xtr), "y_train": torch.from_numpy(ytr), "amb_train": torch.from_numpy(mtr),
            "x_test": torch.from_numpy(xte), "y_test": torch.from_numpy(yte), "amb_test": torch.from_numpy(mte),
            "genus": torch.from_numpy(genus)}


class PlantNetLike:
    """Build the stand-in; `scale` multiplies the per-class image counts (n_max and n_min)."""

    def __init__(self, root: str, num_genera: int = 16, min_species: int = 2, max_species: int = 8,
                 n_max: int = 240, n_min: int = 6, zipf: float = 0.9, test_fraction: float = 0.25, min_test: int = 3,
                 ambiguity: Sequence[float] = (0.4, 0.2, 0.15, 0.1, 0.1, 0.05), image_size: int = 16,
                 genus_strength: float = 1.0, species_strength: float = 0.8, noise: float = 0.7,
                 max_shift: int = 1, seed: int = 0, scale: float = 1.0, val_fraction: float = 0.15,
                 val_per_class: int = 0, split_seed: int = 0, imbalance: dict | None = None,
                 crop_padding: int = 1, flip: bool = False):
        if scale <= 0:
            raise UserError(f"dataset.scale={scale}: must be > 0")
        if not 1 <= min_species <= max_species:
            raise UserError(f"dataset.min_species={min_species}, max_species={max_species}: need 1 ≤ min ≤ max")
        if len(ambiguity) < 1 or min(ambiguity) < 0 or sum(ambiguity) <= 0:
            raise UserError(f"dataset.ambiguity={list(ambiguity)}: give non-negative weights for 1, 2, 3, … species")
        self.root = Path(root)
        self.gen = dict(num_genera=num_genera, min_species=min_species, max_species=max_species,
                        n_max=max(2, int(round(n_max * scale))), n_min=max(2, int(round(n_min * scale))),
                        zipf=zipf, test_fraction=test_fraction, min_test=min_test,
                        ambiguity=[float(a) for a in ambiguity], image_size=image_size,
                        genus_strength=genus_strength, species_strength=species_strength, noise=noise,
                        max_shift=max_shift, seed=seed)
        self.split = dict(val_fraction=val_fraction, val_per_class=val_per_class, split_seed=split_seed,
                          imbalance=dict(imbalance) if imbalance else None)
        self.augment = BatchAugment(crop_padding=crop_padding, flip=flip)

    @property
    def cache_path(self) -> Path:
        return cache_file(self.root / f"plantnet_like_v{GENERATOR_VERSION}_{cache_key(**self.gen)}.pt",
                          generator_sources(__file__))

    def __call__(self):
        raw = cached(self.cache_path, lambda: generate(**self.gen))
        genus = raw["genus"].long()
        c, ng = len(genus), int(genus.max()) + 1
        meta = Meta(num_classes=c, class_names=[f"g{int(g):02d}_sp{s:03d}" for s, g in enumerate(genus)],
                    class_counts=torch.zeros(c, dtype=torch.long), channels=3, image_size=self.gen["image_size"],
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), superclass=genus,
                    superclass_names=[f"genus_{g:02d}" for g in range(ng)], natural_similarity="superclass",
                    extras={"test_ambiguity": raw["amb_test"]})
        names = [f"img_{i:06d}.png" for i in range(len(raw["y_train"]))]
        pool = TensorSplit(raw["x_train"], raw["y_train"], names)
        test = TensorSplit(raw["x_test"], raw["y_test"])
        return assemble(pool, test, meta, augment=self.augment, **self.split)
