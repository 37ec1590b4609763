"""Pre-training with Accelerate on real chips: losses fall, exact resume, non-finite stop, init-from, outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clay_hf import ClayImageProcessor
from clay_hf.errors import ClayConfigError
from clay_hf.training import NonFiniteLossError, TrainingConfig, find_latest_checkpoint, lr_lambda, train


@pytest.fixture(scope="session")
def s2_chips(s2_files) -> list[np.ndarray]:
    """32 real Sentinel-2 chips of 32 x 32 px at 20 m (uint16 reflectance, 10 bands)."""
    from clay_hf.io import MultiBandSource, iter_chips

    with MultiBandSource(s2_files, resolution=20.0) as source:
        return [chip["pixels"] for chip, _ in zip(iter_chips(source, 32), range(32))]


class _ChipLoader:
    """A minimal stand-in for the streamed loader: real chips, a seeded order per epoch, one band set."""

    def __init__(self, chips, processor, batch_size, poison_batch=None):
        self.chips, self.processor, self.batch_size, self.epoch = chips, processor, batch_size, 0
        self.poison_batch = poison_batch
        self.served = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = np.random.default_rng(self.epoch).permutation(len(self.chips))
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            pixels = np.stack([self.chips[i] for i in order[start : start + self.batch_size]]).astype(np.float32)
            n = len(pixels)
            batch = dict(self.processor(pixels, sensor="sentinel-2-l2a", lat=[40.7] * n, lon=[-74.0] * n,
                                        datetimes=["2019-06-01"] * n))  # fmt: skip
            batch["sensor"] = "sentinel-2-l2a"
            self.served += 1
            if self.poison_batch is not None and self.served == self.poison_batch:
                batch["pixel_values"] = batch["pixel_values"] * float("inf")
            yield batch


def _factory(chips, poison_batch=None):
    def factory(config, processor, rank, world_size):
        return _ChipLoader(chips, processor, config.batch_size, poison_batch)

    return factory


def _config(tmp_path, **overrides) -> TrainingConfig:
    settings = dict(
        dataset="unused", output_dir=str(tmp_path), model="tiny", max_steps=8, batch_size=8, learning_rate=1e-3,
        teacher="tiny-random", teacher_image_size=56, checkpoint_every=3, log_every=1, time_latlon_dropout=0.0,
    )  # fmt: skip
    settings.update(overrides)
    return TrainingConfig(**settings)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    values = [lr_lambda(s, warmup_steps=4, max_steps=20, min_lr_ratio=0.1) for s in range(21)]
    assert values[0] == pytest.approx(1 / 5) and values[3] == pytest.approx(4 / 5)
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[20] == pytest.approx(0.1)
    assert lr_lambda(12, 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_training_config_errors_name_the_values(tmp_path):
    with pytest.raises(ClayConfigError, match="max_steps must be at least 1, got 0"):
        _config(tmp_path, max_steps=0)
    with pytest.raises(ClayConfigError, match="mixed_precision must be 'no', 'bf16' or 'fp16', got 'fp8'"):
        _config(tmp_path, mixed_precision="fp8")
    with pytest.raises(ClayConfigError, match="neither a preset"):
        train(_config(tmp_path, model="no-such-model.yaml"), dataloader_factory=_factory([]), show_progress=False)


def test_losses_fall_and_the_teacher_contributes(tmp_path, s2_chips):
    summary = train(_config(tmp_path, max_steps=12), dataloader_factory=_factory(s2_chips), show_progress=False)
    first, last = summary["first"], summary["last"]
    print("reconstruction", first["reconstruction_loss"], "->", last["reconstruction_loss"],
          "representation", first["representation_loss"], "->", last["representation_loss"])  # fmt: skip
    assert last["reconstruction_loss"] < 0.85 * first["reconstruction_loss"]
    assert last["representation_loss"] < first["representation_loss"]
    assert last["loss"] == pytest.approx(0.9 * last["reconstruction_loss"] + 0.1 * last["representation_loss"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"loss", "reconstruction_loss", "representation_loss", "lr", "chips_per_s", "epoch"} <= set(records[0])
    assert records[-1]["epoch"] == 2  # 32 chips / 8 = 4 batches per epoch: the loader cycled over epochs

    from transformers import AutoModel, AutoModelForPreTraining

    final = tmp_path / "final"
    assert (final / "model.safetensors").is_file() and (final / "preprocessor_config.json").is_file()
    model, info = AutoModelForPreTraining.from_pretrained(final, output_loading_info=True)
    assert not any(info.values())
    assert isinstance(AutoModel.from_pretrained(final), torch.nn.Module)
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-00000006", "checkpoint-00000009", "checkpoint-00000012"]  # keep 3


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, s2_chips):
    full = train(_config(tmp_path / "full"), dataloader_factory=_factory(s2_chips), show_progress=False)
    # The interrupted run ends after 5 steps (checkpoint at step 5), mid-epoch and after a checkpoint at 3.
    part = train(_config(tmp_path / "part", stop_after=5), dataloader_factory=_factory(s2_chips), show_progress=False)
    assert part["step"] == 5 and part["final_model"] is None
    resumed = train(_config(tmp_path / "part", resume=True), dataloader_factory=_factory(s2_chips), show_progress=False)
    assert resumed["step"] == 8
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "part" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
    assert full["last"]["loss"] == pytest.approx(resumed["last"]["loss"], rel=1e-5)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, s2_chips):
    config = _config(tmp_path, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step 4.*checkpoint-00000002"):
        train(config, dataloader_factory=_factory(s2_chips, poison_batch=4), show_progress=False)
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000002"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    weights = load_file(tmp_path / "checkpoints" / "checkpoint-00000002" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_continue_from_the_converted_parity_checkpoint(tmp_path, converted_micro, s2_chips):
    from transformers import AutoModel

    before = AutoModel.from_pretrained(converted_micro)
    config = _config(tmp_path, model="tiny", init_from=str(converted_micro), teacher=None, max_steps=3)
    summary = train(config, dataloader_factory=_factory(s2_chips), show_progress=False)
    after = AutoModel.from_pretrained(tmp_path / "final")
    assert after.config.hidden_size == before.config.hidden_size == 64  # the micro checkpoint, not the preset
    assert "representation_loss" not in summary["last"]
    moved = [n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(p, q)]
    assert moved  # the weights trained on
    processor = ClayImageProcessor.from_pretrained(tmp_path / "final")
    assert processor.patch_size == 4


def test_init_from_with_a_teacher_of_another_width_is_refused(tmp_path, converted_micro, s2_chips):
    config = _config(tmp_path, init_from=str(converted_micro), teacher="tiny-random")
    with pytest.raises(ClayConfigError, match="teacher_dim=48 but the teacher embeds into 32"):
        train(config, dataloader_factory=_factory(s2_chips), show_progress=False)
