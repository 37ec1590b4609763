"""ClayModel / ClayForPreTraining behaviour beyond parity: shapes, dtypes, options, errors, caching."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from clay_hf import (
    BandMismatchError,
    ChipSizeError,
    ClayForPreTraining,
    ClayInputError,
    ClayModel,
)
from clay_hf.modeling_clay import patchify, random_masking, sincos_1d, sincos_2d_gsd

WAVES4 = torch.tensor([0.65, 0.56, 0.48, 0.842])


def _batch(b=2, c=4, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        pixel_values=torch.randn(b, c, h, w, generator=g),
        wavelengths=WAVES4[:c] if c <= 4 else torch.linspace(0.45, 2.2, c),
        gsd=10.0,
        time=torch.randn(b, 4, generator=g),
        latlon=torch.randn(b, 4, generator=g),
    )


@pytest.fixture()
def encoder(micro_config):
    torch.manual_seed(0)
    return ClayModel(micro_config).eval()


@pytest.fixture()
def pretrainer(micro_config):
    torch.manual_seed(0)
    return ClayForPreTraining(micro_config).eval()


# ---- pure functions -------------------------------------------------------------------------------------------
def test_sincos_shapes_and_gsd_scaling():
    assert sincos_1d(WAVES4, 128).shape == (4, 128)
    table = sincos_2d_gsd(3, 5, 56, 10.0)
    assert table.shape == (15, 56)
    # per-sample gsd gives one table per chip, equal to the scalar tables
    both = sincos_2d_gsd(3, 5, 56, torch.tensor([10.0, 0.6]))
    assert_close(both[0], table)
    assert_close(both[1], sincos_2d_gsd(3, 5, 56, 0.6))


def test_sincos_2d_quirk_exponent_divides_by_full_width():
    """Pinned quirk: omega_k = gsd / 10000^(2 * (k/(n-1)) / dim), not the textbook 10000^(k/n)."""
    dim, n = 16, 4
    table = sincos_2d_gsd(1, 2, dim, 1.0)  # x = 0, 1 ; y = 0
    k = torch.arange(n)
    omega = 1.0 / 10000 ** (2 * (k / (n - 1)) / dim)
    assert_close(table[1, :n], torch.sin(omega))
    assert_close(table[1, n : 2 * n], torch.cos(omega))


def test_patchify_layout_is_c_p_p():
    x = torch.arange(2 * 3 * 4 * 8, dtype=torch.float32).reshape(2, 3, 4, 8)
    patches = patchify(x, 4)  # (2, 2, 3*16)
    assert patches.shape == (2, 2, 48)
    assert_close(patches[0, 1].reshape(3, 4, 4), x[0, :, :, 4:8])


def test_random_masking_masks_lowest_noise_first():
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    keep, masked, mask, restore = random_masking(noise, 0.5)
    assert masked.tolist() == [[1, 3]] and keep.tolist() == [[0, 2]]
    assert mask.tolist() == [[0, 1, 0, 1]]
    assert torch.equal(torch.argsort(noise, dim=1)[0][restore[0]], torch.arange(4))


# ---- ClayModel ------------------------------------------------------------------------------------------------
def test_model_output_shapes_and_hidden_states(encoder, micro_config):
    out = encoder(**_batch(), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 1 + 64, 64)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    assert len(out.hidden_states) == micro_config.num_hidden_layers + 1
    assert all(h.shape == (2, 65, 64) for h in out.hidden_states)
    as_tuple = encoder(**_batch(), return_dict=False)
    assert torch.equal(as_tuple[0], out.last_hidden_state)


def test_non_square_chip_matches_square_rows(encoder):
    """A 32x16 chip is the left half of a 32x32 grid: its position codes and the patch tokens agree."""
    batch = _batch(h=32, w=16)
    out = encoder(**batch)
    assert out.last_hidden_state.shape == (2, 1 + 8 * 4, 64)
    tokens = encoder.embed_patches(
        batch["pixel_values"], batch["wavelengths"], torch.tensor(10.0), batch["time"], batch["latlon"]
    )
    full = _batch(h=32, w=32)
    full["pixel_values"][:, :, :, :16] = batch["pixel_values"]
    full_tokens = encoder.embed_patches(
        full["pixel_values"], batch["wavelengths"], torch.tensor(10.0), batch["time"], batch["latlon"]
    ).reshape(2, 8, 8, 64)
    assert_close(tokens.reshape(2, 8, 4, 64), full_tokens[:, :, :4])


def test_any_band_count_and_single_band(encoder):
    for c in (1, 2, 10, 13):
        out = encoder(**_batch(c=c))
        assert out.pooler_output.shape == (2, 64)


def test_per_sample_gsd_equals_separate_calls(encoder):
    batch = _batch()
    out = encoder(**{**batch, "gsd": torch.tensor([10.0, 0.6])})
    first = encoder(
        **{k: (v[:1] if k in ("pixel_values", "time", "latlon") else v) for k, v in batch.items()},
    )
    second = encoder(
        **{**{k: (v[1:] if k in ("pixel_values", "time", "latlon") else v) for k, v in batch.items()}, "gsd": 0.6}
    )
    assert_close(out.last_hidden_state[0], first.last_hidden_state[0])
    assert_close(out.last_hidden_state[1], second.last_hidden_state[0])


def test_missing_time_and_latlon_are_zeros(encoder):
    batch = _batch()
    zeros = encoder(**{**batch, "time": torch.zeros(2, 4), "latlon": torch.zeros(2, 4)})
    none = encoder(**{**batch, "time": None, "latlon": None})
    assert torch.equal(zeros.last_hidden_state, none.last_hidden_state)


def test_bfloat16_runs_and_agrees(encoder):
    batch = _batch()
    with torch.no_grad():
        ref = encoder(**batch).pooler_output
        bf16 = copy.deepcopy(encoder).to(torch.bfloat16)
        low = bf16(**{**batch, "pixel_values": batch["pixel_values"].bfloat16()}).pooler_output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = encoder(**batch).pooler_output
    assert low.dtype == torch.bfloat16
    for other in (low, auto):
        cos = torch.nn.functional.cosine_similarity(ref, other.float(), dim=-1)
        assert cos.min() > 0.99


def test_sdpa_and_eager_attention_agree(micro_config):
    torch.manual_seed(0)
    sdpa = ClayModel(micro_config).eval()
    eager_config = copy.deepcopy(micro_config)
    eager_config._attn_implementation = "eager"
    eager = ClayModel(eager_config).eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    batch = _batch()
    assert_close(sdpa(**batch).last_hidden_state, eager(**batch).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients(micro_config):
    torch.manual_seed(0)
    plain = ClayForPreTraining(micro_config).train()
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing_enable()
    assert ckpt.clay.encoder.layers[0].gradient_checkpointing
    batch = _batch()
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (plain, ckpt):
        out = model(**batch, noise=noise, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        losses.append(out.loss.detach())
    assert_close(losses[0], losses[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_generated_weights_cache_follows_parameter_updates(encoder):
    batch = _batch()
    with torch.no_grad():
        first = encoder(**batch).pooler_output
        cached = encoder(**batch).pooler_output
        assert torch.equal(first, cached)
        assert len(encoder.patch_embedding._cache) == 1
        encoder.patch_embedding.fclayer.l1.weight.add_(0.05)  # an optimizer step is an in-place update
        changed = encoder(**batch).pooler_output
    assert not torch.allclose(first, changed)
    fresh = copy.deepcopy(encoder)
    fresh.patch_embedding._cache.clear()
    with torch.no_grad():
        assert torch.equal(fresh(**batch).pooler_output, changed)


def test_generated_weights_cache_is_keyed_on_cpu_autocast(micro_config):
    # CPU autocast makes the generator return bfloat16 weights; they must not be reused once autocast is off.
    model = ClayModel(micro_config).eval()
    batch = _batch()
    with torch.no_grad():
        expected = copy.deepcopy(model)(**batch).pooler_output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**batch)
        assert len(model.patch_embedding._cache) == 1
        after = model(**batch).pooler_output
    assert len(model.patch_embedding._cache) == 2
    assert torch.equal(after, expected)


def test_patch_embedding_equals_the_original_strided_conv(micro_config):
    # The original applies the generated kernel as a conv with stride = kernel = P; ours is patchify + linear.
    embed = ClayModel(micro_config).eval().patch_embedding
    batch = _batch()
    p, d = micro_config.patch_size, micro_config.hidden_size
    with torch.no_grad():
        weights, bias = embed.generate(batch["wavelengths"])
        c = batch["wavelengths"].shape[0]
        kernel = weights.reshape(c, d, p, p).transpose(0, 1) * 0.02  # (C, D*P*P) -> (D, C, P, P)
        conv = torch.nn.functional.conv2d(batch["pixel_values"], kernel, bias, stride=p)  # (B, D, h, w)
        ours = embed(batch["pixel_values"], batch["wavelengths"])
    assert_close(ours, conv.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_no_cache_while_generator_trains(micro_config):
    model = ClayModel(micro_config).train()
    out = model(**_batch())
    out.pooler_output.sum().backward()
    assert model.patch_embedding.fclayer.l1.weight.grad is not None
    assert model.patch_embedding._cache == {}


# ---- ClayForPreTraining ---------------------------------------------------------------------------------------
def test_pretraining_outputs_and_losses(pretrainer, micro_config):
    batch = _batch()
    teacher = torch.randn(2, micro_config.teacher_dim)
    out = pretrainer(**batch, teacher_embeddings=teacher, generator=torch.Generator().manual_seed(0))
    length = 64
    visible = length - int(0.75 * length)
    assert out.logits.shape == (2, length, 4 * 4 * 4)
    assert out.mask.shape == (2, length) and out.mask.sum(1).tolist() == [48.0, 48.0]
    assert out.last_hidden_state.shape == (2, 1 + visible, 64)
    assert out.projected_cls.shape == (2, 48)
    expected = 0.9 * out.reconstruction_loss + 0.1 * out.representation_loss
    assert_close(out.loss, expected)
    cos = torch.nn.functional.cosine_similarity(out.projected_cls, teacher, dim=-1).mean()
    assert_close(out.representation_loss, 1 - cos)
    no_teacher = pretrainer(**batch, noise=torch.rand(2, 64))
    assert no_teacher.representation_loss is None
    assert_close(no_teacher.loss, no_teacher.reconstruction_loss)


def test_reconstruction_loss_is_masked_l1(pretrainer):
    batch = _batch()
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(2))
    out = pretrainer(**batch, noise=noise)
    target = patchify(batch["pixel_values"], 4)
    per_patch = (out.logits - target).abs().mean(-1)
    assert_close(out.reconstruction_loss, per_patch[out.mask.bool()].mean())
    scaled = pretrainer(**batch, noise=noise, reconstruction_loss_scale=0.1)  # MODIS batches
    assert_close(scaled.reconstruction_loss, out.reconstruction_loss * 0.1)


def test_norm_pix_loss_standardises_targets(micro_config):
    torch.manual_seed(0)
    model = ClayForPreTraining(copy.deepcopy(micro_config)).eval()
    model.config.norm_pix_loss = True
    batch = _batch()
    out = model(**batch, noise=torch.rand(2, 64))
    t = patchify(batch["pixel_values"], 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert_close(out.reconstruction_loss, ((out.logits - t).abs().mean(-1))[out.mask.bool()].mean())


def test_band_dropping_is_deterministic_training_only_and_keeps_target(pretrainer, micro_config):
    batch = _batch(b=64, h=8, w=8)
    model = pretrainer.train()
    dropped = model.drop_bands(batch["pixel_values"], batch["latlon"], torch.Generator().manual_seed(5))
    again = model.drop_bands(batch["pixel_values"], batch["latlon"], torch.Generator().manual_seed(5))
    assert torch.equal(dropped, again)
    zeroed = (dropped.abs().sum(dim=(2, 3)) == 0).sum(dim=1)  # bands zeroed per chip
    assert set(zeroed.tolist()) <= {0, 2, 4} and {0, 2, 4} <= set(zeroed.tolist())
    # chips without a location are never touched
    no_loc = model.drop_bands(batch["pixel_values"], torch.zeros(64, 4), torch.Generator().manual_seed(5))
    assert torch.equal(no_loc, batch["pixel_values"])
    # in eval mode, the forward never drops bands: identical outputs whatever the generator
    model.eval()
    noise = torch.rand(64, 4)
    a = model(**batch, noise=noise, generator=torch.Generator().manual_seed(1)).logits
    b = model(**batch, noise=noise, generator=torch.Generator().manual_seed(2)).logits
    assert torch.equal(a, b)


def test_generator_makes_masking_reproducible(pretrainer):
    batch = _batch()
    a = pretrainer(**batch, generator=torch.Generator().manual_seed(9)).mask
    b = pretrainer(**batch, generator=torch.Generator().manual_seed(9)).mask
    c = pretrainer(**batch, generator=torch.Generator().manual_seed(10)).mask
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pretraining_trains(micro_config):
    torch.manual_seed(0)
    model = ClayForPreTraining(micro_config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = _batch(b=4)
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 32), torch.linspace(0, 3, 32), indexing="ij")
    smooth = torch.stack([torch.sin(xx + k) * torch.cos(yy - k) for k in range(4)])  # (4, 32, 32), learnable
    batch["pixel_values"] = smooth.expand(4, -1, -1, -1).clone()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        out = model(**batch, noise=torch.rand(4, 64, generator=g))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


# ---- errors ---------------------------------------------------------------------------------------------------
def test_band_count_mismatch(encoder):
    with pytest.raises(BandMismatchError, match=r"pixel_values has 4 bands but wavelengths has shape \(3,\)"):
        encoder(**{**_batch(), "wavelengths": WAVES4[:3]})


@pytest.mark.parametrize(("h", "w"), [(30, 32), (32, 2), (2, 2)])
def test_chip_size_errors(encoder, h, w):
    with pytest.raises(ChipSizeError, match=rf"chip of {h}x{w} pixels does not fit patch_size 4"):
        encoder(**_batch(h=h, w=w))


def test_input_shape_errors(encoder, pretrainer):
    with pytest.raises(ClayInputError, match=r"pixel_values must be a \(B, C, H, W\) tensor, got \(4, 32, 32\)"):
        encoder(**{**_batch(), "pixel_values": torch.zeros(4, 32, 32)})
    with pytest.raises(ClayInputError, match=r"latlon must have shape \(2, 4\).*got \(2, 2\)"):
        encoder(**{**_batch(), "latlon": torch.zeros(2, 2)})
    with pytest.raises(ClayInputError, match=r"gsd must be a number \(metres\) or a \(2,\) tensor"):
        encoder(**{**_batch(), "gsd": torch.ones(3)})
    with pytest.raises(ClayInputError, match=r"noise must have shape \(2, 64\)"):
        pretrainer(**_batch(), noise=torch.rand(2, 10))
    with pytest.raises(ClayInputError, match=r"teacher_embeddings must have shape \(2, 48\)"):
        pretrainer(**_batch(), teacher_embeddings=torch.rand(2, 1024))


def test_cpu_bfloat16_inference_uses_matmul_attention_close_to_float32(micro_config):
    from clay_hf.modeling_clay import _attention_function, cpu_reduced_precision_attention

    model = ClayModel(micro_config).eval()
    batch = _batch()
    query = torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert _attention_function(model.config, query) is cpu_reduced_precision_attention
        assert _attention_function(model.config, query.float()) is not cpu_reduced_precision_attention
        expected = model(**batch).pooler_output
        low = copy.deepcopy(model).to(torch.bfloat16)
        got = low(**{**batch, "pixel_values": batch["pixel_values"].bfloat16()}).pooler_output.float()
    assert _attention_function(model.config, query.requires_grad_()) is not cpu_reduced_precision_attention
    assert torch.nn.functional.cosine_similarity(expected, got, dim=-1).min() > 0.999


# ---- prepacked CPU linear layers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_s2_inputs(s2_files) -> dict[str, torch.Tensor]:
    """8 real 32 x 32 Sentinel-2 chips at 20 m, processed for the parity fixture's patch size 4."""
    import numpy as np

    from clay_hf import ClayImageProcessor
    from clay_hf.io import MultiBandSource, iter_chips

    with MultiBandSource(s2_files, resolution=20.0) as source:
        chips = list(iter_chips(source, 32, stride=96))[:8]
    raw = np.stack([c["pixels"] for c in chips]).astype(np.float32)  # (8, 10, 32, 32)
    processor = ClayImageProcessor(sensor="sentinel-2-l2a", patch_size=4)
    inputs = processor(raw, lat=[c["lat"] for c in chips], lon=[c["lon"] for c in chips], datetimes="2022-06-15")
    return dict(inputs)


def _linears(model):
    from clay_hf.modeling_clay import ClayLinear

    return [m for m in model.modules() if isinstance(m, ClayLinear)]


def test_prepacked_cpu_inference_equals_plain_linear_on_real_chips(converted_micro, real_s2_inputs):
    from clay_hf.modeling_clay import cpu_prepacking_available

    assert cpu_prepacking_available(torch.float32)  # oneDNN is in every x86/ARM CPU build of PyTorch
    model = ClayModel.from_pretrained(converted_micro).eval()
    linears = _linears(model)
    assert len(linears) == 4 * model.config.num_hidden_layers  # qkv, out, fc1, fc2 of every layer
    with torch.inference_mode():
        packed = model(**real_s2_inputs).last_hidden_state
        weight_bytes = sum(m.weight.numel() * 4 for m in linears)
        assert model.cpu_prepacked_bytes() == weight_bytes
        model.set_cpu_prepacking(False)
        assert model.cpu_prepacked_bytes() == 0
        plain = model(**real_s2_inputs).last_hidden_state
        assert model.cpu_prepacked_bytes() == 0
    assert_close(packed, plain, atol=1e-5, rtol=1e-5)

    model.set_cpu_prepacking(True)
    low = copy.deepcopy(model).to(torch.bfloat16)
    low_inputs = {**real_s2_inputs, "pixel_values": real_s2_inputs["pixel_values"].bfloat16()}
    with torch.inference_mode():
        packed_low = low(**low_inputs).pooler_output
        # Where oneDNN has no bfloat16 kernels here the plain path runs: nothing is packed.
        expected_bytes = weight_bytes // 2 if cpu_prepacking_available(torch.bfloat16) else 0
        assert low.cpu_prepacked_bytes() == expected_bytes
        low.set_cpu_prepacking(False)
        plain_low = low(**low_inputs).pooler_output
    cosine = torch.nn.functional.cosine_similarity(packed_low.float(), plain_low.float(), dim=-1)
    assert cosine.min() > 0.9999


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # still what the ONNX exporter uses
def test_prepacking_only_in_cpu_inference_without_autocast(micro_config):
    model = ClayModel(micro_config).eval()
    batch = _batch()
    out = model(**batch).last_hidden_state  # gradients recorded: training path
    assert out.requires_grad and model.cpu_prepacked_bytes() == 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**batch)
    assert model.cpu_prepacked_bytes() == 0
    linear = _linears(model)[0]
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="same dtype"):  # a dtype unlike the weight's goes to plain F.linear
            linear(torch.randn(3, linear.in_features, dtype=torch.float64))
        assert model.cpu_prepacked_bytes() == 0
        traced = torch.jit.trace(linear, torch.randn(3, linear.in_features), check_trace=False)  # exporters: plain
        assert "aten::linear" in {node.kind() for node in traced.graph.nodes()}
        assert model.cpu_prepacked_bytes() == 0
        model(**batch)
    assert model.cpu_prepacked_bytes() > 0


def test_prepacked_weights_follow_updates_copies_and_casts(micro_config):
    torch.manual_seed(0)
    model = ClayModel(micro_config).eval()
    batch = _batch()
    with torch.no_grad():
        first = model(**batch).pooler_output
        model.encoder.layers[0].mlp.fc1.weight.add_(0.05)  # an in-place update (an optimizer step)
        updated = model(**batch).pooler_output
        reference = ClayModel(micro_config).eval()
        reference.set_cpu_prepacking(False)
        reference.load_state_dict(model.state_dict())
        assert_close(updated, reference(**batch).pooler_output, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(first, updated)
        model.load_state_dict(reference.state_dict() | {"encoder.layers.0.mlp.fc1.bias": torch.full((128,), 0.1)})
        reloaded = model(**batch).pooler_output
        assert not torch.allclose(updated, reloaded)
        # deepcopy and pickle leave the opaque packed tensors behind; the copy packs its own
        clone = copy.deepcopy(model)
        assert clone.cpu_prepacked_bytes() == 0
        assert_close(clone(**batch).pooler_output, reloaded)
        import pickle

        assert_close(pickle.loads(pickle.dumps(model))(**batch).pooler_output, reloaded)
        model.to(torch.float64)  # a cast makes new parameters and drops the packed copy of the old ones
        assert model.cpu_prepacked_bytes() == 0


def test_without_working_prepacking_ops_the_plain_path_runs(micro_config, monkeypatch, caplog):
    import clay_hf.modeling_clay as modeling

    def unavailable(*args, **kwargs):
        raise RuntimeError("no oneDNN packing in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", unavailable)
    probe = modeling.cpu_prepacking_available.__wrapped__  # the uncached probe
    with caplog.at_level("INFO", logger="clay_hf.modeling_clay"):
        assert probe(torch.float32) is False
    assert "prepacked torch.float32 linear layers are off here (RuntimeError: no oneDNN packing" in caplog.text
    assert probe(torch.float16) is False  # only float32 and bfloat16 are packed

    monkeypatch.setattr(modeling, "cpu_prepacking_available", probe)
    model = ClayModel(micro_config).eval()
    batch = _batch()
    with torch.no_grad():
        out = model(**batch).pooler_output
    assert model.cpu_prepacked_bytes() == 0
    model.set_cpu_prepacking(False)
    with torch.no_grad():
        assert torch.equal(out, model(**batch).pooler_output)
