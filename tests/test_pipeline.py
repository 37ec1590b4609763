"""The README's main job, end to end on real imagery (one sample package, a few training steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

ROOT = Path(__file__).parents[1]


def test_main_job_runs_end_to_end(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_pipeline.py"),
            "--output",
            str(tmp_path),
            "--packages",
            "bigearthnet-common",
            "--max-steps",
            "12",
            "--batch-size",
            "8",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in range(1, 9):
        assert f"[{step}/8]" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chips"]["total"] == 108
    assert report["chips"]["per_sensor"] == {"sentinel-2-l2a": 54, "sentinel-1-rtc": 54}
    assert report["pretraining"]["steps"] == 12
    assert report["embeddings"]["chips"] == 108
    results = report["search"]["results"]
    assert results[0]["chip_id"] == report["search"]["query"] and abs(results[0]["cosine"] - 1.0) < 1e-4
    assert 0 <= results[-1]["percentile"] <= results[0]["percentile"] <= 100  # a readable score beside the cosine
    # the model trained here says what it is, in report.json and in the summary line
    model = report["model"]
    assert model["kind"] == "pretrained" and model["steps"] == 12 and model["released"] is False
    assert model["label"].startswith("NOT a released Clay model: a tiny Clay pre-trained here for 12 steps on ")
    assert f"results from {model['label']}" in proc.stdout.splitlines()[-2]
    # 7: detections a GIS opens (lon/lat) and a score raster per scene in the scene's own CRS
    detections = json.loads((tmp_path / "find" / "detections.geojson").read_text())
    assert report["find"]["detections"] == len(detections["features"]) > 0
    assert all(
        -180 <= f["properties"]["lon"] <= 180 and -90 <= f["properties"]["lat"] <= 90 for f in detections["features"]
    )
    rasters = sorted((tmp_path / "find").glob("*_chip_scores.tif"))
    assert len(rasters) == 12 and (tmp_path / "find" / "detections.parquet").is_file()
    # 8: the embedding field of a Sentinel-2 scene, on that scene's grid scaled by the patch size
    from clay_hf.geodata.raster import open_source
    from clay_hf.geodata.sample_data import sample_sources

    (scene,) = [s for s in sample_sources(packages=["bigearthnet-common"]) if s.name == report["map"]["scene"]]
    with open_source(scene) as source, rasterio.open(report["map"]["output"]) as field:
        assert field.crs.to_string() == source.crs_string and tuple(field.bounds) == pytest.approx(source.bounds)
        assert (field.count, field.height, field.width) == (3, source.height // 8, source.width // 8)
    assert (tmp_path / "converted" / "model.safetensors").is_file()
    assert (tmp_path / "train" / "final" / "model.safetensors").is_file()
    assert len(list((tmp_path / "embeddings" / "data" / "train").glob("*.parquet"))) == 12
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_pipeline.py"), "--help"], capture_output=True, text=True
    ).stdout
    assert "examples:" in help_text
