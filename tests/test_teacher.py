"""Tests for clay_hf.teacher: the frozen DINOv2-with-registers teacher of the representation loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig

from clay_hf.errors import CheckpointError, ClayConfigError, ClayInputError
from clay_hf.teacher import TEACHER_IMAGE_SIZE, ClayTeacher, tiny_random_teacher

SMALL = 56  # 4 x 4 patches of 14: fast on CPU


@pytest.fixture(scope="module")
def teacher() -> ClayTeacher:
    return tiny_random_teacher(hidden_size=32, image_size=SMALL)


def _chip(bands: int = 10, size: int = 32, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, bands, size, size, generator=generator)  # (B, C, H, W)


def _band_chip(bands: int, size: int = 8) -> torch.Tensor:
    """Band c is filled with the constant c, so a selection's values name the bands it picked."""
    return torch.arange(bands, dtype=torch.float32).view(1, bands, 1, 1).expand(2, bands, size, size).clone()


# ------------------------------------------------------------------------------------------------
# construction
# ------------------------------------------------------------------------------------------------


def test_default_image_size_is_518_and_tiny_geometry_matches_the_real_teacher():
    tiny = tiny_random_teacher()
    assert tiny.image_size == TEACHER_IMAGE_SIZE == 518
    assert tiny.model.config.patch_size == 14
    assert tiny.model.config.num_register_tokens == 4
    assert tiny.embedding_dim == 32
    out = tiny(_chip(bands=4, size=64), rgb_indices=[0, 1, 2])
    assert out.shape == (2, 32)


def test_output_shape_and_embedding_dim(teacher):
    out = teacher(_chip(bands=10, size=32, batch=3), rgb_indices=[2, 1, 0])
    assert out.shape == (3, teacher.embedding_dim) == (3, 32)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_output_is_the_pooled_layernormed_cls_token(teacher):
    pixels = _chip(bands=4, size=SMALL)
    out = teacher(pixels, rgb_indices=[0, 1, 2])
    with torch.no_grad():
        full = teacher.model(pixel_values=pixels[:, :3])  # already at image_size: the resize is the identity
    torch.testing.assert_close(out, full.last_hidden_state[:, 0])
    torch.testing.assert_close(out, full.pooler_output)


def test_frozen_no_grads_and_stays_eval(teacher):
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training and not teacher.model.training
    assert teacher.train() is teacher
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())

    # a parent's .train() reaches the teacher too
    parent = nn.Module()
    parent.teacher = teacher
    parent.train()
    assert all(not m.training for m in teacher.modules())

    pixels = _chip().requires_grad_(True)
    out = teacher(pixels, rgb_indices=[2, 1, 0])
    assert not out.requires_grad and out.grad_fn is None


def test_deterministic(teacher):
    pixels = _chip()
    a = teacher(pixels, rgb_indices=[2, 1, 0])
    b = teacher(pixels, rgb_indices=[2, 1, 0])
    assert torch.equal(a, b)
    # the same seed gives the same weights, and building leaves the global RNG untouched
    state = torch.random.get_rng_state()
    other = tiny_random_teacher(hidden_size=32, image_size=SMALL)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(other(pixels, rgb_indices=[2, 1, 0]), a)
    different = tiny_random_teacher(hidden_size=32, image_size=SMALL, seed=1)
    assert not torch.allclose(different(pixels, rgb_indices=[2, 1, 0]), a)


# ------------------------------------------------------------------------------------------------
# band selection
# ------------------------------------------------------------------------------------------------


def test_select_rgb_picks_the_indexed_bands_in_order(teacher):
    pixels = _band_chip(10)
    rgb = teacher.select_rgb(pixels, rgb_indices=[2, 1, 0])  # Sentinel-2 L2A: red, green, blue
    assert rgb.shape == (2, 3, 8, 8)
    assert rgb[:, :, 0, 0].tolist() == [[2.0, 1.0, 0.0]] * 2
    torch.testing.assert_close(rgb, pixels[:, [2, 1, 0]])
    # MODIS-style indices, a tensor and numpy integers are accepted
    assert teacher.select_rgb(pixels, rgb_indices=[0, 3, 2])[0, :, 0, 0].tolist() == [0.0, 3.0, 2.0]
    assert teacher.select_rgb(pixels, rgb_indices=torch.tensor([5, 3, 1]))[0, :, 0, 0].tolist() == [5.0, 3.0, 1.0]
    assert teacher.select_rgb(pixels, rgb_indices=np.array([9, 8, 7]).tolist())[0, :, 0, 0].tolist() == [
        9.0,
        8.0,
        7.0,
    ]
    assert (
        teacher.select_rgb(pixels, rgb_indices=(np.int64(4), np.int64(4), np.int64(4)))[0, :, 0, 0].tolist()
        == [4.0] * 3
    )


def test_select_rgb_sar_rule(teacher):
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 2, 8, 8, generator=generator)  # normalised VV, VH (decibels)
    rgb = teacher.select_rgb(pixels, is_sar=True)
    assert rgb.shape == (2, 3, 8, 8)
    torch.testing.assert_close(rgb[:, 0], pixels[:, 0])
    torch.testing.assert_close(rgb[:, 1], pixels[:, 1])
    torch.testing.assert_close(rgb[:, 2], (pixels[:, 0] + pixels[:, 1]) / 2)
    constant = teacher.select_rgb(_band_chip(2), is_sar=True)
    assert constant[0, :, 0, 0].tolist() == [0.0, 1.0, 0.5]


def test_forward_uses_the_selected_bands(teacher):
    pixels = _chip(bands=6)
    out = teacher(pixels, rgb_indices=[4, 2, 0])
    same = teacher(pixels[:, [4, 2, 0]], rgb_indices=[0, 1, 2])
    torch.testing.assert_close(out, same)
    assert not torch.allclose(out, teacher(pixels, rgb_indices=[0, 2, 4]))
    sar = teacher(pixels[:, :2], is_sar=True)
    built = torch.stack((pixels[:, 0], pixels[:, 1], (pixels[:, 0] + pixels[:, 1]) / 2), dim=1)
    torch.testing.assert_close(sar, teacher(built, rgb_indices=[0, 1, 2]))


def test_resize_is_bilinear_to_image_size(teacher, monkeypatch):
    seen = {}
    original = teacher.model.forward

    def spy(pixel_values, **kwargs):
        seen["pixel_values"] = pixel_values
        return original(pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(teacher.model, "forward", spy)
    pixels = _chip(bands=3, size=24)
    teacher(pixels, rgb_indices=[0, 1, 2])
    assert seen["pixel_values"].shape == (2, 3, SMALL, SMALL)
    expected = F.interpolate(pixels, size=(SMALL, SMALL), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(seen["pixel_values"], expected)
    # upsampling, as with Clay's 256 px chips at 518 px: antialias changes nothing
    no_aa = F.interpolate(pixels, size=(SMALL, SMALL), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(seen["pixel_values"], no_aa, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# dtype, autocast, devices
# ------------------------------------------------------------------------------------------------


def test_bfloat16_teacher_casts_the_input():
    teacher = tiny_random_teacher(image_size=SMALL, dtype=torch.bfloat16)
    assert teacher.dtype == torch.bfloat16
    out = teacher(_chip(), rgb_indices=[2, 1, 0])  # float32 input
    assert out.dtype == torch.bfloat16 and out.shape == (2, 32)
    half_input = teacher(_chip().bfloat16(), rgb_indices=[2, 1, 0])
    assert half_input.dtype == torch.bfloat16


def test_float64_input_and_autocast(teacher):
    pixels = _chip()
    reference = teacher(pixels, rgb_indices=[2, 1, 0])
    torch.testing.assert_close(teacher(pixels.double(), rgb_indices=[2, 1, 0]), reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = teacher(pixels, rgb_indices=[2, 1, 0])
    assert out.shape == reference.shape
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.1)


def test_runs_on_the_available_device_and_matches_cpu(teacher):
    """Device-agnostic: on a CUDA machine this checks CUDA against the CPU, elsewhere the CPU path again."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pixels = _chip()
    reference = teacher(pixels, rgb_indices=[2, 1, 0])
    moved = tiny_random_teacher(hidden_size=32, image_size=SMALL).to(device)
    out = moved(pixels, rgb_indices=[2, 1, 0])  # a CPU input is moved to the teacher's device
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), reference, atol=1e-4, rtol=1e-4)
    with torch.autocast(device, dtype=torch.bfloat16):
        mixed = moved(pixels.to(device), rgb_indices=[2, 1, 0])
    torch.testing.assert_close(mixed.float().cpu(), reference, atol=0.1, rtol=0.1)


# ------------------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------------------


def test_save_pretrained_then_from_pretrained_gives_the_same_output(teacher, tmp_path):
    teacher.model.save_pretrained(tmp_path)
    loaded = ClayTeacher.from_pretrained(tmp_path, image_size=SMALL)
    assert isinstance(loaded, ClayTeacher)
    assert loaded.dtype == torch.float32
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    pixels = _chip()
    torch.testing.assert_close(loaded(pixels, rgb_indices=[2, 1, 0]), teacher(pixels, rgb_indices=[2, 1, 0]))
    # the wrapper's own save_pretrained writes the same thing
    teacher.save_pretrained(tmp_path / "again")
    again = ClayTeacher.from_pretrained(tmp_path / "again", image_size=SMALL, dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="could not read a teacher config"):
        ClayTeacher.from_pretrained(tmp_path / "missing", local_files_only=True)
    with pytest.raises(OSError):  # CheckpointError is an OSError too
        ClayTeacher.from_pretrained(tmp_path / "missing", local_files_only=True)
    Dinov2Model(
        Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    ).save_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="expected a DINOv2-with-registers checkpoint.*'dinov2'"):
        ClayTeacher.from_pretrained(tmp_path / "plain")


def test_construction_errors():
    with pytest.raises(ClayConfigError, match="Dinov2WithRegistersModel, got Linear"):
        ClayTeacher(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ClayConfigError, match="expected a Dinov2WithRegistersConfig, got Dinov2Config"):
        ClayTeacher.from_config(Dinov2Config())  # type: ignore[arg-type]
    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    with pytest.raises(ClayConfigError, match="multiple of the teacher's patch size 14, got 50; try 56"):
        ClayTeacher.from_config(config, image_size=50)
    with pytest.raises(ClayConfigError, match="at least the teacher's patch size 14, got 7"):
        ClayTeacher.from_config(config, image_size=7)


# ------------------------------------------------------------------------------------------------
# input errors
# ------------------------------------------------------------------------------------------------


def test_rgb_indices_out_of_range(teacher):
    with pytest.raises(ClayInputError, match=r"rgb_indices \[2, 1, 4\] out of range .* 4 band\(s\): \[4\] not in 0..3"):
        teacher(_chip(bands=4), rgb_indices=[2, 1, 4])
    with pytest.raises(ClayInputError, match=r"\[-1\] not in 0..3"):
        teacher.select_rgb(_chip(bands=4), rgb_indices=[0, 1, -1])


def test_rgb_indices_wrong_count_or_type(teacher):
    with pytest.raises(ClayInputError, match=r"expected 3 rgb_indices \(red, green, blue\), got 2"):
        teacher(_chip(), rgb_indices=[0, 1])
    with pytest.raises(ClayInputError, match="rgb_indices must be ints"):
        teacher(_chip(), rgb_indices=[0.0, 1.0, 2.0])
    with pytest.raises(ClayInputError, match="rgb_indices must be a sequence of ints"):
        teacher(_chip(), rgb_indices="012")
    with pytest.raises(ClayInputError, match="1-D integer tensor"):
        teacher(_chip(), rgb_indices=torch.tensor([0.0, 1.0, 2.0]))


def test_neither_rule_applies(teacher):
    with pytest.raises(ClayInputError, match="pass rgb_indices .* or is_sar=True for Sentinel-1; got neither"):
        teacher(_chip(bands=4))
    with pytest.raises(ClayInputError, match=r"is_sar=True needs at least 2 bands .* with 1 band\(s\)"):
        teacher(_chip(bands=1), is_sar=True)
    with pytest.raises(ClayInputError, match="got neither"):
        teacher(_chip(bands=1))
    with pytest.raises(ClayInputError, match="not both"):
        teacher(_chip(bands=4), rgb_indices=[0, 1, 2], is_sar=True)


def test_pixel_values_errors(teacher):
    with pytest.raises(ClayInputError, match=r"shape \(B, C, H, W\), got 3 dimension\(s\): \(10, 32, 32\)"):
        teacher(torch.zeros(10, 32, 32), rgb_indices=[2, 1, 0])
    with pytest.raises(ClayInputError, match="must be a torch.Tensor .* got ndarray"):
        teacher(np.zeros((1, 3, 8, 8), dtype=np.float32), rgb_indices=[0, 1, 2])
    with pytest.raises(ClayInputError, match="must be floating point .* torch.int16"):
        teacher(torch.zeros(1, 3, 8, 8, dtype=torch.int16), rgb_indices=[0, 1, 2])
    with pytest.raises(ValueError):  # ClayInputError is a ValueError too
        teacher(torch.zeros(1, 3, 8, 8, dtype=torch.int16), rgb_indices=[0, 1, 2])
