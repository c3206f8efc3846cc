"""Selection on validation and early stopping (experiments.engine.selection), and the process settings of a run
(experiments.engine.process), against sequences worked out by hand here."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.engine.errors import UserError
from experiments.engine.process import configure_process
from experiments.engine.schemas import TrainerConfig, check_values
from experiments.engine.selection import Selection, better, selection_mode

NAN = float("nan")


@pytest.mark.parametrize("value, best, mode, expected", [
    (0.5, None, "max", True),      # the first epoch is always the best so far
    (0.5, 0.4, "max", True), (0.4, 0.5, "max", False), (0.5, 0.5, "max", False),   # a tie keeps the earlier
    (0.4, 0.5, "min", True), (0.5, 0.4, "min", False),
    (0.1, NAN, "max", True),       # a finite value replaces a NaN best
    (NAN, 0.1, "min", False),      # a NaN never replaces a finite best
    (NAN, NAN, "max", False),
])
def test_better(value, best, mode, expected):
    assert better(value, best, mode) is expected


def test_selection_keeps_the_best_epoch_and_stops_after_patience_epochs_without_gain():
    model = nn.Linear(1, 1, bias=False)
    sel = Selection("val/mae", "min", patience=2)
    # val/mae by epoch: 3, 2 (best), 2.5, 2 (tie: no gain), → bad epochs 0, 0, 1, 2 → stop after epoch 4
    for epoch, mae in enumerate([3.0, 2.0, 2.5, 2.0]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        value = sel.update({"val/mae": mae}, epoch, model)
        assert value == mae and sel.stopped_early is (epoch == 3)
    assert sel.best["epoch"] == 2 and sel.best["value"] == 2.0 and sel.bad_epochs == 2
    assert sel.best["state"]["weight"].item() == 1.0      # the weights of epoch 2 (0-based 1), a copy


def test_selection_on_last_keeps_the_last_epoch_and_a_missing_metric_is_refused():
    model = nn.Linear(1, 1)
    sel = Selection("last", "max")
    for epoch in range(3):
        sel.update({}, epoch, model)
    assert sel.best["epoch"] == 3 and not sel.stopped_early
    with pytest.raises(UserError, match=r"select_metric=val/acc is not computed; available: val/a, val/b"):
        Selection("val/acc", "max").update({"val/b": 1.0, "val/a": 0.5, "train/loss": 1.0}, 0, model)


def test_a_null_value_counts_as_nan():
    sel = Selection("val/x", "max")
    assert math.isnan(sel.update({"val/x": None}, 0, nn.Linear(1, 1)))


def test_no_validation_split_needs_select_metric_last():
    data = SimpleNamespace(val=[])
    with pytest.raises(UserError, match="no validation split"):
        selection_mode(TrainerConfig(select_metric="val/accuracy"), data, {})
    assert selection_mode(TrainerConfig(select_metric="last"), data, {}) == "max"


def test_configure_process_sets_the_thread_count_and_leaves_it_when_unset():
    before = torch.get_num_threads()
    try:
        configure_process(TrainerConfig(cpu_threads=1, keep_freed_memory=False))
        assert torch.get_num_threads() == 1
        configure_process(TrainerConfig(cpu_threads=None, keep_freed_memory=False))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("node, message", [
    ({"seed": 0, "trainer": {"epochs": [1, 2]}},
     "trainer.epochs=[1, 2]: must be an integer, not a list; to run several values sweep them: -m trainer.epochs=1,2"),
    ({"seed": "abc"}, "seed='abc': must be an integer, e.g. seed=0"),
    ({"seed": 0, "optim": {"lr": "fast"}}, "optim.lr='fast': must be a number, e.g. optim.lr=0.001"),
])
def test_check_values_names_the_key_and_the_fix(node, message):
    with pytest.raises(UserError) as e:
        check_values(OmegaConf.create(node))
    assert str(e.value) == message
