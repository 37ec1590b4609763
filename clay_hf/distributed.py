"""Small helpers for code that runs as one process or many: who am I, is every loss finite, the mean over all.

They work without accelerate or torch.distributed (one process: rank 0 of 1, values as they are), so the data
builder, the loader, embedding and both training loops share one reading of the process group:

- :func:`accelerate_state`: the initialised ``accelerate.PartialState``, or None;
- :func:`rank_and_world_size`: ``(rank, world size)`` from accelerate, else torch.distributed, else ``(0, 1)``;
- :func:`all_finite`: whether a value is finite on every process (one gather), so all stop together;
- :func:`mean_over_processes`: per-key means over the processes that have each key (one all-reduce).

torch and accelerate are imported where they are needed: the chip builder's worker processes use none of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["accelerate_state", "rank_and_world_size", "all_finite", "mean_over_processes"]


def accelerate_state() -> Any:
    """The initialised ``accelerate.PartialState``, or None (not installed, or never initialised)."""
    try:
        from accelerate import PartialState
    except ImportError:  # pragma: no cover - accelerate is a training extra
        return None
    return PartialState() if PartialState._shared_state else None


def rank_and_world_size() -> tuple[int, int]:
    """Rank and world size from an initialised ``accelerate.PartialState``, else torch.distributed, else (0, 1)."""
    state = accelerate_state()
    if state is not None:
        return state.process_index, state.num_processes
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_finite(accelerator: Any, value: Any) -> bool:
    """Whether ``value`` (a tensor, e.g. this process's loss) is finite here and on every other process.

    Every process must call it at the same point (it gathers when there are several), so all of them stop
    together before any weight changes.
    """
    import torch

    finite = torch.isfinite(value.detach()).all().float().reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.gather(finite)
    return bool(finite.min() >= 1)


def mean_over_processes(accelerator: Any, values: Mapping[str, float], keys: Sequence[str]) -> dict[str, float]:
    """The mean of each of ``keys`` over the processes whose ``values`` have it (one all-reduce); keys that no
    process has are left out. Every process must pass the same ``keys``."""
    import torch

    pairs = [[float(values.get(key, 0.0)), 1.0 if key in values else 0.0] for key in keys]  # (K, [sum, count])
    tensor = torch.tensor(pairs, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="sum")
    return {key: total / count for key, (total, count) in zip(keys, tensor.tolist()) if count > 0}
