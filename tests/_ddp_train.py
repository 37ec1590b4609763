"""A few training steps on each rank of a real multi-process run; writes the rank's chip ids and weight sums.

Usage: ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/_ddp_train.py DATASET_DIR OUTPUT_DIR
"""

import json
import sys
from pathlib import Path

import torch

from clay_hf.training.pretraining import TrainingConfig, get_dataloaders, train

dataset, output = sys.argv[1], Path(sys.argv[2])
seen, sums = [], {}


def recording_factory(config, processor, rank, world_size):
    loader = get_dataloaders(config, processor, rank, world_size)

    class Recording:  # the real loader, recording which chips this rank trained on
        def __getattr__(self, name):
            return getattr(loader, name)

        def __iter__(self):
            for batch in loader:
                seen.extend(batch["chip_id"])
                yield batch

    return Recording()


def after_step(step, model, losses):
    sums[step] = float(sum(p.detach().double().sum() for p in model.parameters()))


config = TrainingConfig(
    dataset=dataset,
    output_dir=str(output),
    model="tiny",
    max_steps=4,
    batch_size=4,
    learning_rate=1e-3,
    teacher="tiny-random",
    teacher_image_size=56,
    checkpoint_every=2,
    log_every=1,
    shuffle_buffer=8,
    shuffle_shards=1,
    time_latlon_dropout=0.2,
)
summary = train(config, dataloader_factory=recording_factory, show_progress=False, step_callback=after_step)
rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
(output / f"rank{rank}.json").write_text(json.dumps({"chip_ids": seen, "weight_sums": sums, "summary": summary}))
