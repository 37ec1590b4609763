"""Training Clay: pre-training (:mod:`clay_hf.training.pretraining`) and head fine-tuning
(:mod:`clay_hf.training.finetuning`).

The pre-training names are re-exported here (``from clay_hf.training import TrainingConfig, train``); the
fine-tuning module is imported on its own (it pulls in the labelled sets of :mod:`clay_hf.apps.evaluation`).
"""

from .pretraining import (
    NonFiniteLossError,
    TrainingConfig,
    build_model,
    build_teacher,
    evaluate,
    find_latest_checkpoint,
    lr_lambda,
    train,
)

__all__ = [
    "TrainingConfig",
    "NonFiniteLossError",
    "lr_lambda",
    "build_model",
    "build_teacher",
    "find_latest_checkpoint",
    "evaluate",
    "train",
]
