"""Writers for small fixtures in the real on-disk formats (UTKFace, AFAD, CIFAR pickles, word vectors,
Pl@ntNet-300K folders, the raw Road Marking dataset).

Written independently of the readers, from the format descriptions, so tests check the readers against
the formats rather than against themselves.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

CIFAR100_SUPERCLASSES = {  # coarse name -> its five fine classes (CIFAR-100 website, torchvision spellings)
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_FINE = sorted(f for fs in CIFAR100_SUPERCLASSES.values() for f in fs)
CIFAR100_COARSE = sorted(CIFAR100_SUPERCLASSES)
CIFAR100_COARSE_OF = {f: CIFAR100_COARSE.index(c) for c, fs in CIFAR100_SUPERCLASSES.items() for f in fs}
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _jpeg(path: Path, size: tuple[int, int], value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value % 256, dtype=np.uint8)
    arr[:, : size[0] // 2, 0] = (value * 7) % 256
    Image.fromarray(arr).save(path, format="JPEG")


def write_utkface(root: Path, ages: Sequence[int], chip: bool = True, size: tuple[int, int] = (20, 24),
                  bad_names: Sequence[str] = ()) -> list[str]:
    """One image per entry of `ages` named `<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]`, plus `bad_names`
    (written as images too). Returns the good file names."""
    root = Path(root)
    names = []
    for i, age in enumerate(ages):
        name = f"{age}_{i % 2}_{i % 5}_2017011{i:09d}.jpg" + (".chip.jpg" if chip else "")
        _jpeg(root / name, size, age * 3 + i)
        names.append(name)
    for j, name in enumerate(bad_names):
        _jpeg(root / name, size, j)
    return names


def write_afad(root: Path, counts: dict[tuple[int, str], int], size: tuple[int, int] = (20, 24),
               stray: Sequence[str] = ()) -> int:
    """AFAD-Full layout `<age>/<111|112>/<id>.jpg` with counts[(age, gender)] images; `stray` relative paths
    are written as images outside the layout. Returns the number of layout images."""
    root = Path(root)
    n = 0
    for (age, gender), k in counts.items():
        for i in range(k):
            _jpeg(root / str(age) / gender / f"{100000 + n}-{i}.jpg", size, age + i)
            n += 1
    for rel in stray:
        _jpeg(root / rel, size, 1)
    return n


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_images(rng: np.random.RandomState, labels: Sequence[int]) -> np.ndarray:
    """N×3072 uint8 (row-major 3×32×32), each image a flat colour depending on its label plus noise."""
    labels = np.asarray(labels)
    base = (labels[:, None] * 37) % 200 + 20
    return np.clip(base + rng.randint(0, 30, size=(len(labels), 3072)), 0, 255).astype(np.uint8)


def write_cifar100(root: Path, n_train_per_class: int, n_test_per_class: int, seed: int = 0) -> Path:
    """`root/cifar-100-python/{train,test,meta}` with the real class names and coarse labels."""
    rng = np.random.RandomState(seed)
    base = Path(root) / "cifar-100-python"
    for split, n in (("train", n_train_per_class), ("test", n_test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), n))
        coarse = [CIFAR100_COARSE_OF[CIFAR100_FINE[f]] for f in fine]
        _pickle(base / split, {b"filenames": [f"{CIFAR100_FINE[f]}_s_{i:06d}.png".encode() for i, f in enumerate(fine)],
                               b"batch_label": f"{split} batch".encode(),
                               b"fine_labels": [int(f) for f in fine], b"coarse_labels": coarse,
                               b"data": _cifar_images(rng, fine)})
    _pickle(base / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
                            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE]})
    return base


def write_cifar10(root: Path, n_per_batch_per_class: int, n_test_per_class: int, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`."""
    rng = np.random.RandomState(seed)
    base = Path(root) / "cifar-10-batches-py"
    files = [(f"data_batch_{i}", n_per_batch_per_class) for i in range(1, 6)] + [("test_batch", n_test_per_class)]
    for name, n in files:
        y = rng.permutation(np.repeat(np.arange(10), n))
        _pickle(base / name, {b"batch_label": name.encode(), b"labels": [int(v) for v in y],
                              b"data": _cifar_images(rng, y),
                              b"filenames": [f"{CIFAR10_NAMES[v]}_s_{name}_{i:05d}.png".encode()
                                             for i, v in enumerate(y)]})
    _pickle(base / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                    b"num_cases_per_batch": 10 * n_per_batch_per_class, b"num_vis": 3072})
    return base


def write_word2vec_text(path: Path, vectors: dict[str, Sequence[float]]) -> Path:
    dim = len(next(iter(vectors.values())))
    lines = [f"{len(vectors)} {dim}"] + [w + " " + " ".join(repr(float(v)) for v in vec) + " "
                                         for w, vec in vectors.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def write_word2vec_binary(path: Path, vectors: dict[str, Sequence[float]], newline: bool = True) -> Path:
    """gensim/word2vec.c layout: header, then `word<space><dim float32 LE>` (+ "\\n" when `newline`)."""
    dim = len(next(iter(vectors.values())))
    with open(path, "wb") as f:
        f.write(f"{len(vectors)} {dim}\n".encode())
        for w, vec in vectors.items():
            f.write(w.encode("utf-8") + b" " + struct.pack(f"<{dim}f", *vec) + (b"\n" if newline else b""))
    return Path(path)


def write_glove(path: Path, vectors: dict[str, Sequence[float]]) -> Path:
    lines = [w + " " + " ".join(f"{float(v):.8f}" for v in vec) for w, vec in vectors.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


PLANTNET_SPECIES = ["1355868", "1355920", "1363227"]


def make_plantnet(root, images=True, per_class=(3, 1, 1), size=(40, 30)):
    """Pl@ntNet-300K folders of random JPEGs; class c has c extra training images, so counts tell classes apart."""
    from PIL import Image

    base = root / "images" if images else root
    rng = np.random.RandomState(0)
    for split, n in zip(("train", "val", "test"), per_class):
        for c, sp in enumerate(PLANTNET_SPECIES):
            d = base / split / sp
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n + (c if split == "train" else 0)):
                Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    return root


# class -> number of annotations; "car" and "X-crossing" are among the 17 dropped classes
FIXTURE = {"left": 10, "right": 10, "bike": 6, "car": 3, "X-crossing": 2}


def write_raw(root: Path, comma: bool = True) -> Path:
    """A raw RoadMarkingDataset folder: 3 scene images and one annotation line per road marking."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for s in range(3):
        arr = rng.randint(0, 255, size=(120, 160, 3)).astype(np.uint8)
        Image.fromarray(arr).save(root / f"scene{s}.jpg", quality=95)
    lines, i = [], 0
    for cls, n in FIXTURE.items():
        for _ in range(n):
            x0, y0 = 5 + 3 * (i % 10), 7 + 2 * (i % 7)
            pts = [x0, y0 + 1.5, x0 + 40, y0, x0 + 41.7, y0 + 30, x0 - 1, y0 + 29]  # a skewed quadrilateral
            fname = f"scene{i % 3}.png"  # the official script reads `.png` names as `.jpg`
            fields = [f"{p}" for p in pts] + [cls, fname]
            lines.append(",".join(fields) if comma else " ".join(fields))
            i += 1
    (root / "dataset_annotations.txt").write_text("\n".join(lines) + "\n")
    return root
