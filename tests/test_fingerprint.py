"""Data fingerprints, and caches invalidated by their source files (size, mtime_ns) or set aside when corrupt."""
import os

import numpy as np
import pytest
import torch

import image_classification.synthetic as synthetic
from average_k.plantnet import PlantNet300K
from experiments.engine.data import Meta, TensorSplit, assemble, cached
from tests.helpers.formats import make_plantnet


def write_images(root, n=6):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4), 40 * i, dtype=np.uint8)).save(root / f"{i % 2}_{i}.png")
    return sorted(root.glob("*.png"))


class FolderOfPngs:
    """A minimal decoded-and-cached folder dataset: `<label>_<i>.png`, every image in all three splits."""

    def __init__(self, root, cache_dir):
        self.root, self.cache_dir, self.builds = root, cache_dir, 0

    def decode(self, files):
        from PIL import Image

        self.builds += 1
        x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("L")))[None] for f in files])
        return {"x": x, "y": torch.tensor([int(f.name.split("_")[0]) for f in files])}

    def __call__(self):
        files = sorted(self.root.glob("*.png"))
        raw = cached(self.cache_dir / "pngs.pt", lambda: self.decode(files), sources=files, root=self.root)
        split = TensorSplit(raw["x"], raw["y"])
        meta = Meta(num_classes=2, class_names=["a", "b"], class_counts=torch.zeros(2, dtype=torch.long),
                    channels=1, image_size=4)
        return assemble(split, split, meta, val=split)


def rewrite(path, value):
    from PIL import Image

    stat = path.stat()
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_unchanged_files_reuse_the_cache_and_keep_the_fingerprint(tmp_path):
    files = write_images(tmp_path / "imgs")
    ds = FolderOfPngs(tmp_path / "imgs", tmp_path / "cache")
    first, second = ds(), ds()
    assert ds.builds == 1 and len(list((tmp_path / "cache").glob("pngs_src*.pt"))) == 1
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 16
    assert first.summary()["fingerprint"] == first.fingerprint
    assert len(files) == 6


def test_a_changed_file_rebuilds_the_cache_and_changes_the_fingerprint(tmp_path):
    files = write_images(tmp_path / "imgs")
    ds = FolderOfPngs(tmp_path / "imgs", tmp_path / "cache")
    before = ds()
    old_cache = next((tmp_path / "cache").glob("pngs_src*.pt"))
    rewrite(files[3], 250)
    after = ds()
    assert ds.builds == 2 and after.fingerprint != before.fingerprint
    caches = list((tmp_path / "cache").glob("pngs_src*.pt"))
    assert len(caches) == 1 and caches[0] != old_cache  # the stale signature is removed
    assert int(after.train.x[3].max()) == 250
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 1_000_000))
    touched = ds()
    assert ds.builds == 3 and touched.fingerprint == after.fingerprint  # same pixels: same data


def test_a_truncated_cache_is_set_aside_and_rebuilt(tmp_path, capsys):
    write_images(tmp_path / "imgs")
    ds = FolderOfPngs(tmp_path / "imgs", tmp_path / "cache")
    good = ds()
    cache = next((tmp_path / "cache").glob("pngs_src*.pt"))
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    capsys.readouterr()
    again = ds()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and str(cache) in err[0] and ".corrupt" in err[0]
    assert ds.builds == 2 and again.fingerprint == good.fingerprint
    assert len(list(cache.parent.glob(cache.name + ".corrupt-*"))) == 1 and cache.exists()
    ds()
    assert ds.builds == 2  # the rebuilt cache is read again; the .corrupt copy is left alone
    assert len(list(cache.parent.glob(cache.name + ".corrupt-*"))) == 1


def test_generated_stand_in_follows_its_generator_sources(tmp_path, monkeypatch):
    source = tmp_path / "generator.py"
    source.write_text("v = 1\n")
    monkeypatch.setattr(synthetic, "generator_sources", lambda module_file: (source,))
    a = synthetic.SyntheticCifar(str(tmp_path / "data"), scale=0.05)()
    b = synthetic.SyntheticCifar(str(tmp_path / "data"), scale=0.05)()
    first = list((tmp_path / "data").glob("synthetic_cifar_v*.pt"))
    assert len(first) == 1 and a.fingerprint == b.fingerprint
    source.write_text("v = 22\n")
    c = synthetic.SyntheticCifar(str(tmp_path / "data"), scale=0.05)()
    now = list((tmp_path / "data").glob("synthetic_cifar_v*.pt"))
    assert len(now) == 1 and now != first and c.fingerprint == a.fingerprint  # regenerated, same seed: same data
    derived = list((tmp_path / "data").glob("synthetic_cifar_v*.txt"))  # class vectors of the stale cache go too
    assert len(derived) == 1 and derived[0].name.startswith(now[0].stem)
    d = synthetic.SyntheticCifar(str(tmp_path / "data"), scale=0.05, seed=1)()
    assert d.fingerprint != a.fingerprint


def meta():
    return Meta(num_classes=4, class_names=list("abcd"), class_counts=torch.zeros(4, dtype=torch.long))


def test_fingerprint_sees_one_pixel_and_one_label():
    x = torch.randint(0, 255, (20, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(20) % 4
    base = assemble(TensorSplit(x, y), TensorSplit(x, y), meta(), val=TensorSplit(x, y))
    x2 = x.clone()
    x2[7, 1, 2, 3] ^= 1
    y2 = y.clone()
    y2[5] = 0
    for xs, ys in ((x2, y), (x, y2)):
        other = assemble(TensorSplit(xs, ys), TensorSplit(x, y), meta(), val=TensorSplit(x, y))
        assert other.fingerprint != base.fingerprint
    again = assemble(TensorSplit(x.clone(), y.clone()), TensorSplit(x, y), meta(), val=TensorSplit(x, y))
    assert again.fingerprint == base.fingerprint


def test_folder_dataset_fingerprint_uses_relative_path_size_and_mtime(tmp_path):
    import shutil

    root = make_plantnet(tmp_path / "a")
    first = PlantNet300K(str(root), resize=24, crop=16)()
    assert PlantNet300K(str(root), resize=24, crop=16)().fingerprint == first.fingerprint
    moved = tmp_path / "b"
    shutil.copytree(root, moved, copy_function=shutil.copy2)
    assert PlantNet300K(str(moved), resize=24, crop=16)().fingerprint == first.fingerprint  # paths are relative
    victim = first.train.files[0]
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert PlantNet300K(str(root), resize=24, crop=16)().fingerprint != first.fingerprint
    assert PlantNet300K(str(root), resize=24, crop=16, scale=0.5)().fingerprint != first.fingerprint


@pytest.mark.parametrize("name", ["synthetic_cifar", "digits"])
def test_run_record_carries_the_fingerprint(compose, name):
    import hydra

    from experiments.engine.config import dataset_node

    cfg, _ = compose(f"dataset={name}")
    data = hydra.utils.instantiate(dataset_node(cfg))()
    assert data.summary()["fingerprint"] == data.fingerprint
