"""UTKFace and AFAD readers with the SimLoss protocol.

Classes are ages `min_age..max_age` (official: 1..90, 90 classes, index = age − 1). All usable images are put
in ImageFolder order (by age, then path), split once by `seeded_split` (seed 42, 60/20/20, the official
`TrainValTestDataset`), resized to 60×60 without augmentation and decoded once into a uint8 cache.
Files that do not fit the naming/layout rules or whose age is out of range are counted, reported in one log
line and never used.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.data import Meta, TensorSplit, assemble, cache_key, cached, seeded_split
from experiments.errors import UserError

log = logging.getLogger(__name__)

DECODER_VERSION = 1
UTK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg(\.chip\.jpg)?$", re.IGNORECASE)
AFAD_GENDERS = ("111", "112")


@dataclass
class Listing:
    files: list[Path] = field(default_factory=list)
    ages: list[int] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    out_of_range: list[str] = field(default_factory=list)

    def add(self, path: Path, age: int | None, lo: int, hi: int, rel: str) -> None:
        if age is None:
            self.unparsed.append(rel)
        elif not lo <= age <= hi:
            self.out_of_range.append(rel)
        else:
            self.files.append(path)
            self.ages.append(age)

    def sorted(self) -> "Listing":
        order = sorted(range(len(self.files)), key=lambda i: (self.ages[i], str(self.files[i])))
        return Listing([self.files[i] for i in order], [self.ages[i] for i in order],
                       self.unparsed, self.out_of_range)

    def counts(self) -> dict[str, int]:
        return {"used": len(self.files), "unparsed": len(self.unparsed), "out_of_range": len(self.out_of_range)}


def _visible_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def list_utkface(root: Path, lo: int, hi: int) -> Listing:
    """`<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]` files directly in `root`."""
    out = Listing()
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        m = UTK_NAME.match(p.name)
        out.add(p, int(m.group(1)) if m else None, lo, hi, p.name)
    return out


def list_afad(root: Path, lo: int, hi: int) -> Listing:
    """`<age>/<111|112>/*.jpg` below `root` (AFAD-Full)."""
    out = Listing()
    for p in _visible_files(root):
        parts = p.relative_to(root).parts
        ok = (len(parts) == 3 and parts[0].isdigit() and parts[1] in AFAD_GENDERS
              and p.suffix.lower() == ".jpg")
        out.add(p, int(parts[0]) if ok else None, lo, hi, "/".join(parts))
    return out


def decode_images(files: Sequence[Path], size: int) -> torch.Tensor:
    """RGB uint8 N×3×size×size, resized like torchvision `Resize((size, size))` on PIL images (bilinear)."""
    from PIL import Image

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        except OSError as e:
            raise UserError(f"cannot decode image {f} ({e}); remove or replace the file") from None
        out[i] = arr.transpose(2, 0, 1)
    return torch.from_numpy(out)


class _AgeFolder:
    name = ""

    def __init__(self, root: str, cache_dir: str | None = None, image_size: int = 60, min_age: int = 1,
                 max_age: int = 90, split_seed: int = 42, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)):
        if not 1 <= min_age <= max_age:
            raise UserError(f"dataset.min_age={min_age}, dataset.max_age={max_age}: need 1 ≤ min_age ≤ max_age")
        if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9:
            raise UserError(f"dataset.fractions={list(fractions)}: need three train/val/test fractions summing to 1")
        self.root = Path(root).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root.parent / f".{self.name}_cache"
        self.image_size, self.lo, self.hi = image_size, min_age, max_age
        self.split_seed, self.fractions = split_seed, tuple(fractions)
        self.mean, self.std = tuple(mean), tuple(std)

    def listing(self) -> Listing:
        raise NotImplementedError

    def __call__(self):
        if not self.root.is_dir():
            raise UserError(f"dataset.root={self.root} is not a folder; put the {self.name} images there "
                            f"or set dataset.root")
        lst = self.listing().sorted()
        c = lst.counts()
        if c["unparsed"] or c["out_of_range"]:
            example = (lst.unparsed or lst.out_of_range)[0]
            log.warning("%s: skipped %d files whose names/layout do not parse and %d with age outside %d–%d "
                        "(e.g. %s); using %d images", self.name, c["unparsed"], c["out_of_range"], self.lo,
                        self.hi, example, c["used"])
        if not lst.files:
            raise UserError(f"no usable {self.name} images under {self.root}; check dataset.root and the layout")
        rel = [str(f.relative_to(self.root)) for f in lst.files]
        key = cache_key(files=rel, sizes=[f.stat().st_size for f in lst.files], size=self.image_size,
                        v=DECODER_VERSION)
        x = cached(self.cache_dir / f"{self.name}_{self.image_size}px_{key}.pt",
                   lambda: decode_images(lst.files, self.image_size))
        y = torch.tensor(lst.ages, dtype=torch.long) - self.lo
        train_i, val_i, test_i = (torch.from_numpy(i) for i in seeded_split(len(y), self.fractions, self.split_seed))
        pool = TensorSplit(x, y, rel)
        k = self.hi - self.lo + 1
        meta = Meta(num_classes=k, class_names=[str(a) for a in range(self.lo, self.hi + 1)],
                    class_counts=torch.zeros(k, dtype=torch.long), channels=3, image_size=self.image_size,
                    mean=self.mean, std=self.std, natural_similarity="ordinal",
                    extras={"min_age": self.lo, "files": c})
        return assemble(pool.subset(train_i), pool.subset(test_i), meta, val=pool.subset(val_i))


class UTKFace(_AgeFolder):
    """A folder of UTKFace images `<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]`."""

    name = "utkface"

    def listing(self) -> Listing:
        return list_utkface(self.root, self.lo, self.hi)


class AFAD(_AgeFolder):
    """The AFAD-Full folder: `<age>/<111|112>/*.jpg`."""

    name = "afad"

    def listing(self) -> Listing:
        return list_afad(self.root, self.lo, self.hi)
