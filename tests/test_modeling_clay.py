"""ClayModel / ClayForPreTraining behaviour beyond parity: shapes, dtypes, options, errors, caching."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from clay_hf import (
    BandMismatchError,
    ChipSizeError,
    ClayForImageClassification,
    ClayForPreTraining,
    ClayForSemanticSegmentation,
    ClayImageProcessor,
    ClayInputError,
    ClayModel,
)
from clay_hf.modeling_clay import patchify, random_masking, sincos_1d, sincos_2d_gsd

from .model_helpers import WAVES4, random_inputs


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
    out = encoder(**random_inputs(), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 1 + 64, 64)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    assert len(out.hidden_states) == micro_config.num_hidden_layers + 1
    assert all(h.shape == (2, 65, 64) for h in out.hidden_states)
    as_tuple = encoder(**random_inputs(), return_dict=False)
    assert torch.equal(as_tuple[0], out.last_hidden_state)


def test_non_square_chip_matches_square_rows(encoder):
    """A 32x16 chip is the left half of a 32x32 grid: its position codes and the patch tokens agree."""
    batch = random_inputs(h=32, w=16)
    out = encoder(**batch)
    assert out.last_hidden_state.shape == (2, 1 + 8 * 4, 64)
    tokens = encoder.embed_patches(
        batch["pixel_values"], batch["wavelengths"], torch.tensor(10.0), batch["time"], batch["latlon"]
    )
    full = random_inputs(h=32, w=32)
    full["pixel_values"][:, :, :, :16] = batch["pixel_values"]
    full_tokens = encoder.embed_patches(
        full["pixel_values"], batch["wavelengths"], torch.tensor(10.0), batch["time"], batch["latlon"]
    ).reshape(2, 8, 8, 64)
    assert_close(tokens.reshape(2, 8, 4, 64), full_tokens[:, :, :4])


def test_any_band_count_and_single_band(encoder):
    for c in (1, 2, 10, 13):
        out = encoder(**random_inputs(c=c))
        assert out.pooler_output.shape == (2, 64)


def test_per_sample_gsd_equals_separate_calls(encoder):
    batch = random_inputs()
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
    batch = random_inputs()
    zeros = encoder(**{**batch, "time": torch.zeros(2, 4), "latlon": torch.zeros(2, 4)})
    none = encoder(**{**batch, "time": None, "latlon": None})
    assert torch.equal(zeros.last_hidden_state, none.last_hidden_state)


def test_bfloat16_runs_and_agrees(encoder):
    batch = random_inputs()
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
    batch = random_inputs()
    assert_close(sdpa(**batch).last_hidden_state, eager(**batch).last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_model_runs_the_attention_its_config_names(micro_config, monkeypatch, dtype):
    """No dtype or device silently swaps the kernel: CPU tunings are opt-in (clay_hf.cpu_inference)."""
    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def spy(module, query, *args, **kwargs):
        calls.append(query.dtype)
        return sdpa(module, query, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", spy)
    model = ClayModel(micro_config).eval().to(dtype)
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))
    batch = random_inputs()
    with torch.inference_mode():
        model(**{**batch, "pixel_values": batch["pixel_values"].to(dtype)})
    assert calls == [dtype] * micro_config.num_hidden_layers


def test_gradient_checkpointing_gives_same_gradients(micro_config):
    torch.manual_seed(0)
    plain = ClayForPreTraining(micro_config).train()
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing_enable()
    assert ckpt.clay.encoder.layers[0].gradient_checkpointing
    batch = random_inputs()
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
    batch = random_inputs()
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
    batch = random_inputs()
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
    batch = random_inputs()
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
    out = model(**random_inputs())
    out.pooler_output.sum().backward()
    assert model.patch_embedding.fclayer.l1.weight.grad is not None
    assert model.patch_embedding._cache == {}


# The inference caches: (module holding it, in a ClayForPreTraining). One invalidation rule covers them all.
CACHES = {
    "patch embedding weights": lambda model: model.clay.patch_embedding,
    "pixel head weights": lambda model: model.decoder.embed_to_pixels,
    "encoder position table": lambda model: model.clay.position_encoding,
    "decoder position table": lambda model: model.decoder.position_encoding,
}


@pytest.mark.parametrize("name", sorted(CACHES))
def test_every_cache_follows_in_place_updates_load_state_dict_and_casts(micro_config, name):
    torch.manual_seed(0)
    model = ClayForPreTraining(micro_config).eval()
    cache_of = CACHES[name]
    batch = random_inputs()
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(0))

    def run(m, dtype=torch.float32):
        with torch.no_grad():
            out = m(**{**batch, "pixel_values": batch["pixel_values"].to(dtype)}, noise=noise)
        return out.last_hidden_state, out.logits

    def assert_same_as_uncached(dtype=torch.float32):
        got = run(model, dtype)
        assert len(cache_of(model)._cache) == 1  # a changed entry is replaced, not added
        fresh = copy.deepcopy(model)
        assert cache_of(fresh)._cache == {}  # copies start empty
        for ours, expected in zip(got, run(fresh, dtype)):
            assert torch.equal(ours, expected)

    run(model)
    assert len(cache_of(model)._cache) == 1
    with torch.no_grad():  # an optimizer step: every parameter updated in place
        for parameter in model.parameters():
            parameter.mul_(1.01)
    assert_same_as_uncached()
    torch.manual_seed(1)
    model.load_state_dict(ClayForPreTraining(micro_config).state_dict())
    assert cache_of(model)._cache == {}
    assert_same_as_uncached()
    model.to(torch.float64)  # a cast (and any move) makes new parameters
    assert cache_of(model)._cache == {}
    assert_same_as_uncached(torch.float64)


# ---- ClayForPreTraining ---------------------------------------------------------------------------------------
def test_pretraining_outputs_and_losses(pretrainer, micro_config):
    batch = random_inputs()
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
    batch = random_inputs()
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
    batch = random_inputs()
    out = model(**batch, noise=torch.rand(2, 64))
    t = patchify(batch["pixel_values"], 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert_close(out.reconstruction_loss, ((out.logits - t).abs().mean(-1))[out.mask.bool()].mean())


def test_band_dropping_is_deterministic_training_only_and_keeps_target(pretrainer, micro_config):
    batch = random_inputs(b=64, h=8, w=8)
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
    batch = random_inputs()
    a = pretrainer(**batch, generator=torch.Generator().manual_seed(9)).mask
    b = pretrainer(**batch, generator=torch.Generator().manual_seed(9)).mask
    c = pretrainer(**batch, generator=torch.Generator().manual_seed(10)).mask
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pretraining_trains(micro_config):
    torch.manual_seed(0)
    model = ClayForPreTraining(micro_config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = random_inputs(b=4)
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
        encoder(**{**random_inputs(), "wavelengths": WAVES4[:3]})


@pytest.mark.parametrize(("h", "w"), [(30, 32), (32, 2), (2, 2)])
def test_chip_size_errors(encoder, h, w):
    with pytest.raises(ChipSizeError, match=rf"chip of {h}x{w} pixels does not fit patch_size 4"):
        encoder(**random_inputs(h=h, w=w))


def test_input_shape_errors(encoder, pretrainer):
    with pytest.raises(ClayInputError, match=r"pixel_values must be a \(B, C, H, W\) tensor, got \(4, 32, 32\)"):
        encoder(**{**random_inputs(), "pixel_values": torch.zeros(4, 32, 32)})
    with pytest.raises(ClayInputError, match=r"latlon must have shape \(2, 4\).*got \(2, 2\)"):
        encoder(**{**random_inputs(), "latlon": torch.zeros(2, 2)})
    with pytest.raises(ClayInputError, match=r"gsd must be a number \(metres\) or a \(2,\) tensor"):
        encoder(**{**random_inputs(), "gsd": torch.ones(3)})
    with pytest.raises(ClayInputError, match=r"noise must have shape \(2, 64\)"):
        pretrainer(**random_inputs(), noise=torch.rand(2, 10))
    with pytest.raises(ClayInputError, match=r"teacher_embeddings must have shape \(2, 48\)"):
        pretrainer(**random_inputs(), teacher_embeddings=torch.rand(2, 1024))


# ---- arguments: the processor's keys are accepted, anything else is named ------------------------------------------
HEADS = [ClayModel, ClayForPreTraining, ClayForImageClassification, ClayForSemanticSegmentation]


@pytest.fixture(scope="module")
def processed_with_nodata() -> dict[str, torch.Tensor]:
    """Two 10-band Sentinel-2 chips with nodata pixels: the processor adds ``valid_mask``."""
    raw = np.random.default_rng(0).uniform(100, 3000, size=(2, 10, 32, 32)).astype(np.float32)
    raw[0, :, :4, :4] = 0
    inputs = ClayImageProcessor(sensor="sentinel-2-l2a", patch_size=4, nodata=0)(
        raw, lat=[48.8, 45.0], lon=[2.3, 7.0], datetimes="2022-06-15"
    )
    assert "valid_mask" in inputs
    return dict(inputs)


@pytest.mark.parametrize("model_class", HEADS, ids=lambda c: c.__name__)
def test_processor_outputs_go_straight_into_every_model(micro_config, processed_with_nodata, model_class):
    torch.manual_seed(0)
    model = model_class(copy.deepcopy(micro_config)).eval()
    assert not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(model.forward).parameters.values())
    with torch.no_grad():
        out = model(**processed_with_nodata)
    assert out[0] is not None
    with pytest.raises(ClayInputError, match=r"valid_mask must have shape \(2, 32, 32\) \(B, H, W\)"):
        model(**{**processed_with_nodata, "valid_mask": torch.ones(2, 8, 8, dtype=torch.bool)})


@pytest.mark.parametrize("model_class", HEADS, ids=lambda c: c.__name__)
def test_a_misspelt_argument_raises_and_names_the_closest(micro_config, processed_with_nodata, model_class):
    model = model_class(copy.deepcopy(micro_config)).eval()
    inputs = dict(processed_with_nodata)
    name = model_class.__name__
    latlon = inputs.pop("latlon")
    with pytest.raises(
        TypeError, match=rf"^{name}\.forward\(\) got an unexpected argument 'lat_lon'; did you mean 'latlon'\?$"
    ):
        model(**inputs, lat_lon=latlon)
    waves = inputs.pop("wavelengths")
    with pytest.raises(TypeError, match=r"unexpected argument 'wavelength'; did you mean 'wavelengths'\?"):
        model(**inputs, latlon=latlon, wavelength=waves)
    with pytest.raises(
        TypeError,
        match=r"unexpected arguments 'wavelength' \(did you mean 'wavelengths'\?\), 'zzz'; "
        r"it takes pixel_values, wavelengths, gsd, time, latlon",
    ):
        model(**inputs, latlon=latlon, wavelength=waves, zzz=1)
    with pytest.raises(TypeError, match=r"unexpected argument 'output_attentions'; it takes pixel_values, "):
        model(**inputs, latlon=latlon, wavelengths=waves, output_attentions=True)  # no attention maps to return
