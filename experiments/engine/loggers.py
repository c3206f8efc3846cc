"""Live logs of a run, written from the trainer's epoch log (`logger` config group, conf/logger/).

One writer per run, in `<save_dir>/<experiment_name>/<run_id>/`: every number of an epoch's row (`epoch`, `lr`,
`train/*`, `val/*`, `time_s`) at step = epoch, then the run's config and its final test metrics. A resumed run
writes into the same folder: the first epoch it logs is the epoch it resumed at, and every entry already there at
that step or later (logged after the checkpoint it resumed from) is dropped, so no step appears twice.

The driver instantiates a logger by its `_target_`, and `experiments.store.versions` leaves the `logger` node out
of a run's code and `experiments.store.results` out of its run id: the choice of logger, or an edit to this
module, changes no run. A logger of your own is any class with this constructor and `epoch`/`final`/`close`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from experiments.engine.checkpoint import atomic_write


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (undefined metrics are None; `epoch` is the step, not a value)."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys; lists and None as text (TensorBoard's hparams take scalars and strings)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)
    return out


class RunLog:
    """No live log (`logger=none`): the run JSON's `history` is the record."""

    def __init__(self, save_dir: str | None = None, experiment_name: str = "", run_id: str = "") -> None:
        self.path = Path(save_dir) / experiment_name / run_id if save_dir else None

    def epoch(self, row: dict[str, Any]) -> None:
        """One row of the trainer's epoch log."""

    def final(self, config: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The run's config (without the keys that do not change what it computes) and its final metrics."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardLogger(RunLog):
    """torch's SummaryWriter: one scalar per number per epoch; config and test metrics as hparams."""

    def __init__(self, save_dir: str, experiment_name: str, run_id: str, flush_secs: int = 30) -> None:
        super().__init__(save_dir, experiment_name, run_id)
        self.flush_secs = flush_secs
        self.writer = None
        self.step = 0

    def _open(self, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        resumed = self.path.is_dir() and any(self.path.glob("events.out.tfevents.*"))
        # purge_step: readers drop what an earlier writer logged at first_step or later (after the checkpoint)
        return SummaryWriter(str(self.path), purge_step=first_step if resumed else None, flush_secs=self.flush_secs)

    def epoch(self, row: dict[str, Any]) -> None:
        self.step = int(row["epoch"])
        if self.writer is None:
            self.writer = self._open(self.step)
        for name, value in _numbers(row).items():
            self.writer.add_scalar(name, value, self.step)

    def final(self, config: dict[str, Any], metrics: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        if self.writer is None:
            self.writer = self._open(self.step)
        finals = {k: v for k, v in _numbers(metrics).items() if k.startswith("test/")}
        for summary in hparams(flatten(config), finals):
            self.writer.file_writer.add_summary(summary)
        for name, value in finals.items():
            self.writer.add_scalar(name, value, self.step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CsvLogger(RunLog):
    """`metrics.csv`, one row per epoch (pandas-readable; rewritten atomically each epoch), and `hparams.json`
    (config and final test metrics)."""

    def __init__(self, save_dir: str, experiment_name: str, run_id: str) -> None:
        super().__init__(save_dir, experiment_name, run_id)
        self.rows: list[dict[str, Any]] | None = None

    def _earlier(self, first_epoch: int) -> list[dict[str, Any]]:
        import pandas as pd

        try:
            before = pd.read_csv(self.path / "metrics.csv")
        except (OSError, ValueError):
            return []
        kept = before[before["epoch"] < first_epoch] if "epoch" in before else before.iloc[:0]
        return [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
                for r in kept.to_dict("records")]

    def epoch(self, row: dict[str, Any]) -> None:
        import pandas as pd

        if self.rows is None:
            self.rows = self._earlier(int(row["epoch"]))
        self.rows.append({"epoch": int(row["epoch"]), **_numbers(row)})
        atomic_write(self.path / "metrics.csv", pd.DataFrame(self.rows).to_csv(index=False).encode())

    def final(self, config: dict[str, Any], metrics: dict[str, Any]) -> None:
        finals = {k: v for k, v in _numbers(metrics).items() if k.startswith("test/")}
        payload = json.dumps({"config": config, "metrics": finals}, indent=1, default=str)
        atomic_write(self.path / "hparams.json", payload.encode())
