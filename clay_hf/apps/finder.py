"""Find things in scenes from a few examples: every chip (or patch) scored, detections and score rasters out.

    >>> finder = Finder.from_parquet("emb/")                  # what embed.py wrote, one scene or many (or a Hub id)
    >>> result = finder.find(positive=[(13.402, 52.518), "scene/0_256"], negative=[(13.45, 52.50)])
    >>> result = finder.find(examples="pools.geojson", level="patch", method="classifier", top_k=50)
    >>> result.detections                                     # DataFrame: rank, score, id, chip_id, source, geometry
    >>> result.write("found/")                                # detections.geojson/.parquet, examples.geojson, *.tif
    >>> result.score_rasters()                                # [ScoreRaster]: array, crs, transform per scene

**Examples** are positive (what is wanted) or negative (what is not), each given as

- a chip id (``"scene/0_256"``) or, at patch level, a patch id ``"<chip id>#<row>,<col>"`` (the patch's row and
  column in the chip's patch grid); a chip id at patch level stands for every patch of the chip;
- a point ``(lon, lat)`` in degrees (or in ``crs=``): the chip (or patch) that holds it, in every scene that does
  (a place seen by two scenes or sensors gives an example in each; of overlapping chips of one scene, the one
  whose centre is nearest);
- a shape (a shapely or GeoJSON polygon, or the features of a GeoJSON/GeoPackage/GeoParquet file, see
  :func:`read_examples`): the chips (or patches) it covers by at least half, else the one it covers most.

A positive example on a chip or patch with more nodata than ``max_nodata`` is refused (its embedding describes
the fill), as :class:`~clay_hf.apps.search.EmbeddingIndex` refuses such a query; negatives may lie anywhere.

**Scoring.** The vectors are the chips' cls embeddings (``embedding_column``) or the patch tokens, centred on the
collection's mean (``center=True``: a small model's embeddings share a large common direction) and normalised.

- ``method="cosine"``: the cosine with the Rocchio query of :func:`clay_hf.apps.search.refine_query`,
  ``mean(positives) - beta * mean(negatives)``.
- ``method="classifier"``: a logistic regression (scikit-learn, balanced class weights) of the positives
  against the negatives plus ``background`` units drawn at random from the collection (seeded), the way Earth
  Index-style tools learn from a handful of clicks; the score is its probability of "positive".

Units with more nodata than ``max_nodata`` (default :data:`~clay_hf.geodata.chip_format.DEFAULT_MAX_NODATA`, the
one used everywhere; at patch level the chip's and the patch's own share) get no score: they never rank and are
nodata in the rasters. Examples are left out of the detections (``keep_examples=True`` keeps them); the rasters
show every unit.

**Outputs** (:meth:`FindResult.write`), in EPSG:4326 longitude/latitude where vector:

- ``detections.geojson`` and ``detections.parquet`` (GeoParquet 1.1): the ``top_k`` best units with ``rank``,
  ``score``, ``level``, ``id``, ``chip_id``, ``patch_row``/``patch_col`` (patch level), ``source``, ``sensor``,
  ``datetime``, ``nodata_fraction``, centre ``lon``/``lat`` and the unit's footprint (its corners in the scene's
  CRS, transformed);
- ``examples.geojson``: what each example resolved to (``label``, ``given``, the unit and its score);
- ``<source>_chip_scores.tif`` per scene, and ``<source>_patch_scores.tif`` at patch level: a float32 COG in the
  scene's own CRS on its pixel grid, one cell per chip (``chip_size`` pixels) or per patch, ``nodata``
  (:data:`SCORE_NODATA`) where nothing was scored. A cell takes the score of the unit holding its centre, of
  overlapping units (the chips moved inward at the scene's edge) the highest; the last row and column of cells
  reach past the scene's edge when it is not a whole number of cells. At patch level the chip raster holds each
  chip's best patch.

Rasters need the embedding rows' ``pixel_window`` (written by :mod:`clay_hf.apps.embeddings` since score rasters
exist); scenes without it get detections only, with a warning.

For an app (the Space): :meth:`Finder.from_rows` over the rows :func:`clay_hf.apps.embeddings.embed_chips` just
yielded for an uploaded scene, :meth:`Finder.unit_at` for the chip or patch under a click (a pixel of the scene),
:meth:`Finder.resolve` then :meth:`Finder.score` (what :meth:`Finder.find` does in one call),
:meth:`FindResult.score_rasters` for the heat map arrays, :attr:`FindResult.detections` for the hits and
:meth:`FindResult.write` for the downloads.

Functions for evaluation and benchmarks: :func:`fit_scorer` (a :class:`Scorer` from example vectors) and
:func:`score_embeddings` (every row of an ``(N, D)`` array, float16 or float32, scored from example rows).

Shapes: N chips, P patch units, D embedding width, h x w patches per chip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClayInputError
from ..geodata.chip_format import DEFAULT_MAX_NODATA
from .search import EmbeddingIndex, embedding_files, refine_query

__all__ = [
    "LEVELS",
    "METHODS",
    "SCORE_NODATA",
    "DEFAULT_TOP_K",
    "DEFAULT_BACKGROUND",
    "ExampleError",
    "Example",
    "Scorer",
    "fit_scorer",
    "score_embeddings",
    "read_examples",
    "parse_point",
    "PatchTokens",
    "ScoreRaster",
    "FindResult",
    "Finder",
]

logger = logging.getLogger(__name__)

LEVELS = ("chip", "patch")
METHODS = ("cosine", "classifier")
SCORE_NODATA = -9999.0  # score rasters: cells where nothing was scored
DEFAULT_TOP_K = 100  # detections written
DEFAULT_BACKGROUND = 256  # random units the classifier takes as negatives
MIN_COVER = 0.5  # a shape's units: those it covers by at least this share of their area
PATCH_SEPARATOR = "#"  # patch id: f"{chip_id}#{row},{col}"
SCORE_CHUNK = 65536  # vectors per matrix product when scoring
CHIPS_PER_READ = 64  # chips of patch tokens read from a shard at once (128 MiB of Clay v1.5 tokens at 256 px)
_LABEL_VALUES = {  # the label property of an examples file, as written -> what it means
    **dict.fromkeys(("positive", "pos", "1", "true", "yes"), "positive"),
    **dict.fromkeys(("negative", "neg", "0", "false", "no"), "negative"),
}
_PATCH_ID = re.compile(rf"(?P<chip>.+){PATCH_SEPARATOR}(?P<row>\d+),(?P<col>\d+)")


class ExampleError(ClayInputError):
    """An example that gives no usable chip or patch: off every scene, on nodata, an unknown id, a bad shape.

    ``example`` is the example as the user gave it (an id, ``"point (lon, lat)"``, ``"shape 2 of f.geojson"``).
    """

    def __init__(self, message: str, example: str | None = None) -> None:
        super().__init__(message)
        self.example = example


# ---------------------------------------------------------------------------------------------- scoring


def _unit_rows(vectors: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """``(M, D)`` -> float32 unit rows (after subtracting ``center``); an all-zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if center is not None:
        vectors = vectors - center.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (M, 1)
    return vectors / np.maximum(norms, 1e-12)


@dataclass
class Scorer:
    """Scores unit vectors: the cosine with ``query``, or the probability of a logistic regression.

    Call it on ``(M, D)`` unit rows (centred as the examples were) -> ``(M,)`` float32 scores.
    """

    method: str
    query: np.ndarray | None = None  # (D,) cosine
    weights: np.ndarray | None = None  # (D,) classifier
    bias: float = 0.0
    num_positive: int = 0
    num_negative: int = 0
    num_background: int = 0

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.method == "cosine":
            return vectors @ self.query  # (M, D) x (D,) -> (M,)
        logits = vectors @ self.weights + np.float32(self.bias)  # (M,)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def _check_choice(value: str, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ClayInputError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def fit_scorer(
    method: str,
    positives: np.ndarray,
    negatives: np.ndarray | None = None,
    background: np.ndarray | None = None,
    beta: float = 0.5,
    seed: int = 0,
    regularization: float = 1.0,
) -> Scorer:
    """A :class:`Scorer` from example vectors (unit rows, centred like the vectors it will score).

    Args:
        method: ``"cosine"`` (Rocchio query) or ``"classifier"`` (logistic regression).
        positives: ``(P, D)``; negatives: ``(M, D)`` or None; background: ``(B, D)`` random units taken as
            negatives by the classifier (the cosine ignores them).
        beta: weight of the negatives' mean in the Rocchio query.
        seed: the classifier's random state; regularization: its inverse strength ``C``.
    Raises:
        ClayInputError: no positives, or a classifier with nothing to tell them from.
    """
    _check_choice(method, METHODS, "method")
    positives = np.asarray(positives, dtype=np.float32).reshape(-1, np.shape(positives)[-1])
    if len(positives) == 0:
        raise ClayInputError("scoring needs at least one positive example, got none")
    negatives = None if negatives is None or len(negatives) == 0 else np.asarray(negatives, dtype=np.float32)
    if method == "cosine":
        query = refine_query(positives, negatives, beta=beta).cpu().numpy()  # (D,)
        return Scorer(
            "cosine", query=query, num_positive=len(positives), num_negative=0 if negatives is None else len(negatives)
        )
    background = None if background is None or len(background) == 0 else np.asarray(background, dtype=np.float32)
    others = [a for a in (negatives, background) if a is not None]
    if not others:
        raise ClayInputError(
            "the classifier needs something to tell the positives from: pass negative examples, or background= > 0"
        )
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise ImportError(
            "method='classifier' fits a logistic regression with scikit-learn, which is not installed: "
            "pip install scikit-learn (method='cosine' works without it)"
        ) from exc
    features = np.concatenate([positives, *others])  # (P + M + B, D)
    labels = np.concatenate([np.ones(len(positives)), np.zeros(sum(len(a) for a in others))])
    model = LogisticRegression(C=regularization, class_weight="balanced", max_iter=1000, random_state=seed)
    model.fit(features, labels)
    return Scorer(
        "classifier",
        weights=model.coef_[0].astype(np.float32),
        bias=float(model.intercept_[0]),
        num_positive=len(positives),
        num_negative=0 if negatives is None else len(negatives),
        num_background=0 if background is None else len(background),
    )


def score_embeddings(
    embeddings: np.ndarray,
    positive: Sequence[int],
    negative: Sequence[int] = (),
    method: str = "cosine",
    background: int = DEFAULT_BACKGROUND,
    eligible: np.ndarray | None = None,
    center: bool = True,
    beta: float = 0.5,
    seed: int = 0,
    batch_size: int = SCORE_CHUNK,
) -> np.ndarray:
    """Score every row of ``embeddings`` ``(N, D)`` (float16 or float32, a memmap works) from example rows.

    Args:
        positive, negative: row indices of the examples.
        background: rows drawn at random (``seed``) among the eligible non-examples, negatives of the classifier.
        eligible: ``(N,)`` bool, the rows that may be scored and drawn (the others get NaN); default all.
        center: subtract the mean of the rows before normalising.
    Returns:
        ``(N,)`` float32 scores (NaN where not eligible).
    """
    n = len(embeddings)
    eligible = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    mean = None
    if center:
        total = np.zeros(embeddings.shape[1], dtype=np.float64)
        for start in range(0, n, batch_size):
            total += np.asarray(embeddings[start : start + batch_size], dtype=np.float64).sum(axis=0)
        mean = (total / max(n, 1)).astype(np.float32)
    positive, negative = np.asarray(positive, dtype=np.int64), np.asarray(negative, dtype=np.int64)
    drawn = _draw_background(
        eligible, np.concatenate([positive, negative]), background if method == "classifier" else 0, seed
    )
    scorer = fit_scorer(
        method,
        _unit_rows(embeddings[np.sort(positive)], mean),
        _unit_rows(embeddings[np.sort(negative)], mean) if len(negative) else None,
        _unit_rows(embeddings[np.sort(drawn)], mean) if len(drawn) else None,
        beta=beta,
        seed=seed,
    )
    scores = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        scores[start : start + batch_size] = scorer(_unit_rows(embeddings[start : start + batch_size], mean))
    scores[~eligible] = np.nan
    return scores


def _draw_background(eligible: np.ndarray, exclude: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` distinct indices of ``eligible`` units, not in ``exclude``, drawn with ``seed`` (sorted)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    pool = eligible.copy()
    pool[np.asarray(exclude, dtype=np.int64)] = False
    candidates = np.flatnonzero(pool)
    if len(candidates) <= count:
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, count, replace=False))


# ---------------------------------------------------------------------------------------------- examples


def parse_point(text: str) -> tuple[float, float]:
    """``"LON,LAT"`` (degrees) -> ``(lon, lat)``.

    Raises:
        ExampleError: not two numbers, or outside [-180, 180] x [-90, 90].
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        lon, lat = (float(p) for p in parts)
    except ValueError:
        raise ExampleError(
            f"point {text!r} is not LON,LAT: two numbers in degrees separated by a comma, longitude first "
            "(e.g. 13.402,52.518; write a negative one as --positive=-34.9,-8.0)",
            example=str(text),
        ) from None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90) or not all(map(math.isfinite, (lon, lat))):
        raise ExampleError(
            f"point {text!r} is outside longitude [-180, 180] and latitude [-90, 90]; give LON,LAT (longitude first)",
            example=str(text),
        )
    return lon, lat


def _label(value: Any, where: str) -> str:
    label = _LABEL_VALUES.get(str(value).strip().lower()) if value is not None else "positive"
    if label is None:
        raise ExampleError(
            f"{where}: label {value!r} is neither positive nor negative (use positive/negative, 1/0 or true/false)",
            example=where,
        )
    return label


def read_examples(path: str | os.PathLike, label_column: str = "label") -> list[tuple[str, Any, str, str]]:
    """The example shapes of a vector file: ``[(label, shapely geometry, crs, given)]``.

    GeoJSON, GeoPackage, shapefiles and the other formats GDAL reads come through pyogrio; GeoParquet through
    pyarrow (its ``geo`` metadata names the geometry column and CRS). A ``label_column`` property says
    ``positive``/``negative`` (or 1/0, true/false) per feature; without that column every feature is positive.

    Raises:
        ExampleError: a missing or unreadable file, no features, or a label that is neither.
    """
    import shapely

    path = Path(path)
    if not path.is_file():
        raise ExampleError(
            f"examples file {os.fspath(path)!r} does not exist; pass a GeoJSON, GeoPackage or "
            "GeoParquet of example shapes",
            example=os.fspath(path),
        )
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        wkb, labels, crs = _read_geoparquet(path, label_column)
    else:
        wkb, labels, crs = _read_ogr(path, label_column)
    examples = []
    for i, (geometry, value) in enumerate(zip(shapely.from_wkb(wkb), labels), start=1):
        given = f"shape {i} of {path.name}"
        if geometry is None or geometry.is_empty:
            continue
        examples.append((_label(value, given), geometry, crs, given))
    if not examples:
        raise ExampleError(f"examples file {path} holds no shapes", example=os.fspath(path))
    return examples


def _read_ogr(path: Path, label_column: str) -> tuple[Any, list[Any], str]:
    import pyogrio
    from pyogrio import raw

    try:
        info = pyogrio.read_info(path)
        columns = [label_column] if label_column in list(info["fields"]) else []
        meta, _, geometries, fields = raw.read(path, columns=columns, force_2d=True)
    except Exception as err:  # pyogrio's DataSourceError and friends: the file is not a vector layer
        raise ExampleError(
            f"examples file {path} cannot be read as a vector layer ({err})", example=os.fspath(path)
        ) from err
    labels = fields[0].tolist() if columns else [None] * len(geometries)
    return geometries, labels, meta.get("crs") or "EPSG:4326"


def _read_geoparquet(path: Path, label_column: str) -> tuple[Any, list[Any], str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ExampleError(f"examples file {path} cannot be read as Parquet ({err})", example=os.fspath(path)) from err
    geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}") or b"{}")
    column = geo.get("primary_column", "geometry")
    if column not in table.column_names:
        raise ExampleError(
            f"examples file {path} has no geometry column {column!r} (not GeoParquet?)", example=os.fspath(path)
        )
    crs = (geo.get("columns", {}).get(column) or {}).get("crs")
    if isinstance(crs, dict):  # PROJJSON
        ident = crs.get("id") or {}
        crs = f"{ident['authority']}:{ident['code']}" if "authority" in ident else json.dumps(crs)
    labels = table.column(label_column).to_pylist() if label_column in table.column_names else [None] * len(table)
    return np.asarray(table.column(column).to_pylist(), dtype=object), labels, crs or "OGC:CRS84"


@dataclass(frozen=True)
class Example:
    """One resolved example: a chip (``patch`` None) or one patch of it (flat index in its grid)."""

    label: str  # "positive" or "negative"
    given: str  # what the user gave, for messages and examples.geojson
    chip: int  # row of the chip in the collection
    patch: int | None = None


# ---------------------------------------------------------------------------------------------- patch tokens


@dataclass
class _Part:
    """A run of chips whose tokens are read together: from a shard file, or held in memory."""

    start: int  # first chip row
    count: int
    file: Path | None = None
    tokens: np.ndarray | None = None  # (count, h, w, D) float16, in memory


class PatchTokens:
    """The patch tokens of a collection's chips, ``(h, w, D)`` float16 per chip, read part by part.

    Args:
        parts: runs of chips (shard files or in-memory arrays) in chip-row order, covering every chip.
        grids: ``(N, 2)`` patches down and across, per chip.
        nodata: ``(N,)`` list of ``(h * w,)`` nodata shares per patch.
        cache_bytes: parts are kept in memory after their first read while their float16 tokens take at most
            this many bytes together (the second pass of a search then reads no file).
    """

    def __init__(
        self, parts: list[_Part], grids: np.ndarray, nodata: list[np.ndarray], dim: int, cache_bytes: int = 1 << 30
    ) -> None:
        self.parts, self.grids, self.dim = parts, np.asarray(grids, dtype=np.int64).reshape(-1, 2), int(dim)
        sizes = self.grids[:, 0] * self.grids[:, 1]  # (N,)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # (N + 1,): chip i's patches are [o_i, o_i+1)
        self.patch_nodata = np.concatenate(nodata).astype(np.float32) if nodata else np.zeros(0, np.float32)  # (P,)
        self.cache_bytes = cache_bytes
        self._cache: dict[int, np.ndarray] = {}

    @property
    def num_patches(self) -> int:
        return int(self.offsets[-1])

    @property
    def bytes_per_chip(self) -> int:
        """Float16 bytes of one chip's tokens (the most common grid)."""
        from .embeddings import patch_bytes_per_chip

        grids, counts = np.unique(self.grids, axis=0, return_counts=True)
        return patch_bytes_per_chip(grids[int(np.argmax(counts))], self.dim)

    def unit(self, patch: int) -> tuple[int, int]:
        """Flat patch index -> (chip row, flat index in the chip's grid)."""
        chip = int(np.searchsorted(self.offsets, patch, side="right") - 1)
        return chip, int(patch - self.offsets[chip])

    def _read(self, index: int) -> Iterator[np.ndarray]:
        """The tokens of part ``index`` as ``(n, h, w, D)`` float16 blocks of at most ``CHIPS_PER_READ`` chips each
        (memory holds one block of a large shard), kept for the next pass while the cache has room."""
        part = self.parts[index]
        if part.tokens is not None:
            yield part.tokens
            return
        if index in self._cache:
            yield self._cache[index]
            return
        import pyarrow.parquet as pq

        from .embeddings import decode_patch_embeddings

        grid = self.grids[part.start]
        size = part.count * int(grid[0] * grid[1]) * self.dim * 2
        keep = sum(t.nbytes for t in self._cache.values()) + size <= self.cache_bytes
        blocks = []
        batches = pq.ParquetFile(part.file).iter_batches(
            batch_size=CHIPS_PER_READ, columns=["patch_embeddings", "patch_grid"]
        )
        for batch in batches:
            tokens = decode_patch_embeddings(batch.column(0), batch.column(1))  # (n, h, w, D)
            if keep:
                blocks.append(tokens)
            yield tokens
        if keep:
            self._cache[index] = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first patch index, (n_patches, D) float16 tokens)`` over every patch, in order."""
        for index, part in enumerate(self.parts):
            start = int(self.offsets[part.start])
            for tokens in self._read(index):
                flat = tokens.reshape(-1, tokens.shape[-1])  # (n, h, w, D) -> (n * h * w, D)
                yield start, flat
                start += len(flat)

    def take(self, patches: np.ndarray) -> np.ndarray:
        """The tokens of flat patch indices ``(m,)`` -> ``(m, D)`` float32, in the order given."""
        patches = np.asarray(patches, dtype=np.int64)
        out = np.zeros((len(patches), self.dim), dtype=np.float32)
        if not len(patches):
            return out
        for start, tokens in self.chunks():
            inside = (patches >= start) & (patches < start + len(tokens))
            if inside.any():
                out[inside] = tokens[patches[inside] - start]
        return out


def _patch_tokens_from_files(files: list[Path], chip_counts: list[int], chip_nodata: np.ndarray) -> PatchTokens:
    """Patch tokens of embedding shards (``patch_embeddings`` in each); the grids and nodata are read now."""
    import pyarrow.parquet as pq

    parts, grids, nodata, dims = [], [], [], set()
    start = 0
    for file, count in zip(files, chip_counts):
        names = pq.read_schema(file).names
        table = pq.read_table(file, columns=[c for c in ("patch_grid", "patch_nodata_fraction") if c in names])
        if "patch_grid" in names:
            file_grids = np.asarray(table["patch_grid"].to_pylist(), dtype=np.int64).reshape(-1, 2)
        else:  # an older shard of (L, D) float lists: a square grid
            first = pq.ParquetFile(file).read_row_group(0, columns=["patch_embeddings"])["patch_embeddings"][0]
            side = int(round(math.sqrt(len(first))))
            file_grids = np.full((count, 2), side, dtype=np.int64)
        if len({tuple(g) for g in file_grids}) > 1:
            raise ClayInputError(f"{file} holds chips of several patch grids; embed its chips with one chip size")
        values = table["patch_nodata_fraction"].to_pylist() if "patch_nodata_fraction" in names else [None] * count
        for i, (grid, value) in enumerate(zip(file_grids, values)):
            size = int(grid[0] * grid[1])
            nodata.append(np.full(size, chip_nodata[start + i]) if value is None else np.asarray(value))
        grids.append(file_grids)
        parts.append(_Part(start=start, count=count, file=file))
        dims.add(_token_width(file, file_grids[0]))
        start += count
    if len(dims) > 1:
        raise ClayInputError(f"the shards hold patch tokens of different widths {sorted(dims)}; read one model's")
    return PatchTokens(parts, np.concatenate(grids), nodata, dim=dims.pop())


def _token_width(file: Path, grid: np.ndarray) -> int:
    import pyarrow.parquet as pq

    first = pq.ParquetFile(file).read_row_group(0, columns=["patch_embeddings"])["patch_embeddings"][0].as_py()
    if isinstance(first, bytes):
        return len(first) // (int(grid[0]) * int(grid[1]) * 2)
    return len(first[0])


# ---------------------------------------------------------------------------------------------- score rasters


@dataclass
class ScoreRaster:
    """One scene's scores on its own pixel grid: ``array`` ``(H, W)`` float32 (NaN: not scored), ``crs``, and
    ``transform`` as the affine coefficients ``(a, b, c, d, e, f)`` (pixel (col, row) -> x, y), ``cell`` pixels
    of the scene per cell (chip or patch size)."""

    source: str
    level: str
    array: np.ndarray
    crs: str
    transform: tuple[float, float, float, float, float, float]
    cell: tuple[int, int]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return f"{_safe_name(self.source)}_{self.level}_scores.tif"

    def write(self, path: str | os.PathLike) -> Path:
        """The raster as a float32 COG (nodata :data:`SCORE_NODATA`), atomically."""
        from ..geodata.raster import write_cog

        filled = np.where(np.isfinite(self.array), self.array, SCORE_NODATA).astype(np.float32)
        return write_cog(
            path,
            filled,
            self.crs,
            self.transform,
            nodata=SCORE_NODATA,
            band_descriptions=[f"{self.level} score"],
            tags=self.tags,
        )


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


def _paint(
    shape: tuple[int, int], cell: tuple[float, float], extent: tuple[int, int], units: Iterable[tuple]
) -> np.ndarray:
    """Cells of ``cell`` pixels over a grid of ``extent`` pixels; each takes the highest value of the units holding
    its centre (clipped into the grid), so the best unit always shows, inside its own footprint.

    ``units``: ``(row, col, height, width, values (gh, gw))`` in pixels of the grid, a unit's values on a
    ``gh x gw`` grid of sub-units (patches); NaN values paint nothing.
    """
    out = np.full(shape, np.nan, dtype=np.float32)
    centres = [np.minimum((np.arange(n) + 0.5) * c, e - 0.5) for n, c, e in zip(shape, cell, extent)]
    for row, col, height, width, values in units:
        values = np.asarray(values, dtype=np.float32)
        spans, subs = [], []
        for axis, (origin, size) in enumerate(((row, height), (col, width))):
            lo, hi = np.searchsorted(centres[axis], [origin, origin + size], side="left")
            span = np.arange(lo, hi)  # the cells whose centre lies in [origin, origin + size)
            step = size / values.shape[axis]
            spans.append(span)
            subs.append(np.clip(((centres[axis][span] - origin) // step).astype(np.int64), 0, values.shape[axis] - 1))
        if len(spans[0]) and len(spans[1]):
            grid = np.ix_(*spans)
            out[grid] = np.fmax(out[grid], values[np.ix_(*subs)])  # NaN loses to any number
    return out


# ---------------------------------------------------------------------------------------------- the result


@dataclass(repr=False)
class FindResult:
    """What :meth:`Finder.find` found. ``scores`` is ``(N,)`` at chip level, ``(P,)`` (flat patches) at patch
    level, NaN where a unit was not scored; ``chip_scores`` ``(N,)`` (at patch level each chip's best patch)."""

    finder: Finder
    level: str
    method: str
    scores: np.ndarray
    chip_scores: np.ndarray
    examples: list[Example]
    example_scores: list[float]
    top_k: int
    keep_examples: bool
    scorer: Scorer
    max_nodata: float
    _detections: Any = None

    @property
    def num_scored(self) -> int:
        return int(np.isfinite(self.scores).sum())

    @property
    def model(self) -> str:
        return self.finder.model_label

    def _ranked(self) -> np.ndarray:
        """Unit indices by score, best first (NaN never), without the examples unless kept; ``top_k`` of them."""
        order = np.argsort(-np.nan_to_num(self.scores, nan=-np.inf), kind="stable")
        order = order[np.isfinite(self.scores[order])]
        if not self.keep_examples:
            taken = [self.finder._unit_index(e, self.level) for e in self.examples]
            order = order[np.isin(order, taken, invert=True)]
        return order[: self.top_k]

    @property
    def detections(self):
        """The ``top_k`` best units as a ``pandas.DataFrame`` (module docstring), ``geometry`` shapely polygons in
        longitude/latitude; ``geopandas.GeoDataFrame(result.detections, geometry="geometry", crs="EPSG:4326")``."""
        if self._detections is None:
            self._detections = self.finder._unit_table(self._ranked(), self.level, self.scores)
            self._detections.insert(0, "rank", np.arange(1, len(self._detections) + 1))
        return self._detections

    def examples_table(self):
        """The resolved examples as a DataFrame: ``label``, ``given``, the unit's columns and its ``score``."""
        units = np.array([self.finder._unit_index(e, self.level) for e in self.examples], dtype=np.int64)
        table = self.finder._unit_table(units, self.level, self.scores)
        table.insert(0, "given", [e.given for e in self.examples])
        table.insert(0, "label", [e.label for e in self.examples])
        return table

    def score_rasters(self) -> list[ScoreRaster]:
        """One :class:`ScoreRaster` per scene at chip level, and one more at patch level (module docstring)."""
        tags = {
            "CLAY_METHOD": self.method,
            "CLAY_MODEL": self.model,
            "CLAY_EXAMPLES": f"+{self.scorer.num_positive} -{self.scorer.num_negative}",
            "CLAY_MAX_NODATA": str(self.max_nodata),
        }
        rasters = []
        for source in self.finder.sources:
            rasters.extend(self.finder._rasters(source, self.level, self.scores, self.chip_scores, tags))
        return rasters

    def __repr__(self) -> str:
        return f"FindResult({self.summary()})"

    def summary(self) -> str:
        """One line: what was scored with what, the best hit and the model."""
        units = "patches" if self.level == "patch" else "chips"
        left_out = len(self.scores) - self.num_scored
        best = self.detections.iloc[0] if len(self.detections) else None
        found = f"best {best['score']:.4f} at {best['id']}" if best is not None else "no detection"
        return (
            f"{self.method} at {self.level} level: scored {self.num_scored} {units} of "
            f"{len(self.finder.sources)} scene(s) ({left_out} left out for nodata) from "
            f"{sum(e.label == 'positive' for e in self.examples)} positive and "
            f"{sum(e.label == 'negative' for e in self.examples)} negative example unit(s); {len(self.detections)} "
            f"detections, {found}; embeddings of {self.model}"
        )

    def write(self, output_dir: str | os.PathLike) -> dict[str, Any]:
        """Write ``detections.geojson``, ``detections.parquet``, ``examples.geojson`` and the score rasters into
        ``output_dir`` (created), each atomically; files of the same names are replaced, other files stay.

        Returns ``{"detections": [geojson, parquet], "examples": path, "rasters": [paths]}``.
        """
        output_dir = Path(output_dir)
        rasters = self.score_rasters()  # computed before anything is written
        metadata = {
            "method": self.method,
            "level": self.level,
            "model": self.model,
            "max_nodata": self.max_nodata,
            "examples": [dataclasses.asdict(e) for e in self.examples],
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            "detections": [
                _write_geojson(output_dir / "detections.geojson", self.detections, metadata),
                _write_geoparquet(output_dir / "detections.parquet", self.detections, metadata),
            ],
            "examples": _write_geojson(output_dir / "examples.geojson", self.examples_table(), metadata),
            "rasters": [raster.write(output_dir / raster.file_name) for raster in rasters],
        }
        return paths

    def to_geopandas(self):
        """The detections as a ``geopandas.GeoDataFrame`` in EPSG:4326 (needs geopandas)."""
        try:
            import geopandas
        except ImportError as exc:
            raise ImportError("to_geopandas() needs geopandas: pip install geopandas") from exc
        return geopandas.GeoDataFrame(self.detections, geometry="geometry", crs="EPSG:4326")


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    return str(value)


def _write_geojson(path: Path, table, metadata: dict[str, Any]) -> Path:
    """A DataFrame with shapely ``geometry`` (lon/lat) -> an RFC 7946 GeoJSON FeatureCollection, atomically."""
    import shapely

    from ..atomic import atomic_write_text

    features = []
    for record in table.to_dict("records"):
        geometry = record.pop("geometry")
        features.append(
            {
                "type": "Feature",
                "geometry": json.loads(shapely.to_geojson(geometry)) if geometry is not None else None,
                "properties": {k: _json_value(v) for k, v in record.items()},
            }
        )
    collection = {"type": "FeatureCollection", "name": path.stem, "clay_finder": metadata, "features": features}
    return atomic_write_text(path, json.dumps(collection) + "\n")


def _write_geoparquet(path: Path, table, metadata: dict[str, Any]) -> Path:
    """A DataFrame with shapely ``geometry`` (lon/lat) -> GeoParquet 1.1 (WKB, OGC:CRS84), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    from ..atomic import atomic_path
    from .embeddings import geoparquet_metadata

    geometry = np.asarray(table["geometry"].tolist(), dtype=object)
    arrow = pa.Table.from_pandas(table.drop(columns=["geometry"]), preserve_index=False)
    arrow = arrow.append_column(
        "geometry", pa.array(list(shapely.to_wkb(geometry)) if len(geometry) else [], pa.binary())
    )
    bbox = [float(v) for v in shapely.total_bounds(geometry)] if len(geometry) else None
    arrow = arrow.replace_schema_metadata(
        {b"geo": geoparquet_metadata(bbox), b"clay_finder": json.dumps(metadata).encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return path


# ---------------------------------------------------------------------------------------------- the finder


class Finder:
    """A collection of chip embeddings (and patch tokens) to find things in. See the module docstring.

    Args:
        index: the chips: an :class:`~clay_hf.apps.search.EmbeddingIndex` whose metadata are the rows of
            :mod:`clay_hf.apps.embeddings` (``bounds``, ``crs``, ``source``, ``pixel_window``...).
        patches: their patch tokens, or None.
        model: what made the embeddings (``name_or_path``, ``fingerprint``, ``label``), for the outputs.
        where: the embeddings' place, for messages (a folder, a Hub id).
    """

    def __init__(
        self,
        index: EmbeddingIndex,
        patches: PatchTokens | None = None,
        model: dict[str, Any] | None = None,
        where: str = "the embeddings",
    ) -> None:
        self.index = index
        self.patches = patches
        self.model = dict(model or {})
        self.where = where
        self._missing_patches: list[Path] = []  # shards without patch tokens (named when patches are asked for)
        self.chips = index.to_pandas()  # id, nodata_fraction, metadata columns, geometry
        n = len(index)
        column = lambda name: self.chips[name].tolist() if name in self.chips else [None] * n  # noqa: E731
        self.chip_ids = [str(i) for i in index.ids]
        self.sources = list(dict.fromkeys(str(s) for s in column("source")))
        self._source = np.array([str(s) for s in column("source")], dtype=object)
        self._crs = np.array([c if c else None for c in column("crs")], dtype=object)
        self._bounds = np.array(
            [b if b is not None and len(b) == 4 else [np.nan] * 4 for b in column("bounds")], dtype=np.float64
        ).reshape(n, 4)
        self._window = np.array(
            [w if w is not None and len(w) == 4 else [-1] * 4 for w in column("pixel_window")], dtype=np.int64
        ).reshape(n, 4)
        self.nodata_fraction = index.nodata_fraction

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_parquet(
        cls,
        path: str | os.PathLike,
        split: str | None = None,
        embedding_column: str = "embedding",
        center: bool = True,
        revision: str | None = None,
    ) -> Finder:
        """A finder over an embedding folder written by ``scripts/embed.py`` (every split by default), a folder of
        shards, one shard, or a Hub dataset id (:func:`clay_hf.apps.search.embedding_files`).

        Raises:
            ClayInputError: a path without shards, shards of different widths or models (the messages of
                :meth:`EmbeddingIndex.from_parquet`).
        """
        import pyarrow.parquet as pq

        files = embedding_files(path, split, revision=revision)
        index = EmbeddingIndex.from_parquet(
            path, split=split, embedding_column=embedding_column, center=center, revision=revision
        )
        counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
        missing = [f for f in files if "patch_embeddings" not in pq.read_schema(f).names]
        patches = None if missing else _patch_tokens_from_files(files, counts, index.nodata_fraction)
        finder = cls(index, patches, model=_shard_model(files[0]), where=os.fspath(path))
        finder._missing_patches = missing
        return finder

    @classmethod
    def from_rows(
        cls, rows: Sequence[dict[str, Any]], center: bool = True, model: dict[str, Any] | None = None
    ) -> Finder:
        """A finder over embedding rows in memory (what :func:`clay_hf.apps.embeddings.embed_chips` yields, with
        ``outputs`` holding ``"patches"`` for patch level), e.g. a scene the Space has just embedded."""
        from .embeddings import PATCH_DTYPE

        if not rows:
            raise ClayInputError("no embedding rows: embed at least one chip first")
        vectors = np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows])  # (N, D)
        skip = ("embedding", "mean_embedding", "patch_embeddings", "patch_grid", "patch_nodata_fraction")
        names = [k for k in rows[0] if k not in skip]
        metadata = {k: [r.get(k) for r in rows] for k in names}
        index = EmbeddingIndex(vectors, ids=[r["chip_id"] for r in rows], metadata=metadata, center=center)
        patches = None
        if all(r.get("patch_embeddings") is not None for r in rows):
            parts, start = [], 0
            for i in range(1, len(rows) + 1):  # runs of one grid
                if i == len(rows) or np.shape(rows[i]["patch_embeddings"]) != np.shape(rows[start]["patch_embeddings"]):
                    tokens = np.stack([np.asarray(r["patch_embeddings"], dtype=PATCH_DTYPE) for r in rows[start:i]])
                    parts.append(_Part(start=start, count=i - start, tokens=tokens))  # (n, h, w, D)
                    start = i
            grids = np.array([np.shape(r["patch_embeddings"])[:2] for r in rows])
            nodata = [
                np.full(int(np.prod(g)), r.get("nodata_fraction") or 0.0)
                if r.get("patch_nodata_fraction") is None
                else np.asarray(r["patch_nodata_fraction"], dtype=np.float32)
                for r, g in zip(rows, grids)
            ]
            patches = PatchTokens(parts, grids, nodata, dim=np.shape(rows[0]["patch_embeddings"])[-1])
        return cls(index, patches, model=model, where="the embedding rows")

    @property
    def model_label(self) -> str:
        """What made the embeddings, as recorded (the provenance label; else the model's name)."""
        label = self.model.get("label")
        if label:
            return str(label)
        name = self.model.get("name_or_path")
        return f"{name} (provenance not recorded)" if name else "a model of unrecorded provenance"

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        patches = f", patch tokens {self.patches.bytes_per_chip} B/chip" if self.patches is not None else ""
        return (
            f"Finder({len(self)} chips of {len(self.sources)} scene(s){patches}; embeddings of "
            f"{self.model_label}; from {self.where})"
        )

    def _require_patches(self) -> PatchTokens:
        if self.patches is None:
            missing = self._missing_patches
            shown = ", ".join(str(f) for f in missing[:3]) + (
                f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            )
            raise ClayInputError(
                f"searching patches needs the patch tokens, and {shown or self.where} hold"
                f"{'s' if len(missing) < 2 else ''} none (embedded without them). "
                "Embed again keeping them (embed_to_parquet outputs ('cls', 'patches'), scripts/embed.py --outputs "
                "cls patches), or search chips"
            )
        return self.patches

    # ------------------------------------------------------------------ units

    def _unit_index(self, example: Example, level: str) -> int:
        if level == "chip":
            return example.chip
        return int(self.patches.offsets[example.chip] + example.patch)

    def _grid(self, chip: int) -> tuple[int, int]:
        return (1, 1) if self.patches is None else tuple(int(v) for v in self.patches.grids[chip])

    def unit_id(self, chip: int, patch: int | None = None) -> str:
        """The id of a chip (row), or of patch ``patch`` (flat index in its grid): ``"<chip id>#<row>,<col>"``."""
        if patch is None:
            return self.chip_ids[chip]
        _, width = self._grid(chip)
        return f"{self.chip_ids[chip]}{PATCH_SEPARATOR}{patch // width},{patch % width}"

    def unit_at(self, source: str, row: float, col: float, level: str = "chip") -> str | None:
        """The id of the chip (or patch) holding pixel ``(row, col)`` of a scene's pixel grid (as a click on the
        scene's image gives it), of overlapping chips the one whose centre is nearest; None off every chip."""
        _check_choice(level, LEVELS, "level")
        rows = np.flatnonzero((self._source == source) & (self._window[:, 2] > 0))
        if not len(rows):
            return None
        r0, c0, h, w = self._window[rows].T
        inside = (r0 <= row) & (row < r0 + h) & (c0 <= col) & (col < c0 + w)
        if not inside.any():
            return None
        candidates = rows[inside]
        centre = np.abs(r0[inside] + h[inside] / 2 - row) + np.abs(c0[inside] + w[inside] / 2 - col)
        chip = int(candidates[int(np.argmin(centre))])
        if level == "chip":
            return self.unit_id(chip)
        self._require_patches()
        gh, gw = self._grid(chip)
        r0, c0, h, w = self._window[chip]
        pr, pc = min(int((row - r0) * gh // h), gh - 1), min(int((col - c0) * gw // w), gw - 1)
        return self.unit_id(chip, pr * gw + pc)

    def _unit_bounds(self, chips: np.ndarray, patches: np.ndarray | None) -> np.ndarray:
        """``(m, 4)`` (left, bottom, right, top) in each chip's CRS of chips, or of their patches (flat index)."""
        bounds = self._bounds[chips].copy()
        if patches is None:
            return bounds
        grids = self.patches.grids[chips]  # (m, 2)
        pr, pc = patches // grids[:, 1], patches % grids[:, 1]
        dx = (bounds[:, 2] - bounds[:, 0]) / grids[:, 1]
        dy = (bounds[:, 3] - bounds[:, 1]) / grids[:, 0]
        left, top = bounds[:, 0] + pc * dx, bounds[:, 3] - pr * dy
        return np.stack([left, top - dy, left + dx, top], axis=1)

    def _footprints(self, chips: np.ndarray, patches: np.ndarray | None) -> tuple[list, np.ndarray]:
        """Polygons in lon/lat (each unit's corners transformed from its CRS) and ``(m, 2)`` centres lon, lat."""
        import shapely

        from ..geodata.raster import transform_points

        bounds = self._unit_bounds(chips, patches)
        polygons: list = [None] * len(chips)
        centres = np.full((len(chips), 2), np.nan)
        crss = self._crs[chips]
        for crs in {c for c in crss if c is not None}:
            rows = np.flatnonzero(crss == crs)
            b = bounds[rows]
            if np.isnan(b).any():
                continue
            xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0], (b[:, 0] + b[:, 2]) / 2], axis=1)  # (m, 5)
            ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3], (b[:, 1] + b[:, 3]) / 2], axis=1)
            lon, lat = transform_points(xs.ravel(), ys.ravel(), crs, "EPSG:4326")
            lon, lat = lon.reshape(-1, 5), lat.reshape(-1, 5)
            rings = np.stack([lon[:, :4], lat[:, :4]], axis=2)  # (m, 4 corners, xy)
            for i, row in enumerate(rows):
                polygons[row] = shapely.Polygon(rings[i])
            centres[rows] = np.stack([lon[:, 4], lat[:, 4]], axis=1)
        return polygons, centres

    def _unit_table(self, units: np.ndarray, level: str, scores: np.ndarray):
        """A DataFrame of units (chip rows, or flat patch indices): scores, ids, metadata, footprints."""
        import pandas as pd

        units = np.asarray(units, dtype=np.int64)
        if level == "patch":
            pairs = [self.patches.unit(int(u)) for u in units]
            chips = np.array([c for c, _ in pairs], dtype=np.int64)
            patches = np.array([p for _, p in pairs], dtype=np.int64)
            widths = self.patches.grids[chips, 1] if len(chips) else np.zeros(0, dtype=np.int64)
            nodata = self.patches.patch_nodata[units] if len(units) else np.zeros(0)
        else:
            chips, patches, widths = units, None, None
            nodata = self.nodata_fraction[chips]
        polygons, centres = self._footprints(chips, patches)
        column = lambda name: [self.chips[name].iloc[c] if name in self.chips else None for c in chips]  # noqa: E731
        table = pd.DataFrame(
            {
                "score": [float(scores[u]) for u in units],
                "level": [level] * len(units),
                "id": [
                    self.unit_id(int(c), None if patches is None else int(p))
                    for c, p in zip(chips, patches if patches is not None else [None] * len(chips))
                ],
                "chip_id": [self.chip_ids[c] for c in chips],
                "patch_row": (patches // widths).tolist() if patches is not None else [None] * len(chips),
                "patch_col": (patches % widths).tolist() if patches is not None else [None] * len(chips),
                "source": [str(self._source[c]) for c in chips],
                "sensor": column("sensor"),
                "datetime": column("datetime"),
                "nodata_fraction": [float(v) for v in nodata],
                "lon": centres[:, 0].tolist(),
                "lat": centres[:, 1].tolist(),
                "geometry": polygons,
            }
        )
        return table

    # ------------------------------------------------------------------ examples

    def resolve(
        self,
        positive: Iterable[Any] = (),
        negative: Iterable[Any] = (),
        examples: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        level: str = "chip",
        crs: str = "EPSG:4326",
        max_nodata: float = DEFAULT_MAX_NODATA,
        label_column: str = "label",
    ) -> list[Example]:
        """Examples as given (ids, points, shapes, files of shapes: module docstring) -> the units they stand for.

        ``crs`` is the CRS of the points and shapes given directly (files carry their own).

        Raises:
            ExampleError: an example that gives no unit (the message names it and says why), a unit that is both
                positive and negative, a positive unit with more nodata than ``max_nodata``, or no positive at all.
        """
        _check_choice(level, LEVELS, "level")
        if level == "patch":
            self._require_patches()
        given: list[tuple[str, Any, str, str]] = []  # (label, item, crs, description)
        for label, items in (("positive", positive), ("negative", negative)):
            for item in items or ():
                given.append((label, item, crs, _describe(item)))
        files = [examples] if isinstance(examples, (str, os.PathLike)) else list(examples or [])
        for path in files:
            given.extend(read_examples(path, label_column))
        resolved: list[Example] = []
        for label, item, item_crs, description in given:
            units = self._resolve_one(item, item_crs, level, description)
            resolved.extend(Example(label, description, chip, patch) for chip, patch in units)
        return self._check_examples(resolved, level, max_nodata)

    def _resolve_one(self, item: Any, crs: str, level: str, description: str) -> list[tuple[int, int | None]]:
        import shapely
        import shapely.geometry

        if isinstance(item, str) and not _looks_like_point(item):
            return self._units_of_id(item, level)
        if isinstance(item, str):
            item = parse_point(item)
        if isinstance(item, dict):
            geometry = item.get("geometry", item) if item.get("type") == "Feature" else item
            try:
                item = shapely.geometry.shape(geometry)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise ExampleError(
                    f"example {description} is not a GeoJSON geometry ({err})", example=description
                ) from err
        if isinstance(item, shapely.Geometry):
            if isinstance(item, shapely.Point):
                return self._units_at_point(item.x, item.y, crs, level, description)
            if item.geom_type not in ("Polygon", "MultiPolygon"):
                raise ExampleError(
                    f"example {description} is a {item.geom_type}; give points or polygons", example=description
                )
            return self._units_in_shape(item, crs, level, description)
        if isinstance(item, (tuple, list, np.ndarray)) and len(item) == 2:
            x, y = (float(v) for v in item)
            return self._units_at_point(x, y, crs, level, description)
        raise ExampleError(
            f"example {description} is neither a chip id, a (lon, lat) point nor a shape", example=description
        )

    def _units_of_id(self, text: str, level: str) -> list[tuple[int, int | None]]:
        match = _PATCH_ID.fullmatch(text)
        chip_id = match["chip"] if match else text
        try:
            (chip,) = self.index.rows(chip_id)
        except ClayInputError as err:
            raise ExampleError(str(err).replace("id ", "example id ", 1), example=text) from None
        if match is None:
            if level == "chip":
                return [(chip, None)]
            gh, gw = self._grid(chip)
            return [(chip, p) for p in range(gh * gw)]  # a chip at patch level: every patch of it
        gh, gw = self._grid(chip)
        pr, pc = int(match["row"]), int(match["col"])
        if self.patches is None or pr >= gh or pc >= gw:
            raise ExampleError(
                f"example {text!r}: chip {chip_id!r} has a {gh}x{gw} patch grid, no patch {pr},{pc}"
                if self.patches is not None
                else f"example {text!r} names a patch, and {self.where} holds no patch tokens",
                example=text,
            )
        return [(chip, None)] if level == "chip" else [(chip, pr * gw + pc)]

    def _in_crs(self, xs: np.ndarray, ys: np.ndarray, crs: str, target: str) -> tuple[np.ndarray, np.ndarray]:
        from ..geodata.raster import transform_points

        if str(crs) == str(target):
            return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        return transform_points(xs, ys, crs, target)

    def _units_at_point(self, x: float, y: float, crs: str, level: str, description: str) -> list:
        """The chip (or patch) holding the point in each scene that has one."""
        found, near = [], []
        for source in self.sources:
            rows = np.flatnonzero((self._source == source) & ~np.isnan(self._bounds[:, 0]))
            if not len(rows):
                continue
            scene_crs = self._crs[rows[0]]
            (px,), (py,) = self._in_crs([x], [y], crs, scene_crs)
            b = self._bounds[rows]
            inside = (b[:, 0] <= px) & (px < b[:, 2]) & (b[:, 1] < py) & (py <= b[:, 3])
            if not inside.any():
                if b[:, 0].min() <= px < b[:, 2].max() and b[:, 1].min() < py <= b[:, 3].max():
                    near.append(source)
                continue
            centre = np.hypot((b[inside, 0] + b[inside, 2]) / 2 - px, (b[inside, 1] + b[inside, 3]) / 2 - py)
            chip = int(rows[inside][int(np.argmin(centre))])
            if level == "chip":
                found.append((chip, None))
                continue
            gh, gw = self._grid(chip)
            left, bottom, right, top = self._bounds[chip]
            pr = min(int((top - py) / (top - bottom) * gh), gh - 1)
            pc = min(int((px - left) / (right - left) * gw), gw - 1)
            found.append((chip, pr * gw + pc))
        if found:
            return found
        if near:
            raise ExampleError(
                f"example {description} lies in scene {near[0]!r} but on no embedded chip: the chips there were left "
                "out when embedding (too much nodata; see max_nodata_fraction of embed_to_parquet, --max-nodata "
                "of scripts/embed.py). Choose a place with data",
                example=description,
            )
        raise ExampleError(
            f"example {description} is outside every scene of {self.where} ({self._extent_text()}); check that it "
            "is given as longitude, latitude",
            example=description,
        )

    def _extent_text(self) -> str:
        geometries = [g for g in self.chips.get("geometry", []) if g is not None]
        if not geometries:
            return "their footprints are not known"
        import shapely

        west, south, east, north = shapely.total_bounds(np.asarray(geometries, dtype=object))
        return f"they cover longitude {west:.4f} to {east:.4f}, latitude {south:.4f} to {north:.4f}"

    def _units_in_shape(self, shape: Any, crs: str, level: str, description: str) -> list:
        """The chips (or patches) the shape covers by at least MIN_COVER of their area, else the one it covers most,
        in each scene it touches."""
        import shapely

        found = []
        for source in self.sources:
            rows = np.flatnonzero((self._source == source) & ~np.isnan(self._bounds[:, 0]))
            if not len(rows):
                continue
            scene_crs = self._crs[rows[0]]
            local = shapely.transform(
                shape, lambda xy, c=scene_crs: np.column_stack(self._in_crs(xy[:, 0], xy[:, 1], crs, c))
            )
            b = self._bounds[rows]
            touched = rows[shapely.intersects(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]), local)]
            if not len(touched):
                continue
            if level == "chip":
                chips, patches = touched, None
            else:
                sizes = [int(np.prod(self._grid(c))) for c in touched]
                chips = np.repeat(touched, sizes)
                patches = np.concatenate([np.arange(s) for s in sizes])
            ub = self._unit_bounds(chips, patches)
            boxes = shapely.box(ub[:, 0], ub[:, 1], ub[:, 2], ub[:, 3])
            cover = shapely.area(shapely.intersection(boxes, local)) / shapely.area(boxes)  # (m,)
            chosen = np.flatnonzero(cover >= MIN_COVER)
            if not len(chosen):
                chosen = [int(np.argmax(cover))]
            found.extend((int(chips[i]), None if patches is None else int(patches[i])) for i in chosen)
        if not found:
            raise ExampleError(
                f"example {description} touches no chip of {self.where} ({self._extent_text()}); check its CRS",
                example=description,
            )
        return found

    def _unit_nodata(self, example: Example) -> float:
        """The nodata share of an example's unit: its chip's, or the larger of its chip's and its patch's."""
        chip = float(self.nodata_fraction[example.chip])
        return (
            chip
            if example.patch is None
            else max(chip, float(self.patches.patch_nodata[self.patches.offsets[example.chip] + example.patch]))
        )

    def _check_examples(self, examples: list[Example], level: str, max_nodata: float) -> list[Example]:
        """Refuse a unit labelled both ways and positives on nodata; a positive chip id or shape that stands for
        several units keeps those with data (it is refused only when none has)."""
        units = {}
        for example in examples:
            key = (example.chip, example.patch)
            other = units.setdefault(key, example)
            if other.label != example.label:
                raise ExampleError(
                    f"{self.unit_id(*key)} is a positive example ({_first(other, example, 'positive').given}) and a "
                    f"negative one ({_first(other, example, 'negative').given}); give each place one label",
                    example=example.given,
                )
        kept, by_given = [], {}
        for example in examples:
            by_given.setdefault((example.label, example.given), []).append(example)
        for (label, given), group in by_given.items():
            usable = [e for e in group if label == "negative" or self._unit_nodata(e) <= max_nodata]
            if not usable:
                worst = group[0]
                what = "chip" if worst.patch is None or self.nodata_fraction[worst.chip] > max_nodata else "patch"
                raise ExampleError(
                    f"positive example {given} falls on {what} {self.unit_id(worst.chip, worst.patch)}"
                    f"{f' (and {len(group) - 1} more)' if len(group) > 1 else ''}, which is "
                    f"{self._unit_nodata(worst):.0%} nodata, more than the {max_nodata:.0%} max_nodata= allows: its "
                    "embedding mostly describes the fill. Choose a place with data, or pass a larger max_nodata=",
                    example=given,
                )
            if len(usable) < len(group):
                logger.info(
                    "positive example %s: %d of its %d units left out for nodata",
                    given,
                    len(group) - len(usable),
                    len(group),
                )
            kept.extend(usable)
        if not any(e.label == "positive" for e in kept):
            raise ExampleError("no positive example: give at least one chip id, point or shape of what to find")
        return kept

    # ------------------------------------------------------------------ finding

    def find(
        self,
        positive: Iterable[Any] = (),
        negative: Iterable[Any] = (),
        examples: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        level: str = "chip",
        method: str = "cosine",
        top_k: int = DEFAULT_TOP_K,
        max_nodata: float = DEFAULT_MAX_NODATA,
        background: int = DEFAULT_BACKGROUND,
        beta: float = 0.5,
        keep_examples: bool = False,
        crs: str = "EPSG:4326",
        seed: int = 0,
        progress: Any = None,
    ) -> FindResult:
        """Score every chip (``level="chip"``) or patch (``"patch"``) from the examples: :meth:`resolve`, then
        :meth:`score`; see the module docstring.

        Args:
            positive, negative: examples (chip/patch ids, ``(lon, lat)`` points, shapes); ``examples``: vector
                file(s) of labelled shapes; crs: of the points and shapes given directly (default lon/lat).
            level, method, top_k, max_nodata, background, beta, keep_examples, seed, progress: as in
                :meth:`score`.
        Raises:
            ExampleError: see :meth:`resolve`. ClayInputError: a bad setting, or ``level="patch"`` without
                patch tokens.
        """
        from .search import _check_max_nodata

        resolved = self.resolve(positive, negative, examples, level, crs, _check_max_nodata(max_nodata))
        return self.score(resolved, level, method, top_k, max_nodata, background, beta, keep_examples, seed, progress)

    def score(
        self,
        examples: Sequence[Example],
        level: str = "chip",
        method: str = "cosine",
        top_k: int = DEFAULT_TOP_K,
        max_nodata: float = DEFAULT_MAX_NODATA,
        background: int = DEFAULT_BACKGROUND,
        beta: float = 0.5,
        keep_examples: bool = False,
        seed: int = 0,
        progress: Any = None,
    ) -> FindResult:
        """Score every unit of ``level`` from resolved examples (:meth:`resolve`, at the same level).

        Args:
            method: ``"cosine"`` or ``"classifier"``; top_k: detections kept; background: random units the
                classifier takes as negatives; beta: the negatives' weight in the cosine's Rocchio query.
            max_nodata: units with more nodata get no score.
            keep_examples: rank the examples among the detections too.
            seed: the background draw and the classifier's random state.
            progress: a tqdm bar, advanced by the units scored (its total is set here).
        """
        from .search import _check_max_nodata

        _check_choice(level, LEVELS, "level")
        _check_choice(method, METHODS, "method")
        max_nodata = _check_max_nodata(max_nodata)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ClayInputError(f"top_k must be a positive number of detections, got {top_k!r}")
        if isinstance(background, bool) or not isinstance(background, int) or background < 0:
            raise ClayInputError(f"background must be a number of units >= 0, got {background!r}")
        examples = list(examples)
        if level == "patch" and any(e.patch is None for e in examples):
            raise ClayInputError("these examples were resolved at level='chip'; resolve them with level='patch'")
        if level == "chip":
            scores, scorer = self._score_chips(examples, method, max_nodata, background, beta, seed, progress)
            chip_scores = scores
        else:
            scores, scorer = self._score_patches(examples, method, max_nodata, background, beta, seed, progress)
            chip_scores = self._best_patch(scores)
        if not np.isfinite(scores).any():
            raise ClayInputError(
                f"every unit has more than max_nodata={max_nodata} nodata, so none was scored; pass a larger max_nodata="
            )
        example_scores = [float(scores[self._unit_index(e, level)]) for e in examples]
        return FindResult(
            self, level, method, scores, chip_scores, examples, example_scores, top_k, keep_examples, scorer, max_nodata
        )

    def _split(self, examples: list[Example], level: str) -> tuple[np.ndarray, np.ndarray]:
        pos = sorted({self._unit_index(e, level) for e in examples if e.label == "positive"})
        neg = sorted({self._unit_index(e, level) for e in examples if e.label == "negative"})
        return np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)

    def _score_chips(self, examples, method, max_nodata, background, beta, seed, progress):
        vectors = self.index.embeddings.cpu().numpy()  # (N, D) unit rows, centred when the index is
        eligible = self.nodata_fraction <= max_nodata
        pos, neg = self._split(examples, "chip")
        drawn = _draw_background(
            eligible, np.concatenate([pos, neg]), background if method == "classifier" else 0, seed
        )
        scorer = fit_scorer(
            method,
            vectors[pos],
            vectors[neg] if len(neg) else None,
            vectors[drawn] if len(drawn) else None,
            beta=beta,
            seed=seed,
        )
        _start(progress, len(vectors))
        scores = np.empty(len(vectors), dtype=np.float32)
        for start in range(0, len(vectors), SCORE_CHUNK):
            scores[start : start + SCORE_CHUNK] = scorer(vectors[start : start + SCORE_CHUNK])
            _advance(progress, len(scores[start : start + SCORE_CHUNK]))
        scores[~eligible] = np.nan
        return scores, scorer

    def _patch_eligible(self, max_nodata: float) -> np.ndarray:
        patches = self.patches
        chip_ok = np.repeat(self.nodata_fraction <= max_nodata, np.diff(patches.offsets))  # (P,)
        return chip_ok & (patches.patch_nodata <= max_nodata)

    def _score_patches(self, examples, method, max_nodata, background, beta, seed, progress):
        patches = self._require_patches()
        eligible = self._patch_eligible(max_nodata)
        pos, neg = self._split(examples, "patch")
        drawn = _draw_background(
            eligible, np.concatenate([pos, neg]), background if method == "classifier" else 0, seed
        )
        wanted = np.concatenate([pos, neg, drawn])
        _start(progress, 2 * patches.num_patches)
        total = np.zeros(patches.dim, dtype=np.float64)
        raw = np.zeros((len(wanted), patches.dim), dtype=np.float32)
        for start, tokens in patches.chunks():  # pass 1: the mean, and the example and background tokens
            total += tokens.astype(np.float64).sum(axis=0)
            inside = (wanted >= start) & (wanted < start + len(tokens))
            raw[inside] = tokens[wanted[inside] - start]
            _advance(progress, len(tokens))
        center = (
            (total / max(patches.num_patches, 1)).astype(np.float32) if self.index.center_vector is not None else None
        )
        units = _unit_rows(raw, center)
        p, m = len(pos), len(neg)
        scorer = fit_scorer(
            method,
            units[:p],
            units[p : p + m] if m else None,
            units[p + m :] if len(drawn) else None,
            beta=beta,
            seed=seed,
        )
        scores = np.empty(patches.num_patches, dtype=np.float32)
        for start, tokens in patches.chunks():  # pass 2: every patch scored
            for offset in range(0, len(tokens), SCORE_CHUNK):
                chunk = tokens[offset : offset + SCORE_CHUNK]
                scores[start + offset : start + offset + len(chunk)] = scorer(_unit_rows(chunk, center))
            _advance(progress, len(tokens))
        scores[~eligible] = np.nan
        return scores, scorer

    def _best_patch(self, scores: np.ndarray) -> np.ndarray:
        """``(P,)`` patch scores -> ``(N,)`` each chip's best (NaN when none of its patches was scored)."""
        offsets = self.patches.offsets
        filled = np.nan_to_num(scores, nan=-np.inf)
        best = np.maximum.reduceat(filled, offsets[:-1]) if len(filled) else np.zeros(0)
        return np.where(np.isfinite(best), best, np.nan).astype(np.float32)

    # ------------------------------------------------------------------ rasters

    def _scene_grid(self, source: str) -> dict[str, Any] | None:
        """The pixel grid of a scene from its chips' windows and bounds: crs, resolution, origin, extent."""
        rows = np.flatnonzero(self._source == source)
        rows = rows[(self._window[rows, 2] > 0) & ~np.isnan(self._bounds[rows, 0])]
        if not len(rows) or self._crs[rows[0]] is None:
            return None
        r0, c0, h, w = self._window[rows].T
        b = self._bounds[rows]
        res_x = float(np.median((b[:, 2] - b[:, 0]) / w))
        res_y = float(np.median((b[:, 3] - b[:, 1]) / h))
        return {
            "rows": rows,
            "crs": self._crs[rows[0]],
            "res": (res_x, res_y),
            "origin": (float(np.median(b[:, 0] - c0 * res_x)), float(np.median(b[:, 3] + r0 * res_y))),
            "extent": (int((r0 + h).max()), int((c0 + w).max())),
            "chip": _most_common(np.stack([h, w], axis=1)),
        }

    def _rasters(
        self, source: str, level: str, scores: np.ndarray, chip_scores: np.ndarray, tags: dict[str, str]
    ) -> list[ScoreRaster]:
        grid = self._scene_grid(source)
        if grid is None:
            logger.warning(
                "scene %s: its embedding rows have no pixel_window (or no bounds and CRS), so no score "
                "raster is written for it; embed it again to get one",
                source,
            )
            return []
        rows = grid["rows"]
        layers = [("chip", grid["chip"], [(*self._window[c], chip_scores[c : c + 1, None]) for c in rows])]
        if level == "patch":
            patches = self.patches
            gh, gw = _most_common(patches.grids[rows])
            cell = (grid["chip"][0] / gh, grid["chip"][1] / gw)
            units = [
                (*self._window[c], scores[patches.offsets[c] : patches.offsets[c + 1]].reshape(tuple(patches.grids[c])))
                for c in rows
            ]
            layers.append(("patch", cell, units))
        rasters = []
        for name, cell, units in layers:
            shape = tuple(int(math.ceil(e / c - 1e-9)) for e, c in zip(grid["extent"], cell))
            array = _paint(shape, cell, grid["extent"], units)
            (res_x, res_y), (x0, y0) = grid["res"], grid["origin"]
            transform = (cell[1] * res_x, 0.0, x0, 0.0, -cell[0] * res_y, y0)
            rasters.append(
                ScoreRaster(
                    source,
                    name,
                    array,
                    grid["crs"],
                    transform,
                    cell,
                    {**tags, "CLAY_LEVEL": name, "CLAY_SOURCE": source},
                )
            )
        return rasters


def _most_common(pairs: np.ndarray) -> tuple[int, int]:
    values, counts = np.unique(np.asarray(pairs).reshape(-1, 2), axis=0, return_counts=True)
    return tuple(int(v) for v in values[int(np.argmax(counts))])


def _start(progress: Any, total: int) -> None:
    if progress is not None:
        progress.reset(total=total)


def _advance(progress: Any, count: int) -> None:
    if progress is not None:
        progress.update(count)


def _first(a: Example, b: Example, label: str) -> Example:
    return a if a.label == label else b


def _looks_like_point(text: str) -> bool:
    return re.fullmatch(r"\s*[-+]?[\d.]+(e[-+]?\d+)?\s*,\s*[-+]?[\d.]+(e[-+]?\d+)?\s*", text, re.IGNORECASE) is not None


def _describe(item: Any) -> str:
    """An example as the user gave it, for messages."""
    if isinstance(item, str):
        return f"point ({item})" if _looks_like_point(item) else repr(item)
    if isinstance(item, (tuple, list, np.ndarray)) and len(item) == 2:
        return f"point ({float(item[0]):g}, {float(item[1]):g})"
    geom_type = getattr(item, "geom_type", None) or (item.get("type") if isinstance(item, dict) else None)
    return f"a {geom_type}" if geom_type else repr(item)[:60]


def _shard_model(file: Path) -> dict[str, Any]:
    """The model record a shard's metadata carries (:func:`clay_hf.apps.embeddings.write_embedding_shard`)."""
    import pyarrow.parquet as pq

    from .embeddings import SHARD_METADATA_KEY

    raw = (pq.read_schema(file).metadata or {}).get(SHARD_METADATA_KEY)
    try:
        return dict((json.loads(raw) or {}).get("model") or {}) if raw else {}
    except (ValueError, AttributeError):
        return {}
