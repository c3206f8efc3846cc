"""`dataset=digits`: scikit-learn's bundled 8×8 digits, balanced test/val drawn first, the shared imbalance block."""
import math

import numpy as np
import pytest
import torch

from experiments.engine.errors import UserError
from image_classification.digits import Digits

DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # load_digits().target, per class


def image_ids(split):
    return {int(n.split("_")[1]) for n in split.names}


def expected_counts(pool_sizes, rho):
    """Exponential profile with N_max = the smallest pool class: n_c = floor(N_max · ρ^(−c/(C−1)))."""
    n_max, k = min(pool_sizes), len(pool_sizes)
    return [math.floor(n_max * rho ** (-c / (k - 1))) for c in range(k)]


@pytest.fixture(scope="module")
def digits():
    return Digits()()


def test_split_sizes_counts_and_meta(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1797 - 600, 200, 400)
    assert torch.bincount(digits.test.y, minlength=10).tolist() == [40] * 10
    assert torch.bincount(digits.val.y, minlength=10).tolist() == [20] * 10
    assert digits.meta.class_counts.tolist() == [n - 60 for n in DIGIT_COUNTS]
    assert digits.meta.class_names == [str(c) for c in range(10)] and digits.meta.natural_similarity is None
    assert digits.train.x.shape[1:] == (1, 16, 16) and digits.train.x.dtype == torch.uint8
    assert digits.meta.channels == 1 and digits.meta.image_size == 16
    f = digits.train.x.double() / 255
    assert digits.meta.mean == pytest.approx((f.mean().item(),)) and digits.meta.std == pytest.approx((f.std().item(),))


def test_splits_are_disjoint_and_cover_every_image(digits):
    train, val, test = (image_ids(s) for s in (digits.train, digits.val, digits.test))
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(1797))


def test_images_are_the_upsampled_originals(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    i = int(digits.test.names[0].split("_")[1])
    assert digits.test.y[0].item() == raw.target[i]
    native = Digits(image_size=8, channels=3)()
    j = native.test.names.index(digits.test.names[0])
    expect = np.round(raw.images[i] * 255 / 16).astype(np.uint8)
    for ch in range(3):
        assert np.array_equal(native.test.x[j, ch].numpy(), expect)


def test_same_seed_same_tensors_other_seed_other_split(digits):
    again = Digits()()
    for a, b in zip(digits.splits().values(), again.splits().values()):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.fingerprint == digits.fingerprint
    other = Digits(split_seed=1)()
    assert image_ids(other.test) != image_ids(digits.test) and other.fingerprint != digits.fingerprint
    assert torch.bincount(other.test.y, minlength=10).tolist() == [40] * 10


@pytest.mark.parametrize("rho", [1, 10, 50, 100])
def test_imbalance_counts(digits, rho):
    data = Digits(imbalance={"ratio": rho, "n_max": "smallest"})()
    pool = [n - 60 for n in DIGIT_COUNTS]
    expect = pool if rho == 1 else expected_counts(pool, rho)
    assert data.meta.class_counts.tolist() == expect
    assert image_ids(data.train) <= image_ids(digits.train)
    assert image_ids(data.val) == image_ids(digits.val) and image_ids(data.test) == image_ids(digits.test)


def test_rho_50_profile_as_documented():
    data = Digits(imbalance={"ratio": 50, "n_max": "smallest"})()
    assert data.meta.class_counts.tolist() == [114, 73, 47, 30, 20, 12, 8, 5, 3, 2]


def test_options_and_errors():
    rgb = Digits(image_size=32, channels=3, scale=0.5)()
    assert rgb.train.x.shape[1:] == (3, 32, 32) and torch.equal(rgb.train.x[:, 0], rgb.train.x[:, 2])
    assert rgb.meta.class_counts.tolist() == [round((n - 60) / 2) for n in DIGIT_COUNTS]
    assert len(rgb.test) == 400
    for bad in ({"image_size": 4}, {"channels": 2}, {"test_per_class": 150, "val_per_class": 30}, {"scale": 0}):
        with pytest.raises(UserError):
            Digits(**bad)


def test_digits_trains_through_the_engine(train_run):
    rec = train_run("dataset=digits", "model=small_cnn", "model.width=8", "loss=ce", "dataset.imbalance.ratio=10")
    assert rec["status"] == "completed" and rec["dataset"] == "digits"
    assert rec["data"]["n_val"] == 200 and rec["data"]["n_test"] == 400
    assert rec["data"]["train_class_counts"][0] > rec["data"]["train_class_counts"][-1]
    assert len(rec["data"]["fingerprint"]) == 16
    assert 0.0 <= rec["metrics"]["test/accuracy"] <= 1.0
