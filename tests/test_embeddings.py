"""Embeddings of real imagery: arrays, GeoTIFF folders, chip datasets; GeoParquet shards, resume, 2 processes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clay_hf.apps.embeddings import embed_array, embed_geotiff, embed_to_parquet, footprint_wkb, write_embedding_shard
from clay_hf.errors import ClayInputError

from .launch import torchrun

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(micro_model_dir) -> Path:
    return micro_model_dir


@pytest.fixture(scope="module")
def model(model_dir):
    from clay_hf.apps.embeddings import load_embedding_model

    return load_embedding_model(model_dir)


@pytest.fixture(scope="module")
def geotiff_folder(tmp_path_factory) -> Path:
    """Six real BigEarthNet Sentinel-2 patches (120 x 120 px, 10 m) stacked into 10-band GeoTIFFs, as users have."""
    import rasterio
    import rasterio.transform

    from clay_hf.geodata.raster import open_source
    from clay_hf.geodata.sample_data import sample_sources

    folder = tmp_path_factory.mktemp("geotiffs")
    for spec in sample_sources(packages=["bigearthnet-common"]):
        if spec.sensor != "sentinel-2-l2a":
            continue
        with open_source(spec) as source:  # 10 and 20 m band files resampled onto one 10 m grid
            chip = source.read_chip(0, 0, (source.height, source.width))
            transform = rasterio.transform.from_origin(*source.origin, source.resolution, source.resolution)
            crs = source.crs
        profile = dict(
            driver="GTiff",
            dtype=chip["pixels"].dtype,
            count=chip["pixels"].shape[0],
            height=chip["pixels"].shape[1],
            width=chip["pixels"].shape[2],
            crs=crs,
            transform=transform,
        )
        with rasterio.open(folder / f"{spec.name}.tif", "w", **profile) as out:
            out.write(chip["pixels"])
            out.update_tags(ACQUISITIONDATE=spec.datetime)
    assert len(list(folder.glob("*.tif"))) == 6
    return folder


def test_embed_array_matches_the_model_and_batches_do_not_matter(model, s2_files):
    from clay_hf import ClayImageProcessor
    from clay_hf.geodata.raster import iter_chips, open_source

    with open_source(s2_files, resolution=20.0) as source:
        chips = np.stack([c["pixels"] for c, _ in zip(iter_chips(source, 32), range(5))])
    kwargs = dict(sensor="sentinel-2-l2a", datetimes="2019-06-01", lat=37.8, lon=-75.7)
    out = embed_array(model, chips, batch_size=2, outputs=("cls", "mean", "patches"), **kwargs)
    assert out["embedding"].shape == (5, 64) and out["mean_embedding"].shape == (5, 64)
    assert out["patch_embeddings"].shape == (5, 64, 64)  # (B, L, D): 8 x 8 patches of 4 px
    with torch.inference_mode():
        direct = model(**ClayImageProcessor(patch_size=4)(chips, **kwargs)).last_hidden_state
    torch.testing.assert_close(out["embedding"], direct[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["mean_embedding"], direct[:, 1:].mean(1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ClayInputError, match=r"outputs must be a non-empty subset of \['cls', 'mean', 'patches'\]"):
        embed_array(model, chips, outputs=("pooled",), **kwargs)


def test_embed_geotiff_returns_a_dataset_with_footprints(model, geotiff_folder):
    path = sorted(geotiff_folder.glob("*.tif"))[0]
    ds = embed_geotiff(model, path, sensor="sentinel-2-l2a", chip_size=40, outputs=("cls", "mean"))
    assert len(ds) == 9  # 120 px = 3 x 3 chips of 40 px
    row = ds[0]
    assert row["embedding"].shape == (64,) and row["sensor"] == "sentinel-2-l2a"
    assert row["datetime"].startswith("2017-06-13")
    assert 40 < row["lat"] < 50 and 10 < row["lon"] < 20  # Austria
    west, south, east, north = struct.unpack("<10d", row["geometry"][13:])[0:4:2] + struct.unpack(
        "<10d", row["geometry"][13:]
    )[5:8:2]  # fmt: skip
    assert west < row["lon"] < east and south < row["lat"] < north


def test_geoparquet_metadata_and_atomic_write(tmp_path):
    wkb = footprint_wkb((500000.0, 4000000.0, 501000.0, 4001000.0), "EPSG:32633")
    assert len(wkb) == 1 + 4 + 4 + 4 + 5 * 16
    row = dict(chip_id="a/0_0", embedding=np.ones(4, np.float32), mean_embedding=None, patch_embeddings=None,
               sensor="s", datetime=None, lat=36.1, lon=15.0, gsd=10.0, bounds=[500000.0, 4000000.0, 501000.0,
               4001000.0], crs="EPSG:32633", source="a", geometry=wkb)  # fmt: skip
    path = write_embedding_shard([row], tmp_path / "x" / "part.parquet")
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    west, south, east, north = geo["columns"]["geometry"]["bbox"]
    assert 14.9 < west < east < 15.1 and 36.0 < south < north < 36.2
    assert sorted(p.name for p in path.parent.iterdir()) == ["part.parquet"]  # no temporary file left


def test_embed_folder_resumes_without_recomputing(model, model_dir, geotiff_folder, tmp_path):
    out = tmp_path / "emb"
    first = embed_to_parquet(geotiff_folder, model, out, chip_size=40, sensor="sentinel-2-l2a", progress=False)
    assert first["chips"] == 54 and len(first["written"]) == 6
    shards = sorted((out / "data" / "train").glob("*.parquet"))
    victim = shards[2]
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    victim.unlink()  # as if the job had been killed before this shard was written
    again = embed_to_parquet(geotiff_folder, model, out, chip_size=40, sensor="sentinel-2-l2a", progress=False)
    assert again["written"] == [str(victim)] and len(again["skipped"]) == 5 and again["chips"] == 9
    assert all(p.stat().st_mtime_ns == stamps[p] for p in shards if p != victim)
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(out / "data" / "train" / "*.parquet"), split="train")
    assert len(ds) == 54 and len(set(ds["chip_id"])) == 54


def test_embed_script_two_processes_write_disjoint_shards(model_dir, geotiff_folder, tmp_path):
    out = tmp_path / "emb2"
    proc = torchrun(
        ROOT / "scripts" / "embed.py",
        geotiff_folder,
        "--model",
        model_dir,
        "--output",
        out,
        "--chip-size",
        "40",
        "--sensor",
        "sentinel-2-l2a",
        "--quiet",
        timeout=300,
        ACCELERATE_USE_CPU="1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one line per process on stdout, and each one's JSON summary in a file of the output folder
    assert sorted(line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("rank ")) == [
        "rank 0/2",
        "rank 1/2",
    ]
    assert not any(line.startswith("{") for line in proc.stdout.splitlines())  # JSON only with --json
    summaries = [json.loads((out / name).read_text()) for name in ("embed_summary.json", "embed_summary-rank1.json")]
    assert sorted(s["rank"] for s in summaries) == [0, 1] and all(s["world_size"] == 2 for s in summaries)
    written = [set(s["written"]) for s in summaries]
    assert written[0].isdisjoint(written[1]) and len(written[0] | written[1]) == 6
    ids = [
        i for f in sorted((out / "data" / "train").glob("*.parquet")) for i in pq.read_table(f)["chip_id"].to_pylist()
    ]
    assert len(ids) == len(set(ids)) == 54
    shards = sorted(p.stem for p in (out / "data" / "train").glob("*.parquet"))
    assert sorted(p.stem for p in (out / ".clay_embeddings" / "train").glob("*.json")) == shards  # one record each
    assert json.loads((out / "embedding_info.json").read_text())["splits"]["train"]["kind"] == "raster"


def test_bad_inputs_name_the_problem(model, tmp_path):
    with pytest.raises(ClayInputError, match=r"missing.tif does not exist; check the path"):
        embed_to_parquet(tmp_path / "missing.tif", model, tmp_path / "o", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClayInputError, match="holds neither GeoTIFFs"):
        embed_to_parquet(tmp_path / "empty", model, tmp_path / "o", progress=False)


def test_embed_help_has_examples():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "embed.py"), "--help"], capture_output=True, text=True)
    assert "examples:" in out.stdout and "--dtype" in out.stdout


@pytest.fixture(scope="module")
def tiny_naip_tiffs(tmp_path_factory, geotiff_folder) -> dict[str, Path]:
    """A real 4-band chip (red, green, blue, nir of a BigEarthNet patch) as a GeoTIFF, and a truncated copy."""
    import rasterio

    folder = tmp_path_factory.mktemp("bad-input")
    with rasterio.open(sorted(geotiff_folder.glob("*.tif"))[0]) as src:
        profile = {**src.profile, "count": 4}
        pixels = src.read([3, 2, 1, 7])  # sentinel-2-l2a order: red, green, blue, nir
    good = folder / "rgbn.tif"
    with rasterio.open(good, "w", **profile) as out:
        out.write(pixels)
    data = good.read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 2])
    return {"good": good, "truncated": folder / "truncated.tif"}


def test_embedding_bad_inputs_give_clear_errors(model, tiny_naip_tiffs):
    from clay_hf.errors import (
        BandMismatchError,
        ChipSizeError,
        CorruptRasterError,
        NonFiniteInputError,
        UnknownSensorError,
    )

    good, truncated = tiny_naip_tiffs["good"], tiny_naip_tiffs["truncated"]
    with pytest.raises(CorruptRasterError, match="is corrupt or truncated"):
        embed_geotiff(model, truncated, sensor="naip", chip_size=40)
    with pytest.raises(UnknownSensorError, match="unknown sensor 'sentinal-2'; did you mean 'sentinel-2-l2a'"):
        embed_geotiff(model, good, sensor="sentinal-2", chip_size=40)
    with pytest.raises(BandMismatchError, match="4 bands in 1 files but 2 values in wavelengths_um"):
        embed_geotiff(model, good, wavelengths_um=[0.5, 0.6], mean=[1, 1], std=[1, 1], chip_size=40)
    with pytest.raises(BandMismatchError, match="expected 4 bands for sensor 'naip'.*got 3"):
        embed_array(model, np.ones((2, 3, 32, 32), np.float32), sensor="naip")
    with pytest.raises(NonFiniteInputError, match="non-finite values"):
        embed_array(model, np.full((2, 4, 32, 32), np.nan, np.float32), sensor="naip")
    with pytest.raises(ChipSizeError, match="smaller than one patch"):
        embed_array(model, np.ones((2, 4, 2, 2), np.float32), sensor="naip")


def test_embed_script_reports_a_corrupt_file_without_writing(model_dir, tiny_naip_tiffs, tmp_path):
    out = tmp_path / "emb"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "embed.py"), str(tiny_naip_tiffs["truncated"]), "--model",
         str(model_dir), "--output", str(out), "--sensor", "naip", "--chip-size", "40", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "is corrupt or truncated" in proc.stderr and "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if "error" in line.lower()]  # one line, nothing else
    assert error.startswith("error: ")
    assert not out.exists()  # the folder this failed run created (lock, settings record) is gone


# --------------------------------------------------------------------------------------------------
# scripts/embed.py: damaged shards, another model's folder, a second job, a damaged input
# --------------------------------------------------------------------------------------------------

GEOTIFF_ARGS = ("--chip-size", "40", "--sensor", "sentinel-2-l2a")


@pytest.fixture
def embed_main(monkeypatch, capsys, caplog):
    """``scripts/embed.py``'s ``main`` in this process, with ``--json`` -> (exit code, printed summary or None);
    what it printed stays in ``run.out`` and ``run.err``.

    Without accelerate (its ``PartialState`` is process-wide state later tests would inherit): one process.
    """
    import logging

    from .launch import load_script

    monkeypatch.setitem(sys.modules, "accelerate", None)
    caplog.set_level(logging.INFO)
    script = load_script(ROOT / "scripts" / "embed.py")

    def run(*argv) -> tuple[int, dict | None]:
        caplog.clear()
        capsys.readouterr()
        code = script.main([*map(str, argv), "--quiet", "--no-tune-allocator", "--json"])
        run.out, run.err = capsys.readouterr()
        lines = [line for line in run.out.splitlines() if line.startswith("{")]
        return code, json.loads(lines[-1]) if lines else None

    return run


def test_embed_script_prints_one_line_and_keeps_the_json_summary_in_a_file(
    model_dir, geotiff_folder, tmp_path, capsys, monkeypatch
):
    import re

    from .launch import load_script

    monkeypatch.setitem(sys.modules, "accelerate", None)  # one process (see embed_main)
    script = load_script(ROOT / "scripts" / "embed.py")
    out = tmp_path / "emb"
    argv = [str(geotiff_folder), "--model", str(model_dir), "--output", str(out), *GEOTIFF_ARGS, "--quiet"]
    assert script.main([*argv, "--no-tune-allocator"]) == 0
    (line,) = capsys.readouterr().out.splitlines()  # no JSON blob with every shard path
    assert re.fullmatch(
        rf"54 chips into 6 shards in \d+\.\d s \(\d+\.\d chips/s\) -> {re.escape(str(out))} "
        r"\(summary: embed_summary.json\)",
        line,
    ), line
    summary = json.loads((out / "embed_summary.json").read_text())
    assert summary["chips"] == 54 and len(summary["written"]) == 6 and summary["seconds"] > 0
    assert summary["summary_file"] == str(out / "embed_summary.json") and summary["chips_per_s"] > 0

    assert script.main([*argv, "--no-tune-allocator", "--json"]) == 0  # a rerun: nothing to do, and the JSON too
    line, blob = capsys.readouterr().out.splitlines()
    assert line.startswith("0 chips into 0 shards, 6 already done in ") and json.loads(blob)["skipped"]
    assert json.loads(blob) == json.loads((out / "embed_summary.json").read_text())


def _files(folder: Path) -> dict[str, bytes]:
    """Every file clay_hf left in ``folder`` (not the lock files), by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".lock")
    }


def test_embed_script_rewrites_truncated_foreign_and_unrecorded_shards(
    embed_main, model_dir, geotiff_folder, tmp_path, caplog
):
    out = tmp_path / "emb"
    code, first = embed_main(geotiff_folder, "--model", model_dir, "--output", out, *GEOTIFF_ARGS)
    assert code == 0 and first["chips"] == 54
    shards = sorted((out / "data" / "train").glob("*.parquet"))
    truncated, foreign, unrecorded = shards[2], shards[4], shards[5]
    os.truncate(truncated, truncated.stat().st_size // 2)  # a shard cut short (a full disk, a bad copy)
    foreign.write_bytes(shards[0].read_bytes())  # a readable Parquet file with another unit's chips
    (out / ".clay_embeddings" / "train" / f"{unrecorded.stem}.json").unlink(missing_ok=True)  # no record

    code, again = embed_main(geotiff_folder, "--model", model_dir, "--output", out, *GEOTIFF_ARGS)
    assert code == 0 and again["chips"] == 27  # three shards of 9 chips embedded again
    assert sorted(again["written"]) == sorted(again["rewritten"]) == sorted(map(str, (truncated, foreign, unrecorded)))
    assert len(again["skipped"]) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for shard, why in ((truncated, ("bytes",)), (foreign, ("bytes", "chip ids")), (unrecorded, ("no record",))):
        assert any(str(shard) in w and any(reason in w for reason in why) for w in warnings), (shard, warnings)
    assert "27 chips into 3 shards, 3 already done, rewrote 3 damaged shards in " in embed_main.out
    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=str(out), split="train")  # records, info and lock are not data
    assert len(ds) == 54 and len(set(ds["chip_id"])) == 54

    code, third = embed_main(geotiff_folder, "--model", model_dir, "--output", out, *GEOTIFF_ARGS)
    assert code == 0 and third["chips"] == 0 and len(third["skipped"]) == 6 and third["rewritten"] == []


def test_rerun_of_a_finished_job_is_a_byte_identical_no_op(model, geotiff_folder, tmp_path):
    out = tmp_path / "emb"
    first = embed_to_parquet(geotiff_folder, model, out, chip_size=40, sensor="sentinel-2-l2a", progress=False)
    before = _files(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.startswith(".lock")}
    again = embed_to_parquet(geotiff_folder, model, out, chip_size=40, sensor="sentinel-2-l2a", progress=False)
    old_keys = {"written", "skipped", "chips", "rank", "world_size", "units"}
    assert old_keys | {"rewritten", "removed", "info", "model_fingerprint"} <= set(again)
    assert again["chips"] == 0 and again["written"] == [] and again["rewritten"] == []
    assert sorted(again["skipped"]) == sorted(first["written"])
    assert _files(out) == before and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    info = json.loads((out / "embedding_info.json").read_text())
    assert info["model"]["fingerprint"] == again["model_fingerprint"] and info["outputs"] == ["cls"]
    assert info["splits"]["train"]["chip_size"] == 40
    assert info["splits"]["train"]["overrides"] == {"sensor": "sentinel-2-l2a"}
    for shard in first["written"]:  # every shard says what made it
        meta = json.loads(pq.read_schema(shard).metadata[b"clay_embeddings"])
        assert meta["model"] == info["model"] and meta["outputs"] == ["cls"] and meta["dtype"] == "float32"
        assert meta["settings"]["chip_size"] == 40 and meta["unit"] == Path(shard).stem


def test_model_fingerprint_tells_models_apart(model, model_dir, converted_micro):
    from clay_hf.apps.embeddings import load_embedding_model, model_fingerprint

    other = load_embedding_model(converted_micro)
    assert other.config.hidden_size == model.config.hidden_size  # one architecture, other weights
    assert model_fingerprint(load_embedding_model(model_dir)) == model_fingerprint(model)  # stable across reloads
    assert model_fingerprint(other) != model_fingerprint(model)
    assert model_fingerprint(load_embedding_model(model_dir, dtype="bfloat16")) != model_fingerprint(model)


def test_embed_script_refuses_another_models_folder_unless_overwrite(
    embed_main, model_dir, converted_micro, geotiff_folder, tmp_path, caplog
):
    out = tmp_path / "emb"
    code, _ = embed_main(
        geotiff_folder, "--model", model_dir, "--output", out, *GEOTIFF_ARGS, "--outputs", "cls", "mean"
    )
    assert code == 0
    stale = out / "data" / "validation" / "old.parquet"  # a shard of model 1 in another split
    stale.parent.mkdir(parents=True)
    stale.write_bytes(sorted((out / "data" / "train").glob("*.parquet"))[0].read_bytes())
    (out / "notes.txt").write_text("my notes")  # not clay_hf's: never deleted
    before = _files(out)

    code, _ = embed_main(geotiff_folder, "--model", converted_micro, "--output", out, *GEOTIFF_ARGS)
    assert code == 2 and _files(out) == before  # refused (a mistake in the command), nothing touched
    (error,) = [line for line in embed_main.err.splitlines() if line.startswith("error: ")]
    assert f"{out} was written by model {str(model_dir)!r}" in error and "outputs cls mean)" in error
    assert f"this run uses model {str(converted_micro)!r}" in error and "outputs cls)" in error
    assert "--overwrite" in error and "--output" in error
    code, _ = embed_main(geotiff_folder, "--model", model_dir, "--output", out, "--chip-size", "60", "--sensor",
                         "sentinel-2-l2a", "--outputs", "cls", "mean")  # fmt: skip
    assert code == 2 and "chip_size 40 there vs 60 now" in embed_main.err and _files(out) == before

    code, summary = embed_main(geotiff_folder, "--model", converted_micro, "--output", out, *GEOTIFF_ARGS,
                               "--overwrite")  # fmt: skip
    assert code == 0 and summary["chips"] == 54 and str(stale) in summary["removed"]
    assert not stale.exists() and (out / "notes.txt").read_text() == "my notes"
    info = json.loads((out / "embedding_info.json").read_text())
    assert info["model"]["name_or_path"] == str(converted_micro) and info["outputs"] == ["cls"]
    assert sorted(info["splits"]) == ["train"]
    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == 54 and "mean_embedding" not in ds.column_names  # only model 2's shards are left


def test_embed_to_parquet_refuses_a_folder_that_is_not_an_embedding_folder(model, geotiff_folder, tmp_path):
    from clay_hf.errors import OutputExistsError

    out = tmp_path / "mine"
    (out / "data" / "train").mkdir(parents=True)
    (out / "data" / "train" / "table.parquet").write_bytes(b"PAR1 of someone else")
    (out / "README.md").write_text("my project")
    kwargs = dict(chip_size=40, sensor="sentinel-2-l2a", progress=False)
    with pytest.raises(OutputExistsError, match=r"is not empty \(it holds README.md, data/\) and has no "
                       r"embedding_info.json.*pass --overwrite"):  # fmt: skip
        embed_to_parquet(geotiff_folder, model, out, **kwargs)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".lock")) == ["README.md", "data"]
    done = embed_to_parquet(geotiff_folder, model, out, overwrite=True, **kwargs)
    assert done["chips"] == 54 and done["removed"] == [str(out / "data" / "train" / "table.parquet")]
    assert (out / "README.md").read_text() == "my project"
    with pytest.raises(OutputExistsError, match=r"was written by model .*outputs cls\); this run uses model "
                       r".*outputs cls mean\) \(other outputs\)"):  # fmt: skip
        embed_to_parquet(geotiff_folder, model, out, outputs=("cls", "mean"), **kwargs)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert embed_to_parquet(geotiff_folder, model, empty, **kwargs)["chips"] == 54  # an empty folder is fine


def test_embed_script_refuses_a_folder_another_run_is_writing(embed_main, model_dir, geotiff_folder, tmp_path, caplog):
    from clay_hf.locking import output_lock

    out = tmp_path / "emb"
    with output_lock(out, job="embedding run"):  # as a running embed.py holds it
        code, summary = embed_main(geotiff_folder, "--model", model_dir, "--output", out, *GEOTIFF_ARGS)
    assert code == 1 and summary is None
    (error,) = [line for line in embed_main.err.splitlines() if line.startswith("error: ")]
    assert f"another embedding run is writing to {out} (pid {os.getpid()}" in error
    assert not list(out.rglob("*.parquet")) and not (out / "embedding_info.json").exists()
    code, summary = embed_main(geotiff_folder, "--model", model_dir, "--output", out, *GEOTIFF_ARGS)
    assert code == 0 and summary["chips"] == 54  # the lock went with its holder


def test_embed_script_names_a_truncated_input_chip_shard(embed_main, model_dir, tmp_path, caplog):
    from .chip_helpers import build_small

    chips = tmp_path / "chips"
    build_small(chips)
    victim = sorted((chips / "data" / "train").glob("*.parquet"))[0]
    os.truncate(victim, victim.stat().st_size // 2)
    code, summary = embed_main(chips, "--model", model_dir, "--output", tmp_path / "emb")
    assert code == 1 and summary is None
    (error,) = [line for line in embed_main.err.splitlines() if line.startswith("error: ")]
    assert f"chip shard {victim} cannot be read: it is truncated, damaged or not a Parquet file" in error
    assert "prepare_chips.py" in error
    assert not (tmp_path / "emb" / "data" / "train" / f"train-{victim.stem}.parquet").exists()


# ---------------------------------------------------------------------------------------------- patch tokens, edges


def test_patch_tokens_are_float16_with_their_grid_and_edge_chips_cover_the_scene(model, tmp_path):
    """The real 120 px Sentinel-2 GeoTIFF in 32 px chips: 3 fit, a 4th moved inward covers the 24 px margin."""
    from clay_hf.apps.embeddings import INFO_FILE, decode_patch_embeddings, patch_bytes_per_chip
    from clay_hf.geodata.raster import open_source
    from clay_hf.geodata.sample_data import sentinel2_l2a_geotiff

    scene = sentinel2_l2a_geotiff()
    out = tmp_path / "emb"
    done = embed_to_parquet(scene, model, out, chip_size=32, outputs=("cls", "patches"), progress=False)
    assert done["chips"] == 16 and done["patch_bytes_per_chip"] == 8 * 8 * 64 * 2 == patch_bytes_per_chip((8, 8), 64)
    info = json.loads((out / INFO_FILE).read_text())
    assert info["splits"]["train"]["edge"] == "shift" and info["model"]["label"].startswith("NOT a released Clay")
    (shard,) = (out / "data" / "train").glob("*.parquet")
    table = pq.read_table(shard)
    assert str(table.schema.field("patch_embeddings").type) == "binary"
    assert {len(v) for v in table["patch_embeddings"].to_pylist()} == {8192}  # float16, half of float32
    assert table["patch_grid"].to_pylist()[0] == [8, 8] and len(table["patch_nodata_fraction"][0]) == 64
    windows = table["pixel_window"].to_pylist()
    assert sorted({w[0] for w in windows}) == [0, 32, 64, 88] and all(w[2:] == [32, 32] for w in windows)
    tokens = decode_patch_embeddings(table["patch_embeddings"], table["patch_grid"])  # (16, 8, 8, 64)
    assert tokens.shape == (16, 8, 8, 64) and tokens.dtype == np.float16
    row = windows.index([88, 88, 32, 32])  # the corner chip, moved inward
    with open_source(scene) as source:
        chip = source.read_chip(88, 88, 32)
    expected = embed_array(
        model,
        chip["pixels"],
        outputs=("patches",),
        sensor="sentinel-2-l2a",
        lat=chip["lat"],
        lon=chip["lon"],
        datetimes=chip["datetime"],
        gsd=chip["gsd"],
    )["patch_embeddings"][0]
    torch.testing.assert_close(
        torch.from_numpy(tokens[row].astype(np.float32)).reshape(64, 64), expected, atol=2e-3, rtol=2e-3
    )  # float16 storage
    old = [np.ones((4, 3), np.float32).tolist()] * 2  # shards written before: list<list<float>> of (L, D)
    assert decode_patch_embeddings(old).shape == (2, 2, 2, 3)
    with pytest.raises(ClayInputError, match=r"patch grids of several sizes"):
        decode_patch_embeddings([b"\0" * 8, b"\0" * 16], [[1, 2], [2, 2]])
    dropped = embed_to_parquet(scene, model, tmp_path / "dropped", chip_size=32, edge="drop", progress=False)
    assert dropped["chips"] == 9 and "patch_bytes_per_chip" not in dropped
    with pytest.raises(ClayInputError, match=r"edge must be one of \['drop', 'shift'\]"):
        embed_to_parquet(scene, model, tmp_path / "bad", chip_size=32, edge="pad", progress=False)


def test_a_band_file_folder_and_a_stac_item_are_one_source_each(model, ben_s2, tmp_path):
    """BigEarthNet's Sentinel-2 patch is a folder of 12 single-band files: one scene, as a STAC Item naming them."""
    folder = Path(ben_s2.paths[0]).parent
    done = embed_to_parquet(folder, model, tmp_path / "folder", chip_size=40, sensor="sentinel-2-l2a", progress=False)
    assert done["units"] == 1 and done["chips"] == 9
    (shard,) = (tmp_path / "folder" / "data" / "train").glob("*.parquet")
    assert shard.stem == folder.name and pq.read_table(shard)["source"][0].as_py() == folder.name
    assets = {
        Path(p).stem.rsplit("_", 1)[1]: {
            "href": p,
            "type": "image/tiff",
            "roles": ["data"],
            "eo:bands": [{"name": Path(p).stem.rsplit("_", 1)[1]}],
        }
        for p in ben_s2.paths
    }
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2A_87_48",
        "geometry": None,
        "links": [],
        "properties": {"datetime": "2017-06-13T10:10:31Z", "platform": "sentinel-2a"},
        "assets": assets,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
    }
    (tmp_path / "item.json").write_text(json.dumps(item))
    stac = embed_to_parquet(tmp_path / "item.json", model, tmp_path / "stac", chip_size=40, progress=False)
    (shard,) = (tmp_path / "stac" / "data" / "train").glob("*.parquet")
    table = pq.read_table(shard)
    assert stac["chips"] == 9 and shard.stem == "S2A_87_48" and table["sensor"][0].as_py() == "sentinel-2-l2a"


def test_one_geotiff_by_absolute_path_names_its_shard_by_stem_and_a_short_hash(model, geotiff_folder, tmp_path):
    """Issue 12.9: a single file given by its absolute path used to give shards named like ``__tmp__x__...``."""
    import re

    from clay_hf.apps.embeddings import embed_to_parquet

    tif = sorted(geotiff_folder.glob("*.tif"))[0].resolve()
    embed_to_parquet(tif, model, tmp_path / "emb", chip_size=40, progress=False, sensor="sentinel-2-l2a")
    (shard,) = (tmp_path / "emb" / "data" / "train").glob("*.parquet")
    assert re.fullmatch(rf"{re.escape(tif.stem)}-[0-9a-f]{{8}}\.parquet", shard.name), shard.name
    assert "__" not in shard.name and str(tif.parent.name) not in shard.name
