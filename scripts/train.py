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

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--dataset", required=True, help="folder of Parquet chip shards, or a Hub dataset id (streamed)")
    add("--model", default="tiny", help="preset (tiny, small, base, large), a config .json, or a pretrained folder")
    add("--init-from", default=None, help="pretrained folder or Hub id to continue from (e.g. converted Clay v1.5)")
    add("--output", required=True, help="output folder (checkpoints, metrics.jsonl, final/)")
    add("--teacher", default=None, help="DINOv2-with-registers folder or Hub id, or 'tiny-random'; none: no teacher")
    add("--teacher-image-size", type=int, default=518, help="teacher input side in pixels (default: 518)")
    add("--max-steps", type=int, required=True, help="optimizer steps of the whole schedule")
    add("--batch-size", type=int, default=8, help="chips per batch per process (default: 8)")
    add("--gradient-accumulation-steps", type=int, default=1, help="batches per optimizer step (default: 1)")
    add("--learning-rate", type=float, default=1e-4, help="peak AdamW learning rate (default: 1e-4; v1.5: 5e-6)")
    add("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    add("--betas", type=float, nargs=2, default=(0.9, 0.95), help="AdamW betas (default: 0.9 0.95)")
    add("--warmup-steps", type=int, default=None, help="linear warm-up steps (default: 5%% of --max-steps)")
    add("--min-lr-ratio", type=float, default=0.0, help="cosine floor as a fraction of the peak (default: 0)")
    add("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="autocast precision (default: no)")
    add("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm; 0 disables (default: 1.0)")
    add("--gradient-checkpointing", action="store_true", help="recompute activations in backward to save memory")
    add("--seed", type=int, default=0, help="seed of initial weights, data order and masks (default: 0)")
    add("--checkpoint-every", type=int, default=500, help="optimizer steps between checkpoints (default: 500)")
    add("--keep-checkpoints", type=int, default=3, help="how many checkpoints to keep (default: 3)")
    add("--stop-after", type=int, default=None, help="end this run after N steps with a checkpoint (job limits)")
    add("--resume", action="store_true", help="continue from the newest intact checkpoint in --output")
    add("--overwrite", action="store_true", help="start afresh in an --output that holds another run (deletes its "
        "checkpoints, final/ and metrics.jsonl; other files stay)")  # fmt: skip
    add("--log-every", type=int, default=10, help="steps between log lines and metrics records (default: 10)")
    add("--report-to", default="none", help="Accelerate tracker: none, tensorboard, wandb, all (default: none)")
    add("--num-workers", type=int, default=0, help="dataloader worker processes per training process (default: 0)")
    add("--shuffle-buffer", type=int, default=1000, help="chips in the streaming shuffle buffer (default: 1000)")
    add("--shuffle-shards", type=int, default=10, help="shards mixed in the shuffle buffer at once (default: 10)")
    add("--time-latlon-dropout", type=float, default=0.2, help="chance to zero time and location (default: 0.2)")
    add("--attn-implementation", choices=("sdpa", "eager"), default=None, help="attention kernel (default: sdpa)")
    add("--eval-dataset", default=None, help="held-out chip dataset (folder or Hub id) for a fixed-mask eval loss")
    add("--eval-batches", type=int, default=4, help="eval batches per process (default: 4)")
    add("--eval-every", type=int, default=None, help="steps between evals (default: at every checkpoint)")
    add("--quiet", action="store_true", help="no progress bar")
    add("--no-tune-allocator", action="store_true", help="on CPU, keep glibc's default mmap behaviour for big tensors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from clay_hf.errors import ClayError
    from clay_hf.training.pretraining import TrainingConfig, train

    if _on_cpu() and not args.no_tune_allocator:
        from clay_hf.runtime import tune_cpu_allocator

        tune_cpu_allocator()  # big activations from the heap: no page faults on every step
    try:
        config = TrainingConfig(
            dataset=args.dataset, output_dir=args.output, model=args.model, init_from=args.init_from,
            teacher=args.teacher, teacher_image_size=args.teacher_image_size, batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, betas=tuple(args.betas), warmup_steps=args.warmup_steps,
            min_lr_ratio=args.min_lr_ratio, max_steps=args.max_steps, mixed_precision=args.mixed_precision,
            max_grad_norm=args.max_grad_norm or None, gradient_checkpointing=args.gradient_checkpointing,
            seed=args.seed, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
            log_every=args.log_every, report_to=args.report_to, num_workers=args.num_workers,
            shuffle_buffer=args.shuffle_buffer, shuffle_shards=args.shuffle_shards,
            time_latlon_dropout=args.time_latlon_dropout, resume=args.resume, overwrite=args.overwrite,
            stop_after=args.stop_after, attn_implementation=args.attn_implementation,
            eval_dataset=args.eval_dataset, eval_batches=args.eval_batches, eval_every=args.eval_every,
        )  # fmt: skip
        summary = train(config, show_progress=not args.quiet)
    except ClayError as err:
        logging.getLogger("train").error("%s", err)
        return 1
    if summary["world_size"] == 1 or _is_main():
        print(json.dumps(summary, indent=2))
    return 0


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
