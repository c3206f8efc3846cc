"""CIFAR-10 / CIFAR-100 readers for the standard python pickles (`cifar-10-batches-py/`, `cifar-100-python/`).

Validation is carved out of the official training set by `experiments.engine.data.assemble` (seeded), so
`val_fraction`, `val_per_class` and `imbalance` behave as for every in-memory dataset; test is the official
test set. CIFAR-100 `classes=96` drops the four classes absent from word2vec-google-news-300 (SimLoss) and
re-ranks the remaining labels in their original (alphabetical) order.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from experiments.engine.data import BatchAugment, Meta, TensorSplit, assemble
from experiments.engine.errors import UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

SIMLOSS_DROPPED = ("aquarium_fish", "keyboard", "pickup_truck", "sweet_pepper")

OFFICIAL_QUERY_WORDS = {  # torchvision name -> the SimLoss repo's word2vec query (CIFAR website spelling)
    "apple": "apples", "bottle": "bottles", "bowl": "bowls", "can": "cans", "cup": "cups",
    "mushroom": "mushrooms", "orange": "oranges", "orchid": "orchids", "pear": "pears", "plate": "plates",
    "poppy": "poppies", "rose": "roses", "sunflower": "sunflowers", "tulip": "tulips",
    "maple_tree": "maple", "oak_tree": "oak", "palm_tree": "palm", "pine_tree": "pine", "willow_tree": "willow",
    "lawn_mower": "lawnmower", "aquarium_fish": "aquarium fish", "sweet_pepper": "sweet peppers",
    "keyboard": "computer keyboard", "pickup_truck": "pickup truck",
}


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"missing CIFAR file {path}; place the python-version archive contents there or set "
                        f"dataset.download=true")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _field(d: dict, key: bytes, path: Path) -> Any:
    if key not in d:
        raise UserError(f"{path} has no key {key!r}; it is not a CIFAR python pickle")
    return d[key]


def _images(d: dict, path: Path) -> torch.Tensor:
    data = np.asarray(_field(d, b"data", path), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: b'data' has shape {data.shape}, expected N×3072")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())


def _names(d: dict) -> list[str] | None:
    names = d.get(b"filenames")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names is not None else None


def _decode(items: Sequence) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in items]


class _Cifar:
    folder = ""
    tv_class = ""

    def __init__(self, root: str, val_fraction: float = 0.1, val_per_class: int = 0, split_seed: int = 0,
                 imbalance: dict | None = None, crop_padding: int = 4, flip: bool = True, download: bool = False,
                 mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD):
        self.root = Path(root).expanduser()
        self.split = dict(val_fraction=val_fraction, val_per_class=val_per_class, split_seed=split_seed,
                          imbalance=dict(imbalance) if imbalance else None)
        self.augment = BatchAugment(crop_padding=crop_padding, flip=flip)
        self.download = download
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def base(self) -> Path:
        if (self.root / self.folder).is_dir() or self.root.name != self.folder:
            return self.root / self.folder
        return self.root

    def _ensure(self, required: Sequence[str]) -> None:
        if all((self.base / f).is_file() for f in required) or not self.download:
            return
        try:
            import torchvision

            getattr(torchvision.datasets, self.tv_class)(str(self.root), train=True, download=True)
        except Exception as e:  # noqa: BLE001 — network/IO failures become one user-facing line
            raise UserError(f"could not download {self.tv_class} into {self.root} ({type(e).__name__}: {e}); "
                            f"download cifar python archives by hand and set dataset.root") from None

    def _meta(self, class_names: list[str], **kw) -> Meta:
        k = len(class_names)
        return Meta(num_classes=k, class_names=class_names, class_counts=torch.zeros(k, dtype=torch.long),
                    channels=3, image_size=32, mean=self.mean, std=self.std, **kw)


class Cifar100(_Cifar):
    """CIFAR-100 fine labels (superclass = coarse label); `classes=96` is the SimLoss variant."""

    folder = "cifar-100-python"
    tv_class = "CIFAR100"

    def __init__(self, root: str, classes: int = 100, **kw):
        super().__init__(root, **kw)
        if classes not in (100, 96):
            raise UserError(f"dataset.classes={classes}: CIFAR-100 supports 100 or 96 (SimLoss word2vec subset)")
        self.classes = classes

    def _load(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str] | None]:
        path = self.base / name
        d = _unpickle(path)
        x = _images(d, path)
        fine = torch.as_tensor(_field(d, b"fine_labels", path), dtype=torch.long)
        coarse = torch.as_tensor(_field(d, b"coarse_labels", path), dtype=torch.long)
        if not len(x) == len(fine) == len(coarse):
            raise UserError(f"{path}: {len(x)} images, {len(fine)} fine and {len(coarse)} coarse labels")
        return x, fine, coarse, _names(d)

    def __call__(self):
        self._ensure(("train", "test", "meta"))
        meta_path = self.base / "meta"
        m = _unpickle(meta_path)
        fine_names = _decode(_field(m, b"fine_label_names", meta_path))
        coarse_names = _decode(_field(m, b"coarse_label_names", meta_path))
        xtr, ftr, ctr, ntr = self._load("train")
        xte, fte, cte, nte = self._load("test")
        superclass = torch.full((len(fine_names),), -1, dtype=torch.long)
        superclass[torch.cat([ftr, fte])] = torch.cat([ctr, cte])
        pairs = torch.unique(torch.stack([torch.cat([ftr, fte]), torch.cat([ctr, cte])]), dim=1)
        if pairs.shape[1] != len(torch.unique(pairs[0])) or (superclass < 0).any():
            raise UserError(f"{self.base}: every fine label must occur with exactly one coarse label")
        keep = [c for c, n in enumerate(fine_names) if self.classes == 100 or n not in SIMLOSS_DROPPED]
        if self.classes == 96 and len(keep) != 96:
            raise UserError(f"dataset.classes=96 expects the standard CIFAR-100 names incl. "
                            f"{', '.join(SIMLOSS_DROPPED)}; {meta_path} has other names")
        remap = torch.full((len(fine_names),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))

        def split(x, fine, names):
            sel = remap[fine] >= 0
            idx = torch.nonzero(sel).flatten()
            kept_names = [names[i] for i in idx.tolist()] if names is not None else None
            return TensorSplit(x[idx], remap[fine[idx]], kept_names)

        names = [fine_names[c] for c in keep]
        meta = self._meta(names, superclass=superclass[keep], superclass_names=coarse_names,
                          natural_similarity="superclass",
                          extras={"query_words": [OFFICIAL_QUERY_WORDS.get(n, n) for n in names],
                                  "original_labels": keep})
        return assemble(split(xtr, ftr, ntr), split(xte, fte, nte), meta, augment=self.augment, **self.split)


class Cifar10(_Cifar):
    """CIFAR-10 (no superclasses)."""

    folder = "cifar-10-batches-py"
    tv_class = "CIFAR10"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))

    def _load(self, files: Sequence[str]) -> TensorSplit:
        xs, ys, names = [], [], []
        for name in files:
            path = self.base / name
            d = _unpickle(path)
            x = _images(d, path)
            y = torch.as_tensor(_field(d, b"labels", path), dtype=torch.long)
            if len(x) != len(y):
                raise UserError(f"{path}: {len(x)} images but {len(y)} labels")
            xs.append(x)
            ys.append(y)
            n = _names(d)
            names = None if names is None or n is None else names + n
        return TensorSplit(torch.cat(xs), torch.cat(ys), names)

    def __call__(self):
        self._ensure((*self.train_files, "test_batch", "batches.meta"))
        meta_path = self.base / "batches.meta"
        class_names = _decode(_field(_unpickle(meta_path), b"label_names", meta_path))
        pool, test = self._load(self.train_files), self._load(("test_batch",))
        bad = torch.cat([pool.y, test.y])
        if bad.min() < 0 or bad.max() >= len(class_names):
            raise UserError(f"{self.base}: labels outside 0..{len(class_names) - 1}")
        return assemble(pool, test, self._meta(class_names), augment=self.augment, **self.split)
