"""Road Marking preprocessing (crop/resize/drop/seeded split) and the in-memory folder dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.engine.errors import UserError
from image_classification.road_marking import DROPPED, RoadMarking, main, prepare
from tests.helpers.formats import write_raw


def test_prepare_layout_and_counts(tmp_path):
    raw = write_raw(tmp_path / "raw")
    stats = prepare(raw, tmp_path / "rm", seed=0, log=lambda *a: None)
    assert set(stats) == {"left", "right", "bike"} and not set(stats) & set(DROPPED)
    assert stats["left"] == (8, 1, 1) and stats["bike"] == (4, 0, 2)  # int(n·0.8), int(n·0.1), rest
    from PIL import Image

    for split, idx in (("train", 0), ("valid", 1), ("test", 2)):
        for cls, counts in stats.items():
            files = sorted((tmp_path / "rm" / split / cls).glob("*.jpg"))
            assert len(files) == counts[idx]
            for f in files[:1]:
                with Image.open(f) as im:
                    assert im.size == (64, 64)
    assert not (tmp_path / "rm" / "train" / "car").exists()


def test_prepare_seeded_and_crop(tmp_path):
    raw = write_raw(tmp_path / "raw", comma=False)
    listing = []
    for d in ("a", "b"):
        prepare(raw, tmp_path / d, seed=7, log=lambda *a: None)
        listing.append(sorted(str(p.relative_to(tmp_path / d)) for p in (tmp_path / d).rglob("*.jpg")))
    assert listing[0] == listing[1]
    prepare(raw, tmp_path / "c", seed=8, log=lambda *a: None)
    assert sorted(str(p.relative_to(tmp_path / "c")) for p in (tmp_path / "c").rglob("*.jpg")) != listing[0]
    # the crop is the axis-aligned box around the 4 points, resized: compare with PIL directly (line 0)
    from PIL import Image

    with Image.open(raw / "scene0.jpg") as im:
        ref = np.asarray(im.convert("RGB").crop((4, 7, 46, 37)).resize((64, 64)), dtype=np.float64)
    out = next((tmp_path / "a").rglob("0.jpg"))
    with Image.open(out) as im:
        got = np.asarray(im, dtype=np.float64)
    assert np.abs(got - ref).mean() < 8  # JPEG quality 100 round-trip


def test_prepare_errors(tmp_path):
    with pytest.raises(UserError):
        prepare(tmp_path / "nowhere", tmp_path / "out")
    raw = write_raw(tmp_path / "raw")
    (raw / "dataset_annotations.txt").write_text("1,2,3,left,scene0.png\n")
    with pytest.raises(UserError):
        prepare(raw, tmp_path / "out")
    assert main(["prepare", "--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "o")]) == 2


def test_dataset_loads(tmp_path):
    raw = write_raw(tmp_path / "raw")
    assert main(["prepare", "--src", str(raw), "--dst", str(tmp_path / "rm")]) == 0
    data = RoadMarking(root=str(tmp_path / "rm"))()
    assert data.meta.class_names == ["bike", "left", "right"]
    assert data.meta.class_counts.tolist() == [4, 8, 8]
    assert len(data.val) == 2 and len(data.test) == 4
    assert data.train.x.shape[1:] == (3, 64, 64) and data.train.x.dtype == torch.uint8
    again = RoadMarking(root=str(tmp_path / "rm"))()  # from the cache
    assert torch.equal(again.train.x, data.train.x)
    lt = RoadMarking(root=str(tmp_path / "rm"), imbalance={"ratio": 4, "order": "alphabetical",
                                                           "select": "last_by_name", "counts": "official"})()
    # targets [8, 4, 2] by alphabetical rank (N_max = 8); bike, the head, only has 4
    assert lt.meta.class_counts.tolist() == [4, 4, 2]
    with pytest.raises(UserError):
        RoadMarking(root=str(tmp_path / "missing"))()
