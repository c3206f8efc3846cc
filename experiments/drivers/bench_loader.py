"""`make bench` loader section: the streamed folder path (Pl@ntNet-300K's train transform, Resize(256) →
RandomCrop(224)) on JPEGs the bench writes (quality 90) at 800 × 600 and 500 × 375.

Per path, image size and worker count (0 and 2): images per CPU-second of everything the loader runs (the main
process's `process_time` plus the workers' user + system time from /proc), i.e. images/s per core, best of the
repeats; and with 2 workers the wall-clock images/s. Paths: `former` (the per-sample float path this replaced:
ToTensor + Normalize in the worker, float32 batches), `pil` (the exact default: uint8 crops, normalised per batch),
`pil_draft` and `torchvision` (opt-in decoders; `cuda` needs a GPU and is not measured here). Also each opt-in
decoder's pixel difference from `pil` after resize (mean and max absolute, uint8 levels, over the bench images),
and the cores one GPU needs at `IMG_PER_S` images/s (environment variable, default 2000 and 5000).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from experiments.engine.data import (
    PREFETCH_FACTOR,
    FolderSplit,
    Meta,
    StreamLoader,
    StreamPool,
)
from experiments.engine.decode import ImageView

SIZES = ((800, 600), (500, 375))
RESIZE, CROP, BATCH = 256, 224, 32
PATHS = ("former", "pil", "pil_draft", "torchvision")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_jpegs(folder: Path, size: tuple[int, int], n: int, seed: int = 0) -> list[str]:
    """`n` photo-like JPEGs (smooth colour fields plus sensor-like noise; quality 90) of `size` (w, h)."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    files = []
    for i in range(n):
        arr = np.full((h, w, 3), 110.0, dtype=np.float32)
        for c in range(3):
            for _ in range(6):
                f = rng.uniform(0.005, 0.08, 2)
                arr[..., c] += 30 * np.sin(xx * f[0] + yy * f[1] + rng.uniform(0, 6))
        arr += rng.normal(0, 6, arr.shape)
        path = folder / f"{w}x{h}_{i}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        files.append(str(path))
    return files


class _FormerSplit(torch.utils.data.Dataset):
    """The path before issue 25: PIL decode → Resize → RandomCrop → ToTensor → Normalize per sample."""

    def __init__(self, files: list[str]):
        from torchvision import transforms as T

        self.files = files
        self.tf = T.Compose([T.Resize(RESIZE), T.RandomCrop(CROP), T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.tf(im.convert("RGB")), 0, i


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's live child processes (the DataLoader workers)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for child in mp.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def _passes(path: str, files: list[str], workers: int, prefetch: int = PREFETCH_FACTOR):
    """A callable running one pass (a warm pool: workers start before the first timed pass)."""
    if path == "former":
        loader = torch.utils.data.DataLoader(_FormerSplit(files), batch_size=BATCH, shuffle=True,
                                             num_workers=workers, persistent_workers=workers > 0)
        return lambda: sum(len(b[0]) for b in loader)
    y = torch.zeros(len(files), dtype=torch.long)
    split = FolderSplit(files, y, ImageView(RESIZE, CROP, random=True, decode=path))
    meta = Meta(num_classes=1, class_names=["a"], class_counts=torch.tensor([len(files)]), mean=MEAN, std=STD,
                image_size=CROP)
    cpu = torch.device("cpu")
    pool = StreamPool({"train": split}, workers, pin_memory=False, prefetch_factor=prefetch)
    gen = torch.Generator().manual_seed(0)
    return lambda: sum(len(b.y) for b in StreamLoader(pool, "train", BATCH, cpu, meta, shuffle=True,
                                                      generator=gen))


def measure(path: str, files: list[str], workers: int, repeat: int, prefetch: int = PREFETCH_FACTOR) -> dict:
    """Images per CPU-second (all processes of the loader) and per wall-second, best of `repeat` passes."""
    run = _passes(path, files, workers, prefetch)
    run()
    per_core, wall = 0.0, 0.0
    for _ in range(repeat):
        c0, k0, t0 = time.process_time(), _children_cpu_s(), time.perf_counter()
        n = run()
        cpu = time.process_time() - c0 + _children_cpu_s() - k0
        per_core, wall = max(per_core, n / cpu), max(wall, n / (time.perf_counter() - t0))
    return {"img_per_s_per_core": round(per_core), "img_per_s_wall": round(wall)}


def pixel_difference(files: list[str]) -> dict:
    """Each opt-in CPU decoder against `pil` after resize (no crop), uint8 levels: mean and max |difference|; and
    `pil` itself against the former whole-image resize (`pil_vs_former`)."""
    exact = ImageView(RESIZE, None, decode="pil")
    out = {"pil_vs_former": _region_resize_difference(files)}
    for name in ("pil_draft", "torchvision"):
        view = ImageView(RESIZE, None, decode=name)
        diffs = [(view(f).int() - exact(f).int()).abs() for f in files]
        out[name] = {"mean_abs": round(float(torch.cat([d.flatten() for d in diffs]).float().mean()), 3),
                     "max_abs": int(max(int(d.max()) for d in diffs))}
    return out


def _region_resize_difference(files: list[str]) -> dict:
    """`pil` (resamples only the crop's region) against the former Resize → CenterCrop on the whole image, uint8
    levels: mean and max |difference| and the share of values that differ."""
    import torchvision.transforms as T
    from PIL import Image

    former = T.Compose([T.Resize(RESIZE), T.CenterCrop(CROP), T.PILToTensor()])
    view = ImageView(RESIZE, CROP, decode="pil")
    diffs = []
    for f in files:
        with Image.open(f) as im:
            diffs.append((view(f).int() - former(im.convert("RGB")).int()).abs().flatten())
    d = torch.cat(diffs)
    return {"mean_abs": round(float(d.float().mean()), 4), "max_abs": int(d.max()),
            "share_differing": round(float((d > 0).float().mean()), 5)}


def cores_per_gpu(per_core: float, rates: tuple[float, ...]) -> dict:
    return {f"{r:g}": math.ceil(r / per_core) for r in rates}


def bench_loader(n: int = 48, repeat: int = 2, workers: tuple[int, ...] = (0, 2),
                 sizes: tuple[tuple[int, int], ...] = SIZES) -> dict:
    rates = tuple(float(r) for r in os.environ.get("IMG_PER_S", "2000,5000").split(","))
    torch.manual_seed(0)
    result: dict = {"transform": f"Resize({RESIZE}) → RandomCrop({CROP}), batch {BATCH}, {n} JPEGs (quality 90) "
                                 f"per size; per core = images / CPU-second of the main process and the workers",
                    "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with tempfile.TemporaryDirectory(prefix="losslab-bench-jpeg-") as tmp:
        for w, h in sizes:
            files = write_jpegs(Path(tmp), (w, h), n)
            key = f"{w}x{h}"
            sec: dict = {"kb_per_image": round(sum(os.path.getsize(f) for f in files) / len(files) / 1024)}
            for path in PATHS:
                sec[path] = {f"workers={k}": measure(path, files, k, repeat) for k in workers}
            former = sec["former"]["workers=0"]["img_per_s_per_core"]
            sec["speedup_per_core_vs_former"] = {p: round(sec[p]["workers=0"]["img_per_s_per_core"] / former, 2)
                                                 for p in PATHS[1:]}
            sec["pixel_difference_vs_pil"] = pixel_difference(files)
            if 2 in workers:
                sec["prefetch_factor_2_workers_wall_img_per_s"] = {
                    f: measure("pil", files, 2, repeat, prefetch=f)["img_per_s_wall"] for f in (2, 4)}
            sec["cores_per_gpu"] = {p: cores_per_gpu(sec[p][f"workers={max(workers)}"]["img_per_s_per_core"], rates)
                                    for p in PATHS}
            result[key] = sec
    return result


def table(loader: dict) -> list[str]:
    """Lines of the bench table: images/s per core (0 | 2 workers) per path and size, then cores per GPU."""
    lines = []
    for size, sec in loader.items():
        if not isinstance(sec, dict) or "cores_per_gpu" not in sec:
            continue
        for path in PATHS:
            rates = " | ".join(f"{sec[path][k]['img_per_s_per_core']}" for k in sec[path])
            cores = ", ".join(f"{v} at {r}" for r, v in sec["cores_per_gpu"][path].items())
            lines.append(f"{'loader ' + size + ' ' + path:32s}{rates:>12s} img/s/core (0 | 2 workers); "
                         f"cores per GPU: {cores} img/s")
    return lines
