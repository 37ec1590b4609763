"""Exports (clay_hf.export, scripts/export.py): ONNX and .pt2 files equal the eager model on real chips, their JSON,
and the errors of a wrong command."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import onnx
import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModel

from clay_hf import CLAY_PRESETS, ClayConfig, ClayForImageClassification, ClayImageProcessor, ClayModel
from clay_hf.errors import ChipSizeError, ClayConfigError, ClayInputError, UnknownSensorError
from clay_hf.export import (
    DEFAULT_OPSET,
    INPUT_NAMES,
    METADATA_KEY,
    export_info_path,
    export_model,
    processor_config_path,
    read_export_info,
)
from clay_hf.provenance import model_provenance

from .export_helpers import BATCH_SIZES, CHIP_SIZES, SENSOR, exported_runner, model_inputs, real_chips
from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(atol=1e-4, rtol=0)
ENCODER_OUTPUTS = ["last_hidden_state", "pooler_output"]


@pytest.fixture(scope="module")
def chips() -> dict[int, dict]:
    return real_chips()


@pytest.fixture(scope="module")
def script():
    return load_script(ROOT / "scripts" / "export.py")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A seeded random-weight model of the tiny preset (patch size 8), saved as a folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "clay-tiny"
    ClayModel(ClayConfig(**CLAY_PRESETS["tiny"], patch_size=8)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exports(converted_micro, tiny_dir, tmp_path_factory, script, one_torch_thread) -> dict:
    """The converted parity checkpoint and the tiny preset, each exported once as ONNX and as .pt2.

    The parity ONNX file is written by the script (its exit code and printed line are kept), the others by the library.
    """
    out = tmp_path_factory.mktemp("exports")
    folders = {"parity": converted_micro, "tiny": tiny_dir}
    files = {name: {fmt: out / f"{name}.{fmt}" for fmt in ("onnx", "pt2")} for name in folders}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        argv = [str(converted_micro), "--output", str(files["parity"]["onnx"]), "--sensor", SENSOR, "--chip-size", "32"]
        code = script.main(argv)
    export_model(converted_micro, files["parity"]["pt2"], sensor=SENSOR, chip_size=32, check=False)
    for fmt in ("onnx", "pt2"):
        export_model(tiny_dir, files["tiny"][fmt], sensor=SENSOR, chip_size=64, check=False)
    return {"files": files, "folders": folders, "script": (code, printed.getvalue())}


# --------------------------------------------------------------------------------------------------
# parity: exported == eager on real chips
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["parity", "tiny"])
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_exported_file_equals_eager_automodel_on_real_chips(exports, chips, name, fmt):
    """float32, two batch sizes and two chip sizes (the file is dynamic in both): max |difference| < 1e-4."""
    folder = exports["folders"][name]
    eager = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    run = exported_runner(exports["files"][name][fmt], ENCODER_OUTPUTS)
    for size in CHIP_SIZES:
        for batch in BATCH_SIZES:
            inputs = model_inputs(chips[size], batch, eager.config.patch_size)
            with torch.no_grad():
                expected = eager(**inputs)
            hidden, pooled = run(inputs)
            assert hidden.shape == (batch, 1 + (size // eager.config.patch_size) ** 2, eager.config.hidden_size)
            assert_close(hidden, expected.last_hidden_state, **TOL)
            assert_close(pooled, expected.pooler_output, **TOL)


def test_classification_head_exports_with_the_same_label_on_every_chip(micro_config, chips, tmp_path):
    torch.manual_seed(0)
    config = ClayConfig(**{**micro_config.to_dict(), "num_labels": 5})
    head = ClayForImageClassification(config).eval()
    info = export_model(head, tmp_path / "cls.pt2", sensor=SENSOR, chip_size=32, check=False)
    assert [o["name"] for o in info["outputs"]] == ["logits"] and info["task"] == "image-classification"
    (logits,) = exported_runner(tmp_path / "cls.pt2", ["logits"])(model_inputs(chips[64], 3, 4))
    with torch.no_grad():
        expected = head(**model_inputs(chips[64], 3, 4)).logits
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    assert_close(logits, expected, **TOL)


# --------------------------------------------------------------------------------------------------
# the files and their JSON
# --------------------------------------------------------------------------------------------------
def test_onnx_file_passes_the_checker_with_the_names_of_the_transformers_forward(exports):
    path = exports["files"]["parity"]["onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.output] == ENCODER_OUTPUTS
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 10 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # B, H, W symbolic


def test_json_beside_the_file_records_bands_normalisation_versions_and_provenance(exports, converted_micro):
    from clay_hf import __version__, get_sensor

    path = exports["files"]["parity"]["onnx"]
    info = json.loads(export_info_path(path).read_text())
    sensor = get_sensor(SENSOR)
    assert info["format"] == "onnx" and info["file"] == "parity.onnx" and info["task"] == "feature-extraction"
    assert info["sensor"] == SENSOR and info["band_names"] == list(sensor.band_names)
    assert info["wavelengths"] == list(sensor.wavelengths_um) and info["gsd"] == sensor.gsd_m
    assert info["mean"] == list(sensor.mean) and info["std"] == list(sensor.std) and not info["is_sar_db"]
    assert info["patch_size"] == 4 and info["chip_size"] == 32 and info["opset"] == DEFAULT_OPSET
    assert info["dtype"] == "float32" and info["dynamic"] == {"batch": True, "height_width": "multiples of 4"}
    assert info["versions"]["clay_hf"] == __version__ and info["versions"]["onnx"] == onnx.__version__
    assert [i["name"] for i in info["inputs"]] == list(INPUT_NAMES)
    assert info["inputs"][0]["shape"] == ["batch", 10, "height", "width"]
    assert [o["name"] for o in info["outputs"]] == ENCODER_OUTPUTS
    expected = model_provenance(AutoModel.from_pretrained(converted_micro))
    assert info["model"]["provenance"] == expected.label and info["model"]["provenance"].startswith("NOT a released")
    assert max(info["check"]["max_abs_diff"].values()) < 1e-4
    # the same JSON inside the ONNX file, and the processor beside it
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    inside = json.loads(metadata[METADATA_KEY])
    assert inside == {k: v for k, v in info.items() if k not in ("sha256", "check")}
    processor = ClayImageProcessor.from_pretrained(processor_config_path(path))
    assert processor.sensor == SENSOR and processor.patch_size == 4
    assert info["image_processor"] == {**processor.to_dict(), "image_processor_type": "ClayImageProcessor"}
    assert read_export_info(exports["files"]["tiny"]["pt2"])["format"] == "pt2"


def test_script_prints_one_summary_line(exports):
    code, printed = exports["script"]
    assert code == 0
    (line,) = printed.splitlines()
    assert re.fullmatch(
        r"exported ClayModel \(onnx, float32, 10 bands of sentinel-2-l2a, dynamic batch and H/W in multiples of 4\) "
        r"to .*parity\.onnx \(\d+\.\d MiB; max \|difference\| to eager \d\.\de-\d\d at 32 px\) \+ parity\.onnx\.json; "
        r"model: NOT a released Clay model: .*",
        line,
    ), line


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def not_clay(tmp_path) -> Path:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return folder


def test_library_errors_name_the_problem(micro_model_dir, not_clay, tmp_path):
    out = tmp_path / "clay.onnx"
    with pytest.raises(ClayConfigError, match=r"is not a Clay model: its config.json says model_type 'bert'"):
        export_model(not_clay, out, sensor=SENSOR)
    with pytest.raises(ClayConfigError, match=r"is not a Clay model folder or Hub id: its config.json cannot be read"):
        export_model(tmp_path, out, sensor=SENSOR)
    with pytest.raises(UnknownSensorError, match=r"sentinel-2-l2a"):
        export_model(micro_model_dir, out, sensor="sentinel2-l2")
    with pytest.raises(
        ChipSizeError,
        match=r"the chip size 30 \(chip_size=\) is not a positive multiple of the model's patch size 4; use 32",
    ):
        export_model(micro_model_dir, out, sensor=SENSOR, chip_size=30)
    with pytest.raises(ClayInputError, match=r"the folder of output .*missing/clay.onnx does not exist"):
        export_model(micro_model_dir, tmp_path / "missing" / "clay.onnx", sensor=SENSOR)
    with pytest.raises(ClayInputError, match=r"say which bands the exported file takes"):
        export_model(micro_model_dir, out)
    with pytest.raises(ClayInputError, match=r"with wavelengths= and no sensor, also pass mean=, std=, gsd="):
        export_model(micro_model_dir, out, wavelengths=[0.65, 0.56, 0.48])
    with pytest.raises(ClayConfigError, match=r"format must be one of onnx, pt2"):
        export_model(micro_model_dir, tmp_path / "clay.bin", sensor=SENSOR)
    with pytest.raises(ClayConfigError, match=r"dtype bfloat16 is for .pt2 files"):
        export_model(micro_model_dir, out, sensor=SENSOR, dtype="bfloat16")
    assert not out.exists() and not export_info_path(out).exists()


def test_script_refuses_a_wrong_command_with_one_line_and_exit_2(script, micro_model_dir, not_clay, tmp_path, capsys):
    out = str(tmp_path / "clay.onnx")
    cases = {
        "not a Clay model": ([str(not_clay), "--output", out, "--sensor", SENSOR], r"is not a Clay model"),
        "unknown sensor": (
            [str(micro_model_dir), "--output", out, "--sensor", "sentinel2-l2"],
            r"sentinel-2-l2a",
        ),
        "chip size": (
            [str(micro_model_dir), "--output", out, "--sensor", SENSOR, "--chip-size", "30"],
            r"the chip size 30 \(--chip-size\) is not a positive multiple of the model's patch size 4; use 32",
        ),
        "missing folder": (
            [str(micro_model_dir), "--output", str(tmp_path / "missing" / "c.onnx"), "--sensor", SENSOR],
            r"the folder of --output .*missing/c\.onnx does not exist",
        ),
        "no bands": ([str(micro_model_dir), "--output", out], r"say which bands the file takes: --sensor NAME"),
        "no normalisation": (
            [str(micro_model_dir), "--output", out, "--wavelengths", "0.65", "0.56", "0.48"],
            r"with --wavelengths and no --sensor, also pass --mean, --std, --gsd",
        ),
    }
    for what, (argv, message) in cases.items():
        capsys.readouterr()
        assert script.main(argv) == 2, what
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
        assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), (what, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert"]
