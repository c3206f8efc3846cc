"""Every loss × every offline dataset for one short epoch: completed runs satisfy the metric invariants, and a
pair that cannot run is refused with one `error:` line (CLI) — never a silent wrong number."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.engine.errors import UserError
from experiments.report.matrix import render_ranks
from experiments.report.tables import TableSpec, refusal_reason
from experiments.store.frame import load_runs
from tests.helpers.runs import write_run

ROOT = Path(__file__).resolve().parent.parent
LOSSES = sorted(p.stem for p in (ROOT / "conf" / "loss").glob("*.yaml"))
DATASETS = ["synthetic_age", "synthetic_cifar", "synthetic_cifar10", "plantnet_like", "digits"]
ORDINAL = {"cdw_ce", "coral", "corn", "mean_variance", "sord"}       # need ordered classes (ages)
HIERARCHY = {"hxe", "soft_labels"}                                   # need superclasses
# Written from each dataset's structure, not read from the code: the age stand-in is ordered and flat, the two
# CIFAR stand-ins have superclasses, Pl@ntNet's genera are its superclasses, digits has neither and no natural
# similarity for SimLoss.
EXPECTED_REFUSED = {
    "synthetic_age": HIERARCHY,
    "synthetic_cifar": ORDINAL,
    "synthetic_cifar10": ORDINAL,
    "plantnet_like": ORDINAL,
    "digits": ORDINAL | HIERARCHY | {"simloss"},
}


def _sweeps(compose) -> dict[str, list[str]]:
    cfg, _ = compose("experiment=matrix")
    out = {}
    for sweep in OmegaConf.to_container(cfg.sweeps, resolve=False):
        out[sweep["dataset"]] = [f"{k}={v}" for k, v in sweep.items() if k not in ("loss", "seed")]
    return out


def check_invariants(rec: dict) -> None:
    metrics, info = rec["metrics"], rec["metric_info"]
    c = rec["data"]["num_classes"]
    for name, value in metrics.items():
        if value is None:
            continue
        leaf = name.split("/", 1)[1]
        if info[leaf]["unit"] == "fraction":
            assert -1e-9 <= value <= 1 + 1e-9, (name, value)
        if leaf.startswith(("mae", "mistake_severity")) and rec["dataset"] == "synthetic_age":
            assert 0 <= value <= c - 1, (name, value)
        if "_size@" in leaf or leaf.startswith("avgk_size"):
            assert 0 <= value <= c, (name, value)
    for k in rec["config"]["avgk"]["eval_ks"]:
        size = metrics.get(f"val/avgk_size@{k}")
        if size is not None:
            assert abs(size - k) <= 1, (k, size)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_loss_runs_or_is_refused(dataset, compose, results_dir):
    from experiments.drivers.train import run

    extra = _sweeps(compose)[dataset]
    refused = []
    for loss in LOSSES:
        cfg, choices = compose("experiment=matrix", f"loss={loss}", *extra, "dataset.scale=0.25",
                               "trainer.batch_size=128")
        try:
            rec = run(cfg, choices, log=lambda *a: None)
        except UserError:
            refused.append(loss)
            continue
        assert rec["status"] == "completed", (loss, rec.get("error"))
        check_invariants(rec)
    assert set(refused) == EXPECTED_REFUSED[dataset]
    for loss in refused[:2]:
        _assert_one_line_refusal(["experiment=matrix", f"loss={loss}", *extra], results_dir)


def _assert_one_line_refusal(overrides: list[str], results_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOSSLAB_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "experiments.train", *overrides, "profile=smoke",
                           "trainer.epochs=1", f"results_dir={results_dir}", "trainer.progress=off"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_expected_age_of_independent_scores_is_within_the_label_range(train_run):
    rec = train_run("dataset=synthetic_age", "loss=an")
    assert "renormalised" in rec["metric_notes"]["age_expected"]
    assert 0 <= rec["metrics"]["test/mae_expected"] <= rec["data"]["num_classes"] - 1
    assert not math.isnan(rec["metrics"]["test/mae_expected"])


def _matrix_lines(data_dir):
    """Each sweep line of the matrix: its dataset overrides, its `loss.*` overrides and its losses, expanded by
    Hydra's own `glob(...)` exactly as `make reproduce-table` expands them."""
    from experiments.drivers import catalog, runner

    (exp,) = catalog.discover("smoke", ["matrix"], str(data_dir))
    for sweep in exp.sweeps:
        data = [f"{k}={v}" for k, v in sweep.items() if k == "dataset" or k.startswith("dataset.")]
        loss_keys = OmegaConf.from_dotlist([f"{k.removeprefix('loss.')}={v}" for k, v in sweep.items()
                                            if k.startswith("loss.")])
        losses = [o.split("=", 1)[1] for (o,) in runner.sweep_points([f"loss={sweep['loss']}"])]
        yield data, loss_keys, losses


def test_refused_pairs_are_exactly_the_expected_ones(compose, data_dir):
    """Every (loss, dataset) pair of the matrix, without training: each dataset built as a run builds it, each
    loss instantiated and bound to it; the refused pairs are the expected set and every other pair binds."""
    import hydra.utils

    from experiments.engine.config import build_components

    nodes: dict[str, object] = {}
    refused: dict[str, set] = {d: set() for d in DATASETS}
    for data, loss_keys, losses in _matrix_lines(data_dir):
        cfg, _ = compose("experiment=matrix", *data, "dataset.scale=0.25")
        meta = build_components(cfg)[0].meta
        for loss in losses:
            if loss not in nodes:
                nodes[loss] = compose("experiment=matrix", f"loss={loss}")[0].loss
            cfg.loss = OmegaConf.merge(nodes[loss], loss_keys)
            try:
                hydra.utils.instantiate(cfg.loss).bind(meta)
            except (UserError, ValueError):
                refused[data[0].removeprefix("dataset=")].add(loss)
    assert set(nodes) == set(LOSSES)
    assert refused == EXPECTED_REFUSED


def test_rank_table_shows_each_refusal_reason_once_under_the_table(tmp_path):
    reasons = {"hxe": "error: loss: hxe needs a class hierarchy; this dataset has no superclasses",
               "sord": "loss: SORD needs ordered classes (ages)\nsecond line is dropped"}
    accuracy = {"ce": 0.5, "cce": 0.6, "hxe": 0.7, "sord": 0.4}
    for dataset in ("a", "b", "c"):
        for loss, acc in accuracy.items():
            refusal = (loss == "hxe" and dataset != "c") or (loss == "sord" and dataset != "a")
            write_run(tmp_path, "m", f"{dataset}{loss}", dataset=dataset, loss=loss,
                      status="refused" if refusal else "completed", error=reasons[loss] if refusal else None,
                      metrics={} if refusal else {"test/accuracy": acc})
    spec = TableSpec(experiment="m", options={"headline": {d: "test/accuracy" for d in "abc"}})
    render_ranks(load_runs(tmp_path), spec, tmp_path / "t")
    md = (tmp_path / "t" / "m.md").read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:4] for line in md.splitlines() if line.startswith("| ")}
    assert rows["hxe"] == ["n/a¹", "n/a¹", "1.0"] and rows["sord"] == ["3.0", "n/a²", "n/a²"]
    assert rows["cce"] == ["1.0", "1.0", "2.0"]
    assert md.count("hxe needs a class hierarchy") == 1 and md.count("SORD needs") == 1
    assert "\n- n/a¹: hxe needs a class hierarchy; this dataset has no superclasses\n" in md
    assert "\n- n/a²: SORD needs ordered classes (ages)\n" in md
    tex = (tmp_path / "t" / "m.tex").read_text()
    assert r"n/a\textsuperscript{2}" in tex and r"n/a\textsuperscript{1}: hxe needs" in tex
    csv = (tmp_path / "t" / "m.csv").read_text()
    assert "n/a — SORD needs ordered classes (ages)" in csv   # the long form keeps the reason in the cell


@pytest.mark.parametrize("error, reason", [
    ("error: loss: CORN needs ordered classes", "CORN needs ordered classes"),
    ("loss.similarity=null but the dataset has no natural similarity; set it",
     "loss.similarity=null but the dataset has no natural similarity; set it"),
    ("data missing: /data/UTKFace", "data missing: /data/UTKFace"),   # a phrase, not a config group: kept
    ("a | b\nsecond line", "a / b"),
    (None, "refused"),
])
def test_refusal_reason_is_one_line_without_the_refusing_group(error, reason):
    assert refusal_reason(error) == reason
