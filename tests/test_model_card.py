"""clay_hf.apps.model_card: the model card of a converted Clay folder (the parity checkpoint), rendered from the
template the package ships."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

import clay_hf.apps.hub as hub
from clay_hf.apps.model_card import DEFAULT_MODEL_CARD_TEMPLATE, model_weight_files, render_model_card
from clay_hf.errors import HubPublishError

PLACEHOLDER = re.compile(r"\{\{\s*[a-z0-9_]+\s*\}\}")


def _counts(folder: Path, files: list[str]) -> tuple[int, int, set[str]]:
    """(all parameters, encoder parameters, dtypes) of ``files``, read with the safetensors library."""
    total = encoder = 0
    dtypes = set()
    for name in files:
        with safe_open(folder / name, "pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                total += tensor.numel()
                encoder += 0 if key.startswith(("decoder.", "proj.")) else tensor.numel()
                dtypes.add(f.get_slice(key).get_dtype())  # the header's name, e.g. "F32"
    return total, encoder, dtypes


def _parameters_line(card: str) -> str:
    return re.search(r"^- \*\*Parameters:\*\* .*\n.*$", card, re.M).group(0)


def test_card_states_the_folder_numbers_and_parses(converted_micro):
    card = render_model_card(converted_micro, "me/clay-micro", datasets=["me/chips"], metrics={"knn": {"f1": 0.5}})
    assert not PLACEHOLDER.search(card)
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["me/chips"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-feature-extraction"
    total, encoder, dtypes = _counts(converted_micro, ["model.safetensors"])
    assert 0 < encoder < total and dtypes == {"F32"}
    assert f"**Parameters:** {total:,d} ({total / 1e6:.1f} M) in total, of which {encoder:,d}" in card
    assert "weights stored as `f32` safetensors" in card
    config = json.loads((converted_micro / "config.json").read_text())
    assert f"| encoder width D | {config['hidden_size']} |" in card
    assert f"| decoder layers | {config['decoder_num_hidden_layers']} |" in card
    assert "| knn / f1 | 0.5 |" in card and "[me/chips](https://huggingface.co/datasets/me/chips)" in card
    assert 'AutoModel.from_pretrained("me/clay-micro")' in card
    assert DEFAULT_MODEL_CARD_TEMPLATE.is_file()
    assert (hub.render_model_card, hub.DEFAULT_MODEL_CARD_TEMPLATE) == (render_model_card, DEFAULT_MODEL_CARD_TEMPLATE)


def test_counts_only_the_weights_from_pretrained_loads(tmp_path, converted_micro):
    """Another safetensors file beside the model (an adapter, a copy, a partial upload) is not the model's."""
    reference = _parameters_line(render_model_card(converted_micro, "me/clay"))
    folder = tmp_path / "model"
    shutil.copytree(converted_micro, folder)
    shutil.copy(folder / "model.safetensors", folder / "extra.safetensors")
    (folder / ".tmp-upload.safetensors").write_text("partial")
    assert model_weight_files(folder) == ["model.safetensors"]
    assert _parameters_line(render_model_card(folder, "me/clay")) == reference


def test_a_sharded_folder_counts_every_shard_once(tmp_path, converted_micro):
    from transformers import AutoModelForPreTraining

    reference = _parameters_line(render_model_card(converted_micro, "me/clay"))
    folder = tmp_path / "sharded"
    AutoModelForPreTraining.from_pretrained(converted_micro).save_pretrained(folder, max_shard_size="2MB")
    shards = model_weight_files(folder)
    assert not (folder / "model.safetensors").exists() and len(shards) > 1
    assert shards == sorted(
        set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
    )
    assert _parameters_line(render_model_card(folder, "me/clay")) == reference


def test_refuses_folders_templates_and_metrics_it_cannot_use(tmp_path, converted_micro):
    with pytest.raises(HubPublishError, match="is not a folder"):
        render_model_card(tmp_path / "missing", "me/clay")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HubPublishError, match=r"is not a model folder: expected config.json and model.safetensors"):
        render_model_card(empty, "me/clay")
    (empty / "config.json").write_text("{}")
    (empty / "weights.safetensors").write_bytes(b"not what from_pretrained loads")
    with pytest.raises(HubPublishError, match=r"found \['config.json', 'weights.safetensors'\]"):
        render_model_card(empty, "me/clay")
    (empty / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1-of-2.safetensors"}}))
    with pytest.raises(
        HubPublishError, match=r"names shards that are not in the folder: \['model-1-of-2.safetensors'\]"
    ):
        render_model_card(empty, "me/clay")
    (empty / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(HubPublishError, match="cannot read the weight map"):
        render_model_card(empty, "me/clay")

    template = tmp_path / "card.md"
    template.write_text("---\nlicense: {{ license }}\n---\n{{ not_a_field }}\n")
    with pytest.raises(HubPublishError, match=r"placeholders this renderer does not fill: \['not_a_field'\]"):
        render_model_card(converted_micro, "me/clay", template=template)
    with pytest.raises(HubPublishError, match="model card template .* not found"):
        render_model_card(converted_micro, "me/clay", template=tmp_path / "missing.md")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(HubPublishError, match="cannot read the metrics JSON"):
        render_model_card(converted_micro, "me/clay", metrics=tmp_path / "bad.json")
    with pytest.raises(HubPublishError, match="holds no numbers"):
        render_model_card(converted_micro, "me/clay", metrics={"name": "x", "curve": [1, 2]})
    with pytest.raises(ValueError, match="holds no numbers"):  # HubPublishError is a ValueError too
        render_model_card(converted_micro, "me/clay", metrics={})
