"""Run the project's scripts from tests: imported as modules (``load_script``), or on two real CPU processes
(gloo) with torchrun, as the multi-process tests do."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]

# A sitecustomize.py for a child process (put its folder first on PYTHONPATH, set CLAY_GUARD_LOG): every socket
# connect is logged to CLAY_GUARD_LOG, one host a line, and anything outside the loopback is refused.
CONNECT_GUARD = """
import os, socket
_log = os.environ["CLAY_GUARD_LOG"]
_connect = socket.socket.connect
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else "unix"
    with open(_log, "a") as f:
        f.write(f"{host}\\n")
    if host not in ("127.0.0.1", "::1", "localhost", "unix"):
        raise ConnectionRefusedError(f"guard: {address!r} refused")
    return _connect(self, address)
socket.socket.connect = connect
"""
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost", "unix"}  # what CONNECT_GUARD lets through


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 400, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N script args`` on 127.0.0.1 with one thread per process and this checkout
    on the path; extra ``env`` (e.g. ``ACCELERATE_USE_CPU="1"``) is added."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        *map(str, args),
    ]
    return subprocess.run(cmd, env=environment, capture_output=True, text=True, timeout=timeout)


def load_script(path: Path) -> ModuleType:
    """Import a script (``scripts/*.py``, ``spaces/*.py``) as a fresh module named ``clay_script_<stem>``.

    The module is registered in ``sys.modules`` while it runs and after, as dataclasses and pickling need.
    """
    name = f"clay_script_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
