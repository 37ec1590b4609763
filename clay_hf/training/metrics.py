"""Scores of predictions against labels, computed with scikit-learn: chip classification, per-pixel segmentation,
regression and similarity-search retrieval.

Fine-tuning (:mod:`clay_hf.training.finetuning`) scores its test split with them and the evaluation protocol
(:mod:`clay_hf.apps.evaluation`) its probes and searches, so they sit here, below both: numpy and scikit-learn
only, no model.

    >>> m = classification_metrics(y_true, y_pred, class_names)   # balanced accuracy, macro F1, confusion, ...
    >>> print(classification_report(m))
    >>> segmentation_metrics(pixel_labels, predicted, class_names)  # pixel accuracy, mIoU
    >>> retrieval_metrics(features, chips, k=10)                  # precision@k and its chance level

Averages over classes (balanced accuracy, macro F1, mIoU) take the classes present in ``y_true`` only, so a
class missing from a split does not count as a zero.

Shapes: N items, D feature width, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from ..errors import ClayInputError
from ..geodata.labelled import IGNORE_INDEX, LabelledChips

__all__ = [
    "classification_metrics",
    "classification_report",
    "segmentation_metrics",
    "regression_metrics",
    "chance_precision_at_k",
    "retrieval_metrics",
]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Balanced accuracy (mean recall over the classes present in ``y_true``), accuracy, macro F1 over those
    classes, per-class precision/recall/F1/support, and the confusion matrix (rows: true, columns: predicted)."""
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if len(y_true) == 0:
        raise ClayInputError("classification_metrics needs at least one true label, got none")
    labels = np.arange(len(class_names))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = support > 0
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "balanced_accuracy": float(recall[present].mean()),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1[present].mean()),
        "per_class": per_class,
        "confusion": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def classification_report(metrics: dict[str, Any]) -> str:
    """A plain-text report of :func:`classification_metrics` (scikit-learn's layout, plus balanced accuracy)."""
    width = max(12, *(len(n) for n in metrics["per_class"]))
    lines = [f"{'':>{width}} precision    recall  f1-score   support", ""]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:>{width}} {m['precision']:9.2f} {m['recall']:9.2f} {m['f1']:9.2f} {m['support']:9d}")
    total = sum(m["support"] for m in metrics["per_class"].values())
    lines.append("")
    for label, key in (("accuracy", "accuracy"), ("balanced acc", "balanced_accuracy"), ("macro F1", "macro_f1")):
        lines.append(f"{label:>{width}} {'':9} {'':9} {metrics[key]:9.2f} {total:9d}")
    return "\n".join(lines)


def segmentation_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Pixel accuracy and mean IoU over the classes present in ``y_true`` (pixels at :data:`IGNORE_INDEX` skipped)."""
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ClayInputError(f"need one predicted pixel per labelled pixel, got {len(y_pred)} and {len(y_true)}")
    labelled = y_true != IGNORE_INDEX
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    if len(y_true) == 0:
        return {"pixel_accuracy": 0.0, "mean_iou": 0.0, "per_class_iou": {}}
    labels = np.arange(len(class_names))
    iou = skm.jaccard_score(y_true, y_pred, labels=labels, average=None, zero_division=0)  # (K,)
    present = np.isin(labels, y_true)
    return {
        "pixel_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "mean_iou": float(iou[present].mean()),
        "per_class_iou": {name: float(iou[i]) for i, name in enumerate(class_names) if present[i]},
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, train_mean: float | None = None) -> dict[str, float]:
    """MSE, RMSE, MAE and R2 (1 - SSE / SST around the mean of ``y_true``; 0 when ``y_true`` is constant); with
    ``train_mean``, also the MSE of always predicting it (``mse_train_mean``), the floor a useful model beats."""
    y_true, y_pred = np.asarray(y_true, np.float64).reshape(-1), np.asarray(y_pred, np.float64).reshape(-1)
    if len(y_true) == 0 or y_true.shape != y_pred.shape:
        raise ClayInputError(f"need as many predictions as targets (> 0), got {len(y_pred)} and {len(y_true)}")
    mse = float(skm.mean_squared_error(y_true, y_pred))
    constant = bool(np.all(y_true == y_true[0]))
    result = {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": 0.0 if constant else float(skm.r2_score(y_true, y_pred)),
    }
    if train_mean is not None:
        result["mse_train_mean"] = float(skm.mean_squared_error(y_true, np.full_like(y_true, train_mean)))
    return result


def chance_precision_at_k(labels: np.ndarray) -> float:
    """Expected leave-one-out precision@k of a ranking that ignores the features: ``sum n_c (n_c - 1) / (N (N - 1))``."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def _cosine_neighbours(collection: np.ndarray, k: int) -> NearestNeighbors:
    return NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(collection)


def retrieval_metrics(features: np.ndarray, chips: LabelledChips, k: int = 10) -> dict[str, float]:
    """Similarity search quality: cosine nearest neighbours of standardised features.

    - ``precision_at_k``: leave-one-out precision@k over all labelled chips (each chip queries the others; the
      measure of :func:`clay_hf.apps.search.precision_at_k`), with ``chance_precision_at_k`` (the class prior).
      Neighbouring chips share classes, which helps every feature.
    - ``cross_precision_at_k``: each east (test) chip queries the west (train) chips only, so no spatial neighbour
      can answer; ``cross_chance`` is the mean west-half prior of the queries' classes.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(chips):
        raise ClayInputError(f"expected features (N, D) with one row per chip ({len(chips)}), got {features.shape}")
    if not 1 <= k < len(chips):
        raise ClayInputError(f"k must be in [1, N) = [1, {len(chips)}), got {k}")
    train_labels, test_labels = chips.labels[~chips.is_test], chips.labels[chips.is_test]
    standard = StandardScaler().fit_transform(features)
    _, neighbours = _cosine_neighbours(standard, k).kneighbors()  # (N, k), each chip itself left out
    scaler = StandardScaler().fit(features[~chips.is_test])
    train, test = scaler.transform(features[~chips.is_test]), scaler.transform(features[chips.is_test])
    _, cross = _cosine_neighbours(train, min(k, len(train))).kneighbors(test)  # (Q, k) rows of train
    prior = np.bincount(train_labels, minlength=len(chips.class_names)) / len(train_labels)
    return {
        "k": k,
        "precision_at_k": float((chips.labels[neighbours] == chips.labels[:, None]).mean()),
        "chance_precision_at_k": chance_precision_at_k(chips.labels),
        "cross_precision_at_k": float((train_labels[cross] == test_labels[:, None]).mean()),
        "cross_chance": float(prior[test_labels].mean()),
    }
