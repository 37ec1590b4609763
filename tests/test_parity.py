"""Converted weights reproduce the original Clay v1.5 code: the shared parity vectors, and other sizes."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from clay_hf import ClayForPreTraining, ClayModel
from clay_hf.conversion import config_from_checkpoint, convert_state_dict, load_original_checkpoint

from .conftest import PARITY_CKPT
from .reference_clay import OriginalLayoutClay

TOL = dict(atol=1e-4, rtol=0)


def _identity_noise(batch: int, length: int) -> torch.Tensor:
    return torch.arange(length, dtype=torch.float32).expand(batch, length)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_converted_model_matches_original_vectors(converted_micro, parity_cases, case):
    v = parity_cases[case]
    args = (v["pixels"], v["waves"], v["gsd"], v["time"], v["latlon"])
    encoder = ClayModel.from_pretrained(converted_micro, dtype=torch.float32).eval()
    with torch.no_grad():
        out = encoder(*args)
    assert_close(out.last_hidden_state, v["encoder_output_unmasked"], **TOL)
    assert_close(out.pooler_output, v["encoder_output_unmasked"][:, 0], **TOL)

    model = ClayForPreTraining.from_pretrained(converted_micro, dtype=torch.float32).eval()
    batch, length = v["masked_matrix"].shape
    with torch.no_grad():
        pre = model(*args, noise=_identity_noise(batch, length))
    assert_close(pre.last_hidden_state, v["encoder_output_masked"], **TOL)
    assert_close(pre.mask, v["masked_matrix"], atol=0, rtol=0)
    assert_close(pre.logits, v["decoder_pixels"], **TOL)
    assert_close(pre.projected_cls, v["proj_cls"], **TOL)


def test_reference_oracle_matches_original_vectors(parity_cases):
    """The in-repo oracle (original key layout) is faithful, so it can vouch for sizes the fixture lacks."""
    state_dict, hp = load_original_checkpoint(PARITY_CKPT)
    oracle = OriginalLayoutClay(hp)
    oracle.load_state_dict(state_dict, strict=True)
    oracle.eval()
    for v in parity_cases:
        ref = oracle.run(v["pixels"], v["waves"], v["gsd"], v["time"], v["latlon"], mask_ratio=0.75)
        assert_close(ref["encoder"], v["encoder_output_masked"], **TOL)
        assert_close(ref["pixels"], v["decoder_pixels"], **TOL)
        assert_close(ref["proj"], v["proj_cls"], **TOL)


SIZES = {
    # the real "tiny" preset's numbers, shallower so the test stays fast
    "tiny-like": dict(
        patch_size=8,
        dim=192,
        depth=2,
        heads=4,
        dim_head=48,
        mlp_ratio=2,
        decoder_dim=96,
        decoder_depth=1,
        decoder_heads=2,
        decoder_dim_head=48,
        decoder_mlp_ratio=2,
        teacher_dim=32,
    ),
    # encoder width == decoder width: enc_to_dec is the identity, as in the original
    "same-width": dict(
        patch_size=4,
        dim=96,
        depth=1,
        heads=3,
        dim_head=16,
        mlp_ratio=4,
        decoder_dim=96,
        decoder_depth=1,
        decoder_heads=2,
        decoder_dim_head=24,
        decoder_mlp_ratio=1.5,
        teacher_dim=16,
    ),
}


def _perturbed_oracle(hp: dict, seed: int) -> OriginalLayoutClay:
    torch.manual_seed(seed)
    oracle = OriginalLayoutClay({**hp, "mask_ratio": 0.75})
    with torch.no_grad():
        for p in oracle.parameters():  # no zero bias or unit LayerNorm may hide a wrong mapping
            p.add_(torch.randn_like(p) * 0.02)
    return oracle.eval()


@pytest.mark.parametrize("name", sorted(SIZES))
@pytest.mark.parametrize("source", ["hyper_parameters", "shapes"])
def test_parity_at_other_sizes(name, source):
    hp = SIZES[name]
    oracle = _perturbed_oracle(hp, seed=7)
    state_dict = {k: v.clone() for k, v in oracle.state_dict().items()}
    config = config_from_checkpoint(state_dict, hp if source == "hyper_parameters" else None)
    if source == "shapes":  # head counts are not in the shapes: name them as a user would
        config = config_from_checkpoint(state_dict, {"heads": hp["heads"], "decoder_heads": hp["decoder_heads"]})
    model = ClayForPreTraining(config).eval()
    model.load_state_dict(convert_state_dict(state_dict, config), strict=True)

    g = torch.Generator().manual_seed(0)
    p = hp["patch_size"]
    pixels = torch.randn(2, 3, 4 * p, 4 * p, generator=g)
    waves = torch.tensor([0.65, 0.56, 0.48])
    time, latlon = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    ref = oracle.run(pixels, waves, torch.tensor(5.0), time, latlon, mask_ratio=0.75)
    with torch.no_grad():
        out = model(pixels, waves, 5.0, time, latlon, noise=_identity_noise(2, 16))
    assert_close(out.last_hidden_state, ref["encoder"], **TOL)
    assert_close(out.logits, ref["pixels"], **TOL)
    assert_close(out.projected_cls, ref["proj"], **TOL)
    assert_close(out.mask, ref["mask"], atol=0, rtol=0)


def test_model_size_preset_is_read_from_hyper_parameters():
    """The real release says `model_size: large`; the converter takes the preset's head counts from it."""
    from clay_hf.configuration_clay import CLAY_PRESETS

    hp = {"model_size": "tiny", "patch_size": 8, "mask_ratio": 0.75}
    preset = CLAY_PRESETS["tiny"]
    oracle_hp = dict(
        patch_size=8,
        dim=preset["hidden_size"],
        depth=preset["num_hidden_layers"],
        heads=preset["num_attention_heads"],
        dim_head=preset["head_dim"],
        mlp_ratio=preset["mlp_ratio"],
        decoder_dim=preset["decoder_hidden_size"],
        decoder_depth=preset["decoder_num_hidden_layers"],
        decoder_heads=preset["decoder_num_attention_heads"],
        decoder_dim_head=preset["decoder_head_dim"],
        decoder_mlp_ratio=preset["decoder_mlp_ratio"],
        teacher_dim=24,
    )
    with torch.device("meta"):
        state_dict = OriginalLayoutClay(oracle_hp).state_dict()
    config = config_from_checkpoint(state_dict, hp)
    for key, value in preset.items():
        assert getattr(config, key) == value, key
    assert config.teacher_dim == 24
