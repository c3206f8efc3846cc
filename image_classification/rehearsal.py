"""CIFAR-10 and CIFAR-100 in their real python-pickle format at their real counts, and Road Marking through its
official preprocessing, random pixels (the rehearsal data of `make rehearse`, experiments/drivers/rehearse.py):
nothing trained on it means anything.

As the python-version archives unpack, which image_classification/cifar.py reads: `cifar-100-python/{train,test,
meta}` (b"data" N×3072 uint8, b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"; meta's
b"fine_label_names" / b"coarse_label_names" alphabetical) and `cifar-10-batches-py/{data_batch_1..5,test_batch,
batches.meta}` (b"labels", 10,000 images per batch). Pickle protocol 2, bytes keys, as the originals. Every class
has the same count (500 / 100 per class for CIFAR-100, 5,000 / 1,000 for CIFAR-10), as in the real sets.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from experiments.engine.generated import Written, jpeg_pool, long_tail, new_tree
from image_classification.road_marking import DROPPED, prepare
from image_classification.synthetic import CIFAR100_GROUPS

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(rng: np.random.Generator, classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.repeat(np.arange(classes), per_class))
    return rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), labels


def write_cifar100(root: str, train_per_class: int = 500, test_per_class: int = 100, seed: int = 0) -> Written:
    """`root` (absent) becomes a `cifar-100-python` folder."""
    fine = sorted(f for group in CIFAR100_GROUPS.values() for f in group)
    coarse = sorted(CIFAR100_GROUPS)
    coarse_of = np.array([coarse.index(next(g for g, fs in CIFAR100_GROUPS.items() if f in fs)) for f in fine])
    rng = np.random.default_rng(seed)
    with new_tree(root) as (tmp, out):
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            x, y = _batch(rng, 100, n)
            _dump(tmp / split, {b"filenames": [f"{fine[v]}_s_{i:06d}.png".encode() for i, v in enumerate(y)],
                                b"batch_label": f"{split}ing batch 1 of 1".encode(),
                                b"fine_labels": y.tolist(), b"coarse_labels": coarse_of[y].tolist(), b"data": x})
        _dump(tmp / "meta", {b"fine_label_names": [n.encode() for n in fine],
                             b"coarse_label_names": [n.encode() for n in coarse]})
    return out["written"]


def write_cifar10(root: str, batch_per_class: int = 1000, test_per_class: int = 1000, seed: int = 0) -> Written:
    """`root` (absent) becomes a `cifar-10-batches-py` folder: five training batches and the test batch."""
    rng = np.random.default_rng(seed)
    files = [(f"data_batch_{i}", batch_per_class, f"training batch {i} of 5") for i in range(1, 6)]
    with new_tree(root) as (tmp, out):
        for name, n, label in files + [("test_batch", test_per_class, "testing batch 1 of 1")]:
            x, y = _batch(rng, 10, n)
            _dump(tmp / name, {b"batch_label": label.encode(), b"labels": y.tolist(), b"data": x,
                               b"filenames": [f"{CIFAR10_NAMES[v]}_s_{i:06d}.png".encode() for i, v in enumerate(y)]})
        _dump(tmp / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                     b"num_cases_per_batch": 10 * batch_per_class, b"num_vis": 3072})
    return out["written"]


def write_road_marking(root: str, images: int = 1443, classes: int = 10, per_dropped: int = 3, seed: int = 0,
                       side: tuple[int, int] = (160, 120)) -> Written:
    """`root` (absent) becomes the prepared Road Marking folder (`{train,valid,test}/<class>/<n>.jpg`), made the way
    a user makes it: a raw `RoadMarkingDataset/` (`dataset_annotations.txt`, one `x1,y1,…,x4,y4,class,filename`
    line per marking, and the images) is written beside it and run through `road_marking.prepare`, then removed.
    The real class list and sizes are not known here ("over 1400 labeled images", Wu & Ranganathan 2012): `images`
    markings of `classes` kept classes on a long tail (class names `marking_00`…), plus `per_dropped` of each of
    the 17 classes the official code drops, one marking per image."""
    import shutil
    import tempfile

    kept = [f"marking_{i:02d}" for i in range(classes)]
    labels = np.repeat(np.arange(classes), long_tail(images, classes, least=10))
    names = [kept[i] for i in labels] + [c for c in DROPPED for _ in range(per_dropped)]
    rng = np.random.default_rng(seed)
    pool = jpeg_pool(64, [side], seed)
    raw_parent = Path(tempfile.mkdtemp(prefix=".road_marking_raw.", dir=Path(root).parent))
    try:
        raw = raw_parent / "RoadMarkingDataset"
        raw.mkdir()
        lines = []
        for i, cls in enumerate(names):
            fname = f"roadmark_{i:05d}.jpg"
            (raw / fname).write_bytes(pool[i % len(pool)])
            x0, y0 = (int(v) for v in rng.integers(0, (side[0] // 2, side[1] // 2)))
            x1, y1 = x0 + int(rng.integers(8, side[0] // 2)), y0 + int(rng.integers(8, side[1] // 2))
            corners = (x0, y0, x1, y0, x1, y1, x0, y1)
            lines.append(",".join(map(str, corners)) + f",{cls},{fname}")
        (raw / "dataset_annotations.txt").write_text("\n".join(lines) + "\n")
        with new_tree(root) as (tmp, out):
            prepare(raw, tmp, seed=seed, log=lambda *_: None)
        return out["written"]
    finally:
        shutil.rmtree(raw_parent, ignore_errors=True)
