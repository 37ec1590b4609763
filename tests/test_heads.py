"""Task heads: ClayForImageClassification and ClayForSemanticSegmentation on real Sentinel-2 chips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForSemanticSegmentation

from clay_hf import (
    ClayConfig,
    ClayConfigError,
    ClayForImageClassification,
    ClayForPreTraining,
    ClayForSemanticSegmentation,
    ClayImageProcessor,
    ClayInputError,
    ClayModel,
)
from clay_hf.geodata.raster import iter_chips, open_source
from clay_hf.modeling_clay import patchify, tokens_to_grid

from .model_helpers import WITHOUT_CLAY_HF, seeded_inputs

RED, NIR, SWIR = 2, 6, 8  # band positions of B04, B08 and B11 in the sentinel-2-l2a order
VEGETATED = 0.2  # NDVI threshold of a vegetated pixel or chip


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: a second thread mostly waits


def _subset(inputs: dict, n: int) -> dict:
    """The first n chips of a processed batch (the wavelengths and a scalar gsd are shared)."""
    return {
        k: v[:n] if k in ("pixel_values", "time", "latlon") or (k == "gsd" and v.ndim) else v for k, v in inputs.items()
    }


def _config(micro_config: ClayConfig, **head) -> ClayConfig:
    return ClayConfig(**{**micro_config.to_diff_dict(), "segmentation_hidden_size": 32, **head})


@pytest.fixture(scope="module")
def s2_batch(s2_files) -> dict[str, torch.Tensor]:
    """18 real 32x32 Sentinel-2 chips at 20 m spread over the scene, processed for Clay, plus NDVI maps.

    Labels come from the chips themselves: vegetated (NDVI > 0.2) per chip and per pixel, mean NDVI per chip.
    """
    with open_source(s2_files, resolution=20.0) as source:
        chips = list(iter_chips(source, 32, stride=160))[::2]
    raw = np.stack([c["pixels"] for c in chips]).astype(np.float32)  # (B, 10, 32, 32)
    processor = ClayImageProcessor(sensor="sentinel-2-l2a", patch_size=4)
    inputs = processor(
        raw, gsd=20.0, lat=[c["lat"] for c in chips], lon=[c["lon"] for c in chips], datetimes="2022-06-15"
    )
    red, nir = torch.from_numpy(raw[:, RED]), torch.from_numpy(raw[:, NIR])
    ndvi = (nir - red) / (nir + red + 1e-6)  # (B, H, W)
    swir = torch.from_numpy(raw[:, SWIR]).mean(dim=(1, 2))  # (B,)
    chip_ndvi = ndvi.mean(dim=(1, 2))  # (B,)
    return dict(
        inputs=dict(inputs),
        ndvi=ndvi,
        green=(chip_ndvi > VEGETATED).long(),  # (B,) per chip class
        multi=torch.stack([chip_ndvi > VEGETATED, swir > swir.median()], dim=1).float(),  # (B, 2) multi-hot
        chip_ndvi=chip_ndvi,  # (B,) per chip regression target
        pixel_class=(ndvi > VEGETATED).long(),  # (B, H, W)
    )


def _train(model: torch.nn.Module, inputs: dict, labels: torch.Tensor, steps: int = 20, lr: float = 2e-3):
    """Full-batch AdamW steps; returns the losses."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_real_chips_and_labels(s2_batch):
    assert s2_batch["inputs"]["pixel_values"].shape == (18, 10, 32, 32)
    assert 4 <= s2_batch["green"].sum() <= 14  # both classes present
    assert 0.2 < s2_batch["pixel_class"].float().mean() < 0.8
    assert torch.isfinite(s2_batch["ndvi"]).all()


@pytest.mark.parametrize(
    "problem, num_labels, label_key",
    [
        ("single_label_classification", 2, "green"),
        ("multi_label_classification", 2, "multi"),
        ("regression", 1, "chip_ndvi"),
    ],
)
def test_classification_head_trains_on_real_chips(s2_batch, micro_config, problem, num_labels, label_key):
    torch.manual_seed(0)
    pooling = "mean" if problem == "regression" else "cls"
    config = _config(micro_config, num_labels=num_labels, classifier_hidden_size=32, classifier_pooling=pooling)
    model = ClayForImageClassification(config)
    losses = _train(model, s2_batch["inputs"], s2_batch[label_key])
    assert model.config.problem_type == problem  # inferred from num_labels and the labels' dtype, as in HF
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("problem", ["single_label_classification", "regression"])
def test_segmentation_head_trains_on_real_chips(s2_batch, micro_config, problem):
    torch.manual_seed(0)
    if problem == "regression":  # the per-pixel regression head: an NDVI map with a few missing pixels
        labels = s2_batch["ndvi"].clone()
        labels[:, :4, :4] = float("nan")
        config, lr = _config(micro_config, num_labels=1), 2e-3
    else:
        labels = s2_batch["pixel_class"].clone()
        labels[:, :4, :4] = 255  # ignored
        config, lr = _config(micro_config, num_labels=2), 1e-2
    model = ClayForSemanticSegmentation(config)
    losses = _train(model, s2_batch["inputs"], labels, lr=lr)
    assert model.config.problem_type == problem
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_linear_probe_keeps_backbone_frozen_in_eval_mode(s2_batch, micro_config):
    torch.manual_seed(0)
    model = ClayForImageClassification(_config(micro_config, num_labels=2, freeze_backbone=True))
    before = {k: v.clone() for k, v in model.clay.state_dict().items()}
    losses = _train(model, s2_batch["inputs"], s2_batch["green"], steps=10, lr=1e-2)
    assert losses[-1] < losses[0]
    assert model.training and not model.clay.training and model.classifier.training
    assert not any(p.requires_grad for p in model.clay.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.clay.state_dict().items())
    model.freeze_backbone(False)
    model.train()
    assert model.clay.training and all(p.requires_grad for p in model.clay.parameters())
    assert model.config.freeze_backbone is False


def test_frozen_probe_reloads_frozen(tmp_path, micro_config):
    ClayForImageClassification(_config(micro_config, num_labels=2, freeze_backbone=True)).save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    loaded.train()
    assert not loaded.clay.training
    assert not any(p.requires_grad for p in loaded.clay.parameters())
    assert all(p.requires_grad for p in loaded.classifier.parameters())


def test_gradient_checkpointing_gives_the_same_gradients(s2_batch, micro_config):
    inputs = _subset(s2_batch["inputs"], 4)
    labels = s2_batch["green"][:4]
    torch.manual_seed(0)
    model = ClayForImageClassification(_config(micro_config, num_labels=2)).train()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.clay.encoder.layers[0].gradient_checkpointing
        model.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("clay.encoder") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name])


def test_mean_pooling_and_cls_pooling(s2_batch, micro_config):
    inputs = _subset(s2_batch["inputs"], 3)
    torch.manual_seed(0)
    model = ClayForImageClassification(_config(micro_config, num_labels=3, classifier_pooling="mean")).eval()
    with torch.no_grad():
        hidden = model.clay(**inputs).last_hidden_state
        logits = model(**inputs).logits
        torch.testing.assert_close(logits, model.classifier(hidden[:, 1:].mean(dim=1)))
        model.config.classifier_pooling = "cls"
        torch.testing.assert_close(model(**inputs).logits, model.classifier(hidden[:, 0]))


def test_tokens_to_grid_is_row_major_and_handles_non_square_grids():
    image = torch.randn(2, 5, 3, 7)  # (B, D, h, w)
    tokens = patchify(image, 1)  # (B, L, D) in grid order
    assert torch.equal(tokens_to_grid(tokens, (3, 7)), image)
    with pytest.raises(ClayInputError, match="21 patch tokens do not fill a 4x5 grid"):
        tokens_to_grid(tokens, (4, 5))


def test_segmentation_logits_have_the_chip_size_for_non_square_chips(micro_config):
    torch.manual_seed(0)
    model = ClayForSemanticSegmentation(_config(micro_config, num_labels=3, patch_size=4)).eval()
    pixels = torch.randn(2, 3, 16, 28)
    out = model(pixels, torch.tensor([0.665, 0.56, 0.493]), 10.0, labels=torch.randint(0, 3, (2, 16, 28)))
    assert out.logits.shape == (2, 3, 16, 28)
    assert torch.isfinite(out.loss)
    # patch size 6 is not a power of two: three x2 stages overshoot, the last resize lands on the chip size
    config = _config(micro_config, num_labels=2, patch_size=6)
    out = ClayForSemanticSegmentation(config).eval()(torch.randn(1, 3, 12, 18), torch.tensor([0.6, 0.5, 0.4]), 10.0)
    assert out.logits.shape == (1, 2, 12, 18)


def test_segmentation_losses_ignore_index_and_nan_mask(micro_config):
    torch.manual_seed(0)
    pixels, waves = torch.randn(2, 3, 16, 16), torch.tensor([0.665, 0.56, 0.493])
    model = ClayForSemanticSegmentation(_config(micro_config, num_labels=3)).eval()
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[0, :8] = 255
    out = model(pixels, waves, 10.0, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels, ignore_index=255))
    nothing = model(pixels, waves, 10.0, labels=torch.full((2, 16, 16), 255)).loss
    assert nothing.item() == 0.0 and nothing.requires_grad  # all ignored: zero, not NaN

    regression = ClayForSemanticSegmentation(_config(micro_config, num_labels=1, problem_type="regression")).eval()
    target = torch.randn(2, 16, 16)
    target[1, 3:9] = float("nan")
    out = regression(pixels, waves, 10.0, labels=target)
    valid = torch.isfinite(target)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits[:, 0][valid], target[valid]))


def test_return_dict_false_gives_tuples(micro_config):
    pixels, waves = torch.randn(2, 3, 8, 8), torch.tensor([0.665, 0.56, 0.493])
    model = ClayForImageClassification(_config(micro_config, num_labels=2)).eval()
    loss, logits = model(pixels, waves, 10.0, labels=torch.tensor([0, 1]), return_dict=False)
    assert loss.ndim == 0 and logits.shape == (2, 2)
    out = model(pixels, waves, 10.0, output_hidden_states=True)
    assert len(out.hidden_states) == micro_config.num_hidden_layers + 1


# ---------------------------------------------------------------------------------------------- save / load


def _eval_inputs() -> dict[str, torch.Tensor]:
    return seeded_inputs(5)


@pytest.fixture(scope="module")
def saved_heads(tmp_path_factory, micro_config) -> dict[str, tuple[Path, torch.Tensor]]:
    """Both heads (BatchNorm statistics moved by a training step) saved, with their reference logits."""
    root = tmp_path_factory.mktemp("heads")
    inputs = _eval_inputs()
    saved = {}
    for name, cls, labels in (
        ("classification", ClayForImageClassification, torch.tensor([0, 2])),
        ("segmentation", ClayForSemanticSegmentation, torch.randint(0, 3, (2, 16, 24))),
    ):
        torch.manual_seed(1)
        config = _config(micro_config, num_labels=3, id2label={0: "water", 1: "crop", 2: "forest"})
        model = cls(config)
        _train(model, inputs, labels, steps=1)
        model.eval()
        with torch.no_grad():
            logits = model(**inputs).logits
        model.save_pretrained(root / name)
        torch.save(model.state_dict(), root / f"{name}-state.pt")
        saved[name] = (root / name, logits)
    torch.save(inputs, root / "inputs.pt")
    return saved


@pytest.mark.parametrize(
    "name, auto_class, cls",
    [
        ("classification", AutoModelForImageClassification, ClayForImageClassification),
        ("segmentation", AutoModelForSemanticSegmentation, ClayForSemanticSegmentation),
    ],
)
def test_save_and_auto_reload_is_bit_identical(saved_heads, name, auto_class, cls):
    folder, reference = saved_heads[name]
    model, info = auto_class.from_pretrained(folder, output_loading_info=True)
    assert type(model) is cls
    assert not any(info.values()), info
    assert model.config.id2label == {0: "water", 1: "crop", 2: "forest"}
    original = torch.load(folder.parent / f"{name}-state.pt")
    loaded = model.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)  # every weight and BatchNorm statistic
    with torch.no_grad():
        logits = model.eval()(**_eval_inputs()).logits
    # Not torch.equal: safetensors are memory-mapped at offsets that are not 64-byte aligned, and CPU kernels
    # then sum in another order (last-bit differences). Copying the weights to fresh memory makes it exact.
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-6)
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()
    model.clay.patch_embedding._cache.clear()
    with torch.no_grad():
        assert torch.equal(model(**_eval_inputs()).logits, reference)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_clay.ClayForImageClassification"
    assert auto_map["AutoModelForSemanticSegmentation"] == "modeling_clay.ClayForSemanticSegmentation"


def test_encoder_loads_from_a_head_folder(saved_heads):
    folder, _ = saved_heads["segmentation"]
    encoder, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(encoder) is ClayModel
    assert not any(info.values()), info  # the head's keys are dropped silently


@pytest.mark.parametrize("cls", [ClayForImageClassification, ClayForSemanticSegmentation])
@pytest.mark.parametrize("source", ["pretraining", "encoder"])
def test_heads_load_the_backbone_of_a_pretrained_folder(tmp_path, micro_config, cls, source):
    torch.manual_seed(2)
    pretrained = ClayForPreTraining(micro_config) if source == "pretraining" else ClayModel(micro_config)
    pretrained.save_pretrained(tmp_path)
    backbone = pretrained.clay if source == "pretraining" else pretrained
    model, info = cls.from_pretrained(tmp_path, num_labels=4, output_loading_info=True)
    head_prefix = "classifier." if cls is ClayForImageClassification else "decode_head."
    assert info["missing_keys"] and all(k.startswith(head_prefix) for k in info["missing_keys"]), info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    expected = backbone.state_dict()
    loaded = model.clay.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    head = model.classifier if cls is ClayForImageClassification else model.decode_head
    assert all(torch.isfinite(p).all() for p in head.parameters())  # newly initialised, not garbage
    assert model.config.num_labels == 4


REMOTE_SCRIPT = WITHOUT_CLAY_HF + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation

    torch.set_num_threads(1)  # as in the test process: the thread count changes the summation order
    inputs = torch.load(sys.argv[3])
    out = {}
    for key, auto_class, folder in (
        ("classification", AutoModelForImageClassification, sys.argv[1]),
        ("segmentation", AutoModelForSemanticSegmentation, sys.argv[2]),
    ):
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            out[key] = model(**inputs).logits
    torch.save(out, sys.argv[4])
    """
)


def test_heads_as_remote_code_without_clay_hf_are_bit_identical(saved_heads, tmp_path):
    """Remote code and the installed package, both loading the same files, agree to the last bit."""
    installed = {}
    for (name, (folder, _)), auto_class in zip(
        saved_heads.items(), (AutoModelForImageClassification, AutoModelForSemanticSegmentation)
    ):
        with torch.no_grad():
            installed[name] = auto_class.from_pretrained(folder).eval()(**_eval_inputs()).logits
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    result_file = tmp_path / "out.pt"
    (cls_folder, cls_ref), (seg_folder, seg_ref) = saved_heads["classification"], saved_heads["segmentation"]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(cls_folder),
            str(seg_folder),
            str(cls_folder.parent / "inputs.pt"),
            str(result_file),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(result_file)
    assert torch.equal(out["classification"], installed["classification"])
    assert torch.equal(out["segmentation"], installed["segmentation"])
    torch.testing.assert_close(out["classification"], cls_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["segmentation"], seg_ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def small_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 3, 8, 8), torch.tensor([0.665, 0.56, 0.493])


@pytest.mark.parametrize(
    "num_labels, problem_type, labels, match",
    [
        (2, None, torch.tensor([[0], [1]]), r"single_label_classification needs labels of shape \(2,\)"),
        (2, None, torch.tensor([0, 5]), r"class labels must be in \[0, num_labels=2\).*got values in \[0, 5\]"),
        (3, None, torch.ones(2, 5), r"needs labels of shape \(2, 3\).*set num_labels=5"),
        (2, "single_label_classification", torch.rand(2), r"class labels must be integers"),
        (1, None, torch.ones(2, 3), r"regression needs labels of shape \(2, 1\) \(B, num_labels\) or \(2,\)"),
        (2, "ranking", torch.tensor([0, 1]), r"problem_type 'ranking' is not supported"),
    ],
)
def test_classification_label_errors(micro_config, small_inputs, num_labels, problem_type, labels, match):
    model = ClayForImageClassification(_config(micro_config, num_labels=num_labels, problem_type=problem_type))
    with pytest.raises(ClayInputError, match=match):
        model(*small_inputs, 10.0, labels=labels)


@pytest.mark.parametrize(
    "num_labels, problem_type, labels, match",
    [
        (3, None, torch.zeros(2, 4, 4, dtype=torch.long), r"must have shape \(2, 8, 8\) \(B, H, W\).*got \(2, 4, 4\)"),
        (3, None, torch.full((2, 8, 8), 7), r"num_labels=3\) or 255 \(ignored\), got values in \[7, 7\]"),
        (2, "regression", torch.zeros(2, 8, 8), r"needs labels of shape \(2, 2, 8, 8\) \(B, num_labels, H, W\)"),
        (2, "multi_label_classification", torch.zeros(2, 2, 8, 8), r"'multi_label_classification' is not supported"),
    ],
)
def test_segmentation_label_errors(micro_config, small_inputs, num_labels, problem_type, labels, match):
    model = ClayForSemanticSegmentation(_config(micro_config, num_labels=num_labels, problem_type=problem_type))
    with pytest.raises(ClayInputError, match=match):
        model(*small_inputs, 10.0, labels=labels)


def test_config_errors(micro_config):
    with pytest.raises(ClayConfigError, match=r"classifier_pooling must be one of \('cls', 'mean'\), got 'max'"):
        ClayForImageClassification(_config(micro_config, classifier_pooling="max"))
    with pytest.raises(ClayConfigError, match="num_labels must be at least 1, got 0"):
        ClayForSemanticSegmentation(_config(micro_config, num_labels=0))
