"""Config validation and component building. Hydra is the registry: every component is a `_target_`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.engine.data import Data
from experiments.engine.errors import UserError
from experiments.engine.evaluation import ENGINE_REPORTED, merge
from experiments.engine.loss import EngineLoss
from experiments.engine.metrics import Metric, check_kinds, family, pairing
from experiments.engine.models import Network
from experiments.engine.schedules import Constant, Schedule
from experiments.engine.schemas import (
    OptimConfig,
    TrainerConfig,
    check_name,
    check_renamed,
    check_values,
    read_section,
)

ENGINE_SUPPLIED = {"model": {"in_channels", "image_size"}}
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
METRIC_SETS = CONF_DIR / "metrics"


@dataclass
class MetricSpec:
    node: dict
    explicit: bool      # asked for by name (root `metrics`/`metric_sets`): refused, never skipped, when unmet
    source: str         # the metric set it came from, or `metrics`


class MetricSet(dict):
    """name → Metric, plus `notes`: name → why it was skipped or how it reads an unmet score kind."""

    def __init__(self, metrics: dict[str, Metric], notes: dict[str, str]):
        super().__init__(metrics)
        self.notes = notes


SCRATCH_KEY = "_metric_nodes_"


def _resolved(cfg: DictConfig, nodes: dict[str, Any]) -> dict[str, dict]:
    """Metric-set nodes with their interpolations (`${avgk.eval_ks}`, `${dataset.shots.few}`) resolved against
    the run's config: attached under a scratch key for one resolution, then removed (copying the whole config
    per node cost ~0.8 s a run)."""
    with open_dict(cfg):
        cfg[SCRATCH_KEY] = nodes
    try:
        return OmegaConf.to_container(cfg[SCRATCH_KEY], resolve=True)
    finally:
        with open_dict(cfg):
            del cfg[SCRATCH_KEY]


def _load_set(name: str) -> DictConfig:
    path = METRIC_SETS / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in METRIC_SETS.glob("*.yaml")))
        raise UserError(f"metric set {name!r} does not exist (conf/metrics/); choose from {known}")
    return OmegaConf.load(path)


def metric_set_names(cfg: DictConfig | dict) -> list[tuple[str, bool]]:
    """The metric sets a run reads (conf/metrics/<name>.yaml), each with whether it was asked for by name: root
    `metric_sets` (explicit) or else the dataset's `metric_sets`, then `extra_metric_sets` (defaults). Also read
    from a resolved config, to version the files a run reads (experiments.store.versions)."""
    chosen = cfg.get("metric_sets")
    names = chosen if chosen is not None else ((cfg.get("dataset") or {}).get("metric_sets") or ["classification"])
    if isinstance(names, str):
        names = [names]
    extra = [n for n in (cfg.get("extra_metric_sets") or []) if n not in names]
    return [(str(n), chosen is not None) for n in names] + [(str(n), False) for n in extra]


def metric_specs(cfg: DictConfig) -> dict[str, MetricSpec]:
    """The metrics of a run: the sets named by root `metric_sets` (explicit) or else the dataset's
    `metric_sets` (defaults), plus `extra_metric_sets` (defaults), then root `metrics` entries merged over them
    by name (explicit; `null` drops one)."""
    raw: dict[str, tuple[Any, bool, str]] = {}
    for set_name, explicit in metric_set_names(cfg):
        for key, node in _load_set(str(set_name)).items():
            raw[str(key)] = (node, explicit, str(set_name))
    for key, node in (cfg.get("metrics") or {}).items():
        if node is None:
            raw.pop(str(key), None)
            continue
        base = raw.get(str(key))
        merged = OmegaConf.merge(base[0], node) if base is not None and "_target_" not in node else node
        raw[str(key)] = (merged, True, "metrics")
    nodes = _resolved(cfg, {k: node for k, (node, _, _) in raw.items()})
    return {k: MetricSpec(nodes[k], explicit, src) for k, (_, explicit, src) in raw.items()}


DATASET_DECLARATIONS = ("metric_sets", "shots", "sizes")   # read by the engine, the metric sets and the run plan,
                                                          # not by the dataset builder


def dataset_node(cfg: DictConfig) -> DictConfig:
    """The dataset config without the keys the engine, not the dataset builder, consumes."""
    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    for key in DATASET_DECLARATIONS:
        node.pop(key, None)
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
    """Every check of a run's config, before anything is built: value kinds, names, the typed sections
    (`experiments.engine.schemas`), and every component `_target_` with its options."""
    check_values(cfg)
    check_name(cfg.get("experiment_name"))
    check_renamed(cfg)
    for key in ("seed", "results_dir", "experiment_name", "data_dir"):
        if key not in cfg or cfg[key] is None:
            raise UserError(f"config key `{key}` is missing; it is set in conf/config.yaml")
    if not isinstance(cfg.seed, int):
        raise UserError(f"seed={cfg.seed!r}: must be an integer")
    tcfg = read_section(TrainerConfig, cfg.trainer, "trainer")
    ocfg = read_section(OptimConfig, cfg.optim, "optim")
    check_target(dataset_node(cfg), "dataset")
    check_target(cfg.model, "model", ENGINE_SUPPLIED["model"])
    check_target(cfg.loss, "loss")
    for name, spec in metric_specs(cfg).items():
        if "_target_" not in spec.node:
            raise UserError(f"metrics.{name}: no metric of that name in the chosen sets to override; give a "
                            f"_target_ or pick a set that has it (conf/metrics/)")
        check_target(OmegaConf.create(spec.node), f"metrics.{name}")
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


def build_schedule(cfg: DictConfig) -> Schedule:
    """The learning-rate schedule of `cfg.schedule` (a `_target_` node of conf/schedule/); constant if absent."""
    node = cfg.get("schedule")
    if node is None:
        return Constant()
    if not isinstance(node, DictConfig) or "_target_" not in node:
        names = ", ".join(sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml")))
        raise UserError(f"schedule={node!r}: choose a schedule with schedule=<name> ({names})")
    check_target(node, "schedule")
    schedule = _instantiate(node, "schedule")
    if not isinstance(schedule, Schedule):
        raise UserError(f"schedule._target_={node._target_} is not an experiments.engine.schedules.Schedule")
    return schedule


def build_components(cfg: DictConfig) -> tuple[Data, EngineLoss, Network, dict[str, Metric]]:
    data = _instantiate(dataset_node(cfg), "dataset")
    if not isinstance(data, Data):
        data = data()
    if not isinstance(data, Data):
        raise UserError(f"dataset._target_={cfg.dataset._target_} did not produce experiments.engine.data.Data")
    loss = _instantiate(cfg.loss, "loss")
    if not isinstance(loss, EngineLoss):
        raise UserError(f"loss._target_={cfg.loss._target_} is not an experiments.engine.loss.EngineLoss; "
                        f"subclass it (see experiments/engine/loss.py)")
    try:
        loss.bind(data.meta)
    except ValueError as e:
        raise UserError(f"loss: {e}") from None
    backbone = _instantiate(cfg.model, "model", in_channels=data.meta.channels, image_size=data.meta.image_size)
    model = Network(backbone, data.meta.num_classes, loss.head_sizes(data.meta.num_classes), head=loss.head)
    return data, loss, model, build_metrics(cfg, loss, data)


def build_metrics(cfg: DictConfig, loss: EngineLoss, data: Data) -> MetricSet:
    """Instantiate the run's metrics and pair each with the loss's score kinds and the dataset's structure: a
    metric from a default set that cannot be computed is skipped with a note; one asked for by name is refused.
    Two metrics that declare the same reported name are refused: one name has one meaning in a run."""
    check_kinds(loss.score_kinds, f"loss ({type(loss).__name__})")
    metrics, notes = {}, {}
    for name, spec in metric_specs(cfg).items():
        metric = _instantiate(OmegaConf.create(spec.node), f"metrics.{name}")
        refusal, adaptation = pairing(metric, loss.score_kinds, data.meta)
        if refusal is None and getattr(metric, "fitted_on_validation", False) and len(data.val) == 0:
            refusal = "fits on a validation split and this dataset has none"
        if refusal and spec.explicit:
            raise UserError(f"metrics.{name} ({spec.node['_target_']}) cannot be computed for loss "
                            f"{type(loss).__name__} on this dataset: it {refusal}; drop it (metrics.{name}=null) "
                            f"or change loss/dataset")
        if refusal:
            notes[name] = f"skipped: {refusal} (from metric set {spec.source})"
            continue
        if adaptation:
            notes[name] = f"adapted: {adaptation}"
        metrics[name] = metric
    reported = {"loss": ENGINE_REPORTED}
    for name, metric in metrics.items():
        merge(reported, name, sorted({family(key) for key in metric.measures}))
    return MetricSet(metrics, notes)
