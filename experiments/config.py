"""Config validation and component building. Hydra is the registry: every component is a `_target_`."""
from __future__ import annotations

import inspect
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.data import Data
from experiments.errors import UserError
from experiments.losses.base import EngineLoss
from experiments.metrics import Metric
from experiments.models import Network
from experiments.trainer import OptimConfig, TrainerConfig

ENGINE_SUPPLIED = {"model": {"in_channels", "image_size"}}


def _schema(cls, node: DictConfig, where: str):
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        valid = ", ".join(f.name for f in cls.__dataclass_fields__.values())
        raise UserError(f"{where}.{key}: {str(e).splitlines()[0]} (valid keys: {valid})") from None
    obj = OmegaConf.to_object(merged)
    obj.check()
    return obj


def dataset_node(cfg: DictConfig) -> DictConfig:
    """The dataset config without its `metrics` (which the engine, not the dataset, consumes)."""
    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    node.pop("metrics", None)
    return OmegaConf.create(node)


def _locate(target: str, where: str):
    try:
        return hydra.utils.get_object(target)
    except Exception:
        raise UserError(f"{where}._target_={target} cannot be imported; check the spelling or the module") from None


def check_target(node: Any, where: str, supplied: set[str] = frozenset()) -> None:
    """Every key of a `_target_` node must be a parameter of the target (unless it takes **kwargs)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    fn = _locate(node._target_, where)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in node.keys():
        if str(key).startswith("_") or key in supplied:
            continue
        if key not in params:
            valid = ", ".join(p for p in params if p != "self")
            raise UserError(f"{where}.{key}: not an option of {node._target_}; valid options: {valid}")


def validate(cfg: DictConfig) -> tuple[TrainerConfig, OptimConfig]:
    for key in ("seed", "results_dir", "experiment_name", "data_dir"):
        if key not in cfg or cfg[key] is None:
            raise UserError(f"config key `{key}` is missing; it is set in conf/config.yaml")
    if not isinstance(cfg.seed, int):
        raise UserError(f"seed={cfg.seed!r}: must be an integer")
    tcfg = _schema(TrainerConfig, cfg.trainer, "trainer")
    ocfg = _schema(OptimConfig, cfg.optim, "optim")
    check_target(dataset_node(cfg), "dataset")
    check_target(cfg.model, "model", ENGINE_SUPPLIED["model"])
    check_target(cfg.loss, "loss")
    for name, node in (cfg.get("metrics") or {}).items():
        check_target(node, f"metrics.{name}")
    for name, node in (cfg.dataset.get("metrics") or {}).items():
        check_target(node, f"dataset.metrics.{name}")
    return tcfg, ocfg


def _instantiate(node: DictConfig, where: str, **kwargs):
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, UserError):
            raise cause from None
        msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise UserError(f"{where}: {msg}") from None


def build_components(cfg: DictConfig) -> tuple[Data, EngineLoss, Network, dict[str, Metric]]:
    data = _instantiate(dataset_node(cfg), "dataset")
    if not isinstance(data, Data):
        data = data()
    if not isinstance(data, Data):
        raise UserError(f"dataset._target_={cfg.dataset._target_} did not produce experiments.data.Data")
    loss = _instantiate(cfg.loss, "loss")
    if not isinstance(loss, EngineLoss):
        raise UserError(f"loss._target_={cfg.loss._target_} is not an experiments.losses.base.EngineLoss; "
                        f"subclass it (see experiments/losses/base.py)")
    try:
        loss.bind(data.meta)
    except ValueError as e:
        raise UserError(f"loss: {e}") from None
    backbone = _instantiate(cfg.model, "model", in_channels=data.meta.channels, image_size=data.meta.image_size)
    model = Network(backbone, data.meta.num_classes, ("logits",) + tuple(loss.extra_heads), head=loss.head)
    specs = dict(cfg.get("metrics") or {})
    specs.update(dict(cfg.dataset.get("metrics") or {}))
    metrics = {name: _instantiate(node, f"metrics.{name}") for name, node in specs.items() if node is not None}
    return data, loss, model, metrics
