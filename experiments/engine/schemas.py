"""The typed sections of a run's config (`trainer`, `optim`) and the value checks of its top-level keys.

`experiments.engine.config.validate` is the one entry point that applies them (with the component `_target_`
checks) before anything runs; every refusal is one `UserError` line naming the key and the fix.
"""
from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from experiments.engine.errors import UserError


@dataclass
class TrainerConfig:
    epochs: int = 10
    min_steps: int = 0              # at least this many optimisation steps: a small training split gets more epochs
    batch_size: int = 128
    eval_batch_size: int = 1024
    patience: int | None = None
    select_metric: str = "val/accuracy"
    select_mode: str = "auto"
    device: str = "auto"
    num_workers: int = 2
    cpu_threads: int | None = None
    deterministic: bool = False
    amp: bool = False
    amp_dtype: str = "bfloat16"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    progress: str = "auto"
    keep_checkpoint: str = "best"
    checkpoint_every_s: float = 0.0  # end-of-epoch resume checkpoint at most this often (0: every epoch)
    interrupt_after: int | None = None
    claim_timeout_s: float = 1800.0
    keep_freed_memory: bool = True  # glibc keeps freed memory: no page faults per batch (experiments.engine.allocator)

    CHOICES = {"select_mode": ("auto", "min", "max"), "amp_dtype": ("bfloat16", "float16"),
               "progress": ("auto", "on", "off"), "keep_checkpoint": ("best", "none")}

    def check(self) -> None:
        if self.epochs < 1:
            raise UserError(f"trainer.epochs={self.epochs}: must be ≥ 1")
        if self.min_steps < 0:
            raise UserError(f"trainer.min_steps={self.min_steps}: must be ≥ 0 (0 = trainer.epochs as given)")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("trainer.batch_size and trainer.eval_batch_size must be ≥ 1")
        if self.patience is not None and self.patience < 1:
            raise UserError(f"trainer.patience={self.patience}: must be ≥ 1 or null (no early stopping)")
        if self.select_metric != "last" and not self.select_metric.startswith("val/"):
            raise UserError(f"trainer.select_metric={self.select_metric}: select on a validation metric "
                            f"(val/<name>) or `last`; never on test")
        if self.checkpoint_every_s < 0:
            raise UserError(f"trainer.checkpoint_every_s={self.checkpoint_every_s}: must be ≥ 0 seconds "
                            f"(0 = a resume checkpoint after every epoch)")
        if self.claim_timeout_s <= 0:
            raise UserError(f"trainer.claim_timeout_s={self.claim_timeout_s}: must be > 0 seconds")
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"trainer.{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            raise UserError(f"trainer.device={self.device!r}: use auto, cpu, cuda or cuda:<n>")


@dataclass
class OptimConfig:
    """`optim`: a torch.optim class (`_target_`) and the keyword arguments it takes (unset ones are left out)."""

    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float | None = None
    dampening: float | None = None
    nesterov: bool | None = None
    betas: list[float] | None = None
    eps: float | None = None
    amsgrad: bool | None = None
    alpha: float | None = None
    centered: bool | None = None

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "_target_" and getattr(self, f.name) is not None}

    def factory(self) -> Callable[[list], torch.optim.Optimizer]:
        """The optimiser class with these arguments bound (hydra `_partial_`); call it with parameter groups."""
        return hydra.utils.instantiate({"_target_": self._target_, "_partial_": True, "_convert_": "all",
                                        **self.kwargs()})

    def check(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0:
            raise UserError(f"optim.lr={self.lr}, optim.weight_decay={self.weight_decay}: need lr > 0, wd ≥ 0")
        try:
            cls = hydra.utils.get_object(self._target_)
        except Exception:
            raise UserError(f"optim._target_={self._target_} cannot be imported; e.g. optim=sgd, optim=adam or "
                            f"optim._target_=torch.optim.RMSprop") from None
        params = inspect.signature(cls).parameters
        for key in self.kwargs():
            if key not in params:
                raise UserError(f"optim.{key}: not an option of {self._target_}; valid options: "
                                f"{', '.join(p for p in params if p not in ('self', 'params'))}")
        try:
            self.factory()([nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError) as e:
            raise UserError(f"optim ({self._target_}): {e}") from None


SECTIONS = {"trainer": TrainerConfig, "optim": OptimConfig}
RENAMED = {"name": "optim=<adam|adamw|sgd> (a config group)", "schedule": "schedule=<name> (conf/schedule/)",
           "warmup_epochs": "schedule.warmup_epochs", "milestones": "schedule.milestones",
           "gamma": "schedule.gamma", "factors": "schedule.factors"}


def read_section(cls, node: DictConfig, where: str):
    """`node` as the checked dataclass `cls`; an unknown key or a wrong type is one line listing the valid keys."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        valid = ", ".join(f.name for f in cls.__dataclass_fields__.values())
        raise UserError(f"{where}.{key}: {str(e).splitlines()[0]} (valid keys: {valid})") from None
    obj = OmegaConf.to_object(merged)
    obj.check()
    return obj


def _scalar_type(annotation: Any) -> type | None:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if len(args) == 1 and args[0] in (int, float, bool, str) else None


def _is_number(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        try:
            kind(value)
        except ValueError:
            return False
        return True
    return isinstance(value, int) or (kind is float and isinstance(value, float))


def check_values(cfg: DictConfig) -> None:
    """One value of the right kind for every scalar option of `seed`, `trainer.*` and `optim.*`: a list given
    where one value belongs is refused with the sweep that runs each."""
    checks = [("seed", int, cfg.get("seed"), 0)]
    for section, schema in SECTIONS.items():
        node, hints = cfg.get(section), typing.get_type_hints(schema)
        for key in node if isinstance(node, DictConfig) else ():
            default = schema.__dataclass_fields__[key].default if key in hints else None
            checks.append((f"{section}.{key}", _scalar_type(hints.get(key)), node.get(key), default))
    for key, kind, value, example in checks:
        if kind is None or value is None:
            continue
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[kind]
        if isinstance(value, (ListConfig, DictConfig)):
            sweep = ",".join(str(v) for v in value) if isinstance(value, ListConfig) else "<a>,<b>"
            raise UserError(f"{key}={OmegaConf.to_container(value)}: must be {what}, not a "
                            f"{'list' if isinstance(value, ListConfig) else 'mapping'}; to run several values "
                            f"sweep them: -m {key}={sweep}")
        if kind in (int, float) and not _is_number(value, kind):
            hint = f", e.g. {key}={example}" if isinstance(example, (int, float)) else ""
            raise UserError(f"{key}={value!r}: must be {what}{hint}")


def check_name(name: Any) -> None:
    """`experiment_name` becomes a folder name: refused before any folder is made of it."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise UserError(f"experiment_name={name!r}: must be a plain folder name (letters, digits, _ . + -, not "
                        f"starting with a dot, no / or \\), e.g. experiment_name=my_study")


def check_renamed(cfg: DictConfig) -> None:
    for key, new in RENAMED.items():
        if key in (cfg.get("optim") or {}):
            raise UserError(f"optim.{key} is now {new}")
