"""`make bench` on tiny sizes: every section runs, the JSON has its keys, the ratios are finite (no timing asserts)."""
from __future__ import annotations

import functools
import json
import math

import pytest

from experiments.drivers import bench


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def result(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr(bench, "EXTRA", [])   # the run sections are tested on tiny sizes in test_runner.py
    sections = [("losses", functools.partial(bench.bench_losses, batch=32, classes=(6,), repeats=1, inner=1)),
                ("trainer", functools.partial(bench.bench_trainer, n=128, batch=32, epochs=(1, 2), width=4,
                                              repeats=1)),
                ("data_path", functools.partial(bench.bench_data, n=96, batch=32, workers=(0,), repeat=1))]
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    out = bench.main(sections, path)
    return out, json.loads(path.read_text())


def test_json_written_with_every_section(result):
    out, written = result
    assert written == out
    assert {"threads", "losses", "trainer", "data_path", "extra", "bench_s"} <= set(written)


def test_loss_ratios(result):
    losses = result[1]["losses"]
    assert losses["batch"] == 32 and finite_positive(losses["C=6"]["cross_entropy_us"])
    ratios = losses["C=6"]["ratio_to_cross_entropy"]
    expected = set(bench.loss_cases(bench.long_tail_meta(6), 32)) | {"two_head_extra"}
    assert set(ratios) == expected
    assert {"cce_paper", "cce_official", "cot", "simloss", "an", "two_head", "cb_sigmoid_focal"} <= set(ratios)
    for name, r in ratios.items():
        assert math.isfinite(r) and (r > 0 or name == "two_head_extra"), name


def test_trainer_and_data_path(result):
    trainer, data = result[1]["trainer"], result[1]["data_path"]
    assert finite_positive(trainer["ratio_whole_fit"]) and math.isfinite(trainer["ratio"])
    assert {"compared", "fit_epoch_s", "bare_epoch_s", "fit_fixed_s"} <= set(trainer)
    assert finite_positive(data["speedup"]) and finite_positive(data["in_memory_img_per_s"])
    assert set(data["pil_dataloader_img_per_s"]) == {"num_workers=0"}


def test_extra_sections_hook(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "EXTRA", [("fixed_cost_per_run", lambda: {"ratio": 1.0})])
    out = bench.main([], tmp_path / "b.json")
    assert out["extra"] == {"fixed_cost_per_run": {"ratio": 1.0}}


def test_role_table_section_times_both_updates_on_a_small_table():
    out = bench.bench_role_table(n=60, c=7, batch=4, steps=1)
    assert out["dense_step_s"] > 0 and out["rows_step_s"] > 0
    assert out["ratio_dense_to_rows"] == round(out["dense_step_s"] / out["rows_step_s"], 1)
