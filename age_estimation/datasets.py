"""UTKFace and AFAD readers with the SimLoss protocol.

Classes are ages `min_age..max_age` (90 classes). `labels: age` gives index = age − min_age; `labels:
official_rank` gives what the official code's `ImageFolder` gives: the rank of the image's age folder among the
folders present, folder names sorted as strings (UTKFace folders are the README's 3-digit `025`; AFAD's as on
disk). `listing: strict` keeps only names/layouts that parse fully; `listing: official` keeps what ImageFolder
over the README's layout keeps (UTKFace: any `<age>_*` image name; AFAD: any image file below an age folder),
in ImageFolder order (folder name as a string, then path). The usable images are split once by `seeded_split`
(seed 42, 60/20/20, the official `TrainValTestDataset`), resized to 60×60 without augmentation and decoded once
into a uint8 cache. Skipped files are counted, reported in one log line and never used.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.engine.data import Meta, TensorSplit, assemble, cache_key, cached, seeded_split
from experiments.engine.errors import UserError

log = logging.getLogger(__name__)

DECODER_VERSION = 1
UTK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg(\.chip\.jpg)?$", re.IGNORECASE)
UTK_AGE_PREFIX = re.compile(r"^(\d+)_")
AFAD_GENDERS = ("111", "112")
IMAGE_FOLDER_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LABELS = ("age", "official_rank")
LISTINGS = ("strict", "official")


@dataclass
class Listing:
    files: list[Path] = field(default_factory=list)
    ages: list[int] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    out_of_range: list[str] = field(default_factory=list)

    def add(self, path: Path, age: int | None, lo: int, hi: int, rel: str, folder: str = "") -> None:
        if age is None:
            self.unparsed.append(rel)
        elif not lo <= age <= hi:
            self.out_of_range.append(rel)
        else:
            self.files.append(path)
            self.ages.append(age)
            self.folders.append(folder)

    def sorted(self, by_folder_name: bool = False) -> "Listing":
        """ImageFolder order: by age (= by folder when names have equal length), or by folder name as a string."""
        first = self.folders if by_folder_name else self.ages
        order = sorted(range(len(self.files)), key=lambda i: (first[i], str(self.files[i])))
        return Listing([self.files[i] for i in order], [self.ages[i] for i in order],
                       [self.folders[i] for i in order], self.unparsed, self.out_of_range)

    def labels(self, rule: str, lo: int) -> list[int]:
        """`age`: age − lo. `official_rank`: rank of the folder among the folders present, sorted as strings."""
        if rule == "age":
            return [a - lo for a in self.ages]
        rank = {f: i for i, f in enumerate(sorted(set(self.folders)))}
        return [rank[f] for f in self.folders]

    def counts(self) -> dict[str, int]:
        return {"used": len(self.files), "unparsed": len(self.unparsed), "out_of_range": len(self.out_of_range)}


def _visible_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def list_utkface(root: Path, lo: int, hi: int, listing: str = "strict") -> Listing:
    """Files directly in `root`: strict `<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]`; official any image
    named `<age>_*` (what the README's sorting into 3-digit age folders keeps). Folder = the 3-digit age."""
    out = Listing()
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if listing == "official":
            m = UTK_AGE_PREFIX.match(p.name) if p.name.lower().endswith(IMAGE_FOLDER_EXT) else None
        else:
            m = UTK_NAME.match(p.name)
        age = int(m.group(1)) if m else None
        out.add(p, age, lo, hi, p.name, f"{age:03d}" if age is not None else "")
    return out


def list_afad(root: Path, lo: int, hi: int, listing: str = "strict") -> Listing:
    """Below `root` (AFAD-Full): strict `<age>/<111|112>/*.jpg`; official any image file at any depth below a
    numeric age folder (ImageFolder's walk). Folder = the age folder's name as on disk."""
    out = Listing()
    for p in _visible_files(root):
        parts = p.relative_to(root).parts
        if listing == "official":
            ok = len(parts) >= 2 and parts[0].isdigit() and p.name.lower().endswith(IMAGE_FOLDER_EXT)
        else:
            ok = (len(parts) == 3 and parts[0].isdigit() and parts[1] in AFAD_GENDERS
                  and p.suffix.lower() == ".jpg")
        out.add(p, int(parts[0]) if ok else None, lo, hi, "/".join(parts), parts[0])
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
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 labels: str = "age", listing: str = "strict", imbalance: dict | None = None):
        if labels not in LABELS:
            raise UserError(f"dataset.labels={labels!r}: choose age (index = age − min_age) or official_rank "
                            f"(the official ImageFolder's rank of the age folder)")
        if listing not in LISTINGS:
            raise UserError(f"dataset.listing={listing!r}: choose strict or official (what ImageFolder keeps)")
        if not 1 <= min_age <= max_age:
            raise UserError(f"dataset.min_age={min_age}, dataset.max_age={max_age}: need 1 ≤ min_age ≤ max_age")
        if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9:
            raise UserError(f"dataset.fractions={list(fractions)}: need three train/val/test fractions summing to 1")
        self.root = Path(root).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root.parent / f".{self.name}_cache"
        self.image_size, self.lo, self.hi = image_size, min_age, max_age
        self.split_seed, self.fractions = split_seed, tuple(fractions)
        self.mean, self.std = tuple(mean), tuple(std)
        self.labels, self.listing_rule = labels, listing
        self.imbalance = dict(imbalance) if imbalance else None

    def listing(self) -> Listing:
        raise NotImplementedError

    def class_names(self, lst: Listing, k: int) -> list[str]:
        if self.labels == "age":
            return [str(a) for a in range(self.lo, self.hi + 1)]
        present = sorted(set(lst.folders))
        return [str(int(f)) for f in present] + [f"unused_{i}" for i in range(len(present), k)]

    def __call__(self):
        if not self.root.is_dir():
            raise UserError(f"dataset.root={self.root} is not a folder; put the {self.name} images there "
                            f"or set dataset.root")
        lst = self.listing().sorted(by_folder_name=self.listing_rule == "official")
        c = lst.counts()
        if c["unparsed"] or c["out_of_range"]:
            example = (lst.unparsed or lst.out_of_range)[0]
            log.warning("%s: skipped %d files whose names/layout do not parse and %d with age outside %d–%d "
                        "(e.g. %s); using %d images", self.name, c["unparsed"], c["out_of_range"], self.lo,
                        self.hi, example, c["used"])
        if not lst.files:
            raise UserError(f"no usable {self.name} images under {self.root}; check dataset.root and the layout")
        rel = [str(f.relative_to(self.root)) for f in lst.files]
        key = cache_key(files=rel, size=self.image_size, v=DECODER_VERSION)
        x = cached(self.cache_dir / f"{self.name}_{self.image_size}px_{key}.pt",
                   lambda: decode_images(lst.files, self.image_size), sources=lst.files, root=self.root)
        y = torch.tensor(lst.labels(self.labels, self.lo), dtype=torch.long)
        train_i, val_i, test_i = (torch.from_numpy(i) for i in seeded_split(len(y), self.fractions, self.split_seed))
        pool = TensorSplit(x, y, rel)
        k = self.hi - self.lo + 1
        meta = Meta(num_classes=k, class_names=self.class_names(lst, k),
                    class_counts=torch.zeros(k, dtype=torch.long), channels=3, image_size=self.image_size,
                    mean=self.mean, std=self.std, natural_similarity="ordinal", ordered=True,
                    extras={"min_age": self.lo, "files": c, "labels": self.labels})
        return assemble(pool.subset(train_i), pool.subset(test_i), meta, val=pool.subset(val_i),
                        imbalance=self.imbalance)


class UTKFace(_AgeFolder):
    """A folder of UTKFace images `<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]`."""

    name = "utkface"

    def listing(self) -> Listing:
        return list_utkface(self.root, self.lo, self.hi, self.listing_rule)


class AFAD(_AgeFolder):
    """The AFAD-Full folder: `<age>/<111|112>/*.jpg`."""

    name = "afad"

    def listing(self) -> Listing:
        return list_afad(self.root, self.lo, self.hi, self.listing_rule)
