"""Configuration of the Clay v1.5 Earth-observation masked autoencoder.

Architecture numbers only: how wide, how deep, which patch size, and what the pre-training objective
is (mask ratio, loss weights, channel-dropping probabilities). Training settings (learning rate,
batch size, ...) and paths live elsewhere.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

# The errors a configuration or the model's inputs raise, re-exported so that modeling_clay.py imports only this
# module besides torch and transformers (errors.py imports nothing, so remote code carries it as it is).
from .errors import BandMismatchError, ChipSizeError, ClayConfigError, ClayError, ClayInputError  # noqa: F401

__all__ = ["ClayConfig", "CLAY_PRESETS", "NUM_METADATA_CHANNELS"]

# time (4 numbers) + latlon (4 numbers) are appended to every token's position encoding.
NUM_METADATA_CHANNELS = 8

# Encoder / decoder sizes of the Clay v1.5 code (claymodel `factory` sizes); "large" is the release.
CLAY_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=4,
        head_dim=48,
        mlp_ratio=2.0,
        decoder_hidden_size=96,
        decoder_num_hidden_layers=3,
        decoder_num_attention_heads=2,
        decoder_head_dim=48,
        decoder_mlp_ratio=2.0,
    ),
    "small": dict(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        head_dim=64,
        mlp_ratio=2.0,
        decoder_hidden_size=192,
        decoder_num_hidden_layers=4,
        decoder_num_attention_heads=4,
        decoder_head_dim=64,
        decoder_mlp_ratio=2.0,
    ),
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        head_dim=64,
        mlp_ratio=4.0,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=4,
        decoder_num_attention_heads=4,
        decoder_head_dim=64,
        decoder_mlp_ratio=4.0,
    ),
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        head_dim=64,
        mlp_ratio=4.0,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=4,
        decoder_num_attention_heads=4,
        decoder_head_dim=64,
        decoder_mlp_ratio=4.0,
    ),
}


class ClayConfig(PreTrainedConfig):
    r"""Configuration of [`ClayModel`] and [`ClayForPreTraining`]; defaults are the v1.5 release ("large").

    Args:
        patch_size: side of the square patches in pixels (8 in every released size).
        hidden_size: encoder width D.
        num_hidden_layers: encoder depth.
        num_attention_heads: encoder attention heads.
        head_dim: width of one encoder attention head (heads * head_dim need not equal D).
        mlp_ratio: encoder MLP width as a multiple of D (``int(D * mlp_ratio)``).
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_head_dim,
        decoder_mlp_ratio: the same for the MAE decoder.
        wave_dim: width of the wavelength embedding and of the weight-generator transformer (128).
        num_latent_tokens: learned tokens in front of the wavelength tokens in the weight generator (128).
        wave_num_attention_heads: heads of the weight-generator transformer layer (4).
        wave_intermediate_size: feed-forward width of the weight-generator layer (2048, torch's default).
        teacher_dim: width of the frozen teacher's embedding that ``proj`` maps the cls token onto
            (1024 for DINOv2 ViT-L/14 with registers).
        mask_ratio: fraction of patches masked in pre-training (the first ``int(mask_ratio * L)`` by noise).
        norm_pix_loss: standardise each target patch before the L1 loss (v1.5: False, v1: True).
        reconstruction_loss_weight, representation_loss_weight: the code's 0.9 / 0.1.
        drop_all_bands_prob, drop_half_bands_prob: the training-mode channel-dropping augmentation.
        layer_norm_eps: LayerNorm epsilon (PyTorch's default 1e-5 everywhere in Clay).
        initializer_range: std of the normal initialisation of new weights.
    """

    model_type = "clay"

    def __init__(
        self,
        patch_size: int = 8,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 4,
        decoder_num_attention_heads: int = 4,
        decoder_head_dim: int = 64,
        decoder_mlp_ratio: float = 4.0,
        wave_dim: int = 128,
        num_latent_tokens: int = 128,
        wave_num_attention_heads: int = 4,
        wave_intermediate_size: int = 2048,
        teacher_dim: int = 1024,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        reconstruction_loss_weight: float = 0.9,
        representation_loss_weight: float = 0.1,
        drop_all_bands_prob: float = 0.1,
        drop_half_bands_prob: float = 0.2,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim
        self.mlp_ratio = mlp_ratio
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_head_dim = decoder_head_dim
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.wave_dim = wave_dim
        self.num_latent_tokens = num_latent_tokens
        self.wave_num_attention_heads = wave_num_attention_heads
        self.wave_intermediate_size = wave_intermediate_size
        self.teacher_dim = teacher_dim
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.reconstruction_loss_weight = reconstruction_loss_weight
        self.representation_loss_weight = representation_loss_weight
        self.drop_all_bands_prob = drop_all_bands_prob
        self.drop_half_bands_prob = drop_half_bands_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self._validate_architecture()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ClayConfig:
        """A config of one of the named sizes: ``tiny``, ``small``, ``base`` or ``large`` (the v1.5 release)."""
        if name not in CLAY_PRESETS:
            raise ClayConfigError(
                f"unknown Clay size {name!r}; expected one of {sorted(CLAY_PRESETS)} "
                "(or pass the dimensions explicitly)"
            )
        return cls(**{**CLAY_PRESETS[name], **overrides})

    @property
    def intermediate_size(self) -> int:
        """Encoder MLP width, computed as in the original (``int(dim * mlp_ratio)``)."""
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def decoder_intermediate_size(self) -> int:
        return int(self.decoder_hidden_size * self.decoder_mlp_ratio)

    def _validate_architecture(self) -> None:
        positive = (
            "patch_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "head_dim",
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_head_dim",
            "wave_dim",
            "num_latent_tokens",
            "wave_num_attention_heads",
            "wave_intermediate_size",
            "teacher_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ClayConfigError(f"{name} must be a positive integer, got {value!r}")
        for prefix in ("", "decoder_"):
            width = getattr(self, f"{prefix}hidden_size")
            # The 2-D sin-cos position encoding fills width - 8 channels with 4 blocks of n >= 2 frequencies.
            pos_width = width - NUM_METADATA_CHANNELS
            if pos_width < 8 or pos_width % 4 != 0:
                raise ClayConfigError(
                    f"{prefix}hidden_size={width} leaves {pos_width} channels for the position encoding "
                    f"after the {NUM_METADATA_CHANNELS} time/latlon channels; that must be a multiple of 4 "
                    f"and at least 8 (e.g. {prefix}hidden_size={max(16, (width + 3) // 4 * 4)})"
                )
            ratio = getattr(self, f"{prefix}mlp_ratio")
            if not ratio > 0:
                raise ClayConfigError(f"{prefix}mlp_ratio must be > 0, got {ratio!r}")
        if self.wave_dim % 2 != 0 or self.wave_dim < 4:
            raise ClayConfigError(
                f"wave_dim must be even and >= 4 for the sin-cos wavelength embedding, got {self.wave_dim}"
            )
        if self.wave_dim % self.wave_num_attention_heads != 0:
            raise ClayConfigError(
                f"wave_dim={self.wave_dim} is not divisible by wave_num_attention_heads="
                f"{self.wave_num_attention_heads}; choose heads that divide the wave width"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ClayConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name in ("drop_all_bands_prob", "drop_half_bands_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ClayConfigError(f"{name} must be a probability in [0, 1], got {value}")


ClayConfig.register_for_auto_class()
