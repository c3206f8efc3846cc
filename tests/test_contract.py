"""The score/metric contract: declared score kinds, declared metric meaning, metric sets, import graph."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from experiments.engine.config import build_metrics, metric_specs
from experiments.engine.errors import UserError
from experiments.engine.metrics import Measure, Metric, describe, renormalised
from experiments.engine.schemas import TrainerConfig
from experiments.engine.selection import select_mode
from experiments.report.tables import TableSpec, render
from experiments.store.results import code_version

ROOT = Path(__file__).resolve().parent.parent
PAPER_PACKAGES = ("age_estimation", "image_classification", "average_k")


def test_engine_imports_no_paper_folder():
    offenders = []
    for path in (ROOT / "experiments").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in PAPER_PACKAGES]
    assert offenders == []


def test_renormalised_rows_sum_to_one_and_zero_rows_become_uniform():
    s = torch.tensor([[0.9, 0.9, 0.2], [0.0, 0.0, 0.0]])
    r = renormalised(s)
    assert torch.allclose(r[0], torch.tensor([0.45, 0.45, 0.1]))
    assert torch.allclose(r[1], torch.full((3,), 1 / 3))


def test_measure_rejects_unknown_unit():
    with pytest.raises(ValueError):
        Measure(True, "furlongs")


def test_metric_sets_default_from_dataset_and_explicit_override(compose):
    cfg, _ = compose("dataset=synthetic_age")
    specs = metric_specs(cfg)
    assert {"accuracy", "age", "age_expected"} <= set(specs)
    assert not specs["age"].explicit
    cfg, _ = compose("dataset=synthetic_age", "metric_sets=[classification]")
    assert "age" not in metric_specs(cfg) and metric_specs(cfg)["accuracy"].explicit


class _Meta:
    def __init__(self, ordered=False, superclass=None):
        self.ordered, self.superclass, self.num_classes = ordered, superclass, 3


class _Data:
    def __init__(self, meta, n_val=1):
        self.meta, self.val = meta, [0] * n_val


class _Loss:
    def __init__(self, kind):
        self.score_kinds = {"probs": kind}


def test_pairing_skips_default_metrics_and_refuses_explicit_ones(compose):
    cfg, _ = compose("dataset=synthetic_cifar", "metric_sets=null")
    metrics = build_metrics(cfg, _Loss("distribution"), _Data(_Meta()))   # no superclass here
    assert "superclass" not in metrics and metrics.notes["superclass"].startswith("skipped")
    cfg, _ = compose("dataset=synthetic_cifar", "metric_sets=[hierarchy]")
    with pytest.raises(UserError, match="superclass"):
        build_metrics(cfg, _Loss("distribution"), _Data(_Meta()))


def test_independent_scores_are_adapted_for_expected_age_and_refused_for_distribution_only(compose):
    cfg, _ = compose("dataset=synthetic_age")
    metrics = build_metrics(cfg, _Loss("independent"), _Data(_Meta(ordered=True)))
    assert "age_expected" in metrics and "renormalised" in metrics.notes["age_expected"]
    cfg, _ = compose("dataset=synthetic_age", "metric_sets=[set_valued]")
    with pytest.raises(UserError, match="set_scores"):
        build_metrics(cfg, _Loss("logits"), _Data(_Meta(ordered=True)))


def test_threshold_metrics_refused_without_validation_split(compose):
    cfg, _ = compose("dataset=plantnet_like", "metric_sets=[set_valued]")
    with pytest.raises(UserError, match="validation"):
        build_metrics(cfg, _Loss("distribution"), _Data(_Meta(), n_val=0))


class Calibration(Metric):
    """A new metric declared lower-is-better; nothing in trainer or tables names it."""

    measures = {"miscalibration": Measure(False, "score")}

    def __call__(self, out, meta, state=None):
        return {"miscalibration": 0.0}


def _run(tmp_path, i, loss, value):
    rec = {"run_id": f"r{i}", "experiment_name": "toy", "loss": loss, "seed": i, "status": "completed",
           "config": {"loss": {"name": loss}}, "metrics": {"test/miscalibration": value},
           "metric_info": describe({"c": Calibration()}, ["test/miscalibration"])}
    rec["code_version"] = code_version(rec["config"])   # made by the current code, so the table shows it
    path = tmp_path / "runs" / "toy" / f"r{i}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_a_new_lower_is_better_metric_is_bolded_and_selected_as_such(tmp_path):
    from experiments.store.frame import load_runs

    for i, (loss, v) in enumerate([("a", 0.5), ("a", 0.52), ("b", 0.1), ("b", 0.12)]):
        _run(tmp_path, i, loss, v)
    spec = TableSpec(experiment="toy", columns=["loss"], metrics=["test/miscalibration"], percent=True,
                     best="row")
    render(load_runs(tmp_path), spec, tmp_path / "tables")
    md = (tmp_path / "tables" / "toy.md").read_text()
    assert "**0.11 ± 0.01 (2)**" in md and "**0.51" not in md
    assert select_mode(TrainerConfig(select_metric="val/miscalibration"), {"c": Calibration()}) == "min"


def test_undeclared_selection_metric_is_refused():
    with pytest.raises(UserError, match="val/nonsense"):
        select_mode(TrainerConfig(select_metric="val/nonsense"), {"c": Calibration()})
