"""Opt-in CPU inference speed-ups for Clay models, kept beside the model rather than in it.

    >>> from clay_hf.cpu_inference import cpu_prepacked_bytes, prepare_for_cpu_inference
    >>> model = prepare_for_cpu_inference(ClayModel.from_pretrained(folder).eval())
    >>> with torch.inference_mode():
    ...     embeddings = model(**inputs).pooler_output
    >>> cpu_prepacked_bytes(model)                       # the packed weight copies CPU inference keeps
    >>> prepare_for_cpu_inference(model, enabled=False)  # back to the plain model

Two independent tunings, both numerically the model's computation to float rounding:

- **Prepacked linear layers.** A plain CPU ``F.linear`` copies the weight into its kernel's blocked layout inside
  every call. :class:`CpuPrepackedLinear` packs it once into oneDNN's layout and keeps the copy while the weight is
  unchanged (ClayModel embeddings 7-17% faster in float32 and bfloat16 on the benchmark machine, BENCHMARKS.md),
  for as much memory again as those weights. It uses PyTorch's private ``torch.ops.mkldnn`` linear ops, probed once
  per dtype (:func:`cpu_prepacking_available`); where the probe fails it is plain ``nn.Linear``.
- **Reduced-precision attention.** :func:`cpu_attention`, registered with transformers' attention registry as
  ``"clay_cpu"`` and selected with ``model.set_attn_implementation``: for bfloat16/float16 CPU inference it runs
  two matmuls and a softmax in the input dtype (PyTorch's CPU flash-attention kernel runs no faster in bfloat16
  than in float32, bfloat16 matmuls about twice as fast); everything else goes to the ``"sdpa"`` function.

The state dict, ``save_pretrained`` output and Hub remote code are those of the plain model (the attention choice
is not written into ``config.json``). Training code never calls this: its weights change every step.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .modeling_clay import ClayAttention, ClayMLP, ClayPreTrainedModel

__all__ = [
    "CPU_ATTENTION",
    "CpuPrepackedLinear",
    "cpu_attention",
    "cpu_prepacked_bytes",
    "cpu_prepacking_available",
    "prepare_for_cpu_inference",
]

logger = logging.getLogger(__name__)

CPU_ATTENTION = "clay_cpu"  # the name of cpu_attention in transformers' AttentionInterface
_PREPACK_BATCH_HINT = 1024  # rows oneDNN is told to expect when it picks the packed layout; fixed for reproducibility
# The transformer's linear layers that are swapped: (module class, attribute names).
_PREPACKED_LINEARS = ((ClayAttention, ("to_qkv", "to_out")), (ClayMLP, ("fc1", "fc2")))


# --------------------------------------------------------------------------------------------------
# Prepacked linear layers
# --------------------------------------------------------------------------------------------------
@functools.cache
def cpu_prepacking_available(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build and CPU run oneDNN linear layers on prepacked ``dtype`` weights correctly.

    Probed once per dtype with a small product checked against ``F.linear``; any failure (no oneDNN, an old
    PyTorch without the ops, no bfloat16 support) turns the prepacked path off and plain ``F.linear`` is used.
    """
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(5, 24, generator=generator).to(dtype)  # (M, K)
            weight = torch.randn(16, 24, generator=generator).to(dtype)  # (N, K)
            bias = torch.randn(16, generator=generator).to(dtype)
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, _PREPACK_BATCH_HINT)
            out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")  # (M, N)
            expected = F.linear(x, weight, bias).float()
            tolerance = 1e-4 if dtype == torch.float32 else 5e-2
            if out.shape == (5, 16) and torch.allclose(out.float(), expected, atol=tolerance):
                return True
            reason = "its result differs from F.linear"
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        reason = f"{type(error).__name__}: {error}"
    logger.info("prepacked %s linear layers are off here (%s); using F.linear", dtype, reason)
    return False


def _weight_state(weight: torch.Tensor) -> tuple:
    """What changes when a weight is replaced, updated in place or cast."""
    # Inference tensors (parameters created under inference_mode) carry no version counter.
    version = -1 if weight.is_inference() else weight._version
    return (id(weight), weight.data_ptr(), version, weight.dtype, weight.shape, torch.is_inference_mode_enabled())


class CpuPrepackedLinear(nn.Linear):
    """``nn.Linear`` that, in CPU inference, runs on its weight prepacked once into oneDNN's blocked layout.

    Used only when no gradient is recorded, outside autocast, on plain CPU tensors of matching float32/bfloat16
    dtype; everything else (training, CUDA, sharded weights, tracing and compiling) is ``nn.Linear`` unchanged.
    The packed copy is made again when the weight changes (replaced, updated in place, cast) and costs as much
    memory as the weight. Parameters and their names are the ``nn.Linear`` ones.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self._packed: tuple[tuple, torch.Tensor] | None = None  # (weight state, packed weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> CpuPrepackedLinear:
        """A prepacked linear layer that shares ``linear``'s parameters (no copy)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        module.weight, module.bias = linear.weight, linear.bias
        return module.train(linear.training)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` that shares this layer's parameters; the packed copy is released."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        self._packed = None
        return linear.train(self.training)

    def _use_prepacked(self, x: torch.Tensor) -> bool:
        weight = self.weight
        return (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype == weight.dtype
            and type(weight) in (nn.Parameter, torch.Tensor)  # not a DTensor (FSDP) or another subclass
            and weight.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing()  # exporters (ONNX, TorchScript, torch.export) see a plain linear
            and not torch.compiler.is_compiling()
            and cpu_prepacking_available(weight.dtype)
        )

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's layout, packed again only when the weight changed."""
        weight = self.weight
        state = _weight_state(weight)
        if self._packed is None or self._packed[0] != state:
            self._packed = None  # release the old copy before making the new one
            self._packed = (state, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PREPACK_BATCH_HINT))
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_prepacked(x):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), bias, "none", [], "")  # (..., out)

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # .to(), .half(), .cuda() ... make new parameters: drop the copy of the old ones
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._packed = None  # new weights: pack them on the next call
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict:
        # The packed copy is an opaque oneDNN tensor: not copyable or picklable, and rebuilt on demand anyway.
        return {**self.__dict__, "_packed": None}

    def packed_bytes(self) -> int:
        """Memory held by the packed copy (0 when none is held)."""
        return 0 if self._packed is None else self.weight.numel() * self.weight.element_size()


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------
def cpu_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``"sdpa"``, except bfloat16/float16 attention on CPU without gradients: two matmuls and a softmax in the
    input dtype. ``(B, heads, N, d)`` x3 -> ``(B, N, heads, d)``.

    PyTorch's CPU flash-attention kernel runs no faster in bfloat16 than in float32, while bfloat16 matmuls run at
    about twice the float32 rate where the CPU has bfloat16 instructions (base, 257 tokens, batch 16: 16.5 ms
    against 29.8 ms). The CPU softmax kernel computes in float32 internally and rounds once to the input dtype.
    """
    if not (
        query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16) and not torch.is_grad_enabled()
    ):
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    attn_weights = torch.matmul(query * scaling, key.transpose(2, 3))  # (B, heads, N, d) -> (B, heads, N, N)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, N, heads, d)
    return attn_output, None


# Registered on import, so a pickled or copied prepared model finds its attention in a fresh process too.
AttentionInterface.register(CPU_ATTENTION, cpu_attention)


# --------------------------------------------------------------------------------------------------
# The opt-in call
# --------------------------------------------------------------------------------------------------
def prepare_for_cpu_inference(
    model: ClayPreTrainedModel, enabled: bool = True, *, prepack_linear: bool = True, attention: bool = True
) -> ClayPreTrainedModel:
    """Turn the CPU inference tunings of a Clay model on (``enabled=True``) or off; returns the model.

    Args:
        model: any Clay model (``ClayModel``, ``ClayForPreTraining``, a task head); changed in place. Call it after
            loading, and again with ``enabled=False`` before training the same model.
        enabled: False restores the plain model: ``nn.Linear`` layers and the attention it had before.
        prepack_linear: swap the transformer's ``nn.Linear`` layers (qkv, out, fc1, fc2 of every encoder and decoder
            layer) for :class:`CpuPrepackedLinear`, which share their parameters (hooks on the swapped layers are
            not carried over). Off CPU, or with gradients, they compute as ``nn.Linear``.
        attention: select :func:`cpu_attention` (``"clay_cpu"``) through ``model.set_attn_implementation``; it
            replaces the model's attention implementation, whichever it is, until ``enabled=False``.

    The call sets the whole state: ``prepare_for_cpu_inference(model, attention=False)`` on a prepared model keeps
    the packed layers and gives the attention back.
    """
    if not isinstance(model, ClayPreTrainedModel):
        raise TypeError(f"prepare_for_cpu_inference expects a Clay model (ClayPreTrainedModel), got {type(model)!r}")
    pack = enabled and prepack_linear
    for owner in model.modules():
        for owner_class, names in _PREPACKED_LINEARS:
            if not isinstance(owner, owner_class):
                continue
            for name in names:
                linear = getattr(owner, name)
                if pack and type(linear) is nn.Linear:
                    setattr(owner, name, CpuPrepackedLinear.from_linear(linear))
                elif not pack and isinstance(linear, CpuPrepackedLinear):
                    setattr(owner, name, linear.to_linear())

    current = model.config._attn_implementation
    if enabled and attention and current != CPU_ATTENTION:
        model._attn_implementation_before_cpu_inference = current
        model.set_attn_implementation(CPU_ATTENTION)
    elif not (enabled and attention) and current == CPU_ATTENTION:
        previous = getattr(model, "_attn_implementation_before_cpu_inference", None) or "sdpa"
        model.set_attn_implementation(previous)
    return model


def cpu_prepacked_bytes(model: nn.Module) -> int:
    """Memory held by the prepacked weight copies of ``model`` (0 when it is not prepared or has not run yet)."""
    return sum(m.packed_bytes() for m in model.modules() if isinstance(m, CpuPrepackedLinear))
