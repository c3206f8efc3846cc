"""The CUDA path (`make gpu-check`): every test runs on each device; the `cuda` half is skipped without a GPU,
the CPU half runs in `make test`, so neither rots. Checks: every loss's training step and every metric set on
the device, `amp` in both dtypes (float16 with the GradScaler), `channels_last`, `compile`, the `cuda` decoder
against the CPU decoders' pixels, and a checkpoint written on one device resumed on the other."""
from __future__ import annotations

import math

import pytest
import torch

from experiments.drivers.train import CONF_DIR

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(not HAS_CUDA, reason="no GPU visible")])]
LOSSES = sorted(p.stem for p in (CONF_DIR / "loss").glob("*.yaml"))
# Datasets the losses need beyond a plain classification set (ordinal, hierarchy): the engine refuses the rest.
DATASET_OF = {"coral": "synthetic_age", "corn": "synthetic_age", "sord": "synthetic_age", "cdw_ce": "synthetic_age",
              "mean_variance": "synthetic_age", "hxe": "synthetic_cifar", "soft_labels": "synthetic_cifar",
              "simloss": "synthetic_age"}


# CPU halves in `make test`: one loss per kind of head or target (the others' CPU halves are `slow`: ~0.7 s each)
FAST_ON_CPU = ("ce", "role", "two_head", "coral", "hxe", "simloss", "ldam_drw")
PAIRS = [pytest.param(loss, "cpu", marks=() if loss in FAST_ON_CPU else pytest.mark.slow) for loss in LOSSES] + [
    pytest.param(loss, "cuda", marks=DEVICES[1].marks) for loss in LOSSES]


@pytest.mark.parametrize("loss,device", PAIRS)
def test_every_loss_trains_a_step_and_every_metric_evaluates_on_the_device(loss, device, compose):
    from experiments.engine.config import build_components
    from experiments.engine.data import make_loader
    from experiments.engine.evaluation import Evaluator, autocast_for

    cfg, _ = compose(f"loss={loss}", f"dataset={DATASET_OF.get(loss, 'synthetic_cifar10')}", "model=small_cnn",
                     "model.width=4")
    dev = torch.device(device)
    data, engine_loss, model, metrics = build_components(cfg)
    model.to(dev)
    engine_loss.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(value, optimizer="main"):
        opt.zero_grad()
        value.backward()
        opt.step()

    batch = next(iter(make_loader(data, "train", 16, dev, train=True, generator=torch.Generator().manual_seed(0))))
    engine_loss.on_epoch_start(0, 1)
    stats = engine_loss.training_step(model, batch.to(dev, False), step, autocast_for(False, "bfloat16", dev))
    assert all(v.device.type == dev.type and math.isfinite(float(v)) for v in stats.values())
    assert all(p.device.type == dev.type for p in model.parameters())
    values, _ = Evaluator(64, dev, False, 0, autocast_for(False, "bfloat16", dev)).final(model, engine_loss, data,
                                                                                         metrics)
    finite = [v for v in values.values() if v is not None]
    assert finite and all(math.isfinite(v) for v in finite)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_amp_in_both_dtypes_with_channels_last_trains_to_finite_numbers(amp_dtype, device, train_run):
    record = train_run("dataset=synthetic_cifar10", "model=small_cnn", "model.width=4",
                       f"trainer.device={device}", "trainer.amp=true", f"trainer.amp_dtype={amp_dtype}",
                       "trainer.channels_last=true")
    assert record["status"] == "completed" and record["device"].startswith(device)
    assert all(math.isfinite(v) for v in record["metrics"].values() if isinstance(v, float))


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow), *DEVICES[1:]])
def test_compiled_model_trains(device, train_run):
    record = train_run("dataset=synthetic_cifar10", "model=small_cnn", "model.width=4",
                       f"trainer.device={device}", "trainer.compile=true")
    assert record["status"] == "completed"


@pytest.mark.parametrize("device", DEVICES)
def test_cuda_decoder_matches_the_cpu_decoders_pixels(device, tmp_path):
    """`decode_batch` on the device against the exact CPU path (`pil`) on the same JPEGs, centre crop: nvJPEG
    and libjpeg may differ by a few levels (IDCT rounding); the mean difference stays small."""
    import numpy as np
    from PIL import Image

    from experiments.engine.decode import ImageView, decode_batch

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        arr = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
        arr[:, :24] = 90   # flat areas: decoders agree exactly there
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(str(path))
    raw_view = ImageView(36, 32, random=False, decode="cuda")
    got = decode_batch([raw_view(p) for p in paths], raw_view, device).cpu().to(torch.int16)
    want = torch.stack([ImageView(36, 32, random=False, decode="pil")(p) for p in paths]).to(torch.int16)
    assert got.shape == want.shape == (4, 3, 32, 32)
    diff = (got - want).abs().float()
    assert diff.mean() < 3.0 and diff[..., :, :8].max() <= 2


@pytest.mark.parametrize("first,second", [("cpu", "cpu"), pytest.param(
    "cuda", "cpu", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no GPU visible")])])
def test_checkpoint_written_on_one_device_resumes_on_the_other_and_back(first, second, compose):
    """Interrupted after epoch 1 on `first`, resumed for epoch 2 on `second`, then the same config finished on
    `first` from scratch: one run id, one completed record on the device that finished it."""
    from experiments.drivers.train import run

    base = ("dataset=synthetic_cifar10", "model=small_cnn", "model.width=4",
            "trainer.epochs=2", "trainer.checkpoint_every_s=0")
    quiet = {"log": lambda *a, **k: None}
    cfg, choices = compose(*base, f"trainer.device={first}", "trainer.interrupt_after=1")
    assert run(cfg, choices, **quiet)["status"] == "interrupted"
    cfg, choices = compose(*base, f"trainer.device={second}", "trainer.interrupt_after=1")
    record = run(cfg, choices, **quiet)
    assert record["status"] == "completed" and len(record["history"]) == 2
    assert record["device"].startswith(second)
