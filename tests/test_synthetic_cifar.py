"""The CIFAR-100 stand-in carries the structure SimLoss exploits (mistakes stay within the superclass) and wears
CIFAR-100's names: class c is CIFAR-100's fine label c, its superclass CIFAR-100's coarse label."""
import pytest
import torch

from experiments.engine.errors import UserError
from image_classification.cifar import Cifar100
from image_classification.synthetic import SyntheticCifar, cifar100_classes, generate
from tests.helpers.formats import CIFAR100_COARSE, CIFAR100_FINE, write_cifar100

# coarse label of fine labels 0..99 in the real cifar-100-python pickles (as published, e.g. in the
# fine_to_coarse tables of public CIFAR-100 loaders); independent of the names the stand-in carries
REAL_COARSE_OF_FINE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18,
    17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5,
    8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]
SIMLOSS_MISSING = {"aquarium_fish", "keyboard", "pickup_truck", "sweet_pepper"}   # absent from word2vec (paper)


def test_generation_is_seeded_and_cached(tmp_path):
    a = SyntheticCifar(str(tmp_path), scale=0.1)()
    b = SyntheticCifar(str(tmp_path), scale=0.1)()
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert len(list(tmp_path.glob("synthetic_cifar_v*.pt"))) == 1
    c = SyntheticCifar(str(tmp_path / "other"), scale=0.1, seed=1)()
    assert not torch.equal(a.train.x, c.train.x)
    assert a.meta.num_classes == 100 and a.train.x.shape[1:] == (3, 32, 32)


def test_names_and_grouping_are_cifar100s(tmp_path):
    meta = SyntheticCifar(str(tmp_path), scale=0.1, image_size=8)().meta
    assert meta.class_names == CIFAR100_FINE and meta.superclass_names == CIFAR100_COARSE
    assert meta.superclass.tolist() == REAL_COARSE_OF_FINE
    assert meta.extras["query_words"][meta.class_names.index("maple_tree")] == "maple"   # official spelling
    names, superclass, _ = cifar100_classes(100)
    assert names == meta.class_names and torch.equal(superclass, meta.superclass)


def test_naming_keeps_each_class_its_images(tmp_path):
    """Generator class 5·s + j is the j-th member of superclass s: beaver (aquatic mammals) is generator class 0,
    worm (the last non-insect invertebrate) is 5·13 + 4."""
    ds = SyntheticCifar(str(tmp_path), scale=0.1, image_size=8)
    data, raw = ds(), generate(**ds.gen)
    for name, g in (("beaver", 0), ("worm", 5 * 13 + 4), ("willow_tree", 5 * 17 + 4)):
        label = CIFAR100_FINE.index(name)
        assert torch.equal(data.test.x[data.test.y == label], raw["x_test"][raw["y_test"] == g])


def test_the_96_class_subset_is_cifar100s(tmp_path):
    """dataset.classes=96 drops the four classes word2vec lacks and re-ranks, as the real reader does."""
    stand_in = SyntheticCifar(str(tmp_path / "s"), scale=0.1, image_size=8, classes=96)()
    real = Cifar100(str(write_cifar100(tmp_path / "c", 1, 1).parent), classes=96)()
    assert stand_in.meta.class_names == real.meta.class_names
    assert set(CIFAR100_FINE) - set(stand_in.meta.class_names) == SIMLOSS_MISSING
    assert torch.equal(stand_in.meta.superclass, real.meta.superclass)
    assert stand_in.meta.extras["query_words"] == real.meta.extras["query_words"]
    assert stand_in.meta.num_classes == 96 and int(stand_in.test.y.max()) == 95
    assert len(stand_in.test) == 96 * 2          # 20 test images per class × scale 0.1, for 96 classes
    full = SyntheticCifar(str(tmp_path / "s"), scale=0.1, image_size=8)()
    for name in ("apple", "worm"):              # the same images under the re-ranked label
        a = stand_in.test.x[stand_in.test.y == stand_in.meta.class_names.index(name)]
        assert torch.equal(a, full.test.x[full.test.y == CIFAR100_FINE.index(name)])


def test_layout_errors_name_the_option(tmp_path):
    with pytest.raises(UserError, match="dataset.classes=50"):
        SyntheticCifar(str(tmp_path), classes=50)
    with pytest.raises(UserError, match="dataset.class_vectors=glove-6b-50d needs class names"):
        SyntheticCifar(str(tmp_path), num_superclasses=2, class_vectors="glove-6b-50d")
    with pytest.raises(UserError, match="dataset.classes=96 needs CIFAR-100's layout"):
        SyntheticCifar(str(tmp_path), num_superclasses=2, classes=96)
    with pytest.raises(UserError, match="dataset.class_vectors='glove'"):
        SyntheticCifar(str(tmp_path), class_vectors="glove")
    small = SyntheticCifar(str(tmp_path), num_superclasses=2, scale=0.1, image_size=8)().meta   # CIFAR-10 layout
    assert small.class_names[:2] == ["class_000", "class_001"] and small.superclass.tolist() == [0] * 5 + [1] * 5


@pytest.mark.slow
def test_trained_ce_confuses_within_superclass_far_more_than_across(train_run):
    rec = train_run("dataset=synthetic_cifar", "loss=ce", "dataset.scale=1.0", "trainer.epochs=4",
                    "optim.lr=3e-3")
    m = rec["metrics"]
    # Of the misclassified test images, the share whose prediction is in the true superclass; 4/99 if mistakes
    # were spread uniformly over the other classes.
    assert m["test/failed_superclass_accuracy"] > 0.5 > 10 * (4 / 99)
    assert m["test/accuracy"] > 0.2
