"""The in-memory batch augmentation against a per-sample reference (flip, then zero-pad and crop)."""
import pytest
import torch
import torch.nn.functional as F

from experiments.engine.data import BatchAugment, normalize


def reference(x: torch.Tensor, pad: int, flip: bool, seed: int) -> torch.Tensor:
    """Same draws in the same order (flip mask, then row and column offsets), one image at a time."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    mask = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    if pad == 0:
        return torch.stack([img.flip(2) if m else img for img, m in zip(x, mask)])
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    out = []
    for img, m, a, b in zip(x, mask, dy.tolist(), dx.tolist()):
        img = F.pad(img.flip(2) if m else img, (pad, pad, pad, pad))
        out.append(img[:, a:a + h, b:b + w])
    return torch.stack(out)


@pytest.mark.parametrize("pad,flip", [(4, True), (4, False), (0, True), (2, True)])
def test_batch_augment_equals_per_sample_reference(pad, flip):
    x = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = BatchAugment(crop_padding=pad, flip=flip)(x, torch.Generator().manual_seed(7))
    assert torch.equal(got, reference(x, pad, flip, 7)) and got.is_contiguous()
    if flip:  # both branches occur in 64 draws
        mask = torch.rand(64, generator=torch.Generator().manual_seed(7)) < 0.5
        assert 0 < int(mask.sum()) < 64


def test_normalize_is_x_over_255_minus_mean_over_std():
    x = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.3)
    want = torch.stack([(x[0, c].double() / 255 - mean[c]) / std[c] for c in range(3)])[None]
    assert torch.allclose(normalize(x, mean, std).double(), want, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_augmented_batches_are_nhwc_in_memory_whatever_the_channel_count(channels):
    """The layout decides which convolution runs (and its rounding): one channel must not fall back to NCHW."""
    from experiments.engine.data import InMemoryLoader, Meta, TensorSplit

    x = torch.randint(0, 256, (20, channels, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    meta = Meta(num_classes=2, class_names=["a", "b"], class_counts=torch.tensor([10, 10]),
                mean=(0.5,) * channels, std=(0.25,) * channels)
    loader = InMemoryLoader(TensorSplit(x, torch.arange(20) % 2), meta, 8, torch.device("cpu"), shuffle=True,
                            generator=torch.Generator().manual_seed(0), augment=BatchAugment(1, True))
    for batch in loader:
        n = len(batch.y)
        assert batch.x.stride() == (8 * 6 * channels, 1, 6 * channels, channels)
        assert batch.x.shape == (n, channels, 8, 6)
