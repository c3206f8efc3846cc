"""Keep freed heap memory in the process (glibc `mallopt`), so a training step does not page-fault its tensors in.

Every batch allocates and frees the same B×C and activation tensors. With glibc's defaults a freed block of a few
hundred kB is returned to the kernel (`munmap` or a heap trim) and the next allocation faults each page in again:
measured here, 4,200 minor page faults per batch of 128 on `small_cnn(width=16)` against ~30 with the settings below,
and a training epoch 1.39 → 1.18 s (median of 5, one thread). Peak memory is unchanged (the process keeps what it
used at its peak instead of handing it back between batches).

Process-wide (once set, it stays for the life of the process) and a no-op off glibc. `trainer.keep_freed_memory=false`
or `LOSSLAB_MALLOC=default` leaves the C library's defaults.
"""
from __future__ import annotations

import ctypes
import os

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_MMAP_THRESHOLD, 64 << 20),   # blocks below 64 MB come from the heap, not their own mmap
            (M_TRIM_THRESHOLD, 256 << 20),  # give memory back only when 256 MB at the top of the heap are free
            (M_TOP_PAD, 16 << 20))          # grow the heap 16 MB at a time


def keep_freed_memory() -> bool:
    """Apply `SETTINGS`; True if the C library took them."""
    if os.environ.get("LOSSLAB_MALLOC") == "default":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
