"""Launch a script on two real CPU processes (gloo) with torchrun, as the multi-process tests do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 400, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N script args`` on 127.0.0.1 with one thread per process and this checkout
    on the path; extra ``env`` (e.g. ``ACCELERATE_USE_CPU="1"``) is added."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(script), *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, env=environment, capture_output=True, text=True, timeout=timeout)
