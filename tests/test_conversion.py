"""The checkpoint converter: folder contents, loading info, the CLI, and its errors."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, AutoModelForPreTraining

from clay_hf import CheckpointError, ClayImageProcessor
from clay_hf.conversion import (
    config_from_checkpoint,
    convert_checkpoint,
    convert_state_dict,
    load_original_checkpoint,
    rename_key,
)

from .conftest import PARITY_CKPT
from .launch import load_script

ROOT = Path(__file__).parents[1]


def test_converted_folder_loads_with_both_auto_classes_without_missing_or_unexpected(converted_micro):
    names = {p.name for p in converted_micro.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_clay.py"} <= names
    for auto in (AutoModel, AutoModelForPreTraining):
        _, info = auto.from_pretrained(converted_micro, output_loading_info=True)
        assert not any(info.values()), (auto.__name__, info)
    assert isinstance(AutoImageProcessor.from_pretrained(converted_micro), ClayImageProcessor)
    assert AutoImageProcessor.from_pretrained(converted_micro).patch_size == 4


def test_rename_table_examples():
    assert rename_key("model.encoder.transformer.layers.3.1.net.3.bias") == "clay.encoder.layers.3.mlp.fc2.bias"
    assert (
        rename_key("model.encoder.transformer.layers.0.0.to_qkv.weight")
        == "clay.encoder.layers.0.attention.to_qkv.weight"
    )
    assert (
        rename_key("model.decoder.embed_to_pixels.weight_generator.encoder.layers.0.self_attn.in_proj_bias")
        == "decoder.embed_to_pixels.weight_generator.layer.self_attn.qkv.bias"
    )
    assert rename_key("model.encoder.patch_embedding.fclayer.l1.weight") == "clay.patch_embedding.fclayer.l1.weight"
    assert rename_key("model.teacher.blocks.0.attn.qkv.weight") is None


def test_teacher_keys_are_skipped_with_a_log_line(tmp_path, caplog):
    state_dict, hp = load_original_checkpoint(PARITY_CKPT)
    state_dict = {**state_dict, "model.teacher.cls_token": torch.zeros(1, 1, 1024)}
    path = tmp_path / "with-teacher.ckpt"
    torch.save({"state_dict": state_dict, "hyper_parameters": hp}, path)
    with caplog.at_level(logging.INFO, logger="clay_hf.conversion"):
        convert_checkpoint(path, tmp_path / "out")
    assert "skipped 1 teacher tensors" in caplog.text


def test_cli_converts_and_verifies(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_clay_checkpoint.py"),
            "--checkpoint",
            str(PARITY_CKPT),
            "--output",
            str(out),
            "--verify",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "AutoModel: ok" in proc.stdout and "AutoModelForPreTraining: ok" in proc.stdout
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_clay_checkpoint.py"), "--help"], capture_output=True, text=True
    ).stdout
    assert "examples:" in help_text


def test_cli_reports_a_non_checkpoint_clearly(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("this is not a checkpoint")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_clay_checkpoint.py"),
            "--checkpoint",
            str(bogus),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1  # failed work (a file that is not a checkpoint); 2 is for mistakes in the command
    assert "is not a readable PyTorch checkpoint" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_errors_for_files_that_are_not_clay_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        load_original_checkpoint(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.backbone.weight": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="is not a Clay checkpoint: expected a dict with a 'state_dict'"):
        load_original_checkpoint(other)
    torch.save([1, 2, 3], other)
    with pytest.raises(CheckpointError, match="is not a Clay checkpoint"):
        load_original_checkpoint(other)


def test_shape_and_key_errors_name_the_tensor():
    state_dict, hp = load_original_checkpoint(PARITY_CKPT)
    config = config_from_checkpoint(state_dict, hp)
    bad = dict(state_dict)
    bad["model.proj.weight"] = torch.zeros(7, 64)
    with pytest.raises(
        CheckpointError, match=r"'model.proj.weight' has shape \(7, 64\) but 'proj.weight' expects \(48, 64\)"
    ):
        convert_state_dict(bad, config)
    with pytest.raises(CheckpointError, match="unexpected key 'model.head.weight'"):
        convert_state_dict({**state_dict, "model.head.weight": torch.zeros(1)}, config)
    partial = {k: v for k, v in state_dict.items() if "mask_patch" not in k}
    with pytest.raises(CheckpointError, match=r"lacks 1 tensors the model needs, e.g. \['decoder.mask_patch'\]"):
        convert_state_dict(partial, config)
    with pytest.raises(CheckpointError, match=r"model_size='huge'; expected one of"):
        config_from_checkpoint(state_dict, {"model_size": "huge"})


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    state_dict, hp = load_original_checkpoint(PARITY_CKPT)
    state_dict["model.proj.weight"] = torch.zeros(7, 64)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state_dict, "hyper_parameters": {**hp, "teacher_dim": 48}}, bad)
    with pytest.raises(CheckpointError):
        convert_checkpoint(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def _convert_cli(capsys, *args: str) -> tuple[int, str]:
    """The converter's CLI in this process (``main(argv)``): its return code and what it printed to stderr."""
    script = load_script(ROOT / "scripts" / "convert_clay_checkpoint.py")
    code = script.main(["--checkpoint", str(PARITY_CKPT), *args])
    return code, capsys.readouterr().err


def test_cli_refuses_to_replace_a_folder_that_is_not_a_model_folder(tmp_path, capsys):
    # Defect: "--output D" where D held notes.txt and sub/ returned 0 and deleted both.
    target = tmp_path / "D"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("field notes")
    code, err = _convert_cli(capsys, "--output", str(target))
    assert code == 2, err
    assert "is not a Clay model folder (it holds notes.txt, sub/)" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert (target / "notes.txt").read_text() == "field notes" and (target / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]  # no temporary folder left

    code, err = _convert_cli(capsys, "--output", str(target), "--overwrite")
    assert code == 0, err
    assert not (target / "notes.txt").exists() and (target / "model.safetensors").is_file()
    code, err = _convert_cli(capsys, "--output", str(target))  # a Clay model folder is replaced without --overwrite
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]


@pytest.mark.parametrize("output", [".", ".."])
def test_cli_never_replaces_the_current_directory_or_a_parent(tmp_path, monkeypatch, capsys, output):
    # Defect: "--output ." failed with a raw "OSError: Device or resource busy" and left an empty "..XXXX.old".
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for flags in ((), ("--overwrite",)):
        code, err = _convert_cli(capsys, "--output", output, *flags)
        assert code == 2, err
        assert "is the current directory or one of its parents; it is never replaced" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]


def test_converted_folder_follows_the_umask(tmp_path):
    # Defect: with umask 0022 the folder came out 0700 and its files 0600 (tempfile's modes).
    previous = os.umask(0o022)
    try:
        out = convert_checkpoint(PARITY_CKPT, tmp_path / "converted")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
