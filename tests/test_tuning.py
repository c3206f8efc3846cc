"""Fair tuning: the grid value is chosen on validation (never test), direction from the declared measures."""
import json

import pandas as pd
import pytest

from experiments.engine.errors import UserError
from experiments.report.tables import TableSpec, render
from experiments.report.tuning import chosen_curve, grid_means, select_on_validation

MEASURES = {"mae": {"higher_is_better": False, "unit": "years"},
            "accuracy": {"higher_is_better": True, "unit": "fraction"},
            "cs": {"higher_is_better": True, "unit": "fraction"},
            "la_tau": {"higher_is_better": None, "unit": "score"}}
METHODS = {"simloss": {"match": {"loss": "simloss"}, "grid": "loss.r"},
           "sord": {"match": {"loss": "sord"}, "grid": "loss.scale"},
           "ce": {"match": {"loss": "ce"}}}


def run(loss, value, seed, val_mae, test_mae, dataset="synthetic_age", val_acc=0.5):
    key = {"simloss": "loss.r", "sord": "loss.scale"}.get(loss)
    row = {"experiment_name": "ordinal_age", "status": "completed", "dataset": dataset, "loss": loss, "seed": seed,
           "val/mae": val_mae, "test/mae": test_mae, "val/accuracy": val_acc, "test/accuracy": 0.3,
           "test/cs@1": 0.2, "test/cs@2": 0.4, "metric_info": json.dumps(MEASURES)}  # as `load_runs` gives it
    if key:
        row[key] = value
    return row


def runs():
    """Validation prefers r = 0.2 and scale = 1.0; test would prefer r = 0.5 and scale = 0.1."""
    rows = []
    for seed in range(3):
        rows += [run("simloss", 0.2, seed, 3.0 + 0.1 * seed, 5.0), run("simloss", 0.5, seed, 4.0, 2.0),
                 run("sord", 0.1, seed, 3.5, 1.0), run("sord", 1.0, seed, 3.4, 6.0), run("ce", None, seed, 5, 5)]
    df = pd.DataFrame(rows)
    df.attrs["measures"] = MEASURES
    return df


def spec(**options):
    base = {"select": "val/mae", "methods": METHODS}
    return TableSpec(experiment="ordinal_age", rows=["dataset", "method", "chosen"], metrics=["test/mae"],
                     transform="experiments.report.tuning.select_on_validation", baseline={"method": "ce"},
                     options={**base, **options})


def test_picks_the_best_mean_validation_value_and_returns_its_test_runs():
    out = select_on_validation(runs(), spec())
    chosen = out.groupby("method")["chosen"].first().to_dict()
    assert chosen == {"simloss": "r=0.2 (of 2)", "sord": "scale=1 (of 2)", "ce": "—"}
    assert sorted(out[out.method == "simloss"]["test/mae"]) == [5.0] * 3
    assert sorted(out[out.method == "sord"]["test/mae"]) == [6.0] * 3
    assert len(out) == 9 and out.attrs["measures"] == MEASURES


def test_direction_comes_from_the_declared_measure():
    df = runs()
    df["val/accuracy"] = [0.9 if r == 0.5 or s == 0.1 else 0.1 for r, s in zip(df["loss.r"], df["loss.scale"])]
    out = select_on_validation(df, spec(select="val/accuracy"))
    chosen = out.groupby("method")["chosen"].first().to_dict()
    assert chosen["simloss"] == "r=0.5 (of 2)" and chosen["sord"] == "scale=0.1 (of 2)"


@pytest.mark.parametrize("select", ["test/mae", "mae", None])
def test_refuses_anything_but_a_validation_metric(select):
    with pytest.raises(UserError, match="validation"):
        select_on_validation(runs(), spec(select=select))


def test_refuses_an_undeclared_or_directionless_selection_metric():
    df = runs().assign(**{"val/la_tau": 1.0})
    with pytest.raises(UserError, match="direction"):
        select_on_validation(df, spec(select="val/la_tau"))
    df.attrs["measures"] = {}
    with pytest.raises(UserError, match="declares"):
        select_on_validation(df, spec())


def test_chooses_within_each_dataset_and_honours_where():
    other = runs().assign(dataset="afad")
    other.loc[other["loss.r"] == 0.5, "val/mae"] = 1.0
    df = pd.concat([runs(), other])
    df.attrs["measures"] = MEASURES
    out = select_on_validation(df, spec())
    picked = out[out.method == "simloss"].groupby("dataset")["chosen"].first().to_dict()
    assert picked == {"synthetic_age": "r=0.2 (of 2)", "afad": "r=0.5 (of 2)"}
    only = select_on_validation(df, spec(where={"dataset": "afad"}))
    assert set(only["dataset"]) == {"afad"}


def test_renders_a_table_naming_the_chosen_value(tmp_path):
    summary = render(runs(), spec(), tmp_path)
    md = (tmp_path / "ordinal_age.md").read_text()
    assert summary["runs"] == 15
    assert "r=0.2 (of 2)" in md and "scale=1 (of 2)" in md and "ce · —" in md


def test_figure_transforms():
    fig = spec(family="test/cs", x="k")
    means = grid_means(runs(), fig)
    assert len(means) == 5 and set(means["method"]) == {"simloss", "sord", "ce"}
    assert means.loc[(means.method == "simloss") & (means.value == 0.5), "test/mae"].item() == 2.0
    curve = chosen_curve(runs(), fig)
    assert sorted(curve["k"].unique()) == [1.0, 2.0] and len(curve) == 2 * 9
    assert set(curve.loc[curve.k == 2.0, "test/cs"]) == {0.4}
