"""Every figure kind, drawn from synthetic runs at the sizes the real experiments reach (23 losses × 5 datasets in
the heat map, 6 settings × 8 losses in a forest): no tick label, axis label, title or legend entry overlaps
another or leaves the figure, legends stay off the panels, heat-map numbers fit their cells, and an unchanged
figure re-renders to the same PDF bytes."""
import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments.report.plots import FigureSpec, draw_figure, render_figure  # noqa: E402
from experiments.store.frame import load_runs  # noqa: E402
from tests.helpers.runs import write_run  # noqa: E402

LOSSES = ["an", "an_ls", "balanced_softmax", "cb", "cce", "cce_official", "cdw_ce", "ce", "coral", "corn", "cot",
          "epr", "focal", "hxe", "ldam_drw", "logit_adjustment", "mean_variance", "role", "simloss", "soft_labels",
          "sord", "two_head", "wan"]
DATASETS = ["synthetic_age", "synthetic_cifar", "synthetic_cifar10", "plantnet_like", "digits"]
SETTINGS = [("digits", 1), ("digits", 10), ("digits", 50), ("digits", 100), ("synthetic_cifar10", 10),
            ("synthetic_cifar10", 100)]
HUES = ["ce", "focal", "cot", "cce", "cce_official", "balanced_softmax", "logit_adjustment", "ldam_drw", "cb"]
TITLE = "Each loss minus CE per dataset and ρ, paired by seed, 95 % CI (a title long enough to need two lines)"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`fig` runs: 9 losses × 6 settings × 4 seeds with curves, histograms and per-class accuracies; `matrix` runs:
    23 losses × 5 datasets, the last 7 losses refused on two datasets."""
    root, rng = tmp_path_factory.mktemp("figures"), np.random.default_rng(0)
    for (dataset, rho), (h, loss), seed in itertools.product(SETTINGS, enumerate(HUES), range(4)):
        acc = 0.5 + 0.02 * h + rng.normal(0, 0.01)
        write_run(root, "fig", f"{dataset}{rho}{loss}{seed}", dataset=dataset, loss=loss, seed=seed,
                  config={"dataset": {"imbalance": {"ratio": rho}}, "loss": {"r": h / 10}},
                  metrics={"test/accuracy": acc, "test/mae_expected": 2 - acc},
                  history=[{"epoch": e, "train/loss": 2.0 / e + h / 10} for e in range(1, 7)],
                  details={"test/per_class_accuracy": list(rng.uniform(0, 1, 10)),
                           "test/pred_hist": list(rng.integers(0, 30, 12)), "test/true_hist": [10] * 12},
                  data={"train_class_counts": [int(500 / (c + 1)) for c in range(10)]})
    for (d, dataset), (i, loss) in itertools.product(enumerate(DATASETS), enumerate(LOSSES)):
        refused = i >= 16 and d in (1, 4)
        write_run(root, "matrix", f"{dataset}{loss}", dataset=dataset, loss=loss,
                  status="refused" if refused else "completed", error="loss: needs ordered classes" if refused else None,
                  metrics={} if refused else {"test/accuracy": float(rng.uniform(0.3, 0.9))})
    return load_runs(root)


SPECS = {
    "line": dict(x="loss.r", hue="dataset", metrics=["test/accuracy", "test/mae_expected"]),
    "bars": dict(hue="loss", metrics=["test/accuracy", "test/mae_expected"]),
    "per_class": dict(hue="loss", metrics=["test/per_class_accuracy"]),
    "curves": dict(hue="loss", metrics=["train/loss"]),
    "hist": dict(hue="loss", metrics=["test/pred_hist"], options={"reference": "test/true_hist"}),
    "forest": dict(rows=["dataset", "dataset.imbalance.ratio"], hue="loss", baseline={"loss": "ce"},
                   metrics=["test/accuracy"]),
    "heatmap": dict(experiment="matrix", options={"headline": {d: "test/accuracy" for d in DATASETS}}),
}


def _spec(kind: str) -> FigureSpec:
    fields = {"experiment": "fig", **SPECS[kind]}
    return FigureSpec(name=kind, kind=kind, title=TITLE, **fields)


def _drawn_ticklabels(axis):
    """The tick labels matplotlib draws, major and minor: those of ticks inside the view interval."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) * 1e-9
    pairs = [*zip(axis.get_majorticklocs(), axis.get_majorticklabels()),
             *zip(axis.get_minorticklocs(), axis.get_minorticklabels())]
    return [label for loc, label in pairs if low - span <= loc <= high + span]


def _legends(fig):
    return [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)


def _labels(fig):
    """Every text a reader must read outside the plotted data, with its window extent."""
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle]
    for ax in fig.axes:
        texts += _drawn_ticklabels(ax.xaxis) + _drawn_ticklabels(ax.yaxis)
        texts += [ax.xaxis.label, ax.yaxis.label, ax.title]
    for legend in _legends(fig):
        texts += legend.get_texts() + [legend.get_title()]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts
            if t is not None and t.get_visible() and t.get_text().strip()]


def _overlap(a, b, slack: float = 0.5) -> bool:
    return a.x0 + slack < b.x1 and b.x0 + slack < a.x1 and a.y0 + slack < b.y1 and b.y0 + slack < a.y1


@pytest.mark.parametrize("kind", list(SPECS))
def test_labels_neither_overlap_nor_leave_the_figure(runs, kind):
    fig = draw_figure(runs, _spec(kind))
    fig.canvas.draw()
    frame = fig.bbox
    labels = _labels(fig)
    assert len(labels) > 5
    outside = [text for text, box in labels if box.x0 < frame.x0 - 1 or box.y0 < frame.y0 - 1
               or box.x1 > frame.x1 + 1 or box.y1 > frame.y1 + 1]
    assert not outside, outside
    clashes = [(s, t) for (s, a), (t, b) in itertools.combinations(labels, 2) if _overlap(a, b)]
    assert not clashes, clashes[:5]
    renderer = fig.canvas.get_renderer()
    for legend, ax in itertools.product(_legends(fig), fig.axes):
        assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer)), "legend on a panel"


def test_heatmap_numbers_fit_their_cells(runs):
    fig = draw_figure(runs, _spec("heatmap"))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    box = ax.get_window_extent(renderer)
    cell_w, cell_h = box.width / len(DATASETS), box.height / len(LOSSES)
    cells = [t for t in ax.texts if t.get_text()]
    assert len(cells) == len(DATASETS) * len(LOSSES)
    assert sum(t.get_text() == "n/a" for t in cells) == 2 * 7
    for t in cells:
        extent = t.get_window_extent(renderer)
        assert t.get_fontsize() >= 8 and extent.width < cell_w and extent.height < cell_h, t.get_text()


def test_figure_size_grows_with_its_rows(runs):
    """A forest of 6 settings × 9 losses gets 0.2 in per line, a heat map of 23 losses 0.3 in per row."""
    forest = draw_figure(runs, _spec("forest")).get_size_inches()
    heat = draw_figure(runs, _spec("heatmap")).get_size_inches()
    assert forest[1] >= 0.2 * len(SETTINGS) * len(HUES) and heat[1] >= 0.3 * len(LOSSES)
    assert forest[0] >= 6 and heat[0] >= len(DATASETS) * 1.0


def test_unchanged_figure_rerenders_to_the_same_pdf_bytes(runs, tmp_path):
    first = render_figure(runs, _spec("forest"), tmp_path / "a")
    second = render_figure(runs, _spec("forest"), tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
