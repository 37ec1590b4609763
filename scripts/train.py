#!/usr/bin/env python
"""Pre-train (or continue pre-training) Clay on a streamed chip dataset, from one CPU to many GPUs and nodes.

One process (CPU or one GPU):
    python scripts/train.py --dataset data/chips --model tiny --output runs/tiny --max-steps 200

Several GPUs on one node (DDP), several nodes, or FSDP: the same script under ``accelerate launch``:
    accelerate launch --config_file scripts/accelerate_configs/ddp_single_node.yaml scripts/train.py ...
    accelerate launch --config_file scripts/accelerate_configs/multi_node.yaml \\
        --machine_rank $NODE_RANK --main_process_ip $MASTER_ADDR scripts/train.py ...
    accelerate launch --config_file scripts/accelerate_configs/fsdp.yaml scripts/train.py --model large ...

Two CPU processes (gloo), e.g. to try the multi-process path on a laptop:
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 scripts/train.py --dataset data/chips --model tiny ...

Every process reads its own Parquet shards (every chip once per epoch over all processes); checkpoints go
to OUTPUT/checkpoints/checkpoint-STEP (atomically, the last --keep-checkpoints kept), metrics to
OUTPUT/metrics.jsonl, the final model (safetensors + processor config + remote code) to OUTPUT/final.
One run per OUTPUT: a folder that holds another run is refused unless --resume (continue it) or --overwrite
(delete its checkpoints, final/ and metrics.jsonl first); a second run into the same OUTPUT at the same time
exits with an error naming the first one's pid.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clay_hf import cli  # noqa: E402
from clay_hf.training.pretraining import TrainingConfig  # noqa: E402

EXAMPLES = """examples:
  # a tiny model on the sample chips (python scripts/prepare_chips.py --sample --output data/chips)
  python scripts/train.py --dataset data/chips --model tiny --output runs/tiny --max-steps 200 --batch-size 16

  # continue the converted Clay v1.5 weights on your own chips, with the DINOv2 teacher, in bf16 on 8 GPUs
  accelerate launch --config_file scripts/accelerate_configs/ddp_single_node.yaml scripts/train.py \\
      --dataset my-org/my-chips --init-from models/clay-v1.5 --teacher facebook/dinov2-with-registers-large \\
      --learning-rate 5e-6 --mixed-precision bf16 --batch-size 32 --max-steps 20000 --output runs/v1.5-cont

  # pick up a stopped run where it left off (same data order, optimizer, schedule and RNG)
  python scripts/train.py --dataset data/chips --model tiny --output runs/tiny --max-steps 200 --resume

  # start again from scratch in the same folder (deletes its checkpoints, final/ and metrics.jsonl first)
  python scripts/train.py --dataset data/chips --model tiny --output runs/tiny --max-steps 200 --overwrite
"""


@dataclasses.dataclass
class TrainScriptOptions:
    """What this script takes besides the training settings (``TrainingConfig``'s fields are the other flags)."""

    quiet: bool = dataclasses.field(default=False, metadata={"help": "no progress bar"})
    no_tune_allocator: bool = dataclasses.field(
        default=False, metadata={"help": "on CPU, keep glibc's default mmap behaviour for big tensors"}
    )


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser(
        [TrainingConfig, TrainScriptOptions], description=__doc__.splitlines()[0], examples=EXAMPLES
    )


def parse_args(argv: list[str] | None = None) -> tuple[TrainingConfig, TrainScriptOptions, cli.ScriptOptions]:
    return build_parser().parse(argv)


def run_training(config: TrainingConfig, options: TrainScriptOptions) -> int:
    from clay_hf.training.pretraining import train

    if _on_cpu() and not options.no_tune_allocator:
        from clay_hf.runtime import tune_cpu_allocator

        tune_cpu_allocator()  # big activations from the heap: no page faults on every step
    summary = train(config, show_progress=not options.quiet)
    if summary["world_size"] == 1 or _is_main():
        print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_training, argv, outputs=lambda config, _: [config.output_dir])


def _on_cpu() -> bool:
    """Whether Accelerate will train this process on the CPU: asked to (ACCELERATE_USE_CPU), or no accelerator."""
    import torch
    from accelerate.utils import is_mps_available, is_xpu_available, parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    return not (torch.cuda.is_available() or is_mps_available() or is_xpu_available())


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
