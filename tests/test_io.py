"""Reading real Sentinel-2 band files (fetched from the package index) into chips, and bad rasters."""

from __future__ import annotations

import numpy as np
import pytest

from clay_hf import ChipSizeError
from clay_hf.errors import RasterError
from clay_hf.io import MultiBandSource, iter_chips


def test_sentinel2_band_files_on_one_10m_grid(s2_files):
    with MultiBandSource(s2_files, resolution=10.0) as source:
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


def test_iter_chips_tiles_row_major(s2_files):
    with MultiBandSource(s2_files[:3], resolution=20.0) as source:
        chips = list(iter_chips(source, chip_size=256, stride=256))
        assert [(c["row"], c["col"]) for c in chips[:2]] == [(0, 0), (0, 256)]
        assert len(chips) == (source.height // 256) * (source.width // 256)
        with pytest.raises(ChipSizeError, match=r"chip_size 4096 is larger than the raster grid"):
            next(iter_chips(source, chip_size=4096))


def test_bad_rasters_give_clear_errors(tmp_path, s2_files):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(s2_files[0].read_bytes()[:2000])  # a truncated GeoTIFF
    with pytest.raises(RasterError, match="corrupt.tif"):
        with MultiBandSource([corrupt]) as source:
            source.read_chip(0, 0, 64)
    with pytest.raises(RasterError, match=r"raster '.*missing.tif' does not exist"):
        MultiBandSource([tmp_path / "missing.tif"])
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(RasterError, match=r"cannot read raster '.*notes.tif'"):
        MultiBandSource([text])
    with pytest.raises(RasterError, match=r"10 bands in 10 files but 2 band names given"):
        MultiBandSource(s2_files, band_names=["a", "b"])


def test_raster_without_crs(tmp_path):
    import rasterio

    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 16, 16), dtype="uint8"))
    with pytest.raises(RasterError, match=r"has no CRS"):
        MultiBandSource([path])
