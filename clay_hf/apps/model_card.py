"""The model card: the ``README.md`` of a published Clay model, rendered from a template with the folder's real numbers.

    >>> text = render_model_card("models/clay-v1.5", "made-with-clay/Clay-v1.5-hf", metrics="results/evaluation.json")

The template is package data (``clay_hf/apps/templates/model_card.md``, :data:`DEFAULT_MODEL_CARD_TEMPLATE`), so a
wheel install renders the same card as the checkout. Its ``{{ name }}`` placeholders are filled from the folder:

- the architecture table from ``config.json`` and the processor's patch size from ``preprocessor_config.json``;
- parameter counts (all, and the encoder's) and dtypes from the headers of the weights transformers loads
  (``model.safetensors``, or the shards named by ``model.safetensors.index.json``), without reading tensors;
- the sensor table (:func:`clay_hf.list_sensors`) and a Sentinel-2 example's bands, mean, std and wavelengths;
- the training data text, the training procedure (from the config's loss settings), an evaluation table from a
  metrics JSON (its numeric leaves; per-class tables, matrices and timings left out), the license and datasets.

A placeholder the renderer does not know is an error, so a template edit cannot ship a card with ``{{ ... }}``
left in it. Publishing the card (:func:`clay_hf.apps.hub.push_model`) is the Hub module's job.
"""

from __future__ import annotations

import datetime as _dt
import importlib.resources
import json
import math
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME  # what from_pretrained loads

from ..errors import HubPublishError

__all__ = ["DEFAULT_MODEL_CARD_TEMPLATE", "DEFAULT_TRAINING_DATA", "model_weight_files", "render_model_card"]

DEFAULT_MODEL_CARD_TEMPLATE = Path(str(importlib.resources.files(__package__) / "templates" / "model_card.md"))
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")


def model_weight_files(folder: str | os.PathLike) -> list[str]:
    """The safetensors files of ``folder`` that ``from_pretrained`` loads: ``model.safetensors``, else the shards
    that ``model.safetensors.index.json`` names. Other ``*.safetensors`` in the folder are not the model's.

    Raises:
        HubPublishError: ``folder`` is not a folder, has no ``config.json``, or has neither weights file, or its
            index names a shard that is not there.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise HubPublishError(f"{str(folder)!r} is not a folder; pass the model folder to describe")
    found = sorted(p.name for p in root.iterdir())
    if not (root / "config.json").is_file() or not (
        (root / SAFE_WEIGHTS_NAME).is_file() or (root / SAFE_WEIGHTS_INDEX_NAME).is_file()
    ):
        raise HubPublishError(
            f"{root} is not a model folder: expected config.json and {SAFE_WEIGHTS_NAME} (or "
            f"{SAFE_WEIGHTS_INDEX_NAME}), found {found or 'none'}; write one with save_pretrained or "
            "scripts/convert_clay_checkpoint.py"
        )
    if (root / SAFE_WEIGHTS_NAME).is_file():  # the file from_pretrained prefers when both are there
        return [SAFE_WEIGHTS_NAME]
    try:
        index = json.loads((root / SAFE_WEIGHTS_INDEX_NAME).read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise HubPublishError(
            f"cannot read the weight map of {root / SAFE_WEIGHTS_INDEX_NAME} ({type(err).__name__}: {err}); "
            "re-save the model with save_pretrained"
        ) from err
    missing = [shard for shard in shards if not (root / shard).is_file()]
    if missing:
        raise HubPublishError(
            f"{root / SAFE_WEIGHTS_INDEX_NAME} names shards that are not in the folder: {missing}; copy them in or "
            "re-save the model with save_pretrained"
        )
    return shards


def _safetensors_counts(folder: Path, paths: Sequence[str]) -> tuple[int, int, str]:
    """(all parameters, encoder parameters, dtypes) from the safetensors headers, without loading tensors."""
    total = encoder = 0
    dtypes = set()
    for path in (folder / p for p in paths):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            n = math.prod(meta["shape"])
            total += n
            dtypes.add(meta["dtype"])
            if not name.startswith(("decoder.", "proj.")):  # ClayForPreTraining's heads; the rest is the encoder
                encoder += n
    return total, encoder, "/".join(sorted(dtypes)).lower()


def _params(n: int) -> str:
    return f"{n:,d} ({n / 1e6:.1f} M)" if n >= 1e5 else f"{n:,d}"


def _architecture_table(config: dict[str, Any]) -> str:
    rows = [
        ("patch size (pixels)", "patch_size"),
        ("encoder width D", "hidden_size"),
        ("encoder layers", "num_hidden_layers"),
        ("encoder heads x head dim", ("num_attention_heads", "head_dim")),
        ("encoder MLP ratio", "mlp_ratio"),
        ("decoder width", "decoder_hidden_size"),
        ("decoder layers", "decoder_num_hidden_layers"),
        ("decoder heads x head dim", ("decoder_num_attention_heads", "decoder_head_dim")),
        ("wavelength embedding width", "wave_dim"),
        ("weight-generator latent tokens", "num_latent_tokens"),
        ("teacher embedding width", "teacher_dim"),
        ("mask ratio (pre-training)", "mask_ratio"),
    ]
    lines = ["| setting | value |", "|---|---|"]
    for label, key in rows:
        if isinstance(key, tuple):
            if all(k in config for k in key):
                lines.append(f"| {label} | {config[key[0]]} x {config[key[1]]} |")
        elif key in config:
            lines.append(f"| {label} | {config[key]} |")
    return "\n".join(lines)


def _sensors_table() -> str:
    from ..sensors import get_sensor, list_sensors

    lines = ["| sensor | bands | GSD (m) | wavelengths (um) |", "|---|---|---|---|"]
    for name in list_sensors():
        s = get_sensor(name)
        waves = ", ".join(f"{w:g}" for w in s.wavelengths_um)
        lines.append(f"| `{s.name}` | {len(s.band_names)}: {', '.join(s.band_names)} | {s.gsd_m:g} | {waves} |")
    return "\n".join(lines)


def _flatten_metrics(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves of a metrics JSON as ``("a / b / c", value)``; lists, per-class tables and matrices skipped."""
    rows: list[tuple[str, float]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if any(word in str(key).lower() for word in ("per_class", "confusion", "wall_time", "seconds")):
                continue
            rows += _flatten_metrics(value, f"{prefix} / {key}" if prefix else str(key))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        rows.append((prefix, float(data)))
    return rows


def _evaluation_section(metrics: str | os.PathLike | dict[str, Any] | None) -> str:
    if metrics is None:
        return (
            "No evaluation numbers were published with this upload. `scripts/evaluate.py` in clay_hf measures "
            "linear-probe, k-NN, retrieval and segmentation quality on labelled imagery; publish its "
            "`evaluation.json` with `scripts/push_to_hub.py model ... --metrics evaluation.json`."
        )
    source = "the metrics supplied with this upload"
    if not isinstance(metrics, dict):
        path = Path(metrics)
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise HubPublishError(f"cannot read the metrics JSON {str(path)!r}: {err}") from err
        source = f"`{path.name}`"
    rows = _flatten_metrics(metrics)
    if not rows:
        raise HubPublishError('the metrics JSON holds no numbers; expected e.g. {"linear_probe_accuracy": 0.91}')
    table = ["| metric | value |", "|---|---|"] + [f"| {name} | {value:.4g} |" for name, value in rows]
    return f"Numbers from {source}:\n\n" + "\n".join(table)


def _training_procedure(config: dict[str, Any]) -> str:
    return (
        "Masked-autoencoder pre-training with a representation loss (Clay v1.5): "
        f"{config.get('mask_ratio', 0.75):.0%} of the patches are masked and the decoder reconstructs their "
        f"normalised pixels (weight {config.get('reconstruction_loss_weight', 0.9)}), while the encoder's class "
        f"token, projected to the teacher's width ({config.get('teacher_dim', '?')}), is pulled towards the "
        f"embedding of a frozen DINOv2 teacher of the chip's RGB bands (cosine loss, weight "
        f"{config.get('representation_loss_weight', 0.1)}). Band dropout during training: all but the RGB bands "
        f"with probability {config.get('drop_all_bands_prob', '?')}, half of them with probability "
        f"{config.get('drop_half_bands_prob', '?')}. Pre-train or continue training with clay_hf's "
        "`scripts/train.py` (Accelerate: CPU, one or many GPUs, FSDP)."
    )


DEFAULT_TRAINING_DATA = (
    "The Clay v1.5 weights were pre-trained by the Clay Foundation on chips sampled worldwide from the sensors "
    "in the table above (Sentinel-2 L2A, Landsat level 1 and level 2, Sentinel-1 RTC, NAIP, LINZ, MODIS, "
    "PlanetScope and Satellogic imagery), normalised with the per-band statistics of that table. See the "
    "[Clay documentation](https://clay-foundation.github.io/model/) for the sampling strategy and the data "
    "sources' licences. If this repository holds weights trained with clay_hf, the dataset(s) named in the "
    "metadata are the training chips."
)


def render_model_card(
    model_folder: str | os.PathLike,
    repo_id: str,
    *,
    template: str | os.PathLike | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    training_data: str | None = None,
    metrics: str | os.PathLike | dict[str, Any] | None = None,
) -> str:
    """The model card of ``model_folder`` from ``template`` (default: the package's ``templates/model_card.md``).

    Fills in the architecture from ``config.json``, parameter counts and dtype from the safetensors headers of the
    model's weights (:func:`model_weight_files`), the processor's patch size, the sensor table
    (:func:`clay_hf.list_sensors`), the training data text, an evaluation table from ``metrics`` (a JSON file or
    dict; numeric leaves), the license and the datasets.

    Raises:
        HubPublishError: not a model folder, no template, a placeholder the renderer does not know, or an
            unreadable metrics file.
    """
    from .. import __version__
    from ..sensors import get_sensor

    folder = Path(model_folder).expanduser()
    weights = model_weight_files(folder)
    template = Path(template) if template is not None else DEFAULT_MODEL_CARD_TEMPLATE
    if not template.is_file():
        raise HubPublishError(
            f"model card template {str(template)!r} not found; pass template= (--card-template) with a template like "
            "clay_hf's templates/model_card.md"
        )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    processor_path = folder / "preprocessor_config.json"
    processor = json.loads(processor_path.read_text(encoding="utf-8")) if processor_path.is_file() else {}
    total, encoder, dtype = _safetensors_counts(folder, weights)
    s2 = get_sensor("sentinel-2-l2a")
    rgbn = s2.select(["blue", "green", "red", "nir"])
    values = {
        "license": license,
        "datasets_yaml": json.dumps(list(datasets)),
        "clay_hf_version": __version__,
        "date": _dt.date.today().isoformat(),
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "total_params": _params(total),
        "encoder_params": _params(encoder),
        "weights_dtype": dtype or "unknown",
        "architecture_table": _architecture_table(config),
        "patch_size": str(config.get("patch_size", "?")),
        "hidden_size": str(config.get("hidden_size", "D")),
        "processor_patch_size": str(processor.get("patch_size", config.get("patch_size", "?"))),
        "sensors_table": _sensors_table(),
        "s2_num_bands": str(len(s2.band_names)),
        "s2_band_names": ", ".join(s2.band_names),
        "s2_rgbn_mean": json.dumps(list(rgbn.mean)),
        "s2_rgbn_std": json.dumps(list(rgbn.std)),
        "s2_rgbn_wavelengths": json.dumps(list(rgbn.wavelengths_um)),
        "s2_gsd": f"{s2.gsd_m:.1f}",
        "training_data": (training_data or DEFAULT_TRAINING_DATA).strip()
        + (
            ("\n\nDatasets: " + ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets))
            if datasets
            else ""
        ),
        "training_procedure": _training_procedure(config),
        "evaluation": _evaluation_section(metrics),
    }
    text = template.read_text(encoding="utf-8")
    unknown = sorted({m.group(1) for m in _PLACEHOLDER_RE.finditer(text)} - set(values))
    if unknown:
        raise HubPublishError(
            f"{template} has placeholders this renderer does not fill: {unknown}; known: {sorted(values)}"
        )
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)
