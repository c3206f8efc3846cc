"""Pl@ntNet-300K v1.1 in its real on-disk format at its real counts, with tiny images (the rehearsal data of
`make rehearse`, experiments/drivers/rehearse.py); the pixels are random, so no number trained on it means
anything.

Written as the v1.1 archive unpacks, which average_k/plantnet.py reads: `images/{train,val,test}/<species_id>/
<image_id>.jpg`, `plantnet300K_metadata.json` (image id → species id, split, organ, author, license),
`plantnet300K_species_id_2_name.json` (species id → name) and `class_idx_to_species_id.json` (class index →
species id; the repository's file, the order of the released weights). Species ids are 7-digit numbers as the
real ones; each split's images are spread over the species with a long tail (the real set: "80 % of species
account for only 11 % of the images"; exponent 1.2 gives that), every species in every split.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from average_k.plantnet import SPLITS, VERSIONS
from experiments.engine.generated import Written, jpeg_pool, long_tail, new_tree

ORGANS = ("leaf", "flower", "fruit", "bark", "habit", "other")


def species_ids(n: int, seed: int) -> list[str]:
    """`n` distinct 7-digit species ids, in a seeded order (class order is then the sorted ids)."""
    rng = np.random.default_rng(seed)
    return [str(v) for v in rng.choice(np.arange(1_355_000, 1_400_000), size=n, replace=False)]


def write_plantnet300k(root: str, species: int | None = None, sizes: dict[str, int] | None = None,
                       image: int = 48, exponent: float = 1.2, seed: int = 0) -> Written:
    """Write the dataset at `root` (absent); `species` and `sizes` default to v1.1's (1,081; 243,916 / 31,118 /
    31,112). Images are `image`-px JPEGs (a few aspect ratios), drawn from a pool of distinct encodings."""
    n_species, declared = VERSIONS["v1.1"]
    species = species or n_species
    sizes = dict(sizes or declared)
    ids = species_ids(species, seed)
    pool = jpeg_pool(256, [(image, image * 3 // 4), (image * 3 // 4, image), (image, image)], seed)
    metadata, k = {}, 0
    with new_tree(root) as (tmp, out):
        for split in SPLITS:
            for sp, n in zip(ids, long_tail(sizes[split], species, 1, exponent)):
                folder = tmp / "images" / split / sp
                folder.mkdir(parents=True)
                for _ in range(int(n)):
                    image_id = hashlib.sha1(f"{seed}-{k}".encode()).hexdigest()
                    (folder / f"{image_id}.jpg").write_bytes(pool[k % len(pool)])
                    metadata[image_id] = {"species_id": sp, "split": split, "organ": ORGANS[k % len(ORGANS)],
                                          "author": f"author {k % 9973}", "license": "cc-by-sa"}
                    k += 1
        _write_json(tmp / "plantnet300K_metadata.json", metadata)
        _write_json(tmp / "plantnet300K_species_id_2_name.json", {sp: f"Species {sp} L." for sp in ids})
        _write_json(tmp / "class_idx_to_species_id.json", {str(i): sp for i, sp in enumerate(sorted(ids))})
    return out["written"]


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)
