"""Reading rasters into chips: the only module that imports rasterio.

It returns plain numpy arrays plus metadata; everything after it is numpy/torch. Windows are read one
chip at a time (never a whole scene), and multi-file products (one file per band, at different
resolutions, as Sentinel-2 and Landsat ship) are resampled onto one grid at a chosen GSD.

    >>> spec = SourceSpec(paths=("s2_B02.tif", "s2_B03.tif", "s2_B04.tif"), sensor="sentinel-2-l2a")
    >>> with open_source(spec, resolution=10.0) as source:     # band names "B02".. -> blue, green, red
    ...     for chip in iter_chips(source, chip_size=256):
    ...         ...

A source is described by a :class:`~clay_hf.geodata.sources.SourceSpec` (found in paths, folders and STAC
Items by :mod:`clay_hf.geodata.sources`) and opened here as a :class:`RasterSource`. Metadata are taken,
first to last, from the spec's explicit fields (a STAC Item's ``eo:bands``, ``platform`` and ``datetime``
among them), from the files' tags (a ``SENSOR``/``PLATFORM`` tag, ``ACQUISITIONDATE``, ``TIFFTAG_DATETIME``,
band descriptions), from Landsat and Sentinel product ids in the file and folder names (``LC08_L2SP_...``,
``S2A_MSIL2A_...``, a SAFE's ``T33UUU_20170216T102101_B02``: sensor, level, date, processing baseline), and for
the sensor last from band names that only one sensor has (``B8A``, ``rededge1``); what none of them gives stays
``None`` for the user to pass. A file that says nothing but its band count and data type gets a proposal
(:attr:`RasterSource.sensor_proposal`, logged), never a guessed sensor. Band names and platforms are resolved
through the sensor table (:func:`clay_hf.sensors.map_band_names`, :func:`clay_hf.sensors.sensor_from_platform`).
Cloud masks are decoded by :data:`QA_DECODERS`.

**Sentinel-2 radiometric offset.** From processing baseline 04.00 (25 January 2022) Sentinel-2 L1C and L2A
digital numbers carry +1000 (``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET`` = -1000), so the same surface reads 1000 DN
brighter than in 2021 unless the archive removed it. The Clay v1.5 normalisation (``sensors.json``) was computed
on values without it: its Sentinel-2 chips came from Earth Search's ``sentinel-2-l2a`` COGs of 2018-2022 read as
they are (stacchip), and those COGs hold baseline-04.00 scenes with the offset already removed
(``earthsearch:boa_offset_applied``), the pre-2022 scenes never had it. The reader therefore harmonises to that
convention: with ``SourceSpec.harmonize_offset`` (default True) every valid value ``v`` of a source whose files
carry ``offset_dn`` DN becomes ``max(v - offset_dn, 1)`` (1, not 0: 0 is Sentinel-2's nodata); False keeps the
files' values. ``offset_dn`` comes, first to last, from the spec (a STAC item's ``earthsearch:boa_offset_applied``,
``s2:processing_baseline`` and ``raster:bands`` offset, :mod:`clay_hf.geodata.sources`), the files'
``BOA_ADD_OFFSET*``/``RADIO_ADD_OFFSET*`` or ``PROCESSING_BASELINE`` tags, the baseline in a product id
(``..._N0509_...``), and last the acquisition date (from 2022-01-25: 1000, logged: pass ``offset_dn=0`` for
files an archive already harmonised). Each chip records what was done (``radiometric_offset``:
``"removed"``, ``"kept"``, ``"none"`` or ``"unknown"``, :mod:`clay_hf.geodata.chip_format`).

Besides chips, the few other raster reads and writes of the package live here too: :func:`read_band` (a label
raster), :func:`rasterize_shapes` (polygons onto a grid), :func:`write_geotiff`, :func:`bounds_to_wgs84`,
:func:`transform_points`, and the map outputs: :func:`write_cog` (a whole array) and :class:`CogWriter` (window by
window, memory bounded by a window), both Cloud Optimized GeoTIFFs written atomically.

:meth:`RasterSource.read_chip` returns one chip dict: the chip record described once, with its on-disk form, in
:mod:`clay_hf.geodata.chip_format`.

Shapes: C bands, H x W chip in pixels. :func:`clay_hf.geodata.loader.processor_kwargs` turns a list of chips
that share a band set into the keyword arguments of :class:`~clay_hf.ClayImageProcessor`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    BandMismatchError,
    BandOverlapError,
    ChipSizeError,
    ClayInputError,
    CorruptRasterError,
    EmptyRasterError,
    MissingCRSError,
    RasterError,
    StacError,
)
from ..sensors import (
    get_sensor,
    map_band_names,
    product_id_from_paths,
    radiometric_offset_rule,
    sensor_from_platform,
    sensors_for_band_count,
    sensors_for_band_names,
)
from .chip_format import DEFAULT_MAX_NODATA
from .sources import SourceSpec, iso_datetime, sources_from_folder, sources_from_stac

__all__ = [
    "bounds_to_wgs84",
    "RasterSource",
    "QA_DECODERS",
    "open_source",
    "iter_chips",
    "sensor_from_tags",
    "band_count",
    "read_band",
    "rasterize_shapes",
    "write_geotiff",
    "write_cog",
    "CogWriter",
    "EDGE_MODES",
    "chip_origins",
    "transform_points",
    "read_tags",
]

logger = logging.getLogger(__name__)


def _rasterio():
    try:
        import rasterio
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading rasters needs rasterio: pip install 'clay_hf[data]'") from err
    return rasterio


# ---------------------------------------------------------------------------------------------- QA rasters


def _bits(qa: np.ndarray, first: int, count: int = 1) -> np.ndarray:
    return (qa.astype(np.int64) >> first) & ((1 << count) - 1)


# kind -> qa array -> (cloud or shadow, fill), both (H, W) bool.
QA_DECODERS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    # Fmask (ESPA Landsat C1 SR "cfmask"/"fmask"): 0 clear, 1 water, 2 shadow, 3 snow, 4 cloud, 255 fill.
    "fmask": lambda qa: (np.isin(qa, (2, 4)), qa == 255),
    # Landsat 8 pre-collection BQA: bit 0 designated fill, bits 14-15 cloud confidence (3 = high).
    "landsat8-bqa-pre-collection": lambda qa: (_bits(qa, 14, 2) == 3, _bits(qa, 0) == 1),
    # Landsat Collection 1 BQA: bit 0 fill, bit 4 cloud, bits 7-8 cloud-shadow confidence (3 = high).
    "landsat-c1-bqa": lambda qa: ((_bits(qa, 4) == 1) | (_bits(qa, 7, 2) == 3), _bits(qa, 0) == 1),
    # Landsat Collection 2 QA_PIXEL: bit 0 fill, 1 dilated cloud, 3 cloud, 4 cloud shadow.
    "landsat-c2-qa-pixel": lambda qa: (
        (_bits(qa, 1) | _bits(qa, 3) | _bits(qa, 4)) == 1,
        _bits(qa, 0) == 1,
    ),
    # Sentinel-2 scene classification: 0 no data, 3 cloud shadow, 8/9 cloud medium/high, 10 thin cirrus.
    "sentinel-2-scl": lambda qa: (np.isin(qa, (3, 8, 9, 10)), qa == 0),
    # Any mask where non-zero means cloud.
    "binary": lambda qa: (qa != 0, np.zeros(qa.shape, dtype=bool)),
}


def _parse_tag_datetime(text: str) -> str | None:
    text = re.sub(r"Z$", "+00:00", str(text).strip())  # Python 3.10's fromisoformat has no "Z"
    for pattern, fmt in (
        (r"^\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}$", "%Y:%m:%d %H:%M:%S"),  # TIFFTAG_DATETIME
        (r"^\d{8}$", "%Y%m%d"),
        (r"^\d{8}T\d{6}$", "%Y%m%dT%H%M%S"),
    ):
        if re.match(pattern, text):
            return iso_datetime(dt.datetime.strptime(text, fmt))
    try:
        return iso_datetime(text.replace(" ", "T") if len(text) > 10 else text)
    except ClayInputError:
        return None


# File tags read for metadata, first match wins. TIFFTAG_DATETIME is last: many writers put the file's
# creation time there rather than the acquisition time.
_DATETIME_TAGS = ("ACQUISITIONDATE", "ACQUISITION_DATE", "DATE_ACQUIRED", "ACQUISITION_TIME", "SENSING_TIME",
                  "SENSING_DATE", "DATETIME", "START_DATETIME", "TIFFTAG_DATETIME")  # fmt: skip
_SENSOR_TAGS = ("CLAY_SENSOR", "SENSOR", "PLATFORM", "SPACECRAFT_ID", "SPACECRAFT", "SATELLITE", "MISSION")
_LEVEL_TAGS = ("PROCESSING_LEVEL", "PRODUCT_TYPE", "DATA_TYPE", "COLLECTION", "PRODUCT_LEVEL")
_BASELINE_TAGS = ("PROCESSING_BASELINE", "PROCESSINGBASELINE", "BASELINE")

# The first bytes of files that GDAL may fail to open -> what they are (for "it is not a TIFF" messages).
_MAGIC = (
    (b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"), (b"II+\x00", "a BigTIFF"), (b"MM\x00+", "a BigTIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 file"), (b"\xffO\xffQ", "a JPEG 2000 codestream"),
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"), (b"\x89HDF", "an HDF5 file"),
    (b"CDF\x01", "a netCDF file"), (b"CDF\x02", "a netCDF file"),
)  # fmt: skip
# A file's suffix -> (what it should be, the kinds of _MAGIC that are that).
_EXPECTED_FORMAT = {
    ".tif": ("a TIFF", ("a TIFF", "a BigTIFF")),
    ".tiff": ("a TIFF", ("a TIFF", "a BigTIFF")),
    ".jp2": ("a JPEG 2000 file", ("a JPEG 2000 file", "a JPEG 2000 codestream")),
}
_TEXT_KINDS = ("a text file", "JSON text", "XML or HTML text")


def _file_kind(path: str) -> tuple[str, bytes] | None:
    """(what the file's first bytes say it is, those bytes), or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head:
        return "an empty file", head
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind, head
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "data of no raster format GDAL knows", head
    if text.lstrip().startswith("<"):
        return "XML or HTML text", head
    if text.lstrip().startswith(("{", "[")):
        return "JSON text", head
    return ("a text file", head) if all(c.isprintable() or c.isspace() for c in text) else ("unknown data", head)


def _unreadable_message(path: str, err: Exception) -> str:
    """Why GDAL could not open ``path``: what the file is, when its first bytes do not match its suffix."""
    expected = _EXPECTED_FORMAT.get(Path(path).suffix.lower())
    found = _file_kind(path) if "://" not in path and not path.startswith("/vsi") else None
    if expected is not None and found is not None and found[0] not in expected[1]:
        kind, head = found
        shown = head[:24].decode("utf-8", "replace") if kind in _TEXT_KINDS else head[:8]
        return (
            f"cannot read raster {path!r}: it is not {expected[0]} but {kind} (it starts with {shown!r}), although "
            f"its name ends in {Path(path).suffix!r}. Pass the raster itself (a GeoTIFF, COG or JP2), not a renamed "
            "file"
        )
    return f"cannot read raster {path!r}: {err}. Is it a complete GeoTIFF/COG/JP2? Download it again"


# ---------------------------------------------------------------------------------------------- the reader


class RasterSource:
    """One or more rasters on the same area, read as one band stack on a common grid, window by window.

    Built from a :class:`~clay_hf.geodata.sources.SourceSpec` (:func:`open_source` takes paths too).
    The grid is the intersection of the files' extents at ``spec.resolution`` (default: the finest input);
    band files at other resolutions are resampled into it (bilinear up, average down).

    Attributes: ``spec``, ``name``, ``paths``, ``band_names``, ``sensor`` (canonical name or None),
    ``sensor_evidence`` (how the sensor was found: ``"given"``, ``"tagged SENSOR='...'"``, ``"named like a
    Landsat 8 level-2 product (...)"``, ``"with band names ..."``; None without a sensor), ``sensor_proposal``
    (for a source without sensor and wavelengths: what the files say and what to pass; else None),
    ``platform``, ``wavelengths_um``, ``mean``, ``std`` (tuples or None), ``datetime`` (ISO str or None),
    ``license``, ``crs``, ``resolution`` (CRS units), ``gsd`` (metres), ``height``, ``width``, ``origin``
    (left, top), ``decibels``, ``offset_dn`` (the radiometric offset the files carry, DN; None: unknown),
    ``harmonize_offset``, ``radiometric_offset`` (what the chips get: ``"removed"``, ``"kept"``, ``"none"``,
    ``"unknown"``).

    Raises:
        RasterError: a missing file. CorruptRasterError: a file that cannot be decoded (or is not what its name
        says: a text file named ``.tif``). MissingCRSError: a file without CRS. BandOverlapError: files in
        different CRSs or that do not overlap. BandMismatchError: band names, wavelengths, mean or std that do
        not match the band count; a file that does not name its bands and has another band count than the
        sensor. UnknownBandError: a band name the sensor does not have.
    """

    def __init__(self, spec: SourceSpec) -> None:
        if not isinstance(spec, SourceSpec):
            raise ClayInputError(
                f"RasterSource takes a SourceSpec, got {type(spec).__name__}; use open_source(paths, **fields) "
                "for paths"
            )
        self.spec = spec
        self.name = spec.name
        self.paths = list(spec.paths)
        self.license = spec.license
        self.decibels = spec.decibels
        self._datasets: list[Any] = []
        self._mask_ds = None
        try:
            self._open()
            self._resolve_metadata()
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- opening

    def _open_one(self, path: str):
        rasterio = _rasterio()
        if "://" not in path and not path.startswith("/vsi") and not Path(path).exists():
            raise RasterError(f"raster {path!r} does not exist; check the path (source {self.name!r})")
        try:
            ds = rasterio.open(path)
        except rasterio.errors.RasterioIOError as err:
            raise CorruptRasterError(_unreadable_message(path, err)) from err
        try:
            if ds.crs is None:
                raise MissingCRSError(
                    f"raster {path!r} has no CRS; it cannot be placed on the Earth. Assign one "
                    f"(rio edit-info --crs EPSG:XXXX {path}) or use a georeferenced file"
                )
            self._probe(ds)
        except BaseException:
            ds.close()
            raise
        return ds

    @staticmethod
    def _probe(ds) -> None:
        """Read the last pixel: a truncated file fails here, at open, rather than in the middle of a run."""
        rasterio = _rasterio()
        from rasterio.windows import Window

        try:
            ds.read(window=Window(ds.width - 1, ds.height - 1, 1, 1))
        except rasterio.errors.RasterioIOError as err:
            detail = err.__cause__ or err  # GDAL's own message ("TIFFReadEncodedStrip() failed") is the cause
            raise CorruptRasterError(
                f"raster {ds.name!r} is corrupt or truncated ({detail}); download or write it again"
            ) from err

    def _open(self) -> None:
        for path in self.paths:
            self._datasets.append(self._open_one(path))
        if any(ds.crs != self._datasets[0].crs for ds in self._datasets[1:]):
            crs = {ds.crs.to_string() for ds in self._datasets}
            raise BandOverlapError(
                f"band files of {self.name!r} are in different CRSs {sorted(crs)}; reproject them to one CRS first"
            )
        if self.spec.cloud_mask is not None:
            self._mask_ds = self._open_one(self.spec.cloud_mask)
            if self._mask_ds.crs != self._datasets[0].crs:
                raise BandOverlapError(
                    f"cloud mask {self.spec.cloud_mask!r} is in {self._mask_ds.crs.to_string()}, the bands in "
                    f"{self._datasets[0].crs.to_string()}; reproject the mask to the bands' CRS"
                )
        self.crs = self._datasets[0].crs
        self.crs_string = self.crs.to_string()  # slow for CRSs without an exact EPSG match: once per source
        # The common grid: the intersection of all extents (mask included) at the target resolution.
        extents = [ds.bounds for ds in self._datasets + ([self._mask_ds] if self._mask_ds else [])]
        left, bottom = max(b.left for b in extents), max(b.bottom for b in extents)
        right, top = min(b.right for b in extents), min(b.top for b in extents)
        if right <= left or top <= bottom:
            listing = "; ".join(
                f"{Path(ds.name).name}: {tuple(round(v, 2) for v in ds.bounds)}" for ds in self._datasets
            )
            raise BandOverlapError(
                f"the rasters of source {self.name!r} do not overlap ({listing}); pass files of the same area"
            )
        self._check_extents(extents, (left, bottom, right, top))
        self.resolution = float(self.spec.resolution or min(min(ds.res) for ds in self._datasets))
        self.origin = (left, top)
        self.width = int(math.floor((right - left) / self.resolution + 1e-6))
        self.height = int(math.floor((top - bottom) / self.resolution + 1e-6))
        if self.width < 1 or self.height < 1:
            raise BandOverlapError(
                f"the overlap of the rasters of {self.name!r} is smaller than one pixel at resolution "
                f"{self.resolution}; pass a smaller resolution= or files that overlap more"
            )
        sizes = {(ds.width, ds.height, ds.res) for ds in self._datasets}
        if len(sizes) > 1:
            logger.debug(
                "source %s: band files of different sizes %s, resampled to %s", self.name, sizes, self.resolution
            )

    def _check_extents(self, extents, common) -> None:
        """Band files (and mask) must cover one area: edges may differ by at most the coarsest file's pixel.

        Products at several resolutions (Sentinel-2 10/20/60 m) have edges a fraction of a coarse pixel apart;
        a band file of another size (cropped, another tile) would silently shrink the grid to the overlap.
        """
        datasets = self._datasets + ([self._mask_ds] if self._mask_ds else [])
        tolerance = max(max(ds.res) for ds in datasets) * (1 + 1e-6)
        off = [ds for ds, b in zip(datasets, extents) if max(abs(x - c) for x, c in zip(b, common)) > tolerance]
        if off:
            listing = "; ".join(
                f"{Path(ds.name).name}: {ds.height}x{ds.width} px at {ds.res[0]:g}, bounds "
                f"{tuple(round(v, 2) for v in ds.bounds)}"
                for ds in datasets
            )
            raise BandOverlapError(
                f"the band files of source {self.name!r} are of mismatched size: they do not cover the same area "
                f"({listing}); pass the band files of one scene, or crop them to one extent"
            )

    # -------------------------------------------------------------- metadata

    def _tags(self) -> dict[str, str]:
        tags: dict[str, str] = {}
        for ds in self._datasets:
            for key, value in ds.tags().items():
                tags.setdefault(key.upper(), value)
        return tags

    def _file_band_names(self) -> list[str]:
        names = []
        for ds in self._datasets:
            stem = Path(ds.name).stem
            for i in range(ds.count):
                band_tags = {k.lower(): v for k, v in ds.tags(i + 1).items()}
                described = ds.descriptions[i] or band_tags.get("name") or band_tags.get("band_name")
                described = described or band_tags.get("common_name")
                names.append(described or (stem if ds.count == 1 else f"{stem}_{i + 1}"))
        return names

    def _has_band_descriptions(self) -> bool:
        """Whether any band of a multi-band file names itself (a description or a name tag)."""
        for ds in self._datasets:
            if ds.count == 1:
                return True  # one file per band: the file names name the bands
            for i in range(ds.count):
                band_tags = {k.lower() for k in ds.tags(i + 1)}
                if ds.descriptions[i] or band_tags & {"name", "band_name", "common_name"}:
                    return True
        return False

    def _tag_statistics(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """Per-band mean and std from GDAL's ``STATISTICS_MEAN``/``STATISTICS_STDDEV`` tags, if every band has them."""
        mean, std = [], []
        for ds in self._datasets:
            for i in range(ds.count):
                tags = ds.tags(i + 1)
                if "STATISTICS_MEAN" not in tags or "STATISTICS_STDDEV" not in tags:
                    return None, None
                mean.append(float(tags["STATISTICS_MEAN"]))
                std.append(float(tags["STATISTICS_STDDEV"]))
        if not all(s > 0 for s in std):
            return None, None
        logger.debug("source %s: mean and std from the files' STATISTICS_* tags", self.name)
        return tuple(mean), tuple(std)

    def _described_band_names(self) -> list[str] | None:
        """The names multi-band files give every one of their bands (descriptions, name tags), else None."""
        if any(ds.count == 1 for ds in self._datasets) or not self._has_band_descriptions():
            return None
        names = self._file_band_names()
        stems = {Path(ds.name).stem for ds in self._datasets}
        return None if any(n.rsplit("_", 1)[0] in stems for n in names) else names

    def _dtype(self) -> str:
        dtypes = sorted({dt for ds in self._datasets for dt in ds.dtypes})
        return dtypes[0] if len(dtypes) == 1 else "/".join(dtypes)

    def _detect_sensor(self, tags: dict[str, str], product, names: list[str] | None, where: str) -> str | None:
        """The sensor from the evidence, first to last: tags, a product id in the names, band names; or None.

        Sets ``sensor_evidence`` (how it was found, for messages) and ``platform`` where the evidence names it.
        """
        hint = " ".join(tags[k] for k in _LEVEL_TAGS if k in tags)
        for key in _SENSOR_TAGS:
            if key in tags:
                name = sensor_from_platform(tags[key], hint)
                self.platform = self.platform or tags[key]
                if name:
                    logger.debug("%s: sensor %s from the file tag %s", where, name, key)
                    self.sensor_evidence = f"tagged {key}={tags[key]!r}"
                    return name
        if self.spec.wavelengths_um is not None:
            return None  # the caller describes the bands: only an explicit tag names a sensor then
        if product is not None and product.sensor is not None:
            logger.info("%s: sensor %s, %s", where, product.sensor, product.describe())
            self.sensor_evidence = f"named like {product.describe()}"
            self.platform = self.platform or product.platform
            return product.sensor
        if names:
            fits = sensors_for_band_names(names, self.platform)
            tables = {(s.band_names, s.wavelengths_um, s.mean, s.std) for s in map(get_sensor, fits)}
            if fits and len(tables) == 1:  # one sensor, or ones with the same numbers (Sentinel-2 L2A and L1C)
                if len(fits) > 1:
                    logger.info("%s: band names %s fit %s; taking %s (pass sensor= for another)", where, names,
                                fits, fits[0])  # fmt: skip
                self.sensor_evidence = f"with band names {', '.join(names)}"
                return fits[0]
        return None

    def _proposal(self, count: int, product, names: list[str] | None) -> str:
        """What to pass for a source whose sensor could not be detected: the evidence there is, and a proposal."""
        what = f"{count} {self._dtype()} band{'s' if count != 1 else ''}"
        describe = lambda n: f"{n!r} ({get_sensor(n).num_bands} bands: {', '.join(get_sensor(n).band_names)})"
        explicit = "or wavelengths_um=, mean= and std= for bands of another sensor"
        if product is not None:
            return (
                f"{what} named like {product.describe()}, which has no sensor-table entry at that level "
                f"({product.level or 'level unknown'}); pass sensor= (e.g. 'landsat-c2l2-sr' for surface "
                f"reflectance, 'landsat-c2l1' for level-1) with band_names=, {explicit}"
            )
        fits = sensors_for_band_names(names, self.platform) if names else []
        if fits:
            return (
                f"{what} named {', '.join(names)}, which fit several sensors ({', '.join(fits)}); pass sensor= with "
                f"one of them, {explicit}"
            )
        head = f"{what} named {', '.join(names)} (names no sensor of the table has)" if names else what
        head += f" without {'' if names else 'band names, '}sensor tags or a product id in the file name"
        same = sensors_for_band_count(count, self._dtype())
        if same:
            return (
                f"{head}; the band count of {' and '.join(describe(n) for n in same[:3])}. If they are {same[0]!r} "
                f"bands, pass sensor= with that name (and band_names= when they are in another order); {explicit}"
            )
        return (
            f"{head}, and no sensor of the table has that many bands; pass sensor= with band_names= for a subset of "
            "a sensor's bands, or wavelengths_um=, mean= and std="
        )

    def _resolve_metadata(self) -> None:
        spec, tags = self.spec, self._tags()
        count = sum(ds.count for ds in self._datasets)
        files = f"{count} bands in {len(self.paths)} files"
        where = f"source {self.name!r} ({', '.join(Path(p).name for p in self.paths[:3])}{', ...' if len(self.paths) > 3 else ''})"
        product = product_id_from_paths(self.paths)

        self.platform = spec.platform
        self.sensor_evidence = "given" if spec.sensor is not None else None
        self.sensor_proposal = None
        described = self._described_band_names()
        sensor_name = spec.sensor
        if sensor_name is None:
            sensor_name = self._detect_sensor(tags, product, list(spec.band_names or []) or described, where)
        sensor = get_sensor(sensor_name) if sensor_name is not None else None
        self.sensor = sensor.name if sensor is not None else None

        if spec.band_names is not None:
            names = list(spec.band_names)
            if len(names) != count:
                raise BandMismatchError(
                    f"{files} but {len(names)} band names given ({where}); give one name per band",
                    num_bands=count,
                    num_values=len(names),
                )
        else:
            names = self._file_band_names()
            if sensor is not None and not self._has_band_descriptions():
                if count != sensor.num_bands:
                    raise self._unnamed_bands_error(sensor, count, where)
                # An undescribed multi-band file with exactly the sensor's band count: the table's band order.
                logger.info("%s: no band names in the file; assuming the %s band order %s", where, sensor.name,
                            list(sensor.band_names))  # fmt: skip
                names = list(sensor.band_names)
        if sensor is not None:
            names = list(map_band_names(sensor, names, self.platform, where))
            table = sensor.select(names)
        else:
            table = None
        self.band_names = names

        for field, table_field in (("wavelengths_um", "wavelengths_um"), ("mean", "mean"), ("std", "std")):
            values = getattr(spec, field)
            if values is None and table is not None:
                values = getattr(table, table_field)
            if values is not None and len(values) != count:
                raise BandMismatchError(
                    f"{files} but {len(values)} values in {field} ({where}); give one value per band",
                    num_bands=count,
                    num_values=len(values),
                )
            setattr(self, field, tuple(values) if values is not None else None)
        if self.mean is None and self.std is None and table is None:
            self.mean, self.std = self._tag_statistics()
        if self.wavelengths_um is None:
            self.sensor_proposal = self._proposal(count, product, list(spec.band_names or []) or described)
            logger.warning(
                "%s: the sensor could not be detected: %s. Until then chips have wavelengths=None", where,
                self.sensor_proposal,
            )  # fmt: skip

        self.datetime, acquired = spec.datetime, spec.datetime is not None
        if self.datetime is None:
            for key in _DATETIME_TAGS:
                if key in tags and (parsed := _parse_tag_datetime(tags[key])):
                    self.datetime, acquired = parsed, key != "TIFFTAG_DATETIME"  # a write time, not an acquisition
                    break
        if (self.datetime is None or not acquired) and product is not None and product.datetime is not None:
            self.datetime, acquired = product.datetime, True
        self.harmonize_offset = spec.harmonize_offset
        self.offset_dn = self._resolve_offset(tags, product, self.datetime if acquired else None, where)

    def _unnamed_bands_error(self, sensor, count: int, where: str) -> BandMismatchError:
        """A file whose bands are not named, with another band count than ``sensor``: say both, and what to pass."""
        bands = f"{count} {self._dtype()} band{'s' if count != 1 else ''}"
        theirs = f"{sensor.num_bands} ({', '.join(sensor.band_names)})"
        if self.sensor_evidence == "given":
            head = f"{where}: the file has {bands} but sensor {sensor.name!r} has {theirs}"
        else:
            head = f"{where}: {bands} {self.sensor_evidence}, whose sensor {sensor.name!r} has {theirs}"
        other = "" if self.sensor_evidence == "given" else " sensor= for another sensor,"
        return BandMismatchError(
            f"{head}, and the file does not name its bands, so they cannot be matched. Pass band_names= (the "
            f"sensor's names of the {count} bands, in file order),{other} or wavelengths_um=, mean= and std= for "
            "bands the sensor does not have",
            num_bands=count,
            num_values=sensor.num_bands,
        )

    def _resolve_offset(self, tags: dict[str, str], product, acquired: str | None, where: str) -> float | None:
        """The radiometric offset (DN) the files' values carry: the module docstring's order; None: unknown."""
        if self.spec.offset_dn is not None:
            return self.spec.offset_dn
        rule = radiometric_offset_rule(self.sensor)
        if rule is None:
            return 0.0  # products of the other sensors add no offset
        for key, value in tags.items():
            if any(key.startswith(t) for t in rule["offset_tags"]):
                try:
                    return abs(float(value))  # ESA writes it negative: reflectance = (DN + offset) / 10000
                except ValueError:
                    continue
        baseline = next((tags[k] for k in _BASELINE_TAGS if k in tags), None)
        baseline = baseline or (product.processing_baseline if product is not None else None)
        try:
            number = float(str(baseline).lstrip("Nn")) if baseline is not None else None
        except ValueError:
            number = None
        if number is not None:
            return float(rule["offset_dn"]) if number >= float(rule["since_baseline"]) else 0.0
        if acquired is not None:
            offset = float(rule["offset_dn"]) if acquired[:10] >= rule["since_date"] else 0.0
            if offset:
                logger.info(
                    "%s: acquired %s, on or after %s: assuming processing baseline %s or later, whose values carry "
                    "+%g DN (removed: harmonize_offset=%s). Pass offset_dn=0 for files an archive already harmonised "
                    "(Earth Search's sentinel-2-l2a COGs are)", where, acquired, rule["since_date"],
                    rule["since_baseline"], offset, self.spec.harmonize_offset,
                )  # fmt: skip
            return offset
        logger.info("%s: processing baseline and date unknown: the radiometric offset is not known", where)
        return None

    @property
    def radiometric_offset(self) -> str:
        """What the reader does about the offset (the chips' ``radiometric_offset``): removed, kept, none, unknown."""
        if self.offset_dn is None:
            return "unknown"
        if self.offset_dn == 0:
            return "none"
        return "removed" if self.harmonize_offset else "kept"

    # -------------------------------------------------------------- geometry

    @property
    def gsd(self) -> float:
        """Ground sample distance of the common grid in metres (along a meridian for geographic CRSs)."""
        if self.crs.is_geographic:  # degrees -> metres: one degree of latitude is ~111.32 km
            return self.resolution * 111_320.0
        return self.resolution * float(self.crs.linear_units_factor[1])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the common grid in ``crs``."""
        left, top = self.origin
        return (left, top - self.height * self.resolution, left + self.width * self.resolution, top)

    @property
    def transform(self) -> Any:
        """The affine transform of the common grid (an ``affine.Affine``: pixel (col, row) -> CRS x, y)."""
        from rasterio.transform import from_origin

        return from_origin(*self.origin, self.resolution, self.resolution)

    def chip_bounds(self, row: int, col: int, size_h: int, size_w: int) -> tuple[float, float, float, float]:
        left = self.origin[0] + col * self.resolution
        top = self.origin[1] - row * self.resolution
        return (left, top - size_h * self.resolution, left + size_w * self.resolution, top)

    # -------------------------------------------------------------- reading

    def _read(self, ds, bounds, size_h: int, size_w: int, nodata: float | None, categorical: bool = False):
        """One window of ``ds`` resampled to (size_h, size_w): (values (C, H, W), nodata mask (H, W))."""
        rasterio = _rasterio()
        from rasterio.enums import Resampling
        from rasterio.windows import from_bounds

        window = from_bounds(*bounds, transform=ds.transform)
        if categorical or math.isclose(ds.res[0], self.resolution):
            resampling = Resampling.nearest
        else:
            resampling = Resampling.average if ds.res[0] < self.resolution else Resampling.bilinear
        out_shape = (ds.count, size_h, size_w)
        try:
            if nodata is None:
                data = ds.read(window=window, out_shape=out_shape, resampling=resampling, masked=True)
                return np.ma.getdata(data), np.ma.getmaskarray(data).any(axis=0)
            data = ds.read(window=window, out_shape=out_shape, resampling=resampling)
        except rasterio.errors.RasterioIOError as err:
            raise CorruptRasterError(
                f"cannot read a window of {ds.name!r} (corrupt or truncated?): {err}; download or write it again"
            ) from err
        return data, (data == nodata).any(axis=0)

    def read_chip(self, row: int, col: int, size: int | tuple[int, int]) -> dict[str, Any]:
        """Read one chip whose top-left pixel is (row, col) of the common grid; the dict of the module docstring."""
        from rasterio.warp import transform as warp_transform

        size_h, size_w = (size, size) if isinstance(size, (int, np.integer)) else size
        if not (0 <= row and 0 <= col and row + size_h <= self.height and col + size_w <= self.width):
            raise ChipSizeError(
                f"chip at row {row}, col {col} of {size_h}x{size_w} pixels does not fit the grid of "
                f"{self.name!r} ({self.height}x{self.width}); choose an origin and size inside it"
            )
        bounds = self.chip_bounds(row, col, size_h, size_w)
        bands, invalid = [], np.zeros((size_h, size_w), dtype=bool)
        for ds in self._datasets:
            data, nodata = self._read(ds, bounds, size_h, size_w, self.spec.nodata)
            bands.append(data)
            invalid |= nodata
        pixels = np.concatenate(bands, axis=0)  # n_files x (c, H, W) -> (C, H, W)
        cloud_fraction = None
        if self._mask_ds is not None:
            qa, _ = self._read(self._mask_ds, bounds, size_h, size_w, None, categorical=True)
            cloudy, fill = QA_DECODERS[self.spec.qa_kind](np.ma.getdata(qa)[0])  # (H, W) each
            invalid |= fill
            n_valid = int((~invalid).sum())
            cloud_fraction = float((cloudy & ~invalid).sum() / n_valid) if n_valid else 0.0
        if self.radiometric_offset == "removed":
            pixels = _remove_offset(pixels, invalid, self.offset_dn)
        cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
        lon, lat = warp_transform(self.crs, "EPSG:4326", [cx], [cy])
        as_list = lambda values: list(values) if values is not None else None
        return {
            "pixels": pixels,
            "band_names": list(self.band_names),
            "sensor": self.sensor,
            "wavelengths": as_list(self.wavelengths_um),
            "mean": as_list(self.mean),
            "std": as_list(self.std),
            "gsd": self.gsd,
            "lat": float(lat[0]),
            "lon": float(lon[0]),
            "datetime": self.datetime,
            "bounds": bounds,
            "crs": self.crs_string,
            "source": self.name,
            "license": self.license,
            "row": int(row),
            "col": int(col),
            "valid": ~invalid,
            "cloud_fraction": cloud_fraction,
            "chip_id": f"{self.name}/{row}_{col}",
            "platform": self.platform,
            "decibels": self.decibels,
            "radiometric_offset": self.radiometric_offset,
        }

    def read_masks(self, row: int, col: int, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(valid, cloudy)`` of one window, (H, W) bool each, without building a chip.

        ``valid`` is :meth:`read_chip`'s (no band at nodata, no QA fill); ``cloudy`` the cloud mask's cloud and
        shadow pixels (None without a mask). For finding the windows of a sparse scene that hold data, and for
        masking clouds in outputs, at the cost of the reads alone.
        """
        size_h, size_w = (size, size) if isinstance(size, (int, np.integer)) else size
        if not (0 <= row and 0 <= col and row + size_h <= self.height and col + size_w <= self.width):
            raise ChipSizeError(
                f"window at row {row}, col {col} of {size_h}x{size_w} pixels does not fit the grid of "
                f"{self.name!r} ({self.height}x{self.width}); choose an origin and size inside it"
            )
        bounds = self.chip_bounds(row, col, size_h, size_w)
        invalid = np.zeros((size_h, size_w), dtype=bool)
        for ds in self._datasets:
            invalid |= self._read(ds, bounds, size_h, size_w, self.spec.nodata)[1]
        cloudy = None
        if self._mask_ds is not None:
            qa, _ = self._read(self._mask_ds, bounds, size_h, size_w, None, categorical=True)
            cloudy, fill = QA_DECODERS[self.spec.qa_kind](np.ma.getdata(qa)[0])  # (H, W) each
            invalid |= fill
        return ~invalid, cloudy

    def window_may_have_data(self, row: int, col: int, size: int | tuple[int, int]) -> bool:
        """False when the window certainly holds no valid pixel, known without reading it: in some band file every
        tile under it is a sparse (never written) GeoTIFF tile, which reads as that file's nodata. True otherwise
        (the window may hold data; read it to know). Costs a lookup of the tiles' offsets, so a 20,000 x 20,000
        sparse scene is scanned in a moment."""
        size_h, size_w = (size, size) if isinstance(size, (int, np.integer)) else size
        bounds = self.chip_bounds(row, col, size_h, size_w)
        for index, ds in enumerate(self._datasets):
            if self._reads_sparse_as_nodata(ds) and self._all_tiles_sparse(index, ds, bounds):
                return False
        return True

    def _reads_sparse_as_nodata(self, ds) -> bool:
        """A sparse tile reads as the file's nodata (or 0): is that value nodata for this source?"""
        nodata = self.spec.nodata if self.spec.nodata is not None else ds.nodata
        return ds.driver == "GTiff" and nodata is not None and (ds.nodata if ds.nodata is not None else 0) == nodata

    def _all_tiles_sparse(self, index: int, ds, bounds) -> bool:
        from rasterio.windows import from_bounds

        window = from_bounds(*bounds, transform=ds.transform)
        tile_h, tile_w = ds.block_shapes[0]
        # One pixel more on every side: a resampled read may take its neighbours.
        top, left = max(0, math.floor(window.row_off) - 1), max(0, math.floor(window.col_off) - 1)
        bottom = min(ds.height - 1, math.ceil(window.row_off + window.height) + 1)
        right = min(ds.width - 1, math.ceil(window.col_off + window.width) + 1)
        cache = self.__dict__.setdefault("_tile_written", {})
        for ty in range(top // tile_h, bottom // tile_h + 1):
            for tx in range(left // tile_w, right // tile_w + 1):
                key = (index, tx, ty)
                if key not in cache:
                    cache[key] = ds.get_tag_item(f"BLOCK_OFFSET_{tx}_{ty}", "TIFF", bidx=1) is not None
                if cache[key]:
                    return False
        return True

    def window_transform(self, row: int, col: int, step: int = 1) -> Any:
        """The affine transform of a grid whose pixel (0, 0) is this grid's pixel (row, col), ``step`` pixels wide
        (rasterio's window transform, scaled: the grid of an output at ``step`` times the resolution)."""
        from affine import Affine
        from rasterio.windows import Window
        from rasterio.windows import transform as window_transform

        return window_transform(Window(col, row, step, step), self.transform) @ Affine.scale(step)

    def close(self) -> None:
        for ds in self._datasets + ([self._mask_ds] if self._mask_ds is not None else []):
            ds.close()
        self._datasets, self._mask_ds = [], None

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if not hasattr(self, "band_names"):  # failed while opening
            return f"RasterSource({self.spec.name!r}, not opened)"
        return (
            f"RasterSource({self.name!r}, sensor={self.sensor!r}, bands={self.band_names}, "
            f"{self.height}x{self.width} px at {self.gsd:g} m, datetime={self.datetime!r}, "
            f"radiometric_offset={self.radiometric_offset!r})"
        )


def open_source(
    spec_or_path: SourceSpec | str | os.PathLike | Sequence[str | os.PathLike], **overrides: Any
) -> RasterSource:
    """Open a source: a :class:`SourceSpec`, a raster path, a list of band files, a folder of band files, or a
    STAC Item JSON.

    ``overrides`` replace fields of the spec (``resolution=20.0``, ``sensor="sentinel-2-l2a"``...). A STAC
    file must describe exactly one source (see :func:`sources_from_stac` for several).
    """
    if isinstance(spec_or_path, SourceSpec):
        spec = dataclasses.replace(spec_or_path, **overrides) if overrides else spec_or_path
    elif isinstance(spec_or_path, (str, os.PathLike)) and os.fspath(spec_or_path).lower().endswith(".json"):
        specs = sources_from_stac(spec_or_path)
        if len(specs) != 1:
            raise StacError(
                f"STAC file {os.fspath(spec_or_path)!r} describes {len(specs)} sources "
                f"({[s.name for s in specs]}); open one of sources_from_stac(...) instead"
            )
        spec = dataclasses.replace(specs[0], **overrides) if overrides else specs[0]
    elif isinstance(spec_or_path, (str, os.PathLike)) and Path(spec_or_path).is_dir():
        specs = sources_from_folder(spec_or_path, **overrides)
        if len(specs) != 1:
            raise RasterError(
                f"folder {os.fspath(spec_or_path)!r} holds {len(specs)} sources ({[s.name for s in specs]}); "
                "open one of sources_from_folder(...) instead"
            )
        spec = specs[0]
    else:
        spec = SourceSpec(paths=spec_or_path, **overrides)
    return RasterSource(spec)


# ---------------------------------------------------------------------------------------------- file facts


def sensor_from_tags(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(sensor, platform) from a raster's tags (``SENSOR``, ``SPACECRAFT_ID``...), or (None, None)."""
    rasterio = _rasterio()
    try:
        with rasterio.open(path) as ds:
            tags = {k.upper(): v for k, v in ds.tags().items()}
    except rasterio.errors.RasterioError:
        return None, None  # a bad file is reported, with its name, when the source is opened
    hint = " ".join(tags[k] for k in _LEVEL_TAGS if k in tags)
    for key in _SENSOR_TAGS:
        if key in tags and (name := sensor_from_platform(tags[key], hint)):
            return name, tags[key]
    return None, None


def band_count(path: str | os.PathLike) -> int:
    """The number of bands of a raster; 1 for a file that cannot be read (reported when its source opens)."""
    rasterio = _rasterio()
    try:
        with rasterio.open(path) as ds:
            return ds.count
    except rasterio.errors.RasterioError:
        return 1


def read_tags(path: str | os.PathLike) -> dict[str, str]:
    """A raster's dataset tags (GDAL metadata), e.g. the settings a map written by clay_hf records.

    Raises:
        RasterError: a missing file. CorruptRasterError: a file that cannot be read as a raster.
    """
    rasterio = _rasterio()
    if not Path(path).exists():
        raise RasterError(f"raster {os.fspath(path)!r} does not exist; check the path")
    try:
        with rasterio.open(path) as ds:
            return dict(ds.tags())
    except rasterio.errors.RasterioIOError as err:
        raise CorruptRasterError(_unreadable_message(os.fspath(path), err)) from err


# ---------------------------------------------------------------------------------------------- chips


def _remove_offset(pixels: np.ndarray, invalid: np.ndarray, offset: float) -> np.ndarray:
    """``pixels`` (C, H, W) with ``offset`` DN removed where valid: ``max(v - offset, 1)`` (0 stays Sentinel-2's
    nodata); nodata pixels (``invalid``, (H, W)) keep their value. The dtype is kept."""
    kind = pixels.dtype.type
    step = kind(round(offset)) if np.issubdtype(pixels.dtype, np.integer) else kind(offset)
    harmonised = np.maximum(pixels, step + kind(1)) - step  # no unsigned wrap-around: clip before subtracting
    return np.where(invalid[None], pixels, harmonised)  # (1, H, W) broadcast over the bands


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
        raise ChipSizeError(f"{name} must be a positive integer or an (height, width) pair, got {value!r}")
    return int(pair[0]), int(pair[1])


def iter_chips(
    source: RasterSource | SourceSpec | str | os.PathLike,
    chip_size: int | tuple[int, int] = 256,
    stride: int | tuple[int, int] | None = None,
    max_nodata_fraction: float = DEFAULT_MAX_NODATA,
    max_cloud_fraction: float = 1.0,
    patch_size: int | None = None,
    stats: dict[str, int] | None = None,
    edge: str = "drop",
) -> Iterator[dict[str, Any]]:
    """Tile a source's grid into chips (row-major), reading one window per chip, skipping bad ones.

    Args:
        source: an open :class:`RasterSource` (left open), or a spec/path (opened and closed here).
        chip_size: chip side in pixels, or (height, width).
        stride: step between chip origins, default ``chip_size`` (no overlap).
        edge: what happens to the margin at the right and bottom edge that the stride leaves narrower than a
            chip (:data:`EDGE_MODES`): ``"drop"`` leaves it out (logged; training chips then never overlap),
            ``"shift"`` adds a last chip moved inward to end exactly at the edge (it overlaps its neighbour, and
            its ``row``/``col`` is not a multiple of the stride), so every pixel of the grid is in a chip.
        max_nodata_fraction: skip chips with more nodata pixels than this (0: only complete chips).
        max_cloud_fraction: skip chips whose valid pixels are more cloudy than this (needs a cloud mask).
        patch_size: when given, ``chip_size`` must be a multiple of it (8 for Clay v1.5).
        stats: a dict that receives counts as the chips are read: ``windows`` read, chips dropped for
            ``nodata`` and for ``cloud``, ``empty`` windows (every pixel nodata), and ``shifted`` windows (moved
            inward at the edge).

    Raises:
        ChipSizeError: a chip larger than the grid, or not a multiple of ``patch_size``.
        EmptyRasterError: every window had too much nodata, so the scene gave no chip (``stats["empty"] ==
            stats["windows"]`` when it has no valid pixel at all: a wrong file or nodata value). Chips skipped
            only for clouds give no error: a cloudy scene yields nothing, with a log line.
    """
    if not isinstance(source, RasterSource):
        with open_source(source) as opened:
            yield from iter_chips(
                opened, chip_size, stride, max_nodata_fraction, max_cloud_fraction, patch_size, stats, edge
            )
        return
    if edge not in EDGE_MODES:
        raise ClayInputError(f"edge must be one of {list(EDGE_MODES)}, got {edge!r}")
    stats = {} if stats is None else stats
    stats.update(windows=0, nodata=0, cloud=0, empty=0, shifted=0)
    size_h, size_w = _pair(chip_size, "chip_size")
    stride_h, stride_w = _pair(stride if stride is not None else (size_h, size_w), "stride")
    if patch_size is not None and (size_h % patch_size or size_w % patch_size):
        raise ChipSizeError(
            f"chip_size {size_h}x{size_w} is not a multiple of patch_size={patch_size}; use e.g. "
            f"{max(size_h // patch_size, 1) * patch_size}"
        )
    if size_h > source.height or size_w > source.width:
        raise ChipSizeError(
            f"chip_size {size_h if size_h == size_w else (size_h, size_w)} is larger than the raster grid "
            f"{source.height}x{source.width} of {source.name!r} at {source.resolution:g} m; choose a chip size "
            f"of at most {min(source.height, source.width)}"
        )
    rows = chip_origins(source.height, size_h, stride_h, edge)
    cols = chip_origins(source.width, size_w, stride_w, edge)
    margin = (source.height - rows[-1] - size_h, source.width - cols[-1] - size_w)
    if any(margin):
        logger.info("source %s: the last %d rows and %d columns are in no chip (edge='drop')", source.name, *margin)
    for row in rows:
        for col in cols:
            chip = source.read_chip(row, col, (size_h, size_w))
            stats["windows"] += 1
            stats["shifted"] += row % stride_h != 0 or col % stride_w != 0
            nodata = 1.0 - float(chip["valid"].mean())
            stats["empty"] += nodata == 1.0
            if nodata > max_nodata_fraction:
                stats["nodata"] += 1
                logger.debug("skip %s: %.0f%% nodata", chip["chip_id"], 100 * nodata)
                continue
            if chip["cloud_fraction"] is not None and chip["cloud_fraction"] > max_cloud_fraction:
                stats["cloud"] += 1
                logger.debug("skip %s: %.0f%% cloud", chip["chip_id"], 100 * chip["cloud_fraction"])
                continue
            yield chip
    read = stats["windows"]
    if read and stats["nodata"] == read:
        what = "are entirely nodata" if stats["empty"] == read else f"have more than {max_nodata_fraction:.0%} nodata"
        raise EmptyRasterError(
            f"source {source.name!r} ({source.paths[0]}{', ...' if len(source.paths) > 1 else ''}) gave no chips: "
            f"all {read} windows {what}. Check the file and its nodata value, or raise max_nodata_fraction"
        )
    if stats["cloud"]:
        logger.info("source %s: skipped %d of %d chips for clouds", source.name, stats["cloud"], read)


EDGE_MODES = ("drop", "shift")  # iter_chips(edge=...): the margin narrower than a chip left out, or covered


def chip_origins(length: int, size: int, stride: int, edge: str = "drop") -> list[int]:
    """The chip origins along one axis of ``length`` pixels: ``0, stride, ...`` while a chip fits; with
    ``edge="shift"`` also ``length - size`` when the last of them leaves pixels uncovered (see :func:`iter_chips`)."""
    origins = list(range(0, length - size + 1, stride))
    if edge == "shift" and origins and origins[-1] + size < length:
        origins.append(length - size)
    return origins


def read_band(
    path: str | os.PathLike, band: int = 1, out_shape: tuple[int, int] | None = None
) -> tuple[np.ma.MaskedArray, Any]:
    """One whole band of a raster (a label map, a mask): ``(values (H, W) masked where nodata, transform)``.

    ``out_shape`` (h, w) reads it decimated (nearest neighbour, from the overviews where the file has them), for
    quick looks at big rasters; the transform is then the file's own.

    Raises:
        RasterError: a missing file. CorruptRasterError: a file that cannot be decoded.
    """
    rasterio = _rasterio()
    if not Path(path).exists():
        raise RasterError(f"raster {os.fspath(path)!r} does not exist; check the path")
    try:
        with rasterio.open(path) as ds:
            return ds.read(band, masked=True, out_shape=out_shape), ds.transform
    except rasterio.errors.RasterioIOError as err:
        raise CorruptRasterError(_unreadable_message(os.fspath(path), err)) from err


def rasterize_shapes(
    shapes: Sequence[tuple[Mapping[str, Any], int]], transform: Any, shape: tuple[int, int], fill: int, dtype: str
) -> np.ndarray:
    """Burn ``(GeoJSON geometry, value)`` pairs into a ``shape`` grid of ``dtype`` (later shapes on top).

    ``transform`` is the grid's affine transform (:attr:`RasterSource.transform`); pixel centres inside a
    polygon are burned (GDAL's default).
    """
    _rasterio()
    from rasterio.features import rasterize

    return rasterize(list(shapes), out_shape=shape, transform=transform, fill=fill, dtype=dtype)


def write_geotiff(
    path: str | os.PathLike,
    pixels: np.ndarray,
    crs: str,
    bounds: Sequence[float],
    nodata: float | None = None,
    tags: Mapping[str, str] | None = None,
    band_names: Sequence[str] | None = None,
    compress: str = "deflate",
) -> Path:
    """Write ``pixels`` (C, H, W) as a GeoTIFF covering ``bounds`` (left, bottom, right, top) in ``crs``.

    ``tags`` become dataset tags (``SENSOR``, ``ACQUISITIONDATE``: what :func:`open_source` reads back) and
    ``band_names`` the band descriptions. Returns the path.
    """
    rasterio = _rasterio()
    from rasterio.transform import from_bounds

    bands, height, width = pixels.shape
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=pixels.dtype, crs=crs,
                   transform=from_bounds(*bounds, width, height), nodata=nodata, compress=compress)  # fmt: skip
    path = Path(path)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(pixels)
        if tags:
            ds.update_tags(**tags)
        for i, name in enumerate(band_names or (), start=1):
            ds.set_band_description(i, name)
    return path


def _affine(transform: Any):
    """An ``affine.Affine`` from an Affine or its first six coefficients ``(a, b, c, d, e, f)`` (affine's order)."""
    from affine import Affine

    if isinstance(transform, Affine):
        return transform
    values = tuple(float(v) for v in transform)
    if len(values) not in (6, 9):
        raise ClayInputError(
            f"transform must be an affine.Affine or its coefficients (a, b, c, d, e, f), got {len(values)} values"
        )
    return Affine(*values[:6])


def _crs(crs: Any):
    _rasterio()
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(crs)
    except Exception as err:  # CRSError is a ValueError or not, depending on the rasterio version
        raise ClayInputError(f"cannot read the CRS {crs!r} of the output raster: {err}") from err


class CogWriter:
    """A Cloud Optimized GeoTIFF written window by window, so memory holds one window, never the whole raster.

        >>> with CogWriter("map.tif", height, width, count=1, dtype="uint8", crs=crs, transform=t, nodata=255) as out:
        ...     out.write(block, row=0, col=0)          # (C, h, w) or (h, w) at pixel (row, col)

    Windows go into a tiled, sparse GeoTIFF beside ``path`` (blocks never written read as ``nodata``, and take no
    space). When the block ends without an error, GDAL's COG driver copies it into the COG layout (tiled,
    compressed, with overviews down to one tile) under a second temporary name, which is renamed over ``path``:
    a reader sees the old file or the complete new one, and an error (or an interrupt) leaves no partial file.

    Args:
        path: the COG to write (``.tif``); its folder is created.
        height, width, count, dtype: the raster's size in pixels, band count and numpy/GDAL data type.
        crs: anything rasterio's ``CRS.from_user_input`` reads (``"EPSG:32633"``, WKT, a ``RasterSource.crs``).
        transform: an ``affine.Affine`` (pixel (col, row) -> x, y) or its coefficients ``(a, b, c, d, e, f)``.
        nodata: the value of pixels without data (also what never-written blocks read as).
        colormap: ``{value: (r, g, b[, a])}`` for band 1 (a palette for class maps; uint8/uint16 only).
        band_descriptions: one name per band (GDAL band descriptions, shown by QGIS).
        tags: dataset metadata (GDAL tags), e.g. the model and the class names.
        scales, offsets: per band, ``physical = value * scale + offset`` (GDAL's scale/offset, for quantised data).
        overviews: build overviews (halving down to one block).
        overview_resampling: GDAL's name (``"nearest"``, ``"average"``, ``"mode"``); default nearest for integer
            data (classes) and average for floats.
        blocksize: tile side of the COG, a multiple of 16.
        compress: the COG's compression (``"deflate"``, ``"lzw"``, ``"zstd"``...).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        height: int,
        width: int,
        count: int,
        dtype: Any,
        crs: Any,
        transform: Any,
        nodata: float | None = None,
        colormap: Mapping[int, Sequence[int]] | None = None,
        band_descriptions: Sequence[str] | None = None,
        tags: Mapping[str, Any] | None = None,
        scales: Sequence[float] | None = None,
        offsets: Sequence[float] | None = None,
        overviews: bool = True,
        overview_resampling: str | None = None,
        blocksize: int = 512,
        compress: str = "deflate",
    ) -> None:
        if min(height, width, count) < 1:
            raise ClayInputError(f"a raster needs at least one band and pixel, got {count} x {height} x {width}")
        if blocksize < 16 or blocksize % 16:
            raise ClayInputError(f"blocksize must be a multiple of 16, got {blocksize}")
        for name, values in (("band_descriptions", band_descriptions), ("scales", scales), ("offsets", offsets)):
            if values is not None and len(values) != count:
                raise BandMismatchError(
                    f"{len(values)} {name} for {count} bands; give one per band", num_bands=count,
                    num_values=len(values),
                )  # fmt: skip
        self.path = Path(path)
        self.height, self.width, self.count, self.dtype = int(height), int(width), int(count), np.dtype(dtype)
        self.crs, self.transform, self.nodata = _crs(crs), _affine(transform), nodata
        self.colormap, self.band_descriptions, self.tags = colormap, band_descriptions, dict(tags or {})
        self.scales, self.offsets = scales, offsets
        self.overviews, self.blocksize, self.compress = overviews, blocksize, compress
        integer = np.issubdtype(self.dtype, np.integer)
        self.overview_resampling = overview_resampling or ("nearest" if integer else "average")
        self._ds = None
        self._part: Path | None = None

    def __enter__(self) -> CogWriter:
        import tempfile

        rasterio = _rasterio()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part.tif", dir=self.path.parent)
        os.close(fd)
        self._part = Path(name)
        size = min(self.blocksize, 1 << max(4, (max(self.height, self.width) - 1).bit_length()))
        profile = dict(
            driver="GTiff", height=self.height, width=self.width, count=self.count, dtype=self.dtype.name,
            crs=self.crs, transform=self.transform, nodata=self.nodata, tiled=True, blockxsize=size, blockysize=size,
            compress="deflate", zlevel=1, sparse_ok=True, bigtiff="if_safer",
        )  # fmt: skip
        try:
            self._ds = rasterio.open(self._part, "w", **profile)
            self._write_metadata(self._ds)  # before any pixel: a palette cannot be set once data are written
        except BaseException:
            if self._ds is not None:
                self._ds.close()
            self._part.unlink(missing_ok=True)
            raise
        return self

    def _write_metadata(self, ds) -> None:
        if self.colormap is not None:
            ds.write_colormap(1, {int(k): tuple(int(c) for c in v) for k, v in self.colormap.items()})
        for i, name in enumerate(self.band_descriptions or (), start=1):
            ds.set_band_description(i, str(name))
        if self.scales is not None:
            ds.scales = tuple(float(v) for v in self.scales)
        if self.offsets is not None:
            ds.offsets = tuple(float(v) for v in self.offsets)
        if self.tags:
            ds.update_tags(**{str(k): str(v) for k, v in self.tags.items()})

    def write(self, array: np.ndarray, row: int, col: int) -> None:
        """Write ``array`` ((C, h, w), or (h, w) for one band) with its top-left pixel at (row, col)."""
        from rasterio.windows import Window

        array = np.asarray(array)
        array = array[None] if array.ndim == 2 else array  # (h, w) -> (1, h, w)
        c, h, w = array.shape
        if c != self.count or row < 0 or col < 0 or row + h > self.height or col + w > self.width:
            raise ChipSizeError(
                f"a {c}x{h}x{w} window at row {row}, col {col} does not fit the {self.count}x{self.height}x"
                f"{self.width} raster {self.path.name}; write windows inside it"
            )
        self._ds.write(array.astype(self.dtype, copy=False), window=Window(col, row, w, h))

    def _finish(self) -> None:
        """Close the part file, then GDAL's COG driver copies it into the target (atomically)."""
        from rasterio.shutil import copy

        from ..atomic import atomic_path

        self._ds.close()
        options = dict(
            COMPRESS=self.compress.upper(), BLOCKSIZE=self.blocksize, BIGTIFF="IF_SAFER", SPARSE_OK=True,
            OVERVIEWS="IGNORE_EXISTING" if self.overviews else "NONE", RESAMPLING=self.overview_resampling.upper(),
        )  # fmt: skip
        if self.compress.lower() in ("deflate", "lzw", "zstd"):
            options["PREDICTOR"] = "YES" if np.issubdtype(self.dtype, np.floating) else "NO"
        with atomic_path(self.path) as tmp:
            copy(self._part, tmp, driver="COG", **options)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._ds is not None and not self._ds.closed:
                self._ds.close()
            self._part.unlink(missing_ok=True)


def write_cog(
    path: str | os.PathLike,
    array: np.ndarray,
    crs: Any,
    transform: Any,
    nodata: float | None = None,
    colormap: Mapping[int, Sequence[int]] | None = None,
    band_descriptions: Sequence[str] | None = None,
    tags: Mapping[str, Any] | None = None,
    overviews: bool = True,
    **options: Any,
) -> Path:
    """Write ``array`` ((C, H, W), or (H, W) for one band; any dtype) as a Cloud Optimized GeoTIFF, atomically.

    ``crs`` is anything rasterio reads, ``transform`` an ``affine.Affine`` or its ``(a, b, c, d, e, f)``;
    ``options`` are the other arguments of :class:`CogWriter` (``scales``, ``offsets``, ``overview_resampling``,
    ``blocksize``, ``compress``). Tiled, compressed, with overviews; written to a temporary file and renamed.
    Returns the path.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ClayInputError(f"write_cog takes a (C, H, W) or (H, W) array, got shape {array.shape}")
    bands = array[None] if array.ndim == 2 else array  # (H, W) -> (1, H, W)
    count, height, width = bands.shape
    with CogWriter(path, height, width, count, bands.dtype, crs, transform, nodata=nodata, colormap=colormap,
                   band_descriptions=band_descriptions, tags=tags, overviews=overviews, **options) as out:  # fmt: skip
        out.write(bands, 0, 0)
    return Path(path)


def transform_points(
    xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray, source_crs: Any, target_crs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Point coordinates from ``source_crs`` to ``target_crs`` (anything rasterio's ``CRS.from_user_input`` reads;
    ``"EPSG:4326"`` is longitude, latitude): ``(xs, ys)`` as float64 arrays of the input's length."""
    _rasterio()
    from rasterio.crs import CRS
    from rasterio.warp import transform

    xs, ys = np.asarray(xs, dtype=np.float64).reshape(-1), np.asarray(ys, dtype=np.float64).reshape(-1)
    if len(xs) == 0:
        return xs, ys
    crss = []
    for crs in (source_crs, target_crs):
        try:
            crss.append(CRS.from_user_input(crs))
        except Exception as err:  # CRSError is a ValueError or not, depending on the rasterio version
            raise ClayInputError(f"cannot read the CRS {crs!r} of {len(xs)} point(s): {err}") from err
    new_xs, new_ys = transform(*crss, xs, ys)
    return np.asarray(new_xs, dtype=np.float64), np.asarray(new_ys, dtype=np.float64)


def bounds_to_wgs84(bounds: Sequence[float], crs: str) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` in ``crs`` -> ``(west, south, east, north)`` in degrees (densified edges)."""
    _rasterio()
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    try:
        source_crs = CRS.from_user_input(crs)
    except Exception as err:  # rasterio raises CRSError, a subclass of ValueError or not, depending on version
        raise RasterError(f"cannot read the CRS {crs!r} of chip bounds {list(bounds)}: {err}") from err
    west, south, east, north = transform_bounds(source_crs, "EPSG:4326", *bounds, densify_pts=21)
    return float(west), float(south), float(east), float(north)
