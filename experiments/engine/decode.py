"""How a streamed image file becomes a uint8 tensor: decoder, resize, crop, flip (`ImageView`).

`decode` picks the decoder (`dataset.decode`):

- `pil` (default, the exact path): PIL decodes the full image; torchvision's `Resize(resize)` (bilinear, shorter
  side) then `RandomCrop`/`CenterCrop(crop)` of the papers' code is done as one PIL resample of the crop's region
  (`Image.resize(box=…)`: the same sampling positions and filter, only the crop's output pixels computed), then
  `PILToTensor`. PIL's fixed-point filter weights make it differ from resizing the whole image by one level in
  rare pixels (`make bench`: 0.008 % of values at 800 × 600, 0.1 % at 500 × 375, never more than 1). Random
  draws are torchvision's own (`torch.randint` i then j, `torch.rand` for the flip), so a seed gives the crops it
  always gave.
- `pil_draft`: PIL's JPEG decoder scales by 1/2, 1/4 or 1/8 in the DCT (`Image.draft`), never below the resize
  target, then resizes on uint8 like `torchvision`; an image too small to scale is read as by `torchvision`. A
  deviation, measured by `make bench`.
- `torchvision`: `torchvision.io.decode_image` (libjpeg-turbo) into a uint8 tensor, resized on uint8 with
  antialiasing, cropped by slicing. A deviation, measured by `make bench`.
- `cuda`: workers only read the file bytes; the main process decodes the batch with nvJPEG
  (`decode_jpeg(device="cuda")`) and resizes, crops and flips each image there (`decode_batch`). Refused where
  no CUDA device is visible.

Crop positions and flips come from the same draws in the CPU decoders (`crop_box`, computed on the full image's
resized size), so they differ only in pixels, never in which part of an image a sample shows; `cuda` draws them in
the main process from a generator seeded per pass (deterministic, but other positions than the CPU decoders').
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from experiments.engine.errors import UserError

DECODERS = ("pil", "pil_draft", "torchvision", "cuda")
MODES = {1: "L", 3: "RGB"}


def check_decoder(name: str) -> None:
    """Refuse an unknown decoder, or `cuda` where no CUDA device is visible, in one line."""
    if name not in DECODERS:
        raise UserError(f"dataset.decode={name!r}: choose one of {', '.join(DECODERS)} (pil is the exact path)")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("dataset.decode=cuda: no CUDA device is visible (nvJPEG decodes on the GPU); use "
                        "dataset.decode=pil (exact) or dataset.decode=torchvision on this machine")


def resized_size(h: int, w: int, size: int | None) -> tuple[int, int]:
    """(height, width) after torchvision's `Resize(size)`: the shorter side becomes `size`, the longer one keeps
    the aspect ratio, truncated. None keeps the image as it is."""
    if size is None:
        return h, w
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def crop_box(h: int, w: int, crop: int | None, random: bool,
             generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop: torchvision's `RandomCrop.get_params` draws (top, then left, none
    when the crop is the whole image) or `CenterCrop`'s rounding."""
    if crop is None:
        return 0, 0, h, w
    if h < crop or w < crop:
        raise UserError(f"an image resized to {h}×{w} is smaller than dataset.crop={crop}; lower dataset.crop "
                        f"or raise dataset.resize")
    if not random:
        return int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0)), crop, crop
    if h == crop and w == crop:
        return 0, 0, h, w
    top = int(torch.randint(0, h - crop + 1, size=(1,), generator=generator).item())
    left = int(torch.randint(0, w - crop + 1, size=(1,), generator=generator).item())
    return top, left, crop, crop


def draw_flip(flip: bool, generator: torch.Generator | None = None) -> bool:
    """`RandomHorizontalFlip(0.5)`'s draw (only when flipping is on)."""
    return bool(flip and torch.rand(1, generator=generator).item() < 0.5)


@dataclass(frozen=True)
class ImageView:
    """Reads one image file as a uint8 C×crop×crop tensor (or, for `cuda`, its raw bytes; see `decode_batch`).

    `resize`: shorter side after resizing (None: as stored); `crop`: square crop side (None: none); `random`:
    random crop (training) or centre crop; `flip`: random horizontal flip; `channels`: 3 (RGB) or 1 (grey)."""
    resize: int | None = None
    crop: int | None = None
    random: bool = False
    flip: bool = False
    channels: int = 3
    decode: str = "pil"

    def __post_init__(self) -> None:
        if self.decode not in DECODERS:
            check_decoder(self.decode)
        if self.channels not in MODES:
            raise UserError(f"channels={self.channels}: streamed images are read as 3 (RGB) or 1 (grey) channels")

    def __call__(self, path: str) -> torch.Tensor:
        return getattr(self, READERS[self.decode])(path)

    def _read_mode(self):
        from torchvision.io import ImageReadMode

        return ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY

    def _raw(self, path: str) -> torch.Tensor:
        import torchvision.io as io

        return io.read_file(path)

    def _torchvision(self, path: str) -> torch.Tensor:
        import torchvision.io as io

        return self.geometry(io.decode_image(io.read_file(path), mode=self._read_mode()))

    def _pil_draft(self, path: str) -> torch.Tensor:
        from PIL import Image

        mode = MODES[self.channels]
        with Image.open(path) as im:
            size = im.size
            target = resized_size(im.height, im.width, self.resize)
            im.draft(mode, target[::-1])  # JPEG only (a no-op otherwise); keeps ≥ the target's pixels
            if im.size == size:  # no DCT scaling fits: libjpeg-turbo through torchvision decodes faster than PIL
                return self._torchvision(path)
            arr = np.array(im if im.mode == mode else im.convert(mode))
        # H×W×C memory seen as C×H×W: the channels-last layout the uint8 resize kernel is fast on
        return self.geometry(torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1),
                             target=target)

    def _pil(self, path: str) -> torch.Tensor:
        import torchvision.transforms.functional as F
        from PIL import Image

        mode = MODES[self.channels]
        with Image.open(path) as im:
            im = im if im.mode == mode else im.convert(mode)  # convert() of a matching mode is only a copy
            h, w = resized_size(im.height, im.width, self.resize)
            top, left, ch, cw = crop_box(h, w, self.crop, self.random)
            if (h, w) != (im.height, im.width):
                # PIL resamples only the crop's region of the full image (`box`, in source pixels): the same
                # sampling positions and filter as resizing the whole image and cropping after, at the crop's
                # share of the resize cost; PIL's fixed-point filter weights then round to ±1 level in rare pixels
                sy, sx = im.height / h, im.width / w
                im = im.resize((cw, ch), Image.Resampling.BILINEAR,
                               box=(left * sx, top * sy, (left + cw) * sx, (top + ch) * sy))
            elif (ch, cw) != (h, w):
                im = im.crop((left, top, left + cw, top + ch))
            if draw_flip(self.flip):
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return F.pil_to_tensor(im)

    def geometry(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 target: tuple[int, int] | None = None) -> torch.Tensor:
        """Resize (bilinear, antialiased) to `target` (default: from x's size), crop and flip a decoded C×H×W uint8
        tensor on its device. A DCT-scaled decode passes the target of the full-size image, so its crop draws
        are the exact path's."""
        h, w = target or resized_size(x.shape[-2], x.shape[-1], self.resize)
        if (h, w) != tuple(x.shape[-2:]):
            x = resize_uint8(x, h, w)
        top, left, ch, cw = crop_box(h, w, self.crop, self.random, generator)
        x = x[..., top:top + ch, left:left + cw]
        return (x.flip(-1) if draw_flip(self.flip, generator) else x).contiguous()


READERS = {"pil": "_pil", "pil_draft": "_pil_draft", "torchvision": "_torchvision", "cuda": "_raw"}


def resize_uint8(x: torch.Tensor, h: int, w: int, native: bool | None = None) -> torch.Tensor:
    """Bilinear antialiased resize of a C×H×W uint8 image. On the CPU PyTorch's uint8 kernel runs on it directly
    (0.47 ms for 800×600 → 341×256 in the channels-last layout `decode_image` returns, vs 3.0 ms for torchvision's
    `F.resize`, which goes through float32); other devices resize in float32 and round back (±1 level).
    `native` forces one route (tests)."""
    x4 = x.unsqueeze(0)
    if x.device.type == "cpu" if native is None else native:
        out = torch.nn.functional.interpolate(x4, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    else:
        out = torch.nn.functional.interpolate(x4.float(), size=(h, w), mode="bilinear", antialias=True,
                                              align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    return out[0]


def decode_batch(raw: Sequence[torch.Tensor], view: ImageView, device: torch.device | str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The `cuda` decoder's batch step: file bytes → one N×C×crop×crop uint8 batch on `device`, decoded in one
    `decode_jpeg` call (nvJPEG on CUDA; libjpeg on the CPU, which is how its non-GPU parts are tested), then
    resized, cropped and flipped per image on the device; crop and flip draws come from `generator` in batch
    order."""
    import torchvision.io as io

    images = io.decode_jpeg(list(raw), mode=view._read_mode(), device=device)
    return torch.stack([view.geometry(x, generator) for x in images])
