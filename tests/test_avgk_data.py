"""Pl@ntNet-300K folder reader (on generated JPEGs) and the plantnet_like stand-in."""
import json

import numpy as np
import pytest
import torch

from average_k.plantnet import PlantNet300K
from average_k.plantnet_like import PlantNetLike, generate
from experiments.engine.errors import UserError
from tests.helpers.formats import PLANTNET_SPECIES as SPECIES
from tests.helpers.formats import make_plantnet


@pytest.mark.parametrize("images", [True, False])
def test_plantnet_layouts_transforms_and_counts(tmp_path, images):
    root = make_plantnet(tmp_path, images)
    (root / "plantnet300K_species_id_2_name.json").write_text(json.dumps({SPECIES[0]: "Quercus robur"}))
    data = PlantNet300K(str(root), resize=24, crop=16)()
    assert data.meta.num_classes == 3 and data.meta.class_counts.tolist() == [3, 4, 5]
    assert data.meta.class_names[0] == "Quercus robur" and data.meta.class_names[1] == SPECIES[1]
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 3)
    x, y, i = data.train[5]
    assert tuple(x.shape) == (3, 16, 16) and y.item() == 1 and i == 5
    assert tuple(data.test[0][0].shape) == (3, 16, 16)


def test_plantnet_class_index_file_and_errors(tmp_path):
    root = make_plantnet(tmp_path)
    (root / "class_idx_to_species_id.json").write_text(json.dumps({"0": SPECIES[2], "1": SPECIES[0], "2": SPECIES[1]}))
    data = PlantNet300K(str(root), resize=24, crop=16)()
    assert data.meta.extras["species_ids"] == [SPECIES[2], SPECIES[0], SPECIES[1]]
    assert data.meta.class_counts.tolist() == [5, 3, 4]
    with pytest.raises(UserError, match="dataset.root"):
        PlantNet300K(str(tmp_path / "missing"))()
    with pytest.raises(UserError, match="crop"):
        PlantNet300K(str(root), resize=16, crop=24)


def small_gen(**kw):
    args = dict(num_genera=4, min_species=2, max_species=4, n_max=60, n_min=4, zipf=1.0, test_fraction=0.3,
                min_test=2, ambiguity=[0.5, 0.25, 0.15, 0.1], image_size=8, genus_strength=1.0,
                species_strength=0.8, noise=0.5, max_shift=1, seed=3)
    args.update(kw)
    return generate(**args)


def test_plantnet_like_structure():
    raw = small_gen()
    assert torch.equal(raw["x_train"], small_gen()["x_train"])
    counts = torch.bincount(raw["y_train"])
    assert counts.max() == 60 and counts.min() >= 4 and counts.max() / counts.min() >= 5
    genus, amb = raw["genus"], raw["amb_train"]
    sizes = torch.bincount(genus)
    assert ((sizes >= 2) & (sizes <= 4)).all()
    assert set(amb.unique().tolist()) <= {1, 2, 3, 4} and (amb == 1).float().mean() > 0.3 and (amb > 2).any()
    assert (amb <= sizes[genus[raw["y_train"]]]).all()
    assert raw["x_train"].dtype == torch.uint8 and tuple(raw["x_train"].shape[1:]) == (3, 8, 8)


def test_plantnet_like_builder_scale_and_cache(tmp_path):
    data = PlantNetLike(str(tmp_path), num_genera=4, n_max=40, image_size=8, scale=0.5)()
    assert data.meta.num_classes == len(data.meta.superclass) and data.meta.class_counts.sum() == len(data.train)
    assert len(list(tmp_path.glob("plantnet_like_v*.pt"))) == 1
    big = PlantNetLike(str(tmp_path), num_genera=4, n_max=40, image_size=8)()
    assert len(big.train) > len(data.train)
    with pytest.raises(UserError):
        PlantNetLike(str(tmp_path), scale=0)


def test_cifar100_noisy_split_and_block_noise(tmp_path):
    from average_k.cifar_noisy import Cifar100Noisy
    from tests.helpers.formats import write_cifar100

    write_cifar100(tmp_path, n_train_per_class=5, n_test_per_class=1)
    data = Cifar100Noisy(str(tmp_path), noise=1.0, split_seed=1234, noise_seed=3)()
    ref = Cifar100Noisy(str(tmp_path), noise=0.0, split_seed=1234)()
    assert (len(data.train), len(data.val), len(data.test)) == (450, 50, 100)
    rng = np.random.RandomState(1234)
    perm = rng.permutation(rng.choice(500, size=500, replace=False))
    assert torch.equal(data.val.y, ref.val.y) and torch.equal(data.test.y, ref.test.y)
    assert torch.equal(data.train.x, ref.train.x)
    assert torch.equal(data.train.y // 5, ref.train.y // 5)          # noise stays inside the block of 5
    offsets = np.random.RandomState(3).choice(5, size=500)
    np.testing.assert_array_equal(data.train.y.numpy() % 5, offsets[perm[:450]])
    assert (data.train.y != ref.train.y).float().mean() > 0.6
    assert data.meta.class_counts.sum() == 450 and torch.equal(data.meta.class_counts, torch.bincount(data.train.y, minlength=100))
    with pytest.raises(UserError):
        Cifar100Noisy(str(tmp_path), noise=1.5)
