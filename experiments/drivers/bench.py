"""`make bench`: measured speed ratios (not assertions). Writes results/bench/bench.json and prints a table.

Sections (`SECTIONS`, run in order; append `(name, fn)` to `EXTRA` to add one, its result lands under
`extra/<name>`):

1. losses: every loss, forward + backward on a leaf logits tensor, B = 1024, at C = 100 and C = 1081: the median
   over interleaved rounds of its time / `F.cross_entropy`'s timed just before it (thread CPU time, one thread
   under `make bench`).
   `two_head` is the whole two-head loss (softmax head A plus multi-label head B with its pseudo-labels);
   `two_head_extra` = (two_head − CE on A) / CE on A, its cost over the softmax head alone. Logits are
   3·N(0, 1) (LDAM: cosine logits in [−1, 1], which its s = 30 assumes; 30·3·N(0, 1) would time denormals).
2. trainer: `Trainer.fit` (no validation/test split, `select_metric=last`, so it trains, checkpoints each epoch
   and returns) vs a bare loop over the same batches (same loader, augmentation, model, Adam step). `ratio` is per
   epoch: (t(3 epochs) − t(1 epoch))/2 for each, so set-up and the final test cancel; `ratio_whole_fit` compares
   the 3-epoch runs including them. Least process CPU time of 5 interleaved repeats (noise from other processes
   only adds time, and a difference of medians carried ±2 % of it).
3. data_path: in-memory uint8 batches augmented on the device vs a torchvision DataLoader doing per-sample PIL
   crop/flip/ToTensor/Normalize on the same images; the baseline is the best of num_workers 0 and 2
   (persistent workers, warm epoch). Ratio of images per second.
4. loader: the streamed folder path (Pl@ntNet-300K's Resize(256) → RandomCrop(224) on JPEGs written by the bench
   at 800 × 600 and 500 × 375): images/s per core of the former per-sample float path and of each decoder, with 0
   and 2 workers, the opt-in decoders' pixel differences from the exact path, and the cores one GPU needs at
   `IMG_PER_S` (default 2000,5000). See experiments/drivers/bench_loader.py.
Extra: the cost of runs (experiments/drivers/bench_runs.py) and `role_table`: one step of ROLE's label table at
Pl@ntNet-300K's size, `loss.table_update` dense vs rows.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from experiments.drivers import bench_loader, bench_runs
from experiments.engine.allocator import keep_freed_memory
from experiments.engine.data import (
    BatchAugment,
    Data,
    InMemoryLoader,
    Meta,
    TensorSplit,
)
from experiments.engine.models import Network, small_cnn
from experiments.engine.trainer import OptimConfig, Trainer, TrainerConfig
from experiments.losses import (
    ComplementCrossEntropy,
    ComplementEntropy,
    CrossEntropy,
    SimLoss,
)
from experiments.losses.longtail import (
    BalancedSoftmax,
    ClassBalancedLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
)

LossCase = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CLASSES = (100, 1081)


def long_tail_meta(num_classes: int, n_max: int = 500, rho: float = 100.0) -> Meta:
    counts = [max(1, int(n_max * rho ** (-i / (num_classes - 1)))) for i in range(num_classes)]
    return Meta(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)],
                class_counts=torch.tensor(counts))


def loss_cases(meta: Meta, batch: int) -> dict[str, LossCase]:
    """name -> fn(logits, target), every loss of the suite built through its public constructor and `bind(meta)`."""
    from hydra.utils import get_class


    # the task package's losses reach the engine by their config `_target_`, as in a run
    AssumeNegative, ExpectedPositives, RegularizedOnlineLabelEstimation, TwoHeadLoss = (
        get_class(f"average_k.losses.{n}") for n in ("AssumeNegative", "ExpectedPositives",
                                                     "RegularizedOnlineLabelEstimation", "TwoHeadLoss"))
    c = meta.num_classes
    idx = torch.arange(c, dtype=torch.float64)
    ordinal = 0.5 ** (idx[:, None] - idx[None, :]).abs()
    drw = LDAMLoss(drw_epoch=0)
    losses = {
        "cross_entropy": CrossEntropy(), "focal": FocalLoss(gamma=2.0), "focal_alpha": FocalLoss(1.0, alpha=0.25),
        "cce_paper": ComplementCrossEntropy(), "cce_official": ComplementCrossEntropy(variant="official"),
        "cot": ComplementEntropy(), "cot_exact": ComplementEntropy(eps_div=0.0, eps_log=0.0),
        "ldam": LDAMLoss(drw_epoch=None), "ldam_drw": drw, "balanced_softmax": BalancedSoftmax(),
        "logit_adjustment": LogitAdjustedLoss(), "cb_ce": ClassBalancedLoss(),
        "cb_softmax_focal": ClassBalancedLoss(base="softmax_focal"), "cb_sigmoid": ClassBalancedLoss(base="sigmoid"),
        "cb_sigmoid_focal": ClassBalancedLoss(base="sigmoid_focal", gamma=2.0),
        "simloss": SimLoss(ordinal), "simloss_prob": SimLoss(ordinal, impl="prob"),
        "an": AssumeNegative(), "an_ls": AssumeNegative(label_smoothing=0.1), "wan": AssumeNegative(weak=True),
        "epr": ExpectedPositives(),
    }
    for loss in losses.values():
        loss.bind(meta)
    drw.on_epoch_start(0, 1)
    cases: dict[str, LossCase] = dict(losses)
    cosine = (torch.randn(batch, c, generator=torch.Generator().manual_seed(2)) * 0.3).clamp(-1, 1)
    for name in ("ldam", "ldam_drw"):  # LDAM's s = 30 multiplies cosine logits in [−1, 1]
        cases[name] = _on_own_logits(losses[name], cosine.clone().requires_grad_())
    role = RegularizedOnlineLabelEstimation()
    role.bind(Meta(num_classes=c, class_names=meta.class_names, class_counts=torch.full((c,), -(-2 * batch // c))))
    index = torch.randperm(role.table.shape[0], generator=torch.Generator().manual_seed(1))[:batch]
    two_head = TwoHeadLoss(k=1.0)
    two_head.bind(meta)
    ml = (torch.randn(batch, c, generator=torch.Generator().manual_seed(3)) * 3).requires_grad_()

    def role_case(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        role.table.grad = None
        return role(z, y, index)

    def two_head_case(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ml.grad = None
        return two_head(z, y, ml)

    cases["role"], cases["two_head"] = role_case, two_head_case
    return cases


def _on_own_logits(loss: LossCase, logits: torch.Tensor) -> LossCase:
    def case(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits.grad = None
        return loss(logits, y)

    return case


def _seconds(fn: LossCase, z: torch.Tensor, y: torch.Tensor, inner: int) -> float:
    t = time.thread_time()
    for _ in range(inner):
        fn(z, y).backward()
        z.grad = None
    return (time.thread_time() - t) / inner


def paired_ratios(cases: dict[str, LossCase], reference: LossCase, z: torch.Tensor, y: torch.Tensor, repeats: int,
                  inner: int) -> tuple[dict[str, float], float]:
    """Median over rounds of time(case) / time(reference), the reference timed right before each case so load
    changes on the machine cancel; thread CPU time per forward+backward call. Also the reference's median seconds."""
    for fn in (reference, *cases.values()):
        fn(z, y).backward()
    z.grad = None
    ratios: dict[str, list[float]] = {name: [] for name in cases}
    ref: list[float] = []
    for _ in range(repeats):
        for name, fn in cases.items():
            ref.append(_seconds(reference, z, y, inner))
            ratios[name].append(_seconds(fn, z, y, inner) / ref[-1])
    return {name: statistics.median(v) for name, v in ratios.items()}, statistics.median(ref)


def bench_losses(batch: int = 1024, classes: tuple[int, ...] = CLASSES, repeats: int = 15, inner: int = 3) -> dict:
    out: dict[str, dict] = {}
    for c in classes:
        g = torch.Generator().manual_seed(c)
        z = (torch.randn(batch, c, generator=g) * 3).requires_grad_()
        y = torch.randint(0, c, (batch,), generator=g)
        ratios, ce = paired_ratios(loss_cases(long_tail_meta(c), batch), lambda a, b: F.cross_entropy(a, b), z, y,
                                   repeats, inner)
        ratios = {name: round(r, 2) for name, r in ratios.items()}
        ratios["two_head_extra"] = round(ratios["two_head"] - 1, 2)
        out[f"C={c}"] = {"cross_entropy_us": round(ce * 1e6, 1), "ratio_to_cross_entropy": ratios}
    out["batch"] = batch
    return out


def _tiny_data(n: int, classes: int, size: int = 32) -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    meta = Meta(num_classes=classes, class_names=[str(i) for i in range(classes)],
                class_counts=torch.bincount(y, minlength=classes))
    empty = TensorSplit(x[:0], y[:0])
    return Data(train=TensorSplit(x, y), val=empty, test=empty, meta=meta,
                augment=BatchAugment(crop_padding=4, flip=True))


def _fit_seconds(model: torch.nn.Module, data: Data, batch: int, epochs: int) -> float:
    cfg = TrainerConfig(epochs=epochs, batch_size=batch, device="cpu", num_workers=0, progress="off",
                        select_metric="last", keep_checkpoint="none")
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(cfg, OptimConfig(), Path(work), seed=0, log=lambda *a, **k: None)
        t = time.process_time()
        trainer.fit(model, CrossEntropy(), data, {})
        return time.process_time() - t


def _bare_seconds(model: torch.nn.Module, data: Data, batch: int, epochs: int) -> float:
    """The same batches (loader, generator seed, augmentation) and Adam steps, written by hand."""
    t = time.process_time()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        loader = InMemoryLoader(data.train, data.meta, batch, torch.device("cpu"), shuffle=True, generator=gen,
                                augment=data.augment)
        for b in loader:
            loss = F.cross_entropy(model(b.x)["logits"], b.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.process_time() - t


def bench_trainer(n: int = 2048, batch: int = 128, epochs: tuple[int, int] = (1, 3), width: int = 8,
                  repeats: int = 5) -> dict:
    """Per-epoch cost from the difference of E1- and E2-epoch runs (set-up and the final test cancel out)."""
    data = _tiny_data(n, 10)
    torch.manual_seed(0)
    model = Network(small_cnn(width=width), 10)
    times: dict[tuple[str, int], list[float]] = {}
    _bare_seconds(copy.deepcopy(model), data, batch, 1)
    for _ in range(repeats):
        for e in epochs:
            times.setdefault(("fit", e), []).append(_fit_seconds(copy.deepcopy(model), data, batch, e))
            times.setdefault(("bare", e), []).append(_bare_seconds(copy.deepcopy(model), data, batch, e))
    med = {k: min(v) for k, v in times.items()}
    e1, e2 = epochs
    per_fit = (med["fit", e2] - med["fit", e1]) / (e2 - e1)
    per_bare = (med["bare", e2] - med["bare", e1]) / (e2 - e1)
    return {"compared": f"Trainer.fit (no val/test split, select_metric=last, a checkpoint per epoch) vs a bare "
                        f"loop over the same {math.ceil(n / batch)} batches/epoch (same loader, augmentation, "
                        f"small_cnn(width={width}), Adam); per epoch = (t({e2} epochs) − t({e1}))/{e2 - e1}, "
                        f"least process CPU time of the repeats",
            "fit_epoch_s": round(per_fit, 4), "bare_epoch_s": round(per_bare, 4),
            "fit_fixed_s": round(med["fit", e1] - e1 * per_fit, 4),
            "ratio": round(per_fit / per_bare, 3),
            "ratio_whole_fit": round(med["fit", e2] / med["bare", e2], 3)}


def _rate(fn: Callable[[], object], n_items: int, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_items / best


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        import torchvision.transforms as T

        self.x, self.y = x, y
        self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize((0.5,) * 3, (0.5,) * 3)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.tf(Image.fromarray(self.x[i].permute(1, 2, 0).numpy())), self.y[i], i


def bench_data(n: int = 5000, batch: int = 128, workers: tuple[int, ...] = (0, 2), repeat: int = 2) -> dict:
    data = _tiny_data(n, 100)
    fast = InMemoryLoader(data.train, data.meta, batch, torch.device("cpu"), shuffle=True,
                          generator=torch.Generator().manual_seed(0), augment=data.augment)
    r_fast = _rate(lambda: [b for b in fast], n, repeat=3 * repeat)
    baseline = {}
    for w in workers:
        slow = torch.utils.data.DataLoader(_PilDataset(data.train.x, data.train.y), batch_size=batch, shuffle=True,
                                           num_workers=w, persistent_workers=w > 0)
        baseline[f"num_workers={w}"] = round(_rate(lambda: [b for b in slow], n, repeat=repeat))
    best = max(baseline.values())
    return {"in_memory_img_per_s": round(r_fast), "pil_dataloader_img_per_s": baseline,
            "speedup": round(r_fast / best, 1)}


def bench_role_table(n: int = 243_916, c: int = 1_081, batch: int = 32, steps: int = 3) -> dict:
    """ROLE's label table at Pl@ntNet-300K's size (N × C): one training step of the table alone — the batch's
    estimates, backward, the optimizer step — with `loss.table_update` dense (the official code: Adam over every
    entry) and rows (lazy Adam on the batch's rows); median wall seconds per step after one warm-up, and the ratio."""
    from hydra.utils import get_class

    role_cls = get_class("average_k.losses.RegularizedOnlineLabelEstimation")
    meta = Meta(num_classes=c, class_names=[f"c{i}" for i in range(c)],
                class_counts=torch.tensor([n // c + (i < n % c) for i in range(c)]))
    optim = OptimConfig(_target_="torch.optim.Adam", lr=1e-3)
    out: dict = {"n": n, "classes": c, "batch": batch}
    for update in ("dense", "rows"):
        loss = role_cls(table_update=update)
        loss.bind(meta)
        groups = [dict(g, lr=optim.lr * g.pop("lr_mult")) for g in loss.param_groups()]
        opts = [*loss.own_optimizers(optim).values(), *([optim.factory()(groups)] if groups else [])]
        gen, times = torch.Generator().manual_seed(0), []
        for _ in range(steps + 1):
            index = torch.randint(0, n, (batch,), generator=gen)
            t0 = time.perf_counter()
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.estimates(index, torch.zeros(batch, dtype=torch.long)).sum().backward()
            for o in opts:
                o.step()
            times.append(time.perf_counter() - t0)
        out[f"{update}_step_s"] = round(statistics.median(times[1:]), 5)
        del loss, opts
    out["ratio_dense_to_rows"] = round(out["dense_step_s"] / out["rows_step_s"], 1)
    return out


SECTIONS: list[tuple[str, Callable[[], dict]]] = [("losses", bench_losses), ("trainer", bench_trainer),
                                                 ("data_path", bench_data), ("loader", bench_loader.bench_loader)]
EXTRA: list[tuple[str, Callable[[], dict]]] = [*bench_runs.SECTIONS, ("role_table", bench_role_table)]


def table(result: dict) -> str:
    lines = []
    losses = result.get("losses", {})
    keys = [k for k in losses if k.startswith("C=")]
    if keys:
        lines.append(f"{'loss (time / F.cross_entropy)':32s}" + "".join(f"{k:>10s}" for k in keys))
        for name in losses[keys[0]]["ratio_to_cross_entropy"]:
            lines.append(f"{name:32s}" + "".join(f"{losses[k]['ratio_to_cross_entropy'][name]:10.2f}" for k in keys))
    if "trainer" in result:
        lines.append(f"{'trainer epoch / bare loop epoch':32s}{result['trainer']['ratio']:10.3f}")
    if "data_path" in result:
        lines.append(f"{'data path speedup (x)':32s}{result['data_path']['speedup']:10.1f}")
    lines += bench_loader.table(result.get("loader", {}))
    for name, section in result.get("extra", {}).items():
        lines += [f"{name + ' ' + k:32s}{v:10.3f}" for k, v in section.items()
                  if k.startswith("ratio") or k in ("noop_s", "first_min", "peak_memory_mb")]
    return "\n".join(lines)


def main(sections: list[tuple[str, Callable[[], dict]]] | None = None, path: Path | None = None) -> dict:
    torch.manual_seed(0)
    np.random.seed(0)

    kept = keep_freed_memory()  # as in a training run (trainer.keep_freed_memory), for the losses and the baseline alike
    result: dict = {"threads": torch.get_num_threads(),
                    "allocator": "glibc keeps freed memory (experiments.engine.allocator)" if kept else "C library defaults"}
    t0 = time.perf_counter()
    for name, fn in SECTIONS if sections is None else sections:
        result[name] = fn()
    result["extra"] = {name: fn() for name, fn in EXTRA}
    result["bench_s"] = round(time.perf_counter() - t0, 1)
    path = path or Path(__file__).resolve().parents[2] / "results" / "bench" / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"written {path} ({result['bench_s']} s)")
    return result


if __name__ == "__main__":
    main()
