"""ClayConfig: presets from the spec, validation messages, serialisation."""

from __future__ import annotations

import pytest

from clay_hf import CLAY_PRESETS, ClayConfig, ClayConfigError

SPEC_SIZES = {  # D, depth, heads, dim_head, mlp_ratio, Dd, dec depth, dec heads, dec dim_head, dec mlp_ratio
    "tiny": (192, 6, 4, 48, 2, 96, 3, 2, 48, 2),
    "small": (384, 6, 6, 64, 2, 192, 4, 4, 64, 2),
    "base": (768, 12, 12, 64, 4, 512, 4, 4, 64, 4),
    "large": (1024, 24, 16, 64, 4, 512, 4, 4, 64, 4),
}
FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "head_dim",
    "mlp_ratio",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_head_dim",
    "decoder_mlp_ratio",
)


@pytest.mark.parametrize("name", sorted(SPEC_SIZES))
def test_presets_match_the_spec_table(name):
    config = ClayConfig.from_preset(name)
    assert tuple(getattr(config, f) for f in FIELDS) == SPEC_SIZES[name]
    assert config.patch_size == 8 and config.wave_dim == 128 and config.num_latent_tokens == 128
    assert config.layer_norm_eps == 1e-5


def test_default_config_is_the_v15_release():
    default, large = ClayConfig(), ClayConfig.from_preset("large")
    assert all(getattr(default, f) == getattr(large, f) for f in FIELDS)
    assert default.mask_ratio == 0.75 and default.norm_pix_loss is False and default.teacher_dim == 1024
    assert (default.reconstruction_loss_weight, default.representation_loss_weight) == (0.9, 0.1)
    assert set(CLAY_PRESETS) == {"tiny", "small", "base", "large"}


def test_round_trip(tmp_path):
    config = ClayConfig.from_preset("small", teacher_dim=384)
    config.save_pretrained(tmp_path)
    loaded = ClayConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.model_type == "clay"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hidden_size=66), r"hidden_size=66 leaves 58 channels for the position encoding .* multiple of 4"),
        (dict(decoder_hidden_size=12), r"decoder_hidden_size=12 leaves 4 channels"),
        (dict(wave_num_attention_heads=3), r"wave_dim=128 is not divisible by wave_num_attention_heads=3"),
        (dict(mask_ratio=1.0), r"mask_ratio must be in \[0, 1\), got 1.0"),
        (dict(patch_size=0), r"patch_size must be a positive integer, got 0"),
        (dict(num_hidden_layers=2.5), r"num_hidden_layers must be a positive integer, got 2.5"),
        (dict(drop_half_bands_prob=1.5), r"drop_half_bands_prob must be a probability in \[0, 1\], got 1.5"),
        (dict(wave_dim=127, wave_num_attention_heads=1), r"wave_dim must be even"),
    ],
)
def test_validation_names_the_numbers(kwargs, message):
    with pytest.raises(ClayConfigError, match=message):
        ClayConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(
        ClayConfigError, match=r"unknown Clay size 'huge'; expected one of \['base', 'large', 'small', 'tiny'\]"
    ):
        ClayConfig.from_preset("huge")
