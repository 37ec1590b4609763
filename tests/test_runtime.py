"""The opt-in CPU allocator setting: on Linux/glibc it is applied once, and large allocations then come from the
heap instead of fresh mmap pages (observed through glibc's own counters, in a process of its own)."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import ctypes, ctypes.util, json
from clay_hf.runtime import tune_cpu_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2

def mmapped(size):
    before = libc.mallinfo2().hblkhd  # bytes in mmap-served blocks
    block = libc.malloc(size)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return grew >= size

size = 64 << 20  # above glibc's largest default mmap threshold (32 MiB), below the tuned one (1 GiB)
print(json.dumps({"before": mmapped(size), "applied": [tune_cpu_allocator(), tune_cpu_allocator()],
                  "after": mmapped(size)}))
"""


def test_tune_cpu_allocator_serves_large_blocks_from_the_heap():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)  # own process
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"before": True, "applied": [True, True], "after": False}


def test_tune_cpu_allocator_is_a_no_op_off_linux(monkeypatch):
    import clay_hf.runtime as runtime

    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.tune_cpu_allocator() is False
    assert runtime._applied is False
