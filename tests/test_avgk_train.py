"""One-epoch runs through the engine: two-head model on the stand-in and on a Pl@ntNet-300K folder, ROLE's
per-example table, and the average-K table from the resulting runs."""
import pytest

from experiments.report.tables import TableSpec, render
from experiments.store.frame import load_runs
from tests.helpers.formats import make_plantnet

KS = (1, 2, 3, 5)


def check_avgk_metrics(rec, two_head=True):
    assert rec["status"] == "completed"
    m = rec["metrics"]
    names = ["avgk_acc", "avgk_macro_acc", "avgk_size", "topk_acc", "avgk_few_acc", "aps_acc", "raps_size"]
    names += ["avgk_acc_a", "avgk_size_a"] if two_head else []
    for k in KS:
        for name in names:
            assert f"test/{name}@{k}" in m, f"test/{name}@{k} missing"
        assert 0.0 <= m[f"test/avgk_acc@{k}"] <= 1.0
        assert m[f"val/avgk_size@{k}"] == pytest.approx(k, abs=0.05)
        assert f"test/avgk_size_hist@{k}" in rec["details"]


def test_two_head_standin_one_epoch(train_run):
    rec = train_run("experiment=avgk", "loss=two_head", "avgk.k=2")
    check_avgk_metrics(rec)
    assert rec["config"]["loss"]["k"] == 2
    assert rec["metrics"]["test/avgk_acc@5"] >= rec["metrics"]["test/avgk_acc@1"]


def test_two_head_plantnet_folder_one_epoch(train_run, tmp_path):
    root = make_plantnet(tmp_path / "pn", per_class=(6, 3, 3), size=(24, 20))
    rec = train_run("dataset=plantnet300k", f"dataset.root={root}", "dataset.resize=20", "dataset.crop=16",
                    "dataset.scale=1.0", "loss=two_head", "model=small_cnn", "model.width=8",
                    "trainer.batch_size=8", "avgk.eval_ks=[1,2,3]")
    assert rec["status"] == "completed" and rec["data"]["n_train"] == 21 and rec["data"]["num_classes"] == 3
    for k in (1, 2, 3):
        assert f"test/avgk_acc@{k}" in rec["metrics"] and f"test/avgk_acc_a@{k}" in rec["metrics"]
        assert rec["metrics"][f"val/avgk_size@{k}"] == pytest.approx(k, abs=0.34)


def test_role_and_ce_runs_render_the_table(train_run, results_dir):
    role = train_run("experiment=avgk", "loss=role", "avgk.k=3")
    check_avgk_metrics(role, two_head=False)
    ce = train_run("experiment=avgk", "loss=ce")
    check_avgk_metrics(ce, two_head=False)
    runs = load_runs(results_dir, "avgk")
    spec = TableSpec(experiment="avgk", transform="average_k.tables.by_k", sort=False, rows=["K"],
                     columns=["method"], metrics=["avgk_acc"], baseline={"method": "ce_threshold"},
                     options={"ks": list(KS), "methods": ["ce", "role"]})
    render(runs, spec, results_dir / "tables")
    md = (results_dir / "tables" / "avgk.md").read_text()
    assert "ce_threshold" in md and "role" in md
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(KS)                       # header + one row per K
    assert lines[0].split("|")[2].strip().startswith("ce_threshold")   # method order kept
    row3 = next(line for line in lines if line.startswith("| 3 |")).split("|")
    assert "(1)" in row3[2] and "(1)" in row3[3]            # ce (every K) and role (its K only)
    row1 = next(line for line in lines if line.startswith("| 1 |")).split("|")
    assert "(1)" in row1[2] and row1[3].strip() == "–"


@pytest.mark.parametrize("optim", [("optim=adam",), ("optim=sgd", "optim.momentum=0.9")])
def test_role_rows_trains_checkpoints_and_resumes_exactly(compose, tmp_path, optim):
    """`loss.table_update=rows` (the table stepped by the loss's own lazy optimizer: SparseAdam, LazySGD): an
    interrupted run, resumed, equals the uninterrupted one — the table's optimizer and schedule are checkpointed."""
    from experiments.drivers.train import run

    quiet = lambda *a, **k: None  # noqa: E731
    base = ("experiment=avgk", "loss=role", "loss.table_update=rows", "avgk.k=2", "trainer.epochs=2", *optim)
    part = run(*compose(*base, f"results_dir={tmp_path / 'a'}", "trainer.interrupt_after=1"), log=quiet)
    assert part["status"] == "interrupted"
    resumed = run(*compose(*base, f"results_dir={tmp_path / 'a'}"), log=quiet)
    straight = run(*compose(*base, f"results_dir={tmp_path / 'b'}"), log=quiet)
    assert resumed["status"] == straight["status"] == "completed"
    assert resumed["metrics"] == straight["metrics"]
    dense = run(*compose(*base[:2], *base[3:], f"results_dir={tmp_path / 'c'}"), log=quiet)
    losses = lambda rec: [h["train/loss"] for h in rec["history"]]  # noqa: E731
    assert losses(dense)[0] == losses(straight)[0]           # epoch 1 sees each row once: the same first steps
    assert losses(dense)[1] != losses(straight)[1]           # then dense rows have moved on their momentum
