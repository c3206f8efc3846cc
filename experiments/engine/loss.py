"""The one protocol between the trainer and a loss.

Every loss is an `nn.Module` usable on its own as `loss(logits, target)`. Inside the engine it may also
use the hooks below; the trainer calls only these, never a loss by name:

- `bind(meta)`            once, before training: read class counts, similarity structure, etc.
- `head`                  `linear` or `cosine` (normalised features and weights, as LDAM's NormedLinear), or a
                          layer class `(in_features, out_features) -> nn.Module` the loss brings (CORAL's).
- `extra_heads`           names of extra output heads the model must carry (each of size num_classes);
                          the model's forward returns a dict {"logits": ..., <head>: ...}.
- `head_sizes(C)`         name → width of every output head; default "logits" and `extra_heads`, each C wide. A
                          loss without a C-wide "logits" head (CORAL/CORN: K−1 "ordinal" logits) is read by the
                          metrics through its primary score (`EvalOutputs.logits`).
- `predict(outputs)`      the loss's own decision rule (labels, N); default None = argmax of the "logits" head.
- `optimizer_names`       one optimizer per name is built from the same `optim` config ("main" first).
- `needs_index`           informational: the loss reads `batch.index` (per-example state).
- `param_groups()`        parameters the loss owns (e.g. ROLE's label table) with an optional lr multiplier.
- `own_optimizers(optim)` optimizers of parameters the loss steps with an optimizer of its own (ROLE's
                          `table_update: rows`: a lazy optimizer on a sparse gradient); each steps with the first of
                          `optimizer_names`, on its schedule, and is checkpointed with it.
- `trained_state(cfg, N, C, B)` (classmethod, read by the run plan): floats of per-example parameters the loss
                          trains and how many of them one step updates, so that memory and traffic are priced.
- `on_epoch_start(epoch)` schedule-dependent behaviour (DRW re-weighting, warm-up).
- `training_step(model, batch, step)` the default does one forward, `objective`, one `step`; a loss that
                          needs two updates per batch (COT) overrides it.
- `objective(outputs, batch)` the differentiable value for one forward pass; default `self(outputs["logits"], y)`.
- `eval_objective(outputs, batch)` the loss reported on val/test; default `objective`. Losses with per-example
                          state indexed by training positions must override it (val/test indices differ).
- `scores(outputs)`       named per-class scores {"probs": primary, ...}; `score_kinds` declares each one's kind
                          (`distribution`, `independent` or `logits`, see experiments.engine.metrics) and the engine
                          pairs metrics with the primary kind before a run starts.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from experiments.engine.data import Batch, Meta


class StepFn(Protocol):
    def __call__(self, loss: torch.Tensor, optimizer: str = "main") -> None: ...


class EngineLoss(nn.Module):
    head: str = "linear"
    extra_heads: tuple[str, ...] = ()
    optimizer_names: tuple[str, ...] = ("main",)
    needs_index: bool = False
    score_kinds: dict[str, str] = {"probs": "distribution"}

    def bind(self, meta: Meta) -> None:
        """Called once with the dataset's Meta before training."""

    def param_groups(self) -> list[dict]:
        return []

    def own_optimizers(self, optim) -> dict[str, torch.optim.Optimizer]:
        """`optim`: the run's OptimConfig (lr, betas, ...). None by default."""
        return {}

    @classmethod
    def trained_state(cls, cfg, n_train: int, num_classes: int, batch: int) -> tuple[int, int]:
        """(floats of per-example parameters trained with the model, floats of them one optimizer step reads and
        writes) for the loss config `cfg` on N training examples of C classes at batch B: none by default."""
        return 0, 0

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """`epoch` counts from 0."""

    def objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self(outputs["logits"], batch.y)

    def eval_objective(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self.objective(outputs, batch)

    def training_step(self, model: nn.Module, batch: Batch, step: StepFn,
                      autocast: Callable = torch.autocast) -> dict[str, torch.Tensor]:
        with autocast():
            outputs = model(batch.x)
            loss = self.objective(outputs, batch)
        step(loss, "main")
        return {"loss": loss.detach()}

    def scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"probs": outputs["logits"].float().softmax(dim=1)}

    def head_sizes(self, num_classes: int) -> dict[str, int]:
        return {name: num_classes for name in ("logits",) + tuple(self.extra_heads)}

    def predict(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None


class CrossEntropy(EngineLoss):
    """Plain cross entropy (optionally label-smoothed), mean over the batch."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 1)")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
