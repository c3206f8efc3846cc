"""Per-model GPU rates for the run plan (`make reproduce-table PLAN=1 IMG_PER_S=<rate>`).

A model's images/s on one GPU comes from, in this order:
1. a measurement: `make gpu-check` times a few training steps of each paper model on the GPU (`measure_rate`)
   and writes them to results/gpu_check/rates.json, keyed by `model_key`;
2. else a scaling from the model's forward FLOPs per image (torch.utils.flop_counter on meta tensors: nothing is
   computed or allocated): `IMG_PER_S` is the GPU's training rate of the reference model, ResNet-50 at 224 px
   (`REFERENCE`), and a step of B images costs B·F/(IMG_PER_S·F_ref) of compute plus `STEP_OVERHEAD_S`, a fixed
   cost per step (kernel launches, optimizer, Python) that FLOPs do not count. The overhead is an assumption,
   printed as such, until gpu-check measures the model: it is what keeps a LeNet at 32 px from being priced at
   the ratio of FLOPs (6,000 × a ResNet-50), and it is the GPU time that `runs per GPU` fills with other runs.

Runs sharing one GPU (`runs_per_gpu` = R): while one run pays its fixed cost another computes, so R runs together
go R × one run's rate, up to the GPU's compute rate (no overhead). `Rate.shared(R)` is that.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.engine.models import Network

REFERENCE = {"_target_": "experiments.engine.models.resnet50", "image_size": 224}
STEP_OVERHEAD_S = 0.005      # assumed fixed cost of one training step on a GPU, until gpu-check measures the model
GPU_BYTES_PER_S = 1.5e12     # assumed GPU memory bandwidth (an A100 40 GB: 1.56 TB/s) for a loss's per-example state
RATES_JSON = Path(__file__).resolve().parents[2] / "results" / "gpu_check" / "rates.json"
BYTES = 4                    # float32 weights, gradients, optimizer state and activations


def input_size(model: DictConfig, dataset: DictConfig) -> tuple[int, int | None]:
    """(channels, image side) the model receives: the dataset's declared `channels` (else 3) and `image_size` or
    `crop`; None when the dataset declares neither (the model's own default input size is used)."""
    side = dataset.get("image_size", dataset.get("crop"))
    return int(dataset.get("channels", 3) or 3), (None if side is None else int(side))


def model_key(model: DictConfig, side: int | None) -> str:
    """'<function name>@<side>px' (or '@default'): the key of a measured rate."""
    return f"{str(model._target_).rsplit('.', 1)[1]}@{side if side else 'default'}" + ("px" if side else "")


def _backbone(model: DictConfig, channels: int, side: int | None, device: str | torch.device) -> torch.nn.Module:
    node = OmegaConf.to_container(model, resolve=True)
    for key in ("weights", "weights_path"):
        if key in node:
            node[key] = None        # shapes and speed only: no checkpoint is read
    kwargs = {"in_channels": channels, **({"image_size": side} if side else {})}
    with torch.device(device):
        return hydra.utils.instantiate(node, **kwargs)


def default_side(model: DictConfig) -> int:
    """The model function's own default `image_size` (its declared input size)."""
    import inspect

    target = hydra.utils.get_object(str(model._target_))
    return int(inspect.signature(target).parameters["image_size"].default)


@dataclass
class Cost:
    """A model's forward FLOPs per image, parameters, and activation floats per image (the outputs of every leaf
    module, which backward keeps: a lower bound of the training activations)."""
    flops: float
    params: int
    activations: int
    side: int


def model_cost(model: DictConfig, channels: int, side: int | None) -> Cost:
    """Counted on meta tensors: shapes only, no memory, no arithmetic."""
    from torch.utils.flop_counter import FlopCounterMode

    net = _backbone(model, channels, side, "meta")
    side = side or default_side(model)
    acts = []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o.numel()))
             for m in net.modules() if not list(m.children())]
    with FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, channels, side, side, device="meta"))
    for h in hooks:
        h.remove()
    return Cost(float(counter.get_total_flops()), sum(p.numel() for p in net.parameters()), sum(acts), side)


@dataclass
class Rate:
    """Images/s of one run of a model on one GPU, and where the number comes from."""
    img_per_s: float
    compute_img_per_s: float     # the GPU's rate with no fixed step cost: what shared runs add up to at most
    source: str                  # where the number comes from, in full
    basis: str = ""              # the same in a few words

    def shared(self, runs_per_gpu: int) -> float:
        """Images/s of `runs_per_gpu` runs sharing the GPU, together."""
        return min(runs_per_gpu * self.img_per_s, self.compute_img_per_s)

    def busy(self) -> float:
        """Fraction of one run's step time the GPU computes."""
        return self.img_per_s / self.compute_img_per_s

    def plus_gpu_work(self, seconds_per_step: float, batch: int, why: str) -> "Rate":
        """The rate with `seconds_per_step` more GPU work per step (memory-bound, e.g. a per-example table): it
        adds to one run's step time and to the compute that shared runs divide, and is not overlapped."""
        if seconds_per_step <= 0:
            return self
        one = batch / (batch / self.img_per_s + seconds_per_step)
        gpu = batch / (batch / self.compute_img_per_s + seconds_per_step)
        return Rate(one, gpu, f"{self.source}; + {why}", self.basis)

    def capped(self, img_per_s: float, why: str) -> "Rate":
        """At most `img_per_s` per run (a loader that feeds it no faster), said in `basis` when it binds."""
        if img_per_s >= self.img_per_s:
            return self
        return Rate(img_per_s, max(self.compute_img_per_s, img_per_s), f"{self.source}; capped by {why}",
                    f"{self.basis}, capped by {why}")


def table_traffic(floats_per_step: int, optimizer_states: int) -> tuple[float, int]:
    """(seconds, bytes) one step of `floats_per_step` per-example entries moves on the GPU: backward writes their
    gradient, the optimizer reads value, gradient and each state and writes value and states; at GPU_BYTES_PER_S
    (assumed)."""
    moved = BYTES * floats_per_step * (4 + 2 * optimizer_states)
    return moved / GPU_BYTES_PER_S, moved


def scaled_rate(cost: Cost, reference: Cost, ref_img_per_s: float, batch: int,
                overhead_s: float = STEP_OVERHEAD_S) -> Rate:
    """B images per step: compute B·F/(rate_ref·F_ref) seconds, plus the fixed `overhead_s`."""
    compute = ref_img_per_s * reference.flops / cost.flops
    step_s = batch / compute + overhead_s
    return Rate(batch / step_s, compute, f"scaled from FLOPs ({cost.flops / 1e9:.3g} GFLOPs/img vs "
                                         f"{reference.flops / 1e9:.3g} for resnet50@224px at IMG_PER_S) + "
                                         f"{overhead_s * 1e3:g} ms/step assumed", "scaled from FLOPs")


def measured_rates(path: Path | None = None) -> dict[str, dict]:
    """gpu-check's measurements {model_key: {img_per_s, compute_img_per_s, batch, device}}; {} when absent."""
    try:
        return json.loads((path or RATES_JSON).read_text())["rates"]
    except (OSError, ValueError, KeyError):
        return {}


def measure_rate(model: DictConfig, channels: int, side: int | None, batch: int, device: str,
                 steps: int = 10, warmup: int = 3) -> dict:
    """Time `steps` SGD steps (cross-entropy on random data, 100 classes) of the model on `device` after `warmup`,
    at `batch` and at 1 image: img/s at the batch, and the compute rate from the difference of the two step
    times (the fixed per-step cost cancels)."""
    dev = torch.device(device)

    net = Network(_backbone(model, channels, side, "cpu"), 100).to(dev)
    side = side or default_side(model)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step_s(b: int) -> float:
        x = torch.randn(b, channels, side, side, device=dev)
        y = torch.randint(0, 100, (b,), device=dev)
        for i in range(warmup + steps):
            if i == warmup:
                _sync(dev)
                t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(x)["logits"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(dev)
        return (time.perf_counter() - t0) / steps

    full, one = step_s(batch), step_s(1)
    per_image = max(full - one, 1e-12) / max(batch - 1, 1)
    return {"img_per_s": round(batch / full, 1), "compute_img_per_s": round(1 / per_image, 1),
            "step_overhead_s": round(max(one - per_image, 0.0), 5), "batch": batch, "device": str(dev)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def rate_for(model: DictConfig, dataset: DictConfig, batch: int, ref_img_per_s: float,
             measured: dict[str, dict], cache: dict) -> tuple[Rate, Cost]:
    """The model's rate in this config: measured by gpu-check if it was, else scaled from its FLOPs."""
    channels, side = input_size(model, dataset)
    key = model_key(model, side)
    if key not in cache:
        cache[key] = model_cost(model, channels, side)
    if "reference" not in cache:
        cache["reference"] = model_cost(OmegaConf.create(REFERENCE), 3, REFERENCE["image_size"])
    cost = cache[key]
    if key in measured:
        m = measured[key]
        return Rate(float(m["img_per_s"]), float(m["compute_img_per_s"]),
                    f"measured by gpu-check on {m.get('device', 'a GPU')} at batch {m.get('batch', '?')}",
                    "measured by gpu-check"), cost
    return scaled_rate(cost, cache["reference"], ref_img_per_s, batch), cost


def gpu_memory_gb(cost: Cost, batch: int, optimizer_states: int = 1, state_floats: int = 0) -> float:
    """Weights + gradients + `optimizer_states` copies (SGD momentum 1, Adam 2) + leaf activations × batch, float32,
    plus a loss's per-example parameters (`state_floats`, ROLE's table) with their gradient and optimizer states:
    a lower bound (cuDNN workspaces and the allocator's slack come on top)."""
    trained = cost.params + state_floats
    return BYTES * (trained * (2 + optimizer_states) + cost.activations * batch) / 2**30


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else "?"


def optimizer_states(optim: DictConfig) -> int:
    """Tensors of a parameter's size the optimizer keeps (SGD with momentum 1, Adam 2): counted after one step on a
    3-element parameter."""
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    opt = hydra.utils.instantiate(OmegaConf.to_container(optim, resolve=True), [p])
    opt.step()
    return sum(1 for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape)
