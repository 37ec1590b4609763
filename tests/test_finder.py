"""Finding things: real Sentinel-2 and Sentinel-1 scenes embedded (a micro Clay), examples by id, point and shape,
cosine and classifier at chip and patch level, detections and score rasters checked with rasterio, bad inputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from rasterio.warp import transform as warp_transform

from clay_hf.apps.finder import SCORE_NODATA, ExampleError, Finder, fit_scorer, score_embeddings
from clay_hf.errors import ClayInputError
from clay_hf.geodata.raster import open_source, transform_points, write_geotiff

from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
S1_PATCH = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"  # the same place as the Sentinel-2 patch, 6 h later


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """The real 120 x 120 px, 10-band Sentinel-2 L2A GeoTIFF with fill burned in: chip 0_0 (32 px chips) 62.5%
    nodata, and one 4 px patch of chip 32_32 (its patch 2,2) entirely nodata."""
    from clay_hf.geodata.sample_data import sentinel2_l2a_geotiff

    with open_source(sentinel2_l2a_geotiff()) as source:
        pixels = source.read_chip(0, 0, 120)["pixels"].copy()  # (10, 120, 120)
        crs, bounds = source.crs_string, source.bounds
    pixels[:, 0:32, 0:20] = 0
    pixels[:, 40:44, 40:44] = 0
    folder = tmp_path_factory.mktemp("scene")
    tags = {"SENSOR": "sentinel-2a", "PROCESSING_LEVEL": "Level-2A", "ACQUISITIONDATE": "2017-06-13T10:10:31"}
    return write_geotiff(folder / "s2-87_48.tif", pixels, crs, bounds, nodata=0, tags=tags)


@pytest.fixture(scope="module")
def s1_folder() -> Path:
    """BigEarthNet's real Sentinel-1 patch of the same place: a folder of two single-band files (VV, VH)."""
    from clay_hf.geodata.sample_data import sample_sources

    (spec,) = [s for s in sample_sources(packages=["bigearthnet-common"]) if s.name.endswith(S1_PATCH)]
    return Path(spec.paths[0]).parent


@pytest.fixture(scope="module")
def model(micro_model_dir):
    from clay_hf.apps.embeddings import load_embedding_model

    return load_embedding_model(micro_model_dir)


@pytest.fixture(scope="module")
def embeddings(model, scene, s1_folder, tmp_path_factory) -> Path:
    """What embed.py writes for both scenes with --outputs cls patches: split train (Sentinel-2), split s1."""
    from clay_hf.apps.embeddings import embed_to_parquet

    out = tmp_path_factory.mktemp("emb") / "emb"
    common = dict(chip_size=32, outputs=("cls", "patches"), max_nodata_fraction=0.9, progress=False)
    s2 = embed_to_parquet(scene, model, out, sensor="sentinel-2-l2a", **common)
    s1 = embed_to_parquet(s1_folder, model, out, split="s1", sensor="sentinel-1-rtc", decibels=True, **common)
    assert s2["chips"] == s1["chips"] == 16  # 3 chips of 32 px and one moved inward, each way
    return out


@pytest.fixture(scope="module")
def s2(embeddings) -> Finder:
    return Finder.from_parquet(embeddings, split="train")


def _source_grid(path) -> tuple[str, tuple[float, float, float, float]]:
    with open_source(path) as source:
        return source.crs_string, source.bounds


def _centre(finder: Finder, suffix: str) -> tuple[float, float]:
    """(lon, lat) of the centre of the chip whose id ends in ``suffix``."""
    row = finder.chips[finder.chips["id"].str.endswith(suffix)].iloc[0]
    return float(row["lon"]), float(row["lat"])


def _lonlat_polygon(crs: str, left: float, bottom: float, right: float, top: float):
    lon, lat = transform_points([left, right, right, left], [bottom, bottom, top, top], crs, "EPSG:4326")
    return shapely.Polygon(np.stack([lon, lat], axis=1))


def _best_pixel_xy(path: Path) -> tuple[float, float, float]:
    """The centre (x, y in the raster's CRS) and value of the best-scored cell of a score raster."""
    with rasterio.open(path) as ds:
        array = ds.read(1, masked=True)
        row, col = np.unravel_index(int(np.ma.argmax(array)), array.shape)
        x, y = ds.xy(row, col)  # the cell centre
        return x, y, float(array[row, col])


# ---------------------------------------------------------------------------------------------- the CLI


def test_cli_writes_detections_and_georeferenced_score_rasters(embeddings, scene, s1_folder, s2, tmp_path):
    out = tmp_path / "found"
    positive = [_centre(s2, "/32_64"), _centre(s2, "/64_0")]
    negative = _centre(s2, "/0_88")
    args = [
        ROOT / "scripts" / "find.py",
        embeddings,
        "--output",
        out,
        "--level",
        "patch",
        "--method",
        "classifier",
        "--top-k",
        "10",
        "--quiet",
        "--negative",
        f"{negative[0]},{negative[1]}",
    ]
    for lon, lat in positive:
        args += ["--positive", f"{lon},{lat}"]
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("classifier at patch level: scored") and "10 detections" in line and str(out) in line
    assert "NOT a released Clay model" in line  # the micro model says what it is

    s2_crs, (left, bottom, right, top) = _source_grid(scene)
    s1_crs, s1_bounds = _source_grid(s1_folder)
    s2_name, s1_name = s2.sources[0], S1_PATCH
    tifs = sorted(p.name for p in out.glob("*.tif"))
    assert tifs == sorted(f"{n}_{level}_scores.tif" for n in (s2_name, s1_name) for level in ("chip", "patch"))
    detections = json.loads((out / "detections.geojson").read_text())
    assert len(detections["features"]) == 10 and detections["clay_finder"]["level"] == "patch"
    table = pq.read_table(out / "detections.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and "crs" not in geo["columns"]["geometry"]  # OGC:CRS84
    assert table["id"].to_pylist() == [f["properties"]["id"] for f in detections["features"]]
    assert {f["properties"]["source"] for f in detections["features"]} <= {s2_name, s1_name}
    units = detections["features"] + json.loads((out / "examples.geojson").read_text())["features"]
    examples = [f for f in units if "label" in f["properties"]]
    assert len(examples) == 6  # each point in both scenes (the same place, two sensors)

    for name, crs, bounds in ((s2_name, s2_crs, (left, bottom, right, top)), (s1_name, s1_crs, s1_bounds)):
        with rasterio.open(out / f"{name}_chip_scores.tif") as ds:  # 4 x 4 chips of 320 m, the 4th past the edge
            assert ds.crs.to_string() == crs and ds.shape == (4, 4) and ds.nodata == SCORE_NODATA
            assert ds.transform.almost_equals(rasterio.Affine(320.0, 0, bounds[0], 0, -320.0, bounds[3]))
            chips = ds.read(1)
        with rasterio.open(out / f"{name}_patch_scores.tif") as ds:  # 30 x 30 patches of 40 m: the scene exactly
            assert ds.crs.to_string() == crs and ds.shape == (30, 30) and ds.dtypes == ("float32",)
            assert ds.transform.almost_equals(rasterio.Affine(40.0, 0, bounds[0], 0, -40.0, bounds[3]))
            assert ds.tags()["CLAY_METHOD"] == "classifier" and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            for feature in [f for f in units if f["properties"]["source"] == name]:  # every unit where it is
                (x,), (y,) = warp_transform(
                    "EPSG:4326", crs, [feature["properties"]["lon"]], [feature["properties"]["lat"]]
                )
                (value,) = next(ds.sample([(x, y)]))  # the highest of the units there (edge chips overlap)
                assert value >= feature["properties"]["score"] - 1e-6
        best = max((f for f in units if f["properties"]["source"] == name), key=lambda f: f["properties"]["score"])
        x, y, value = _best_pixel_xy(out / f"{name}_patch_scores.tif")
        (lon,), (lat,) = warp_transform(crs, "EPSG:4326", [x], [y])
        assert shapely.geometry.shape(best["geometry"]).contains(shapely.Point(lon, lat))  # best pixel, best patch
        assert value == pytest.approx(best["properties"]["score"], abs=1e-6)
        assert chips.max() == pytest.approx(value, abs=1e-6)  # the chip raster holds each chip's best patch
    s2_chips = rasterio.open(out / f"{s2_name}_chip_scores.tif").read(1)
    s2_patches = rasterio.open(out / f"{s2_name}_patch_scores.tif").read(1)
    assert s2_chips[0, 0] == SCORE_NODATA  # chip 0_0 is 62.5% nodata: never scored
    assert s2_patches[10, 10] == SCORE_NODATA and s2_patches[10, 11] != SCORE_NODATA  # the nodata patch of 32_32
    summary = json.loads((out / "find_summary.json").read_text())
    assert summary["scenes"] == 2 and summary["best"]["id"] == detections["features"][0]["properties"]["id"]


def test_cli_help_has_examples(find_main, capsys):
    with pytest.raises(SystemExit) as stop:
        find_main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "--positive=-34.90,-8.05" in out and "--level {chip,patch}" in out


# ---------------------------------------------------------------------------------------------- the library


def test_library_with_point_and_polygon_examples(s2, scene, tmp_path):
    crs, (left, bottom, right, top) = _source_grid(scene)
    name = s2.sources[0]
    point = _centre(s2, "/32_64")
    (example,) = s2.resolve(positive=[point])
    assert s2.unit_id(example.chip) == f"{name}/32_64"
    x, y = left + 690.0, top - 370.0  # pixel (37, 69): chip 32_64, its patch (1, 1)
    (lon,), (lat,) = transform_points([x], [y], crs, "EPSG:4326")
    (patch,) = s2.resolve(positive=[(lon, lat)], level="patch")
    assert s2.unit_id(patch.chip, patch.patch) == f"{name}/32_64#1,1"
    assert s2.unit_at(name, 100, 100) == f"{name}/88_88" and s2.unit_at(name, 100, 100, "patch") == f"{name}/88_88#3,3"
    assert len(s2.resolve(positive=[f"{name}/32_32"], level="patch")) == 63  # its one nodata patch left out

    # a polygon over most of chip 64_32 (and a sliver of its neighbours): that chip; at patch level its 4 patches
    chip_shape = _lonlat_polygon(crs, left + 330.0, top - 950.0, left + 630.0, top - 650.0)
    (shape_example,) = s2.resolve(positive=[chip_shape])
    assert s2.unit_id(shape_example.chip) == f"{name}/64_32"
    patch_shape = _lonlat_polygon(crs, left + 320.0, top - 720.0, left + 400.0, top - 640.0)  # 2 x 2 patches
    ids = sorted(s2.unit_id(e.chip, e.patch) for e in s2.resolve(positive=[patch_shape], level="patch"))
    assert ids == [f"{name}/64_32#{r},{c}" for r in (0, 1) for c in (0, 1)]

    cosine = s2.find(positive=[point, chip_shape], negative=[f"{name}/0_88"], top_k=5)
    assert [e.label for e in cosine.examples] == ["positive", "positive", "negative"]
    assert len(cosine.detections) == 5 and not set(cosine.detections["id"]) & {f"{name}/32_64", f"{name}/64_32"}
    assert np.isnan(cosine.scores[s2.chip_ids.index(f"{name}/0_0")])  # 62.5% nodata: no score
    assert cosine.detections["score"].is_monotonic_decreasing and list(cosine.detections["rank"]) == [1, 2, 3, 4, 5]
    itself = s2.find(positive=[f"{name}/32_64"], keep_examples=True, top_k=3)
    assert itself.detections["id"][0] == f"{name}/32_64" and itself.detections["score"][0] == pytest.approx(1.0)

    shapes = tmp_path / "examples.geojson"  # a file of labelled shapes, as a GIS exports it
    features = [
        {"type": "Feature", "properties": {"label": label}, "geometry": shapely.geometry.mapping(g)}
        for label, g in (("positive", chip_shape), ("negative", shapely.Point(*_centre(s2, "/0_88"))))
    ]
    shapes.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    found = s2.find(examples=shapes, level="patch", method="classifier", top_k=20)
    positives = [s for e, s in zip(found.examples, found.example_scores) if e.label == "positive"]
    negatives = [s for e, s in zip(found.examples, found.example_scores) if e.label == "negative"]
    assert len(positives) == 64 + 16 and len(negatives) == 1  # + the top 2 patch rows of chip 88_32: the same ground
    assert np.mean(positives) > negatives[0] and np.mean(positives) > np.nanmedian(found.scores)  # a random micro
    # model: its examples are not all separable
    assert set(found.detections["level"]) == {"patch"} and found.detections["patch_row"].between(0, 7).all()
    paths = found.write(tmp_path / "out")
    assert sorted(p.name for p in paths["rasters"]) == [f"{name}_chip_scores.tif", f"{name}_patch_scores.tif"]
    again = s2.resolve(examples=tmp_path / "out" / "detections.parquet", level="patch")  # GeoParquet shapes back
    ids = [s2.unit_id(e.chip, e.patch) for e in again]  # each patch, and where an edge chip overlaps, its twin
    assert set(found.detections["id"]) <= set(ids) and len(ids) < 2 * len(found.detections)
    x, y, value = _best_pixel_xy(tmp_path / "out" / f"{name}_chip_scores.tif")
    best = int(np.nanargmax(found.chip_scores))
    b = s2._bounds[best]
    assert b[0] <= x <= b[2] and b[1] <= y <= b[3] and value == pytest.approx(found.chip_scores[best], abs=1e-6)
    assert "NOT a released Clay model" in repr(s2) and "8192 B/chip" in repr(s2)


def test_across_scenes_and_sensors(embeddings):
    both = Finder.from_parquet(embeddings)  # every split: Sentinel-2 and Sentinel-1
    assert len(both) == 32 and sorted(set(both.chips["sensor"])) == ["sentinel-1-rtc", "sentinel-2-l2a"]
    point = _centre(both, "/32_64")
    result = both.find(positive=[point], top_k=30)
    assert sorted({both._source[e.chip] for e in result.examples}) == sorted(both.sources)  # one chip per scene
    assert set(result.detections["sensor"]) == {"sentinel-1-rtc", "sentinel-2-l2a"}
    rasters = {r.source: r for r in result.score_rasters()}
    assert set(rasters) == set(both.sources) and all(r.array.shape == (4, 4) for r in rasters.values())
    assert {r.crs for r in rasters.values()} == {"EPSG:32633"}
    (only,) = both.resolve(positive=[_centre(both, "/0_0")])  # fill in the Sentinel-2 scene there: Sentinel-1's chip
    assert both._source[only.chip] == S1_PATCH


def test_score_embeddings_and_fit_scorer(s2):
    vectors = s2.index.embeddings.numpy().astype(np.float16)  # (16, 64), as a benchmark stores them
    eligible = s2.nodata_fraction <= 0.25
    cosine = score_embeddings(vectors, positive=[5], eligible=eligible)
    assert np.nanargmax(cosine) == 5 and np.isnan(cosine[~eligible]).all()
    classifier = score_embeddings(vectors, positive=[5, 6], negative=[1], method="classifier", background=8)
    assert (
        classifier[5] > classifier[1] and classifier[6] > classifier[1] and ((0 < classifier) & (classifier < 1)).all()
    )
    with pytest.raises(ClayInputError, match=r"at least one positive example"):
        fit_scorer("cosine", np.zeros((0, 64)))
    with pytest.raises(ClayInputError, match=r"the classifier needs something to tell the positives from"):
        fit_scorer("classifier", vectors[:2])
    with pytest.raises(ClayInputError, match=r"method must be one of \['cosine', 'classifier'\]"):
        fit_scorer("knn", vectors[:2])


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def find_main():
    return load_script(ROOT / "scripts" / "find.py").main


@pytest.fixture(scope="module")
def cls_only(model, scene, tmp_path_factory) -> Path:
    from clay_hf.apps.embeddings import embed_to_parquet

    out = tmp_path_factory.mktemp("cls") / "emb"
    embed_to_parquet(scene, model, out, chip_size=32, max_nodata_fraction=0.9, sensor="sentinel-2-l2a", progress=False)
    return out


def _mixed_widths(embeddings: Path, folder: Path) -> Path:
    (shard,) = (embeddings / "data" / "train").glob("*.parquet")
    folder.mkdir()
    shutil.copy(shard, folder / "a.parquet")
    table = pq.read_table(shard)
    narrow = pa.array([v[:32] for v in table["embedding"].to_pylist()], pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.column_names.index("embedding"), "embedding", narrow), folder / "b.parquet")
    return folder


def test_bad_inputs_exit_with_one_clear_line_and_write_nothing(
    find_main, embeddings, cls_only, s2, scene, tmp_path, capsys
):
    name = s2.sources[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    on_fill = _centre(s2, "/0_0")  # chip 0_0 is 62.5% nodata
    crs, (left, bottom, right, top) = _source_grid(scene)
    (lon,), (lat,) = transform_points([left + 420.0], [top - 420.0], crs, "EPSG:4326")  # patch 2,2 of chip 32_32
    cases = [
        ([embeddings, "--positive", "2.35,48.85"], 2, r"example point \(2.35,48.85\) is outside every scene of"),
        (
            [embeddings, "--positive", f"{on_fill[0]},{on_fill[1]}", "--split", "train"],
            2,
            rf"falls on chip {name}/0_0, which is 6\d% nodata",
        ),
        (
            [embeddings, "--positive", f"{lon},{lat}", "--level", "patch", "--split", "train"],
            2,
            rf"falls on patch {name}/32_32#2,2, which is 100% nodata",
        ),
        ([embeddings, "--positive-id", f"{name}/0_33"], 2, r"example id '.*/0_33' is not in the index .* did you mean"),
        ([embeddings, "--positive", "48.85"], 2, r"--positive: point '48.85' is not LON,LAT"),
        ([embeddings, "--negative", "2.35,48.85"], 2, r"give at least one example of what to find"),
        (
            [cls_only, "--positive-id", f"{name}/32_32", "--level", "patch"],
            1,
            r"holds none \(embedded without them\)",
        ),
        ([empty, "--positive", "2.35,48.85"], 1, r"holds no Parquet files"),
        (
            [_mixed_widths(embeddings, tmp_path / "mixed"), "--positive", "2.35,48.85"],
            1,
            r"embeddings of different widths: 64 in .*a.parquet, 32 in .*b.parquet",
        ),
    ]
    for argv, code, message in cases:
        out = tmp_path / "out"
        capsys.readouterr()
        assert find_main([*map(str, argv), "--output", str(out), "--quiet"]) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert re.search(message, err[0]), err[0]
        assert not out.exists()  # nothing written
    with pytest.raises(ExampleError, match=r"32_32 is a positive example \(.*\) and a negative one \(point"):
        s2.resolve(positive=[f"{name}/32_32"], negative=[_centre(s2, "/32_32")])


def test_a_scene_embedded_in_memory_finds_as_its_shards_do(model, scene, s2):
    """Finder.from_rows over the rows embed_chips yields (what the Space embeds): the scores of the shards."""
    from clay_hf.apps.embeddings import embed_chips, iter_source_chips

    chips = iter_source_chips(scene, chip_size=32, max_nodata_fraction=0.9, sensor="sentinel-2-l2a")
    rows = list(embed_chips(model, chips, outputs=("cls", "patches")))
    memory = Finder.from_rows(rows)
    assert memory.chip_ids == s2.chip_ids and memory.patches.num_patches == s2.patches.num_patches == 16 * 64
    point = _centre(s2, "/32_64")
    for level in ("chip", "patch"):
        ours, theirs = memory.find(positive=[point], level=level), s2.find(positive=[point], level=level)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
        assert list(ours.detections["id"]) == list(theirs.detections["id"])
    with pytest.raises(ClayInputError, match=r"no embedding rows"):
        Finder.from_rows([])
