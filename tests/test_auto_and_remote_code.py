"""Auto classes both ways: in-process registration, and Hub remote code in an environment without clay_hf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining

import clay_hf
from clay_hf import ClayForPreTraining, ClayImageProcessor, ClayModel

from .model_helpers import RUN_REMOTE_CODE, WITHOUT_CLAY_HF, seeded_inputs


def _inputs() -> dict[str, torch.Tensor]:
    return seeded_inputs(11)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, micro_config) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised ClayForPreTraining saved with save_pretrained, and its reference outputs."""
    torch.manual_seed(3)
    model = ClayForPreTraining(micro_config).eval()
    folder = tmp_path_factory.mktemp("saved") / "clay"
    model.save_pretrained(folder)
    inputs = _inputs()
    noise = torch.rand(2, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = dict(
            embeddings=model.clay(**inputs).last_hidden_state,
            logits=model(**inputs, noise=noise).logits,
        )
    torch.save({"inputs": inputs, "noise": noise}, folder.parent / "inputs.pt")
    return folder, reference


def test_saved_folder_has_safetensors_remote_code_and_full_auto_map(saved):
    folder, _ = saved
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_clay.py", "configuration_clay.py"} <= names
    assert not any(n.endswith(".bin") for n in names)
    # The remote code is the model only: the model and configuration files and the exception family they raise
    # from (errors.py imports nothing); no CPU tuning module, no private torch ops.
    assert {n for n in names if n.endswith(".py")} == {"modeling_clay.py", "configuration_clay.py", "errors.py"}
    assert "torch.ops" not in (folder / "modeling_clay.py").read_text()
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_clay.ClayConfig",
        "AutoModel": "modeling_clay.ClayModel",
        "AutoModelForPreTraining": "modeling_clay.ClayForPreTraining",
        "AutoModelForImageClassification": "modeling_clay.ClayForImageClassification",
        "AutoModelForSemanticSegmentation": "modeling_clay.ClayForSemanticSegmentation",
    }


def test_in_process_registration_round_trip_is_bit_identical(saved):
    folder, reference = saved
    assert isinstance(AutoConfig.from_pretrained(folder), clay_hf.ClayConfig)
    inputs = _inputs()
    noise = torch.load(folder.parent / "inputs.pt")["noise"]

    pre, info = AutoModelForPreTraining.from_pretrained(folder, output_loading_info=True)
    assert type(pre) is ClayForPreTraining
    assert not any(info.values()), info
    enc, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(enc) is ClayModel
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        assert torch.equal(enc.eval()(**inputs).last_hidden_state, reference["embeddings"])
        assert torch.equal(pre.eval()(**inputs, noise=noise).logits, reference["logits"])


def test_encoder_only_folder_round_trip(tmp_path, micro_config):
    torch.manual_seed(4)
    model = ClayModel(micro_config).eval()
    model.save_pretrained(tmp_path)
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**_inputs()).pooler_output, model(**_inputs()).pooler_output)


def test_image_processor_through_auto_class(tmp_path):
    ClayImageProcessor(patch_size=4).save_pretrained(tmp_path)
    clay_hf.ClayConfig(patch_size=4, hidden_size=64, decoder_hidden_size=32).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, ClayImageProcessor)
    assert processor.patch_size == 4


REMOTE_SCRIPT = (
    WITHOUT_CLAY_HF
    + "import torch\nsource, data = sys.argv[1], torch.load(sys.argv[2])\n"
    + RUN_REMOTE_CODE
    + "torch.save(out, sys.argv[3])\n"
)


def test_remote_code_without_clay_hf_is_bit_identical(saved, tmp_path):
    folder, reference = saved
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    result_file = tmp_path / "out.pt"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), str(folder.parent / "inputs.pt"), str(result_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(result_file)
    assert torch.equal(out["embeddings"], reference["embeddings"])
    assert torch.equal(out["logits"], reference["logits"])


def test_modeling_file_imports_only_torch_transformers_and_the_configuration():
    import ast

    import clay_hf.modeling_clay

    tree = ast.parse(Path(clay_hf.modeling_clay.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or "").split(".")[0])
    stdlib = {"__future__", "difflib", "functools", "inspect", "math", "collections", "dataclasses", "typing"}
    assert imported - stdlib == {"torch", "transformers", ".configuration_clay"}
