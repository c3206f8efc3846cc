"""One name, one meaning: two metrics reporting one name are refused, and a metric's direction and unit come from
the runs that report it (per run, and per table from that table's own runs), never from another experiment."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from age_estimation.metrics import AgeMetrics, ExpectedAgeMetrics
from experiments.engine.config import build_metrics
from experiments.engine.data import Meta
from experiments.engine.errors import UserError
from experiments.engine.evaluation import compute_metrics, preflight
from experiments.engine.metrics import EvalOutputs, Measure, Metric, describe
from experiments.losses import CrossEntropy
from experiments.report.tables import TableSpec, render
from experiments.store.frame import load_runs, measures_of
from tests.helpers.runs import write_run


class Hist(Metric):
    """Reports an undeclared detail list, `hist`."""

    def __call__(self, out, meta, state=None):
        return {"hist": [1, 2]}


class Loss(Metric):
    """Reports `loss`, the name the engine gives the split's mean objective."""

    measures = {"loss": Measure(False, "nats")}

    def __call__(self, out, meta, state=None):
        return {"loss": 0.0}


def _meta(k: int = 3) -> Meta:
    return Meta(num_classes=k, class_names=[str(i) for i in range(k)], class_counts=torch.ones(k), image_size=4)


def _out(k: int = 3) -> EvalOutputs:
    logits = torch.eye(k)
    return EvalOutputs(outputs={"logits": logits}, scores={"probs": logits.softmax(1)}, targets=torch.arange(k),
                       loss=0.5)


# ---------------------------------------------------------------------- two metrics, one name
def test_build_metrics_refuses_two_metrics_declaring_one_name(compose):
    cfg, _ = compose("dataset=synthetic_cifar", "metric_sets=[classification]",
                     "+metrics.again={_target_: experiments.engine.metrics.Accuracy}")
    data = SimpleNamespace(meta=_meta(), val=[0])
    with pytest.raises(UserError, match=r"metrics\.again and metrics\.accuracy both report 'accuracy'"):
        build_metrics(cfg, CrossEntropy(), data)


def test_build_metrics_keeps_distinct_names(compose):
    cfg, _ = compose("dataset=synthetic_cifar", "metric_sets=[classification]")
    metrics = build_metrics(cfg, CrossEntropy(), SimpleNamespace(meta=_meta(), val=[0]))
    assert {"accuracy", "topk", "class_accuracy"} <= set(metrics)


def test_compute_metrics_refuses_an_undeclared_name_reported_twice():
    with pytest.raises(UserError, match=r"metrics\.b and metrics\.a both report 'hist'"):
        compute_metrics(_out(), {"a": Hist(), "b": Hist()}, _meta(), "val", {})


def test_a_metric_reporting_the_engines_loss_name_is_refused():
    with pytest.raises(UserError, match=r"metrics\.mine and the engine .* both report 'loss'"):
        compute_metrics(_out(), {"mine": Loss()}, _meta(), "test", {})


def test_compute_metrics_merges_distinct_names():
    scalars, details = compute_metrics(_out(), {"a": Hist(), "acc": AgeMetrics()}, _meta(), "test", {})
    assert scalars["test/loss"] == 0.5 and scalars["test/mae"] == 0.0 and details == {"test/hist": [1, 2]}
    assert scalars["test/mae_mistakes"] is None      # NaN (no mistake) is stored as null


class Tiny(nn.Module):
    def forward(self, x):
        return {"logits": x.flatten(1)[:, :3]}


def test_preflight_refuses_a_shared_name_before_training():
    data = SimpleNamespace(meta=_meta())
    with pytest.raises(UserError, match="both report 'hist'"):
        preflight(Tiny(), CrossEntropy(), data, {"a": Hist(), "b": Hist()})
    preflight(Tiny(), CrossEntropy(), data, {"a": Hist()})


# ---------------------------------------------------------------------- declared units of the age metrics
def test_age_errors_are_declared_in_years_and_squared_errors_in_years_squared():
    info = describe({"a": AgeMetrics(), "e": ExpectedAgeMetrics()},
                    ["test/mae", "test/mse", "test/mae_mistakes", "test/mae_expected", "test/mse_expected"])
    assert {k: v["unit"] for k, v in info.items()} == {"mae": "years", "mse": "years²", "mae_mistakes": "years",
                                                      "mae_expected": "years", "mse_expected": "years²"}
    assert not any(v["higher_is_better"] for v in info.values())
    assert AgeMetrics(unit="classes").measures["mse"] == Measure(False, "classes²")
    assert Measure(False, "years²").suffix == "years²" and Measure(False, "years²").scale == 1.0


# ---------------------------------------------------------------------- units per table from its own runs
def _write(root, experiment, i, loss, value, unit):
    write_run(root, experiment, f"{experiment}{i}", dataset="d", loss=loss, seed=i // 2, metrics={"test/err": value},
              metric_info={"err": {"higher_is_better": False, "unit": unit}})


@pytest.fixture
def two_experiments(tmp_path):
    """`err` is years in `ages` and a unitless score in `trees`; `trees` is read last (sorted paths)."""
    values = [1.0, 2.0, 1.5, 2.6, 1.2, 2.1]
    for i, v in enumerate(values):
        _write(tmp_path, "ages", i, "ab"[i % 2], v, "years")
        _write(tmp_path, "trees", i, "ab"[i % 2], v / 10, "score")
    return tmp_path


def test_each_table_reads_units_from_its_own_runs(two_experiments):
    df = load_runs(two_experiments)
    for experiment, unit in (("ages", "years"), ("trees", "score")):
        spec = TableSpec(experiment=experiment, columns=["loss"], metrics=["test/err"], baseline={"loss": "a"})
        render(df, spec, two_experiments / "tables")
        md = (two_experiments / "tables" / f"{experiment}.md").read_text()
        assert re.search(rf"power; median over the non-baseline cells\): test/err [0-9.]+ {unit} \(range", md)
        assert ({"years", "score"} - {unit}).pop() not in md


def test_measures_of_reads_each_run_and_refuses_a_name_declared_two_ways(two_experiments):
    df = load_runs(two_experiments)
    assert json.loads(df["metric_info"].iloc[0]) == {"err": {"higher_is_better": False, "unit": "years"}}
    assert measures_of(df[df["experiment_name"] == "ages"]) == {"err": {"higher_is_better": False, "unit": "years"}}
    with pytest.raises(UserError, match=r"'err' is declared as years \(lower is better\) by some runs and as "
                                        r"score \(lower is better\) by others"):
        measures_of(df)


def test_measures_of_runs_without_metric_info_is_empty():
    assert measures_of(pd.DataFrame({"run_id": ["r"], "metric_info": [None]})) == {}
    assert measures_of(pd.DataFrame({"run_id": ["r"]})) == {}
