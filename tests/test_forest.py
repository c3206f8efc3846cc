"""The `forest` figure: each method's paired difference to the baseline with its interval, per setting."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from experiments.report.plots import FigureSpec, render_figure  # noqa: E402
from experiments.report.tables import TableSpec, summarize  # noqa: E402
from experiments.store.frame import load_runs
from experiments.store.results import code_version, write_record  # noqa: E402

INFO = {"accuracy": {"higher_is_better": True, "unit": "fraction"}}
GAIN = {"ce": 0.0, "cce": 0.05, "focal": -0.01}


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    for dataset in ("d10", "d100"):
        for seed in range(4):
            shared = rng.normal(0.0, 0.03)
            for loss, gain in GAIN.items():
                acc = 0.5 + shared + gain + rng.normal(0.0, 0.005)
                rec = {"run_id": f"{dataset}{loss}{seed}", "experiment_name": "toy", "dataset": dataset, "loss": loss,
                       "seed": seed, "status": "completed", "config": {"seed": seed}, "code_version": code_version(),
                       "metrics": {"test/accuracy": acc}, "metric_info": INFO}
                write_record(tmp_path / "runs" / "toy" / f"{dataset}{loss}{seed}.json", rec)
    return load_runs(tmp_path)


def _spec(**kw):
    return FigureSpec(experiment="toy", name="forest", kind="forest", rows=["dataset"], hue="loss",
                      baseline={"loss": "ce"}, metrics=["test/accuracy"], **kw)


def test_forest_draws_the_table_differences(runs):
    from experiments.report.plots import _forest

    fig, ax = plt.subplots()
    _forest(ax, runs, _spec(), "test/accuracy")
    table = TableSpec(experiment="toy", rows=["dataset"], columns=["loss"], metrics=["test/accuracy"],
                      baseline={"loss": "ce"})
    long = summarize(runs, table)
    long = long[~long["is_baseline"]]
    from matplotlib.collections import PathCollection

    drawn = sorted(x for c in ax.collections if isinstance(c, PathCollection) for x in c.get_offsets()[:, 0])
    assert drawn == pytest.approx(sorted(long["diff"] * 100))   # percentage points, every non-baseline cell
    assert {t.get_text() for t in ax.get_yticklabels()} == {"d10", "d100"}
    assert "Δ accuracy vs loss=ce (pp)" in ax.get_xlabel() and "higher is better" in ax.get_xlabel()
    cce = long[long["loss"] == "cce"]
    assert cce["significant"].all() and (cce["ci_low"] > 0).all()   # the 5-point gain is found on both
    plt.close(fig)


def test_forest_renders_png_and_pdf(runs, tmp_path):
    paths = render_figure(runs, _spec(title="toy forest"), tmp_path / "figures")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 5000 for p in paths)


@pytest.mark.parametrize("experiment", ["simloss_age", "simloss_cifar", "cce_imbalanced", "avgk"])
def test_every_stand_in_experiment_declares_a_forest(experiment):
    from experiments.drivers.train import compose_config

    cfg, _ = compose_config([f"experiment={experiment}", "profile=smoke"])
    node = OmegaConf.to_container(cfg.figures, resolve=False)["forest"]
    spec = FigureSpec.from_config(experiment, "forest", node)
    assert spec.kind == "forest" and spec.metrics and spec.baseline
    assert set(spec.baseline) <= set(spec.rows) | {spec.hue}
    assert set(node) <= set(FigureSpec.__dataclass_fields__)
