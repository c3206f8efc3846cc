"""The data path: splits held as uint8 tensors (augmented in batches on the device) or streamed from folders.

Every batch is a `Batch(x, y, index)`; `index` is the position of the sample in its split, so losses can
keep per-example state. Datasets return a `Data` (train/val/test splits + `Meta`).

Fingerprint: `Data.fingerprint` (16 hex of a sha256, in the run JSON's `data` block) identifies exactly what a run
trained and was evaluated on: the class names and, per split, the labels plus either the uint8 image tensor
(shape and bytes; exact, and cheap: sha256 runs at ~1.8 GB/s here, 0.10 s for CIFAR-10's 184 MB) or, for
streamed splits, every file's (path relative to the splits' common folder, size, mtime_ns). Split, imbalance
and generator parameters need no separate entry: they act only through the images and labels hashed.

Caches (`cached`): decoded or generated data saved with `torch.save` (atomic: temp file + rename). A cache built
from files (`sources`) carries their signature in its name (`<name>_src<12 hex>.pt`), a sha256 over each
file's (relative path, size, mtime_ns): a changed, added, removed or touched source gives a new name, so the
cache is rebuilt (older signatures of the same cache are then removed). Size + mtime_ns was chosen over a
content hash because it costs one `stat` per file, not a read of every image (a rewrite that keeps size and
mtime_ns is not detected). The stand-ins list their generator modules as sources. An unreadable (e.g. truncated)
cache is reported in one `warning:` line on stderr, renamed to `<file>.corrupt-<timestamp>` (kept, not deleted) and rebuilt.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from experiments.engine.checkpoint import atomic_write, set_aside
from experiments.engine.decode import decode_batch
from experiments.engine.errors import UserError
from experiments.engine.imbalance import Imbalance, select_indices


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device | str, channels_last: bool = False) -> "Batch":
        x = self.x.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, self.y.to(device, non_blocking=True), self.index.to(device, non_blocking=True))


@dataclass
class Meta:
    """What losses and metrics may know about a dataset (read-only for them).

    `class_counts` are training-split counts. `superclass[c]` is the coarse class of class c (or None).
    `ordered` declares that class order means something (ages). `natural_similarity` names the similarity a structure-aware loss should use when none is configured
    ("ordinal", "superclass", ...). `extras` carries task-specific items (e.g. `class_vectors_path`).
    """

    num_classes: int
    class_names: list[str]
    class_counts: torch.Tensor
    channels: int = 3
    image_size: int = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    superclass: torch.Tensor | None = None
    superclass_names: list[str] | None = None
    natural_similarity: str | None = None
    ordered: bool = False             # class index order is meaningful (ages): ordinal metrics apply
    extras: dict[str, Any] = field(default_factory=dict)


class TensorSplit:
    """A split held in memory: `x` uint8 (N, C, H, W), `y` int64 (N,)."""
    def __init__(self, x: torch.Tensor, y: torch.Tensor, names: Sequence[str] | None = None):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"TensorSplit wants uint8 N×C×H×W images, got {x.dtype} {tuple(x.shape)}")
        if len(x) != len(y):
            raise ValueError(f"TensorSplit: {len(x)} images but {len(y)} labels")
        if names is not None and len(names) != len(y):
            raise ValueError(f"TensorSplit: {len(names)} names but {len(y)} labels")
        self.x = x
        self.y = y.long()
        self.names = list(names) if names is not None else None  # source file names, when the format has them

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        idx = torch.as_tensor(idx, dtype=torch.long)
        names = [self.names[i] for i in idx.tolist()] if self.names is not None else None
        return TensorSplit(self.x[idx], self.y[idx], names)


class FolderSplit(torch.utils.data.Dataset):
    """A split streamed from image files; `view(path)` reads one file as a uint8 C×H×W tensor
    (`experiments.engine.decode.ImageView`: decoder, resize, crop, flip); yields (x, y, index). Normalisation
    happens on the training device, per batch (`StreamLoader`)."""
    def __init__(self, files: Sequence[str | os.PathLike], y: torch.Tensor, view: Callable[[str], torch.Tensor]):
        if len(files) != len(y):
            raise ValueError(f"FolderSplit: {len(files)} files but {len(y)} labels")
        self.files = [str(f) for f in files]
        self.y = torch.as_tensor(y).long()
        self.view = view

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def subset(self, idx: torch.Tensor) -> "FolderSplit":
        idx = torch.as_tensor(idx).tolist()
        return FolderSplit([self.files[i] for i in idx], self.y[idx], self.view)

    def __getitem__(self, i: int):
        return self.view(self.files[i]), self.y[i], i


Split = TensorSplit | FolderSplit


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    meta: Meta
    augment: "BatchAugment | None" = None  # applied to in-memory train batches only

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @functools.cached_property
    def fingerprint(self) -> str:
        """16 hex of a sha256 over what this data trains and evaluates on (module docstring); computed on first
        use (the run record asks right after building) and kept."""
        return data_fingerprint(self)

    def summary(self) -> dict[str, Any]:
        return {
            "num_classes": self.meta.num_classes,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "train_class_counts": self.meta.class_counts.tolist(),
            "fingerprint": self.fingerprint,
        }


def class_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(y.long(), minlength=num_classes)


# --------------------------------------------------------------------------- fingerprints
def common_root(files: Sequence[str | os.PathLike]) -> Path:
    """The deepest folder holding all `files`."""
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])) if files else Path(".")


def file_signature(files: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """sha256 hex over (path relative to `root`, size, mtime_ns) of each file, in the order given."""
    base = os.path.join(os.path.abspath(root if root is not None else common_root(files)), "")
    lines = []
    for f in map(os.path.abspath, files):
        if not f.startswith(base):
            raise ValueError(f"{f} is not below {base}")
        st = os.stat(f)
        lines.append(f"{f[len(base):].replace(os.sep, '/')}\0{st.st_size}\0{st.st_mtime_ns}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def data_fingerprint(data: "Data") -> str:
    h = hashlib.sha256(json.dumps(list(data.meta.class_names)).encode())
    files = [f for s in data.splits().values() if isinstance(s, FolderSplit) for f in s.files]
    root = common_root(files)
    for name, split in data.splits().items():
        h.update(f"{name}:{len(split)}".encode())
        h.update(split.y.detach().cpu().long().numpy().tobytes())
        if isinstance(split, TensorSplit):
            x = split.x.detach().cpu().contiguous()
            h.update(str(tuple(x.shape)).encode())
            h.update(memoryview(x.numpy().reshape(-1)))
        else:
            h.update(file_signature(split.files, root).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- augmentation on the device
@dataclass
class BatchAugment:
    """Random crop with zero padding and horizontal flip, applied to a whole uint8 batch at once."""
    crop_padding: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        dev = generator.device
        mask = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device) if self.flip else None
        p = self.crop_padding
        if p == 0:
            return x if mask is None else torch.where(mask[:, None, None, None], x.flip(3), x)
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev).to(x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # n×h
        j = torch.arange(w, device=x.device)[None, :]
        cols = dx[:, None] + j  # n×w; flipped samples read their columns backwards: flip and crop in one gather
        if mask is not None:
            cols = torch.where(mask[:, None], (w - 1 + 2 * p) - dx[:, None] - j, cols)
        # one gather over the flattened padded image, the same n×h·w positions for every channel: a contiguous
        # batch (advanced indexing was 4× slower and left a permuted layout that slowed every later pass)
        where = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.view(n, c, -1).gather(2, where).view(n, c, h, w)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype=torch.float32) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    return x.to(dtype).div_(255.0).sub_(m).div_(s)  # in place: the same values as (x/255 − m)/s, no temporaries


# --------------------------------------------------------------------------- loaders
class InMemoryLoader:
    """Batches of an in-memory split, kept on `device`; shuffling and augmentation use `generator`."""
    def __init__(self, split: TensorSplit, meta: Meta, batch_size: int, device: torch.device, *,
                 shuffle: bool, generator: torch.Generator | None = None, augment: BatchAugment | None = None,
                 drop_last: bool = False):
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        self.meta = meta
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.generator = generator
        self.augment = augment
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.generator.device).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.x[idx]
            if self.augment is None:
                yield Batch(normalize(x, self.meta.mean, self.meta.std), self.y[idx], idx)
                continue
            x = normalize(self.augment(x, self.generator), self.meta.mean, self.meta.std)
            yield Batch(_nhwc(x), self.y[idx], idx)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """x (N×C×H×W) copied into fresh NHWC memory: the layout this loader has always given augmented batches (on the
    CPU oneDNN convolutions run ~30 % faster on it; normalising before, contiguous, is 5× faster). Not
    `contiguous(channels_last)`, which leaves a one-channel batch NCHW-strided and so changes which convolution
    runs."""
    n, c, h, w = x.shape
    return torch.empty((n, h, w, c), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2).copy_(x)


# Prefetched batches per worker. Measured (Pl@ntNet-300K train transform, 2 workers, 800×600 JPEGs, 5 interleaved
# passes on the shared 2-core machine): 4 gave a median 87 images/s against 78 for torch's default 2 (a deeper
# queue rides out moments when the consuming process is descheduled); uint8 batches make 4 hold as much shared
# memory as 1 float32 batch did.
PREFETCH_FACTOR = 4


def _reseed_worker(seed: int) -> None:
    """Seed a worker's RNGs as DataLoader + the former `worker_init_fn` did when a pass started its workers:
    torch with `base seed + worker id`, NumPy and `random` with that modulo 2**32."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed % 2**32)


class _Splits(torch.utils.data.Dataset):
    """The folder splits of one `Data`, served by one worker pool. An item is (split, index, base seed, pass):
    the first item of a new pass a worker sees reseeds it with `base seed + worker id`, which is what a fresh
    (non-persistent) DataLoader did at every pass, so persistent workers draw the same crops as before."""

    def __init__(self, splits: dict[str, FolderSplit]):
        self.splits = splits
        self.current = -1

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits.values())

    def __getitem__(self, item: tuple[str, int, int, int]):
        name, i, base, current = item
        info = torch.utils.data.get_worker_info()
        if current != self.current and info is not None:
            _reseed_worker(base + info.id)
        self.current = current
        return self.splits[name][i]


class _Batches:
    """The batch sampler of a pool: the batches of the pass about to start, set in the main process before the
    DataLoader is iterated (persistent workers keep the DataLoader, and so this sampler, across passes)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int, int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(items: list) -> tuple:
    """Stack uint8 images (in shared memory, in a worker); raw file bytes (`decode: cuda`) stay a list."""
    if items[0][0].dim() == 1:
        xs, ys, idx = zip(*items)
        return list(xs), torch.stack(ys), torch.tensor(idx)
    return torch.utils.data.default_collate(items)


class StreamPool:
    """One DataLoader (and, with workers, one persistent pool of worker processes) over every folder split of a
    `Data`: workers start once per run instead of at every epoch and every evaluation. One pass at a time (as the
    trainer runs them); a pass left unfinished is drained by the DataLoader when the next one starts."""

    def __init__(self, splits: dict[str, FolderSplit], num_workers: int, pin_memory: bool,
                 prefetch_factor: int = PREFETCH_FACTOR):
        self.splits, self.sampler, self.passes = splits, _Batches(), 0
        # a private generator: DataLoader's own seed draw must not consume the caller's or the global RNG
        self.loader = torch.utils.data.DataLoader(
            _Splits(splits), batch_sampler=self.sampler, num_workers=num_workers, collate_fn=_collate,
            pin_memory=pin_memory, persistent_workers=num_workers > 0, generator=torch.Generator(),
            prefetch_factor=prefetch_factor if num_workers > 0 else None)

    def start(self, name: str, batch_size: int, shuffle: bool, drop_last: bool,
              generator: torch.Generator | None) -> int:
        """Plan the batches of one pass over split `name`, drawing what a DataLoader drew: the workers' base seed
        first, then (shuffle) the permutation. Returns the base seed."""
        base = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
        n = len(self.splits[name])
        if shuffle:
            if generator is None:  # RandomSampler without a generator seeds one from the global RNG
                generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        stop = n - n % batch_size if drop_last else n
        self.passes += 1
        self.sampler.batches = [[(name, i, base, self.passes) for i in order[b:b + batch_size]]
                                for b in range(0, stop, batch_size)]
        return base


def stream_pool(data: Data, num_workers: int, device: torch.device) -> StreamPool:
    """The pool of `data` for this worker count and device kind, made on first use and kept on `data`."""
    pools = data.__dict__.setdefault("_stream_pools", {})
    key = (num_workers, device.type == "cuda")
    if key not in pools:
        splits = {k: s for k, s in data.splits().items() if isinstance(s, FolderSplit)}
        pools[key] = StreamPool(splits, num_workers, pin_memory=device.type == "cuda")
    return pools[key]


class StreamLoader:
    """One pass over a streamed split: uint8 batches from the pool's workers go to `device` (pinned and
    non-blocking on CUDA) and are converted and normalised there in one batched op, as in-memory batches are."""

    def __init__(self, pool: StreamPool, name: str, batch_size: int, device: torch.device, meta: Meta, *,
                 shuffle: bool, generator: torch.Generator | None, drop_last: bool = False):
        self.pool, self.name, self.batch_size, self.device, self.meta = pool, name, batch_size, device, meta
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last

    def __len__(self) -> int:
        n = len(self.pool.splits[self.name])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        base = self.pool.start(self.name, self.batch_size, self.shuffle, self.drop_last, self.generator)
        view = self.pool.splits[self.name].view
        crops = torch.Generator().manual_seed(base)  # `decode: cuda` draws its crops in this process
        for x, y, idx in self.pool.loader:
            if isinstance(x, list):
                x = decode_batch(x, view, self.device, crops)
            x = normalize(x.to(self.device, non_blocking=True), self.meta.mean, self.meta.std)
            yield Batch(x, y.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True))


def make_loader(data: Data, split_name: str, batch_size: int, device: torch.device, *, train: bool,
                generator: torch.Generator | None = None, num_workers: int = 0):
    split = data.splits()[split_name]
    if isinstance(split, TensorSplit):
        return InMemoryLoader(split, data.meta, batch_size, device, shuffle=train, generator=generator,
                              augment=data.augment if train else None)
    # streamed: the generator must live on the CPU for the sampler
    cpu_gen = None
    if generator is not None:
        cpu_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator,
                                                                  device=generator.device).item()))
    return StreamLoader(stream_pool(data, num_workers, device), split_name, batch_size, device, data.meta,
                        shuffle=train, generator=cpu_gen)


# --------------------------------------------------------------------------- splitting helpers
def seeded_split(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """One permutation with `seed`, cut at int(cumulative fraction · n) (the SimLoss TrainValTest rule)."""
    perm = np.random.RandomState(seed).permutation(n)
    cuts = [int(sum(fractions[: i + 1]) * n) for i in range(len(fractions) - 1)]
    return np.split(perm, cuts)


def holdout_per_class(y: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, held_out) with `per_class` samples of every class held out, chosen with `seed`."""
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < per_class:
            raise UserError(f"dataset.val_per_class={per_class} but class {c} has only {len(idx)} images; "
                            f"lower dataset.val_per_class")
        held.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    held_t = torch.cat(held).sort().values if held else torch.empty(0, dtype=torch.long)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held_t] = False
    return torch.nonzero(mask).flatten(), held_t


def holdout_fraction(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, held_out) with round(fraction·n) samples held out, chosen with `seed`."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(fraction * n))
    return perm[k:].sort().values, perm[:k].sort().values


# --------------------------------------------------------------------------- caching
def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def cache_key(**params: Any) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


_SIGNED = re.compile(r"^(?P<stem>.+)_src[0-9a-f]{12}$")
_MISSING = object()


def cache_file(path: str | os.PathLike, sources: Sequence[str | os.PathLike],
               root: str | os.PathLike | None = None) -> Path:
    """`path` with the signature of `sources` in its name: `<stem>_src<12 hex><suffix>` (module docstring)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_src{file_signature(sources, root)[:12]}{path.suffix}")


def _load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:  # noqa: BLE001 — any unreadable cache is moved aside and rebuilt

        set_aside(path, f"cache, {type(e).__name__}", "rebuilt")
        return _MISSING


def _remove_stale(path: Path) -> None:
    """Delete the caches of the same name under other source signatures, and files derived from them
    (`<name>_src<hex>.*`); `.corrupt` files are kept."""
    mine = _SIGNED.match(path.stem)
    if mine is None:
        return
    stale = re.compile(re.escape(mine["stem"]) + r"_src(?!" + path.stem[-12:] + r")[0-9a-f]{12}(\..*)?$")
    for other in path.parent.iterdir():
        if stale.match(other.name) and ".corrupt" not in other.name:
            other.unlink(missing_ok=True)


def cached(path: str | os.PathLike, build: Callable[[], Any], sources: Sequence[str | os.PathLike] | None = None,
           root: str | os.PathLike | None = None) -> Any:
    """Load the cache at `path` (named by `cache_file` when `sources` are given), else build, save and return it.

    Used for decoded/generated data; see the module docstring for invalidation and corrupt files."""
    path = cache_file(path, sources, root) if sources is not None else Path(path)
    obj = _load(path) if path.exists() else _MISSING
    if obj is _MISSING:
        obj = build()
        atomic_torch_save(obj, path)
        _remove_stale(path)
    return obj


# --------------------------------------------------------------------------- assembling an in-memory dataset
def assemble(train_pool: TensorSplit, test: TensorSplit, meta: Meta, *, val: TensorSplit | None = None,
             val_per_class: int = 0, val_fraction: float = 0.0, split_seed: int = 0,
             imbalance: dict | None = None, augment: BatchAugment | None = None) -> Data:
    """Turn a training pool and a test split into `Data`, the same way for every in-memory dataset.

    Order matters and is fixed: (1) validation is carved out of the original training pool
    (`val_per_class` images per class, or a `val_fraction`, chosen with `split_seed`) unless the dataset
    has its own `val`; (2) the imbalance (if any) is drawn from what remains; (3) `meta.class_counts`
    is set from the final training split. Test is never touched.
    """
    if val is None:
        if val_per_class and val_fraction:
            raise UserError("set dataset.val_per_class or dataset.val_fraction, not both")
        if val_per_class:
            rest, held = holdout_per_class(train_pool.y, val_per_class, split_seed)
        else:
            rest, held = holdout_fraction(len(train_pool), val_fraction, split_seed)
        train, val = train_pool.subset(rest), train_pool.subset(held)
    else:
        train = train_pool
    return with_imbalance(Data(train=train, val=val, test=test, meta=meta, augment=augment), imbalance)


def with_imbalance(data: Data, imbalance: dict | None) -> Data:
    """`data` with its training split subsampled per class by `imbalance` (experiments/engine/imbalance.py; ratio 1 or
    None keeps it whole) and `meta.class_counts` set from it. Works on in-memory and streamed splits alike."""

    spec = Imbalance(**(imbalance or {}))
    train = data.train
    if spec.ratio != 1:
        names = train.names if isinstance(train, TensorSplit) else train.files
        train = train.subset(select_indices(train.y, data.meta.class_names, spec, names))
    data.meta.class_counts = class_counts(train.y, data.meta.num_classes)
    return dataclasses.replace(data, train=train)
