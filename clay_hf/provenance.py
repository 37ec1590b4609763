"""What a model's weights are: a released Clay checkpoint, a converted fixture, or a model trained here.

Results of a toy model (random weights, the converted parity fixture, a few hundred pre-training steps on the
sample chips) look like results: cosine scores of 0.999, a reconstruction. So every model folder clay_hf writes
records where its weights came from, in ``config.json`` under ``clay_provenance`` (it travels with
``save_pretrained``, ``push_to_hub`` and every fine-tune), and whatever shows results (the Space, the main job's
summary and ``report.json``, the evaluation table) shows :attr:`ModelProvenance.label`.

The record, a JSON object:

==================  =====================================================================================
key                 meaning
==================  =====================================================================================
``kind``            ``"converted"`` (from an original Clay checkpoint), ``"pretrained"`` (pre-trained with
                    clay_hf), ``"finetuned"`` (a task head trained with clay_hf), ``"random-init"``
``checkpoint``      converted: the checkpoint's file name, ``sha256`` and ``bytes``
``architecture``    the preset name the sizes match ("large" is the Clay v1.5 release), or "custom"
``steps``           pretrained / finetuned: optimizer steps of the run
``dataset``         pretrained / finetuned: what it was trained on (folder name or Hub id)
``base``            pretrained / finetuned: the label of the model it started from (None: random weights)
``task``            finetuned: the head ("semantic-segmentation", "image-classification", ...)
``clay_hf``         the clay_hf version that wrote the record
==================  =====================================================================================

A model is taken for the Clay v1.5 release (:attr:`ModelProvenance.released`) only when it was converted from an
original checkpoint with the v1.5 architecture (the "large" preset, patch size 8) or fine-tuned from such a model
for a task; everything else carries "not a released Clay model" in its label. A folder without a record (written
by other code) is "of unrecorded origin", and not taken for a release either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from .configuration_clay import CLAY_PRESETS

__all__ = [
    "PROVENANCE_KEY",
    "ModelProvenance",
    "model_provenance",
    "record_provenance",
    "architecture_name",
    "checkpoint_details",
]

PROVENANCE_KEY = "clay_provenance"
KINDS = ("converted", "pretrained", "finetuned", "random-init")
RELEASE_ARCHITECTURE = "large"  # Clay v1.5 was released with the "large" encoder and patch size 8
RELEASE_PATCH_SIZE = 8


def architecture_name(config: Any) -> str:
    """The preset whose encoder and decoder sizes ``config`` has ("tiny", ..., "large"), else "custom"."""
    for name, sizes in CLAY_PRESETS.items():
        if all(getattr(config, key, None) == value for key, value in sizes.items()):
            return name
    return "custom"


def _config(model_or_config: Any) -> Any:
    return getattr(model_or_config, "config", model_or_config)


def record_provenance(model_or_config: Any, kind: str, **details: Any) -> dict[str, Any]:
    """Write the record of what the weights are into the config (saved with it); returns the record.

    ``details`` are the keys of the table in the module docstring (``steps=``, ``dataset=``, ``base=``...);
    ``architecture`` and ``clay_hf`` are filled in.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a provenance kind; expected one of {', '.join(KINDS)}")
    from . import __version__

    config = _config(model_or_config)
    record = {"kind": kind, "architecture": architecture_name(config), **details, "clay_hf": __version__}
    setattr(config, PROVENANCE_KEY, record)
    return record


def checkpoint_details(path: str | os.PathLike) -> dict[str, Any]:
    """``{"checkpoint": name, "sha256": ..., "bytes": ...}`` of an original checkpoint file (read in 1 MiB blocks)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"checkpoint": path.name, "sha256": digest.hexdigest(), "bytes": path.stat().st_size}


@dataclasses.dataclass(frozen=True)
class ModelProvenance:
    """What a model is, read from its config (:func:`model_provenance`)."""

    kind: str | None  # None: no record
    record: dict[str, Any]
    architecture: str
    patch_size: int | None

    @property
    def released(self) -> bool:
        """Whether the weights are (a task head on) the Clay v1.5 release."""
        if self.kind == "converted":
            return self.architecture == RELEASE_ARCHITECTURE and self.patch_size == RELEASE_PATCH_SIZE
        if self.kind == "finetuned":
            return bool(self.record.get("base_released"))
        return False

    @property
    def description(self) -> str:
        """What the weights are, in a few words, without the release verdict."""
        r, size = self.record, f"a {self.architecture} Clay" if self.architecture != "custom" else "a custom-size Clay"
        if self.kind == "converted":
            name = r.get("checkpoint") or "an original checkpoint"
            if self.released:
                return f"Clay v1.5 weights converted from {name}"
            return f"{size} converted from {name} (not the v1.5 architecture)"
        if self.kind in ("pretrained", "finetuned"):
            what = "pre-trained" if self.kind == "pretrained" else f"fine-tuned for {r.get('task') or 'a task'}"
            steps = r.get("steps")
            text = f"{size} {what} here for {steps} step{'s' if steps != 1 else ''}"
            if r.get("dataset"):
                text += f" on {r['dataset']}"
            return text + f" from {r.get('base') or 'random weights'}"
        if self.kind == "random-init":
            return f"{size} with random weights (seed {r.get('seed', 'unknown')})"
        return f"{size} of unrecorded origin"

    @property
    def label(self) -> str:
        """One line to show beside results, e.g. "NOT a released Clay model: a tiny Clay pre-trained here ..."."""
        if self.released:
            return self.description
        return f"NOT a released Clay model: {self.description}; its results say nothing about Clay v1.5"

    def to_dict(self) -> dict[str, Any]:
        """The record plus the verdict and the label (what ``report.json`` and the evaluation table store)."""
        return {**self.record, "released": self.released, "label": self.label}


def model_provenance(model_or_config: Any) -> ModelProvenance:
    """What the weights of a model (or a config, or a loaded ``config.json`` dict) are."""
    config = _config(model_or_config)
    if isinstance(config, dict):
        config = type("ConfigDict", (), config)
    record = dict(getattr(config, PROVENANCE_KEY, None) or {})
    return ModelProvenance(
        kind=record.get("kind"),
        record=record,
        architecture=architecture_name(config),
        patch_size=getattr(config, "patch_size", None),
    )
