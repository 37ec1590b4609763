"""Embeddings in one call: arrays, GeoTIFFs and chip datasets in; tensors, ``datasets.Dataset`` or GeoParquet out.

    >>> model = load_embedding_model("made-with-clay/Clay-v1.5-hf")          # or a converted folder
    >>> out = embed_array(model, chips, sensor="sentinel-2-l2a", datetimes="2024-06-01", lat=52.5, lon=13.4)
    >>> out["embedding"].shape                                             # (B, D): the cls token
    >>> ds = embed_geotiff(model, "scene.tif", sensor="sentinel-2-l2a", chip_size=256)   # a datasets.Dataset
    >>> ds = embed_dataset(model, "chips/")                                # a chip dataset folder or Hub id

One row per chip (:data:`EMBEDDING_COLUMNS`): ``chip_id``, ``embedding`` (the cls token, ``(D,)``), optionally
``mean_embedding`` (mean of the patch tokens) and ``patch_embeddings`` (``(L, D)`` in grid order), and the
chip's ``sensor``, ``datetime``, centre ``lat``/``lon``, ``gsd``, ``bounds`` and ``crs`` (the raster's), ``source``,
plus ``geometry``: the chip footprint as a WKB polygon in longitude/latitude. Files written by
:func:`write_embedding_shard` carry GeoParquet 1.1 metadata, so GIS tools (GeoPandas, QGIS, DuckDB spatial)
open them as a layer, and ``datasets`` loads them as usual.

Chips are grouped by band set before batching (the wavelengths are shared in a batch); within a group they
keep their input order. Every chip comes out once, in batch order.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .errors import ClayInputError
from .image_processing_clay import ClayImageProcessor

__all__ = [
    "EMBEDDING_COLUMNS",
    "load_embedding_model",
    "embed_batch",
    "embed_chips",
    "embed_array",
    "embed_geotiff",
    "embed_dataset",
    "footprint_wkb",
    "write_embedding_shard",
]

logger = logging.getLogger(__name__)

EMBEDDING_COLUMNS = (
    "chip_id", "embedding", "mean_embedding", "patch_embeddings", "sensor", "datetime", "lat", "lon", "gsd",
    "bounds", "crs", "source", "geometry",
)  # fmt: skip
OUTPUTS = ("cls", "mean", "patches")
_MODEL_KEYS = ("pixel_values", "wavelengths", "gsd", "time", "latlon")


def load_embedding_model(name_or_path: str | os.PathLike, dtype: torch.dtype | str = torch.float32, device=None):
    """``ClayModel`` from a folder or Hub id (a ``ClayForPreTraining`` folder works too), in eval mode."""
    from .modeling_clay import ClayModel

    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = ClayModel.from_pretrained(name_or_path, dtype=dtype).eval()
    return model.to(device) if device is not None else model


def _check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
    outputs = tuple(outputs)
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown or not outputs:
        raise ClayInputError(f"outputs must be a non-empty subset of {list(OUTPUTS)}, got {list(outputs)}")
    return outputs


@torch.inference_mode()
def embed_batch(model, batch: dict[str, Any], outputs: Sequence[str] = ("cls",)) -> dict[str, torch.Tensor]:
    """One batch of model inputs -> float32 CPU tensors: ``embedding`` (B, D) and, on request,
    ``mean_embedding`` (B, D) and ``patch_embeddings`` (B, L, D)."""
    outputs = _check_outputs(outputs)
    param = next(model.parameters())
    inputs = {k: batch[k] for k in _MODEL_KEYS if batch.get(k) is not None}
    inputs = {k: v.to(param.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
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
    """Chip dicts (:mod:`clay_hf.io` / :func:`clay_hf.data.decode_chip`) -> one embedding row per chip.

    Chips are bucketed by band set; a bucket is embedded when it holds ``batch_size`` chips, and what is left
    at the end is embedded too, so every chip comes out exactly once. ``progress`` (a tqdm bar) is advanced
    by the number of chips embedded.
    """
    from .data import band_set_key, collate_chips

    outputs = _check_outputs(outputs)
    processor = processor or ClayImageProcessor(patch_size=model.config.patch_size)
    buckets: dict[tuple, list[dict[str, Any]]] = {}

    def flush(samples: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        batch = collate_chips(samples, processor)
        result = embed_batch(model, batch, outputs)
        for i, chip in enumerate(samples):
            yield _row(chip, {k: v[i] for k, v in result.items()})
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


def _row(chip: dict[str, Any], embedded: dict[str, torch.Tensor]) -> dict[str, Any]:
    bounds = chip.get("bounds")
    row = {
        "chip_id": chip["chip_id"],
        "embedding": embedded["embedding"].numpy() if "embedding" in embedded else None,
        "mean_embedding": embedded["mean_embedding"].numpy() if "mean_embedding" in embedded else None,
        "patch_embeddings": embedded["patch_embeddings"].numpy() if "patch_embeddings" in embedded else None,
        "sensor": chip.get("sensor"),
        "datetime": chip.get("datetime"),
        "lat": _float_or_none(chip.get("lat")),
        "lon": _float_or_none(chip.get("lon")),
        "gsd": _float_or_none(chip.get("gsd")),
        "bounds": [float(b) for b in bounds] if bounds is not None else None,
        "crs": chip.get("crs"),
        "source": chip.get("source"),
        "geometry": footprint_wkb(bounds, chip.get("crs")) if bounds is not None and chip.get("crs") else None,
    }
    return row


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------------------
# GeoParquet
# --------------------------------------------------------------------------------------------------


def footprint_wkb(bounds: Sequence[float], crs: str) -> bytes:
    """A chip's ``(left, bottom, right, top)`` in ``crs`` -> WKB polygon in longitude/latitude (OGC:CRS84)."""
    from .io import bounds_to_wgs84

    west, south, east, north = bounds_to_wgs84(bounds, crs)
    ring = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    # WKB: little endian, type 3 (Polygon), 1 ring, 5 points of (x, y) doubles.
    return struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)


def _geo_metadata(bbox: list[float] | None) -> bytes:
    column = {"encoding": "WKB", "geometry_types": ["Polygon"]}  # crs omitted = OGC:CRS84 (lon/lat)
    if bbox is not None:
        column["bbox"] = bbox
    return json.dumps({"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}).encode()


def _arrow_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    def vectors(key: str, ndim: int):
        values = [r[key] for r in rows]
        if all(v is None for v in values):
            return None
        inner = pa.float32()
        typ = pa.list_(inner) if ndim == 1 else pa.list_(pa.list_(inner))
        return pa.array([None if v is None else v.tolist() for v in values], type=typ)

    columns = {"chip_id": pa.array([r["chip_id"] for r in rows], pa.string())}
    for key, ndim in (("embedding", 1), ("mean_embedding", 1), ("patch_embeddings", 2)):
        array = vectors(key, ndim)
        if array is not None:
            columns[key] = array
    columns.update(
        sensor=pa.array([r["sensor"] for r in rows], pa.string()),
        datetime=pa.array([r["datetime"] for r in rows], pa.string()),
        lat=pa.array([r["lat"] for r in rows], pa.float64()),
        lon=pa.array([r["lon"] for r in rows], pa.float64()),
        gsd=pa.array([r["gsd"] for r in rows], pa.float64()),
        bounds=pa.array([r["bounds"] for r in rows], pa.list_(pa.float64())),
        crs=pa.array([r["crs"] for r in rows], pa.string()),
        source=pa.array([r["source"] for r in rows], pa.string()),
        geometry=pa.array([r["geometry"] for r in rows], pa.binary()),
    )
    table = pa.table(columns)
    geoms = [r["geometry"] for r in rows if r["geometry"] is not None]
    bbox = None
    if geoms:
        coords = np.array([struct.unpack("<10d", g[13:]) for g in geoms]).reshape(-1, 5, 2)  # (N, 5 points, xy)
        bbox = [float(coords[..., 0].min()), float(coords[..., 1].min()), float(coords[..., 0].max()),
                float(coords[..., 1].max())]  # fmt: skip
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"geo": _geo_metadata(bbox)})


def write_embedding_shard(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write embedding rows as one GeoParquet file, atomically (temporary file, then rename)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(_arrow_table(rows), tmp)
    return Path(path)


def _to_dataset(rows: list[dict[str, Any]]):
    import datasets

    return datasets.Dataset(_arrow_table(rows)).with_format("numpy")


# --------------------------------------------------------------------------------------------------
# GeoTIFFs and chip datasets
# --------------------------------------------------------------------------------------------------


def iter_source_chips(source, chip_size: int = 256, stride: int | None = None, max_nodata_fraction: float = 0.5,
                      **open_kwargs: Any) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Chips of one raster source (a path, a list of band files or a ``SourceSpec``), windows read on demand."""
    from .io import iter_chips, open_source

    with open_source(source, **open_kwargs) as raster:
        yield from iter_chips(raster, chip_size=chip_size, stride=stride, max_nodata_fraction=max_nodata_fraction)


def embed_geotiff(
    model,
    source,
    chip_size: int = 256,
    stride: int | None = None,
    batch_size: int = 32,
    outputs: Sequence[str] = ("cls",),
    max_nodata_fraction: float = 0.5,
    processor: ClayImageProcessor | None = None,
    **open_kwargs: Any,
):
    """Tile a GeoTIFF (or band files, or a ``SourceSpec``) into chips and embed them -> ``datasets.Dataset``.

    ``open_kwargs`` (``sensor=``, ``band_names=``, ``datetime=``, ``wavelengths_um=``, ``mean=``, ``std=``,
    ``resolution=``) describe the source where the file itself does not.
    """
    chips = iter_source_chips(source, chip_size, stride, max_nodata_fraction, **open_kwargs)
    return _to_dataset(list(embed_chips(model, chips, processor, batch_size, outputs)))


def iter_dataset_chips(path_or_hub_id, split: str = "train") -> Iterator[dict[str, Any]]:
    """Every chip of a chip dataset (folder or Hub id) in file order, decoded."""
    from .data import decode_chip, load_chip_dataset

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


def _work_units(input_path: str, split: str) -> tuple[str, list[tuple[str, Any]]]:
    """INPUT -> (kind, [(unit name, unit)]): chip shards of a dataset, or raster files; names are stable."""
    path = Path(input_path)
    if path.is_file() and path.suffix.lower() in _RASTER_SUFFIXES:
        return "raster", [(_safe_stem(path), path)]
    if path.is_dir():
        rasters = sorted(p for p in path.rglob("*") if p.suffix.lower() in _RASTER_SUFFIXES and p.is_file())
        if (path / "manifest.json").is_file() or (path / "data").is_dir():
            from .data import _shard_files

            shards = [Path(f) for f in _shard_files(path, split)]
            return "chips", [(f"{split}-{p.stem}", p) for p in shards]
        if rasters:
            return "raster", [(_safe_stem(p.relative_to(path)), p) for p in rasters]
        raise ClayInputError(f"{path} holds neither GeoTIFFs ({', '.join(_RASTER_SUFFIXES)}) nor a chip dataset")
    if path.exists() or str(input_path).startswith((".", "/", "~")):
        raise ClayInputError(f"{input_path} is not a GeoTIFF, a folder of GeoTIFFs or a chip dataset folder")
    from huggingface_hub import HfApi

    files = sorted(
        f for f in HfApi().list_repo_files(str(input_path), repo_type="dataset")
        if f.endswith(".parquet") and f"/{split}/" in f"/{f}"
    )  # fmt: skip
    if not files:
        raise ClayInputError(f"the Hub dataset {input_path!r} has no Parquet files for split {split!r}")
    return "hub", [(f"{split}-{Path(f).stem}", f) for f in files]


def _safe_stem(path: Path) -> str:
    text = str(path.with_suffix("")).replace(os.sep, "__")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _unit_chips(kind: str, unit: Any, input_path: str, chip_size: int, stride: int | None,
                max_nodata_fraction: float, open_kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:  # fmt: skip
    if kind == "raster":
        yield from iter_source_chips(unit, chip_size, stride, max_nodata_fraction, **open_kwargs)
        return
    import pyarrow.parquet as pq

    from .data import decode_chip

    local = unit
    if kind == "hub":
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(input_path, unit, repo_type="dataset")
    parquet = pq.ParquetFile(local)
    for group in range(parquet.num_row_groups):
        for row in parquet.read_row_group(group).to_pylist():
            yield decode_chip(row)


def embed_to_parquet(
    input_path: str | os.PathLike,
    model,
    output_dir: str | os.PathLike,
    batch_size: int = 32,
    outputs: Sequence[str] = ("cls",),
    split: str = "train",
    chip_size: int = 256,
    stride: int | None = None,
    max_nodata_fraction: float = 0.5,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    **open_kwargs: Any,
) -> dict[str, Any]:
    """Embed INPUT (a GeoTIFF, a folder of them, a chip dataset folder or a Hub dataset id) into GeoParquet shards.

    One output shard per work unit (a raster file, or an input chip shard), at
    ``output_dir/data/{split}/{unit}.parquet``. Process ``rank`` of ``world_size`` takes units ``rank::world_size``,
    so processes write disjoint shards that together hold every chip once. A shard that exists is finished
    (it was written atomically) and is skipped on a rerun.

    Returns:
        ``{"written": [...], "skipped": [...], "chips": n, "rank": r, "world_size": w}`` for this process.
    """
    from tqdm.auto import tqdm

    if rank is None or world_size is None:
        from .data import _default_rank_world

        rank, world_size = _default_rank_world()
    outputs = _check_outputs(outputs)
    kind, units = _work_units(str(input_path), split)
    folder = Path(output_dir) / "data" / split
    folder.mkdir(parents=True, exist_ok=True)
    mine = units[rank::world_size]
    processor = ClayImageProcessor(patch_size=model.config.patch_size)
    written, skipped, chips = [], [], 0
    bar = tqdm(desc=f"embedding (rank {rank})", unit="chip", disable=not progress, dynamic_ncols=True)
    try:
        for name, unit in mine:
            target = folder / f"{name}.parquet"
            if target.is_file():
                skipped.append(str(target))
                continue
            source_chips = _unit_chips(kind, unit, str(input_path), chip_size, stride, max_nodata_fraction,
                                       open_kwargs)  # fmt: skip
            rows = list(embed_chips(model, source_chips, processor, batch_size, outputs, progress=bar))
            if not rows:
                logger.warning("no chips in %s (all nodata, or smaller than one chip); nothing written", unit)
                continue
            write_embedding_shard(rows, target)
            written.append(str(target))
            chips += len(rows)
            logger.info("wrote %s (%d chips)", target, len(rows))
    finally:
        bar.close()
    return {"written": written, "skipped": skipped, "chips": chips, "rank": rank, "world_size": world_size,
            "units": len(units)}  # fmt: skip
