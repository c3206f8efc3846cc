"""Issue 23: the budget knob (experiments.engine.budget) and `make converge-check` (experiments.report.converge,
experiments.drivers.converge)."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from dataclasses import fields

import hydra.utils
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from experiments.drivers import converge as converge_cli
from experiments.drivers import reproduce
from experiments.drivers.runner import Composer
from experiments.drivers.train import CONF_DIR, compose_config
from experiments.engine.budget import (
    TRAINER_OPTIONS,
    apply_budget,
    at_budget,
    factor,
    scaled,
)
from experiments.engine.errors import UserError
from experiments.engine.trainer import TrainerConfig
from experiments.report import converge
from experiments.report.tables import TableSpec, _converged_line
from experiments.store.results import compute_run_id

ROOT = CONF_DIR.parent


def _id(cfg) -> str:
    return compute_run_id(OmegaConf.to_container(cfg, resolve=True))


# ---------------------------------------------------------------------------------------------- the budget knob
@pytest.mark.parametrize("value, budget, expected", [(12, 2, 24), (10, 1.1, 11), (5, 0.5, 3), (120, 3, 360),
                                                     (0, 2, 0), (1, 0.01, 1)])
def test_scaled_rounds_the_product_up(value, budget, expected):
    # 10 × 1.1 is 11.000000000000002 in floats: still 11 epochs, not 12
    assert scaled(value, budget) == expected


@pytest.mark.parametrize("bad", [0, -1, "abc", True, float("nan"), float("inf"), None])
def test_a_budget_that_is_not_a_positive_number_is_refused_naming_the_key(bad):
    with pytest.raises(UserError, match=r"^budget=.*must be a number > 0"):
        factor(bad)


def test_budget_scales_epochs_and_min_steps_and_is_part_of_the_run_id():
    one, _ = compose_config(["experiment=cce_imbalanced"])
    two, _ = compose_config(["experiment=cce_imbalanced", "budget=2"])
    assert one.budget == 1.0 and two.budget == 2.0
    assert (two.trainer.epochs, two.trainer.min_steps) == (2 * one.trainer.epochs, 2 * one.trainer.min_steps)
    assert one.trainer.min_steps > 0                      # the experiment sets both, so both are checked
    assert two.schedule == one.schedule          # cosine: a fraction of the run, it stretches with the epochs
    assert _id(one) != _id(two)
    same, _ = compose_config(["experiment=cce_imbalanced", "budget=2.0"])
    assert _id(same) == _id(two)


def test_budget_stretches_epoch_valued_schedule_and_loss_options():
    cfg, _ = compose_config(["schedule=multistep", "schedule.milestones=[3,5]", "schedule.warmup_epochs=2",
                             "loss=ldam_drw", "loss.drw_epoch=4", "trainer.epochs=7", "trainer.patience=11",
                             "budget=1.5"])
    assert list(cfg.schedule.milestones) == [5, 8]           # 4.5 → 5, 7.5 → 8
    assert cfg.schedule.warmup_epochs == 3
    assert cfg.loss.drw_epoch == 6
    assert (cfg.trainer.epochs, cfg.trainer.patience) == (11, 17)   # 10.5 → 11, 16.5 → 17
    assert cfg.schedule.gamma == 0.1                          # not in epochs: untouched


def test_budget_one_changes_nothing_but_the_key():
    cfg, _ = compose_config(["experiment=avgk"])
    raw, _ = compose_config(["experiment=avgk"], budget=False)
    scaled_dict = OmegaConf.to_container(cfg, resolve=True)
    raw_dict = OmegaConf.to_container(raw, resolve=True)
    assert scaled_dict.pop("budget") == 1.0 and raw_dict.pop("budget") == 1
    assert scaled_dict == raw_dict


def test_the_reproduce_composer_scales_after_the_sweep_overrides_as_the_cli_does():
    # avgk's digits sweep sets trainer.epochs=10 as a value override: the budget must scale it, not the 12 before
    overrides = ["experiment=avgk", "dataset=digits", "trainer.epochs=10", "loss=two_head", "loss.warmup_epochs=2",
                 "budget=2"]
    cli, _ = compose_config(overrides)
    planned, _ = Composer()(overrides)
    assert (planned.trainer.epochs, planned.loss.warmup_epochs) == (20, 4)
    assert _id(planned) == _id(cli)


def test_apply_budget_refuses_a_bad_budget_in_the_config():
    cfg, _ = compose_config(["experiment=avgk"], budget=False)
    cfg.budget = "fast"
    with pytest.raises(UserError, match="budget='fast'"):
        apply_budget(cfg)


def test_trainer_options_are_the_trainer_fields_measured_in_epochs_or_steps():
    names = {f.name for f in fields(TrainerConfig)}
    assert set(TRAINER_OPTIONS) <= names
    in_epochs = {n for n in names if "epoch" in n or "steps" in n or n == "patience"}
    assert in_epochs == set(TRAINER_OPTIONS)


def _targets(group: str):
    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target:
            yield path.stem, hydra.utils.get_object(target)


@pytest.mark.parametrize("group", ["schedule", "loss"])
def test_every_epoch_valued_option_of_a_schedule_or_loss_is_declared(group):
    """A new `warmup_epochs`-like option must be declared in its class's EPOCH_OPTIONS, or the budget misses it."""
    for name, target in _targets(group):
        params = inspect.signature(target).parameters
        in_epochs = {p for p in params if p.endswith(("_epoch", "_epochs")) or p == "milestones"}
        assert in_epochs <= set(getattr(target, "EPOCH_OPTIONS", ())), f"{group}/{name}: {in_epochs}"


def test_a_run_at_budget_two_trains_twice_the_epochs(train_run):
    record = train_run("experiment=simloss_age", "trainer.epochs=1", "budget=2")
    assert record["status"] == "completed"
    assert record["config"]["budget"] == 2.0 and record["config"]["trainer"]["epochs"] == 2
    assert len(record["history"]) == 2


def test_the_cli_refuses_a_bad_budget_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.train", "budget=abc", f"results_dir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: budget='abc': must be a number > 0 (the factor on every run's training length), e.g. budget=2"]
    assert not (tmp_path / "runs").exists()


def test_at_budget_keeps_the_runs_of_one_budget():
    runs = pd.DataFrame({"budget": [1.0, 2.0, np.nan], "x": [1, 2, 3]})
    assert at_budget(runs, 1).x.tolist() == [1, 3]          # a run without the key ran at 1
    assert at_budget(runs, 2.0).x.tolist() == [2]
    assert at_budget(pd.DataFrame({"x": [1]}), 2).empty


# ---------------------------------------------------------------------------------------------- the comparison
def _long(**changes) -> pd.DataFrame:
    """A table long form as `summarize` writes it: CE the baseline, three Δ cells (hand-made numbers)."""
    rows = {"ce": dict(mean=0.70, diff=np.nan, significant=False, mde=np.nan, is_baseline=True),
            "focal": dict(mean=0.75, diff=0.05, significant=True, mde=0.02, is_baseline=False),
            "cot": dict(mean=0.69, diff=-0.01, significant=False, mde=0.03, is_baseline=False),
            "cce": dict(mean=0.60, diff=-0.10, significant=True, mde=0.02, is_baseline=False)}
    for loss, values in changes.items():
        rows[loss] = {**rows[loss], **values}
    return pd.DataFrame([{"loss": k, "metric": "test/accuracy", "std": 0.01, "n": 5, "p_holm": 0.01, **v}
                         for k, v in rows.items()])


def _check(base: pd.DataFrame, check: pd.DataFrame) -> dict:
    return converge.summarize(converge.compare(base, check), ["loss"])


def test_identical_tables_change_no_conclusion_and_pass():
    found = _check(_long(), _long())
    assert (found["conclusions"], found["n_changed"], found["n_beyond_mde"]) == (3, 0, 0)
    assert found["shift_over_mde_max"] == 0.0
    assert converge.passed(found)
    assert converge.exit_code({"t": {"role": "paper", "passed": True}}, failures=0) == 0


def test_a_flipped_significant_sign_is_a_changed_conclusion():
    result = converge.compare(_long(), _long(focal=dict(diff=-0.05)))
    row = result.set_index("loss").loc["focal"]
    assert (row["reading_base"], row["reading_check"], bool(row["changed"])) == ("+†", "−†", True)
    assert not converge.passed(converge.summarize(result, ["loss"]))


def test_a_lost_mark_with_the_difference_moving_beyond_its_mde_is_a_changed_conclusion_of_a_paper_table():
    found = _check(_long(), _long(cce=dict(significant=False, diff=-0.05)))      # Δ moved 0.05 > MDE 0.02
    assert found["changed"] == ["cce test/accuracy"] and found["n_borderline"] == 0
    assert "1 of 3 conclusions change at 2×: cce test/accuracy" in converge.headline("t", found, 2)
    entry = {"passed": converge.passed(found)}
    assert converge.exit_code({"t": {**entry, "role": "paper"}}, failures=0) == 1
    assert converge.exit_code({"t": {**entry, "role": "supporting"}}, failures=0) == 0
    assert converge.exit_code({"t": {**entry, "role": "screening"}}, failures=0) == 0


def test_a_mark_lost_while_the_difference_moves_less_than_its_mde_is_borderline_not_a_change():
    # Δ −0.10 → −0.09 (moved 0.01 < MDE 0.02) but no longer significant: a replication at the test's resolution
    result = converge.compare(_long(), _long(cce=dict(significant=False, diff=-0.09)))
    row = result.set_index("loss").loc["cce"]
    assert row["diff_shift"] == pytest.approx(0.01)
    assert (bool(row["changed"]), bool(row["borderline"])) == (False, True)
    found = converge.summarize(result, ["loss"])
    assert found["borderline"] == ["cce test/accuracy"] and converge.passed(found)
    assert "(1 more gain or lose † with Δ moving less than its MDE: borderline)" in converge.headline("t", found, 2)


def test_a_changed_reading_without_any_mde_counts_as_changed():
    found = _check(_long().assign(mde=np.nan), _long(cce=dict(significant=False)).assign(mde=np.nan))
    assert found["changed"] == ["cce test/accuracy"]


def test_a_shift_larger_than_the_mde_is_reported_against_the_cells_own_mde():
    result = converge.compare(_long(), _long(cot=dict(mean=0.75)))
    row = result.set_index("loss").loc["cot"]
    assert row["shift"] == pytest.approx(0.06) and row["shift_over_mde"] == pytest.approx(2.0)   # 0.06 / 0.03
    found = converge.summarize(result, ["loss"])
    assert found["beyond_mde"] == ["cot test/accuracy"] and found["n_changed"] == 0
    assert not converge.passed(found)


def test_the_baseline_cell_shift_is_measured_against_the_median_mde_of_its_metric():
    result = converge.compare(_long(), _long(ce=dict(mean=0.71)))
    row = result.set_index("loss").loc["ce"]
    assert row["mde"] == pytest.approx(0.02)                    # median of 0.02, 0.03, 0.02
    assert row["shift_over_mde"] == pytest.approx(0.5)         # 0.01 / 0.02
    assert not row["changed"]


def test_a_sign_flip_of_an_ns_difference_is_a_note_not_a_changed_conclusion():
    found = _check(_long(), _long(cot=dict(diff=0.01)))
    assert found["sign_flip_ns"] == ["cot test/accuracy"]
    assert found["n_changed"] == 0 and converge.passed(found)


def test_a_cell_found_at_one_budget_only_is_unverified():
    found = _check(_long(), _long().iloc[:3])
    assert found["unverified"] == ["cce test/accuracy"]
    assert not converge.passed(found)


def test_long_forms_read_back_from_csv_compare_as_the_frames(tmp_path):
    _long().to_csv(tmp_path / "a.csv", index=False)
    _long(cce=dict(significant=False, diff=-0.05)).to_csv(tmp_path / "b.csv", index=False)
    found = _check(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
    assert found["changed"] == ["cce test/accuracy"] and found["conclusions"] == 3


@pytest.mark.parametrize("diff, significant, expected", [(0.2, True, "+†"), (-0.2, "True", "−†"),
                                                         (0.2, False, "n.s."), (np.nan, True, None)])
def test_reading_of_a_difference(diff, significant, expected):
    assert converge.reading(diff, significant) == expected


def test_failed_runs_fail_the_check():
    assert converge.exit_code({}, failures=1) == 1


# ---------------------------------------------------------------------------------------------- reports and footer
def _entry(**changes) -> dict:
    found = _check(_long(), _long(**changes))
    return {"date": "2026-12-06", "machine": "2 CPU cores (test), Linux, no GPU used", "profile": "default",
            "budget": 1.0, "factor": 2.0, "code_version": "abc", "role": "paper", **found,
            "passed": converge.passed(found)}


def test_summary_merges_tables_and_the_footer_reads_it(tmp_path):
    path = tmp_path / "converge" / converge.SUMMARY
    converge_cli.write_summary(path, {"exp_a": _entry()})
    converge_cli.write_summary(path, {"exp_b": _entry(cce=dict(significant=False, diff=-0.05))})
    tables = converge.read_summary(path)
    assert sorted(tables) == ["exp_a", "exp_b"]
    rows = (path.parent / converge.SUMMARY_MD).read_text().splitlines()[-2:]
    assert rows[0].startswith("| exp_a | paper | 1 → 2 | 0 of 3 (0 borderline) | 0 of 4 | 0.00, 0.00 | **converged** |")
    assert rows[1].startswith("| exp_b | paper | 1 → 2 | 1 of 3 ") and "**not converged**" in rows[1]
    line = _converged_line(TableSpec("exp_a"), {"length": {"budget": ["1"], "trainer.epochs": ["24"]},
                                                "converge": tables["exp_a"]})
    assert line.startswith("Converged: training length budget 1, trainer.epochs 24; at 2× budget 1 0 of 3 "
                           "conclusions (sign or † of a Δ, with Δ moving by more than its MDE) changed (0 borderline "
                           "† flips within the MDE) and 0 of 4 cell means moved")
    assert "2026-12-06, 2 CPU cores (test)" in line
    bad = _converged_line(TableSpec("exp_b"), {"converge": tables["exp_b"]})
    assert bad.startswith("NOT converged: training length as configured; at 2× budget 1 1 of 3 conclusions")


def test_one_run_per_cell_is_not_checked_never_converged(tmp_path):
    one = _long().assign(n=1, mde=np.nan, significant=False)
    found = _check(one, one.assign(mean=one["mean"] + 0.3))
    assert found["verdict"] == converge.NOT_CHECKED_ONE_RUN and not converge.passed(found)
    path = tmp_path / "converge" / converge.SUMMARY
    converge_cli.write_summary(path, {"m": {**_entry(), **found, "passed": converge.passed(found)}})
    line = _converged_line(TableSpec("m"), {"converge": converge.read_summary(path)["m"]})
    assert line.startswith("Convergence not checked (one run per cell): training length as configured")
    assert "Converged" not in line and "MDE median" not in line


def test_verdict_and_findings_are_stated_apart():
    found = _check(_long(), _long(cce=dict(significant=False, diff=-0.05)))
    assert found["verdict"] == converge.NOT_CONVERGED
    assert converge.findings(found).startswith("1 of 3 conclusions changed, ")
    assert _check(_long(), _long())["verdict"] == converge.CONVERGED


def test_footer_without_a_check_says_how_to_run_one():
    line = _converged_line(TableSpec("simloss_age"), {"length": {"budget": ["1"]}, "converge": None})
    assert "Convergence not checked: `make converge-check EXP=simloss_age`" in line
    assert "screening" not in line
    matrix = _converged_line(TableSpec("matrix", role="screening"), {"converge": None})
    assert "A screening table: one short budget for every method, not a converged comparison." in matrix


def test_read_summary_of_a_missing_or_broken_file_is_empty(tmp_path):
    assert converge.read_summary(tmp_path / "none.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert converge.read_summary(tmp_path / "bad.json") == {}


def test_markdown_report_shows_both_budgets_in_table_units():
    result = converge.compare(_long(), _long(cce=dict(significant=False, mean=0.65, diff=-0.05)))
    text = converge.markdown(result, ["loss"], "T", ["line"], {"test/accuracy": 100.0})
    row = next(line for line in text.splitlines() if line.startswith("| cce "))
    assert row == ("| cce | test/accuracy | 60.00 (Δ -10.00 −†) | 65.00 (Δ -5.00 n.s.) | +5.00 | 2.00 | 2.50 | "
                   "**conclusion changed**; shift > MDE |")


# ---------------------------------------------------------------------------------------------- end to end
def test_table_roles_are_declared_for_the_paper_tables():
    from experiments.drivers.catalog import discover

    roles = {s.stem: s.role for e in discover("default", None, None) for s in e.tables}
    assert {s for s, r in roles.items() if r == "paper"} == {"simloss_age", "simloss_cifar", "cce_imbalanced", "avgk"}
    full = {s.stem: s.role for e in discover("full", ["avgk"], None) for s in e.tables}
    assert full["avgk_digits"] == "paper" and full["avgk_k5"] == "supporting"   # tables run in the profiles they name
    assert {r for s, r in roles.items() if s.startswith("matrix")} == {"screening"}
    with pytest.raises(UserError, match="role='headline'"):
        TableSpec("x", role="headline")


@pytest.mark.slow
def test_converge_check_on_the_smoke_profile_end_to_end(tmp_path, capsys):
    results, data = tmp_path / "results", tmp_path / "data"
    args = ["--profile", "smoke", "--exp", "simloss_age", "--jobs", "2", "--results-dir", str(results),
            "--data-dir", str(data)]
    code = converge_cli.main(args)
    out = capsys.readouterr().out
    entry = converge.read_summary(results / "converge" / converge.SUMMARY)["simloss_age"]
    assert code == (0 if entry["passed"] else 1)
    assert f"[paper, {entry['verdict']}] simloss_age: {entry['n_changed']} of " in out
    assert (entry["budget"], entry["factor"], entry["profile"]) == (1.0, 2.0, "smoke")
    assert entry["conclusions"] == 2 * 5                      # r = 0.5, 0.9 against r = 0, five metrics
    report = (results / "converge" / "simloss_age.md").read_text()
    assert report.startswith("# Convergence check: ") and "| 0.9 " not in report.splitlines()[0]
    base = [json.loads(p.read_text()) for p in (results / "runs" / "simloss_age").glob("*.json")]
    twice = [json.loads(p.read_text()) for p in (results / "converge" / "runs-2x" / "runs" / "simloss_age").glob("*.json")]
    assert len(base) == len(twice) == 6
    assert {(r["config"]["budget"], r["config"]["trainer"]["epochs"]) for r in base} == {(1.0, 2)}
    assert {(r["config"]["budget"], r["config"]["trainer"]["epochs"]) for r in twice} == {(2.0, 4)}
    assert {len(r["history"]) for r in twice} == {4}
    t0 = time.perf_counter()
    assert converge_cli.main(args) == code                  # everything done: nothing is trained again
    assert time.perf_counter() - t0 < 60
    assert reproduce.main(["--profile", "smoke", "--exp", "simloss_age", "--render-only", "--results-dir",
                           str(results), "--data-dir", str(data)]) == 0
    table = (results / "tables" / "simloss_age.md").read_text()
    assert f"at 2× budget 1 {entry['n_changed']} of {entry['conclusions']} conclusions" in table


def test_tables_read_only_the_runs_the_profile_plans(tmp_path, capsys):
    """A run of a config the profile no longer has (here: a sweep value changed after it ran) is left out of the
    tables with one note, instead of being pooled with the current config's runs of the same cell."""
    from experiments.drivers.reproduce import load_for_render
    from tests.helpers.runs import write_run

    for run_id, steps in (("a1", 960), ("b1", 1920)):
        write_run(tmp_path, "exp", run_id, dataset="digits", loss="ce", metrics={"test/accuracy": 0.9},
                  config={"trainer": {"min_steps": steps}})
    assert sorted(load_for_render(tmp_path).run_id) == ["a1", "b1"]
    assert capsys.readouterr().err == ""
    assert load_for_render(tmp_path, planned={"b1"}).run_id.tolist() == ["b1"]
    assert "1 run(s)" in capsys.readouterr().err
