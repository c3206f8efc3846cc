"""Lazy optimizers for a parameter whose gradient is sparse in its rows (a table indexed by training example, such
as ROLE's label estimates): a step updates only the rows the gradient touches, each with its own optimizer state,
and leaves every other row and its state as they are.

The run's `optim` config picks the kind (`LAZY`): Adam → `torch.optim.SparseAdam` (its betas and eps), SGD →
`LazySGD` (its momentum, dampening and nesterov). With every row in every batch, both equal their dense optimizer
(tests/test_lazy_optim.py).
"""
from __future__ import annotations

from typing import Iterable

import torch

from experiments.engine.errors import UserError
from experiments.engine.schemas import OptimConfig


class LazySGD(torch.optim.Optimizer):
    """torch.optim.SGD's update (momentum, dampening, nesterov; no weight decay) on the rows of a sparse gradient:
    a row's momentum buffer starts as its first gradient, as SGD's whole buffer does on its first step."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False) -> None:
        if nesterov and (momentum <= 0 or dampening != 0):
            raise UserError("optim.nesterov=true needs optim.momentum > 0 and optim.dampening = 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._step_rows(p, group)

    def _step_rows(self, p: torch.Tensor, group: dict) -> None:
        if not p.grad.is_sparse:
            raise UserError("LazySGD steps the rows of a sparse gradient; this parameter's is dense (index it with "
                            "torch.nn.functional.embedding(..., sparse=True))")
        grad = p.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        m = group["momentum"]
        if m:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
                # 1 where a row's buffer has started; in p's dtype: load_state_dict casts state to it
                state["started"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
            first = (state["started"][rows] == 0).view(-1, *[1] * (values.dim() - 1))
            buf = torch.where(first, values, state["momentum_buffer"][rows] * m + (1 - group["dampening"]) * values)
            state["momentum_buffer"][rows] = buf
            state["started"][rows] = 1
            values = values + m * buf if group["nesterov"] else buf
        p.index_add_(0, rows, values, alpha=-group["lr"])


# optim._target_ → (lazy optimizer class, the optim keys it takes)
LAZY = {"torch.optim.Adam": (torch.optim.SparseAdam, ("betas", "eps")),
        "torch.optim.SGD": (LazySGD, ("momentum", "dampening", "nesterov"))}


def lazy_optimizer(optim: OptimConfig, params: list[torch.Tensor], lr: float, what: str) -> torch.optim.Optimizer:
    """The lazy counterpart of the run's optimizer over `params` at `lr`; `what` names the setting that asked
    for it in the error for an optimizer without one."""
    if optim._target_ not in LAZY or optim.amsgrad:
        raise UserError(f"{what} needs a lazy counterpart of the run's optimizer {optim._target_}"
                        f"{' (amsgrad)' if optim.amsgrad else ''}; there is one for "
                        f"{', '.join(LAZY)}: use one of those (optim=adam, optim=sgd)")
    cls, keys = LAZY[optim._target_]
    kwargs = {k: v for k, v in optim.kwargs().items() if k in keys}
    return cls(params, lr=lr, **kwargs)
