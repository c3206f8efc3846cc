"""`digits`: scikit-learn's bundled handwritten digits — 1,797 real 8×8 grey images of 0–9, no download.

`sklearn.datasets.load_digits` reads the copy shipped inside scikit-learn (values 0..16). Images are upsampled
to `image_size` with bilinear interpolation (align_corners=False) in float and quantised once to uint8
(v·255/16, rounded): bilinear keeps strokes smooth where nearest would draw 2×2 blocks with hard edges.
`channels: 3` replicates the grey channel.

Splits, all drawn with `split_seed` before anything else: a balanced test split (`test_per_class` per class),
then a balanced validation split (`val_per_class`) from the rest; what remains is the training pool (114–123
images per class with the defaults 40/20). `scale` < 1 keeps the first round(scale·n) pool images of each
class (profiles shrink it; test and validation stay whole). `imbalance` then subsamples the pool like every
in-memory dataset (`experiments.engine.data.assemble`); the YAML uses `n_max: smallest`, so ρ = 50 gives
114, 73, 47, 30, 20, 12, 8, 5, 3, 2 images (314 in all). Mean/std are computed from the training pool before the
imbalance (never from validation or test), so they do not change with ρ.
"""
from __future__ import annotations

import numpy as np
import torch

from experiments.engine.data import BatchAugment, Meta, TensorSplit, assemble, holdout_per_class
from experiments.engine.errors import UserError

MIN_CLASS = 174  # images of the rarest digit (8) in load_digits


def load_digits_uint8(image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as uint8 (N, channels, image_size, image_size) and their labels."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32))[:, None] * (255.0 / 16.0)
    if image_size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1).contiguous()
    return x, torch.from_numpy(raw.target.astype(np.int64))


def per_class_head(y: torch.Tensor, fraction: float) -> torch.Tensor:
    """Sorted indices of the first max(1, round(fraction·n_c)) samples of every class."""
    keep = [torch.nonzero(y == c).flatten() for c in torch.unique(y).tolist()]
    keep = [idx[: max(1, round(fraction * len(idx)))] for idx in keep]
    return torch.cat(keep).sort().values


class Digits:
    """Build the digits dataset (module docstring); every option is a key of conf/dataset/digits.yaml."""

    def __init__(self, image_size: int = 16, channels: int = 1, test_per_class: int = 40, val_per_class: int = 20,
                 split_seed: int = 0, scale: float = 1.0, imbalance: dict | None = None, crop_padding: int = 1,
                 flip: bool = False):
        if image_size < 8:
            raise UserError(f"dataset.image_size={image_size}: the digits are 8×8; use 8 or more (upsampled)")
        if channels not in (1, 3):
            raise UserError(f"dataset.channels={channels}: use 1 (grey) or 3 (grey replicated)")
        if test_per_class < 1 or val_per_class < 0 or test_per_class + val_per_class >= MIN_CLASS:
            raise UserError(f"dataset.test_per_class={test_per_class}, dataset.val_per_class={val_per_class}: need "
                            f"test ≥ 1, val ≥ 0 and test + val < {MIN_CLASS} (the rarest digit's count)")
        if not 0 < scale <= 1:
            raise UserError(f"dataset.scale={scale}: must be in (0, 1] (fraction of each class's training pool)")
        self.image_size, self.channels, self.scale = int(image_size), int(channels), float(scale)
        self.test_per_class, self.val_per_class, self.split_seed = test_per_class, val_per_class, split_seed
        self.imbalance = dict(imbalance) if imbalance else None
        self.augment = BatchAugment(crop_padding=crop_padding, flip=flip)

    def __call__(self):
        x, y = load_digits_uint8(self.image_size, self.channels)
        images = TensorSplit(x, y, [f"digit_{i:04d}" for i in range(len(y))])
        rest, test_i = holdout_per_class(y, self.test_per_class, self.split_seed)
        pool_i, val_i = holdout_per_class(y[rest], self.val_per_class, self.split_seed)
        pool = images.subset(rest[pool_i])
        if self.scale < 1:
            pool = pool.subset(per_class_head(pool.y, self.scale))
        f = pool.x.double() / 255.0
        mean = tuple(f.mean(dim=(0, 2, 3)).tolist())
        std = tuple(f.std(dim=(0, 2, 3)).tolist())
        meta = Meta(num_classes=10, class_names=[str(c) for c in range(10)],
                    class_counts=torch.zeros(10, dtype=torch.long), channels=self.channels,
                    image_size=self.image_size, mean=mean, std=std, natural_similarity=None)
        return assemble(pool, images.subset(test_i), meta, val=images.subset(rest[val_i]),
                        imbalance=self.imbalance, augment=self.augment)
