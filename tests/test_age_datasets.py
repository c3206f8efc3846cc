"""UTKFace / AFAD readers on fixture folders in the real layouts, and the synthetic_age stand-in."""
import logging

import numpy as np
import pytest
import torch

from age_estimation.datasets import AFAD, UTKFace
from age_estimation.synthetic import SyntheticAge, age_histogram
from experiments.engine.errors import UserError
from tests.helpers.formats import write_afad, write_utkface

UTK_AGES = [1, 1, 2, 5, 18, 22, 23, 25, 25, 26, 27, 28, 29, 30, 30, 31, 33, 35, 38, 40,
            41, 45, 47, 50, 52, 55, 58, 60, 61, 63, 65, 68, 70, 72, 75, 78, 80, 85, 89, 90]
UTK_BAD = ["61_1_20170109142408075.jpg.chip.jpg", "notes.txt", "abc_0_0_20170101.jpg.chip.jpg"]
UTK_OUT = ["0_1_0_20170110000000000.jpg.chip.jpg", "95_0_0_20170110000000001.jpg.chip.jpg",
           "116_1_2_20170110000000002.jpg"]


def official_split(n, seed=42):
    """TrainValTestDataset: np.random.seed(42), one permutation, int() cut points at 60 % and 80 %."""
    np.random.seed(seed)
    perm = np.random.permutation(n)
    return perm[:int(0.6 * n)], perm[int(0.6 * n):int(0.8 * n)], perm[int(0.8 * n):]


@pytest.fixture(scope="module")
def utk_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("utk") / "UTKFace"
    write_utkface(root, UTK_AGES, bad_names=UTK_BAD + UTK_OUT)
    write_utkface(root, [7], chip=False)
    return root


def test_utkface_counts_labels_and_split(utk_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = UTKFace(str(utk_root), cache_dir=str(tmp_path))()
    n = len(UTK_AGES) + 1
    assert data.meta.extras["files"] == {"used": n, "unparsed": 3, "out_of_range": 3}
    assert "skipped 3 files" in caplog.text and "3 with age outside 1–90" in caplog.text
    assert (len(data.train), len(data.val), len(data.test)) == (24, 8, 9)
    assert data.meta.num_classes == 90 and data.meta.natural_similarity == "ordinal"
    assert data.train.x.shape[1:] == (3, 60, 60) and data.train.x.dtype == torch.uint8
    ordered = sorted((int(name.split("_")[0]), name) for name in
                     [p.name for p in utk_root.iterdir() if p.name not in UTK_BAD + UTK_OUT])
    tr, va, te = official_split(n)
    assert data.train.names == [ordered[i][1] for i in tr]
    assert data.test.names == [ordered[i][1] for i in te]
    for split in (data.train, data.val, data.test):
        assert split.y.tolist() == [int(name.split("_")[0]) - 1 for name in split.names]
    assert data.meta.class_counts.sum() == 24


def test_utkface_decoded_once_into_cache(utk_root, tmp_path):
    UTKFace(str(utk_root), cache_dir=str(tmp_path))()
    cache = list(tmp_path.glob("utkface_60px_*.pt"))
    assert len(cache) == 1
    stored = torch.load(cache[0])
    stored[:] = 7
    torch.save(stored, cache[0])
    again = UTKFace(str(utk_root), cache_dir=str(tmp_path))()
    assert (again.train.x == 7).all()


def test_utkface_errors(tmp_path):
    with pytest.raises(UserError, match="dataset.root"):
        UTKFace(str(tmp_path / "missing"))()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no usable"):
        UTKFace(str(tmp_path / "empty"), cache_dir=str(tmp_path))()


def test_afad_layout(tmp_path, caplog):
    root = tmp_path / "AFAD-Full"
    counts = {(15, "111"): 3, (15, "112"): 2, (30, "111"): 4, (72, "112"): 3, (95, "111"): 1}
    write_afad(root, counts, stray=["15/999/x.jpg", "abc/111/y.jpg", "30/111/z.png"])
    (root / "AFAD-Full.txt").write_text("readme")
    with caplog.at_level(logging.WARNING):
        data = AFAD(str(root), cache_dir=str(tmp_path / "cache"))()
    assert data.meta.extras["files"] == {"used": 12, "unparsed": 4, "out_of_range": 1}
    assert "afad: skipped 4" in caplog.text
    assert (len(data.train), len(data.val), len(data.test)) == (7, 2, 3)
    labels = sorted(torch.cat([data.train.y, data.val.y, data.test.y]).tolist())
    assert labels == [14] * 5 + [29] * 4 + [71] * 3
    for split in (data.train, data.val, data.test):
        assert split.y.tolist() == [int(name.split("/")[0]) - 1 for name in split.names]
    ordered = sorted((int(p.relative_to(root).parts[0]), str(p.relative_to(root)))
                     for p in root.rglob("*.jpg") if p.parent.name in ("111", "112") and p.parts[-3] in ("15", "30", "72"))
    tr, _, _ = official_split(12)
    assert data.train.names == [ordered[i][1] for i in tr]


def test_age_histogram_is_utkface_like():
    p = age_histogram()
    assert p.shape == (90,) and p.sum() == pytest.approx(1.0)
    assert p[0] > p[9]                      # infants bump
    assert p[19:40].sum() > 0.4             # most people 20–40
    assert p[80:].sum() < 0.03              # few very old
    assert 20 <= int(p[5:].argmax()) + 6 <= 40


def test_synthetic_age_split_cache_and_scale(tmp_path):
    a = SyntheticAge(str(tmp_path), n_images=500, image_size=16)()
    b = SyntheticAge(str(tmp_path), n_images=500, image_size=16)()
    assert (len(a.train), len(a.val), len(a.test)) == (300, 100, 100)
    assert torch.equal(a.train.x, b.train.x) and len(list(tmp_path.glob("synthetic_age_v*.pt"))) == 1
    assert a.meta.num_classes == 90 and a.meta.natural_similarity == "ordinal"
    assert a.train.x.shape[1:] == (3, 16, 16) and 0 <= int(a.train.y.min()) and int(a.train.y.max()) <= 89
    assert len(SyntheticAge(str(tmp_path), n_images=500, scale=0.5, image_size=16)().train) == 150
    assert SyntheticAge(str(tmp_path), n_images=100, image_size=60)().train.x.shape[-1] == 60


def test_ce_model_mistakes_are_near_the_true_age(tmp_path):
    from experiments.engine.data import normalize

    data = SyntheticAge(str(tmp_path), n_images=3000, image_size=16)()
    torch.manual_seed(0)
    x, y = normalize(data.train.x, data.meta.mean, data.meta.std).flatten(1), data.train.y
    net = torch.nn.Linear(x.shape[1], 90)
    opt = torch.optim.Adam(net.parameters(), 2e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net(normalize(data.test.x, data.meta.mean, data.meta.std).flatten(1)).argmax(1)
    err = (pred - data.test.y).abs().float()
    mistakes = err[err > 0]
    prior = torch.tensor(age_histogram())
    guess_err = (prior[None, :] * (torch.arange(90)[None, :] - data.test.y[:, None]).abs()).sum(1).mean()
    assert len(mistakes) > 0.3 * len(err)                 # exact age stays hard
    assert mistakes.mean() < 0.3 * guess_err              # but mistakes land near the true age
    assert (mistakes <= 5).float().mean() > 0.6
