"""One writer per output folder: a clear error naming the holder, ranks apart, takeover after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clay_hf.errors import ClayError, OutputLockedError
from clay_hf.locking import output_lock

HOLDER = """
import sys, time
from clay_hf.locking import output_lock
with output_lock(sys.argv[1], job="chip build"):
    print("locked", flush=True)
    time.sleep(600)
"""


def _start_holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid_and_takes_over_after_a_kill(tmp_path):
    holder = _start_holder(tmp_path / "out")
    try:
        with pytest.raises(OutputLockedError, match=rf"another chip build is writing to .*out \(pid {holder.pid} on "):
            with output_lock(tmp_path / "out", job="chip build"):
                pass
        try:
            with output_lock(tmp_path / "out"):
                pass
        except OutputLockedError as err:
            assert err.pid == holder.pid and err.path == str(tmp_path / "out")
            assert isinstance(err, ClayError) and isinstance(err, OSError)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # The kill released the OS lock: the next writer takes it over, its own pid recorded.
    with output_lock(tmp_path / "out", job="embedding run"):
        info = (tmp_path / "out" / ".lock.json").read_text()
        assert f'"pid": {os.getpid()}' in info and "embedding run" in info
    assert not (tmp_path / "out" / ".lock.json").exists()


def test_ranks_of_one_job_do_not_block_each_other_but_the_same_rank_does(tmp_path):
    with output_lock(tmp_path, rank=0), output_lock(tmp_path, rank=1):
        assert (tmp_path / ".lock").exists() and (tmp_path / ".lock-rank1").exists()
    holder = _start_holder(tmp_path)
    try:
        with output_lock(tmp_path, rank=1):  # another job's rank 1 is free
            pass
        with pytest.raises(OutputLockedError):  # refused at once (the holder sleeps for ten minutes)
            with output_lock(tmp_path, rank=0):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
