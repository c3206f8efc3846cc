"""`synthetic_cifar`: a seeded offline stand-in for CIFAR-100 (or CIFAR-10) with superclass structure.

Each superclass has a smooth random colour pattern; each class adds a weaker pattern of its own; each image is
its class pattern, randomly shifted, with per-image contrast/brightness jitter and pixel noise. Classes of one
superclass share most of their appearance, so a classifier confuses them with each other far more often than
with classes of other superclasses — the structure SimLoss and hierarchy-aware metrics exploit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from experiments.engine.stand_in import generator_sources, render, smooth_patterns
from experiments.engine.data import BatchAugment, Meta, TensorSplit, assemble, cache_file, cache_key, cached
from experiments.engine.errors import UserError
from image_classification.wordvectors import write_word2vec_text

GENERATOR_VERSION = 1


def generate(num_superclasses: int, classes_per_superclass: int, n_train_per_class: int, n_test_per_class: int,
             image_size: int, seed: int, superclass_strength: float, class_strength: float, noise: float,
             max_shift: int) -> dict:
    rng = np.random.RandomState(seed)
    k = num_superclasses * classes_per_superclass
    sup = smooth_patterns(rng, num_superclasses, image_size, grid=4)
    own = smooth_patterns(rng, k, image_size, grid=4)
    superclass = np.repeat(np.arange(num_superclasses), classes_per_superclass)
    protos = superclass_strength * sup[superclass] + class_strength * own  # (k, 3, s, s)

    def draw(n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(k), n_per_class)
        n = len(y)
        img = render(rng, protos[y], max_shift, contrast=0.3, brightness=0.3, noise=noise)
        perm = rng.permutation(n)
        return img[perm], y[perm]

    xtr, ytr = draw(n_train_per_class)
    xte, yte = draw(n_test_per_class)
    return {"x_train": torch.from_numpy(xtr), "y_train": torch.from_numpy(ytr),
            "x_test": torch.from_numpy(xte), "y_test": torch.from_numpy(yte),
            "superclass": torch.from_numpy(superclass), "prototypes": torch.from_numpy(protos)}


VECTOR_KINDS = ("word2vec_like", "prototypes")


def word2vec_like_vectors(superclass: np.ndarray, seed: int, dim: int = 100, shared: float = 0.11,
                          group: float = 0.05, superclass_share: float = 0.30,
                          loading: tuple[float, float] = (0.1, 1.9), groups: int = 4) -> np.ndarray:
    """Class vectors whose cosines look like word2vec's for CIFAR-100 names (docs/simloss.md, "Stand-in S").

    v_c = √shared·g + √group·G[group of its superclass] + √superclass_share·w_c·Z[superclass] + √rest·e_c, with
    standard normal g, G, Z, e in `dim` dimensions, superclasses dealt round-robin into `groups` (animals /
    objects / scenes-like blocks) and a per-class loading w_c ~ U(loading) on its superclass. Expected cosines
    ≈ shared + group within a group of superclasses, + superclass_share inside a superclass; the finite `dim`
    and the loadings give the spread (some between-superclass pairs negative).
    """
    rng = np.random.RandomState(seed)
    sup = np.asarray(superclass)
    nsup, k = int(sup.max()) + 1, len(sup)
    block = rng.permutation(nsup) % groups
    rest = 1.0 - shared - group - superclass_share
    w = rng.uniform(*loading, size=k)[:, None]
    g, blocks, supers, own = (rng.randn(n, dim) for n in (1, groups, nsup, k))
    return (np.sqrt(shared) * g + np.sqrt(group) * blocks[block[sup]] + np.sqrt(superclass_share) * w * supers[sup]
            + np.sqrt(rest) * own)


class SyntheticCifar:
    """Build the stand-in; `scale` multiplies the per-class image counts (profiles shrink it)."""

    def __init__(self, root: str, num_superclasses: int = 20, classes_per_superclass: int = 5,
                 n_train_per_class: int = 60, n_test_per_class: int = 20, image_size: int = 32, seed: int = 0,
                 superclass_strength: float = 1.0, class_strength: float = 0.45, noise: float = 0.6,
                 max_shift: int = 2, scale: float = 1.0, val_fraction: float = 0.1, val_per_class: int = 0,
                 split_seed: int = 0, imbalance: dict | None = None, crop_padding: int = 2, flip: bool = True,
                 class_vectors: str = "word2vec_like"):
        if scale <= 0:
            raise ValueError(f"scale={scale}: must be > 0")
        if class_vectors not in VECTOR_KINDS:
            raise UserError(f"dataset.class_vectors={class_vectors!r}: choose word2vec_like or prototypes")
        self.vector_kind = class_vectors
        self.root = Path(root)
        self.gen = dict(num_superclasses=num_superclasses, classes_per_superclass=classes_per_superclass,
                        n_train_per_class=max(2, int(round(n_train_per_class * scale))),
                        n_test_per_class=max(1, int(round(n_test_per_class * scale))), image_size=image_size,
                        seed=seed, superclass_strength=superclass_strength, class_strength=class_strength,
                        noise=noise, max_shift=max_shift)
        self.split = dict(val_fraction=val_fraction, val_per_class=val_per_class, split_seed=split_seed,
                          imbalance=dict(imbalance) if imbalance else None)
        self.augment = BatchAugment(crop_padding=crop_padding, flip=flip)

    @property
    def cache_path(self) -> Path:
        return cache_file(self.root / f"synthetic_cifar_v{GENERATOR_VERSION}_{cache_key(**self.gen)}.pt",
                          generator_sources(__file__))

    def class_vectors(self, class_names: list[str], prototypes: torch.Tensor, superclass: torch.Tensor) -> Path:
        """word2vec text file standing in for word embeddings: `word2vec_like` (seeded, calibrated profile) or
        `prototypes` (the class prototypes 8×8-pooled: cosine ≈ 0.84 within a superclass, ≈ 0 across)."""
        path = self.cache_path.with_suffix(f".{self.vector_kind}.vectors.txt")
        if not path.exists():
            if self.vector_kind == "prototypes":
                vecs = torch.nn.functional.adaptive_avg_pool2d(prototypes.float(), 8).flatten(1).numpy()
            else:
                vecs = word2vec_like_vectors(superclass.numpy(), self.gen["seed"])
            write_word2vec_text(path, class_names, vecs)
        return path

    def __call__(self):
        raw = cached(self.cache_path, lambda: generate(**self.gen))
        k = len(raw["superclass"])
        nsup = self.gen["num_superclasses"]
        class_names = [f"class_{c:03d}" for c in range(k)]
        vectors = self.class_vectors(class_names, raw["prototypes"], raw["superclass"])
        meta = Meta(num_classes=k, class_names=class_names,
                    class_counts=torch.zeros(k, dtype=torch.long), channels=3, image_size=self.gen["image_size"],
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), superclass=raw["superclass"].long(),
                    superclass_names=[f"super_{s:02d}" for s in range(nsup)], natural_similarity="superclass",
                    extras={"prototypes": raw["prototypes"], "class_vectors_path": str(vectors)})
        names = [f"img_{i:06d}.png" for i in range(len(raw["y_train"]))]
        pool = TensorSplit(raw["x_train"], raw["y_train"], names)
        test = TensorSplit(raw["x_test"], raw["y_test"])
        return assemble(pool, test, meta, augment=self.augment, **self.split)
