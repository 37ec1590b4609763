"""FSDP2 (torch's fully_shard, per ClayLayer as in scripts/accelerate_configs/fsdp.yaml) on CPU processes (gloo).

Accelerate runs FSDP only on accelerators, so this checks the model side directly: shard every ClayLayer and
the root, train two steps on real chips, gather the full state dict and save it as a transformers folder.
Usage: torchrun --nproc_per_node 2 tests/_fsdp2_step.py DATASET OUTPUT
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from clay_hf import ClayConfig, ClayForPreTraining
from clay_hf.geodata.loader import get_dataloader
from clay_hf.modeling_clay import ClayLayer

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mesh = init_device_mesh("cpu", (world,))
torch.manual_seed(0)
config = ClayConfig.from_preset("tiny")
model = ClayForPreTraining(config)
wrapped = 0
for module in model.modules():
    if isinstance(module, ClayLayer):
        fully_shard(module, mesh=mesh)
        wrapped += 1
fully_shard(model, mesh=mesh)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loader = get_dataloader(
    sys.argv[1], batch_size=4, rank=rank, world_size=world, shuffle_buffer=0, drop_last=True, max_buffer_input_shards=1
)
generator = torch.Generator().manual_seed(rank)
losses = []
for batch, _ in zip(loader, range(2)):
    out = model(
        pixel_values=batch["pixel_values"],
        wavelengths=batch["wavelengths"],
        gsd=batch["gsd"],
        time=batch["time"],
        latlon=batch["latlon"],
        generator=generator,
    )
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(float(out.loss.detach()))
sharded = all(isinstance(p, DTensor) for p in model.parameters())
local = sum(p.to_local().numel() for p in model.parameters())
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if rank == 0:
    plain = ClayForPreTraining(config)
    plain.load_state_dict(full)
    plain.save_pretrained(Path(sys.argv[2]) / "final")
summary = {
    "rank": rank,
    "wrapped": wrapped,
    "sharded": sharded,
    "local_numel": local,
    "losses": losses,
    "total_numel": sum(t.numel() for t in full.values()),
}
(Path(sys.argv[2]) / f"rank{rank}.json").write_text(json.dumps(summary))
dist.barrier()
# Everything is written. Skip the process-group teardown and C++ static destructors: under load, a gloo worker
# thread was seen to abort there ("terminate called without an active exception") about once in eight runs.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
