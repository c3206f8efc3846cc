"""Evaluation: a model's outputs over a split, the run's metrics over them, and the final test.

Metrics that fit something (an average-K threshold) fit it on validation; the test split is scored with that
state, once, for the selected weights. Every metric's reported names go into one flat namespace per split, so two
metrics reporting the same name are refused (`merge`) instead of one silently overwriting the other.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from experiments.engine.data import Data, make_loader
from experiments.engine.errors import UserError
from experiments.engine.loss import EngineLoss
from experiments.engine.metrics import EvalOutputs, Metric

ENGINE_REPORTED = "the engine (the split's mean objective)"


def eval_outputs(loss: EngineLoss, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
                 value: float) -> EvalOutputs:
    return EvalOutputs(outputs=outputs, scores=loss.scores(outputs), targets=targets, loss=value,
                       kinds=dict(loss.score_kinds), prediction=loss.predict(outputs))


def autocast_for(amp: bool, amp_dtype: str, device: torch.device) -> Callable:
    """The autocast context of `trainer.amp` (CUDA only; a no-op elsewhere)."""
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if amp_dtype == "bfloat16" else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


def merge(reported: dict[str, str], name: str, keys) -> None:
    """Record that metric `name` reports `keys`; a key another metric already reports is refused."""
    for key in keys:
        other = reported.setdefault(key, name)
        if other != name:
            raise UserError(f"metrics.{name} and {other if other == ENGINE_REPORTED else 'metrics.' + other} both "
                            f"report {key!r}; one name has one meaning: rename one metric's output or drop one "
                            f"(metrics.{name}=null)")


def compute_metrics(out: EvalOutputs, metrics: dict[str, Metric], meta, split: str,
                    states: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """`{split}/<name>` scalars (NaN, e.g. an empty shot group, stored as None) and non-scalar details."""
    scalars: dict[str, float | None] = {f"{split}/loss": out.loss}
    details: dict[str, Any] = {}
    reported = {"loss": ENGINE_REPORTED}
    for name, metric in metrics.items():
        values = metric(out, meta, states.get(name))
        merge(reported, name, values)
        for k, v in values.items():
            if isinstance(v, (list, tuple, dict)):
                details[f"{split}/{k}"] = v
            else:
                scalars[f"{split}/{k}"] = None if v is None or math.isnan(float(v)) else float(v)
    return scalars, details


@dataclass
class Evaluator:
    """How a split is run through a model for evaluation (`trainer.eval_batch_size`, device, layout, AMP)."""

    batch_size: int
    device: torch.device
    channels_last: bool = False
    num_workers: int = 0
    autocast: Callable = contextlib.nullcontext

    @torch.no_grad()
    def outputs(self, model: nn.Module, loss: EngineLoss, data: Data, split: str) -> EvalOutputs | None:
        """The model's outputs, scores and mean objective over `split` (None when the split is empty)."""
        if len(data.splits()[split]) == 0:
            return None
        model.eval()
        loader = make_loader(data, split, self.batch_size, self.device, train=False, num_workers=self.num_workers)
        outs: dict[str, list[torch.Tensor]] = {}
        targets, total, n = [], 0.0, 0
        for batch in loader:
            batch = batch.to(self.device, self.channels_last)
            with self.autocast():
                out = model(batch.x)
                value = loss.eval_objective(out, batch)
            total += value.float().item() * len(batch.y)
            n += len(batch.y)
            for k, v in out.items():
                outs.setdefault(k, []).append(v.float().cpu())
            targets.append(batch.y.cpu())
        outputs = {k: torch.cat(v) for k, v in outs.items()}
        return eval_outputs(loss, outputs, torch.cat(targets), total / max(n, 1))

    def validate(self, model: nn.Module, loss: EngineLoss, data: Data,
                 metrics: dict[str, Metric]) -> dict[str, float]:
        """The `val/*` scalars of one epoch (each metric fitted on validation and scored there)."""
        val = self.outputs(model, loss, data, "val")
        states = {name: m.fit(val, data.meta) for name, m in metrics.items()}
        return compute_metrics(val, metrics, data.meta, "val", states)[0]

    def final(self, model: nn.Module, loss: EngineLoss, data: Data,
              metrics: dict[str, Metric]) -> tuple[dict[str, float], dict[str, Any]]:
        """Validation and test metrics of `model` as it is: what metrics fit is fitted on validation and reused,
        unchanged, on test."""
        values: dict[str, float] = {}
        details: dict[str, Any] = {}
        val = self.outputs(model, loss, data, "val") if len(data.val) > 0 else None
        states = {name: m.fit(val, data.meta) for name, m in metrics.items()} if val is not None else {}
        test = self.outputs(model, loss, data, "test")
        for split, out in (("val", val), ("test", test)):
            if out is not None:
                s, d = compute_metrics(out, metrics, data.meta, split, states)
                values.update(s)
                details.update(d)
        return values, details


@torch.no_grad()
def preflight(model: nn.Module, loss: EngineLoss, data: Data, metrics: dict[str, Metric]) -> None:
    """Compute every metric once on random outputs of the model's shapes, so that an option no data can satisfy
    (a K above the number of classes, two metrics reporting one name, ...) fails before training instead of after
    the first epoch. Only `UserError`s count; anything else a metric does with random outputs is ignored."""
    meta = data.meta
    n, g = 2 * meta.num_classes, torch.Generator().manual_seed(0)
    try:
        model.eval()
        shapes = {k: v.shape[1:] for k, v in model(torch.zeros(2, meta.channels, meta.image_size,
                                                                meta.image_size)).items()}
        outputs = {k: torch.randn((n, *s), generator=g) for k, s in shapes.items()}
        out = eval_outputs(loss, outputs, torch.arange(n) % meta.num_classes, 0.0)
    except Exception:  # noqa: BLE001 — a model that wants other inputs: nothing to check early
        return
    reported = {"loss": ENGINE_REPORTED}
    for name, metric in metrics.items():
        try:
            values = metric(out, meta, metric.fit(out, meta))
        except UserError:
            raise
        except Exception:  # noqa: BLE001
            continue
        merge(reported, name, values)
