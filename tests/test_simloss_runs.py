"""One-epoch runs through the engine: real-format fixtures, the stand-ins, and the SimLoss presets."""
import math
from pathlib import Path

import pytest
import torch

from experiments.engine.config import build_components
from experiments.engine.errors import UserError
from tests.helpers.formats import (
    write_afad,
    write_cifar10,
    write_cifar100,
    write_utkface,
)

QUICK = ("trainer.epochs=1", "trainer.progress=off", "trainer.num_workers=0", "trainer.cpu_threads=1")


def real(*overrides):
    """Overrides for a real-format dataset: the smoke profile's `dataset.scale` is for stand-ins only."""
    return QUICK + overrides


def assert_completed(record, *metrics):
    assert record["status"] == "completed"
    for name in metrics:
        assert name in record["metrics"] and math.isfinite(record["metrics"][name]), name


def test_utkface_fixture_one_epoch_with_paper_model(train_run, tmp_path):
    root = tmp_path / "UTKFace"
    write_utkface(root, [1, 2, 3, 20, 21, 22, 25, 30, 33, 40, 50, 60, 70, 80, 89, 90] * 2,
                  bad_names=["61_1_20170109142408075.jpg.chip.jpg", "100_0_0_20170101.jpg.chip.jpg"])
    rec = train_run(*real("dataset=utkface", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'c'}",
                          "model=simloss_age_cnn", "loss=simloss", "trainer.select_metric=val/mae",
                          "trainer.batch_size=8"), shrink=False)
    assert_completed(rec, "test/mae", "test/mse", "test/mae_expected", "test/accuracy")
    assert (rec["data"]["n_train"], rec["data"]["n_val"], rec["data"]["n_test"]) == (19, 6, 7)
    assert rec["data"]["num_classes"] == 90


def test_afad_fixture_one_epoch(train_run, tmp_path):
    root = tmp_path / "AFAD-Full"
    write_afad(root, {(18, "111"): 4, (18, "112"): 3, (25, "111"): 5, (40, "112"): 4, (60, "111"): 4})
    rec = train_run(*real("dataset=afad", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'c'}",
                          "model=small_cnn", "loss=simloss", "loss.r=0.7", "trainer.select_metric=val/mae"),
                    shrink=False)
    assert_completed(rec, "test/mae", "test/mae_mistakes")
    assert rec["data"]["n_train"] + rec["data"]["n_val"] + rec["data"]["n_test"] == 20


@pytest.mark.parametrize("classes, similarity", [(96, "superclass"), (100, "identity")])
def test_cifar100_fixture_one_epoch(train_run, tmp_path, classes, similarity):
    write_cifar100(tmp_path, n_train_per_class=4, n_test_per_class=2)
    rec = train_run(*real("dataset=cifar100", f"dataset.root={tmp_path}", f"dataset.classes={classes}",
                          "model=lenet", "loss=simloss", f"loss.similarity={similarity}"), shrink=False)
    assert_completed(rec, "test/accuracy", "test/superclass_accuracy", "test/mistake_severity")
    assert rec["data"]["num_classes"] == classes and rec["data"]["n_test"] == 2 * classes
    assert rec["data"]["n_val"] == round(0.1 * 4 * classes)


def test_cifar10_fixture_one_epoch(train_run, tmp_path):
    write_cifar10(tmp_path, n_per_batch_per_class=2, n_test_per_class=3)
    rec = train_run(*real("dataset=cifar10", f"dataset.root={tmp_path}", "loss=ce"), shrink=False)
    assert_completed(rec, "test/accuracy")
    assert (rec["data"]["n_train"], rec["data"]["n_val"], rec["data"]["n_test"]) == (90, 10, 30)


def test_simloss_on_cifar10_needs_a_named_similarity(compose, tmp_path):
    write_cifar10(tmp_path, n_per_batch_per_class=1, n_test_per_class=1)
    cfg, _ = compose(*real("dataset=cifar10", f"dataset.root={tmp_path}", "loss=simloss"), shrink=False)
    with pytest.raises(UserError, match="natural similarity"):
        build_components(cfg)


def test_simloss_age_preset(train_run):
    rec = train_run("experiment=simloss_age", "loss.r=0.5")
    assert_completed(rec, "test/mae", "test/mae_expected", "test/mae_mistakes")
    assert rec["config"]["trainer"]["select_metric"] == "val/mae"


def test_simloss_cifar_with_the_invented_class_vectors(train_run, compose):
    """The invented word2vec-like vectors stay an option (the default is the real GloVe S: tests/test_glove.py)."""
    invented = ("dataset.class_vectors=word2vec_like", "dataset.classes=100")
    rec = train_run("experiment=simloss_cifar", "loss.lower_bound=0.2", *invented)
    assert_completed(rec, "test/superclass_accuracy", "test/failed_superclass_accuracy")
    cfg, _ = compose("experiment=simloss_cifar", "loss.lower_bound=0.2", *invented)
    data, loss, _, _ = build_components(cfg)
    assert loss.source["file"] == str(Path(data.meta.extras["class_vectors_path"]).resolve())
    sup = data.meta.superclass
    same = (sup[:, None] == sup[None, :]) & ~torch.eye(100, dtype=torch.bool)
    other = sup[:, None] != sup[None, :]
    within, between = loss.similarity[same].mean(), loss.similarity[other].mean()
    assert within > 0.15 > between and within > 3 * between   # calibrated word2vec-like profile (docs/simloss.md)


def test_natural_similarity_of_the_stand_ins(compose):
    cfg, _ = compose("dataset=synthetic_cifar", "loss=simloss", "loss.superclass_sim=0.25")
    _, loss, _, _ = build_components(cfg)
    assert loss.source["kind"] == "superclass" and set(loss.similarity.unique().tolist()) == {0.0, 0.25, 1.0}
    cfg, _ = compose("dataset=synthetic_age", "loss=simloss", "loss.r=0.5")
    _, loss, _, _ = build_components(cfg)
    assert loss.source["kind"] == "ordinal" and loss.similarity[10, 12].item() == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["simloss_age", "simloss_cifar", "simloss_age_paper", "simloss_cifar_paper"])
def test_presets_declare_sweeps_and_tables(compose, name):
    cfg, choices = compose(f"experiment={name}", shrink=False)
    assert cfg.experiment_name == name and cfg.sweeps and cfg.tables.main.metrics
    paper = name.endswith("_paper")
    assert list(cfg.tables.main.profiles) == (["paper"] if paper else ["smoke", "default", "full"])
    if paper:
        assert cfg.trainer.batch_size == 1024 and cfg.optim.lr == 1e-3 and cfg.tables.main.requires_data
        assert choices["model"] == ("simloss_age_cnn" if "age" in name else "lenet")


def test_age_paper_preset_on_fixture(train_run, tmp_path):
    root = tmp_path / "UTKFace"
    write_utkface(root, list(range(1, 91, 3)))
    rec = train_run(*real("experiment=simloss_age_paper", f"dataset.root={root}",
                          f"dataset.cache_dir={tmp_path / 'c'}", "loss.r=0.3"), shrink=False)
    assert_completed(rec, "test/mae", "test/accuracy")
    assert rec["config"]["trainer"]["patience"] == 11 and rec["config"]["loss"]["impl"] == "prob"


def test_cifar_paper_preset_on_fixture(train_run, tmp_path):
    from image_classification.cifar import OFFICIAL_QUERY_WORDS, SIMLOSS_DROPPED
    from tests.helpers.formats import CIFAR100_FINE, write_word2vec_binary

    write_cifar100(tmp_path, n_train_per_class=3, n_test_per_class=1)
    g = torch.Generator().manual_seed(0)
    words = [OFFICIAL_QUERY_WORDS.get(n, n) for n in CIFAR100_FINE if n not in SIMLOSS_DROPPED]
    vectors = {w: torch.randn(8, generator=g).tolist() for w in ["the", *words, "Paris"]}
    w2v = write_word2vec_binary(tmp_path / "GoogleNews-vectors-negative300.bin", vectors, newline=False)
    rec = train_run(*real("experiment=simloss_cifar_paper", f"dataset.root={tmp_path}", f"loss.embeddings={w2v}",
                          "loss.lower_bound=0.2"), shrink=False)
    assert_completed(rec, "test/accuracy", "test/superclass_accuracy", "test/failed_superclass_accuracy")
    assert rec["data"]["num_classes"] == 96 and rec["config"]["trainer"]["patience"] == 21
    assert list(tmp_path.glob("GoogleNews-vectors-negative300.bin.simloss_cosine_*.pt"))
