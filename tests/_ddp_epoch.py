"""One epoch of get_dataloader on each rank of a real multi-process run; writes the rank's chip ids.

Usage: ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/_ddp_epoch.py DATASET_DIR OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

from accelerate import PartialState

from clay_hf.geodata.loader import get_dataloader

# PartialState reads no ACCELERATE_USE_CPU (Accelerator does): ask for CPU (gloo) explicitly.
state = PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU") == "1")  # get_dataloader takes rank/world from it
loader = get_dataloader(sys.argv[1], batch_size=2, seed=0, shuffle_buffer=4, max_buffer_input_shards=1)
ids = [chip_id for batch in loader for chip_id in batch["chip_id"]]
out = Path(sys.argv[2]) / f"rank{state.process_index}.json"
out.write_text(json.dumps({"rank": loader.rank, "world_size": loader.world_size, "chip_ids": ids}))
state.wait_for_everyone()
