"""clay_hf.cpu_inference: the opt-in prepacked linear layers and CPU attention, on and off, and what they keep."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close
from transformers import AutoModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from clay_hf import ClayForPreTraining, ClayImageProcessor, ClayModel
from clay_hf.cpu_inference import (
    CPU_ATTENTION,
    CpuPrepackedLinear,
    cpu_attention,
    cpu_prepacked_bytes,
    cpu_prepacking_available,
    prepare_for_cpu_inference,
)
from clay_hf.geodata.raster import iter_chips, open_source

from .model_helpers import random_inputs


@pytest.fixture(scope="module")
def real_s2_inputs(s2_files) -> dict[str, torch.Tensor]:
    """8 real 32 x 32 Sentinel-2 chips at 20 m, processed for the parity fixture's patch size 4."""
    with open_source(s2_files, resolution=20.0) as source:
        chips = list(iter_chips(source, 32, stride=96))[:8]
    raw = np.stack([c["pixels"] for c in chips]).astype(np.float32)  # (8, 10, 32, 32)
    processor = ClayImageProcessor(sensor="sentinel-2-l2a", patch_size=4)
    inputs = processor(raw, lat=[c["lat"] for c in chips], lon=[c["lon"] for c in chips], datetimes="2022-06-15")
    return dict(inputs)


def _linears(model):
    return [m for m in model.modules() if isinstance(m, CpuPrepackedLinear)]


# ---- the opt-in call ------------------------------------------------------------------------------------------
def test_prepare_swaps_layers_and_attention_and_back_keeping_parameters(micro_config):
    torch.manual_seed(0)
    model = ClayForPreTraining(copy.deepcopy(micro_config)).eval()
    names = list(model.state_dict())
    parameters = {name: p for name, p in model.named_parameters()}
    assert not _linears(model) and model.config._attn_implementation == "sdpa"  # the plain model by default

    assert prepare_for_cpu_inference(model) is model
    layers = micro_config.num_hidden_layers + micro_config.decoder_num_hidden_layers
    assert len(_linears(model)) == 4 * layers  # qkv, out, fc1, fc2 of every encoder and decoder layer
    assert model.config._attn_implementation == CPU_ATTENTION
    assert ALL_ATTENTION_FUNCTIONS.get_interface(CPU_ATTENTION, None) is cpu_attention
    assert list(model.state_dict()) == names  # the same parameter names, and the same tensors (no copy)
    assert all(p is parameters[name] for name, p in model.named_parameters())
    prepare_for_cpu_inference(model)  # twice is once
    assert len(_linears(model)) == 4 * layers

    prepare_for_cpu_inference(model, attention=False)  # the call sets the whole state
    assert len(_linears(model)) == 4 * layers and model.config._attn_implementation == "sdpa"
    prepare_for_cpu_inference(model, enabled=False)
    assert not _linears(model) and model.config._attn_implementation == "sdpa"
    assert list(model.state_dict()) == names
    assert all(p is parameters[name] for name, p in model.named_parameters())


def test_prepare_off_gives_back_the_attention_the_model_had(micro_config):
    config = copy.deepcopy(micro_config)
    config._attn_implementation = "eager"
    model = prepare_for_cpu_inference(ClayModel(config).eval(), prepack_linear=False)
    assert not _linears(model) and model.config._attn_implementation == CPU_ATTENTION
    prepare_for_cpu_inference(model, enabled=False)
    assert model.config._attn_implementation == "eager"


def test_prepare_rejects_other_models():
    with pytest.raises(TypeError, match=r"prepare_for_cpu_inference expects a Clay model .*Linear"):
        prepare_for_cpu_inference(nn.Linear(2, 2))


def test_a_prepared_model_saves_and_loads_as_the_plain_model(micro_config, tmp_path):
    torch.manual_seed(0)
    model = prepare_for_cpu_inference(ClayModel(micro_config).eval())
    batch = random_inputs()
    with torch.inference_mode():
        expected = model(**batch).last_hidden_state
    model.save_pretrained(tmp_path)
    assert CPU_ATTENTION not in (tmp_path / "config.json").read_text()
    assert "_attn_implementation" not in json.loads((tmp_path / "config.json").read_text())
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    assert not _linears(loaded) and loaded.config._attn_implementation == "sdpa"
    with torch.inference_mode():
        assert_close(loaded.eval()(**batch).last_hidden_state, expected, atol=1e-5, rtol=1e-5)


# ---- attention ------------------------------------------------------------------------------------------------
def test_cpu_attention_is_matmul_attention_for_reduced_precision_inference_only(micro_config, monkeypatch):
    sdpa_calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def spy(module, query, *args, **kwargs):
        sdpa_calls.append(query.dtype)
        return sdpa(module, query, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", spy)
    model = prepare_for_cpu_inference(ClayModel(micro_config).eval(), prepack_linear=False)
    attention = model.encoder.layers[0].attention
    q, k, v = torch.randn(3, 2, 2, 5, 32, generator=torch.Generator().manual_seed(0))  # 3 x (B, heads, N, d)
    with torch.inference_mode():
        low, _ = cpu_attention(attention, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, scaling=32**-0.5)
        assert sdpa_calls == []  # bfloat16 CPU inference: the matmul path
        full, _ = cpu_attention(attention, q, k, v, None, scaling=32**-0.5)
        assert sdpa_calls == [torch.float32]  # float32: sdpa
    cpu_attention(attention, q.bfloat16().requires_grad_(), k.bfloat16(), v.bfloat16(), None, scaling=32**-0.5)
    assert sdpa_calls == [torch.float32, torch.bfloat16]  # gradients recorded: sdpa
    assert low.shape == full.shape == (2, 5, 2, 32)  # (B, N, heads, d)
    assert torch.nn.functional.cosine_similarity(low.float().flatten(1), full.flatten(1), dim=-1).min() > 0.999

    batch = random_inputs()
    with torch.inference_mode():
        expected = model(**batch).pooler_output
        low_model = copy.deepcopy(model).to(torch.bfloat16)
        got = low_model(**{**batch, "pixel_values": batch["pixel_values"].bfloat16()}).pooler_output.float()
    assert torch.nn.functional.cosine_similarity(expected, got, dim=-1).min() > 0.999


# ---- prepacked CPU linear layers ------------------------------------------------------------------------------
def test_prepacked_cpu_inference_equals_plain_linear_on_real_chips(converted_micro, real_s2_inputs):
    assert cpu_prepacking_available(torch.float32)  # oneDNN is in every x86/ARM CPU build of PyTorch
    model = prepare_for_cpu_inference(ClayModel.from_pretrained(converted_micro).eval())
    linears = _linears(model)
    assert len(linears) == 4 * model.config.num_hidden_layers  # qkv, out, fc1, fc2 of every layer
    with torch.inference_mode():
        packed = model(**real_s2_inputs).last_hidden_state
        weight_bytes = sum(m.weight.numel() * 4 for m in linears)
        assert cpu_prepacked_bytes(model) == weight_bytes
        prepare_for_cpu_inference(model, prepack_linear=False)  # plain linear layers, the same attention
        assert cpu_prepacked_bytes(model) == 0
        plain = model(**real_s2_inputs).last_hidden_state
        assert cpu_prepacked_bytes(model) == 0
    assert_close(packed, plain, atol=1e-5, rtol=1e-5)

    prepare_for_cpu_inference(model)
    low = copy.deepcopy(model).to(torch.bfloat16)
    low_inputs = {**real_s2_inputs, "pixel_values": real_s2_inputs["pixel_values"].bfloat16()}
    with torch.inference_mode():
        packed_low = low(**low_inputs).pooler_output
        # Where oneDNN has no bfloat16 kernels here the plain path runs: nothing is packed.
        expected_bytes = weight_bytes // 2 if cpu_prepacking_available(torch.bfloat16) else 0
        assert cpu_prepacked_bytes(low) == expected_bytes
        prepare_for_cpu_inference(low, prepack_linear=False)
        plain_low = low(**low_inputs).pooler_output
    cosine = torch.nn.functional.cosine_similarity(packed_low.float(), plain_low.float(), dim=-1)
    assert cosine.min() > 0.9999


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # still what the ONNX exporter uses
def test_prepacking_only_in_cpu_inference_without_autocast(micro_config):
    model = prepare_for_cpu_inference(ClayModel(micro_config).eval())
    batch = random_inputs()
    out = model(**batch).last_hidden_state  # gradients recorded: training path
    assert out.requires_grad and cpu_prepacked_bytes(model) == 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**batch)
    assert cpu_prepacked_bytes(model) == 0
    linear = _linears(model)[0]
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="same dtype"):  # a dtype unlike the weight's goes to plain F.linear
            linear(torch.randn(3, linear.in_features, dtype=torch.float64))
        assert cpu_prepacked_bytes(model) == 0
        traced = torch.jit.trace(linear, torch.randn(3, linear.in_features), check_trace=False)  # exporters: plain
        assert "aten::linear" in {node.kind() for node in traced.graph.nodes()}
        assert cpu_prepacked_bytes(model) == 0
        model(**batch)
    assert cpu_prepacked_bytes(model) > 0


def test_prepacked_weights_follow_updates_copies_and_casts(micro_config):
    torch.manual_seed(0)
    model = prepare_for_cpu_inference(ClayModel(micro_config).eval())
    batch = random_inputs()
    with torch.no_grad():
        first = model(**batch).pooler_output
        model.encoder.layers[0].mlp.fc1.weight.add_(0.05)  # an in-place update (an optimizer step)
        updated = model(**batch).pooler_output
        reference = ClayModel(micro_config).eval()  # the plain model
        reference.load_state_dict(model.state_dict())
        assert_close(updated, reference(**batch).pooler_output, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(first, updated)
        model.load_state_dict(reference.state_dict() | {"encoder.layers.0.mlp.fc1.bias": torch.full((128,), 0.1)})
        assert cpu_prepacked_bytes(model) == 0  # loading drops the packed copies
        reloaded = model(**batch).pooler_output
        assert not torch.allclose(updated, reloaded)
        # deepcopy and pickle leave the opaque packed tensors behind; the copy packs its own
        clone = copy.deepcopy(model)
        assert cpu_prepacked_bytes(clone) == 0
        assert_close(clone(**batch).pooler_output, reloaded)
        assert_close(pickle.loads(pickle.dumps(model))(**batch).pooler_output, reloaded)
        model.to(torch.float64)  # a cast makes new parameters and drops the packed copy of the old ones
        assert cpu_prepacked_bytes(model) == 0


def test_without_working_prepacking_ops_the_plain_path_runs(micro_config, monkeypatch, caplog):
    import clay_hf.cpu_inference as cpu_inference

    def unavailable(*args, **kwargs):
        raise RuntimeError("no oneDNN packing in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", unavailable)
    probe = cpu_inference.cpu_prepacking_available.__wrapped__  # the uncached probe
    with caplog.at_level("INFO", logger="clay_hf.cpu_inference"):
        assert probe(torch.float32) is False
    assert "prepacked torch.float32 linear layers are off here (RuntimeError: no oneDNN packing" in caplog.text
    assert probe(torch.float16) is False  # only float32 and bfloat16 are packed

    monkeypatch.setattr(cpu_inference, "cpu_prepacking_available", probe)
    model = prepare_for_cpu_inference(ClayModel(micro_config).eval())
    batch = random_inputs()
    with torch.no_grad():
        out = model(**batch).pooler_output
    assert cpu_prepacked_bytes(model) == 0
    prepare_for_cpu_inference(model, enabled=False)
    with torch.no_grad():
        assert torch.equal(out, model(**batch).pooler_output)
