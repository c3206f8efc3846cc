"""Pieces the rehearsal-data generators share (average_k/rehearsal.py, age_estimation/rehearsal.py,
image_classification/rehearsal.py): a dataset written in its real on-disk format at its real counts, with tiny
images. The formats and the counts are real, the pixels are not.

`new_tree` writes a dataset folder under a temporary name and renames it into place when complete, so an
interrupted generation leaves nothing a reader would take for the dataset. `jpeg_pool` encodes a few distinct
small JPEGs once; generators write their bytes, so a file costs a write, not an encode. `long_tail` splits a
total over classes with a power-law share, every class getting at least `least` items.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.engine.models import small_cnn


@dataclass
class Written:
    """What a generator wrote: files, bytes on disk (allocated blocks) and seconds."""
    root: str
    files: int
    disk_bytes: int
    seconds: float

    def line(self) -> str:
        return (f"{self.root}: {self.files:,} files, {self.disk_bytes / 2**20:,.1f} MiB on disk, "
                f"{self.seconds:,.1f} s")


def disk_usage(root: Path) -> tuple[int, int]:
    """(files, bytes of allocated blocks) under `root`."""
    files = used = 0
    for path, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(path, name))
            files += 1
            used += st.st_blocks * 512
    return files, used


@contextlib.contextmanager
def new_tree(root: str | os.PathLike):
    """Yield a temporary folder beside `root`; on success it becomes `root` (which must not exist yet). Yields
    a dict the caller may fill; `written` in it is set to a `Written` on exit."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} exists; generators write only where a dataset is absent")
    tmp = root.with_name(f".{root.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out: dict = {}
    t0 = time.perf_counter()
    try:
        yield tmp, out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, root)
    files, used = disk_usage(root)
    out["written"] = Written(str(root), files, used, round(time.perf_counter() - t0, 2))


def jpeg_pool(n: int, sizes: list[tuple[int, int]], seed: int = 0) -> list[bytes]:
    """`n` distinct JPEG encodings of random images, cycling through `sizes` (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def long_tail(total: int, n: int, least: int = 1, exponent: float = 1.0) -> np.ndarray:
    """Integer counts for `n` classes summing to `total`, class i's share ∝ (i + 1)^-exponent above `least`
    each (largest remainders); refuses a total below n · least."""
    if total < n * least:
        raise ValueError(f"total {total} < {n} classes × at least {least}")
    share = (np.arange(1, n + 1, dtype=np.float64) ** -exponent)
    share = share / share.sum() * (total - n * least)
    counts = np.floor(share).astype(np.int64)
    rest = total - n * least - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
    return counts + least


def rehearsal_model(in_channels: int = 3, image_size: int = 32, width: int = 8, **paper_options):
    """The rehearsal's stand-in for a paper's backbone (conf/local/rehearse.yaml): `small_cnn` of `width`.
    `paper_options` (weights, weights_path: the paper model's keys the experiment sets) are accepted and
    ignored, so the stand-in merges over whichever model a sweep picks; nothing is downloaded."""
    return small_cnn(in_channels, image_size, width)
