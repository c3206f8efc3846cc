"""Pl@ntNet-300K v1.1 (1,081 species) read from its folders and streamed with workers.

Accepted layouts (first found wins): `<root>/images/{train,val,test}/<species_id>/*.jpg` (the archive) and
`<root>/{train,val,test}/<species_id>/*.jpg` (the official code's ImageFolder root). Class order: the optional
`class_idx_to_species_id.json` (the order of the released weights), else sorted folder names over all splits
(identical to ImageFolder's when every split has every species). `plantnet300K_species_id_2_name.json`, if
present, names the classes. Transforms as the official code: Resize(resize) → RandomCrop(crop) for training,
Resize(resize) → CenterCrop(crop) for evaluation, no flip; ImageNet statistics when `pretrained_stats`. Workers
return uint8 crops, normalised on the training device; `decode` picks the decoder (experiments/engine/decode.py:
`pil` is the exact path, the others are measured deviations).
`scale` < 1 keeps the first max(1, round(scale·n)) files of each species in each split (quick looks, smoke runs).
`expect_version: v1.1` refuses, in one line, a root whose species count or split sizes (counted before `scale`)
are not v1.1's (1,081 species; 243,916 / 31,118 / 31,112 images), naming the version found (v2.0 has 1,000
species); null skips the check (small fixtures).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from experiments.engine.data import Data, FolderSplit, Meta, class_counts, with_imbalance
from experiments.engine.decode import ImageView, check_decoder
from experiments.engine.errors import UserError

SPLITS = ("train", "val", "test")
IMAGE_EXT = (".jpg", ".jpeg", ".png")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PLANTNET = ((0.4425, 0.4695, 0.3266), (0.2353, 0.2219, 0.2325))
VERSIONS = {"v1.1": (1081, {"train": 243_916, "val": 31_118, "test": 31_112}), "v2.0": (1000, None)}


def declared_sizes() -> dict:
    """The split sizes the run plan reads (`sizes` of conf/dataset/plantnet300k.yaml): those of v1.1, the version
    the paper profile expects, kept once in `VERSIONS`."""
    return {**VERSIONS["v1.1"][1], "classes": VERSIONS["v1.1"][0], "source": "Pl@ntNet-300K v1.1 train / val / test"}


def find_split_root(root: Path) -> Path:
    for cand in (root / "images", root):
        if all((cand / s).is_dir() for s in SPLITS):
            return cand
    raise UserError(f"dataset.root={root} has neither images/{{train,val,test}}/ nor {{train,val,test}}/; "
                    f"unpack Pl@ntNet-300K v1.1 (Zenodo record 5645731, not 'latest') there or set dataset.root")


def list_split(split_dir: Path) -> dict[str, list[str]]:
    """species folder → sorted image paths."""
    out = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.is_dir():
            files = sorted(f.path for f in os.scandir(entry.path) if f.name.lower().endswith(IMAGE_EXT))
            out[entry.name] = files
    return out


def found_version(listed: dict[str, dict[str, list[str]]]) -> tuple[str | None, str]:
    """(known version whose species count and split sizes match, description of what was found)."""
    species = len(set().union(*(set(v) for v in listed.values())))
    sizes = {s: sum(len(f) for f in listed[s].values()) for s in SPLITS}
    seen = f"{species:,} species, train/val/test {sizes['train']:,} / {sizes['val']:,} / {sizes['test']:,}"
    for name, (n, split_sizes) in VERSIONS.items():
        if species == n and split_sizes in (None, sizes):
            return name, seen
    return None, seen


def check_version(listed: dict[str, dict[str, list[str]]], expect: str | None, base: Path) -> None:
    if expect is None:
        return
    found, seen = found_version(listed)
    if found != expect:
        n, sizes = VERSIONS[expect]
        want = f"{n:,} species" + (", " + " / ".join(f"{v:,}" for v in sizes.values()) if sizes else "")
        raise UserError(f"{base} holds Pl@ntNet-300K {found or 'of no known version'} ({seen}), not {expect} "
                        f"({want}); unpack {expect} (Zenodo record 5645731, not 'latest') or set "
                        f"dataset.expect_version=null")


def _read_json(path: Path):
    with open(path) as f:
        return json.load(f)


class PlantNet300K:
    def __init__(self, root: str, resize: int = 256, crop: int = 224, pretrained_stats: bool = True,
                 scale: float = 1.0, expect_version: str | None = None, imbalance: dict | None = None,
                 decode: str = "pil"):
        check_decoder(decode)
        self.decode = decode
        if not 0 < scale <= 1:
            raise UserError(f"dataset.scale={scale}: must be in (0, 1] (fraction of each species' images kept)")
        if crop > resize:
            raise UserError(f"dataset.crop={crop} > dataset.resize={resize}; crop must fit in the resized image")
        self.root = Path(root)
        self.imbalance = dict(imbalance) if imbalance else None
        self.resize, self.crop = int(resize), int(crop)
        self.stats = IMAGENET if pretrained_stats else PLANTNET
        if expect_version is not None and expect_version not in VERSIONS:
            raise UserError(f"dataset.expect_version={expect_version!r}: choose {' or '.join(VERSIONS)} or null "
                            f"(no check)")
        self.scale = float(scale)
        self.expect_version = expect_version

    def transforms(self) -> tuple[ImageView, ImageView]:
        """Train and eval views: Resize(resize) → RandomCrop / CenterCrop(crop) as uint8; normalised on the device."""
        return (ImageView(self.resize, self.crop, random=True, decode=self.decode),
                ImageView(self.resize, self.crop, random=False, decode=self.decode))

    def class_order(self, listed: dict[str, dict[str, list[str]]]) -> list[str]:
        idx_file = self.root / "class_idx_to_species_id.json"
        if idx_file.exists():
            mapping = _read_json(idx_file)
            return [str(mapping[str(i)]) for i in range(len(mapping))]
        return sorted(set().union(*(set(v) for v in listed.values())))

    def __call__(self) -> Data:
        base = find_split_root(self.root)
        listed = {s: list_split(base / s) for s in SPLITS}
        check_version(listed, self.expect_version, base)
        classes = self.class_order(listed)
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted(set().union(*(set(v) for v in listed.values())) - set(index))
        if unknown:
            raise UserError(f"species folders {unknown[:3]} are not in class_idx_to_species_id.json; "
                            f"use the v1.1 metadata that matches the images or remove the file")
        train_tf, eval_tf = self.transforms()
        splits = {}
        for s in SPLITS:
            files, labels = [], []
            for name, paths in listed[s].items():
                if self.scale < 1:
                    paths = paths[: max(1, round(len(paths) * self.scale))]
                files += paths
                labels += [index[name]] * len(paths)
            if not files:
                raise UserError(f"no images under {base / s}; expected {s}/<species_id>/*.jpg")
            splits[s] = FolderSplit(files, torch.tensor(labels, dtype=torch.long), train_tf if s == "train" else eval_tf)
        names_file = self.root / "plantnet300K_species_id_2_name.json"
        id2name = _read_json(names_file) if names_file.exists() else {}
        meta = Meta(num_classes=len(classes), class_names=[str(id2name.get(c, c)) for c in classes],
                    class_counts=class_counts(splits["train"].y, len(classes)), channels=3, image_size=self.crop,
                    mean=self.stats[0], std=self.stats[1], extras={"species_ids": classes, "root": str(base)})
        return with_imbalance(Data(train=splits["train"], val=splits["val"], test=splits["test"], meta=meta,
                                   augment=None), self.imbalance)
