"""The chip record: one chip of imagery and its metadata, in memory and on disk. This module owns the format.

:meth:`clay_hf.geodata.raster.RasterSource.read_chip` makes a chip record, :func:`encode_chip` turns it into one
Parquet row of :func:`chip_schema` (what :mod:`clay_hf.geodata.builder` writes), :func:`decode_chip` turns a
row back into the record (what :mod:`clay_hf.geodata.loader` and :mod:`clay_hf.apps.embeddings` read). The Space
embeds chip records straight from rasters. Every transform after reading takes and returns this dict.

The chip record (a dict):

==================  ====================  ===================================================================
key                 type                  meaning
==================  ====================  ===================================================================
``pixels``          (C, H, W) ndarray     band values in the files' dtype (the common dtype when files differ)
``band_names``      list[str]             (C,) canonical sensor-table names when the sensor is known
``sensor``          str | None            canonical sensor-table name, ``None`` for a sensor not in the table
``wavelengths``     list[float] | None    (C,) central wavelengths in micrometres (``None``: not known)
``mean``, ``std``   list[float] | None    (C,) normalisation of ``(x - mean) / std`` (table or explicit)
``gsd``             float                 ground sample distance of the chip grid in metres
``lat``, ``lon``    float                 WGS84 degrees of the chip centre
``datetime``        str | None            acquisition time, ISO 8601 in UTC without zone ("2017-02-16T10:21:01"
                                          or a date "2008-04-27"), ``None`` when unknown
``bounds``          tuple[float] x 4      (left, bottom, right, top) in ``crs``
``crs``             str                   the grid CRS ("EPSG:32633", or WKT)
``source``          str                   the source name (stable, filesystem-safe)
``license``         str | None            licence of the imagery
``row``, ``col``    int                   chip origin (top-left pixel) in the source grid
``valid``           (H, W) bool ndarray   False where any band is nodata (or the QA raster marks fill)
``cloud_fraction``  float | None          fraction of valid pixels flagged cloud or shadow; ``None``: no mask
``chip_id``         str                   ``f"{source}/{row}_{col}"``: unique within a source and stable
``platform``        str | None            the satellite ("landsat-7", "sentinel-2a"), when known
``decibels``        bool                  SAR values already in decibels: pass ``convert_to_db=False`` to the
                                          processor (:func:`clay_hf.geodata.loader.processor_kwargs` does)
``radiometric_      str                   what the reader did about the radiometric offset of Sentinel-2
offset``                                  processing baseline 04.00 and later (+1000 DN): ``"removed"`` (the
                                          files carried it; ``pixels`` have it subtracted, the convention the
                                          Clay v1.5 normalisation was computed on), ``"kept"`` (the files
                                          carried it and ``harmonize_offset=False`` kept it), ``"none"`` (the
                                          files carry no offset: an earlier baseline, an archive that removed
                                          it, another sensor), ``"unknown"`` (baseline and date unknown, or a
                                          row written before this key existed)
==================  ====================  ===================================================================

Shapes: C bands, H x W chip in pixels.

On disk (one Parquet row per chip, :func:`chip_schema`) the columns are the same keys, except that ``valid`` is
stored as ``valid_mask`` and ``pixels`` as bytes, shape and dtype:

==================  ====================  ===================================================================
column              Arrow type            holds
==================  ====================  ===================================================================
``pixels``          binary                the C*H*W values, little-endian, in their native dtype
``shape``           list<int32>           ``[C, H, W]``
``dtype``           string                the numpy name (``uint16``, ``int16``, ``float32``...)
``valid_mask``      binary | null         ``np.packbits`` of ``valid`` (H, W); null when every pixel is valid
==================  ====================  ===================================================================

The lists are ``list<double>`` (``list<string>`` for ``band_names``), ``row`` and ``col`` int32, ``decibels``
bool, the rest string or double, null where the record has ``None``. ``radiometric_offset`` is the last column;
shards written before it existed have no such column (or a null in it) and decode as ``"unknown"``.

Why bytes + shape + dtype rather than a ``datasets.Array3D`` feature: one build mixes band counts (a
10-band Sentinel-2 chip next to a 6-band Landsat one), dtypes (uint16 reflectance, float32 backscatter)
and, across builds, chip sizes. ``Array3D`` fixes the dtype and H, W for the whole dataset, and every
shard must share one Arrow schema for ``load_dataset("parquet", streaming=True)``; a binary column does
not care. It is plain Arrow (pyarrow, DuckDB and pandas read it without datasets' extension types), it is
bit-exact in the native dtype, and decoding is one ``np.frombuffer`` (:func:`decode_chip`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ChipDatasetError

__all__ = ["DEFAULT_MAX_NODATA", "RADIOMETRIC_OFFSETS", "chip_schema", "encode_chip", "decode_chip", "nodata_fraction"]

#: The values of a chip's ``radiometric_offset`` (the table in the module docstring).
RADIOMETRIC_OFFSETS = ("removed", "kept", "none", "unknown")

#: The one default for the largest fraction of nodata pixels a chip may hold, wherever chips are made or ranked
#: (chip building, embedding, similarity search, scene search). A quarter: edge chips with a sliver of nodata
#: are kept, while a chip that is a third or more nodata (whose embedding then mostly describes the fill) is
#: dropped; such chips otherwise match each other at cosine ~1.0 and top every search they enter.
DEFAULT_MAX_NODATA = 0.25


def nodata_fraction(valid: np.ndarray | None) -> float:
    """The fraction of pixels that are nodata in a chip's ``valid`` mask (0.0 when there is no mask)."""
    if valid is None:
        return 0.0
    valid = np.asarray(valid, dtype=bool)
    return float(1.0 - valid.mean()) if valid.size else 0.0


@functools.cache
def chip_schema():
    """The Arrow schema of every shard: explicit, so shards with all-null columns still share one schema."""
    import pyarrow as pa

    return pa.schema(
        [
            ("chip_id", pa.string()),
            ("pixels", pa.binary()),  # (C, H, W) little-endian bytes of `dtype`
            ("shape", pa.list_(pa.int32())),  # [C, H, W]
            ("dtype", pa.string()),  # numpy name: uint16, int16, float32...
            ("valid_mask", pa.binary()),  # np.packbits of (H, W) bool; null when every pixel is valid
            ("sensor", pa.string()),
            ("band_names", pa.list_(pa.string())),  # (C,)
            ("wavelengths", pa.list_(pa.float64())),  # (C,) micrometres
            ("mean", pa.list_(pa.float64())),  # (C,)
            ("std", pa.list_(pa.float64())),  # (C,)
            ("gsd", pa.float64()),  # metres
            ("lat", pa.float64()),  # chip centre, WGS84 degrees
            ("lon", pa.float64()),
            ("datetime", pa.string()),  # ISO 8601
            ("bounds", pa.list_(pa.float64())),  # [left, bottom, right, top] in `crs`
            ("crs", pa.string()),
            ("source", pa.string()),
            ("license", pa.string()),
            ("row", pa.int32()),  # chip origin in the source grid, pixels
            ("col", pa.int32()),
            ("cloud_fraction", pa.float64()),
            ("platform", pa.string()),  # the satellite, e.g. "sentinel-2a", when known
            ("decibels", pa.bool_()),  # SAR values already in decibels (the processor must not convert again)
            ("radiometric_offset", pa.string()),  # removed / kept / none / unknown (Sentinel-2 baseline 04.00 offset)
        ]
    )


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def encode_chip(chip: Mapping[str, Any]) -> dict[str, Any]:
    """One chip record -> one Parquet row of :func:`chip_schema` (pixels as little-endian bytes of their native
    dtype, ``valid`` packed into ``valid_mask``)."""
    pixels = np.ascontiguousarray(chip["pixels"])  # (C, H, W)
    pixels = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    valid = chip.get("valid")
    all_valid = valid is None or bool(np.all(valid))
    return {
        "chip_id": str(chip["chip_id"]),
        "pixels": pixels.tobytes(),
        "shape": list(pixels.shape),
        "dtype": pixels.dtype.name,
        "valid_mask": None if all_valid else np.packbits(np.asarray(valid, dtype=bool)).tobytes(),
        "sensor": chip.get("sensor"),
        "band_names": [str(b) for b in chip["band_names"]],
        "wavelengths": _floats(chip.get("wavelengths")),
        "mean": _floats(chip.get("mean")),
        "std": _floats(chip.get("std")),
        "gsd": float(chip["gsd"]),
        "lat": float(chip["lat"]),
        "lon": float(chip["lon"]),
        "datetime": chip.get("datetime"),
        "bounds": _floats(chip["bounds"]),
        "crs": str(chip["crs"]),
        "source": str(chip["source"]),
        "license": chip.get("license"),
        "row": int(chip["row"]),
        "col": int(chip["col"]),
        "cloud_fraction": None if chip.get("cloud_fraction") is None else float(chip["cloud_fraction"]),
        "platform": chip.get("platform"),
        "decibels": bool(chip.get("decibels", False)),
        "radiometric_offset": _radiometric_offset(chip.get("radiometric_offset"), chip.get("chip_id")),
    }


def _radiometric_offset(value: Any, chip_id: Any) -> str:
    """A record's ``radiometric_offset``, checked; missing (rows and records from before the key) -> "unknown"."""
    if value is None:
        return "unknown"
    if value not in RADIOMETRIC_OFFSETS:
        raise ChipDatasetError(
            f"chip {chip_id!r}: radiometric_offset {value!r} is not one of {list(RADIOMETRIC_OFFSETS)}; the row was "
            "not written by clay_hf.geodata.chip_format.encode_chip: rebuild the shard with scripts/prepare_chips.py"
        )
    return str(value)


def decode_chip(row: dict[str, Any]) -> dict[str, Any]:
    """One Parquet row -> one chip record (the table in the module docstring); pixels bit-exact, no copy.

    Rows must come in datasets' default Python format: ``with_format("numpy")`` turns the binary ``pixels``
    into ``numpy.bytes_``, which drops trailing zero bytes (a chip ending in zeros would lose pixels).
    """
    chip_id = row.get("chip_id")
    shape = tuple(int(n) for n in row["shape"])  # (C, H, W)
    if len(shape) != 3 or min(shape) < 1:
        raise ChipDatasetError(
            f"chip {chip_id!r}: shape {list(shape)} is not (C, H, W) with three positive sizes; the shard is damaged "
            "or was not written by scripts/prepare_chips.py: rebuild it"
        )
    for key in ("band_names", "wavelengths", "mean", "std"):
        values = row.get(key)
        count = 0 if values is None else len(values)
        if (values is not None or key == "band_names") and count != shape[0]:
            raise ChipDatasetError(
                f"chip {chip_id!r}: {count} {key} for {shape[0]} bands (shape {list(shape)}); the row's "
                "metadata disagrees with its pixels: rebuild the shard with scripts/prepare_chips.py"
            )
    dtype = np.dtype(str(row["dtype"])).newbyteorder("<")
    if not isinstance(row["pixels"], (bytes, bytearray, memoryview)):
        raise ChipDatasetError(
            f"chip {chip_id!r}: pixels must be the row's bytes, got {type(row['pixels']).__name__}; "
            'read chip datasets in Python format: with_format("numpy") drops trailing zero bytes of binary columns'
        )
    if len(row["pixels"]) % dtype.itemsize or len(row["pixels"]) // dtype.itemsize != int(np.prod(shape)):
        raise ChipDatasetError(
            f"chip {chip_id!r}: {len(row['pixels'])} bytes of {row['dtype']} for shape {list(shape)}; "
            'the shard is damaged (rebuild it), or was read with with_format("numpy"), which drops trailing zero '
            "bytes: read it in Python format"
        )
    pixels = np.frombuffer(row["pixels"], dtype=dtype)
    pixels = pixels.reshape(shape)  # (C*H*W,) -> (C, H, W)
    if not dtype.isnative:
        pixels = pixels.astype(dtype.newbyteorder("="))
    if row.get("valid_mask") is not None:
        expected = -(-shape[1] * shape[2] // 8)  # one bit per pixel, rounded up to whole bytes
        if len(row["valid_mask"]) != expected:
            raise ChipDatasetError(
                f"chip {chip_id!r}: valid_mask has {len(row['valid_mask'])} bytes, expected {expected} for "
                f"{shape[1]} x {shape[2]} pixels; the shard is damaged: rebuild it with scripts/prepare_chips.py"
            )
        bits = np.frombuffer(row["valid_mask"], dtype=np.uint8)
        valid = np.unpackbits(bits, count=shape[1] * shape[2]).astype(bool).reshape(shape[1:])  # (H, W)
    else:
        valid = np.ones(shape[1:], dtype=bool)  # (H, W)
    sample = {k: v for k, v in row.items() if k not in ("pixels", "shape", "dtype", "valid_mask")}
    sample["pixels"], sample["valid"] = pixels, valid
    sample["radiometric_offset"] = _radiometric_offset(row.get("radiometric_offset"), chip_id)
    return sample
