"""Imbalanced CIFAR construction on label tensors (1×1-pixel images): LDAM counts, official variant, hold-out order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.engine.data import Meta, TensorSplit, assemble
from experiments.engine.errors import UserError
from experiments.engine.imbalance import Imbalance, counts_per_rank, select_indices

TOTALS = {(10, 10): 20431, (10, 50): 13996, (10, 100): 12406,
          (100, 10): 19573, (100, 50): 12608, (100, 100): 10847}


def cifar_like(k: int, per_class: int, shuffle_seed: int = 123):
    """Labels in a shuffled order (like CIFAR's file order), tiny images carrying nothing."""
    y = torch.arange(k).repeat_interleave(per_class)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))]
    names = [f"img_{i:06d}.png" for i in range(len(y))]
    return TensorSplit(torch.zeros(len(y), 1, 1, 1, dtype=torch.uint8), y, names)


def meta(k, names=None):
    return Meta(num_classes=k, class_names=names or [f"c{i:03d}" for i in range(k)],
                class_counts=torch.zeros(k, dtype=torch.long), channels=1, image_size=1)


def ldam_counts(img_max, cls_num, imb_factor):
    """LDAM-DRW `get_img_num_per_cls` (exp), literally."""
    img_num_per_cls = []
    for cls_idx in range(cls_num):
        num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
        img_num_per_cls.append(int(num))
    return img_num_per_cls


@pytest.mark.parametrize("k,rho", sorted(TOTALS))
def test_ldam_counts_through_assemble(k, rho):
    per_class = 5000 if k == 10 else 500
    pool = cifar_like(k, per_class)
    data = assemble(pool, pool, meta(k), val_per_class=0, imbalance={"ratio": rho})
    counts = data.meta.class_counts.tolist()
    assert counts == ldam_counts(per_class, k, 1.0 / rho)
    assert sum(counts) == TOTALS[(k, rho)] == len(data.train)
    assert len(data.val) == 0 and len(data.test) == len(pool)


def test_official_counts_differ_by_one():
    assert sum(counts_per_rank(500, 100, 100, "exp", "official")) == 10846  # tail 4 (reference §2.1)
    assert counts_per_rank(500, 100, 100, "exp", "official")[-1] == 4
    assert counts_per_rank(500, 100, 100, "exp", "ldam")[-1] == 5
    assert sum(counts_per_rank(5000, 10, 100, "exp", "official")) == 12406
    assert counts_per_rank(500, 10, 10, "step") == [500] * 5 + [50] * 5
    assert counts_per_rank(500, 5, 10, "step", "official") == [500, 500, 50, 50, 50]  # np.round(2.5) = 2
    assert counts_per_rank(500, 5, 10, "step", "ldam") == [500, 500, 50, 50, 50]


def test_seeded_selection_is_ldams():
    """select=seeded keeps exactly the images LDAM-DRW's `gen_imbalanced_data` keeps (np.random.seed(0))."""
    k, per_class, rho = 10, 200, 10
    pool = cifar_like(k, per_class)
    got = select_indices(pool.y, meta(k).class_names, Imbalance(ratio=rho, seed=0))
    np.random.seed(0)
    targets_np = np.array(pool.y.tolist(), dtype=np.int64)
    expect = []
    for the_class, the_img_num in zip(np.unique(targets_np), ldam_counts(per_class, k, 1 / rho)):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        expect.extend(idx[:the_img_num].tolist())
    assert got.tolist() == sorted(expect)


def test_seed_reproducible_and_independent_of_training_seed():
    pool = cifar_like(10, 100)
    names = meta(10).class_names
    torch.manual_seed(1)
    np.random.seed(1)
    a = select_indices(pool.y, names, Imbalance(ratio=10, seed=5))
    torch.manual_seed(2)
    np.random.seed(2)
    b = select_indices(pool.y, names, Imbalance(ratio=10, seed=5))
    c = select_indices(pool.y, names, Imbalance(ratio=10, seed=6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_val_per_class_disjoint_and_balanced():
    k, per_class = 10, 60
    pool = cifar_like(k, per_class)
    data = assemble(pool, pool, meta(k), val_per_class=10, split_seed=3, imbalance={"ratio": 10, "seed": 1})
    assert not set(data.train.names) & set(data.val.names)
    assert torch.bincount(data.val.y, minlength=k).tolist() == [10] * k
    assert data.meta.class_counts.tolist() == ldam_counts(per_class - 10, k, 0.1)
    # the hold-out depends on split_seed only, the imbalance on imbalance.seed only
    other = assemble(pool, pool, meta(k), val_per_class=10, split_seed=3, imbalance={"ratio": 10, "seed": 2})
    assert other.val.names == data.val.names and other.train.names != data.train.names


def test_alphabetical_order_and_last_by_name():
    names = ["truck", "airplane", "cat"]  # alphabetical ranks: airplane 0, cat 1, truck 2
    pool = cifar_like(3, 20)
    spec = Imbalance(ratio=4, order="alphabetical", select="last_by_name", counts="official")
    idx = select_indices(pool.y, names, spec, pool.names)
    kept = pool.subset(idx)
    assert torch.bincount(kept.y, minlength=3).tolist() == [5, 20, 10]
    for c in range(3):  # the last n file names of each class survive (first ones os.remove'd)
        all_c = sorted(n for n, y in zip(pool.names, pool.y.tolist()) if y == c)
        kept_c = sorted(n for n, y in zip(kept.names, kept.y.tolist()) if y == c)
        assert kept_c == all_c[len(all_c) - len(kept_c):]


def test_empty_class_and_errors():
    y = torch.tensor([0] * 30 + [2] * 30)  # class 1 empty
    idx = select_indices(y, ["a", "b", "c"], Imbalance(ratio=3))
    assert torch.bincount(y[idx], minlength=3).tolist() == [30, 0, 10]
    for bad in ({"ratio": 0.5}, {"ratio": 10, "profile": "linear"}, {"ratio": 10, "rho": 3}, {"ratio": "x"}):
        with pytest.raises(UserError):
            Imbalance(**bad)
    with pytest.raises(UserError):
        select_indices(y, ["a", "b", "c"], Imbalance(ratio=3, select="last_by_name"))
