"""`make bench`: measured speed ratios (not assertions). Writes results/bench/bench.json.

1. data path: in-memory uint8 batches augmented on the device vs a torchvision DataLoader doing per-sample
   PIL crop/flip/ToTensor on the same images (images per second, ratio).
2. SimLoss: the stable log-space form vs the official probability form (forward+backward, ratio).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch


def _rate(fn, n_items: int, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_items / best


def bench_data(n: int = 5000, batch: int = 128) -> dict:
    import torchvision.transforms as T
    from PIL import Image

    from experiments.data import BatchAugment, InMemoryLoader, Meta, TensorSplit

    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 100, (n,))
    meta = Meta(num_classes=100, class_names=[str(i) for i in range(100)], class_counts=torch.zeros(100))
    gen = torch.Generator().manual_seed(0)
    fast = InMemoryLoader(TensorSplit(x, y), meta, batch, torch.device("cpu"), shuffle=True, generator=gen,
                          augment=BatchAugment(crop_padding=4, flip=True))

    class PilDataset(torch.utils.data.Dataset):
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize((0.5,) * 3, (0.5,) * 3)])

        def __len__(self):
            return n

        def __getitem__(self, i):
            return self.tf(Image.fromarray(x[i].permute(1, 2, 0).numpy())), y[i], i

    slow = torch.utils.data.DataLoader(PilDataset(), batch_size=batch, shuffle=True, num_workers=0)
    r_fast = _rate(lambda: [b for b in fast], n)
    r_slow = _rate(lambda: [b for b in slow], n, repeat=1)
    return {"in_memory_img_per_s": round(r_fast), "pil_dataloader_img_per_s": round(r_slow),
            "speedup": round(r_fast / r_slow, 1)}


def bench_simloss(n: int = 1024, c: int = 100) -> dict:
    from experiments.losses import SimLoss

    idx = torch.arange(c)
    s = 0.7 ** (idx[:, None] - idx[None, :]).abs().double()
    logits = torch.randn(n, c, requires_grad=True)
    target = torch.randint(0, c, (n,))
    out = {}
    for impl in ("logsumexp", "prob"):
        loss = SimLoss(s, impl=impl)
        out[f"{impl}_calls_per_s"] = round(_rate(lambda: [loss(logits, target).backward() for _ in range(20)],
                                                 20, repeat=5), 1)
    out["logsumexp_over_prob_time"] = round(out["prob_calls_per_s"] / out["logsumexp_calls_per_s"], 2)
    return out


def main() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    result = {"threads": torch.get_num_threads(), "data_path": bench_data(), "simloss": bench_simloss()}
    path = Path(__file__).resolve().parent.parent / "results" / "bench" / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
