"""One imbalance interface: `dataset.imbalance.ratio=…` works on every in-memory dataset, changes only the
training class counts, and ratio 1 gives exactly the data of the former `imbalance: null`."""
import math

import hydra
import pytest
import torch

from experiments.engine.config import check_target, dataset_node
from tests.helpers.formats import write_cifar10, write_cifar100, write_raw

SMALL = {"synthetic_cifar": ("dataset.scale=0.25",), "synthetic_cifar10": ("dataset.scale=0.2",),
         "plantnet_like": ("dataset.scale=0.25",), "synthetic_age": ("dataset.scale=0.5",), "digits": ()}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    from image_classification.road_marking import prepare

    base = tmp_path_factory.mktemp("formats")
    write_cifar10(base / "c10", n_per_batch_per_class=4, n_test_per_class=3)
    write_cifar100(base / "c100", n_train_per_class=10, n_test_per_class=2)
    prepare(write_raw(base / "raw"), base / "rm", seed=0, log=lambda *a: None)
    return {"cifar10": (f"dataset.root={base / 'c10'}",), "cifar100": (f"dataset.root={base / 'c100'}",),
            "road_marking": (f"dataset.root={base / 'rm'}",)}


def build(compose, name, *overrides):
    cfg, _ = compose(f"dataset={name}", *overrides, shrink=False)
    node = dataset_node(cfg)
    check_target(node, "dataset")
    return hydra.utils.instantiate(node)(), cfg.dataset.imbalance


def expected_counts(available, ratio, n_max_rule):
    """LDAM exponential profile in label order, each class capped at what its pool holds."""
    k = len(available)
    n_max = (min if n_max_rule == "smallest" else max)(a for a in available if a)
    return [min(a, math.floor(n_max * (1 / ratio) ** (c / (k - 1)))) for c, a in enumerate(available)]


@pytest.mark.parametrize("name", [*SMALL, "cifar10", "cifar100", "road_marking"])
def test_ratio_override_changes_only_training_counts(compose, roots, name):
    opts = SMALL[name] if name in SMALL else roots[name]
    balanced, spec = build(compose, name, *opts)
    assert spec.ratio == 1 and set(spec) == {"ratio", "profile", "order", "select", "seed", "counts", "n_max"}
    skewed, spec = build(compose, name, *opts, "dataset.imbalance.ratio=10")
    assert spec.ratio == 10
    for split in ("val", "test"):
        a, b = getattr(balanced, split), getattr(skewed, split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    available = balanced.meta.class_counts.tolist()
    counts = skewed.meta.class_counts.tolist()
    assert counts == expected_counts(available, 10, spec.n_max) == torch.bincount(
        skewed.train.y, minlength=len(counts)).tolist()
    assert counts != available and skewed.fingerprint != balanced.fingerprint


@pytest.mark.parametrize("name", ["synthetic_cifar", "synthetic_age"])
def test_ratio_one_equals_former_null(compose, name):
    block, _ = build(compose, name, *SMALL[name])
    null, _ = build(compose, name, *SMALL[name], "dataset.imbalance=null")
    for split in ("train", "val", "test"):
        a, b = getattr(block, split), getattr(null, split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert torch.equal(block.meta.class_counts, null.meta.class_counts)
    assert block.fingerprint == null.fingerprint
