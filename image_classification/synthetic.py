"""`synthetic_cifar`: a seeded offline stand-in for CIFAR-100 (or CIFAR-10) with superclass structure.

Each superclass has a smooth random colour pattern; each class adds a weaker pattern of its own; each image is
its class pattern, randomly shifted, with per-image contrast/brightness jitter and pixel noise. Classes of one
superclass share most of their appearance, so a classifier confuses them with each other far more often than
with classes of other superclasses — the structure SimLoss and hierarchy-aware metrics exploit.

With CIFAR-100's layout (20 superclasses of 5, the default) the stand-in wears CIFAR-100's names: label c is
CIFAR-100's fine label c (`CIFAR100_FINE`, the pickles' alphabetical order) and its superclass is CIFAR-100's
coarse label, so real word vectors of the class names apply to it as to the real data, and `classes=96` takes
SimLoss's 96-class subset as `Cifar100(classes=96)` does. The images of a class are unchanged by the naming:
generator class 5·s + j becomes the j-th (alphabetical) member of CIFAR-100 superclass s.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from experiments.engine.stand_in import generator_sources, render, smooth_patterns
from experiments.engine.data import BatchAugment, Meta, TensorSplit, assemble, cache_file, cache_key, cached
from experiments.engine.errors import UserError
from image_classification.cifar import OFFICIAL_QUERY_WORDS, SIMLOSS_DROPPED
from image_classification.wordvectors import NAMED_SOURCES, is_named_source, write_word2vec_text

GENERATOR_VERSION = 1


def generate(num_superclasses: int, classes_per_superclass: int, n_train_per_class: int, n_test_per_class: int,
             image_size: int, seed: int, superclass_strength: float, class_strength: float, noise: float,
             max_shift: int) -> dict:
    rng = np.random.RandomState(seed)
    k = num_superclasses * classes_per_superclass
    sup = smooth_patterns(rng, num_superclasses, image_size, grid=4)
    own = smooth_patterns(rng, k, image_size, grid=4)
    superclass = np.repeat(np.arange(num_superclasses), classes_per_superclass)
    protos = superclass_strength * sup[superclass] + class_strength * own  # (k, 3, s, s)

    def draw(n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(k), n_per_class)
        n = len(y)
        img = render(rng, protos[y], max_shift, contrast=0.3, brightness=0.3, noise=noise)
        perm = rng.permutation(n)
        return img[perm], y[perm]

    xtr, ytr = draw(n_train_per_class)
    xte, yte = draw(n_test_per_class)
    return {"x_train": torch.from_numpy(xtr), "y_train": torch.from_numpy(ytr),
            "x_test": torch.from_numpy(xte), "y_test": torch.from_numpy(yte),
            "superclass": torch.from_numpy(superclass), "prototypes": torch.from_numpy(protos)}


VECTOR_KINDS = ("word2vec_like", "prototypes")   # invented class vectors; named sources (NAMED_SOURCES) are real

# CIFAR-100's superclasses and their classes (the table on the CIFAR page) in the spellings of the python pickles'
# meta file (coarse_label_names, fine_label_names); both name lists are alphabetical there, so label = rank.
CIFAR100_GROUPS = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_COARSE = tuple(CIFAR100_GROUPS)
CIFAR100_FINE = tuple(sorted(f for members in CIFAR100_GROUPS.values() for f in members))
# generator class 5·s + j (j-th member of superclass s) -> CIFAR-100 fine label
CIFAR100_ORDER = tuple(CIFAR100_FINE.index(f) for members in CIFAR100_GROUPS.values() for f in members)


def cifar100_classes(classes: int = 100) -> tuple[list[str], torch.Tensor, list[str]]:
    """CIFAR-100's class names in label order, their superclass labels and the word2vec query words of the official
    SimLoss code; `classes=96` drops SIMLOSS_DROPPED and re-ranks the rest, as `Cifar100(classes=96)`."""
    if classes not in (100, 96):
        raise UserError(f"dataset.classes={classes}: the CIFAR-100 stand-in has 100 classes, or 96 (SimLoss's "
                        f"subset); choose 100 or 96")
    coarse = {f: s for s, members in enumerate(CIFAR100_GROUPS.values()) for f in members}
    names = [f for f in CIFAR100_FINE if classes == 100 or f not in SIMLOSS_DROPPED]
    return (names, torch.tensor([coarse[f] for f in names], dtype=torch.long),
            [OFFICIAL_QUERY_WORDS.get(f, f) for f in names])


def word2vec_like_vectors(superclass: np.ndarray, seed: int, dim: int = 100, shared: float = 0.11,
                          group: float = 0.05, superclass_share: float = 0.30,
                          loading: tuple[float, float] = (0.1, 1.9), groups: int = 4) -> np.ndarray:
    """Invented class vectors whose cosines follow assumed word2vec statistics for CIFAR-100 names
    (`dataset.class_vectors=word2vec_like`; docs/simloss.md, "Invented S"). The real GloVe vectors of the names
    (`glove-6b-50d`) are more similar within and across superclasses than this calibration assumed.

    v_c = √shared·g + √group·G[group of its superclass] + √superclass_share·w_c·Z[superclass] + √rest·e_c, with
    standard normal g, G, Z, e in `dim` dimensions, superclasses dealt round-robin into `groups` (animals /
    objects / scenes-like blocks) and a per-class loading w_c ~ U(loading) on its superclass. Expected cosines
    ≈ shared + group within a group of superclasses, + superclass_share inside a superclass; the finite `dim`
    and the loadings give the spread (some between-superclass pairs negative).
    """
    rng = np.random.RandomState(seed)
    sup = np.asarray(superclass)
    nsup, k = int(sup.max()) + 1, len(sup)
    block = rng.permutation(nsup) % groups
    rest = 1.0 - shared - group - superclass_share
    w = rng.uniform(*loading, size=k)[:, None]
    g, blocks, supers, own = (rng.randn(n, dim) for n in (1, groups, nsup, k))
    return (np.sqrt(shared) * g + np.sqrt(group) * blocks[block[sup]] + np.sqrt(superclass_share) * w * supers[sup]
            + np.sqrt(rest) * own)


class SyntheticCifar:
    """Build the stand-in; `scale` multiplies the per-class image counts (profiles shrink it).

    class_vectors: the vectors a SimLoss run with `loss.embeddings=null` uses (`meta.extras["class_vectors"]`): a
    named source of real word vectors of the class names (`glove-6b-50d`, read from its installed package when a
    loss asks; CIFAR-100 layout only) or invented vectors written next to the cache (`word2vec_like`, `prototypes`).
    classes: None = every generated class; 100, or 96 = SimLoss's subset (CIFAR-100 layout only).
    """

    def __init__(self, root: str, num_superclasses: int = 20, classes_per_superclass: int = 5,
                 n_train_per_class: int = 60, n_test_per_class: int = 20, image_size: int = 32, seed: int = 0,
                 superclass_strength: float = 1.0, class_strength: float = 0.45, noise: float = 0.6,
                 max_shift: int = 2, scale: float = 1.0, val_fraction: float = 0.1, val_per_class: int = 0,
                 split_seed: int = 0, imbalance: dict | None = None, crop_padding: int = 2, flip: bool = True,
                 class_vectors: str = "word2vec_like", classes: int | None = None):
        if scale <= 0:
            raise ValueError(f"scale={scale}: must be > 0")
        if class_vectors not in VECTOR_KINDS and not is_named_source(class_vectors):
            raise UserError(f"dataset.class_vectors={class_vectors!r}: choose real word vectors "
                            f"({', '.join(NAMED_SOURCES)}) or invented ones ({' or '.join(VECTOR_KINDS)})")
        self.cifar100 = (num_superclasses, classes_per_superclass) == (20, 5)
        layout = f"num_superclasses={num_superclasses}, classes_per_superclass={classes_per_superclass}"
        if not self.cifar100 and is_named_source(class_vectors):
            raise UserError(f"dataset.class_vectors={class_vectors} needs class names, which the stand-in has only "
                            f"in CIFAR-100's layout (20 superclasses of 5, not {layout}); use word2vec_like")
        if classes is not None:
            if not self.cifar100:
                raise UserError(f"dataset.classes={classes} needs CIFAR-100's layout (20 superclasses of 5, not "
                                f"{layout}); drop dataset.classes")
            cifar100_classes(classes)   # validates: 100 or 96
        self.vector_kind, self.classes = class_vectors, classes
        self.root = Path(root)
        self.gen = dict(num_superclasses=num_superclasses, classes_per_superclass=classes_per_superclass,
                        n_train_per_class=max(2, int(round(n_train_per_class * scale))),
                        n_test_per_class=max(1, int(round(n_test_per_class * scale))), image_size=image_size,
                        seed=seed, superclass_strength=superclass_strength, class_strength=class_strength,
                        noise=noise, max_shift=max_shift)
        self.split = dict(val_fraction=val_fraction, val_per_class=val_per_class, split_seed=split_seed,
                          imbalance=dict(imbalance) if imbalance else None)
        self.augment = BatchAugment(crop_padding=crop_padding, flip=flip)

    @property
    def cache_path(self) -> Path:
        return cache_file(self.root / f"synthetic_cifar_v{GENERATOR_VERSION}_{cache_key(**self.gen)}.pt",
                          generator_sources(__file__))

    def class_vectors(self, class_names: list[str], prototypes: torch.Tensor, superclass: torch.Tensor) -> Path:
        """word2vec text file of invented class vectors, one per generator class (rows in generator order):
        `word2vec_like` (seeded, calibrated profile) or `prototypes` (the class prototypes 8×8-pooled: cosine
        ≈ 0.84 within a superclass, ≈ 0 across)."""
        path = self.cache_path.with_suffix(f".{self.vector_kind}.vectors.txt")
        if not path.exists():
            if self.vector_kind == "prototypes":
                vecs = torch.nn.functional.adaptive_avg_pool2d(prototypes.float(), 8).flatten(1).numpy()
            else:
                vecs = word2vec_like_vectors(superclass.numpy(), self.gen["seed"])
            write_word2vec_text(path, class_names, vecs)
        return path

    def generator_names(self) -> list[str]:
        """The name of each generator class 5·s + j: CIFAR-100's j-th member of superclass s, or class_<index>."""
        if self.cifar100:
            return [CIFAR100_FINE[f] for f in CIFAR100_ORDER]
        return [f"class_{c:03d}" for c in range(self.gen["num_superclasses"] * self.gen["classes_per_superclass"])]

    def _labels(self, gen_names: list[str]) -> tuple[torch.Tensor, list[str], torch.Tensor, list[str], list | None]:
        """(label of each generator class, −1 when dropped; class names, superclasses and superclass names in
        label order; the official SimLoss query words, or None without CIFAR-100 names)."""
        if not self.cifar100:
            k, nsup = len(gen_names), self.gen["num_superclasses"]
            return (torch.arange(k), gen_names, torch.arange(k) // self.gen["classes_per_superclass"],
                    [f"super_{s:02d}" for s in range(nsup)], None)
        names, superclass, queries = cifar100_classes(self.classes or 100)
        rank = {n: i for i, n in enumerate(names)}
        return torch.tensor([rank.get(n, -1) for n in gen_names]), names, superclass, list(CIFAR100_COARSE), queries

    def __call__(self):
        raw = cached(self.cache_path, lambda: generate(**self.gen))
        gen_names = self.generator_names()
        label_of, names, superclass, superclass_names, queries = self._labels(gen_names)
        kept = label_of >= 0
        prototypes = raw["prototypes"].new_zeros((len(names), *raw["prototypes"].shape[1:]))
        prototypes[label_of[kept]] = raw["prototypes"][kept]
        extras = {"prototypes": prototypes}
        if is_named_source(self.vector_kind):
            extras["class_vectors"] = self.vector_kind          # read by the loss from the installed package
        else:                                                   # every generator class, so one file serves 96 and 100
            path = str(self.class_vectors(gen_names, raw["prototypes"], raw["superclass"]))
            extras.update(class_vectors=path, class_vectors_path=path)
        if queries is not None:
            extras["query_words"] = queries
        meta = Meta(num_classes=len(names), class_names=names, class_counts=torch.zeros(len(names), dtype=torch.long),
                    channels=3, image_size=self.gen["image_size"], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                    superclass=superclass.long(), superclass_names=superclass_names, natural_similarity="superclass",
                    extras=extras)
        files = [f"img_{i:06d}.png" for i in range(len(raw["y_train"]))]
        pool = _relabelled(raw["x_train"], raw["y_train"], label_of, files)
        test = _relabelled(raw["x_test"], raw["y_test"], label_of)
        return assemble(pool, test, meta, augment=self.augment, **self.split)


def _relabelled(x: torch.Tensor, y: torch.Tensor, label_of: torch.Tensor,
                names: list[str] | None = None) -> TensorSplit:
    """The split with generator labels mapped through `label_of`, samples of dropped classes (−1) left out."""
    y = label_of[y]
    if bool((y >= 0).all()):
        return TensorSplit(x, y, names)
    idx = torch.nonzero(y >= 0).flatten()
    return TensorSplit(x[idx], y[idx], [names[i] for i in idx.tolist()] if names is not None else None)
