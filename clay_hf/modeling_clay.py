"""Clay v1.5: a wavelength-conditioned ViT masked autoencoder for Earth observation.

Everything on the forward path lives here (one model, one file), so that Hub remote code needs only this
file and ``configuration_clay.py`` (which also defines the errors raised here). The computation reproduces the
original ``claymodel`` 1.5 modules number for number (see ``shared/spec/clay-v1.5-architecture.md``); quirks
kept for weight compatibility are marked "quirk". The task heads at the end (`ClayForImageClassification`,
`ClayForSemanticSegmentation`) put a new head on the same `clay` encoder, so pre-trained folders load into them.
The model runs plain ``nn.Linear`` layers and the attention ``config._attn_implementation`` names; CPU inference
tuning (prepacked linear weights, a reduced-precision attention) is an opt-in call in ``clay_hf.cpu_inference``,
which is not part of the remote code.

Shape legend used in the comments:
    B batch, C bands, H x W chip in pixels, P patch size, h x w patch grid (H/P, W/P), L = h*w patches,
    L' visible (unmasked) patches, D encoder width, Dd decoder width, E wave width (128),
    N latent tokens of the weight generator (128), T teacher width, K labels of a task head.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput, SemanticSegmenterOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_clay import (
    NUM_METADATA_CHANNELS,
    BandMismatchError,
    ChipSizeError,
    ClayConfig,
    ClayConfigError,
    ClayInputError,
)

__all__ = [
    "ClayModel",
    "ClayForPreTraining",
    "ClayForImageClassification",
    "ClayForSemanticSegmentation",
    "ClayPreTrainedModel",
    "ClayModelOutput",
    "ClayForPreTrainingOutput",
    "sincos_1d",
    "sincos_2d_gsd",
    "patchify",
    "random_masking",
    "tokens_to_grid",
]

# The dynamic weights are scaled by this constant before use (quirk of the original DynamicEmbedding).
DYNAMIC_WEIGHT_SCALE = 0.02
_CACHE_SIZE = 8


# --------------------------------------------------------------------------------------------------
# Pure encodings (module-level, shape contracts, no parameters)
# --------------------------------------------------------------------------------------------------
def sincos_1d(values: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sin-cos embedding of wavelengths (micrometres): ``(C,) -> (C, dim)``.

    With k = 0..dim/2-1, omega_k = 1 / temperature^(k / (dim/2 - 1)); output = [sin(v*omega), cos(v*omega)].
    """
    values = values.to(torch.float32)
    omega = torch.arange(dim // 2, device=values.device) / (dim // 2 - 1)  # (dim/2,)
    omega = 1.0 / (temperature**omega)
    scaled = values[:, None] * omega[None, :]  # (C, 1) * (1, dim/2) -> (C, dim/2)
    return torch.cat((scaled.sin(), scaled.cos()), dim=1)  # (C, dim)


def sincos_2d_gsd(
    grid_h: int, grid_w: int, dim: int, gsd: float | torch.Tensor, temperature: float = 10000.0, device=None
) -> torch.Tensor:
    """2-D sin-cos position encoding scaled by the ground sample distance.

    Returns ``(L, dim)`` for a scalar ``gsd`` and ``(B, L, dim)`` for a ``(B,)`` gsd; rows in row-major grid
    order, columns [sin(x*omega), cos(x*omega), sin(y*omega), cos(y*omega)] with
    omega_k = gsd / temperature^(2 * (k / (n - 1)) / dim), n = dim / 4.
    """
    n = dim // 4
    y, x = torch.meshgrid(
        torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij"
    )  # (h, w) each
    omega = torch.arange(n, device=device) / (n - 1)
    # Quirk: the exponent divides by the full width `dim` after normalising k by n - 1 (trained that way).
    omega = 1.0 / (temperature ** (2 * omega / dim))  # (n,)
    gsd = torch.as_tensor(gsd, dtype=torch.float32, device=device)
    if gsd.ndim == 0:
        omega = omega * gsd  # (n,)
        y = y.flatten()[:, None] * omega[None, :]  # (L, n)
        x = x.flatten()[:, None] * omega[None, :]  # (L, n)
        return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)  # (L, dim)
    omega = omega[None, :] * gsd[:, None]  # (B, n)
    y = y.flatten()[None, :, None] * omega[:, None, :]  # (B, L, n)
    x = x.flatten()[None, :, None] * omega[:, None, :]  # (B, L, n)
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=2)  # (B, L, dim)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, L, C*P*P)``, patches in row-major grid order, each laid out (C, P, P)."""
    b, c, height, width = pixel_values.shape
    p = patch_size
    x = pixel_values.reshape(b, c, height // p, p, width // p, p)  # (B, C, h, P, w, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, P, P)
    return x.reshape(b, (height // p) * (width // p), c * p * p)  # (B, L, C*P*P)


def random_masking(
    noise: torch.Tensor, mask_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clay's masking rule: patches sorted by ascending noise, the first ``int(mask_ratio * L)`` are masked.

    Args:
        noise: ``(B, L)``; any real values (``arange`` masks the first patches of the grid).
    Returns:
        ids_keep ``(B, L')`` visible patch indices in noise order, ids_masked ``(B, L - L')``,
        mask ``(B, L)`` float with 1 = masked, ids_restore ``(B, L)`` (argsort of the noise order).
    """
    b, length = noise.shape
    num_masked = int(mask_ratio * length)
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # (B, L): masked first, then kept
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)  # (B, L)
    mask = torch.zeros(b, length, device=noise.device)
    mask[:, :num_masked] = 1
    mask = torch.gather(mask, dim=1, index=ids_restore)  # back to grid order
    return ids_shuffle[:, num_masked:], ids_shuffle[:, :num_masked], mask, ids_restore


# --------------------------------------------------------------------------------------------------
# Output dataclasses
# --------------------------------------------------------------------------------------------------
@dataclass
class ClayModelOutput(ModelOutput):
    """Encoder output.

    Args:
        last_hidden_state: ``(B, 1+L, D)``, the cls token first, then every patch in grid order.
        pooler_output: ``(B, D)``, the cls token (Clay's image embedding).
        hidden_states: the input of the first layer and the output of every layer, each ``(B, 1+L, D)``.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class ClayForPreTrainingOutput(ModelOutput):
    """Pre-training output.

    Args:
        loss: ``reconstruction_loss_weight * reconstruction + representation_loss_weight * representation``
            (reconstruction alone when no teacher embeddings were given).
        reconstruction_loss: masked-patch L1 loss.
        representation_loss: ``1 - mean cosine(projected_cls, teacher_embeddings)``, or None.
        logits: ``(B, L, C*P*P)`` decoder pixels, each patch laid out (C, P, P).
        mask: ``(B, L)``, 1 = masked.
        ids_restore: ``(B, L)``.
        last_hidden_state: ``(B, 1+L', D)`` encoder output (cls + visible patches).
        projected_cls: ``(B, T)`` the cls token mapped into the teacher's space.
        hidden_states: encoder hidden states on request.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    representation_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    projected_cls: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


# --------------------------------------------------------------------------------------------------
# Inference caches
# --------------------------------------------------------------------------------------------------
_T = TypeVar("_T")


def _parameter_state(parameter: torch.Tensor) -> tuple:
    """What changes when a parameter is replaced, updated in place (an optimizer step, ``load_state_dict``) or cast."""
    # Inference tensors (parameters created under inference_mode) carry no version counter.
    version = -1 if parameter.is_inference() else parameter._version
    return (id(parameter), parameter.data_ptr(), version, parameter.dtype, parameter.device)


def _is_exporting() -> bool:
    """Whether ``torch.export`` (or the ONNX exporter built on it) is tracing the forward.

    Traced code sees symbolic values: what reads a tensor's numbers into Python (the cache keys) is skipped then,
    and the graph computes the cached result instead. ``torch.compiler.is_exporting`` is torch >= 2.5.
    """
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    # Autocast changes output dtypes; each device type (cpu, cuda, ...) has its own switch.
    if not torch.is_autocast_enabled(device_type):
        return (False, None)
    return (True, torch.get_autocast_dtype(device_type))


class ClayCachingModule(nn.Module):
    """Base of the modules that keep inference results between calls (generated weights, position tables).

    One invalidation rule for all of them: an entry is reused only while everything it was computed from is
    unchanged. It is stored under the caller's inputs, the device, inference mode and autocast, together with the
    state of the module's parameters (identity, storage, in-place version, dtype); a changed state (an optimizer
    step, ``load_state_dict``, a replaced parameter) rebuilds the entry. Moves and casts (``.to()``, ``.half()``,
    ...) and ``load_state_dict`` also empty the cache, so no stale tensor stays alive, and copies start empty.
    Nothing is stored while a gradient can flow into the module's parameters, and nothing is looked up while
    ``torch.export`` traces the forward (the exported graph computes the entries from its inputs).
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple, tuple[tuple, Any]] = {}

    def cached(self, inputs: tuple, device: torch.device, build: Callable[[], _T]) -> _T:
        """``build()``, or what it returned last time for these ``inputs`` on ``device`` if nothing changed since."""
        if _is_exporting():
            return build()  # an exported graph holds the computation; a trace has no numbers to key a cache on
        params = list(self.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return build()  # gradients must flow into the parameters: compute afresh, as the original does
        key = (inputs, str(device), torch.is_inference_mode_enabled(), _autocast_state(device.type))
        state = tuple(_parameter_state(p) for p in params)
        entry = self._cache.get(key)
        if entry is not None and entry[0] == state:
            return entry[1]
        result = build()
        if entry is None and len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))  # the oldest entry
        self._cache[key] = (state, result)
        return result

    def _apply(self, fn, recurse: bool = True):
        self._cache.clear()  # .to(), .half(), .cuda() ... make new parameters or move the results' device
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_cache": {}}  # copies and pickles start empty


# --------------------------------------------------------------------------------------------------
# The wavelength-conditioned weight generator ("meta-encoder")
# --------------------------------------------------------------------------------------------------
class ClayWaveResidualBlock(nn.Module):
    """``x + gelu(l2(gelu(l1(x))))`` on the wavelength embedding (original ``FCBlock``)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(size, size)
        self.l2 = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class ClayWaveSelfAttention(nn.Module):
    """Unbatched multi-head self-attention over ``(N, E)`` tokens, numerically ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)  # original `in_proj_weight` / `in_proj_bias`
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, e = x.shape
        q, k, v = self.qkv(x).reshape(n, 3, self.num_heads, e // self.num_heads).permute(1, 2, 0, 3)  # 3 x (h, N, e/h)
        if _is_exporting():
            # ONNX's attention op takes 4-D inputs only; eager keeps the unbatched call its numbers were pinned with.
            out = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]  # (1, h, N, e/h) -> (h, N, e/h)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (h, N, e/h)
        return self.out_proj(out.transpose(0, 1).reshape(n, e))  # (N, E)


class ClayWaveTransformerLayer(nn.Module):
    """Post-norm transformer layer, numerically torch's ``TransformerEncoderLayer(gelu, dropout 0)``."""

    def __init__(self, dim: int, num_heads: int, intermediate_size: int, eps: float) -> None:
        super().__init__()
        self.self_attn = ClayWaveSelfAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, intermediate_size)
        self.linear2 = nn.Linear(intermediate_size, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(F.gelu(self.linear1(x))))


class ClayWeightGenerator(nn.Module):
    """Turns C wavelength tokens into per-band weights ``(C, out_dim)`` and optionally a bias ``(bias_dim,)``.

    Sequence = [N learned latent tokens, C wave tokens, 1 learned bias token] through one transformer layer.
    """

    def __init__(self, config: ClayConfig, out_dim: int, bias_dim: int | None) -> None:
        super().__init__()
        e = config.wave_dim
        self.weight_tokens = nn.Parameter(torch.empty(config.num_latent_tokens, e))
        # The decoder's generator has no fc_bias, but its bias token still takes part in the attention.
        self.bias_token = nn.Parameter(torch.empty(1, e))
        self.layer = ClayWaveTransformerLayer(
            e, config.wave_num_attention_heads, config.wave_intermediate_size, config.layer_norm_eps
        )
        self.fc_weight = nn.Linear(e, out_dim)
        self.fc_bias = nn.Linear(e, bias_dim) if bias_dim is not None else None

    def forward(self, wave_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.weight_tokens.shape[0]
        x = torch.cat([self.weight_tokens, wave_tokens, self.bias_token], dim=0)  # (N + C + 1, E)
        out = self.layer(x)  # (N + C + 1, E)
        weights = self.fc_weight(out[n:-1] + x[n:-1])  # (C, E) -> (C, out_dim)
        bias = self.fc_bias(out[-1]) if self.fc_bias is not None else None  # (E,) -> (bias_dim,)
        return weights, bias


class ClayWaveConditionedWeights(ClayCachingModule):
    """Wavelengths -> generated weights, cached per band set while the generator cannot change.

    The original regenerates the weights on every call. For a fixed band set, parameters and dtype the
    result is the same, so inference (no gradient flowing into the generator) reuses it.
    """

    def __init__(self, config: ClayConfig, out_dim: int, bias_dim: int | None) -> None:
        super().__init__()
        self.wave_dim = config.wave_dim
        self.fclayer = ClayWaveResidualBlock(config.wave_dim)
        self.weight_generator = ClayWeightGenerator(config, out_dim, bias_dim)

    def generate(self, wavelengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(C,)`` micrometres -> raw generator output: weights ``(C, out_dim)``, bias ``(bias_dim,)`` or None."""
        dtype = self.fclayer.l1.weight.dtype
        waves = sincos_1d(wavelengths.to(self.fclayer.l1.weight.device), self.wave_dim).to(dtype)  # (C, E)
        return self.weight_generator(self.fclayer(waves))

    def cached_build(self, wavelengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The subclass's ``build`` (the tensors ``forward`` applies), once per band set while no gradient can flow
        into the generator."""
        if _is_exporting():
            return self.build(wavelengths)  # the weight generator is part of the exported graph
        band_set = tuple(wavelengths.detach().float().cpu().tolist())
        return self.cached(band_set, self.fclayer.l1.weight.device, lambda: self.build(wavelengths))


class ClayDynamicPatchEmbedding(ClayWaveConditionedWeights):
    """Any band set -> patch tokens: a conv whose kernel is generated from the bands' wavelengths.

    The original applies the kernel with ``F.conv2d`` (stride = kernel = P). The same map is computed here as
    patchify + one matrix product, which is faster on CPUs (bf16 convs take a slow path there) and equal to
    float tolerance.
    """

    def __init__(self, config: ClayConfig) -> None:
        p, d = config.patch_size, config.hidden_size
        super().__init__(config, out_dim=p * p * d, bias_dim=d)
        self.patch_size = p
        self.hidden_size = d

    def build(self, wavelengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, p = wavelengths.shape[0], self.patch_size
        weights, bias = self.generate(wavelengths)
        kernel = weights.reshape(c, self.hidden_size, p * p).transpose(0, 1)  # (C, D*P*P) -> (D, C, P*P)
        kernel = kernel.reshape(self.hidden_size, c * p * p)  # (D, C, P*P) -> (D, C*P*P), the layout of patchify
        # Quirk: the kernel is scaled by 0.02, the bias is not.
        return (kernel * DYNAMIC_WEIGHT_SCALE).contiguous(), bias

    def forward(self, pixel_values: torch.Tensor, wavelengths: torch.Tensor) -> torch.Tensor:
        kernel, bias = self.cached_build(wavelengths)
        dtype = pixel_values.dtype
        patches = patchify(pixel_values, self.patch_size)  # (B, C, H, W) -> (B, L, C*P*P)
        return F.linear(patches, kernel.to(dtype), bias.to(dtype))  # (B, L, C*P*P) -> (B, L, D)


class ClayDynamicPixelHead(ClayWaveConditionedWeights):
    """Decoder tokens -> pixels of any band set: a bias-free linear map generated from the wavelengths."""

    def __init__(self, config: ClayConfig) -> None:
        p, dd = config.patch_size, config.decoder_hidden_size
        super().__init__(config, out_dim=p * p * dd, bias_dim=None)
        self.patch_size = p
        self.decoder_hidden_size = dd

    def build(self, wavelengths: torch.Tensor) -> tuple[torch.Tensor, None]:
        c, p = wavelengths.shape[0], self.patch_size
        weights, _ = self.generate(wavelengths)
        weight = weights.reshape(c * p * p, self.decoder_hidden_size)  # (C, P*P*Dd) -> (C*P*P, Dd)
        return weight * DYNAMIC_WEIGHT_SCALE, None

    def forward(self, hidden_states: torch.Tensor, wavelengths: torch.Tensor) -> torch.Tensor:
        weight, _ = self.cached_build(wavelengths)
        return F.linear(hidden_states, weight.to(hidden_states.dtype))  # (B, L, Dd) -> (B, L, C*P*P)


# --------------------------------------------------------------------------------------------------
# The transformer blocks
# --------------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention: ``(B, heads, N, d)`` x3 -> ``(B, N, heads, d)`` and the weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, heads, N, N)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, N, heads, d)
    return attn_output, attn_weights


class ClayAttention(nn.Module):
    """Pre-norm multi-head self-attention without biases on qkv and output (original ``Attention``)."""

    def __init__(self, config: ClayConfig, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
        self.is_causal = False
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.to_qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=False)
        self.to_out = nn.Linear(num_heads * head_dim, dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        qkv = self.to_qkv(self.norm(hidden_states))  # (B, N, D) -> (B, N, 3*heads*d)
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = attention(self, qkv[0], qkv[1], qkv[2], None, scaling=self.scaling, dropout=0.0)  # (B, N, heads, d)
        return self.to_out(out.reshape(b, n, self.num_heads * self.head_dim))  # (B, N, heads*d) -> (B, N, D)


class ClayMLP(nn.Module):
    """Pre-norm MLP: LayerNorm -> Linear -> GELU (exact) -> Linear (original ``FeedForward``)."""

    def __init__(self, dim: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(hidden_states))))


class ClayLayer(GradientCheckpointingLayer):
    """One transformer block: ``x + attn(x)`` then ``x + mlp(x)``."""

    def __init__(self, config: ClayConfig, dim: int, num_heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.attention = ClayAttention(config, dim, num_heads, head_dim)
        self.mlp = ClayMLP(dim, mlp_dim, config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(hidden_states)
        return hidden_states + self.mlp(hidden_states)


class ClayTransformer(nn.Module):
    """A stack of ``ClayLayer`` and a final LayerNorm (used by the encoder and the decoder)."""

    def __init__(self, config: ClayConfig, dim: int, depth: int, num_heads: int, head_dim: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([ClayLayer(config, dim, num_heads, head_dim, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        all_hidden = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        return self.norm(hidden_states), all_hidden


# --------------------------------------------------------------------------------------------------
# Position + metadata encoding (cached per grid, width and gsd)
# --------------------------------------------------------------------------------------------------
class ClayPositionMetadataEncoding(ClayCachingModule):
    """Adds ``sincos_2d_gsd(grid, width - 8, gsd) ++ (time, latlon)`` to every patch token."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.pos_width = width - NUM_METADATA_CHANNELS

    def table(self, grid_h: int, grid_w: int, gsd: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``(L, D-8)`` for one gsd (cached), ``(B, L, D-8)`` for per-sample gsd."""
        if gsd.ndim == 0 and gsd.device.type == "cpu" and not _is_exporting():  # a number known without a sync
            build = functools.partial(sincos_2d_gsd, grid_h, grid_w, self.pos_width, gsd, device=device)
            return self.cached((grid_h, grid_w, float(gsd)), device, build)
        return sincos_2d_gsd(grid_h, grid_w, self.pos_width, gsd.to(device), device=device)

    def forward(
        self,
        tokens: torch.Tensor,
        grid_hw: tuple[int, int],
        gsd: torch.Tensor,
        time: torch.Tensor,
        latlon: torch.Tensor,
    ) -> torch.Tensor:
        b, length, _ = tokens.shape
        pos = self.table(*grid_hw, gsd, tokens.device).to(tokens.dtype)  # (L, D-8) or (B, L, D-8)
        pos = pos.expand(b, length, self.pos_width)  # (B, L, D-8)
        meta = torch.cat((time, latlon), dim=-1).to(tokens.dtype)  # (B, 8): time first, then latlon
        meta = meta[:, None, :].expand(b, length, NUM_METADATA_CHANNELS)  # (B, L, 8)
        return tokens + torch.cat((pos, meta), dim=-1)  # (B, L, D)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def check_arguments(forward: Callable) -> Callable:
    """Make ``forward`` raise a ``TypeError`` that names an unknown keyword argument and the closest known one.

    A ``forward(**kwargs)`` that drops unknown names turns a typo into a wrong result (``lat_lon=`` would leave the
    location at zeros), and Python's own error suggests nothing. The signature stays the wrapped one, so tools that
    read it (the Trainer, pipelines) see exactly the accepted arguments.
    """
    names = [
        name
        for name, parameter in inspect.signature(forward).parameters.items()
        if name != "self" and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    known = frozenset(names)

    @functools.wraps(forward)
    def checked(self, *args, **kwargs):
        if not known.issuperset(kwargs):
            raise TypeError(_unexpected_arguments_message(f"{type(self).__name__}.forward()", kwargs, names))
        return forward(self, *args, **kwargs)

    return checked


def _unexpected_arguments_message(where: str, kwargs: dict[str, Any], names: list[str]) -> str:
    unknown = [name for name in kwargs if name not in names]
    suggestions = {name: difflib.get_close_matches(name, names, n=1) for name in unknown}
    takes = f"it takes {', '.join(names)}"
    if len(unknown) == 1:
        ((name, close),) = suggestions.items()
        return f"{where} got an unexpected argument {name!r}; " + (f"did you mean {close[0]!r}?" if close else takes)
    described = [
        f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") for name, close in suggestions.items()
    ]
    return f"{where} got unexpected arguments {', '.join(described)}; {takes}"


class ClayPreTrainedModel(PreTrainedModel):
    config: ClayConfig
    config_class = ClayConfig
    base_model_prefix = "clay"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ClayLayer", "ClayWaveConditionedWeights"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    # Auto classes written into `auto_map` by save_pretrained, whatever class is saved.
    _clay_auto_map = {
        "AutoConfig": "configuration_clay.ClayConfig",
        "AutoModel": "modeling_clay.ClayModel",
        "AutoModelForPreTraining": "modeling_clay.ClayForPreTraining",
        "AutoModelForImageClassification": "modeling_clay.ClayForImageClassification",
        "AutoModelForSemanticSegmentation": "modeling_clay.ClayForSemanticSegmentation",
    }

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, ClayModel):
            init.normal_(module.cls_token, std=std)
        elif isinstance(module, ClayWeightGenerator):
            init.normal_(module.weight_tokens, std=std)
            init.normal_(module.bias_token, std=std)
        elif isinstance(module, ClayDecoder):
            init.normal_(module.mask_patch, std=std)
        elif isinstance(module, ClayClassificationHead):
            # Truncated normal as timm's ViT heads (the parent runs after its Linear children, so this wins).
            for linear in (module.dense, module.out_proj):
                if linear is not None:
                    init.trunc_normal_(linear.weight, std=std)
                    init.zeros_(linear.bias)
        elif isinstance(module, ClayUpsampleBlock):
            # He initialisation for the conv before BatchNorm + GELU (std 0.02 would start the maps near zero).
            init.kaiming_normal_(module.conv.weight, mode="fan_out", nonlinearity="relu")

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """Save weights (safetensors), config and the remote code; ``auto_map`` covers every Clay Auto class."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._clay_auto_map}
        super().save_pretrained(save_directory, *args, **kwargs)

    @staticmethod
    def _check_inputs(
        pixel_values: torch.Tensor,
        wavelengths: torch.Tensor,
        gsd: float | torch.Tensor,
        time: torch.Tensor | None,
        latlon: torch.Tensor | None,
        patch_size: int,
        valid_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate and normalise the model inputs; returns (pixels, wavelengths, gsd, time, latlon)."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if hasattr(pixel_values, "shape") else type(pixel_values).__name__
            raise ClayInputError(
                f"pixel_values must be a (B, C, H, W) tensor, got {shape}; add a batch dimension with "
                "pixel_values[None] or use ClayImageProcessor"
            )
        b, c, height, width = pixel_values.shape
        wavelengths = torch.as_tensor(wavelengths, dtype=torch.float32)
        if wavelengths.ndim != 1 or wavelengths.shape[0] != c:
            raise BandMismatchError(
                f"pixel_values has {c} bands but wavelengths has shape {tuple(wavelengths.shape)}; "
                f"expected ({c},): one central wavelength in micrometres per band"
            )
        if height < patch_size or width < patch_size or height % patch_size or width % patch_size:
            raise ChipSizeError(
                f"chip of {height}x{width} pixels does not fit patch_size {patch_size}: height and width must "
                f"be positive multiples of {patch_size} (crop or pad to "
                f"{max(patch_size, height // patch_size * patch_size)}x{max(patch_size, width // patch_size * patch_size)})"
            )
        gsd = torch.as_tensor(gsd, dtype=torch.float32)
        if gsd.ndim == 1 and gsd.shape[0] == 1:
            gsd = gsd[0]
        if not (gsd.ndim == 0 or (gsd.ndim == 1 and gsd.shape[0] == b)):
            raise ClayInputError(
                f"gsd must be a number (metres) or a ({b},) tensor, one per chip; got shape {tuple(gsd.shape)}"
            )
        device, dtype = pixel_values.device, pixel_values.dtype
        meta = []
        for name, value in (("time", time), ("latlon", latlon)):
            if value is None:
                value = torch.zeros(b, 4, device=device, dtype=dtype)
            value = torch.as_tensor(value, device=device)
            if value.shape != (b, 4):
                raise ClayInputError(
                    f"{name} must have shape ({b}, 4) (sines and cosines, see ClayImageProcessor), "
                    f"got {tuple(value.shape)}; pass None when unknown"
                )
            meta.append(value)
        mask_shape = None if valid_mask is None else tuple(getattr(valid_mask, "shape", ()))
        if mask_shape is not None and mask_shape != (b, height, width):
            raise ClayInputError(
                f"valid_mask must have shape ({b}, {height}, {width}) (B, H, W) like pixel_values, got {mask_shape}; "
                "pass the processor's outputs together"
            )
        return pixel_values, wavelengths, gsd, meta[0], meta[1]


class ClayModel(ClayPreTrainedModel):
    """The Clay encoder: any band set, chip size and resolution -> cls + patch embeddings (no masking)."""

    # Heads in a pre-training or fine-tuned folder are dropped when only the encoder is loaded.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^proj\.", r"^classifier\.", r"^decode_head\."]

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        self.config = config
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        self.patch_embedding = ClayDynamicPatchEmbedding(config)
        self.position_encoding = ClayPositionMetadataEncoding(config.hidden_size)
        self.encoder = ClayTransformer(
            config, config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.head_dim,
            config.intermediate_size,
        )  # fmt: skip
        self.post_init()

    def embed_patches(
        self, pixel_values: torch.Tensor, wavelengths: torch.Tensor, gsd: torch.Tensor, time, latlon
    ) -> torch.Tensor:
        """Patch embedding plus position and metadata encoding: ``(B, C, H, W) -> (B, L, D)``."""
        p = self.config.patch_size
        grid_hw = (pixel_values.shape[2] // p, pixel_values.shape[3] // p)
        patches = self.patch_embedding(pixel_values, wavelengths)  # (B, L, D)
        return self.position_encoding(patches, grid_hw, gsd, time, latlon)  # (B, L, D)

    def encode(
        self, tokens: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Prepend the cls token (it carries no position) and run the transformer: ``(B, L', D) -> (B, 1+L', D)``."""
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        return self.encoder(torch.cat((cls, tokens), dim=1), output_hidden_states)

    @check_arguments
    def forward(
        self,
        pixel_values: torch.Tensor,
        wavelengths: torch.Tensor,
        gsd: float | torch.Tensor,
        time: torch.Tensor | None = None,
        latlon: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        valid_mask: torch.Tensor | None = None,
    ) -> ClayModelOutput | tuple:
        r"""Embed a batch of chips that share one band set.

        Args:
            pixel_values: ``(B, C, H, W)`` normalised bands; H and W multiples of ``patch_size``.
            wavelengths: ``(C,)`` central wavelength of each band in micrometres.
            gsd: ground sample distance in metres, a number or a ``(B,)`` tensor.
            time: ``(B, 4)`` week/hour sines and cosines, or None (zeros).
            latlon: ``(B, 4)`` location sines and cosines in the training order (lon first), or None.
            output_hidden_states: also return the input of the first layer and the output of every layer.
            return_dict: a ``ClayModelOutput`` (default) or a tuple.
            valid_mask: ``(B, H, W)``, True where no band is nodata, as ``ClayImageProcessor`` returns it when
                ``nodata`` is set. Accepted (shape-checked) so that ``model(**processor(...))`` works; the encoder
                does not use it: the processor already filled nodata pixels with the band mean.

        Any other keyword raises ``TypeError`` naming the closest accepted one.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pixel_values, wavelengths, gsd, time, latlon = self._check_inputs(
            pixel_values, wavelengths, gsd, time, latlon, self.config.patch_size, valid_mask
        )
        tokens = self.embed_patches(pixel_values, wavelengths, gsd, time, latlon)  # (B, L, D)
        hidden, all_hidden = self.encode(tokens, output_hidden_states)  # (B, 1+L, D)
        if not return_dict:
            return tuple(v for v in (hidden, hidden[:, 0], all_hidden) if v is not None)
        return ClayModelOutput(last_hidden_state=hidden, pooler_output=hidden[:, 0], hidden_states=all_hidden)


class ClayDecoder(nn.Module):
    """MAE decoder: back to the full grid with mask tokens, position + metadata encoding, transformer, pixels."""

    def __init__(self, config: ClayConfig) -> None:
        super().__init__()
        d, dd = config.hidden_size, config.decoder_hidden_size
        self.enc_to_dec = nn.Linear(d, dd) if d != dd else nn.Identity()
        self.mask_patch = nn.Parameter(torch.empty(dd))
        self.position_encoding = ClayPositionMetadataEncoding(dd)
        self.transformer = ClayTransformer(
            config, dd, config.decoder_num_hidden_layers, config.decoder_num_attention_heads, config.decoder_head_dim,
            config.decoder_intermediate_size,
        )  # fmt: skip
        self.embed_to_pixels = ClayDynamicPixelHead(config)

    def forward(
        self,
        encoder_hidden: torch.Tensor,
        ids_restore: torch.Tensor,
        grid_hw: tuple[int, int],
        wavelengths: torch.Tensor,
        gsd: torch.Tensor,
        time: torch.Tensor,
        latlon: torch.Tensor,
    ) -> torch.Tensor:
        x = self.enc_to_dec(encoder_hidden)  # (B, 1+L', D) -> (B, 1+L', Dd)
        cls, visible = x[:, :1], x[:, 1:]
        b, length = ids_restore.shape
        mask_tokens = self.mask_patch.to(x.dtype).expand(b, length - visible.shape[1], -1)  # (B, L-L', Dd)
        shuffled = torch.cat((mask_tokens, visible), dim=1)  # (B, L, Dd) in noise order: masked, then kept
        index = ids_restore[:, :, None].expand(-1, -1, x.shape[-1])  # (B, L, Dd)
        grid = torch.gather(shuffled, dim=1, index=index)  # (B, L, Dd) in grid order
        grid = self.position_encoding(grid, grid_hw, gsd, time, latlon)  # the cls token gets no encoding
        hidden, _ = self.transformer(torch.cat((cls, grid), dim=1))  # (B, 1+L, Dd)
        return self.embed_to_pixels(hidden[:, 1:], wavelengths)  # (B, L, Dd) -> (B, L, C*P*P)


class ClayForPreTraining(ClayPreTrainedModel):
    """Clay encoder + MAE decoder + teacher projection, with the v1.5 losses."""

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        self.clay = ClayModel(config)
        self.decoder = ClayDecoder(config)
        self.proj = nn.Linear(config.hidden_size, config.teacher_dim)
        self.post_init()

    def drop_bands(
        self, pixel_values: torch.Tensor, latlon: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Training-mode augmentation: for chips with a location, zero all bands (p=0.1) or a random half (p=0.2)."""
        b, c = pixel_values.shape[:2]
        p_all, p_half = self.config.drop_all_bands_prob, self.config.drop_half_bands_prob
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(b, 2, generator=generator, device=gen_device).to(pixel_values.device)  # (B, 2)
        ranks = torch.rand(b, c, generator=generator, device=gen_device).argsort(dim=1).argsort(dim=1)  # (B, C)
        has_location = latlon.abs().sum(dim=1) > 0  # (B,)
        drop_all = has_location & (u[:, 0] < p_all)
        drop_half = has_location & ~drop_all & (u[:, 1] < p_half)
        keep = torch.ones(b, c, device=pixel_values.device, dtype=pixel_values.dtype)
        keep[drop_all] = 0
        half = (ranks.to(pixel_values.device) < c // 2) & drop_half[:, None]  # (B, C): a random C//2 bands
        keep[half] = 0
        return pixel_values * keep[:, :, None, None]  # (B, C, H, W)

    def reconstruction_loss(self, pixel_values: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean L1 over the masked patches of the ORIGINAL pixels (patch-standardised with ``norm_pix_loss``)."""
        target = patchify(pixel_values, self.config.patch_size).to(logits.dtype)  # (B, L, C*P*P)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = (logits - target).abs().mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)

    @check_arguments
    def forward(
        self,
        pixel_values: torch.Tensor,
        wavelengths: torch.Tensor,
        gsd: float | torch.Tensor,
        time: torch.Tensor | None = None,
        latlon: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        teacher_embeddings: torch.Tensor | None = None,
        reconstruction_loss_scale: float = 1.0,
        generator: torch.Generator | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        valid_mask: torch.Tensor | None = None,
    ) -> ClayForPreTrainingOutput | tuple:
        r"""Masked-autoencoder pre-training step.

        Args:
            pixel_values, wavelengths, gsd, time, latlon: as for [`ClayModel`].
            noise: ``(B, L)``; patches sorted by ascending noise, the first ``int(mask_ratio * L)`` are masked.
                Drawn uniformly (from ``generator``) when None.
            teacher_embeddings: ``(B, T)`` pooled embeddings of the frozen teacher; adds the representation loss.
            reconstruction_loss_scale: multiplies the reconstruction loss (0.1 for MODIS batches in v1.5).
            generator: the source of randomness for the noise and the band-dropping augmentation.
            output_hidden_states, return_dict, valid_mask: as for [`ClayModel`] (``valid_mask`` is not used).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pixel_values, wavelengths, gsd, time, latlon = self._check_inputs(
            pixel_values, wavelengths, gsd, time, latlon, self.config.patch_size, valid_mask
        )
        b = pixel_values.shape[0]
        p = self.config.patch_size
        grid_hw = (pixel_values.shape[2] // p, pixel_values.shape[3] // p)
        length = grid_hw[0] * grid_hw[1]

        # 1. augmentation (training only): the encoder may see dropped bands, the target stays intact
        encoder_pixels = pixel_values
        if self.training and (self.config.drop_all_bands_prob > 0 or self.config.drop_half_bands_prob > 0):
            encoder_pixels = self.drop_bands(pixel_values, latlon, generator)

        # 2. embed patches and add position + metadata encodings
        tokens = self.clay.embed_patches(encoder_pixels, wavelengths, gsd, time, latlon)  # (B, L, D)

        # 3. mask
        if noise is None:
            gen_device = generator.device if generator is not None else pixel_values.device
            noise = torch.rand(b, length, generator=generator, device=gen_device)
        if noise.shape != (b, length):
            raise ClayInputError(f"noise must have shape ({b}, {length}) (B, L), got {tuple(noise.shape)}")
        ids_keep, _, mask, ids_restore = random_masking(noise.to(pixel_values.device), self.config.mask_ratio)
        index = ids_keep[:, :, None].expand(-1, -1, tokens.shape[-1])  # (B, L', D)
        visible = torch.gather(tokens, dim=1, index=index)  # (B, L, D) -> (B, L', D)

        # 4. encode (cls + visible patches)
        encoded, all_hidden = self.clay.encode(visible, output_hidden_states)  # (B, 1+L', D)

        # 5. decode to pixels
        logits = self.decoder(encoded, ids_restore, grid_hw, wavelengths, gsd, time, latlon)  # (B, L, C*P*P)
        mask = mask.to(logits.dtype)

        # 6. losses
        reconstruction_loss = self.reconstruction_loss(pixel_values, logits, mask) * reconstruction_loss_scale
        projected_cls = self.proj(encoded[:, 0])  # (B, D) -> (B, T)
        representation_loss = None
        loss = reconstruction_loss
        if teacher_embeddings is not None:
            if teacher_embeddings.shape != projected_cls.shape:
                raise ClayInputError(
                    f"teacher_embeddings must have shape {tuple(projected_cls.shape)} (B, teacher_dim="
                    f"{self.config.teacher_dim}), got {tuple(teacher_embeddings.shape)}"
                )
            target = teacher_embeddings.to(projected_cls.dtype)
            representation_loss = 1 - F.cosine_similarity(projected_cls, target, dim=-1).mean()
            loss = (
                self.config.reconstruction_loss_weight * reconstruction_loss
                + self.config.representation_loss_weight * representation_loss
            )

        if not return_dict:
            return tuple(
                v
                for v in (loss, reconstruction_loss, representation_loss, logits, mask, ids_restore, encoded,
                          projected_cls, all_hidden)
                if v is not None
            )  # fmt: skip
        return ClayForPreTrainingOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            representation_loss=representation_loss,
            logits=logits,
            mask=mask,
            ids_restore=ids_restore,
            last_hidden_state=encoded,
            projected_cls=projected_cls,
            hidden_states=all_hidden,
        )


# --------------------------------------------------------------------------------------------------
# Task heads: per-chip classification/regression, per-pixel segmentation/regression
# --------------------------------------------------------------------------------------------------
# Head settings are read from the config. ClayConfig keeps (and saves) keyword arguments it does not name, so
# `ClayConfig(..., classifier_pooling="mean")` works; a head fills in the defaults it does not find.
CLAY_HEAD_DEFAULTS: dict[str, object] = {
    "classifier_pooling": "cls",  # "cls" token or "mean" over the patch tokens
    "classifier_hidden_size": None,  # None: a linear head; an int: Linear -> GELU -> Linear
    "classifier_dropout": 0.0,
    "freeze_backbone": False,  # a linear probe: the encoder stays in eval mode without gradients
    "segmentation_hidden_size": 256,  # channels of the segmentation decoder's first stage
    "semantic_loss_ignore_index": 255,
}
CLASSIFIER_POOLINGS = ("cls", "mean")
CLASSIFICATION_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
SEGMENTATION_PROBLEM_TYPES = ("regression", "single_label_classification")


def tokens_to_grid(tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Patch tokens in row-major grid order to a feature map: ``(B, L, D) -> (B, D, h, w)``."""
    b, length, d = tokens.shape
    h, w = grid_hw
    if length != h * w:
        raise ClayInputError(f"{length} patch tokens do not fill a {h}x{w} grid ({h * w} patches)")
    return tokens.transpose(1, 2).reshape(b, d, h, w)  # (B, L, D) -> (B, D, L) -> (B, D, h, w)


def infer_problem_type(config: ClayConfig, labels: torch.Tensor, choices: tuple[str, ...]) -> str:
    """``config.problem_type``, inferred on first use as transformers does (and stored in the config).

    One label -> "regression"; integer labels -> "single_label_classification"; otherwise
    "multi_label_classification" (or "regression" where multi-label is not among ``choices``).
    """
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif not labels.is_floating_point():
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = (
                "multi_label_classification" if "multi_label_classification" in choices else "regression"
            )
    if config.problem_type not in choices:
        raise ClayInputError(f"problem_type {config.problem_type!r} is not supported here; expected one of {choices}")
    return config.problem_type


def masked_mse_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the finite targets (NaN marks a missing value); 0 with a graph when none is."""
    valid = torch.isfinite(targets)
    if not valid.any():
        return predictions.sum() * 0.0
    return F.mse_loss(predictions[valid], targets[valid].to(predictions.dtype))


def _check_class_labels(labels: torch.Tensor, num_labels: int, ignore_index: int) -> None:
    if labels.is_floating_point():
        raise ClayInputError(
            f"class labels must be integers (torch.long), got {labels.dtype}; for float targets set "
            "problem_type='regression' (or 'multi_label_classification' for 0/1 vectors)"
        )
    valid = labels[labels != ignore_index]
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_labels):
        raise ClayInputError(
            f"class labels must be in [0, num_labels={num_labels}) or {ignore_index} (ignored), got values in "
            f"[{int(valid.min())}, {int(valid.max())}]; set num_labels (and id2label) in the config"
        )


class ClayClassificationHead(nn.Module):
    """Pooled embedding -> logits: a linear layer, or an MLP with ``classifier_hidden_size`` hidden units."""

    def __init__(self, config: ClayConfig) -> None:
        super().__init__()
        hidden = config.classifier_hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.dense = nn.Linear(config.hidden_size, hidden) if hidden else None
        self.out_proj = nn.Linear(hidden or config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.dropout(pooled)
        if self.dense is not None:
            x = self.dropout(F.gelu(self.dense(x)))  # (B, D) -> (B, hidden)
        return self.out_proj(x)  # (B, K)


class ClayUpsampleBlock(nn.Module):
    """x2 bilinear upsampling, 3x3 conv, BatchNorm, GELU: ``(B, c_in, h, w) -> (B, c_out, 2h, 2w)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # (B, c_in, 2h, 2w)
        return F.gelu(self.norm(self.conv(x)))  # (B, c_out, 2h, 2w)


class ClaySegmentationDecoder(nn.Module):
    """A light decoder over the patch grid: 1x1 projection, ceil(log2 P) x2 upsampling stages (channels halve),
    a 1x1 classifier, and a final bilinear resize to the chip size when P is not a power of two."""

    def __init__(self, config: ClayConfig) -> None:
        super().__init__()
        channels = config.segmentation_hidden_size
        self.proj = nn.Conv2d(config.hidden_size, channels, kernel_size=1)
        stages = []
        for _ in range(max(0, math.ceil(math.log2(config.patch_size)))):
            stages.append(ClayUpsampleBlock(channels, max(channels // 2, 8)))
            channels = max(channels // 2, 8)
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, patch_tokens: torch.Tensor, grid_hw: tuple[int, int], chip_hw: tuple[int, int]) -> torch.Tensor:
        x = self.proj(tokens_to_grid(patch_tokens, grid_hw))  # (B, L, D) -> (B, D, h, w) -> (B, c, h, w)
        for stage in self.stages:
            x = stage(x)  # (B, c, h', w') -> (B, c/2, 2h', 2w')
        logits = self.classifier(x)  # (B, K, h * 2^s, w * 2^s) after s stages
        if logits.shape[-2:] != chip_hw:
            logits = F.interpolate(logits, size=chip_hw, mode="bilinear", align_corners=False)  # (B, K, H, W)
        return logits


class ClayPreTrainedHead(ClayPreTrainedModel):
    """Shared mechanics of the task heads: the `clay` encoder, head defaults, and backbone freezing."""

    # A pre-trained folder (ClayForPreTraining or another head) loads with its other heads' weights dropped.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^proj\.", r"^classifier\.", r"^decode_head\."]

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        for name, value in CLAY_HEAD_DEFAULTS.items():
            if not hasattr(config, name):
                setattr(config, name, value)
        if config.num_labels < 1:
            raise ClayConfigError(f"num_labels must be at least 1, got {config.num_labels}")
        self.clay = ClayModel(config)

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) the encoder: no gradients, and eval mode whatever ``train()`` is called with.

        Saved as ``config.freeze_backbone``, so a reloaded linear probe stays one.
        """
        self.config.freeze_backbone = bool(freeze)
        self.clay.requires_grad_(not freeze)
        self.clay.train(self.training and not freeze)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self.config, "freeze_backbone", False):
            # Re-applied here because from_pretrained replaces the parameters (and their flags), then calls eval().
            self.clay.requires_grad_(False)
            self.clay.eval()  # a frozen encoder keeps its inference behaviour (and its weight cache)
        return self

    def post_init(self) -> None:
        super().post_init()
        if self.config.freeze_backbone:
            self.freeze_backbone(True)

    def encode_chips(
        self, pixel_values, wavelengths, gsd, time, latlon, output_hidden_states: bool | None, valid_mask=None
    ) -> ClayModelOutput:
        return self.clay(
            pixel_values, wavelengths, gsd, time=time, latlon=latlon, output_hidden_states=output_hidden_states,
            return_dict=True, valid_mask=valid_mask,
        )  # fmt: skip


class ClayForImageClassification(ClayPreTrainedHead):
    """Clay encoder + a linear or MLP head on the cls token (or the mean patch token): one label per chip.

    ``config.problem_type`` picks the loss as in transformers: "single_label_classification" (cross-entropy,
    labels ``(B,)`` long), "multi_label_classification" (BCE with logits, labels ``(B, num_labels)`` 0/1, as in
    BigEarthNet) or "regression" (MSE, labels ``(B,)`` or ``(B, num_labels)``, NaN = missing; e.g. biomass per
    chip). Left as None, it is inferred on the first call with labels from ``num_labels`` and the labels' dtype.
    """

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        if config.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ClayConfigError(
                f"classifier_pooling must be one of {CLASSIFIER_POOLINGS}, got {config.classifier_pooling!r}"
            )
        self.num_labels = config.num_labels
        self.classifier = ClayClassificationHead(config)
        self.post_init()

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, 1+L, D) -> (B, D)``: the cls token, or the mean of the patch tokens."""
        if self.config.classifier_pooling == "mean":
            return hidden[:, 1:].mean(dim=1)
        return hidden[:, 0]

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, k = logits.shape
        labels = labels.to(logits.device)
        problem_type = infer_problem_type(self.config, labels, CLASSIFICATION_PROBLEM_TYPES)
        if problem_type == "single_label_classification":
            if labels.shape != (b,):
                raise ClayInputError(
                    f"single_label_classification needs labels of shape ({b},) (one class index per chip), got "
                    f"{tuple(labels.shape)}; for one-hot or multi-hot vectors use multi_label_classification"
                )
            _check_class_labels(labels, k, ignore_index=-100)
            return F.cross_entropy(logits, labels, ignore_index=-100)
        if problem_type == "multi_label_classification":
            if labels.shape != (b, k):
                raise ClayInputError(
                    f"multi_label_classification needs labels of shape ({b}, {k}) (B, num_labels), got "
                    f"{tuple(labels.shape)}; set num_labels={labels.shape[-1]} if that is the number of classes"
                )
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        if labels.shape == (b,) and k == 1:
            labels = labels[:, None]  # (B,) -> (B, 1)
        if labels.shape != (b, k):
            raise ClayInputError(
                f"regression needs labels of shape ({b}, {k}) (B, num_labels){f' or ({b},)' if k == 1 else ''}, "
                f"got {tuple(labels.shape)}"
            )
        return masked_mse_loss(logits, labels)

    @check_arguments
    def forward(
        self,
        pixel_values: torch.Tensor,
        wavelengths: torch.Tensor,
        gsd: float | torch.Tensor,
        time: torch.Tensor | None = None,
        latlon: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        valid_mask: torch.Tensor | None = None,
    ) -> ImageClassifierOutput | tuple:
        r"""Classify (or regress) whole chips.

        Args:
            pixel_values, wavelengths, gsd, time, latlon: as for [`ClayModel`].
            labels: see the class docstring; the loss follows ``config.problem_type``.
            output_hidden_states, return_dict, valid_mask: as for [`ClayModel`] (``valid_mask`` is not used).
        Returns:
            ``ImageClassifierOutput`` with ``logits`` ``(B, num_labels)`` and ``loss`` when labels are given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.encode_chips(pixel_values, wavelengths, gsd, time, latlon, output_hidden_states, valid_mask)
        logits = self.classifier(self.pool(outputs.last_hidden_state))  # (B, 1+L, D) -> (B, D) -> (B, K)
        loss = self.compute_loss(logits, labels) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class ClayForSemanticSegmentation(ClayPreTrainedHead):
    """Clay encoder + a light convolutional decoder over the patch grid: one label (or value) per pixel.

    Logits are ``(B, num_labels, H, W)``, at the chip size. Two problem types:

    - "single_label_classification" (semantic segmentation): labels ``(B, H, W)`` long, cross-entropy that
      skips ``config.semantic_loss_ignore_index`` (255 by default: nodata, unlabelled).
    - "regression" (the per-pixel regression head, e.g. biomass maps): ``num_labels`` maps, labels
      ``(B, H, W)`` float (``num_labels=1``) or ``(B, num_labels, H, W)``; MSE over the finite targets, so
      NaN marks a pixel without a measurement.

    Left as None, the problem type is inferred from the first labels: one label or float labels -> regression.
    """

    def __init__(self, config: ClayConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.decode_head = ClaySegmentationDecoder(config)
        self.post_init()

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, k, height, width = logits.shape
        labels = labels.to(logits.device)
        problem_type = infer_problem_type(self.config, labels, SEGMENTATION_PROBLEM_TYPES)
        if problem_type == "single_label_classification":
            if labels.shape != (b, height, width):
                raise ClayInputError(
                    f"segmentation labels must have shape ({b}, {height}, {width}) (B, H, W), one class index per "
                    f"pixel of the chip, got {tuple(labels.shape)}"
                )
            ignore_index = self.config.semantic_loss_ignore_index
            _check_class_labels(labels, k, ignore_index)
            if bool((labels == ignore_index).all()):
                return logits.sum() * 0.0  # nothing labelled: no signal (cross-entropy would give NaN)
            return F.cross_entropy(logits, labels, ignore_index=ignore_index)
        if labels.shape == (b, height, width) and k == 1:
            labels = labels[:, None]  # (B, H, W) -> (B, 1, H, W)
        if labels.shape != (b, k, height, width):
            raise ClayInputError(
                f"per-pixel regression needs labels of shape ({b}, {k}, {height}, {width}) (B, num_labels, H, W)"
                f"{f' or ({b}, {height}, {width})' if k == 1 else ''}, got {tuple(labels.shape)}"
            )
        return masked_mse_loss(logits, labels)

    @check_arguments
    def forward(
        self,
        pixel_values: torch.Tensor,
        wavelengths: torch.Tensor,
        gsd: float | torch.Tensor,
        time: torch.Tensor | None = None,
        latlon: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        valid_mask: torch.Tensor | None = None,
    ) -> SemanticSegmenterOutput | tuple:
        r"""Segment (or regress) every pixel of the chips.

        Args:
            pixel_values, wavelengths, gsd, time, latlon: as for [`ClayModel`].
            labels: see the class docstring; the loss follows ``config.problem_type``.
            output_hidden_states, return_dict, valid_mask: as for [`ClayModel`] (``valid_mask`` is not used).
        Returns:
            ``SemanticSegmenterOutput`` with ``logits`` ``(B, num_labels, H, W)`` and ``loss`` when labels are given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.encode_chips(pixel_values, wavelengths, gsd, time, latlon, output_hidden_states, valid_mask)
        p = self.config.patch_size
        chip_hw = (pixel_values.shape[2], pixel_values.shape[3])
        grid_hw = (chip_hw[0] // p, chip_hw[1] // p)
        logits = self.decode_head(outputs.last_hidden_state[:, 1:], grid_hw, chip_hw)  # (B, K, H, W)
        loss = self.compute_loss(logits, labels) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


ClayModel.register_for_auto_class("AutoModel")
ClayForPreTraining.register_for_auto_class("AutoModelForPreTraining")
ClayForImageClassification.register_for_auto_class("AutoModelForImageClassification")
ClayForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
