"""One writer per output folder: an OS-level lock that dies with its process.

    >>> with output_lock("data/chips", job="chip build"):
    ...     build()

The lock is ``filelock.FileLock`` (an ``flock`` on POSIX, the lock ``datasets`` and ``huggingface_hub`` use)
on ``<folder>/.lock`` (``.lock-rank<r>`` for rank ``r`` of a multi-process job, so the processes of one job
never block each other while two jobs on one folder always do). The operating system releases it when the
process exits, however it exits, so a lock left by a killed run is simply taken over by the next one. The
holder's pid, host and job are written beside it (``.lock.json``) for the message another process shows:
"another chip build is writing to data/chips (pid 1234 on host, since ...)".
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputLockedError

__all__ = ["output_lock"]


def _lock_name(rank: int) -> str:
    return ".lock" if rank == 0 else f".lock-rank{rank}"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, job: str = "clay_hf job", rank: int = 0) -> Iterator[Path]:
    """Hold the write lock of ``folder`` (created if needed) for the block; raise at once if another holds it.

    Raises:
        OutputLockedError: another live process holds the lock (its pid in the message and in ``.pid``).
    """
    import filelock

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / _lock_name(rank)
    info_path = lock_path.with_name(lock_path.name + ".json")
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = _read_holder(info_path)
        pid = holder.get("pid")
        who = f"pid {pid}" if pid else "another process"
        if holder.get("host"):
            who += f" on {holder['host']}"
        if holder.get("since"):
            who += f", since {holder['since']}"
        raise OutputLockedError(
            f"another {holder.get('job') or 'clay_hf job'} is writing to {os.fspath(folder)} ({who}); wait for it "
            "to finish, or choose another output folder",
            path=str(folder),
            pid=pid,
        ) from None
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "job": job,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        info_path.write_text(json.dumps(info), encoding="utf-8")
        yield folder
    finally:
        with contextlib.suppress(OSError):
            info_path.unlink()
        lock.release()


def _read_holder(info_path: Path) -> dict:
    try:
        return json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
