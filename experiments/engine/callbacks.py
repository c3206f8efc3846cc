"""Hydra callbacks: a one-line summary at the end of a sweep, non-zero exit if any job failed."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses, failures = Counter(), []
        for f in sorted(sweep_dir.glob("*/losslab_status.json")):
            s = json.loads(f.read_text())
            statuses[s["status"]] += 1
            if s["status"] == "failed":
                failures.append(f"job {f.parent.name}: {s['message']}")
        if not statuses:
            return
        print("sweep: " + ", ".join(f"{n} {k}" for k, n in sorted(statuses.items())) + f" ({sweep_dir})")
        for line in failures:
            print(f"  failed {line}", file=sys.stderr)
        if statuses["failed"]:
            sys.exit(1)
