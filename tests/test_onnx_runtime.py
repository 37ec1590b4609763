"""Running exported files (clay_hf.onnx_runtime): the runner behind the model's interface, heads, remote code, the
README's onnxruntime snippet without torch or clay_hf, and ``scripts/embed.py --backend onnx``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForSemanticSegmentation

from clay_hf import ClayConfig, ClayForSemanticSegmentation, ClayModel
from clay_hf.errors import BandMismatchError, ChipSizeError, ClayInputError
from clay_hf.export import export_info_path, export_model, load_model_for_export
from clay_hf.modeling_clay import ClayModelOutput
from clay_hf.onnx_runtime import OnnxClayModel

from .export_helpers import BATCH_SIZES, CHIP_SIZES, SENSOR, exported_runner, model_inputs, real_chips
from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = ROOT / "docs" / "deploy_onnx.py"  # the README's "Deploy" snippet, run here as it is printed there
TOL = dict(atol=1e-4, rtol=0)

# A sitecustomize.py for a child process: torch, transformers and clay_hf cannot be imported, as on a machine that
# has only onnxruntime and numpy.
WITHOUT_TORCH = """
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "transformers", "clay_hf"):
            raise ModuleNotFoundError(f"No module named {name!r} (not installed here)", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture(scope="module")
def chips() -> dict[int, dict]:
    return real_chips()


@pytest.fixture(scope="module")
def micro_onnx(micro_model_dir, tmp_path_factory, one_torch_thread) -> Path:
    """The seeded micro ClayModel folder exported for Sentinel-2 L2A."""
    path = tmp_path_factory.mktemp("onnx") / "clay.onnx"
    export_model(micro_model_dir, path, sensor=SENSOR, chip_size=32)
    return path


@pytest.fixture(scope="module")
def eager(micro_model_dir) -> ClayModel:
    return ClayModel.from_pretrained(micro_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def segmentation(micro_config, tmp_path_factory, one_torch_thread) -> dict:
    """A seeded micro segmentation head (4 classes) saved as a folder, exported as ONNX and .pt2 from the folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("seg") / "clay-seg"
    ClayForSemanticSegmentation(ClayConfig(**{**micro_config.to_dict(), "num_labels": 4})).save_pretrained(folder)
    files = {fmt: folder.parent / f"seg.{fmt}" for fmt in ("onnx", "pt2")}
    for path in files.values():
        export_model(folder, path, sensor=SENSOR, chip_size=32, check=False)
    return {"folder": folder, "files": files}


# --------------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------------
def test_runner_takes_processor_outputs_and_gives_the_eager_outputs(micro_onnx, eager, chips):
    model = OnnxClayModel(micro_onnx)
    assert (model.task, model.num_bands, model.config.patch_size, model.dtype) == (
        "feature-extraction",
        10,
        4,
        torch.float32,
    )
    for size in CHIP_SIZES:
        for batch in BATCH_SIZES:
            c = chips[size]
            inputs = model.preprocess(
                c["pixels"][:batch], datetimes=c["datetimes"][:batch], lat=c["lat"][:batch], lon=c["lon"][:batch]
            )
            assert inputs["gsd"].ndim == 0  # the processor's one gsd for all chips, repeated by the runner
            out = model(**inputs)
            with torch.no_grad():
                expected = eager(**inputs)
            assert isinstance(out, ClayModelOutput)
            assert_close(out.last_hidden_state, expected.last_hidden_state, **TOL)
            assert_close(out.pooler_output, expected.pooler_output, **TOL)
    hidden, pooled = model(**inputs, return_dict=False)
    assert torch.equal(pooled, out.pooler_output)


def test_runner_refuses_a_wrong_band_count_chip_size_or_argument(micro_onnx):
    model = OnnxClayModel(micro_onnx)
    with pytest.raises(
        BandMismatchError,
        match=r"clay\.onnx was exported for 10 bands of sensor 'sentinel-2-l2a' "
        r"\(blue, green, red, .*swir22\), got pixel_values with 4 bands; pass those bands",
    ) as err:
        model(torch.zeros(1, 4, 32, 32), torch.ones(4), 10.0)
    assert (err.value.num_bands, err.value.num_values) == (4, 10)
    with pytest.raises(ChipSizeError, match=r"chip of 30x32 pixels does not fit patch_size 4"):
        model(torch.zeros(1, 10, 30, 32), torch.ones(10), 10.0)
    with pytest.raises(TypeError, match="lat_lon"):
        model(torch.zeros(1, 10, 32, 32), torch.ones(10), 10.0, lat_lon=torch.zeros(1, 4))
    with pytest.raises(ClayInputError, match=r"does not exist; export a model first"):
        OnnxClayModel(micro_onnx.with_name("missing.onnx"))


def test_segmentation_exports_give_the_eager_label_on_every_pixel(segmentation, chips):
    head = AutoModelForSemanticSegmentation.from_pretrained(segmentation["folder"]).eval()
    for fmt, path in segmentation["files"].items():
        run = exported_runner(path, ["logits"])
        for size in CHIP_SIZES:
            for batch in BATCH_SIZES:
                inputs = model_inputs(chips[size], batch, 4)
                (logits,) = run(inputs)
                with torch.no_grad():
                    expected = head(**inputs).logits
                assert logits.shape == (batch, 4, size, size), fmt
                assert torch.equal(logits.argmax(1), expected.argmax(1)), (fmt, size, batch)
                assert_close(logits, expected, **TOL)
    assert json.loads(export_info_path(segmentation["files"]["onnx"]).read_text())["id2label"] == {
        str(i): f"LABEL_{i}" for i in range(4)
    }


def test_export_through_remote_code_equals_the_clay_hf_export(micro_model_dir, micro_onnx, chips, tmp_path):
    remote = load_model_for_export(micro_model_dir, trust_remote_code=True)
    assert type(remote).__module__.startswith("transformers_modules"), type(remote).__module__
    path = tmp_path / "remote.onnx"
    export_model(micro_model_dir, path, sensor=SENSOR, chip_size=32, trust_remote_code=True)
    ours, theirs = onnx.load(str(micro_onnx)).graph, onnx.load(str(path)).graph
    assert [n.op_type for n in ours.node] == [n.op_type for n in theirs.node]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in ours.initializer}
    assert weights.keys() == {t.name for t in theirs.initializer}
    assert all(np.array_equal(weights[t.name], onnx.numpy_helper.to_array(t)) for t in theirs.initializer)
    inputs = model_inputs(chips[64], 3, 4)
    names = ["last_hidden_state", "pooler_output"]
    for a, b in zip(exported_runner(micro_onnx, names)(inputs), exported_runner(path, names)(inputs)):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# the README snippet, where torch and clay_hf cannot be imported
# --------------------------------------------------------------------------------------------------
def test_readme_snippet_runs_with_onnxruntime_and_numpy_only(micro_onnx, eager, chips, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_TORCH)
    env = {**os.environ, "PYTHONPATH": str(site)}
    blocked = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert blocked.returncode != 0 and "No module named 'torch' (not installed here)" in blocked.stderr
    raw = chips[32]["pixels"]
    np.save(tmp_path / "chips.npy", raw)
    proc = subprocess.run(
        [sys.executable, str(SNIPPET), str(micro_onnx), "chips.npy", "embeddings.npy"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    embeddings = torch.from_numpy(np.load(tmp_path / "embeddings.npy"))
    inputs = OnnxClayModel(micro_onnx).preprocess(raw)  # no dates or places: zeros, as in the snippet
    with torch.no_grad():
        expected = eager(**inputs).pooler_output
    assert_close(embeddings, expected, **TOL)


# --------------------------------------------------------------------------------------------------
# embeddings through onnxruntime
# --------------------------------------------------------------------------------------------------
def test_embed_script_with_the_onnx_backend_writes_the_geoparquet_of_the_torch_path(
    micro_onnx, micro_model_dir, tmp_path, monkeypatch, capsys
):
    import pyarrow.parquet as pq

    from clay_hf.apps.embeddings import embed_to_parquet, load_embedding_model
    from clay_hf.geodata.sample_data import sentinel2_l2a_geotiff

    monkeypatch.setitem(sys.modules, "accelerate", None)  # one process, as in test_embeddings
    geotiff = sentinel2_l2a_geotiff()
    embed_to_parquet(
        geotiff,
        load_embedding_model(micro_model_dir),
        tmp_path / "torch",
        chip_size=32,
        outputs=["cls", "mean"],
        progress=False,
    )
    script = load_script(ROOT / "scripts" / "embed.py")
    argv = [
        str(geotiff),
        "--model",
        str(micro_onnx),
        "--output",
        str(tmp_path / "onnx"),
        "--chip-size",
        "32",
        "--outputs",
        "cls",
        "mean",
        "--quiet",
        "--no-tune-allocator",
    ]
    assert script.main([*argv, "--backend", "onnx"]) == 0
    (torch_shard,) = (tmp_path / "torch" / "data" / "train").glob("*.parquet")
    (onnx_shard,) = (tmp_path / "onnx" / "data" / "train").glob("*.parquet")
    assert torch_shard.name == onnx_shard.name
    a, b = pq.read_table(torch_shard), pq.read_table(onnx_shard)
    assert a.schema.names == b.schema.names and a.schema.metadata[b"geo"] == b.schema.metadata[b"geo"]
    for column in a.schema.names:
        if column in ("embedding", "mean_embedding"):
            assert_close(torch.tensor(b[column].to_pylist()), torch.tensor(a[column].to_pylist()), **TOL)
        else:
            assert a[column].to_pylist() == b[column].to_pylist(), column
    info = json.loads((tmp_path / "onnx" / "embedding_info.json").read_text())
    assert info["model"]["name_or_path"] == str(micro_onnx) and info["model"]["fingerprint"].startswith("onnx:")
    assert info["dtype"] == "float32"

    capsys.readouterr()
    assert script.main([*argv, "--dtype", "float16", "--output", str(tmp_path / "half")]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (
        line.startswith("error: ")
        and "was exported in float32, not float16: pass float32 as --dtype (an exported" in line
    )


def test_embedding_needs_an_encoder_export(segmentation):
    from clay_hf.apps.embeddings import load_embedding_model

    with pytest.raises(ClayInputError, match=r"is an exported semantic-segmentation head \(outputs logits\)"):
        load_embedding_model(segmentation["files"]["onnx"])
