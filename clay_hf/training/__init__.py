"""Training Clay: pre-training (:mod:`clay_hf.training.pretraining`), head fine-tuning
(:mod:`clay_hf.training.finetuning`), the scores both and the evaluation report (:mod:`clay_hf.training.metrics`)
and the baseline models evaluated against (:mod:`clay_hf.training.baselines`).

The pre-training names are re-exported here (``from clay_hf.training import TrainingConfig, train``); the other
modules are imported on their own (fine-tuning pulls in the labelled sets of :mod:`clay_hf.geodata.labelled`,
the metrics scikit-learn).
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
