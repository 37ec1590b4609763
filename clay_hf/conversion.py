"""Convert an original Clay (Lightning) checkpoint into a clay_hf model folder.

The conversion keeps every number and changes only names, through the explicit rename table
``RENAME_RULES``; every tensor is checked against the shape the new module expects, and the result must
load with no missing or unexpected keys. The frozen teacher (``model.teacher.*``) is not part of Clay
and is skipped with a log line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_folder
from .configuration_clay import CLAY_PRESETS, ClayConfig
from .errors import CheckpointError

__all__ = [
    "RENAME_RULES",
    "rename_key",
    "config_from_checkpoint",
    "convert_state_dict",
    "load_original_checkpoint",
    "convert_checkpoint",
]

logger = logging.getLogger(__name__)

# (original pattern, new name); the first rule that matches wins. `{i}` style groups are kept by `\1`.
_WAVE = r"(patch_embedding|embed_to_pixels)"
RENAME_RULES: list[tuple[str, str]] = [
    # encoder
    (r"^model\.encoder\.cls_token$", r"clay.cls_token"),
    (rf"^model\.encoder\.{_WAVE}\.(.*)$", r"clay.\1.\2"),
    (r"^model\.encoder\.transformer\.(.*)$", r"clay.encoder.\1"),
    # decoder
    (r"^model\.decoder\.(.*)$", r"decoder.\1"),
    # teacher projection
    (r"^model\.proj\.(weight|bias)$", r"proj.\1"),
]
# Applied after the prefix rules, inside any module.
_INNER_RULES: list[tuple[str, str]] = [
    # torch TransformerEncoder (one layer) of the weight generator -> ClayWaveTransformerLayer
    (
        r"weight_generator\.encoder\.layers\.0\.self_attn\.in_proj_weight$",
        r"weight_generator.layer.self_attn.qkv.weight",
    ),
    (r"weight_generator\.encoder\.layers\.0\.self_attn\.in_proj_bias$", r"weight_generator.layer.self_attn.qkv.bias"),
    (r"weight_generator\.encoder\.layers\.0\.(.*)$", r"weight_generator.layer.\1"),
    # vit-pytorch style blocks: [Attention, FeedForward(net = LayerNorm, Linear, GELU, Linear)]
    (r"layers\.(\d+)\.0\.(norm|to_qkv|to_out)\.(.*)$", r"layers.\1.attention.\2.\3"),
    (r"layers\.(\d+)\.1\.net\.0\.(.*)$", r"layers.\1.mlp.norm.\2"),
    (r"layers\.(\d+)\.1\.net\.1\.(.*)$", r"layers.\1.mlp.fc1.\2"),
    (r"layers\.(\d+)\.1\.net\.3\.(.*)$", r"layers.\1.mlp.fc2.\2"),
]
_SKIPPED_PREFIXES = ("model.teacher.",)


def rename_key(key: str) -> str | None:
    """The clay_hf name of an original key, or None for keys that are not part of Clay (the teacher)."""
    if key.startswith(_SKIPPED_PREFIXES):
        return None
    for pattern, replacement in RENAME_RULES:
        if re.match(pattern, key):
            new = re.sub(pattern, replacement, key)
            break
    else:
        raise CheckpointError(
            f"unexpected key {key!r} in the checkpoint; a Clay checkpoint has keys under model.encoder., "
            "model.decoder., model.proj. (and model.teacher.)"
        )
    for pattern, replacement in _INNER_RULES:
        new = re.sub(pattern, replacement, new)
    return new


def _count_layers(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    ids = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _shape_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Every number the tensor shapes determine; head counts need ``hyper_parameters`` or a preset."""
    sd = state_dict
    enc, dec = "model.encoder.", "model.decoder."
    dim = sd[enc + "cls_token"].shape[-1]
    fc_weight = sd[enc + "patch_embedding.weight_generator.fc_weight.weight"]
    patch_size = round((fc_weight.shape[0] / dim) ** 0.5)
    wave_tokens = sd[enc + "patch_embedding.weight_generator.weight_tokens"]
    found: dict[str, Any] = dict(
        patch_size=patch_size,
        hidden_size=dim,
        num_hidden_layers=_count_layers(sd, enc + "transformer.layers."),
        mlp_ratio=sd[enc + "transformer.layers.0.1.net.1.weight"].shape[0] / dim,
        wave_dim=wave_tokens.shape[1],
        num_latent_tokens=wave_tokens.shape[0],
        wave_intermediate_size=sd[enc + "patch_embedding.weight_generator.encoder.layers.0.linear1.weight"].shape[0],
        _inner=sd[enc + "transformer.layers.0.0.to_out.weight"].shape[1],
    )
    if dec + "mask_patch" in sd:
        dec_dim = sd[dec + "mask_patch"].shape[0]
        found.update(
            decoder_hidden_size=dec_dim,
            decoder_num_hidden_layers=_count_layers(sd, dec + "transformer.layers."),
            decoder_mlp_ratio=sd[dec + "transformer.layers.0.1.net.1.weight"].shape[0] / dec_dim,
            _decoder_inner=sd[dec + "transformer.layers.0.0.to_out.weight"].shape[1],
        )
    if "model.proj.weight" in sd:
        found["teacher_dim"] = sd["model.proj.weight"].shape[0]
    return found


# Names of the original Lightning module / factory arguments -> ClayConfig fields.
_HPARAM_NAMES = {
    "patch_size": "patch_size",
    "dim": "hidden_size",
    "depth": "num_hidden_layers",
    "heads": "num_attention_heads",
    "dim_head": "head_dim",
    "mlp_ratio": "mlp_ratio",
    "decoder_dim": "decoder_hidden_size",
    "decoder_depth": "decoder_num_hidden_layers",
    "decoder_heads": "decoder_num_attention_heads",
    "decoder_dim_head": "decoder_head_dim",
    "decoder_mlp_ratio": "decoder_mlp_ratio",
    "mask_ratio": "mask_ratio",
    "norm_pix_loss": "norm_pix_loss",
    "teacher_dim": "teacher_dim",
}


def config_from_checkpoint(
    state_dict: Mapping[str, torch.Tensor], hyper_parameters: Mapping[str, Any] | None = None
) -> ClayConfig:
    """Sizes from ``model_size`` (a preset), explicit dimensions in ``hyper_parameters``, or the shapes.

    Shapes always win over names where both exist, and a disagreement is logged. Attention head counts
    cannot be read from shapes; without hyper-parameters they come from the preset of the same width and
    depth, else ``head_dim`` 64.
    """
    hp = dict(hyper_parameters or {})
    values: dict[str, Any] = {}
    size = hp.get("model_size")
    if isinstance(size, str):
        size = size.lower()
        if size not in CLAY_PRESETS:
            raise CheckpointError(f"hyper_parameters say model_size={size!r}; expected one of {sorted(CLAY_PRESETS)}")
        values.update(CLAY_PRESETS[size])
    values.update({new: hp[old] for old, new in _HPARAM_NAMES.items() if hp.get(old) is not None})

    shapes = _shape_config(state_dict)
    inner, decoder_inner = shapes.pop("_inner"), shapes.pop("_decoder_inner", None)
    for name, value in shapes.items():
        if name in values and values[name] != value:
            logger.warning(
                "hyper_parameters say %s=%s but the tensors say %s; using the tensors", name, values[name], value
            )
        values[name] = value
    if "num_attention_heads" not in values:  # no names at all: take a preset of the same shape if there is one
        for preset in CLAY_PRESETS.values():
            if (
                preset["hidden_size"] == values["hidden_size"]
                and preset["num_hidden_layers"] == values["num_hidden_layers"]
            ):
                values.update({k: v for k, v in preset.items() if k not in shapes})
                break
    for heads, head_dim, width in (
        ("num_attention_heads", "head_dim", inner),
        ("decoder_num_attention_heads", "decoder_head_dim", decoder_inner),
    ):
        h, d = values.get(heads), values.get(head_dim)
        if width is None or (h is not None and d is not None and h * d == width):
            continue
        if h is not None and width % h == 0:
            values[head_dim] = width // h
            continue
        d = d if d and width % d == 0 else (64 if width % 64 == 0 else width)
        values[head_dim], values[heads] = d, width // d
        logger.warning("attention heads not given for a width of %d: assuming %d heads of %d", width, width // d, d)
    return ClayConfig(**values)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], config: ClayConfig) -> dict[str, torch.Tensor]:
    """Rename every tensor and check it against the shape ``ClayForPreTraining(config)`` expects."""
    from .modeling_clay import ClayForPreTraining

    with torch.device("meta"):
        expected = ClayForPreTraining(config).state_dict()
    converted: dict[str, torch.Tensor] = {}
    skipped = 0
    for key, tensor in state_dict.items():
        new = rename_key(key)
        if new is None:
            skipped += 1
            continue
        if new not in expected:
            raise CheckpointError(f"checkpoint key {key!r} maps to {new!r}, which ClayForPreTraining does not have")
        if tuple(tensor.shape) != tuple(expected[new].shape):
            raise CheckpointError(
                f"checkpoint key {key!r} has shape {tuple(tensor.shape)} but {new!r} expects "
                f"{tuple(expected[new].shape)} for this config"
            )
        converted[new] = tensor.detach().clone().contiguous()
    if skipped:
        logger.info(
            "skipped %d teacher tensors (model.teacher.*): the teacher is not part of the Clay weights", skipped
        )
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[:5]}")
    return converted


def load_original_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a Lightning checkpoint: ``(state_dict, hyper_parameters)``, with a clear error for other files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{str(path)!r} is not a readable PyTorch checkpoint: {err}") from err
    state_dict = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state_dict, dict) or "model.encoder.cls_token" not in state_dict:
        found = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a Clay checkpoint: expected a dict with a 'state_dict' holding "
            f"'model.encoder.*' keys, found {found}"
        )
    return state_dict, dict(obj.get("hyper_parameters") or {})


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    patch_size_for_processor: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert ``checkpoint`` into ``output_dir`` (safetensors, config with auto_map, remote code, processor).

    The folder is written to a temporary sibling and renamed into place, so a failure leaves nothing behind.
    An existing ``output_dir`` is replaced only when it is empty or a Clay model folder (a previous
    conversion); any other folder needs ``overwrite=True``, and the current directory or one of its parents is
    never replaced (:class:`~clay_hf.errors.OutputExistsError`). The folder is checked before the checkpoint is
    read, so a refusal costs nothing.
    """
    from .atomic import check_replaceable_folder, is_clay_model_folder

    check_replaceable_folder(output_dir, is_clay_model_folder, overwrite, what="Clay model folder")
    from .image_processing_clay import ClayImageProcessor
    from .modeling_clay import ClayForPreTraining
    from .provenance import checkpoint_details, model_provenance, record_provenance

    state_dict, hparams = load_original_checkpoint(checkpoint)
    config = config_from_checkpoint(state_dict, hparams)
    weights = convert_state_dict(state_dict, config)
    model = ClayForPreTraining(config)
    model.load_state_dict(weights, strict=True)  # raises on any missing or unexpected key
    record_provenance(model, "converted", **checkpoint_details(checkpoint))

    output_dir = Path(output_dir)
    with atomic_folder(output_dir, is_clay_model_folder, overwrite, what="Clay model folder") as tmp:
        model.save_pretrained(tmp)
        ClayImageProcessor(patch_size=patch_size_for_processor or config.patch_size).save_pretrained(tmp)
    logger.info("converted %s -> %s (%s): %s", checkpoint, output_dir, _describe(config), model_provenance(model).label)
    return output_dir


def _describe(config: ClayConfig) -> str:
    return (
        f"D={config.hidden_size} depth={config.num_hidden_layers} heads={config.num_attention_heads}x{config.head_dim} "
        f"patch={config.patch_size} decoder D={config.decoder_hidden_size} depth={config.decoder_num_hidden_layers}"
    )
