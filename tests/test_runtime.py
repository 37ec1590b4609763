"""The opt-in CPU allocator setting: applied once on Linux/glibc, model outputs unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import json, torch
from clay_hf import ClayConfig, ClayModel
from clay_hf.runtime import tune_cpu_allocator
torch.manual_seed(0)
model = ClayModel(ClayConfig.from_preset("tiny")).eval()
x = torch.randn(8, 4, 64, 64, generator=torch.Generator().manual_seed(1))
w = torch.tensor([0.49, 0.56, 0.66, 0.84])
before = model(pixel_values=x, wavelengths=w, gsd=10.0).last_hidden_state
applied = [tune_cpu_allocator(), tune_cpu_allocator()]
after = model(pixel_values=x, wavelengths=w, gsd=10.0).last_hidden_state
print(json.dumps({"applied": applied, "equal": torch.equal(before, after)}))
"""


def test_tune_cpu_allocator_keeps_results_identical():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)  # own process
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    linux = sys.platform.startswith("linux")
    assert result == {"applied": [linux, linux], "equal": True}
