"""The frozen DINOv2 teacher behind Clay's representation loss.

Clay v1.5 pre-training adds a representation loss: the encoder's cls token, projected by the trainable
``proj`` head of ``ClayForPreTraining``, is pulled towards the pooled embedding that a frozen DINOv2
ViT-L/14 with registers (1024-d) gives for the RGB bands of the same, already NORMALISED chip
(for Sentinel-1: VV, VH, (VV + VH) / 2), resized to 518 x 518.

The teacher lives here, outside the Clay checkpoint: training code builds a ``ClayTeacher``, calls it
on each batch and hands the embeddings to ``ClayForPreTraining``. Published safetensors stay
Clay-only. The wrapped network is a transformers ``Dinov2WithRegistersModel`` of any size, so any
``facebook/dinov2-with-registers-*`` checkpoint (or a local copy) works.

Shape letters: B batch, C bands, H and W chip height and width in pixels, S = ``image_size``,
E = ``embedding_dim`` (the teacher's hidden size).
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, PreTrainedConfig

from .errors import CheckpointError, ClayConfigError, ClayInputError

__all__ = [
    "DEFAULT_TEACHER",
    "TEACHER_IMAGE_SIZE",
    "ClayTeacher",
    "tiny_random_teacher",
]

logger = logging.getLogger(__name__)

#: The Hub id of the teacher the released v1.5 weights were trained against (timm's
#: ``vit_large_patch14_reg4_dinov2.lvd142m``, the same weights in transformers' layout).
DEFAULT_TEACHER = "facebook/dinov2-with-registers-large"

#: Side in pixels that the RGB bands are resized to before they reach the teacher (37 x 37 patches of 14).
TEACHER_IMAGE_SIZE = 518


class ClayTeacher(nn.Module):
    """A frozen ``Dinov2WithRegistersModel`` that turns a normalised Clay chip into one target embedding.

    The wrapped model never trains: its parameters have ``requires_grad=False``, it is put in eval mode
    and ``train()`` keeps it there, and ``forward`` runs under ``torch.no_grad()``.

    Args:
        model: the DINOv2-with-registers backbone (any size).
        image_size: side in pixels of the square the RGB bands are resized to (518 for Clay v1.5).
            Smaller sizes (a multiple of the patch size, e.g. 56) make tests fast.
        antialias: passed to the bilinear resize. ``True`` matches the original training code (see
            ``forward``); it only changes anything when a chip is larger than ``image_size``.

    Example:
        >>> teacher = ClayTeacher.from_pretrained("facebook/dinov2-with-registers-large").to("cuda")
        >>> target = teacher(pixel_values, rgb_indices=sensor.rgb_indices)  # (B, 1024)
    """

    def __init__(
        self,
        model: Dinov2WithRegistersModel,
        image_size: int = TEACHER_IMAGE_SIZE,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, Dinov2WithRegistersModel):
            raise ClayConfigError(
                f"ClayTeacher wraps a transformers Dinov2WithRegistersModel, got {type(model).__name__}; "
                "build one with ClayTeacher.from_pretrained(...) or ClayTeacher.from_config(...)"
            )
        patch_size = _as_int(model.config.patch_size)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < patch_size:
            raise ClayConfigError(
                f"image_size must be an int of at least the teacher's patch size {patch_size}, got {image_size!r}"
            )
        if image_size % patch_size != 0:
            raise ClayConfigError(
                f"image_size must be a multiple of the teacher's patch size {patch_size}, got {image_size}; "
                f"try {max(patch_size, round(image_size / patch_size) * patch_size)}"
            )
        self.model = model
        self.image_size = image_size
        self.antialias = antialias
        self.requires_grad_(False)
        self.eval()  # the wrapper and the model; train() below keeps it so

    # ----------------------------------------------------------------------------------------------
    # construction
    # ----------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        image_size: int = TEACHER_IMAGE_SIZE,
        antialias: bool = True,
        dtype: torch.dtype | str = torch.float32,
        **kwargs: object,
    ) -> ClayTeacher:
        """Load a DINOv2-with-registers checkpoint (a Hub id or a local folder) as a frozen teacher.

        Args:
            name_or_path: e.g. ``"facebook/dinov2-with-registers-large"`` (the v1.5 teacher) or a folder
                written by ``save_pretrained``.
            image_size: resize target in pixels (518 for Clay v1.5).
            antialias: see the class docstring.
            dtype: weight dtype. Defaults to ``torch.float32`` (what the original kept, running the
                teacher under mixed-precision autocast); ``torch.bfloat16`` halves its memory and
                ``"auto"`` keeps the checkpoint's own dtype.
            **kwargs: passed on to ``Dinov2WithRegistersModel.from_pretrained`` (``revision``,
                ``cache_dir``, ``local_files_only``, ``attn_implementation``, ...).

        Raises:
            CheckpointError: the path or id holds no readable config or weights, or a model that is
                not a DINOv2 with registers.
        """
        try:
            config_dict, _ = PreTrainedConfig.get_config_dict(
                name_or_path,
                **{k: v for k, v in kwargs.items() if k in _CONFIG_KWARGS},
            )
        except OSError as error:
            raise CheckpointError(
                f"could not read a teacher config from {str(name_or_path)!r}: {error}. Expected a Hub id such "
                f"as {DEFAULT_TEACHER!r} or a folder written by Dinov2WithRegistersModel.save_pretrained"
            ) from error
        model_type = config_dict.get("model_type")
        if model_type != Dinov2WithRegistersConfig.model_type:
            raise CheckpointError(
                f"expected a DINOv2-with-registers checkpoint (model_type "
                f"{Dinov2WithRegistersConfig.model_type!r}) at {str(name_or_path)!r}, got model_type "
                f"{model_type!r}; the Clay v1.5 teacher is {DEFAULT_TEACHER!r}"
            )
        try:
            model = Dinov2WithRegistersModel.from_pretrained(name_or_path, dtype=dtype, **kwargs)
        except OSError as error:
            raise CheckpointError(f"could not load teacher weights from {str(name_or_path)!r}: {error}") from error
        teacher = cls(model, image_size=image_size, antialias=antialias)
        logger.info(
            "Loaded teacher %s: %d-d embeddings, %s, resize to %d px",
            name_or_path,
            teacher.embedding_dim,
            teacher.dtype,
            image_size,
        )
        return teacher

    @classmethod
    def from_config(
        cls,
        config: Dinov2WithRegistersConfig,
        *,
        image_size: int = TEACHER_IMAGE_SIZE,
        antialias: bool = True,
        dtype: torch.dtype | None = None,
    ) -> ClayTeacher:
        """Build a teacher with randomly initialised weights from a ``Dinov2WithRegistersConfig``.

        Meant for tests, demos and dry runs; the representation loss is only meaningful with
        pre-trained weights (``from_pretrained``).
        """
        if not isinstance(config, Dinov2WithRegistersConfig):
            raise ClayConfigError(
                f"expected a Dinov2WithRegistersConfig, got {type(config).__name__}; the Clay v1.5 teacher is "
                f"a DINOv2 with registers ({DEFAULT_TEACHER!r})"
            )
        model = Dinov2WithRegistersModel(config)
        if dtype is not None:
            model = model.to(dtype)
        return cls(model, image_size=image_size, antialias=antialias)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: object) -> None:
        """Save the wrapped DINOv2 (config and safetensors) so ``from_pretrained`` can reload it."""
        self.model.save_pretrained(save_directory, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # properties
    # ----------------------------------------------------------------------------------------------

    @property
    def embedding_dim(self) -> int:
        """Width E of the pooled embedding (1024 for ViT-L); ``ClayForPreTraining.proj`` maps to it."""
        return int(self.model.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the teacher's weights; inputs are cast to it."""
        return self.model.embeddings.patch_embeddings.projection.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the teacher's weights; inputs are moved to it."""
        return self.model.embeddings.patch_embeddings.projection.weight.device

    def train(self, mode: bool = True) -> ClayTeacher:
        """Keep the teacher in eval mode whatever ``mode`` says (a parent's ``.train()`` reaches here)."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, antialias={self.antialias}, embedding_dim={self.embedding_dim}"

    # ----------------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------------

    def select_rgb(
        self,
        pixel_values: torch.Tensor,
        rgb_indices: Sequence[int] | torch.Tensor | None = None,
        is_sar: bool = False,
    ) -> torch.Tensor:
        """Pick the three teacher bands from a normalised Clay chip.

        Args:
            pixel_values: ``(B, C, H, W)`` chip, already normalised per band (``(x - mean) / std``).
            rgb_indices: three 0-based band indices in red, green, blue order (the sensor's
                ``rgb_indices``, e.g. ``[2, 1, 0]`` for Sentinel-2 L2A).
            is_sar: Sentinel-1 rule instead: ``[VV, VH, (VV + VH) / 2]`` from bands 0 and 1.

        Returns:
            ``(B, 3, H, W)`` in the input's dtype.

        Raises:
            ClayInputError: the input is not a 4-D tensor, both or neither rule was asked for, or the
                indices do not fit the number of bands.
        """
        _check_pixel_values(pixel_values)
        num_bands = pixel_values.shape[1]
        if is_sar and rgb_indices is not None:
            raise ClayInputError(
                f"pass either rgb_indices (optical sensors) or is_sar=True (Sentinel-1: VV, VH, (VV+VH)/2), "
                f"not both; got rgb_indices={_show(rgb_indices)} and is_sar=True"
            )
        if is_sar:
            if num_bands < 2:
                raise ClayInputError(
                    f"is_sar=True needs at least 2 bands (VV, VH) to build [VV, VH, (VV+VH)/2], "
                    f"got pixel_values of shape {tuple(pixel_values.shape)} with {num_bands} band(s)"
                )
            vv = pixel_values[:, 0]  # (B, C, H, W) -> (B, H, W)
            vh = pixel_values[:, 1]  # (B, C, H, W) -> (B, H, W)
            return torch.stack((vv, vh, (vv + vh) / 2), dim=1)  # 3 x (B, H, W) -> (B, 3, H, W)
        if rgb_indices is None:
            raise ClayInputError(
                f"the teacher needs 3 bands: pass rgb_indices (three band indices in red, green, blue order, "
                f"e.g. the sensor's rgb_indices) or is_sar=True for Sentinel-1; got neither for pixel_values "
                f"of shape {tuple(pixel_values.shape)}"
            )
        indices = _as_index_list(rgb_indices)
        num_channels = int(self.model.config.num_channels)
        if len(indices) != num_channels:
            raise ClayInputError(
                f"expected {num_channels} rgb_indices (red, green, blue), got {len(indices)}: {_show(rgb_indices)}"
            )
        bad = [i for i in indices if not 0 <= i < num_bands]
        if bad:
            raise ClayInputError(
                f"rgb_indices {indices} out of range for pixel_values with {num_bands} band(s): {bad} not in "
                f"0..{num_bands - 1}; check that the sensor's rgb_indices match the band order of the input"
            )
        return pixel_values[:, indices]  # (B, C, H, W) -> (B, 3, H, W)

    def forward(
        self,
        pixel_values: torch.Tensor,
        rgb_indices: Sequence[int] | torch.Tensor | None = None,
        is_sar: bool = False,
    ) -> torch.Tensor:
        """Embed a batch of normalised Clay chips: select the RGB bands, resize, run DINOv2, pool.

        Args:
            pixel_values: ``(B, C, H, W)`` normalised chip, on any device (moved to the teacher's).
            rgb_indices, is_sar: which bands, see ``select_rgb``.

        Returns:
            ``(B, E)`` pooled embedding: the layer-normed cls token (``pooler_output``), the same as
            timm's ``num_classes=0`` output with token pooling that the original trained against. No
            graph is attached. Its dtype is the teacher's, or float32 under autocast.
        """
        rgb = self.select_rgb(pixel_values, rgb_indices=rgb_indices, is_sar=is_sar)  # (B, C, H, W) -> (B, 3, H, W)
        # Resize in at least float32 (bilinear with antialias has no bf16/fp16 CPU kernel, and upsampling
        # in half precision would round before the teacher sees the values), then cast to the weights'.
        resize_dtype = torch.promote_types(rgb.dtype, torch.float32)
        rgb = rgb.to(device=self.device, dtype=resize_dtype)
        with torch.no_grad():
            # Bilinear, align_corners=False, antialias=True by default: the original ClayMAE resized with
            # torchvision's ``v2.Resize((518, 518))`` on the normalised tensor, which is exactly
            # ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``. For 256 px training
            # chips (upsampling) antialias makes no difference (equal to float rounding); it only matters
            # for chips larger than image_size, where it keeps the original's behaviour.
            rgb = F.interpolate(
                rgb,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=self.antialias,
            )  # (B, 3, H, W) -> (B, 3, S, S)
            rgb = rgb.to(self.dtype)
            outputs = self.model(pixel_values=rgb)
        return outputs.pooler_output  # (B, 1 + R + L, E) -> (B, E), layernorm(last_hidden_state)[:, 0]


def tiny_random_teacher(
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    image_size: int = TEACHER_IMAGE_SIZE,
    patch_size: int = 14,
    num_register_tokens: int = 4,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> ClayTeacher:
    """A tiny, randomly initialised DINOv2-with-registers teacher for tests and demos (no download).

    The geometry matches the real teacher (patch 14, 4 registers, 518 px: 37 x 37 = 1369 patch tokens)
    but the width and depth are tiny, so a batch of two runs in a few hundredths of a second on CPU at
    518 px; pass ``image_size=56`` (4 x 4 patches) for even faster tests. The config's ``image_size``
    equals the resize target, so no position-embedding interpolation happens. The weights depend only
    on ``seed``; the global random state is left untouched.
    """
    config = Dinov2WithRegistersConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        image_size=image_size,
        patch_size=patch_size,
        num_register_tokens=num_register_tokens,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ClayTeacher.from_config(config, image_size=image_size, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

# Keyword arguments of ``from_pretrained`` that also matter for reading the config alone.
_CONFIG_KWARGS = frozenset(
    {"cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies"}
)


def _as_int(value: int | Sequence[int]) -> int:
    """A config size that may be an int or a (height, width) pair with equal sides."""
    if isinstance(value, int):
        return value
    sides = [int(v) for v in value]
    if len(set(sides)) != 1:
        raise ClayConfigError(f"ClayTeacher needs a square patch size, got {tuple(sides)}")
    return sides[0]


def _check_pixel_values(pixel_values: torch.Tensor) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise ClayInputError(
            f"pixel_values must be a torch.Tensor of shape (B, C, H, W), got {type(pixel_values).__name__}"
        )
    if pixel_values.ndim != 4:
        raise ClayInputError(
            f"pixel_values must have shape (B, C, H, W), got {pixel_values.ndim} dimension(s): "
            f"{tuple(pixel_values.shape)}"
        )
    if not pixel_values.is_floating_point():
        raise ClayInputError(
            f"pixel_values must be floating point (normalised bands), got {pixel_values.dtype}; "
            "normalise with the sensor's mean and std first"
        )


def _as_index_list(rgb_indices: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(rgb_indices, torch.Tensor):
        if rgb_indices.ndim != 1 or rgb_indices.is_floating_point() or rgb_indices.dtype == torch.bool:
            raise ClayInputError(
                f"rgb_indices must be a 1-D integer tensor or a sequence of ints, got a {rgb_indices.dtype} "
                f"tensor of shape {tuple(rgb_indices.shape)}"
            )
        return [int(i) for i in rgb_indices.tolist()]
    if isinstance(rgb_indices, str | bytes) or not isinstance(rgb_indices, Sequence):
        raise ClayInputError(f"rgb_indices must be a sequence of ints, got {_show(rgb_indices)}")
    indices = []
    for index in rgb_indices:
        # ints and numpy integers are fine; bools, floats and strings are a mistake
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise ClayInputError(f"rgb_indices must be ints, got {_show(rgb_indices)}")
        indices.append(operator.index(index))
    return indices


def _show(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor({value.tolist()})"
    return repr(value)
