"""The extension pages cannot rot: their code blocks are written out as the user would (a package of their own on
sys.path, a YAML file in conf/) and run. The loss of docs/extend_loss.md goes through the cross-paper matrix at
smoke size, refused pairs and all; the metric and dataset templates are checked against values computed here."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SUPERCLASS_DATASETS = {"synthetic_cifar", "synthetic_cifar10", "plantnet_like"}


def blocks(page: str) -> dict[str, str]:
    """The page's code blocks that open with a `# <relative path>` line, keyed by that path."""
    text = (DOCS / page).read_text()
    found = {}
    for body in re.findall(r"```(?:python|yaml)\n(.*?)```", text, re.S):
        first, _, rest = body.partition("\n")
        if re.fullmatch(r"# [\w/]+\.(py|yaml)", first.strip()):
            found[first.strip()[2:]] = body
    return found


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """Writes a page's files under tmp_path (mylab/ importable, conf/ a copy of losslab's with the page's YAML
    added) and points the drivers at that conf/."""
    from experiments.drivers import catalog, runner, train

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    for module in (train, runner, catalog):
        monkeypatch.setattr(module, "CONF_DIR", conf)
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(page: str) -> dict[str, str]:
        files = blocks(page)
        for rel, body in files.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(body)
        for name in [m for m in sys.modules if m == "mylab" or m.startswith("mylab.")]:
            monkeypatch.delitem(sys.modules, name)
        return files

    return write


def test_loss_page_names_its_files():
    assert set(blocks("extend_loss.md")) == {"mylab/__init__.py", "conf/loss/sibling_smoothing.yaml"}


def _matrix_rows(md: str) -> dict[str, list[str]]:
    header = next(line for line in md.splitlines() if line.startswith("| loss |"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| loss |"):
            rows[cells[0]] = dict(zip(columns, cells[1:]))
    return rows


def test_own_loss_runs_through_the_matrix(user_package, tmp_path, data_dir):
    """The page's loss with CE through every matrix dataset at smoke size (1 seed): it is found by the matrix's
    `glob(*)`, ranked where the dataset has superclasses and refused, with the page's reason once under the rank
    table, where it has none."""
    from experiments.drivers import catalog, runner
    from experiments.report.tables import render
    from experiments.store.frame import load_runs

    user_package("extend_loss.md")
    assert ["loss=sibling_smoothing"] in runner.sweep_points(["loss=glob(*)"])
    results = tmp_path / "results"
    (exp,) = catalog.discover("smoke", ["matrix"], str(data_dir))
    exp.sweeps = [{**s, "loss": "ce,sibling_smoothing"} for s in exp.sweeps if s["loss"].startswith("glob(")]
    composer = runner.Composer()
    outcomes = {}
    for point in runner.expand(exp, "smoke", results):
        dataset = next(o for o in point.overrides if o.startswith("dataset=")).split("=", 1)[1]
        loss = next(o for o in point.overrides if o.startswith("loss=")).split("=", 1)[1]
        outcomes[dataset, loss] = runner.execute(point.overrides, composer)["status"]
    assert {d for (d, loss), s in outcomes.items() if loss == "sibling_smoothing" and s == "completed"} \
        == SUPERCLASS_DATASETS
    assert {d for (d, loss), s in outcomes.items() if s == "refused"} == {"synthetic_age", "digits"}
    assert all(s == "completed" for (d, loss), s in outcomes.items() if loss == "ce")

    main = next(spec for spec in exp.tables if spec.name == "main")
    render(load_runs(results), main, tmp_path / "tables")
    md = (tmp_path / "tables" / "matrix.md").read_text()
    row = _matrix_rows(md)["sibling_smoothing"]
    assert row["synthetic_age"] == row["digits"] == "n/a¹"
    assert all(float(row[d]) in (1.0, 1.5, 2.0) for d in SUPERCLASS_DATASETS)
    assert md.count("SiblingSmoothing needs superclasses") == 1
    assert "- n/a¹: SiblingSmoothing needs superclasses; this dataset has none (Meta.superclass)" in md


def test_own_loss_formula_and_refusal(user_package):
    """The page's class against a target row written out here: superclasses {0, 1, 2} and {3}, eps = 0.3."""
    from experiments.engine.data import Meta

    user_package("extend_loss.md")
    import mylab

    meta = Meta(num_classes=4, class_names=list("abcd"), class_counts=torch.ones(4),
                superclass=torch.tensor([0, 0, 0, 1]))
    loss = mylab.SiblingSmoothing(eps=0.3)
    loss.bind(meta)
    assert torch.allclose(loss.targets, torch.tensor([[0.7, 0.15, 0.15, 0.0], [0.15, 0.7, 0.15, 0.0],
                                                      [0.15, 0.15, 0.7, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    logits = torch.tensor([[2.0, 0.0, 0.0, 1.0]])
    logp = logits.log_softmax(1)[0]
    expected = -(0.7 * logp[0] + 0.15 * logp[1] + 0.15 * logp[2])
    assert loss(logits, torch.tensor([0])).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="needs superclasses"):
        mylab.SiblingSmoothing().bind(Meta(num_classes=2, class_names=["a", "b"], class_counts=torch.ones(2)))


def test_metric_page(user_package, train_run):
    """The page's metric against 0.45 = mean(0.7, 0.2) computed here, then asked for by name in a run."""
    from experiments.engine.metrics import EvalOutputs

    assert set(user_package("extend_metric.md")) == {"mylab/metrics.py"}
    from mylab.metrics import TrueClassProbability

    probs = torch.tensor([[0.7, 0.3], [0.8, 0.2]])
    out = EvalOutputs(outputs={"logits": probs.log()}, scores={"probs": probs}, targets=torch.tensor([0, 1]))
    assert TrueClassProbability()(out, None) == {"true_class_prob": pytest.approx(0.45)}
    rec = train_run("dataset=digits", "+metrics.true_class_prob={_target_: mylab.metrics.TrueClassProbability}")
    assert 0 < rec["metrics"]["test/true_class_prob"] < 1
    assert rec["metric_info"]["true_class_prob"]["higher_is_better"] is True
    assert rec["metric_info"]["true_class_prob"]["unit"] == "fraction"


def test_dataset_page(user_package, train_run, compose):
    """The page's dataset: split sizes and counts written out here (4 classes × 60, 10 per class to validation,
    20 per class test), the stripes of class 0 (period 2), the shared imbalance block, and a run of an ordinal loss."""
    import hydra.utils

    from experiments.engine.config import dataset_node

    assert set(user_package("extend_dataset.md")) == {"mylab/datasets.py", "conf/dataset/stripes.yaml"}
    cfg, _ = compose("dataset=stripes", shrink=False)
    data = hydra.utils.instantiate(dataset_node(cfg))()
    assert (len(data.train), len(data.val), len(data.test)) == (200, 40, 80)
    assert data.meta.class_counts.tolist() == [50, 50, 50, 50] and data.meta.ordered
    first = data.test.x[data.test.y == 0][0, 0, :, 0].tolist()   # rows 0–1 dark, 2–3 bright, noise ≤ 50
    assert max(first[0:2]) <= 50 and min(first[2:4]) >= 200
    cfg, _ = compose("dataset=stripes", "dataset.imbalance={ratio: 4}", shrink=False)
    counts = hydra.utils.instantiate(dataset_node(cfg))().meta.class_counts.tolist()
    assert counts[0] == 50 and counts[-1] in (12, 13) and counts == sorted(counts, reverse=True)
    rec = train_run("dataset=stripes", "loss=sord")
    assert rec["status"] == "completed" and "test/mae" in rec["metrics"]
