"""experiments.engine.allocator: freed blocks stay in the process, so a training step does not fault its pages in again."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import copy, resource, torch
from experiments.drivers import bench
from experiments.engine.allocator import keep_freed_memory
from experiments.engine.models import Network, small_cnn
took = keep_freed_memory()
torch.set_num_threads(1)
data = bench._tiny_data(1024, 10)
model = Network(small_cnn(width=16), 10)
bench._bare_seconds(copy.deepcopy(model), data, 128, 1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
bench._bare_seconds(model, data, 128, 2)
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 16)
"""


def _faults(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "LOSSLAB_MALLOC"}
    if env_value is not None:
        env["LOSSLAB_MALLOC"] = env_value
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    took, faults = out.stdout.split()
    return took == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
@pytest.mark.slow
def test_kept_memory_is_reused_without_page_faults():
    took, kept = _faults(None)
    if not took:
        pytest.skip("the C library has no glibc mallopt")
    off, default = _faults("default")
    assert not off
    # minor page faults per training batch (measured ~1,000–6,500 with glibc's defaults, 10–40 kept)
    assert kept < default / 5, (kept, default)


class _FakeLibc:
    """Stands in for libc.so.6: records every mallopt call and accepts it (returns 1, as glibc does)."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


def test_settings_are_applied_unless_switched_off(monkeypatch):
    """Fast twin of the page-fault test: which mallopt calls are made, and when none are."""
    import ctypes

    from experiments.engine import allocator

    libc = _FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.delenv("LOSSLAB_MALLOC", raising=False)
    assert allocator.keep_freed_memory() is True
    # glibc malloc.h: M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1, M_TOP_PAD = -2
    assert libc.calls == [(-3, 64 * 2**20), (-1, 256 * 2**20), (-2, 16 * 2**20)]
    monkeypatch.setenv("LOSSLAB_MALLOC", "default")
    assert allocator.keep_freed_memory() is False and len(libc.calls) == 3
    monkeypatch.delenv("LOSSLAB_MALLOC")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no libc")))
    assert allocator.keep_freed_memory() is False
