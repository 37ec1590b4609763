"""Shared by the save/load tests: seeded model inputs, and the start of subprocess scripts that run without clay_hf."""

from __future__ import annotations

import torch

WAVES4 = torch.tensor([0.65, 0.56, 0.48, 0.842])  # red, green, blue, NIR in micrometres


def random_inputs(b=2, c=4, h=32, w=32, seed=0) -> dict:
    """Seeded random model inputs: ``(b, c, h, w)`` pixels, ``c`` wavelengths, gsd, time and latlon."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        pixel_values=torch.randn(b, c, h, w, generator=g),
        wavelengths=WAVES4[:c] if c <= 4 else torch.linspace(0.45, 2.2, c),
        gsd=10.0,
        time=torch.randn(b, 4, generator=g),
        latlon=torch.randn(b, 4, generator=g),
    )


# First lines of a subprocess script that must prove Hub remote code works where clay_hf cannot be imported.
WITHOUT_CLAY_HF = """\
import sys
sys.modules["clay_hf"] = None  # any `import clay_hf` now raises ImportError
try:
    import clay_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("clay_hf should not be importable here")
"""

# Then, with torch imported and ``source`` (a folder or Hub id) and ``data`` (``{"inputs": ..., "noise": ...}``) set:
# load both Auto classes as remote code and run them into ``out``.
RUN_REMOTE_CODE = """\
from transformers import AutoModel, AutoModelForPreTraining

enc = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
pre = AutoModelForPreTraining.from_pretrained(source, trust_remote_code=True).eval()
assert type(enc).__module__.startswith("transformers_modules"), type(enc).__module__
with torch.no_grad():
    out = dict(
        embeddings=enc(**data["inputs"]).last_hidden_state,
        logits=pre(**data["inputs"], noise=data["noise"]).logits,
        module=type(enc).__module__,
    )
"""


def seeded_inputs(seed: int) -> dict[str, torch.Tensor]:
    """ClayModel keyword inputs for 2 chips of 3 bands, 16 x 24 px (patch 4), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        pixel_values=torch.randn(2, 3, 16, 24, generator=g),
        wavelengths=torch.tensor([0.665, 0.56, 0.493]),
        gsd=torch.tensor(10.0),
        time=torch.randn(2, 4, generator=g),
        latlon=torch.randn(2, 4, generator=g),
    )
