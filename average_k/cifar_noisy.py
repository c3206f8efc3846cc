"""`cifar100_noisy`: CIFAR-100 with block-of-5 label noise on the training part only (the noised-topk protocol).

The 50k official training images are split as `noised-topk` `split_dataset` does: with numpy's legacy RNG seeded
by `split_seed` (1234), `choice(n, n_train + n_val, replace=False)` then `permutation`, first n_train for training
(45k), the next n_val (5k) for validation. Noise (`LabelNoise(k=5, p)`): for each of the 50k images a block offset
U{0..block−1} and a Bernoulli(p) flag are drawn (in that order, `noise_seed`); flagged training labels become
ℓ − ℓ mod block + offset (may stay unchanged). Validation and test labels stay clean. Blocks are consecutive
fine-label indices (alphabetical), not the official superclasses, as in the reference code. `scale` < 1 keeps
the first fraction of each split (after the split and the noise; for smoke runs).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from experiments.engine.data import Data, TensorSplit, class_counts, with_imbalance
from experiments.engine.errors import UserError
from image_classification.cifar import Cifar100

NOISED_TOPK_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
NOISED_TOPK_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def noised_topk_split(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    perm = rng.permutation(rng.choice(n, size=n, replace=False))
    return perm[: n - n_val], perm[n - n_val:]


def block_noise(labels: np.ndarray, p: float, block: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    offset = rng.choice(block, size=len(labels))
    flip = rng.binomial(1, p, size=len(labels)).astype(bool)
    return np.where(flip, labels - labels % block + offset, labels)


class Cifar100Noisy:
    def __init__(self, root: str, noise: float = 0.2, block: int = 5, val_fraction: float = 0.1,
                 split_seed: int = 1234, noise_seed: int = 0, crop_padding: int = 4, flip: bool = True,
                 download: bool = False, mean: Sequence[float] = NOISED_TOPK_MEAN,
                 std: Sequence[float] = NOISED_TOPK_STD, scale: float = 1.0, imbalance: dict | None = None):
        if not 0 <= noise <= 1:
            raise UserError(f"dataset.noise={noise}: the label-noise probability must be in [0, 1]")
        if not 0 < scale <= 1:
            raise UserError(f"dataset.scale={scale}: must be in (0, 1] (fraction of every split kept)")
        if block < 1 or 100 % block:
            raise UserError(f"dataset.block={block}: must divide the 100 classes (noised-topk uses 5)")
        if not 0 < val_fraction < 1:
            raise UserError(f"dataset.val_fraction={val_fraction}: must be in (0, 1) (noised-topk: 0.1 = 5k of 50k)")
        self.noise, self.block, self.val_fraction = float(noise), int(block), float(val_fraction)
        self.split_seed, self.noise_seed, self.scale = int(split_seed), int(noise_seed), float(scale)
        self.imbalance = dict(imbalance) if imbalance else None
        self.reader = Cifar100(root, classes=100, val_fraction=0.0, split_seed=0, crop_padding=crop_padding,
                               flip=flip, download=download, mean=mean, std=std)

    def __call__(self) -> Data:
        data = self.reader()
        pool = data.train
        n = len(pool)
        train_idx, val_idx = noised_topk_split(n, int(round(n * self.val_fraction)), self.split_seed)
        clean = pool.y.numpy()
        noisy = torch.from_numpy(block_noise(clean, self.noise, self.block, self.noise_seed))
        names = pool.names
        if self.scale < 1:
            train_idx, val_idx = (a[: max(1, round(len(a) * self.scale))] for a in (train_idx, val_idx))
        tr = torch.from_numpy(train_idx)
        train = TensorSplit(pool.x[tr], noisy[tr], [names[i] for i in train_idx] if names else None)
        val = pool.subset(torch.from_numpy(val_idx))
        meta = data.meta
        meta.class_counts = class_counts(train.y, meta.num_classes)
        meta.extras = {**meta.extras, "label_noise": self.noise,
                       "train_noise_changed": int((train.y != pool.y[tr]).sum())}
        test = data.test
        if self.scale < 1:
            test = test.subset(torch.arange(max(1, round(len(test) * self.scale))))
        return with_imbalance(Data(train=train, val=val, test=test, meta=meta, augment=data.augment),
                              self.imbalance)
