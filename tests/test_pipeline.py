"""The README's main job, end to end on real imagery (small settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_main_job_runs_end_to_end(tmp_path, s2_files):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_pipeline.py"), "--output", str(tmp_path), "--max-chips", "12",
         "--chip-size", "32", "--batch-size", "5"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[4/4]" in proc.stdout
    results = json.loads((tmp_path / "search.json").read_text())
    assert results[0]["chip"] == 0 and abs(results[0]["similarity"] - 1.0) < 1e-4
    assert (tmp_path / "model" / "model.safetensors").is_file()
    help_text = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_pipeline.py"), "--help"],
                               capture_output=True, text=True).stdout  # fmt: skip
    assert "examples:" in help_text
