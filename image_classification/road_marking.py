"""Road Marking (CCE paper): the official preprocessing as a command, and the folder dataset it produces.

Preprocessing (`python -m image_classification.road_marking prepare --src SRC --dst DST [--seed 0]`), after the
official `crop_for_road_marking.py`: every line of `SRC/dataset_annotations.txt` is
`x1,y1,x2,y2,x3,y3,x4,y4,class,filename` (commas as in the original file; whitespace-separated lines are accepted
too); the image `SRC/<filename>` (`.png` read as `.jpg`, as the official script does) is cropped to the
axis-aligned box around the 4 points (int(float(.)) coordinates), resized to 64×64 and saved as JPEG quality 100
named `<line number>.jpg`. The 17 classes in `DROPPED` are skipped. Each class is split 80/10/10 into
`DST/{train,valid,test}/<class>/` with int(n·0.8) train, int(n·0.1) valid, the rest test — drawn with
`random.Random(seed)` over the sorted file names (the official script used `random.sample` without a seed).

Dataset (`dataset=road_marking`, `RoadMarking(root=DST)`): the 64×64 JPEGs are decoded once into uint8 tensors
(about 12 KB per image, so the whole set is a few MB) and cached under `DST/.cache`; training is then
in-memory with on-device crop/flip, like CIFAR. The official `valid/` folder is the validation split; classes
are the sorted folder names (ImageFolder order = the official order). `imbalance` applies to `train/` only.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.engine.data import BatchAugment, Meta, TensorSplit, assemble, cache_key, cached
from experiments.engine.errors import UserError

DROPPED = ("diamond", "car", "pool", "lane", "keep", "clear", "25", "X-crossing", "forward&right", "speed", "hump",
           "30", "slow", "school", "stripe", "forward&left", "yield")
SPLITS = ("train", "valid", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


# --------------------------------------------------------------------------- preprocessing
def parse_annotation(line: str, where: str) -> tuple[tuple[int, int, int, int], str, str]:
    """((min_x, min_y, max_x, max_y), class, filename) of one annotation line."""
    parts = [p.strip() for p in line.split(",")] if "," in line else line.split()
    if len(parts) < 10:
        raise UserError(f"{where}: expected 'x1,y1,x2,y2,x3,y3,x4,y4,class,filename', got {line.strip()!r}")
    try:
        xs = [int(float(parts[i])) for i in (0, 2, 4, 6)]
        ys = [int(float(parts[i])) for i in (1, 3, 5, 7)]
    except ValueError:
        raise UserError(f"{where}: the first 8 fields must be numbers, got {line.strip()!r}") from None
    return (min(xs), min(ys), max(xs), max(ys)), parts[8], parts[-1].replace(".png", ".jpg")


def split_counts(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    train, valid = int(n * fractions[0]), int(n * fractions[1])
    return train, valid, n - train - valid


def prepare(src: str | Path, dst: str | Path, seed: int = 0, size: int = 64, annotations: str | Path | None = None,
            fractions: Sequence[float] = (0.8, 0.1, 0.1), dropped: Sequence[str] = DROPPED, log=print) -> dict:
    """Crop, resize, drop, split. Returns {class: (n_train, n_valid, n_test)}."""
    from PIL import Image

    src, dst = Path(src), Path(dst)
    ann = Path(annotations) if annotations else src / "dataset_annotations.txt"
    if not ann.is_file():
        raise UserError(f"annotation file {ann} not found; pass --src the RoadMarkingDataset folder or --annotations")
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise UserError(f"split fractions {tuple(fractions)} must sum to 1")
    if dst.exists() and any((dst / s).exists() for s in SPLITS):
        raise UserError(f"{dst} already holds train/valid/test; remove it or choose another --dst")
    drop = set(dropped)
    crops: dict[str, list[tuple[str, Image.Image]]] = {}
    lines = ann.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        box, cls, fname = parse_annotation(line, f"{ann}:{i + 1}")
        if cls in drop:
            continue
        path = src / fname
        if not path.is_file():
            raise UserError(f"{ann}:{i + 1}: image {path} not found; --src must be the folder holding the images")
        with Image.open(path) as im:
            crop = im.convert("RGB").crop(box).resize((size, size))
        crops.setdefault(cls, []).append((f"{i}.jpg", crop))
    if not crops:
        raise UserError(f"{ann}: no annotation left after dropping the {len(drop)} excluded classes")
    rng = random.Random(seed)
    stats = {}
    for cls in sorted(crops):
        items = sorted(crops[cls], key=lambda t: t[0])
        n_tr, n_va, n_te = split_counts(len(items), fractions)
        names = [n for n, _ in items]
        train = set(rng.sample(names, n_tr))
        rest = [n for n in names if n not in train]
        valid = set(rng.sample(rest, n_va))
        where = {n: "train" if n in train else "valid" if n in valid else "test" for n in names}
        for name, img in items:
            out = dst / where[name] / cls
            out.mkdir(parents=True, exist_ok=True)
            img.save(out / name, format="JPEG", quality=100)
        stats[cls] = (n_tr, n_va, n_te)
        log(f"{cls}: train {n_tr} valid {n_va} test {n_te}")
    for s in SPLITS:  # every split lists every class, even when a tiny class leaves one empty
        for cls in stats:
            (dst / s / cls).mkdir(parents=True, exist_ok=True)
    return stats


# --------------------------------------------------------------------------- dataset
def _list_split(root: Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for c, cls in enumerate(classes):
        d = root / split / cls
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                files.append(f)
                labels.append(c)
    return files, labels


def _decode(files: list[Path], size: int) -> torch.Tensor:
    from PIL import Image

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size))
            out[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(out)


class RoadMarking:
    """Folder dataset `root/{train,valid,test}/<class>/*.jpg`, decoded into memory (see module docstring).

    `mean`/`std` null = computed from the training images (the official code's train-folder statistics)."""

    def __init__(self, root: str, image_size: int = 64, imbalance: dict | None = None, crop_padding: int = 4,
                 flip: bool = False, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 val_per_class: int = 0, val_fraction: float = 0.0, split_seed: int = 0):
        self.root = Path(root).expanduser()
        self.image_size = image_size
        if val_per_class or val_fraction:
            raise UserError("dataset=road_marking has its own valid/ folder; leave dataset.val_per_class and "
                            "dataset.val_fraction at 0")
        self.imbalance = dict(imbalance) if imbalance else None
        self.augment = BatchAugment(crop_padding=crop_padding, flip=flip)
        self.mean, self.std = (tuple(mean) if mean else None), (tuple(std) if std else None)

    def _load(self) -> dict:
        if not (self.root / "train").is_dir():
            raise UserError(f"{self.root}/train not found; run `python -m image_classification.road_marking "
                            f"prepare --src <RoadMarkingDataset> --dst {self.root}` first")
        classes = sorted(d.name for d in (self.root / "train").iterdir() if d.is_dir())
        if len(classes) < 2:
            raise UserError(f"{self.root}/train has {len(classes)} class folders; need at least 2")
        listing = {s: _list_split(self.root, s, classes) for s in SPLITS}
        for s in SPLITS:
            if not listing[s][0]:
                raise UserError(f"{self.root}/{s} holds no images of the classes in train/")
        key = cache_key(size=self.image_size, classes=classes,
                        files={s: [str(f.relative_to(self.root)) for f in listing[s][0]] for s in SPLITS})

        def build():
            return {"classes": classes, **{s: {"x": _decode(listing[s][0], self.image_size),
                                               "y": torch.tensor(listing[s][1], dtype=torch.long),
                                               "names": [f"{f.parent.name}/{f.name}" for f in listing[s][0]]}
                                           for s in SPLITS}}

        return cached(self.root / ".cache" / f"road_marking_{key}.pt", build,
                      sources=[f for s in SPLITS for f in listing[s][0]], root=self.root)

    def __call__(self):
        raw = self._load()
        classes = raw["classes"]
        xtr = raw["train"]["x"]
        if self.mean is None or self.std is None:
            f = xtr.double() / 255.0
            mean = tuple(f.mean(dim=(0, 2, 3)).tolist())
            std = tuple(f.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
        else:
            mean, std = self.mean, self.std
        meta = Meta(num_classes=len(classes), class_names=list(classes),
                    class_counts=torch.zeros(len(classes), dtype=torch.long), channels=3,
                    image_size=self.image_size, mean=mean, std=std)
        split = {s: TensorSplit(raw[s]["x"], raw[s]["y"], raw[s]["names"]) for s in SPLITS}
        return assemble(split["train"], split["test"], meta, val=split["valid"], imbalance=self.imbalance,
                        augment=self.augment)


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m image_classification.road_marking", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="crop/resize/drop/split the raw Road Marking dataset")
    pp.add_argument("--src", required=True, help="folder with dataset_annotations.txt and the images")
    pp.add_argument("--dst", required=True, help="output folder (gets train/ valid/ test/)")
    pp.add_argument("--seed", type=int, default=0, help="split seed (the official script had none)")
    pp.add_argument("--size", type=int, default=64)
    pp.add_argument("--annotations", default=None, help="annotation file (default SRC/dataset_annotations.txt)")
    args = p.parse_args(argv)
    try:
        stats = prepare(args.src, args.dst, seed=args.seed, size=args.size, annotations=args.annotations)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = [sum(v[i] for v in stats.values()) for i in range(3)]
    print(f"{len(stats)} classes; train {total[0]} valid {total[1]} test {total[2]} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
