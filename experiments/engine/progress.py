"""A minimal progress bar on stderr: redrawn in place on a terminal, silent otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.desc, self.n = max(total, 1), desc, 0
        self.t0 = time.time()
        self.postfix = ""

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if self.enabled:
            width = 24
            done = int(width * self.n / self.total)
            rate = self.n / max(time.time() - self.t0, 1e-9)
            self.stream.write(f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} "
                              f"{rate:.1f}it/s {self.postfix}\033[K")
            self.stream.flush()

    def close(self, summary: str = "") -> None:
        if self.enabled:
            self.stream.write(f"\r{self.desc} {summary}\033[K\n")
            self.stream.flush()
