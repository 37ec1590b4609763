"""Process-level runtime settings for CPU runs (opt-in; the scripts turn them on for CPU jobs).

glibc serves allocations above a threshold (at most 32 MiB by default) with fresh ``mmap`` pages and returns them
on ``free``. A Clay forward pass allocates several such buffers per layer (e.g. base at 128 px, batch 16: the
MLP's 50 MiB hidden activations and the 38 MiB qkv output), so every pass page-faults through them again: on
a 2-core machine that cost 10-20% of the embedding throughput (see BENCHMARKS.md). Keeping them on the heap
(allocated once, reused) removes it, at the price of the process keeping its peak memory until it exits,
which is what a batch embedding or training job wants anyway. jemalloc or tcmalloc via ``LD_PRELOAD`` do the
same from outside the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["tune_cpu_allocator"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Serve large tensors from the glibc heap instead of fresh ``mmap`` pages (Linux with glibc only).

    Returns True when the settings were applied (or already were), False where they do not apply (macOS,
    Windows, musl). Only affects this process; call it once at the start of a CPU job.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    if ok:
        _applied = True
        logger.info(
            "glibc allocator: tensors up to %d MiB come from the heap (no per-pass page faults)", mmap_threshold >> 20
        )
    return ok
