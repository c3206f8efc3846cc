"""CIFAR-10/100 readers on fixture pickles in the real format; the synthetic_cifar class-vector file."""
import numpy as np
import pytest
import torch

from experiments.engine.errors import UserError
from image_classification.cifar import Cifar10, Cifar100
from image_classification.similarity import embedding_cosine
from image_classification.synthetic import SyntheticCifar
from image_classification.wordvectors import read_vectors
from tests.helpers.formats import (
    CIFAR10_NAMES,
    CIFAR100_COARSE,
    CIFAR100_COARSE_OF,
    CIFAR100_FINE,
    write_cifar10,
    write_cifar100,
)

DROPPED = {"aquarium_fish", "keyboard", "pickup_truck", "sweet_pepper"}


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("c100")
    write_cifar100(root, n_train_per_class=10, n_test_per_class=3)
    return root


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10")
    write_cifar10(root, n_per_batch_per_class=4, n_test_per_class=5)
    return root


def test_cifar100_counts_labels_superclasses(cifar100_root):
    data = Cifar100(str(cifar100_root), val_fraction=0.1, split_seed=3)()
    m = data.meta
    assert m.num_classes == 100 and m.class_names == CIFAR100_FINE
    assert (len(data.train), len(data.val), len(data.test)) == (900, 100, 300)
    assert m.superclass_names == CIFAR100_COARSE and m.natural_similarity == "superclass"
    assert [CIFAR100_COARSE[s] for s in m.superclass.tolist()] == \
        [CIFAR100_COARSE[CIFAR100_COARSE_OF[n]] for n in CIFAR100_FINE]
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (3, 32, 32)
    assert m.class_counts.sum() == 900
    assert torch.equal(torch.bincount(data.test.y, minlength=100), torch.full((100,), 3))
    assert m.extras["query_words"][CIFAR100_FINE.index("maple_tree")] == "maple"


def test_cifar100_images_and_labels_survive_decoding(cifar100_root):
    import pickle

    with open(cifar100_root / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    data = Cifar100(str(cifar100_root))()
    first = np.asarray(raw[b"data"][0], dtype=np.uint8).reshape(3, 32, 32)
    assert np.array_equal(data.test.x[0].numpy(), first)
    assert data.test.y[:20].tolist() == raw[b"fine_labels"][:20]


def test_cifar100_96_classes_drop_and_rerank(cifar100_root):
    data = Cifar100(str(cifar100_root), classes=96, val_fraction=0.1)()
    m = data.meta
    kept = [n for n in CIFAR100_FINE if n not in DROPPED]
    assert m.num_classes == 96 and m.class_names == kept
    assert (len(data.train) + len(data.val), len(data.test)) == (960, 288)
    assert int(data.train.y.max()) == 95 and int(data.test.y.max()) == 95
    sizes = torch.bincount(m.superclass, minlength=20)
    four = {CIFAR100_COARSE[i] for i in torch.nonzero(sizes == 4).flatten().tolist()}
    assert four == {"fish", "fruit_and_vegetables", "household_electrical_devices", "vehicles_1"}
    assert data.test.names is None or all(n.split("_s_")[0] in kept for n in data.test.names)
    names_by_label = {}
    for label, name in zip(data.train.y.tolist(), data.train.names):
        names_by_label.setdefault(label, set()).add(name.split("_s_")[0])
    assert all(names == {kept[label]} for label, names in names_by_label.items())


def test_cifar100_val_per_class_and_imbalance(cifar100_root):
    data = Cifar100(str(cifar100_root), val_fraction=0.0, val_per_class=2)()
    assert len(data.val) == 200 and torch.equal(torch.bincount(data.val.y), torch.full((100,), 2))
    imb = Cifar100(str(cifar100_root), val_fraction=0.0, val_per_class=2, imbalance={"ratio": 4})()
    counts = imb.meta.class_counts
    assert counts[0] == 8 and counts[-1] == 2 and len(imb.test) == 300


def test_cifar10_counts_and_labels(cifar10_root):
    data = Cifar10(str(cifar10_root), val_fraction=0.1, split_seed=0)()
    m = data.meta
    assert m.class_names == CIFAR10_NAMES and m.superclass is None and m.natural_similarity is None
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 50)
    assert torch.equal(torch.bincount(data.test.y, minlength=10), torch.full((10,), 5))
    assert all(CIFAR10_NAMES[y] == n.split("_s_")[0] for y, n in zip(data.train.y.tolist(), data.train.names))


def test_split_is_seeded(cifar10_root):
    a = Cifar10(str(cifar10_root), split_seed=1)()
    b = Cifar10(str(cifar10_root), split_seed=1)()
    c = Cifar10(str(cifar10_root), split_seed=2)()
    assert a.val.names == b.val.names and a.val.names != c.val.names


def test_missing_files_are_user_errors(tmp_path, cifar100_root):
    with pytest.raises(UserError, match="dataset.download"):
        Cifar100(str(tmp_path))()
    with pytest.raises(UserError, match="dataset.classes"):
        Cifar100(str(cifar100_root), classes=50)
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        Cifar10(str(tmp_path))()


def test_root_may_point_at_the_archive_folder(cifar100_root):
    data = Cifar100(str(cifar100_root / "cifar-100-python"))()
    assert len(data.test) == 300


def test_synthetic_cifar_writes_class_vectors(tmp_path):
    data = SyntheticCifar(str(tmp_path), scale=0.1, image_size=16)()
    path = data.meta.extras["class_vectors_path"]
    vecs = read_vectors(path)
    assert sorted(vecs) == data.meta.class_names
    cos, _ = embedding_cosine(path, data.meta.class_names)
    sup = data.meta.superclass
    same = (sup[:, None] == sup[None, :]) & ~torch.eye(100, dtype=torch.bool)
    other = sup[:, None] != sup[None, :]
    assert cos[same].mean() > 0.3 > 0.2 > cos[other].mean()   # the word2vec-like calibration (docs/simloss.md)
