"""Embeddings in one call: arrays, GeoTIFFs and chip datasets in; tensors, ``datasets.Dataset`` or GeoParquet out.

    >>> model = load_embedding_model("made-with-clay/Clay-v1.5-hf")          # or a converted folder
    >>> out = embed_array(model, chips, sensor="sentinel-2-l2a", datetimes="2024-06-01", lat=52.5, lon=13.4)
    >>> out["embedding"].shape                                             # (B, D): the cls token
    >>> ds = embed_geotiff(model, "scene.tif", sensor="sentinel-2-l2a", chip_size=256)   # a datasets.Dataset
    >>> ds = embed_dataset(model, "chips/")                                # a chip dataset folder or Hub id

One row per chip (:data:`EMBEDDING_COLUMNS`): ``chip_id``, ``embedding`` (the cls token, ``(D,)``), optionally
``mean_embedding`` (mean of the patch tokens) and the patch tokens, and the chip's ``sensor``, ``datetime``, centre
``lat``/``lon``, ``gsd``, ``bounds`` and ``crs`` (the raster's), ``source``, ``nodata_fraction`` (the share of the
chip's pixels that are nodata, from its ``valid`` mask: similarity search leaves chips above
:data:`~clay_hf.geodata.chip_format.DEFAULT_MAX_NODATA` out; shards written before this column existed read as 0),
``pixel_window`` (``[row, col, height, width]``: the chip's window in its source's pixel grid, which places score
rasters on that grid), plus ``geometry``: the chip footprint as a WKB polygon in longitude/latitude. Files written by
:func:`write_embedding_shard` carry GeoParquet 1.1 metadata, so GIS tools (GeoPandas, QGIS, DuckDB spatial)
open them as a layer, and ``datasets`` loads them as usual.

Patch tokens (``outputs`` with ``"patches"``) are stored compactly: ``patch_embeddings`` is binary, the ``(h, w, D)``
tokens in grid order (row-major, the patch at the chip's top-left first) as little-endian float16
(:data:`PATCH_DTYPE`), ``patch_grid`` is ``[h, w]`` (patches down and across, chip pixels / patch size) and
``patch_nodata_fraction`` the ``h * w`` shares of nodata pixels, one per patch. That is ``h * w * D * 2`` bytes per
chip (:func:`patch_bytes_per_chip`): 2 MiB for a 256 px chip of Clay v1.5 (32 x 32 patches of 1024 values),
half of float32. :func:`decode_patch_embeddings` reads the column back as a ``(N, h, w, D)`` float16 array (shards
written before, with ``list<list<float>>`` tokens, decode too).

Raster input is tiled with ``edge="shift"`` by default (:func:`clay_hf.geodata.raster.iter_chips`): the margin at
the right and bottom edge that the stride leaves narrower than a chip is covered by a last chip moved inward (it
overlaps its neighbour), so every pixel of a scene is in a chip; ``edge="drop"`` leaves the margin out. The
folder's ``embedding_info.json`` and every shard's metadata record which (``edge`` in the split's settings).

Chips are grouped by band set before batching (the wavelengths are shared in a batch); within a group they
keep their input order. Every chip comes out once, in batch order.

Layout of an embedding folder written by :func:`embed_to_parquet` (``scripts/embed.py``)::

    emb/
      embedding_info.json                the model (name, fingerprint), dtype, outputs and, per split, the input
                                         and chipping settings; every later run into this folder must share them
      data/<split>/<unit>.parquet        one GeoParquet shard per work unit (a raster file or an input chip shard)
      .clay_embeddings/<split>/<unit>.json   a shard's record: rows, bytes, sha256 of its chip ids, settings hash
      .lock, .lock-rank<r>               the write lock of a running job (:func:`clay_hf.locking.output_lock`)

Unit names are stable across runs: a raster of an input folder is named by its path inside the folder
(``north__scene``), a single raster file given as INPUT by its stem and a short hash of its resolved path
(``scene-1a2b3c4d``), a shard of an input chip dataset ``<split>-<stem>``.
:meth:`clay_hf.apps.search.EmbeddingIndex.from_parquet` reads such a folder back as a searchable index.

Resume rule: a shard is finished only when its record exists and matches it (same byte count, a readable
Parquet footer with the recorded row count, the same sha256 over its ``chip_id`` column, and this run's
settings); the record is written, atomically, after the shard. A shard without a matching record (truncated,
damaged, a leftover of an interrupted run) is logged and embedded again; a missing shard is simply embedded.
A folder made by another model (by :func:`model_fingerprint`), dtype or ``outputs``, or a split chipped with
other settings, is refused with an :class:`~clay_hf.errors.OutputExistsError` naming both, as is a non-empty
folder without ``embedding_info.json``; ``overwrite=True`` (``--overwrite``) deletes what clay_hf wrote there
(the shards under ``data/``, the records, the info file) and starts again, and leaves other files alone. The
records and the lock are hidden, so ``datasets.load_dataset("parquet", data_dir=...)`` reads only the shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write_text
from ..errors import ChipDatasetError, ClayInputError, OutputExistsError
from ..geodata.chip_format import DEFAULT_MAX_NODATA, nodata_fraction
from ..image_processing_clay import ClayImageProcessor

__all__ = [
    "EMBEDDING_COLUMNS",
    "load_embedding_model",
    "embed_batch",
    "embed_chips",
    "embed_array",
    "embed_geotiff",
    "embed_dataset",
    "footprint_wkb",
    "geoparquet_metadata",
    "write_embedding_shard",
    "model_fingerprint",
    "embed_to_parquet",
    "PATCH_DTYPE",
    "DEFAULT_EDGE",
    "patch_bytes_per_chip",
    "decode_patch_embeddings",
    "INFO_FILE",
    "RECORDS_DIR",
]

logger = logging.getLogger(__name__)

EMBEDDING_COLUMNS = (
    "chip_id", "embedding", "mean_embedding", "patch_embeddings", "sensor", "datetime", "lat", "lon", "gsd",
    "bounds", "crs", "source", "nodata_fraction", "pixel_window", "patch_grid", "patch_nodata_fraction", "geometry",
)  # fmt: skip
OUTPUTS = ("cls", "mean", "patches")
PATCH_DTYPE = np.dtype("<f2")  # the stored patch tokens: little-endian float16
DEFAULT_EDGE = "shift"  # raster input: the margin narrower than a chip is covered by a chip moved inward
_MODEL_KEYS = ("pixel_values", "wavelengths", "gsd", "time", "latlon")


def load_embedding_model(
    name_or_path: str | os.PathLike, dtype: torch.dtype | str = torch.float32, device=None, backend: str = "auto"
):
    """``ClayModel`` from a folder or Hub id (a ``ClayForPreTraining`` folder works too), in eval mode.

    ``backend="onnx"`` (the default for a path ending in ``.onnx``) loads an exported encoder
    (:class:`clay_hf.onnx_runtime.OnnxClayModel`, onnxruntime on the CPU), which every function here takes too.
    """
    from ..modeling_clay import ClayModel

    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if backend == "onnx" or (backend == "auto" and os.fspath(name_or_path).lower().endswith(".onnx")):
        from ..onnx_runtime import load_onnx_encoder

        return load_onnx_encoder(name_or_path, dtype=dtype, device=device)
    model = ClayModel.from_pretrained(name_or_path, dtype=dtype).eval()
    return model.to(device) if device is not None else model


def _check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
    outputs = tuple(outputs)
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown or not outputs:
        raise ClayInputError(f"outputs must be a non-empty subset of {list(OUTPUTS)}, got {list(outputs)}")
    return outputs


def _placement(model) -> tuple[torch.device, torch.dtype]:
    """Where and in what dtype ``model`` takes pixels: a torch model's first parameter, or the ``device`` and
    ``dtype`` of another backend (:class:`clay_hf.onnx_runtime.OnnxClayModel`)."""
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters())
        return param.device, param.dtype
    return model.device, model.dtype


@torch.inference_mode()
def embed_batch(model, batch: dict[str, Any], outputs: Sequence[str] = ("cls",)) -> dict[str, torch.Tensor]:
    """One batch of model inputs -> float32 CPU tensors: ``embedding`` (B, D) and, on request,
    ``mean_embedding`` (B, D) and ``patch_embeddings`` (B, L, D)."""
    outputs = _check_outputs(outputs)
    device, dtype = _placement(model)
    inputs = {k: batch[k] for k in _MODEL_KEYS if batch.get(k) is not None}
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    hidden = model(**inputs).last_hidden_state  # (B, 1 + L, D)
    result = {}
    if "cls" in outputs:
        result["embedding"] = hidden[:, 0].float().cpu()  # (B, 1 + L, D) -> (B, D)
    if "mean" in outputs:
        result["mean_embedding"] = hidden[:, 1:].float().mean(dim=1).cpu()  # (B, L, D) -> (B, D)
    if "patches" in outputs:
        result["patch_embeddings"] = hidden[:, 1:].float().cpu()  # (B, L, D)
    return result


def embed_array(
    model,
    pixels: np.ndarray | torch.Tensor,
    processor: ClayImageProcessor | None = None,
    batch_size: int = 32,
    outputs: Sequence[str] = ("cls",),
    **processor_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Raw chips ``(B, C, H, W)`` (or one ``(C, H, W)``) of one band set -> embeddings, in batches.

    ``processor_kwargs`` go to :class:`ClayImageProcessor` once per batch (``sensor=``, or ``wavelengths=``,
    ``mean=``, ``std=``, ``gsd=``; ``datetimes=``, ``lat=``, ``lon=`` either one value or one per chip).
    """
    processor = processor or ClayImageProcessor(patch_size=model.config.patch_size)
    pixels = pixels if pixels.ndim == 4 else pixels[None]  # (C, H, W) -> (1, C, H, W)
    n = pixels.shape[0]
    per_chip = {k: v for k, v in processor_kwargs.items() if k in _PER_CHIP_KEYS and _is_per_chip(v, n)}
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, batch_size):
        kwargs = dict(processor_kwargs)
        kwargs.update({k: list(v)[start : start + batch_size] for k, v in per_chip.items()})
        batch = processor(pixels[start : start + batch_size], return_tensors="pt", **kwargs)
        for key, value in embed_batch(model, batch, outputs).items():
            parts.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in parts.items()}


_PER_CHIP_KEYS = ("datetimes", "lat", "lon", "gsd")


def _is_per_chip(value: Any, n: int) -> bool:
    """A sequence with one value per chip (sliced per batch); anything else applies to every chip."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.ndim == 1 and len(value) == n
    return isinstance(value, (list, tuple)) and len(value) == n


def embed_chips(
    model,
    chips: Iterable[dict[str, Any]],
    processor: ClayImageProcessor | None = None,
    batch_size: int = 32,
    outputs: Sequence[str] = ("cls",),
    progress=None,
) -> Iterator[dict[str, Any]]:
    """Chip records (:mod:`clay_hf.geodata.chip_format`) -> one embedding row per chip.

    Chips are bucketed by band set; a bucket is embedded when it holds ``batch_size`` chips, and what is left
    at the end is embedded too, so every chip comes out exactly once. ``progress`` (a tqdm bar) is advanced
    by the number of chips embedded.
    """
    from ..geodata.loader import band_set_key, collate_chips

    outputs = _check_outputs(outputs)
    processor = processor or ClayImageProcessor(patch_size=model.config.patch_size)
    buckets: dict[tuple, list[dict[str, Any]]] = {}

    def flush(samples: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        batch = collate_chips(samples, processor)
        result = embed_batch(model, batch, outputs)
        for i, chip in enumerate(samples):
            yield _row(chip, {k: v[i] for k, v in result.items()}, processor.patch_size)
        if progress is not None:
            progress.update(len(samples))

    for chip in chips:
        key = band_set_key(chip)
        bucket = buckets.setdefault(key, [])
        bucket.append(chip)
        if len(bucket) == batch_size:
            yield from flush(bucket)
            buckets[key] = []
    for bucket in buckets.values():
        if bucket:
            yield from flush(bucket)


def _row(chip: dict[str, Any], embedded: dict[str, torch.Tensor], patch_size: int | None = None) -> dict[str, Any]:
    bounds = chip.get("bounds")
    valid = chip.get("valid")
    height, width = np.shape(chip["pixels"])[-2:]
    window = [int(chip["row"]), int(chip["col"]), int(height), int(width)] if chip.get("row") is not None else None
    tokens = embedded.get("patch_embeddings")  # (L, D)
    grid = None
    if tokens is not None:
        grid = _patch_grid(tokens.shape[0], height, width, patch_size)
        tokens = tokens.numpy().astype(PATCH_DTYPE).reshape(*grid, -1)  # (L, D) -> (h, w, D) float16
    row = {
        "chip_id": chip["chip_id"],
        "embedding": embedded["embedding"].numpy() if "embedding" in embedded else None,
        "mean_embedding": embedded["mean_embedding"].numpy() if "mean_embedding" in embedded else None,
        "patch_embeddings": tokens,
        "patch_grid": list(grid) if grid is not None else None,
        "patch_nodata_fraction": _patch_nodata(valid, grid) if grid is not None else None,
        "pixel_window": window,
        "sensor": chip.get("sensor"),
        "datetime": chip.get("datetime"),
        "lat": _float_or_none(chip.get("lat")),
        "lon": _float_or_none(chip.get("lon")),
        "gsd": _float_or_none(chip.get("gsd")),
        "bounds": [float(b) for b in bounds] if bounds is not None else None,
        "crs": chip.get("crs"),
        "source": chip.get("source"),
        "nodata_fraction": nodata_fraction(valid),
        "geometry": footprint_wkb(bounds, chip.get("crs")) if bounds is not None and chip.get("crs") else None,
    }
    return row


def _patch_grid(num_patches: int, height: int, width: int, patch_size: int | None) -> tuple[int, int]:
    """(patches down, patches across) of a chip of ``height x width`` pixels whose tokens number ``num_patches``."""
    if patch_size:
        grid = (height // patch_size, width // patch_size)
        if grid[0] * grid[1] == num_patches:
            return grid
    side = round(float(np.sqrt(num_patches * height / width)))
    if side < 1 or num_patches % side:
        raise ClayInputError(f"{num_patches} patch tokens do not tile a {height}x{width} chip into a grid")
    return side, num_patches // side


def _patch_nodata(valid: np.ndarray | None, grid: tuple[int, int]) -> list[float]:
    """The share of nodata pixels of each patch of a ``valid`` (H, W) mask, in grid order (``h * w`` values)."""
    if valid is None:
        return [0.0] * (grid[0] * grid[1])
    h, w = grid
    valid = np.asarray(valid, dtype=bool)
    blocks = valid[: h * (valid.shape[0] // h), : w * (valid.shape[1] // w)]
    blocks = blocks.reshape(h, valid.shape[0] // h, w, valid.shape[1] // w)  # (H, W) -> (h, p, w, p)
    return (1.0 - blocks.mean(axis=(1, 3))).reshape(-1).astype(float).tolist()  # (h, w) -> (h * w,)


def patch_bytes_per_chip(grid: Sequence[int], dim: int) -> int:
    """Bytes of one chip's stored patch tokens: ``h * w * D`` float16 values."""
    return int(grid[0]) * int(grid[1]) * int(dim) * PATCH_DTYPE.itemsize


def decode_patch_embeddings(column: Any, grids: Any = None) -> np.ndarray:
    """A ``patch_embeddings`` column (an Arrow array or a list of rows) -> ``(N, h, w, D)`` float16.

    Args:
        column: the binary tokens :func:`write_embedding_shard` stores, or the ``list<list<float>>`` ``(L, D)``
            rows of shards written before (then ``h * w = L`` is taken from ``grids``, or a square grid).
        grids: the ``patch_grid`` column (``[h, w]`` per row); every row must share one grid.
    Raises:
        ClayInputError: rows of different grids or widths, or empty rows.
    """
    values = column.to_pylist() if hasattr(column, "to_pylist") else list(column)
    grids = grids.to_pylist() if hasattr(grids, "to_pylist") else grids
    if any(v is None for v in values):
        raise ClayInputError("the patch_embeddings column has empty rows; embed the input again with 'patches'")
    shapes = {tuple(g) for g in grids} if grids is not None else set()
    if len(shapes) > 1:
        raise ClayInputError(f"the rows hold patch grids of several sizes {sorted(shapes)}; read them apart")
    if not values:
        return np.zeros((0, 0, 0, 0), dtype=PATCH_DTYPE)
    if isinstance(values[0], (bytes, bytearray, memoryview)):
        if not shapes:
            raise ClayInputError("binary patch_embeddings need their patch_grid column to be decoded")
        ((h, w),) = shapes
        sizes = {len(v) for v in values}
        if len(sizes) != 1 or next(iter(sizes)) % (h * w * PATCH_DTYPE.itemsize):
            raise ClayInputError(f"patch_embeddings rows of {sorted(sizes)} bytes do not hold {h}x{w} float16 tokens")
        flat = np.frombuffer(b"".join(values), dtype=PATCH_DTYPE)
        return flat.reshape(len(values), h, w, -1)  # (N * h * w * D,) -> (N, h, w, D)
    tokens = np.asarray(values, dtype=np.float32)  # an older shard: (N, L, D)
    n, length, dim = tokens.shape
    h, w = next(iter(shapes)) if shapes else (int(round(np.sqrt(length))),) * 2
    return tokens.astype(PATCH_DTYPE).reshape(n, h, w, dim)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------------------
# GeoParquet
# --------------------------------------------------------------------------------------------------


def footprint_wkb(bounds: Sequence[float], crs: str) -> bytes:
    """A chip's ``(left, bottom, right, top)`` in ``crs`` -> WKB polygon in longitude/latitude (OGC:CRS84)."""
    from ..geodata.raster import bounds_to_wgs84

    west, south, east, north = bounds_to_wgs84(bounds, crs)
    ring = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    # WKB: little endian, type 3 (Polygon), 1 ring, 5 points of (x, y) doubles.
    return struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)


def geoparquet_metadata(bbox: list[float] | None) -> bytes:
    """The GeoParquet 1.1 ``geo`` key-value metadata of a table whose ``geometry`` column holds WKB polygons in
    longitude/latitude (:func:`footprint_wkb`), with the ``bbox`` (west, south, east, north) when known."""
    column = {"encoding": "WKB", "geometry_types": ["Polygon"]}  # crs omitted = OGC:CRS84 (lon/lat)
    if bbox is not None:
        column["bbox"] = bbox
    return json.dumps({"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}).encode()


def _arrow_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    def vectors(key: str, ndim: int):
        values = [r.get(key) for r in rows]
        if all(v is None for v in values):
            return None
        inner = pa.float32()
        typ = pa.list_(inner) if ndim == 1 else pa.list_(pa.list_(inner))
        return pa.array([None if v is None else v.tolist() for v in values], type=typ)

    columns = {"chip_id": pa.array([r["chip_id"] for r in rows], pa.string())}
    for key in ("embedding", "mean_embedding"):
        array = vectors(key, 1)
        if array is not None:
            columns[key] = array
    tokens = [r.get("patch_embeddings") for r in rows]
    if any(t is not None for t in tokens):  # (h, w, D) float16 each -> binary
        columns["patch_embeddings"] = pa.array(
            [None if t is None else np.ascontiguousarray(t, dtype=PATCH_DTYPE).tobytes() for t in tokens], pa.binary()
        )
        columns["patch_grid"] = pa.array([r.get("patch_grid") for r in rows], pa.list_(pa.int32()))
        columns["patch_nodata_fraction"] = pa.array(
            [r.get("patch_nodata_fraction") for r in rows], pa.list_(pa.float32())
        )
    columns.update(
        sensor=pa.array([r["sensor"] for r in rows], pa.string()),
        datetime=pa.array([r["datetime"] for r in rows], pa.string()),
        lat=pa.array([r["lat"] for r in rows], pa.float64()),
        lon=pa.array([r["lon"] for r in rows], pa.float64()),
        gsd=pa.array([r["gsd"] for r in rows], pa.float64()),
        bounds=pa.array([r["bounds"] for r in rows], pa.list_(pa.float64())),
        crs=pa.array([r["crs"] for r in rows], pa.string()),
        source=pa.array([r["source"] for r in rows], pa.string()),
        nodata_fraction=pa.array([r.get("nodata_fraction") for r in rows], pa.float64()),
        pixel_window=pa.array([r.get("pixel_window") for r in rows], pa.list_(pa.int32())),
        geometry=pa.array([r["geometry"] for r in rows], pa.binary()),
    )
    table = pa.table(columns)
    geoms = [r["geometry"] for r in rows if r["geometry"] is not None]
    bbox = None
    if geoms:
        coords = np.array([struct.unpack("<10d", g[13:]) for g in geoms]).reshape(-1, 5, 2)  # (N, 5 points, xy)
        bbox = [float(coords[..., 0].min()), float(coords[..., 1].min()), float(coords[..., 0].max()),
                float(coords[..., 1].max())]  # fmt: skip
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"geo": geoparquet_metadata(bbox)})


SHARD_METADATA_KEY = b"clay_embeddings"


def write_embedding_shard(rows: list[dict[str, Any]], path: str | os.PathLike,
                          metadata: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write embedding rows as one GeoParquet file, atomically (temporary file, then rename).

    ``metadata`` (JSON-serialisable: the model, dtype, outputs and settings that made the rows) is stored in the
    file's key-value metadata under ``clay_embeddings``.
    """
    import pyarrow.parquet as pq

    table = _arrow_table(rows)
    if metadata is not None:
        table = table.replace_schema_metadata({**table.schema.metadata, SHARD_METADATA_KEY: json.dumps(metadata)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def _to_dataset(rows: list[dict[str, Any]]):
    import datasets

    return datasets.Dataset(_arrow_table(rows)).with_format("numpy")


# --------------------------------------------------------------------------------------------------
# GeoTIFFs and chip datasets
# --------------------------------------------------------------------------------------------------


def iter_source_chips(
    source,
    chip_size: int = 256,
    stride: int | None = None,
    max_nodata_fraction: float = DEFAULT_MAX_NODATA,
    edge: str = DEFAULT_EDGE,
    **open_kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """Chips of one raster source (a path, a list of band files, a band-file folder, a STAC Item JSON or a
    ``SourceSpec``), windows read on demand; ``edge`` as in :func:`clay_hf.geodata.raster.iter_chips`."""
    from ..geodata.raster import iter_chips, open_source

    with open_source(source, **open_kwargs) as raster:
        yield from iter_chips(
            raster, chip_size=chip_size, stride=stride, max_nodata_fraction=max_nodata_fraction, edge=edge
        )


def embed_geotiff(
    model,
    source,
    chip_size: int = 256,
    stride: int | None = None,
    batch_size: int = 32,
    outputs: Sequence[str] = ("cls",),
    max_nodata_fraction: float = DEFAULT_MAX_NODATA,
    processor: ClayImageProcessor | None = None,
    edge: str = DEFAULT_EDGE,
    **open_kwargs: Any,
):
    """Tile a GeoTIFF (or band files, a band-file folder, a STAC Item, a ``SourceSpec``) into chips and embed
    them -> ``datasets.Dataset``.

    ``open_kwargs`` (``sensor=``, ``band_names=``, ``datetime=``, ``wavelengths_um=``, ``mean=``, ``std=``,
    ``resolution=``) describe the source where the file itself does not. ``edge="shift"`` (the default) covers
    the scene's margin with chips moved inward, ``"drop"`` leaves it out (see the module docstring).
    """
    chips = iter_source_chips(source, chip_size, stride, max_nodata_fraction, edge, **open_kwargs)
    return _to_dataset(list(embed_chips(model, chips, processor, batch_size, outputs)))


def iter_dataset_chips(path_or_hub_id, split: str = "train") -> Iterator[dict[str, Any]]:
    """Every chip of a chip dataset (folder or Hub id) in file order, decoded."""
    from ..geodata.chip_format import decode_chip
    from ..geodata.loader import load_chip_dataset

    for row in load_chip_dataset(path_or_hub_id, split=split, streaming=True):
        yield decode_chip(row)


def embed_dataset(model, path_or_hub_id, split: str = "train", batch_size: int = 32,
                  outputs: Sequence[str] = ("cls",), processor: ClayImageProcessor | None = None):  # fmt: skip
    """Embed every chip of a chip dataset (a folder from ``prepare_chips.py`` or a Hub id) -> ``datasets.Dataset``."""
    return _to_dataset(list(embed_chips(model, iter_dataset_chips(path_or_hub_id, split), processor, batch_size,
                                        outputs)))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# the sharded, resumable, multi-process job (scripts/embed.py)
# --------------------------------------------------------------------------------------------------

_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")


def _work_units(input_path: str, split: str, fields: dict[str, Any] | None = None) -> tuple[str, list[tuple[str, Any]]]:
    """INPUT -> (kind, [(unit name, unit)]): chip shards of a dataset, or raster sources; names are stable.

    Raster sources are the files of a folder (searched recursively), except that a folder of single-band files
    (Sentinel-2 ``*_B02.tif``...) or of STAC Item JSON is one source per product, as
    :func:`clay_hf.geodata.sources.sources_from_folder` finds them (``fields``: the source fields given, such as
    ``sensor``), and a STAC Item JSON as INPUT gives its sources.
    """
    path = Path(input_path)
    if path.is_file() and path.suffix.lower() in _RASTER_SUFFIXES:
        return "raster", [(_file_unit_name(path), path)]
    if path.is_file() and path.suffix.lower() == ".json":
        from ..geodata.sources import sources_from_path

        specs = sources_from_path(path, **(fields or {}))
        return "raster", [(_safe_stem(Path(spec.name)), spec) for spec in specs]
    if path.is_dir():
        if (path / "manifest.json").is_file() or (path / "data").is_dir():
            from ..geodata.loader import list_shard_files

            shards = [Path(f) for f in list_shard_files(path, split)]
            return "chips", [(f"{split}-{p.stem}", p) for p in shards]
        units = _folder_units(path, fields or {})
        if units:
            return "raster", units
        raise ClayInputError(f"{path} holds neither GeoTIFFs ({', '.join(_RASTER_SUFFIXES)}) nor a chip dataset")
    if path.exists() or str(input_path).startswith((".", "/", "~")):
        raise ClayInputError(
            f"{input_path} is not a GeoTIFF, a folder of GeoTIFFs, a band-file folder, a STAC Item or a chip dataset "
            "folder"
            if path.exists()
            else f"{input_path} does not exist; check the path (a GeoTIFF, a folder of GeoTIFFs, a chip dataset folder or a Hub dataset id)"
        )
    from huggingface_hub import HfApi

    files = sorted(
        f for f in HfApi().list_repo_files(str(input_path), repo_type="dataset")
        if f.endswith(".parquet") and f"/{split}/" in f"/{f}"
    )  # fmt: skip
    if not files:
        raise ClayInputError(f"the Hub dataset {input_path!r} has no Parquet files for split {split!r}")
    return "hub", [(f"{split}-{Path(f).stem}", f) for f in files]


def _folder_units(folder: Path, fields: dict[str, Any]) -> list[tuple[str, Any]]:
    """The raster units of a folder: each multi-band file, and each sub-folder of single-band files (or of STAC
    JSON) as one product (named by its path inside ``folder``)."""
    from ..geodata.raster import band_count
    from ..geodata.sources import _is_stac_json, sources_from_folder

    units: list[tuple[str, Any]] = []
    for directory in sorted({folder, *(p for p in folder.rglob("*") if p.is_dir())}):
        files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
        rasters = [p for p in files if p.suffix.lower() in _RASTER_SUFFIXES]
        stac = [p for p in files if p.suffix.lower() == ".json" and _is_stac_json(p)]
        if stac or (len(rasters) > 1 and all(band_count(p) == 1 for p in rasters)):
            prefix = _safe_stem(directory.relative_to(folder)) if directory != folder else ""
            for spec in sources_from_folder(directory, **fields):
                name = _safe_stem(Path(spec.name)) if stac or not prefix else prefix
                units.append((name, spec))
            continue
        units.extend((_safe_stem(p.relative_to(folder)), p) for p in rasters)
    return units


def _safe_stem(path: Path) -> str:
    text = str(path.with_suffix("")).replace(os.sep, "__")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _file_unit_name(path: Path) -> str:
    """The unit name of one raster file given as INPUT: its stem and a short hash of its resolved path
    (``scene-1a2b3c4d``), the same from any working folder and for any spelling of the path, so a rerun resumes."""
    digest = hashlib.sha256(os.fspath(path.resolve()).encode()).hexdigest()[:8]
    return f"{_safe_stem(Path(path.stem))}-{digest}"


def _unit_chips(kind: str, unit: Any, input_path: str, chip_size: int, stride: int | None,
                max_nodata_fraction: float, edge: str, open_kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:  # fmt: skip
    if kind == "raster":
        yield from iter_source_chips(unit, chip_size, stride, max_nodata_fraction, edge, **open_kwargs)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..geodata.chip_format import decode_chip

    local = unit
    if kind == "hub":
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(input_path, unit, repo_type="dataset")
    try:
        parquet = pq.ParquetFile(local)
        groups = (parquet.read_row_group(group) for group in range(parquet.num_row_groups))
        for table in groups:
            for row in table.to_pylist():
                yield decode_chip(row)
    except (OSError, ValueError, pa.ArrowException) as err:
        if isinstance(err, ChipDatasetError):
            raise
        raise ChipDatasetError(
            f"chip shard {os.fspath(local)} cannot be read: it is truncated, damaged or not a Parquet file ({err}). "
            "Rebuild the chip dataset (scripts/prepare_chips.py), or download the shard again"
        ) from err


# What clay_hf writes into an embedding folder (see the module docstring).
INFO_FILE = "embedding_info.json"
RECORDS_DIR = ".clay_embeddings"
_INFO_FORMAT = "clay_hf embeddings 1"
# Entries a run into a fresh folder makes before its info file exists: the locks and the info file's temporary.
_OWN_EARLY_ENTRY = re.compile(rf"\.lock(-rank\d+)?(\.json)?|\.{re.escape(INFO_FILE)}\..*\.tmp")
# A shard or record name, or atomic_path's temporary of one: ".<name>.<ext>.<random>.tmp".
_UNIT_FILE = re.compile(r"(?:\.(?P<tmp>.+)\.(?:parquet|json)\..+\.tmp|(?P<name>.+)\.(?:parquet|json))")


def model_fingerprint(model) -> str:
    """sha256 over the model's architecture (its Clay config fields) and its state dict as loaded.

    Every tensor's name, dtype, shape and bytes go in, in name order, so two models of one architecture with
    other weights differ, and every reload of one folder in one dtype gives the same hex digest. A backend that is
    not a torch model (an exported ONNX file) gives its own (``onnx:`` and the file's sha256).
    """
    if not isinstance(model, torch.nn.Module):
        return model.model_fingerprint()
    from transformers import PreTrainedConfig

    base = set(PreTrainedConfig().to_dict())
    architecture = {k: v for k, v in model.config.to_dict().items() if k not in base and not k.startswith("_")}
    digest = hashlib.sha256(json.dumps({"model_type": model.config.model_type, **architecture},
                                       sort_keys=True).encode())  # fmt: skip
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"\n{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _settings_digest(info: dict[str, Any], split: str) -> str:
    """sha256 of what makes this split's rows: the model, dtype, outputs and the split's chipping settings."""
    split_info = {k: v for k, v in info["splits"][split].items() if k != "input"}
    keyed = {"model": info["model"]["fingerprint"], "dtype": info["dtype"], "outputs": info["outputs"],
             "split": split, **split_info}  # fmt: skip
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def _chip_ids_digest(chip_ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(chip_ids).encode()).hexdigest()


def _describe(info: dict[str, Any]) -> str:
    model = info.get("model") or {}
    return (f"model {model.get('name_or_path')!r} (fingerprint {str(model.get('fingerprint'))[:12]}, "
            f"{info.get('dtype')}, outputs {' '.join(info.get('outputs') or [])})")  # fmt: skip


def _read_info(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OutputExistsError(
            f"{path} cannot be read ({err}); it should record the model that made {output_dir}. Choose another "
            "--output folder, or pass --overwrite (overwrite=True) to start again",
            path=str(output_dir),
        ) from err
    if not isinstance(info, dict) or info.get("format") != _INFO_FORMAT:
        raise OutputExistsError(
            f"{path} is not an embedding record of clay_hf (expected format {_INFO_FORMAT!r}); choose another "
            "--output folder, or pass --overwrite (overwrite=True) to start again",
            path=str(output_dir),
        )
    return info


def _check_info(output_dir: Path, info: dict[str, Any], split: str, overwrite: bool) -> dict[str, Any]:
    """The info file this run leaves in ``output_dir``; raise if the folder holds another model's embeddings.

    Every rank of a job calls it and writes the same info, so it needs no coordination between ranks.
    """
    if overwrite:
        return info
    previous = _read_info(output_dir)
    if previous is None:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in output_dir.iterdir()
                         if not _OWN_EARLY_ENTRY.fullmatch(p.name))  # fmt: skip
        if INFO_FILE in entries:  # another rank of this job wrote it since: compare with it
            return _check_info(output_dir, info, split, overwrite)
        if entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise OutputExistsError(
                f"{output_dir} is not empty (it holds {shown}) and has no {INFO_FILE}, so it is not an embedding "
                "folder written by clay_hf (or by an older version). Choose another --output folder, or pass "
                "--overwrite (overwrite=True) to write into it (its Parquet shards under data/ are deleted first)",
                path=str(output_dir),
            )
        return info
    changed = [key for key in ("dtype", "outputs") if previous.get(key) != info[key]]
    if (previous.get("model") or {}).get("fingerprint") != info["model"]["fingerprint"]:
        changed.insert(0, "model")
    if changed:
        raise OutputExistsError(
            f"{output_dir} was written by {_describe(previous)}; this run uses {_describe(info)} (other "
            f"{', '.join(changed)}). Choose another --output folder, or pass --overwrite (overwrite=True) to delete "
            "those embeddings and start again",
            path=str(output_dir),
        )
    merged = {**previous, "splits": dict(previous.get("splits") or {})}
    before = merged["splits"].get(split)
    now = info["splits"][split]
    if before is None:
        merged["splits"][split] = now
        return merged
    diffs = [f"{k} {before.get(k)!r} there vs {now[k]!r} now" for k in now if k != "input" and before.get(k) != now[k]]
    if diffs:
        raise OutputExistsError(
            f"split {split!r} of {output_dir} was embedded with other settings ({'; '.join(diffs)}). Use the same "
            "settings to resume it, choose another --output folder, or pass --overwrite (overwrite=True) to start "
            "again",
            path=str(output_dir),
        )
    return merged


def _remove_previous(output_dir: Path, split: str, names: list[str], rank: int, world_size: int) -> list[str]:
    """``overwrite``: delete the shards, records and their temporaries clay_hf wrote in ``output_dir``.

    Rank ``r`` deletes the files of its own units; rank 0 also deletes every other one except the units of the
    other ranks of this job, so no rank ever deletes a file another rank of the job is writing.
    """
    mine = set(names[rank::world_size])
    others = set(names) - mine
    removed = []
    for pattern in ("data/*/*.parquet", "data/*/.*.parquet.*.tmp", f"{RECORDS_DIR}/*/*.json",
                    f"{RECORDS_DIR}/*/.*.json.*.tmp"):  # fmt: skip
        for path in sorted(output_dir.glob(pattern)):
            match = _UNIT_FILE.fullmatch(path.name)
            unit = (match["tmp"] or match["name"]) if match else path.name
            here = path.parent.name == split
            if (here and unit in mine) or (rank == 0 and not (here and unit in others)):
                path.unlink(missing_ok=True)
                removed.append(str(path))
    if removed:
        logger.warning("overwrite: removed %d file(s) of earlier embeddings from %s", len(removed), output_dir)
    return removed


def _damage(target: Path, record_path: Path, settings: str) -> str | None:
    """None when ``target`` is a finished shard of this run, else why it is not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no record of a finished write (a leftover of an interrupted run, or not written by clay_hf)"
    except (OSError, ValueError) as err:
        return f"its record {record_path} cannot be read ({err})"
    if not isinstance(record, dict) or record.get("settings_sha256") != settings:
        return f"its record {record_path} is of other settings"
    size = target.stat().st_size
    if size != record.get("bytes"):
        return f"it has {size} bytes, {record.get('bytes')} were written"
    try:
        parquet = pq.ParquetFile(target)
        rows = parquet.metadata.num_rows
        chip_ids = parquet.read(columns=["chip_id"])["chip_id"].to_pylist()
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        return f"it cannot be read as Parquet ({err})"
    if rows != record.get("rows"):
        return f"it has {rows} rows, {record.get('rows')} were written"
    if _chip_ids_digest(chip_ids) != record.get("chip_ids_sha256"):
        return "its chip ids are not the ones written"
    return None


def embed_to_parquet(
    input_path: str | os.PathLike,
    model,
    output_dir: str | os.PathLike,
    batch_size: int = 32,
    outputs: Sequence[str] = ("cls",),
    split: str = "train",
    chip_size: int = 256,
    stride: int | None = None,
    max_nodata_fraction: float = DEFAULT_MAX_NODATA,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    edge: str = DEFAULT_EDGE,
    **open_kwargs: Any,
) -> dict[str, Any]:
    """Embed INPUT (a GeoTIFF, a folder of them, a band-file folder, a STAC Item JSON, a chip dataset folder or a
    Hub dataset id) into GeoParquet shards.

    One output shard per work unit (a raster file, or an input chip shard), at
    ``output_dir/data/{split}/{unit}.parquet``. Process ``rank`` of ``world_size`` takes units ``rank::world_size``,
    so processes write disjoint shards that together hold every chip once. A shard whose record matches it is
    finished and skipped on a rerun; one that does not (truncated, damaged, without a record) is embedded again
    (the resume rule and the folder layout are in the module docstring). The whole call holds the folder's write
    lock (one per rank), so two jobs never write into one folder at once.

    Args:
        overwrite: delete the embeddings clay_hf wrote in ``output_dir`` (shards, records, info file) and start
            again, instead of refusing a folder made by another model, dtype, ``outputs`` or chipping settings,
            or a non-empty folder without ``embedding_info.json``. Other files are left alone.
        edge: raster input: ``"shift"`` covers the margin narrower than a chip with chips moved inward, ``"drop"``
            leaves it out (:func:`clay_hf.geodata.raster.iter_chips`); recorded in the split's settings.

    Returns:
        For this process: ``written`` (shards written now), ``skipped`` (finished before), ``chips`` (embedded
        now), ``rank``, ``world_size``, ``units`` (of the whole job), ``rewritten`` (the written shards that
        replaced a damaged one), ``removed`` (files deleted by ``overwrite``), ``info`` (the info file's path) and
        ``model_fingerprint``, and with ``"patches"`` in ``outputs`` ``patch_bytes_per_chip`` (the stored float16
        tokens of one chip, None when no chip was embedded now).

    Raises:
        OutputExistsError: ``output_dir`` holds embeddings of another model or settings, or other files.
        OutputLockedError: another job is writing into ``output_dir``.
        ChipDatasetError: an input chip shard that cannot be read (named in the message).
    """
    from tqdm.auto import tqdm

    from ..locking import output_lock

    if rank is None or world_size is None:
        from ..distributed import rank_and_world_size

        rank, world_size = rank_and_world_size()
    from ..geodata.raster import EDGE_MODES
    from ..provenance import model_provenance

    outputs = _check_outputs(outputs)
    if edge not in EDGE_MODES:
        raise ClayInputError(f"edge must be one of {list(EDGE_MODES)}, got {edge!r}")
    kind, units = _work_units(str(input_path), split, open_kwargs)
    output_dir = Path(output_dir)
    chipping = {"chip_size": chip_size, "stride": stride, "max_nodata_fraction": max_nodata_fraction,
                "edge": edge, "overrides": _jsonable(open_kwargs)} if kind == "raster" else {}  # fmt: skip
    info = {
        "format": _INFO_FORMAT,
        "model": {
            "name_or_path": str(getattr(model, "name_or_path", "")),
            "fingerprint": model_fingerprint(model),
            "label": model_provenance(model).label,
        },
        "dtype": str(_placement(model)[1]).removeprefix("torch."),
        "outputs": list(outputs),
        "splits": {split: {"input": os.fspath(input_path), "kind": kind, **chipping}},
    }
    with output_lock(output_dir, job="embedding run", rank=rank):
        new_info = _check_info(output_dir, info, split, overwrite)
        removed = _remove_previous(output_dir, split, [n for n, _ in units], rank, world_size) if overwrite else []
        if overwrite or _read_info(output_dir) != new_info:  # a no-op rerun leaves the file as it was
            atomic_write_text(output_dir / INFO_FILE, json.dumps(new_info, indent=1) + "\n")
        settings = _settings_digest(new_info, split)
        shard_metadata = {k: v for k, v in info.items() if k != "splits"}
        shard_metadata.update(split=split, settings=info["splits"][split])
        folder = output_dir / "data" / split
        records = output_dir / RECORDS_DIR / split
        folder.mkdir(parents=True, exist_ok=True)
        records.mkdir(parents=True, exist_ok=True)
        processor = ClayImageProcessor(patch_size=model.config.patch_size)
        written, skipped, rewritten, chips, patch_bytes = [], [], [], 0, None
        bar = tqdm(desc=f"embedding (rank {rank})", unit="chip", disable=not progress, dynamic_ncols=True)
        try:
            for name, unit in units[rank::world_size]:
                target, record_path = folder / f"{name}.parquet", records / f"{name}.json"
                damaged = _damage(target, record_path, settings) if target.is_file() else None
                if target.is_file() and damaged is None:
                    skipped.append(str(target))
                    continue
                if damaged is not None:
                    logger.warning("shard %s is damaged or unfinished (%s); embedding it again", target, damaged)
                source_chips = _unit_chips(kind, unit, str(input_path), chip_size, stride, max_nodata_fraction,
                                           edge, open_kwargs)  # fmt: skip
                rows = list(embed_chips(model, source_chips, processor, batch_size, outputs, progress=bar))
                if not rows:
                    logger.warning("no chips in %s (all nodata, or smaller than one chip); nothing written", unit)
                    if damaged is not None:  # nothing to put in its place: a damaged shard must not stay readable
                        target.unlink()
                    continue
                write_embedding_shard(rows, target, metadata={**shard_metadata, "unit": name})
                record = {
                    "shard": target.relative_to(output_dir).as_posix(),
                    "rows": len(rows),
                    "bytes": target.stat().st_size,
                    "chip_ids_sha256": _chip_ids_digest([r["chip_id"] for r in rows]),
                    "settings_sha256": settings,
                }
                atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
                written.append(str(target))
                if damaged is not None:
                    rewritten.append(str(target))
                chips += len(rows)
                if rows[0].get("patch_embeddings") is not None:
                    patch_bytes = int(rows[0]["patch_embeddings"].nbytes)
                logger.info("wrote %s (%d chips)", target, len(rows))
        finally:
            bar.close()
    return {"written": written, "skipped": skipped, "chips": chips, "rank": rank, "world_size": world_size,
            "units": len(units), "rewritten": rewritten, "removed": removed, "info": str(output_dir / INFO_FILE),
            "model_fingerprint": info["model"]["fingerprint"],
            **({"patch_bytes_per_chip": patch_bytes} if "patches" in outputs else {})}  # fmt: skip
