"""The streamed folder path (experiments/engine/data.py StreamLoader, experiments/engine/decode.py): uint8 workers,
normalisation on the device, persistent workers, the opt-in decoders.

The reference for "the same batches as before" is the former path, kept here as it was: a torchvision
Resize → RandomCrop/CenterCrop → ToTensor → Normalize transform per sample in a non-persistent DataLoader."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.engine.data import (
    Data,
    FolderSplit,
    Meta,
    StreamLoader,
    make_loader,
    stream_pool,
)
from experiments.engine.decode import (
    DECODERS,
    ImageView,
    check_decoder,
    crop_box,
    decode_batch,
    resize_uint8,
    resized_size,
)
from experiments.engine.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def smooth_jpeg(path, w, h, grey=False, seed=0):
    """A smooth image (a wrong crop position shows as a large difference; decoders differ only slightly)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [127 + 120 * np.sin(xx / rng.uniform(9, 30) + yy / rng.uniform(11, 40) + rng.uniform(0, 6))
              for _ in range(1 if grey else 3)]
    arr = np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)
    Image.fromarray(arr[..., 0] if grey else arr).save(path, quality=90)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    sizes = [(40, 30), (30, 44), (37, 37), (52, 28), (33, 41), (45, 31), (31, 31)]
    out = [smooth_jpeg(d / f"{i}.jpg", w, h, grey=i % 3 == 0, seed=i) for i, (w, h) in enumerate(sizes * 2)]
    return out


# --------------------------------------------------------------------------- the former path, as a reference
class OldFolderSplit(torch.utils.data.Dataset):
    def __init__(self, files, y, transform, mode="RGB"):
        self.files, self.y, self.transform, self.mode = files, y, transform, mode

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            x = self.transform(im.convert(self.mode))
        return x, self.y[i], i


def _old_seed_worker(worker_id):
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def old_transform(resize, crop, train, mean=MEAN, std=STD):
    from torchvision import transforms as T

    return T.Compose([T.Resize(resize), T.RandomCrop(crop) if train else T.CenterCrop(crop), T.ToTensor(),
                      T.Normalize(mean, std)])


def old_pass(split, batch_size, shuffle, generator, workers):
    loader = torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                         generator=generator, worker_init_fn=_old_seed_worker,
                                         persistent_workers=False)
    return [(x, y, i) for x, y, i in loader]


def new_data(files, resize, crop, channels=3, decode="pil"):
    y = torch.arange(len(files)) % 3
    mean, std = (MEAN, STD) if channels == 3 else ((0.5,), (0.25,))
    train = FolderSplit(files, y, ImageView(resize, crop, random=True, channels=channels, decode=decode))
    evaluate = FolderSplit(files, y, ImageView(resize, crop, random=False, channels=channels, decode=decode))
    meta = Meta(num_classes=3, class_names=["a", "b", "c"], class_counts=torch.bincount(y), channels=channels,
                image_size=crop, mean=mean, std=std)
    return Data(train=train, val=evaluate, test=evaluate, meta=meta)


def new_pass(data, name, batch_size, shuffle, generator, workers):
    pool = stream_pool(data, workers, torch.device("cpu"))
    loader = StreamLoader(pool, name, batch_size, torch.device("cpu"), data.meta, shuffle=shuffle,
                          generator=generator)
    return [(b.x, b.y, b.index) for b in loader]


def assert_same_batches(old, new, std=STD):
    """Same order, crops, flips and labels; pixels within one uint8 level, and only in a few: `pil` resamples only
    the crop's region, where PIL's fixed-point filter weights may round the other way (a wrong crop position or
    filter differs by many levels in most pixels of these smooth images)."""
    assert len(old) == len(new)
    one_level = 1 / (255 * min(std)) + 1e-6
    differing = total = 0
    for (xo, yo, io), (xn, yn, i_n) in zip(old, new):
        assert xn.dtype == torch.float32 and xn.shape == xo.shape
        torch.testing.assert_close(xn, xo, rtol=0, atol=one_level)
        differing += int(((xn - xo).abs() > 1e-6).sum())
        total += xn.numel()
        assert torch.equal(yn, yo) and torch.equal(i_n, io)
    assert differing <= 0.05 * total, f"{differing} of {total} values differ by one level"  # 1.3 % here


@pytest.mark.parametrize("workers", [0, 2])
def test_new_batches_equal_the_former_path_over_epochs_and_evaluations(files, workers):
    """Train passes (random crops, shuffled) with an evaluation pass between them, as the trainer runs them: the
    same order, crops and values as the former per-sample float path, with persistent workers reused."""
    y = torch.arange(len(files)) % 3
    old_train = OldFolderSplit(files, y, old_transform(24, 20, True))
    old_eval = OldFolderSplit(files, y, old_transform(24, 20, False))
    data = new_data(files, 24, 20)
    torch.manual_seed(123)
    old = [old_pass(old_train, 4, True, torch.Generator().manual_seed(7), workers),
           old_pass(old_eval, 5, False, None, workers),
           old_pass(old_train, 4, True, torch.Generator().manual_seed(8), workers)]
    torch.manual_seed(123)
    new = [new_pass(data, "train", 4, True, torch.Generator().manual_seed(7), workers),
           new_pass(data, "val", 5, False, None, workers),
           new_pass(data, "train", 4, True, torch.Generator().manual_seed(8), workers)]
    for o, n in zip(old, new):
        assert_same_batches(o, n)


def test_one_channel_view_equals_the_former_path_in_grey(files):
    y = torch.arange(len(files)) % 3
    data = new_data(files, 20, 16, channels=1)
    for train in (True, False):
        torch.manual_seed(5)
        old = old_pass(OldFolderSplit(files, y, old_transform(20, 16, train, (0.5,), (0.25,)), mode="L"), 3,
                       train, torch.Generator().manual_seed(1), 0)
        torch.manual_seed(5)
        new = new_pass(data, "train" if train else "val", 3, train, torch.Generator().manual_seed(1), 0)
        assert new[0][0].shape[1] == 1
        assert_same_batches(old, new, std=(0.25,))


def test_workers_are_persistent_across_passes(files):
    """One pool per data: the same worker processes serve every pass (train and evaluation)."""
    class Pid:  # a view that reports which process read the file
        def __call__(self, path):
            return torch.full((3, 1, 1), os.getpid() % 251, dtype=torch.uint8)

    y = torch.zeros(len(files), dtype=torch.long)
    split = FolderSplit(files, y, Pid())
    meta = Meta(num_classes=1, class_names=["a"], class_counts=torch.tensor([len(files)]), mean=(0.0,) * 3,
                std=(1 / 255,) * 3)
    data = Data(train=split, val=split, test=split, meta=meta)
    seen = []
    for name in ("train", "val", "train"):
        loader = make_loader(data, name, 2, torch.device("cpu"), train=name == "train",
                             generator=torch.Generator().manual_seed(0), num_workers=2)
        seen.append({round(float(b.x[k, 0, 0, 0])) for b in loader for k in range(len(b.y))})
    assert len(seen[0]) == 2 and seen[0] == seen[1] == seen[2] and os.getpid() % 251 not in seen[0]


def test_resume_mid_pass_gives_the_remaining_batches_exactly(files):
    """What the trainer does on resume: a new process (here: a new pool) with the epoch's generator state draws
    and drops the batches trained before; the rest equal an uninterrupted pass."""
    data = new_data(files, 24, 20)
    gen_state = torch.Generator().manual_seed(11).get_state()
    new_pass(data, "train", 3, True, torch.Generator().manual_seed(10), 2)     # epoch 1 in the same workers
    whole = new_pass(data, "train", 3, True, torch.Generator().set_state(gen_state), 2)
    resumed = new_pass(new_data(files, 24, 20), "train", 3, True, torch.Generator().set_state(gen_state), 2)
    assert_same_batches(whole[2:], resumed[2:])


# --------------------------------------------------------------------------- geometry and decoders
@pytest.mark.parametrize("hw", [(600, 800), (375, 500), (800, 600), (256, 256), (257, 1000), (31, 30)])
def test_resized_size_matches_torchvision_resize(hw):
    from torchvision import transforms as T

    h, w = hw
    out = T.Resize(min(h, w) // 2 + 1)(Image.new("RGB", (w, h)))
    assert resized_size(h, w, min(h, w) // 2 + 1) == (out.height, out.width)
    assert resized_size(h, w, None) == (h, w)


def test_crop_box_draws_as_torchvision_random_crop_and_centres_as_center_crop():
    from torchvision import transforms as T

    for h, w, c in [(256, 341, 224), (341, 256, 224), (224, 224, 224), (30, 40, 7)]:
        torch.manual_seed(3)
        ref = T.RandomCrop.get_params(torch.empty(3, h, w), (c, c))
        torch.manual_seed(3)
        assert crop_box(h, w, c, True) == ref
        img = torch.arange(h * w).view(1, h, w)
        top, left, ch, cw = crop_box(h, w, c, False)
        assert torch.equal(img[:, top:top + ch, left:left + cw], T.CenterCrop(c)(img))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert crop_box(300, 400, 224, True, g1) == crop_box(300, 400, 224, True, g2)
    with pytest.raises(UserError, match="dataset.crop"):
        crop_box(20, 30, 24, True)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_uint8_resize_is_within_one_level_of_pil_bilinear(native, channels):
    """Both routes (uint8 kernel on the CPU; float32 and round, as on a GPU) against PIL's antialiased bilinear."""
    rng = np.random.RandomState(channels)
    arr = rng.randint(0, 256, (90, 120, channels), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(arr.squeeze(-1) if channels == 1 else arr).resize((50, 37), Image.BILINEAR))
    ref = torch.from_numpy(ref.reshape(37, 50, channels).copy()).permute(2, 0, 1)
    x = torch.from_numpy(arr).permute(2, 0, 1)
    out = resize_uint8(x, 37, 50, native=native)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (channels, 37, 50)
    assert int((out.int() - ref.int()).abs().max()) <= 1


@pytest.mark.parametrize("decode", ["pil", "pil_draft", "torchvision"])
@pytest.mark.parametrize("random_crop", [True, False])
@pytest.mark.parametrize("resize,crop", [(64, 48), (40, 32)])   # 160×120 → DCT scaling fits at 40, not at 64
@pytest.mark.parametrize("channels", [1, 3])
def test_each_cpu_decoder_shape_dtype_range_determinism_and_crop_position(tmp_path, decode, random_crop, resize,
                                                                          crop, channels):
    path = smooth_jpeg(tmp_path / "a.jpg", 160, 120, seed=2)
    view = ImageView(resize, crop, random=random_crop, flip=True, channels=channels, decode=decode)
    exact = ImageView(resize, crop, random=random_crop, flip=True, channels=channels, decode="pil")
    for seed in range(4):
        torch.manual_seed(seed)
        x = view(path)
        torch.manual_seed(seed)
        again = view(path)
        torch.manual_seed(seed)
        ref = exact(path)
        assert x.dtype == torch.uint8 and tuple(x.shape) == (channels, crop, crop) and int(x.max()) > int(x.min())
        assert torch.equal(x, again)
        # the same crop and flip as the exact path: only decoding/resampling differences remain
        assert (x.float() - ref.float()).abs().mean() < 4.0


def test_cuda_batch_step_on_the_cpu_matches_the_per_image_path(tmp_path):
    """`decode_batch` is the cuda decoder's batch step; on the CPU it runs libjpeg, so its geometry can be checked
    against the torchvision decoder with the same crop draws."""
    import torchvision.io as io

    paths = [smooth_jpeg(tmp_path / f"{i}.jpg", 90 + 10 * i, 70, seed=i) for i in range(3)]
    raw_view = ImageView(48, 40, random=True, flip=True, decode="cuda")
    raw = [raw_view(p) for p in paths]
    assert all(r.dtype == torch.uint8 and r.dim() == 1 for r in raw)
    batch = decode_batch(raw, raw_view, "cpu", torch.Generator().manual_seed(9))
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (3, 3, 40, 40)
    g = torch.Generator().manual_seed(9)
    ref = ImageView(48, 40, random=True, flip=True, decode="torchvision")
    for x, p in zip(batch, paths):
        assert torch.equal(x, ref.geometry(io.decode_jpeg(io.read_file(p), mode=io.ImageReadMode.RGB), g))
    assert torch.equal(batch, decode_batch(raw, raw_view, "cpu", torch.Generator().manual_seed(9)))


def test_decoder_option_is_validated():
    assert DECODERS == ("pil", "pil_draft", "torchvision", "cuda")
    with pytest.raises(UserError, match="dataset.decode='jpeg'"):
        ImageView(decode="jpeg")
    for name in ("pil", "pil_draft", "torchvision"):
        check_decoder(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the cuda decoder is allowed")
def test_cuda_decoder_refused_without_a_gpu_in_one_line(tmp_path):
    from average_k.plantnet import PlantNet300K
    from tests.helpers.formats import make_plantnet

    with pytest.raises(UserError) as e:
        check_decoder("cuda")
    assert "\n" not in str(e.value) and str(e.value).startswith("dataset.decode=cuda: no CUDA device")
    root = make_plantnet(tmp_path)
    with pytest.raises(UserError, match="dataset.decode=cuda"):
        PlantNet300K(str(root), resize=24, crop=16, decode="cuda")


def test_plantnet_batches_are_normalised_on_the_device_from_uint8(tmp_path):
    from average_k.plantnet import IMAGENET, PlantNet300K
    from tests.helpers.formats import make_plantnet

    data = PlantNet300K(str(make_plantnet(tmp_path)), resize=24, crop=16)()
    x, _, _ = data.train[0]
    assert x.dtype == torch.uint8
    batch = next(iter(make_loader(data, "test", 2, torch.device("cpu"), train=False)))
    first = data.test[0][0].float().div(255)
    ref = (first - torch.tensor(IMAGENET[0]).view(3, 1, 1)) / torch.tensor(IMAGENET[1]).view(3, 1, 1)
    torch.testing.assert_close(batch.x[0], ref, rtol=0, atol=1e-6)


def test_bench_loader_section_on_tiny_images(monkeypatch):
    """`make bench`'s loader section runs end to end (no timing asserts: the figures are reported, not tested)."""
    from experiments.drivers import bench_loader

    monkeypatch.setenv("IMG_PER_S", "1000")
    out = bench_loader.bench_loader(n=4, repeat=1, workers=(0,), sizes=((120, 90),))
    sec = out["120x90"]
    for path in bench_loader.PATHS:
        rate = sec[path]["workers=0"]["img_per_s_per_core"]
        assert rate > 0 and sec["cores_per_gpu"][path]["1000"] == -(-1000 // rate)
    for diff in sec["pixel_difference_vs_pil"].values():
        assert 0 <= diff["mean_abs"] <= diff["max_abs"] <= 255
    lines = bench_loader.table(out)
    assert len(lines) == len(bench_loader.PATHS) and all("img/s/core" in line for line in lines)


def test_plan_prints_loader_cores_per_gpu_from_the_bench(tmp_path):
    import json

    from experiments.drivers import plan

    bench = tmp_path / "bench.json"
    assert plan.loader_cores(set(), 2000.0, bench) == ""
    assert "run `make bench`" in plan.loader_cores({"pil"}, 2000.0, bench)
    per_core = {"800x600": 164, "500x375": 280}
    bench.write_text(json.dumps({"loader": {"cpu_capability": "AVX512", **{
        size: {"pil": {"workers=0": {"img_per_s_per_core": 1}, "workers=2": {"img_per_s_per_core": r}}}
        for size, r in per_core.items()}}}))
    line = plan.loader_cores({"pil"}, 2000.0, bench)
    # ceil(2000 / 164) = 13 and ceil(2000 / 280) = 8, from the 2-worker figures
    assert "pil path: 13 at 800x600 (164 img/s per core), 8 at 500x375 (280 img/s per core)" in line
    assert "not measured by make bench" in plan.loader_cores({"cuda"}, 2000.0, bench)
