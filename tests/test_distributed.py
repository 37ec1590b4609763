"""clay_hf.distributed: one process (no accelerate state) and a stand-in for several."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from clay_hf.distributed import all_finite, mean_over_processes


class _Processes:
    """An accelerator of ``n`` processes whose others hold ``others`` (what gather and reduce would see)."""

    device = torch.device("cpu")

    def __init__(self, n: int = 1, others: list[torch.Tensor] | None = None) -> None:
        self.num_processes, self.others = n, others or []

    def gather(self, tensor):
        return torch.cat([tensor, *self.others])

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "sum"
        return tensor + sum(self.others)


def test_one_process_without_accelerate():
    # In a fresh interpreter: earlier tests of this session may have initialised accelerate's PartialState here.
    code = (
        "from clay_hf.distributed import accelerate_state, rank_and_world_size; "
        "print(accelerate_state() is None, rank_and_world_size())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "True (0, 1)"


def test_all_finite_on_every_process():
    assert all_finite(_Processes(), torch.tensor(1.5))
    assert not all_finite(_Processes(), torch.tensor(float("nan")))
    assert not all_finite(_Processes(2, [torch.tensor([0.0])]), torch.tensor(1.5))  # another process saw inf
    assert all_finite(_Processes(2, [torch.tensor([1.0])]), torch.tensor(1.5))


def test_mean_over_processes_counts_only_those_that_have_a_key():
    assert mean_over_processes(_Processes(), {"loss": 2.0}, ("loss", "eval")) == {"loss": 2.0}
    other = torch.tensor([[4.0, 1.0], [0.0, 0.0]], dtype=torch.float64)  # the other has loss 4, no eval
    assert mean_over_processes(_Processes(2, [other]), {"loss": 2.0, "eval": 1.0}, ("loss", "eval")) == {
        "loss": 3.0,
        "eval": 1.0,
    }
