"""A result goes stale exactly when code it ran changed (experiments.store.versions), on a copied tree.

The four edit cases of issue 21 are replayed on a copy of the code and config tree with fake finished records of
every smoke config of `matrix` (every loss on every dataset) and `simloss_age`: a comment or docstring edit
anywhere re-plans nothing; an executable line of experiments/losses/focal.py re-plans exactly the runs whose
targets import it (worked out here from the import lines' text and the targets' runtime modules, not by the
closure code under test); the trainer's training step re-plans all; a loss in a user package outside the repo
re-plans its own runs.
"""
import hashlib
import json
import re
import shutil
from pathlib import Path

import hydra.utils
import pandas as pd
import pytest
from omegaconf import OmegaConf

from experiments.drivers import catalog, runner, status
from experiments.engine.config import metric_specs
from experiments.engine.errors import UserError
from experiments.report.tables import STALE_MARK, TableSpec, render
from experiments.store import results as store
from experiments.store import versions
from experiments.store.frame import load_runs
from tests.helpers.runs import write_run

ROOT = Path(__file__).resolve().parent.parent
CODE = ("experiments", "age_estimation", "image_classification", "average_k", "conf")
EXPERIMENTS = ["cce_imbalanced", "simloss_age", "avgk"]   # focal in some runs, CE, average_k losses; small in smoke
IMPORT_LINE = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", re.M)


# ---------------------------------------------------------------------- hashing one file
BASE = 'X = 1\n\n\ndef f(x):\n    return x + X\n\n\nclass C:\n    y = "kept"\n'
SAME = [
    '# a comment\nX = 1  # trailing\n\n\ndef f(x):\n    return x + X\n\n\nclass C:\n    y = "kept"\n',
    '"""Module docstring."""\nX = 1\n\n\ndef f(x):\n    """f\'s docstring."""\n    return x + X\n\n\nclass C:\n'
    '    """C."""\n    y = "kept"\n',
    'X = 1\ndef f(x):\n    return x + X\nclass C:\n    y = "kept"\n',                  # layout only
]
DIFFERENT = [BASE.replace("X = 1", "X = 2"), BASE.replace('"kept"', '"changed"'), BASE.replace("x + X", "X + x")]


@pytest.mark.parametrize("text", SAME)
def test_ast_digest_ignores_comments_docstrings_and_layout(text):
    assert versions.parse_source(text).digest == versions.parse_source(BASE).digest


@pytest.mark.parametrize("text", DIFFERENT)
def test_ast_digest_sees_a_changed_constant_string_or_order(text):
    assert versions.parse_source(text).digest != versions.parse_source(BASE).digest


def test_a_function_that_is_only_a_docstring_still_differs_from_no_function():
    assert versions.parse_source('def f():\n    """doc"""\n').digest != versions.parse_source("").digest


def test_the_digest_of_a_file_is_cached_per_mtime_and_size(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(BASE)
    first = versions.ast_digest(path)
    assert versions.source(path) is versions.source(path)   # an unchanged file is parsed once
    path.write_text(DIFFERENT[0] + "\n" * 5)          # another size: the cache cannot hand back the old digest
    assert versions.ast_digest(path) != first


def test_a_file_that_does_not_parse_is_one_line_naming_it(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def f(:\n")
    with pytest.raises(UserError, match=r"broken.py: not valid Python .*line 1.*fix the file"):
        versions.ast_digest(path)


def test_a_stale_record_without_file_digests_says_so_instead_of_guessing():
    assert status.why_stale({"config": {}, "code_version": "0" * 16}) == [status.UNRECORDED]
    recorded = dict(store.code_files({}), **{"experiments/engine/trainer.py": "old"})
    assert status.why_stale({"config": {}, "code_files": recorded}) == ["experiments/engine/trainer.py"]


def test_version_is_sha256_over_sorted_path_and_digest_lines():
    files = {"b.py": "22", "a.py": "11"}
    expected = hashlib.sha256(b"a.py\x0011\nb.py\x0022\n").hexdigest()[:16]
    assert versions.version_of(files) == expected
    assert versions.changed_files({"a.py": "11", "b.py": "22"}, {"a.py": "11", "b.py": "23", "c.py": "0"}) == \
        ["b.py", "c.py"]


# ---------------------------------------------------------------------- a copied tree with finished records
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the code and conf/, with every smoke config of EXPERIMENTS planned and recorded as finished by
    the copy's code. Yields (tree, experiments, points, results dir)."""
    base = tmp_path_factory.mktemp("staleness")
    tree, results = base / "tree", base / "results"
    for name in CODE:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    mp = pytest.MonkeyPatch()
    mp.setattr(versions, "CURRENT", versions.Versions(tree))
    exps = catalog.discover("smoke", EXPERIMENTS, str(base / "data"))
    points = runner.plan(exps, "smoke", results)
    assert {p.state for p in points} <= {"pending", "duplicate"}
    points = [p for p in points if p.state == "pending"]
    for p in points:
        resolved = p.carried[0]
        store.write_record(p.path, {"run_id": p.run_id, "experiment_name": p.experiment_name, "status": "completed",
                                    "config": resolved, "code_version": store.code_version(resolved),
                                    "code_files": store.code_files(resolved)})
    yield tree, exps, points, results
    mp.undo()


@pytest.fixture
def edit(tree):
    """Replace text in a file of the copied tree; put every edited file back afterwards."""
    saved = {}

    def _edit(rel: str, old: str, new: str) -> None:
        path = tree[0] / rel
        saved.setdefault(path, path.read_text())
        text = path.read_text()
        assert text.count(old) >= 1, (rel, old)
        path.write_text(text.replace(old, new, 1))

    yield _edit
    for path, text in saved.items():
        path.write_text(text)


def _replan(tree) -> set[str]:
    _, exps, points, results = tree
    again = runner.plan(exps, "smoke", results)
    assert [p.run_id for p in again if p.state != "duplicate"] == [p.run_id for p in points]
    return {f"{p.exp}/{p.run_id}" for p in again if p.state == "pending"}


def _text_imports(tree: Path, module: str, seen: set[str]) -> set[str]:
    """Modules a module imports, transitively, read from its import lines as text; a package's own imports are
    not followed (importing a module of a package does not run the package's re-exports for the run)."""
    path = tree.joinpath(*module.split("."))
    file = path.with_suffix(".py")
    if module in seen or not file.is_file():
        return seen
    seen.add(module)
    for a, b in IMPORT_LINE.findall(file.read_text()):
        _text_imports(tree, a or b, seen)
    return seen


def _uses(tree: Path, resolved: dict, module: str) -> bool:
    """Whether a run of `resolved` executes `module`: from the one-run driver, from the module defining each of
    its targets (its config's and its metrics', as the engine reads them), through import lines."""
    cfg = OmegaConf.create(resolved)
    targets = re.findall(r"'_target_': '([\w.]+)'", str(resolved))
    targets += [spec.node["_target_"] for spec in metric_specs(cfg).values()]
    roots = {"experiments.drivers.train"} | {hydra.utils.get_object(t).__module__ for t in targets}
    return any(module in _text_imports(tree, root, set()) for root in roots)


def test_a_comment_or_docstring_edit_anywhere_replans_nothing(tree, edit):
    assert _replan(tree) == set()
    edit("experiments/losses/focal.py", "from __future__", "# why: a comment\nfrom __future__")
    edit("experiments/engine/trainer.py", '"""', '"""Docstring edited. ', )
    edit("average_k/losses.py", "import math", "import math  # a note")
    edit("conf/metrics/classification.yaml", "\n", "\n# a comment in a metric set\n")
    assert _replan(tree) == set()


def test_an_executable_line_of_focal_replans_exactly_the_runs_that_import_it(tree, edit):
    root, exps, points, results = tree
    expected = {f"{p.exp}/{p.run_id}" for p in points
                if _uses(root, json.loads(p.path.read_text())["config"], "experiments.losses.focal")}
    assert 0 < len(expected) < len(points)
    edit("experiments/losses/focal.py", "from __future__ import annotations\n",
         "from __future__ import annotations\n\nEDITED = 1\n")
    assert _replan(tree) == expected
    found = status.collect(exps, "smoke", results)
    per_exp = {e: sum(k.startswith(f"{e}/") for k in expected) for e in EXPERIMENTS}
    assert dict(found.changed["experiments/losses/focal.py"]) == {e: n for e, n in per_exp.items() if n}
    assert {e: c["stale"] for e, c in found.counts.items()} == per_exp
    assert all(c["missing"] == c["failed"] == 0 for c in found.counts.values())
    lines = []
    status.report(found, out=lines.append)
    assert any(line.startswith("  experiments/losses/focal.py changed: ") for line in lines)


@pytest.mark.slow
def test_the_training_step_replans_every_run(tree, edit):
    _, _, points, _ = tree
    edit("experiments/engine/trainer.py", "state.loss.training_step(", "state.loss.training_step(*(), ")
    assert _replan(tree) == {f"{p.exp}/{p.run_id}" for p in points}


def test_a_loss_in_a_user_package_outside_the_repo_replans_its_own_runs(tree, tmp_path, monkeypatch):
    ext = tmp_path / "ext"
    (ext / "mylab").mkdir(parents=True)
    (ext / "mylab" / "__init__.py").write_text("from mylab.impl import MyLoss\n")
    (ext / "mylab" / "impl.py").write_text('"""A user loss."""\nfrom experiments.engine.loss import CrossEntropy\n'
                                           "import otherlib\n\n\nclass MyLoss(CrossEntropy):\n    scale = 1.0\n")
    (ext / "otherlib.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(ext))
    _, _, points, _ = tree
    ce = next(json.loads(p.path.read_text())["config"] for p in points
              if json.loads(p.path.read_text())["config"]["loss"]["_target_"] == "experiments.losses.CrossEntropy")
    mine = json.loads(json.dumps(ce))
    mine["loss"]["_target_"] = "mylab.MyLoss"
    before = {name: versions.CURRENT.of_config(c) for name, c in (("ce", ce), ("mine", mine))}
    assert {"mylab/__init__.py", "mylab/impl.py"} <= set(before["mine"].files)
    assert not any(k.startswith("mylab") or k == "otherlib.py" for k in before["ce"].files)
    assert "otherlib.py" not in before["mine"].files      # another top-level package: not the loss's own code

    def now(config: dict) -> str:
        return versions.CURRENT.of_config(config).version

    impl = ext / "mylab" / "impl.py"
    impl.write_text(impl.read_text().replace('"""A user loss."""', '"""A user loss, documented better."""'))
    assert now(mine) == before["mine"].version
    impl.write_text(impl.read_text().replace("scale = 1.0", "scale = 2.0"))
    assert now(mine) != before["mine"].version and now(ce) == before["ce"].version
    assert versions.changed_files(before["mine"].files, versions.CURRENT.of_config(mine).files) == ["mylab/impl.py"]


def test_no_report_module_and_no_driver_but_train_enters_a_run(tree):
    _, _, points, _ = tree
    keys = set().union(*(versions.CURRENT.of_config(json.loads(p.path.read_text())["config"]).files
                         for p in points))
    assert not [k for k in keys if k.startswith("experiments/report/")]
    assert {k for k in keys if k.startswith("experiments/drivers/")} == {"experiments/drivers/__init__.py",
                                                                          "experiments/drivers/train.py"}
    assert "experiments/losses/focal.py" in keys and "experiments/engine/trainer.py" in keys


# ---------------------------------------------------------------------- tables keep stale runs only on request
def _toy(results: Path) -> TableSpec:
    for seed, (base, better) in enumerate([(0.50, 0.70), (0.52, 0.72), (0.51, 0.69)]):
        write_run(results, "toy", f"b{seed}", dataset="d", loss="ce", seed=seed, config={"loss": {"r": 0.0}},
                  metrics={"test/accuracy": base})
        old = {"code_version": "0123456789abcdef"} if seed == 2 else {}
        write_run(results, "toy", f"r{seed}", dataset="d", loss="simloss", seed=seed, config={"loss": {"r": 0.5}},
                  metrics={"test/accuracy": better}, **old)
    return TableSpec(experiment="toy", rows=["loss.r"], metrics=["test/accuracy"], baseline={"loss.r": 0.0})


def test_a_table_leaves_stale_runs_out_unless_kept_and_then_marks_their_cells(tmp_path):
    spec = _toy(tmp_path)
    df = load_runs(tmp_path)
    strict = render(df, spec, tmp_path / "strict")
    md = (tmp_path / "strict" / "toy.md").read_text()
    assert strict["stale"] == 1 and STALE_MARK not in md and "71.00 ± 1.41 (2)" in md
    kept_df = df.copy()
    kept_df.attrs["keep_stale"] = True
    kept = render(kept_df, spec, tmp_path / "kept")
    md = (tmp_path / "kept" / "toy.md").read_text()
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| 0.")}
    assert kept["stale"] == 0 and f"†{STALE_MARK}" in rows["| 0.5"] and STALE_MARK not in rows["| 0.0"]
    assert "70.33 ± 1.53 (3)" in rows["| 0.5"]
    legend = next(line for line in md.splitlines() if line.startswith(f"{STALE_MARK}: "))
    assert "0123456789abcdef" in legend
    current = store.code_version({"loss": {"r": 0.0}, "seed": 0})
    assert f"Code versions of these runs (per run, experiments.store.versions): 0123456789abcdef (1 runs), " \
           f"{current} (5 runs)." in md or f"{current} (5 runs), 0123456789abcdef (1 runs)." in md
    csv = pd.read_csv(tmp_path / "kept" / "toy.csv").set_index("loss.r")
    assert csv.loc[0.5, "n_stale"] == 1 and pd.isna(csv.loc[0.0, "n_stale"])
