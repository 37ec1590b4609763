"""Maps out of models: a fine-tuned head, or the encoder's patch embeddings, applied to whole scenes, window by
window, and written back as Cloud Optimized GeoTIFFs in the scene's own CRS.

    >>> model = load_map_model("runs/seg")                                  # a head, or a plain ClayModel folder
    >>> result = predict_scene("scene.tif", model, "maps/scene.tif", window=128, overlap=0.25)
    >>> print(summary_line(result))
    >>> predict_scenes(["scenes/"], model, "maps/")                         # many scenes, one .tif each

What a model folder gives (:data:`KINDS`, from its ``config.json``):

======================  ======================================  ==============================================
kind                    model                                   output, per scene
======================  ======================================  ==============================================
``segmentation``        ``ClayForSemanticSegmentation``         class per pixel, uint8 (uint16 above 254
                        (classes)                               classes) with a colour table, the ``id2label``
                                                                names in the metadata; ``probabilities=`` adds
                                                                a sibling ``<name>.probabilities.tif``
``pixel-regression``    ``ClayForSemanticSegmentation``         the regressed value(s) per pixel, float32
                        (regression)
``classification``      ``ClayForImageClassification``          class per chip at chip resolution, plus
                        (single label)                          ``<name>.parquet`` chip footprints
``multi-label``         ``ClayForImageClassification``          per-class probability per chip (and footprints)
                        (multi label)
``regression``          ``ClayForImageClassification``          value(s) per chip (and footprints)
                        (regression)
``embedding``           ``ClayModel`` (or a pre-training        the patch embeddings, one band per dimension at
                        folder)                                 patch resolution (patch size x GSD);
                                                                ``embedding_reduce="pca:N"`` or ``"int8"``
======================  ======================================  ==============================================

**Windows.** The scene (or a ``region`` of it) is covered by square windows of ``window`` pixels, ``stride =
(1 - overlap) * window`` apart, row by row; the last window of a row or column is shifted inward so that it ends
on the scene's edge (no padding). Windows are read lazily, one batch at a time (the next batch is read while the
model runs), so memory holds one batch of windows and one strip of output rows, never the scene. Windows
without a valid pixel are skipped (a sparse scene costs what its data cost).

**Stitching.** Overlapping windows are blended with a cosine (Tukey) taper: a weight that rises as ``sin^2`` over
the overlap at each window edge and is 1 inside, so no tile border shows; ``blend="none"`` gives every pixel of a
window the same weight (the plain average, to measure seams against). Pixels (cells) whose input is nodata
(the source's nodata, the QA fill, and with ``mask_clouds`` its cloud mask) get weight 0, and a cell without any
weight is nodata in the output. A cell coarser than a pixel (an embedding patch, a chip) is valid when at most
``max_nodata_fraction`` of its pixels are nodata.

**Georeferencing.** The output is on the scene's grid: same CRS, the transform of the window it covers (the whole
scene, or ``region``) scaled by the output's cell size, and the scene's size divided by it (margins that fill no
whole cell are dropped: a 121-pixel row gives 30 patches of 4). Written with
:class:`~clay_hf.geodata.raster.CogWriter`: tiled, compressed, with overviews, to a temporary file renamed at the
end, so an interrupted run leaves nothing half-written.

**Memory.** Two batches of windows (the one in the model, the one being read) and at most two strips of weighted
sums, each ``(K + 1) x window x output width`` float32 (the rows still open, and the finished rows being
written), whatever the scene's height; the COG copy streams through GDAL's block cache. A 20,000 x 20,000 px
scene with 3 classes at 128 px windows: about 80 MB of strips, where its class map alone would be 400 MB.

**Resume.** Every map records a hash of what made it (the model's weights, the settings, the source) in its
``CLAY_PREDICT_SETTINGS_SHA256`` tag. :func:`predict_scenes` skips a scene whose map has this run's hash, and
refuses (:class:`~clay_hf.errors.OutputExistsError`) to replace a file made otherwise unless ``overwrite``.

Shapes: B windows, C bands, K outputs (classes, values, embedding dimensions), S window side in pixels, s the
output cell in pixels (1, the patch size, or S), h = w = S / s output cells per window.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BandMismatchError, ChipSizeError, ClayConfigError, ClayInputError, OutputExistsError
from ..geodata.chip_format import DEFAULT_MAX_NODATA

__all__ = [
    "KINDS",
    "MapModel",
    "load_map_model",
    "window_origins",
    "taper_weights",
    "predict_scene",
    "predict_scenes",
    "summary_line",
    "SETTINGS_TAG",
]

logger = logging.getLogger(__name__)

KINDS = ("segmentation", "pixel-regression", "classification", "multi-label", "regression", "embedding")
CHIP_KINDS = ("classification", "multi-label", "regression")
SETTINGS_TAG = "CLAY_PREDICT_SETTINGS_SHA256"
PROBABILITY_FORMATS = ("float32", "uint8")
BLENDS = ("cosine", "none")
PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_PROBABILITY_SCALE = 254  # uint8 probabilities: p * 254, 255 = nodata
_DEFAULT_WINDOW = 256
_FIT_WINDOWS = 16  # windows sampled to fit the PCA / int8 scales of an embedding field
_FIT_VECTORS = 50_000

# A qualitative palette for class maps (Tableau 20), repeated beyond 20 classes.
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141),
    (158, 218, 229),
)  # fmt: skip


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """The RGB colour of each class index of a class map (its colour table)."""
    return [_PALETTE[i % len(_PALETTE)] for i in range(num_classes)]


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MapModel:
    """A loaded model and what its maps are (:func:`load_map_model`).

    Attributes:
        model: the torch module, in eval mode.
        kind: one of :data:`KINDS`.
        names: the output names (``id2label`` of a head; ``dim_0``... for embeddings).
        label: what the weights are (:attr:`clay_hf.provenance.ModelProvenance.label`).
        name_or_path: the folder or Hub id.
        training_bands: how the head's training chips were preprocessed (``sensor``, ``band_names``,
            ``wavelengths``), from the folder's ``metrics.json`` or processor config; None when unknown.
        training_chip_size: the chip side the head was trained on, when recorded.
    """

    model: Any
    kind: str
    names: tuple[str, ...]
    label: str
    name_or_path: str = ""
    training_bands: dict[str, Any] | None = None
    training_chip_size: int | None = None

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def cell_size(self, window: int) -> int:
        """Input pixels per output cell: 1 for pixel maps, the patch size for embeddings, the window for chips."""
        if self.kind in ("segmentation", "pixel-regression"):
            return 1
        return self.patch_size if self.kind == "embedding" else window

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, Any], precision: str = "no") -> np.ndarray:
        """A batch of model inputs -> ``(B, K, h, w)`` float32 at the output cell size: class probabilities
        (softmax; sigmoid for multi-label), regressed values, or patch embeddings."""
        from ..modeling_clay import tokens_to_grid

        param = next(self.model.parameters())
        batch = {k: v.to(param.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        batch["pixel_values"] = batch["pixel_values"].to(param.dtype)
        autocast = PRECISIONS[precision]
        context = (
            torch.autocast(param.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        )
        with context:
            out = self.model(**batch)
        if self.kind == "embedding":
            h, w = (s // self.patch_size for s in batch["pixel_values"].shape[-2:])
            values = tokens_to_grid(out.last_hidden_state[:, 1:].float(), (h, w))  # (B, L, D) -> (B, D, h, w)
        else:
            values = out.logits.float()  # (B, K, S, S) or (B, K)
            if self.kind in ("segmentation", "classification"):
                values = values.softmax(dim=1)
            elif self.kind == "multi-label":
                values = values.sigmoid()
            if values.ndim == 2:
                values = values[:, :, None, None]  # (B, K) -> (B, K, 1, 1)
        return values.cpu().numpy()


_HEAD_PREFIXES = {"ClayForSemanticSegmentation": "decode_head.", "ClayForImageClassification": "classifier."}


def _model_kind(architecture: str, config) -> str:
    problem = getattr(config, "problem_type", None)
    if architecture == "ClayForSemanticSegmentation":
        return "pixel-regression" if problem == "regression" or (problem is None and config.num_labels == 1) else (
            "segmentation"
        )  # fmt: skip
    if architecture == "ClayForImageClassification":
        if problem == "multi_label_classification":
            return "multi-label"
        return "regression" if problem == "regression" or (problem is None and config.num_labels == 1) else (
            "classification"
        )  # fmt: skip
    return "embedding"


def _training_record(folder: Path) -> tuple[dict[str, Any] | None, int | None]:
    """(the training chips' band description, the training chip size) from ``metrics.json`` or the processor config."""
    bands, chip_size = None, None
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = None
    if isinstance(metrics, dict):
        kwargs = metrics.get("processor_kwargs") or {}
        bands = {k: kwargs[k] for k in ("sensor", "band_names", "wavelengths") if kwargs.get(k) is not None} or None
        chip_size = (metrics.get("settings") or {}).get("chip_size")
    if bands is None:
        try:
            processor = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            processor = None
        if isinstance(processor, dict) and processor.get("sensor"):
            bands = {"sensor": processor["sensor"]}
    return bands, int(chip_size) if chip_size else None


def load_map_model(
    name_or_path: str | os.PathLike, dtype: torch.dtype | str = torch.float32, device: Any = None
) -> MapModel:
    """A model folder (or Hub id) ready for :func:`predict_scene`: a segmentation or classification head, or a
    ``ClayModel`` (``ClayForPreTraining`` folders load their encoder) for embedding fields.

    Raises:
        ClayConfigError: not a Clay model folder, or a head folder whose head weights are missing (from_pretrained
            would fill them with random numbers and the map would mean nothing).
    """
    from ..configuration_clay import ClayConfig
    from ..modeling_clay import ClayForImageClassification, ClayForSemanticSegmentation, ClayModel
    from ..provenance import model_provenance

    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    where = os.fspath(name_or_path)
    try:
        config = ClayConfig.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise ClayConfigError(
            f"--model {where!r} is not a Clay model folder or Hub id ({type(err).__name__}: {str(err)[:160]}); pass "
            "a folder written by scripts/finetune.py or a converted Clay model"
        ) from err
    architecture = (config.architectures or ["ClayModel"])[0]
    classes = {"ClayForSemanticSegmentation": ClayForSemanticSegmentation,
               "ClayForImageClassification": ClayForImageClassification}  # fmt: skip
    model_class = classes.get(architecture, ClayModel)
    try:
        model, info = model_class.from_pretrained(where, dtype=dtype, output_loading_info=True)
    except OSError as err:
        raise ClayConfigError(f"--model {where!r} has no readable weights: {str(err)[:200]}") from err
    missing = list(info.get("missing_keys") or [])
    head = _HEAD_PREFIXES.get(architecture)
    if head is not None and any(k.startswith(head) for k in missing):
        raise ClayConfigError(
            f"--model {where!r} is a {architecture} folder without trained head weights ({len(missing)} missing, "
            f"e.g. {missing[0]}): its map would come from a random head. Fine-tune a head with scripts/finetune.py, "
            "or pass a ClayModel folder for an embedding field"
        )
    if missing:
        raise ClayConfigError(
            f"--model {where!r} lacks {len(missing)} encoder weights (e.g. {missing[0]}); pass a complete Clay folder"
        )
    kind = _model_kind(architecture if head is not None else "ClayModel", config)
    if kind == "embedding":
        names = tuple(f"dim_{i}" for i in range(config.hidden_size))
    else:
        id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
        names = tuple(id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels))
    bands, chip_size = _training_record(Path(where)) if Path(where).is_dir() else (None, None)
    model = model.eval()
    if device is not None:
        model = model.to(device)
    return MapModel(
        model=model,
        kind=kind,
        names=names,
        label=model_provenance(config).label,
        name_or_path=where,
        training_bands=bands if kind != "embedding" else None,
        training_chip_size=chip_size if kind != "embedding" else None,
    )


def _check_bands(model: MapModel, source) -> None:
    """The scene's bands must be the ones the head was trained on (count, and names or wavelengths)."""
    trained = model.training_bands
    if not trained:
        return
    from ..sensors import get_sensor

    names, wavelengths = trained.get("band_names"), trained.get("wavelengths")
    if trained.get("sensor") and wavelengths is None:  # a table sensor: its numbers for the bands trained on
        table = get_sensor(trained["sensor"])
        names = list(names or table.band_names)
        wavelengths = list(table.select(names).wavelengths_um)
    count = len(names) if names is not None else len(wavelengths) if wavelengths is not None else None
    if count is None:
        return
    what = f"{count} bands" + (f" of {trained['sensor']}" if trained.get("sensor") else "")
    listed = f" ({', '.join(map(str, names))})" if names is not None else ""
    scene = f"scene {source.name!r} has {len(source.band_names)} bands ({', '.join(source.band_names)})"
    if len(source.band_names) != count:
        raise BandMismatchError(
            f"the head was trained on {what}{listed}, but {scene}. Pass imagery of the training sensor, or "
            "band_names= / sensor= so the bands are read as the head expects",
            num_bands=len(source.band_names),
            num_values=count,
        )
    if wavelengths is not None and source.wavelengths_um is not None:
        off = [i for i, (a, b) in enumerate(zip(wavelengths, source.wavelengths_um)) if abs(a - b) > 0.02]
        if off:
            i = off[0]
            raise BandMismatchError(
                f"the head was trained on bands at {[round(w, 3) for w in wavelengths]} um, but {scene} at "
                f"{[round(w, 3) for w in source.wavelengths_um]} um (band {i + 1} differs); pass the bands in the "
                "training order (band_names=)",
                num_bands=len(source.band_names),
                num_values=count,
            )


# --------------------------------------------------------------------------------------------------
# windows and weights (pure)
# --------------------------------------------------------------------------------------------------


def window_origins(length: int, window: int, stride: int, align: int = 1) -> list[int]:
    """Window starts along one axis of ``length`` pixels: ``0, stride, 2 * stride...`` and a last window shifted
    inward so that it ends on the last whole cell of ``align`` pixels (``length`` itself for ``align=1``).

    Raises:
        ChipSizeError: a window longer than the axis.
    """
    if window > length:
        raise ChipSizeError(f"a window of {window} px does not fit an axis of {length} px")
    last = (length - window) // align * align
    origins = list(range(0, last + 1, stride))
    if origins[-1] != last:
        origins.append(last)
    return origins


def taper_weights(size: int, overlap: int, blend: str = "cosine") -> np.ndarray:
    """``(size, size)`` float32 weights of one window in output cells: ``sin^2`` ramps over ``overlap`` cells at
    each edge and 1 inside (a Tukey window; never 0, so a pixel covered by one window keeps its value), or all
    ones for ``blend="none"`` or no overlap."""
    ramp = np.ones(size, dtype=np.float64)
    if blend == "cosine" and overlap > 0:
        n = min(overlap, size // 2)
        x = (np.arange(n) + 0.5) / n  # (0, 1): cell centres across the ramp
        ramp[:n] = np.sin(0.5 * np.pi * x) ** 2
        ramp[size - n :] = ramp[:n][::-1]
    return np.outer(ramp, ramp).astype(np.float32)  # (size,) x (size,) -> (size, size)


def _cell_valid(valid: np.ndarray, cell: int, max_nodata_fraction: float) -> np.ndarray:
    """``(S, S)`` pixel validity -> ``(S/s, S/s)`` cell validity (at most ``max_nodata_fraction`` nodata)."""
    if cell == 1:
        return valid
    h, w = valid.shape[0] // cell, valid.shape[1] // cell
    share = valid[: h * cell, : w * cell].reshape(h, cell, w, cell).mean(axis=(1, 3))  # (S, S) -> (h, w)
    return share >= 1.0 - max_nodata_fraction - 1e-9


# --------------------------------------------------------------------------------------------------
# stitching: one strip of output rows at a time
# --------------------------------------------------------------------------------------------------


class _Strip:
    """Weighted sums of the windows of the current strip: ``acc`` (K, rows, W_out) and ``weight`` (rows, W_out).

    Windows come in strips of increasing rows; rows above the next strip's first row receive nothing more and are
    handed out by :meth:`advance`. Memory: (K + 1) x window cells x the output width, float32.
    """

    def __init__(self, channels: int, rows: int, width: int) -> None:
        self.top = 0
        self.acc = np.zeros((channels, rows, width), dtype=np.float32)
        self.weight = np.zeros((rows, width), dtype=np.float32)
        self.empty = True  # nothing added since the buffers were zeroed (a sparse scene's usual strip)

    def add(self, values: np.ndarray, weight: np.ndarray, row: int, col: int) -> None:
        """Add one window's ``values`` (K, h, w) with ``weight`` (h, w) at output cell (row, col)."""
        r, (h, w) = row - self.top, weight.shape
        self.acc[:, r : r + h, col : col + w] += values * weight  # (K, h, w) * (h, w)
        self.weight[r : r + h, col : col + w] += weight
        self.empty = False

    def advance(self, new_top: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Hand out rows ``[top, new_top)`` (their start, sums, weights) and move the strip down to ``new_top``;
        None when nothing was added to the strip (its rows are all nodata, and stay unwritten).

        The rows still open are copied into fresh (lazily zeroed) buffers; the finished rows are handed out as
        they are, so at most two strips are alive at once.
        """
        if self.empty:
            self.top = new_top
            return None
        n = min(new_top - self.top, self.weight.shape[0])
        done = (self.top, self.acc[:, :n], self.weight[:n])
        acc, weight = np.zeros(self.acc.shape, np.float32), np.zeros(self.weight.shape, np.float32)
        kept = self.weight.shape[0] - n
        if kept:
            acc[:, :kept], weight[:kept] = self.acc[:, n:], self.weight[n:]
        self.acc, self.weight, self.top = acc, weight, new_top
        self.empty = not weight.any()
        return done


# --------------------------------------------------------------------------------------------------
# outputs: what the blended values become on disk
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Reduction:
    """An embedding field's reduction, fitted on windows of the scene: PCA to N bands, or int8 scales."""

    kind: str  # "pca" or "int8"
    mean: np.ndarray | None = None  # (D,)
    components: np.ndarray | None = None  # (N, D)
    explained: np.ndarray | None = None  # (N,) share of the variance
    scales: np.ndarray | None = None  # (D,) int8: value = q * scale

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``(D, h, w)`` -> ``(N, h, w)`` float32 (PCA) or ``(D, h, w)`` int8 (-128 = nodata)."""
        d, h, w = values.shape
        flat = values.reshape(d, h * w)  # (D, h, w) -> (D, h*w)
        invalid = np.isnan(flat[0])
        if self.kind == "pca":
            projected = self.components @ (flat - self.mean[:, None])  # (N, D) @ (D, h*w) -> (N, h*w)
            projected[:, invalid] = np.nan
            return projected.reshape(-1, h, w).astype(np.float32)
        q = np.clip(np.rint(np.nan_to_num(flat) / self.scales[:, None]), -127, 127).astype(np.int8)  # (D, h*w)
        q[:, invalid] = -128
        return q.reshape(d, h, w)

    def tags(self) -> dict[str, str]:
        if self.kind == "pca":
            return {
                "EMBEDDING_REDUCE": f"pca:{len(self.components)}",
                "PCA_EXPLAINED_VARIANCE_RATIO": json.dumps([round(float(v), 6) for v in self.explained]),
                "PCA_MEAN": json.dumps([round(float(v), 6) for v in self.mean]),
                "PCA_COMPONENTS": json.dumps([[round(float(v), 6) for v in row] for row in self.components]),
            }
        return {"EMBEDDING_REDUCE": "int8", "EMBEDDING_INT8_SCALE": json.dumps([float(v) for v in self.scales])}


def parse_reduce(text: str | None) -> tuple[str, int | None] | None:
    """``"pca:8"`` -> ``("pca", 8)``, ``"int8"`` -> ``("int8", None)``, None -> None."""
    if text is None or text in ("", "none"):
        return None
    if text == "int8":
        return "int8", None
    head, _, count = text.partition(":")
    if head == "pca" and count.isdigit() and int(count) >= 1:
        return "pca", int(count)
    raise ClayConfigError(f"embedding_reduce must be 'pca:N' (N >= 1 bands) or 'int8', got {text!r}")


def _fit_reduction(vectors: np.ndarray, how: tuple[str, int | None]) -> _Reduction:
    """Fit PCA (top N eigenvectors of the covariance, signs fixed) or int8 scales (max |value| / 127) on
    ``vectors`` (n, D)."""
    kind, count = how
    x = vectors.astype(np.float64)
    if kind == "int8":
        scales = np.maximum(np.abs(x).max(axis=0), 1e-12) / 127.0
        return _Reduction("int8", scales=scales.astype(np.float32))
    d = x.shape[1]
    if count > d:
        raise ClayConfigError(f"embedding_reduce pca:{count} asks for more bands than the {d} embedding dimensions")
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False) if len(x) > 1 else np.zeros((d, d))
    eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigenvalues)[::-1][:count]
    components = eigenvectors[:, order].T  # (D, N) -> (N, D)
    signs = np.sign(components[np.arange(count), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]  # deterministic signs
    total = max(float(eigenvalues.clip(min=0).sum()), 1e-12)
    return _Reduction(
        "pca", mean=mean.astype(np.float32), components=components.astype(np.float32),
        explained=(eigenvalues[order].clip(min=0) / total).astype(np.float32),
    )  # fmt: skip


@dataclasses.dataclass
class _Layout:
    """The files of one scene's output and how blended values ``(K, h, w)`` (NaN = nodata) become their bands."""

    model: MapModel
    probabilities: str | None
    reduction: _Reduction | None

    @property
    def classes(self) -> bool:
        return self.model.kind in ("segmentation", "classification")

    def class_dtype(self) -> tuple[str, int]:
        return ("uint8", 255) if self.model.num_outputs <= 254 else ("uint16", 65535)

    def main_profile(self) -> dict[str, Any]:
        """dtype, count, nodata, band descriptions, colour table and scales of the main map."""
        names = list(self.model.names)
        if self.classes:
            dtype, nodata = self.class_dtype()
            colors = {i: (*c, 255) for i, c in enumerate(class_colors(len(names)))}
            colors[nodata] = (0, 0, 0, 0)  # nodata transparent
            return dict(dtype=dtype, count=1, nodata=nodata, band_descriptions=["class"],
                        colormap=colors if dtype == "uint8" else None)  # fmt: skip
        if self.model.kind == "multi-label" and self.probabilities == "uint8":
            return self._uint8_probabilities(names)
        if self.reduction is not None and self.reduction.kind == "pca":
            n = len(self.reduction.components)
            return dict(
                dtype="float32", count=n, nodata=float("nan"), band_descriptions=[f"pc_{i + 1}" for i in range(n)]
            )
        if self.reduction is not None:
            return dict(dtype="int8", count=len(names), nodata=-128, band_descriptions=names,
                        scales=[float(s) for s in self.reduction.scales], offsets=[0.0] * len(names))  # fmt: skip
        return dict(dtype="float32", count=len(names), nodata=float("nan"), band_descriptions=names)

    def _uint8_probabilities(self, names: list[str]) -> dict[str, Any]:
        return dict(dtype="uint8", count=len(names), nodata=255, band_descriptions=names,
                    scales=[1.0 / _PROBABILITY_SCALE] * len(names), offsets=[0.0] * len(names))  # fmt: skip

    def probabilities_profile(self) -> dict[str, Any] | None:
        """The sibling probabilities file of a class map (None when not asked for, or not a class map)."""
        if not self.classes or self.probabilities is None:
            return None
        names = list(self.model.names)
        if self.probabilities == "uint8":
            return self._uint8_probabilities(names)
        return dict(dtype="float32", count=len(names), nodata=float("nan"), band_descriptions=names)

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Blended ``(K, h, w)`` -> (main bands, probability bands or None), in the files' dtypes."""
        invalid = np.isnan(values[0])
        probabilities = None
        if self.classes:
            dtype, nodata = self.class_dtype()
            main = np.nan_to_num(values).argmax(axis=0).astype(dtype)[None]  # (K, h, w) -> (1, h, w)
            main[0, invalid] = nodata
            if self.probabilities is not None:
                probabilities = self._encode_probabilities(values, invalid)
            return main, probabilities
        if self.model.kind == "multi-label" and self.probabilities == "uint8":
            return self._encode_probabilities(values, invalid), None
        if self.reduction is not None:
            return self.reduction.apply(values), None
        return values.astype(np.float32), None

    def _encode_probabilities(self, values: np.ndarray, invalid: np.ndarray) -> np.ndarray:
        if self.probabilities == "uint8":
            q = np.rint(np.nan_to_num(values).clip(0, 1) * _PROBABILITY_SCALE).astype(np.uint8)  # (K, h, w)
            q[:, invalid] = 255
            return q
        return values.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# one scene
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """Where the windows go: origins in scene pixels, the output grid and the weights."""

    window: int
    stride: int
    cell: int
    rows: list[int]  # window origins, scene pixels (region offset included)
    cols: list[int]
    region: tuple[int, int, int, int]  # (row, col, height, width) covered, in scene pixels
    out_height: int
    out_width: int
    weights: np.ndarray  # (h, w) per window, output cells

    @property
    def windows(self) -> int:
        return len(self.rows) * len(self.cols)


def _plan(source, model: MapModel, window: int | None, overlap: float | None, blend: str, region) -> _Plan:
    """Check the window settings against the model and the scene, and lay the windows out."""
    if window is None:
        window = model.training_chip_size or _DEFAULT_WINDOW
    p = model.patch_size
    if window < p or window % p:
        raise ChipSizeError(
            f"window {window} px is not a multiple of the model's patch size {p}; use e.g. "
            f"{max(p, window // p * p)} or {(window // p + 1) * p}"
        )
    cell = model.cell_size(window)
    chip_head = model.kind in CHIP_KINDS
    if overlap is None:
        overlap = 0.0 if chip_head else 0.25 if cell == 1 else 0.0
    if not 0.0 <= overlap < 1.0:
        raise ClayConfigError(f"overlap must be a share of the window in [0, 1), got {overlap}")
    if chip_head and overlap > 0:
        raise ClayConfigError(
            f"overlap={overlap} applies to per-pixel maps and embedding fields; the {model.kind} head of "
            f"{model.name_or_path!r} writes one value per chip, on chips that tile the scene: use overlap=0"
        )
    if blend not in BLENDS:
        raise ClayConfigError(f"blend must be one of {BLENDS}, got {blend!r}")
    stride = max(cell, int((1.0 - overlap) * window) // cell * cell)
    r0, c0, height, width = region if region is not None else (0, 0, source.height, source.width)
    if min(height, width) < 1 or r0 < 0 or c0 < 0 or r0 + height > source.height or c0 + width > source.width:
        raise ChipSizeError(
            f"region (row {r0}, col {c0}, {height} x {width} px) is not inside the {source.height} x {source.width} "
            f"px grid of {source.name!r}; choose a region inside it"
        )
    if window > min(height, width):
        where = "the region" if region is not None else f"scene {source.name!r}"
        fits = min(height, width) // p * p
        hint = f"a smaller window= (at most {fits} px)" if fits >= p else "a larger scene"
        raise ChipSizeError(
            f"{where} ({height} x {width} px at {source.gsd:g} m) is smaller than one window of {window} px; use {hint}"
        )
    rows = [r0 + r for r in window_origins(height, window, stride, cell)]
    cols = [c0 + c for c in window_origins(width, window, stride, cell)]
    out_h, out_w = (rows[-1] - r0 + window) // cell, (cols[-1] - c0 + window) // cell
    overlap_cells = (window - stride) // cell
    weights = taper_weights(window // cell, overlap_cells, blend)
    return _Plan(window, stride, cell, rows, cols, (r0, c0, height, width), out_h, out_w, weights)


class _WindowReader:
    """Reads the windows of a scene in batches (strip by strip), the next batch in a background thread while the
    model runs.

    A window with no valid pixel is skipped: one over sparse GeoTIFF tiles only without a read
    (:meth:`~clay_hf.geodata.raster.RasterSource.window_may_have_data`), and after an empty window the next ones
    are first probed with :meth:`~clay_hf.geodata.raster.RasterSource.read_masks` (the reads alone).
    """

    def __init__(self, source, plan: _Plan, model: MapModel, max_nodata_fraction: float, mask_clouds: bool):
        self.source, self.plan, self.model = source, plan, model
        self.max_nodata, self.mask_clouds = max_nodata_fraction, mask_clouds and source.spec.cloud_mask is not None
        self.empty = 0
        self._sparse = False
        self.seconds = 0.0

    def _read(self, row: int, col: int) -> tuple[dict[str, Any], np.ndarray] | None:
        size = self.plan.window
        if not self.source.window_may_have_data(row, col, size):
            return None  # only sparse (never written) GeoTIFF tiles under it
        if self._sparse:
            valid, _ = self.source.read_masks(row, col, size)
            if not valid.any():
                return None
        chip = self.source.read_chip(row, col, size)
        valid = chip["valid"]
        if self.mask_clouds:
            _, cloudy = self.source.read_masks(row, col, size)
            valid = valid & ~cloudy
        cells = _cell_valid(valid, self.plan.cell, self.max_nodata)
        self._sparse = not cells.any()
        return (chip, cells) if cells.any() else None

    def batch(self, row: int, cols: Sequence[int]) -> list[tuple[int, dict[str, Any], np.ndarray]]:
        start, out = time.perf_counter(), []
        for col in cols:
            read = self._read(row, col)
            if read is None:
                self.empty += 1
            else:
                out.append((col, *read))
        self.seconds += time.perf_counter() - start
        return out

    def batches(self, batch_size: int) -> Iterator[tuple[int, int, list[tuple[int, dict[str, Any], np.ndarray]]]]:
        """``(row, windows, [(col, chip, cell validity), ...])`` for every batch of every strip, in order (empty
        windows counted in ``windows``, left out of the list); the next one is read while the caller works."""
        jobs = [(r, self.plan.cols[i : i + batch_size]) for r in self.plan.rows
                for i in range(0, len(self.plan.cols), batch_size)]  # fmt: skip
        _, c0, _, width = self.plan.region
        strips = {r: self.source.window_may_have_data(r, c0, (self.plan.window, width)) for r in self.plan.rows}
        submit = lambda pool, row, cols: pool.submit(self.batch, row, cols) if strips[row] else None
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = submit(pool, *jobs[0]) if jobs else None
            for i, (row, cols) in enumerate(jobs):
                result = pending.result() if pending is not None else []
                self.empty += 0 if pending is not None else len(cols)  # a strip over sparse tiles only
                pending = submit(pool, *jobs[i + 1]) if i + 1 < len(jobs) else None
                yield row, len(cols), result


def _model_inputs(chips: list[dict[str, Any]], processor) -> dict[str, Any]:
    from ..geodata.loader import processor_kwargs

    kwargs = processor_kwargs(chips)
    inputs = processor(kwargs.pop("images"), return_tensors="pt", **kwargs)
    return {k: inputs[k] for k in ("pixel_values", "wavelengths", "gsd", "time", "latlon") if k in inputs}


def _settings_digest(model_digest: str, settings: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps({"model": model_digest, **settings}, sort_keys=True, default=str).encode()
    ).hexdigest()


class _Stats:
    """The summary of the values written: a class histogram or each band's value range."""

    def __init__(self, layout: _Layout, band_names: Sequence[str]) -> None:
        self.layout, self.band_names = layout, list(band_names)
        self.counts = np.zeros(layout.model.num_outputs, dtype=np.int64) if layout.classes else None
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        self.valid_cells = 0

    def update(self, values: np.ndarray, main: np.ndarray, scales: Sequence[float] | None) -> None:
        """Count the blended ``values`` (K, h, w) as written in ``main`` (its bands, times their ``scales``)."""
        valid = ~np.isnan(values[0])
        self.valid_cells += int(valid.sum())
        if self.counts is not None:
            self.counts += np.bincount(main[0][valid].astype(np.int64), minlength=len(self.counts))
        elif valid.any():
            picked = main[:, valid].astype(np.float64)  # (bands, n), in the file's units
            if scales is not None:
                picked *= np.asarray(scales)[:, None]
            low, high = picked.min(axis=1), picked.max(axis=1)
            self.low = low if self.low is None else np.minimum(self.low, low)
            self.high = high if self.high is None else np.maximum(self.high, high)

    def to_dict(self) -> dict[str, Any]:
        if self.counts is not None:
            return {"histogram": {n: int(c) for n, c in zip(self.layout.model.names, self.counts)}}
        if self.low is None:
            return {"value_range": None}
        shown = range(min(len(self.band_names), 8))  # an embedding has hundreds of bands: the first few
        return {"value_range": {self.band_names[i]: [float(self.low[i]), float(self.high[i])] for i in shown}}


def _chip_rows(model: MapModel, chips: list[dict[str, Any]], values: np.ndarray) -> list[dict[str, Any]]:
    """One footprint row per chip of a chip head: id, origin, prediction, lon/lat polygon."""
    from .embeddings import footprint_wkb

    rows = []
    for chip, v in zip(chips, values[:, :, 0, 0]):  # (B, K, 1, 1) -> (B, K)
        row = {"chip_id": chip["chip_id"], "row": chip["row"], "col": chip["col"],
               "geometry": footprint_wkb(chip["bounds"], chip["crs"])}  # fmt: skip
        if model.kind == "classification":
            k = int(v.argmax())
            row.update(class_index=k, label=model.names[k], score=float(v[k]))
        elif model.kind == "multi-label":
            row.update(labels=[n for n, p in zip(model.names, v) if p >= 0.5], probabilities=[float(p) for p in v])
        else:
            row.update(value=float(v[0]), values=[float(x) for x in v])
        rows.append(row)
    return rows


def _write_footprints(rows: list[dict[str, Any]], path: Path, metadata: dict[str, str]) -> Path:
    """Chip predictions as GeoParquet (WKB polygons in longitude/latitude), atomically."""
    import struct

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..atomic import atomic_path
    from .embeddings import geoparquet_metadata

    table = pa.Table.from_pylist(rows) if rows else pa.table({"chip_id": pa.array([], pa.string())})
    bbox = None
    if rows:
        coords = np.array([struct.unpack("<10d", r["geometry"][13:]) for r in rows]).reshape(-1, 5, 2)  # (N, 5, xy)
        bbox = [float(coords[..., 0].min()), float(coords[..., 1].min()), float(coords[..., 0].max()),
                float(coords[..., 1].max())]  # fmt: skip
    meta = {**(table.schema.metadata or {}), b"geo": geoparquet_metadata(bbox),
            b"clay_prediction": json.dumps(metadata).encode()}  # fmt: skip
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    return path


def _sample_vectors(model: MapModel, reader: _WindowReader, processor, plan: _Plan, precision: str) -> np.ndarray:
    """Patch embeddings of up to ``_FIT_WINDOWS`` windows spread over the scene: ``(n, D)`` (valid cells only)."""
    positions = [(r, c) for r in plan.rows for c in plan.cols]
    step = max(1, len(positions) // _FIT_WINDOWS)
    vectors, reader._sparse = [], True  # probe each sampled window: most may be empty
    for r, c in positions[::step][:_FIT_WINDOWS]:
        read = reader._read(r, c)
        if read is None:
            continue
        chip, cells = read
        values = model(_model_inputs([chip], processor), precision)[0]  # (D, h, w)
        vectors.append(values[:, cells].T)  # (D, n) -> (n, D)
    reader._sparse = False
    if not vectors:
        raise ClayInputError(f"scene {reader.source.name!r} has no valid window to fit embedding_reduce on")
    stacked = np.concatenate(vectors)
    return stacked[:: max(1, len(stacked) // _FIT_VECTORS)]


def _tags(model: MapModel, layout: _Layout, scene: str, plan: _Plan, digest: str | None) -> dict[str, str]:
    """The map's metadata: the model (and what it is), the scene, the cell size, the output names, the settings."""
    tags = {
        "CLAY_MODEL": model.label,
        "CLAY_MODEL_PATH": model.name_or_path,
        "CLAY_OUTPUT": model.kind,
        "CLAY_SOURCE": scene,
        "CLAY_CELL_PIXELS": str(plan.cell),
        "CLAY_WINDOW": f"{plan.window} px, stride {plan.stride} px",
        SETTINGS_TAG: digest or "",
    }
    if model.kind != "embedding":  # id2label: class index (or band) -> name
        tags["CLASS_NAMES" if layout.classes else "OUTPUT_NAMES"] = json.dumps(dict(enumerate(model.names)))
    if layout.reduction is not None:
        tags.update(layout.reduction.tags())
    return tags


def predict_scene(
    source: Any,
    model: MapModel,
    output: str | os.PathLike,
    window: int | None = None,
    overlap: float | None = None,
    batch_size: int = 16,
    probabilities: str | None = None,
    embedding_reduce: str | None = None,
    blend: str = "cosine",
    precision: str = "no",
    max_nodata_fraction: float = DEFAULT_MAX_NODATA,
    mask_clouds: bool = True,
    region: tuple[int, int, int, int] | None = None,
    progress: Any = None,
    settings_digest: str | None = None,
    **open_kwargs: Any,
) -> dict[str, Any]:
    """Apply ``model`` to one scene, window by window, and write its map to ``output`` (a COG, atomically).

    Args:
        source: a :class:`~clay_hf.geodata.sources.SourceSpec`, a path :func:`~clay_hf.geodata.raster.open_source`
            takes, or an open ``RasterSource`` (left open).
        model: from :func:`load_map_model`.
        output: the map's path; siblings ``<stem>.probabilities.tif`` (``probabilities``) and ``<stem>.parquet``
            (chip heads) are written beside it, before it.
        window: window side in pixels, a multiple of the patch size (default: the head's training chip size, else
            256); for chip heads the chip size.
        overlap: share of the window shared with the next one (default 0.25 for pixel maps, 0 otherwise).
        batch_size: windows per forward pass.
        probabilities: ``"float32"`` or ``"uint8"`` (p x 254, GDAL scale 1/254): per-class probabilities of a class
            map in the sibling file; for a multi-label head the format of its map.
        embedding_reduce: ``"pca:N"`` or ``"int8"`` for an embedding field (fitted on windows of the scene).
        blend: ``"cosine"`` (the taper of the module docstring) or ``"none"`` (equal weights).
        precision: ``"no"``, ``"bf16"`` or ``"fp16"`` autocast around the forward pass.
        max_nodata_fraction: a coarse cell (patch, chip) with more nodata pixels is nodata.
        mask_clouds: cloud (and shadow) pixels of the source's cloud mask are nodata.
        region: ``(row, col, height, width)`` of the scene grid to map (default: the whole scene).
        progress: a tqdm bar advanced by one per window.
        settings_digest: recorded in the map's :data:`SETTINGS_TAG` (:func:`predict_scenes` passes its hash).
        open_kwargs: source fields for :func:`~clay_hf.geodata.raster.open_source` (``sensor=``...).

    Returns:
        The scene's summary: ``scene``, ``output`` (and ``probabilities``, ``footprints`` paths), ``kind``,
        ``windows`` (run through the model), ``windows_empty`` (skipped: no valid pixel), ``windows_total``,
        ``width``/``height`` (output cells), ``cell_m`` (output cell in metres), ``input_megapixels`` (of the
        windows run), ``output_megapixels``, ``seconds``, ``model_seconds`` (the forward passes),
        ``preprocess_seconds`` (normalisation, encodings), ``read_seconds`` (in the reading thread, overlapping the
        model), ``write_seconds`` (blending, encoding, writing, the COG copy), ``bytes``, ``bytes_per_km2`` (of the
        uncompressed grid) and ``file_bytes_per_km2``, the ``histogram`` or ``value_range``, ``model`` (its
        provenance label). ``scripts/benchmark.py`` times this function.

    Raises:
        ChipSizeError: a window that is not a multiple of the patch size or larger than the scene.
        BandMismatchError: a scene whose bands are not those the head was trained on.
        ClayConfigError: settings that do not fit the model (overlap of a chip head, a reduction of a head...).
        RasterError: a scene that cannot be read (missing, corrupt, truncated: see ``open_source``).
    """
    from ..geodata.raster import CogWriter, RasterSource, open_source
    from ..image_processing_clay import ClayImageProcessor

    if probabilities is not None and probabilities not in PROBABILITY_FORMATS:
        raise ClayConfigError(f"probabilities must be one of {PROBABILITY_FORMATS} or None, got {probabilities!r}")
    if probabilities is not None and model.kind not in ("segmentation", "classification", "multi-label"):
        raise ClayConfigError(
            f"probabilities= needs a classification or segmentation head; {model.name_or_path!r} is a {model.kind} "
            "model" + (" (an encoder without a head)" if model.kind == "embedding" else "")
        )
    how = parse_reduce(embedding_reduce)
    if how is not None and model.kind != "embedding":
        raise ClayConfigError(
            f"embedding_reduce= applies to embedding fields of a ClayModel; {model.name_or_path!r} is a {model.kind} "
            "head"
        )
    if precision not in PRECISIONS:
        raise ClayConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if batch_size < 1:
        raise ClayConfigError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(source, RasterSource):
        opened = contextlib.nullcontext(source)
    else:
        opened = open_source(source, **open_kwargs)
    output = Path(output)
    start = time.perf_counter()
    with opened as src:
        _check_bands(model, src)
        plan = _plan(src, model, window, overlap, blend, region)
        processor = ClayImageProcessor(patch_size=model.patch_size)
        reader = _WindowReader(src, plan, model, max_nodata_fraction, mask_clouds)
        reduction = _fit_reduction(_sample_vectors(model, reader, processor, plan, precision), how) if how else None
        layout = _Layout(model, probabilities, reduction)
        transform = src.window_transform(plan.region[0], plan.region[1], plan.cell)
        tags = _tags(model, layout, src.name, plan, settings_digest)
        grid = dict(height=plan.out_height, width=plan.out_width, crs=src.crs, transform=transform)
        main_profile = layout.main_profile()
        prob_profile = layout.probabilities_profile()
        prob_path = output.with_name(output.stem + ".probabilities.tif") if prob_profile else None
        foot_path = output.with_suffix(".parquet") if model.kind in CHIP_KINDS else None
        stats = _Stats(layout, main_profile["band_descriptions"])
        footprints: list[dict[str, Any]] = []
        timing = {"model": 0.0, "preprocess": 0.0, "write": 0.0}
        windows_run, input_pixels = 0, 0
        with contextlib.ExitStack() as files:
            main = files.enter_context(CogWriter(output, **grid, **main_profile, tags=tags))
            prob = (
                files.enter_context(CogWriter(prob_path, **grid, **prob_profile, tags=tags)) if prob_profile else None
            )
            strip = _Strip(model.num_outputs, plan.window // plan.cell, plan.out_width)

            def flush(new_top: int) -> None:
                t = time.perf_counter()
                done = strip.advance(new_top)
                if done is not None:
                    _write_rows(*done, main, prob, layout, stats, plan.out_height)
                timing["write"] += time.perf_counter() - t

            for row, windows, batch in reader.batches(batch_size):
                out_row = (row - plan.region[0]) // plan.cell
                if out_row > strip.top:
                    flush(out_row)
                if progress is not None:
                    progress.update(windows)
                if not batch:
                    continue
                t = time.perf_counter()
                chips = [chip for _, chip, _ in batch]
                inputs = _model_inputs(chips, processor)
                t_model = time.perf_counter()
                values = model(inputs, precision)  # (B, K, h, w)
                timing["model"] += time.perf_counter() - t_model
                timing["preprocess"] += t_model - t
                windows_run += len(batch)
                input_pixels += len(batch) * plan.window**2
                for (col, _, cells), v in zip(batch, values):
                    strip.add(v, plan.weights * cells, out_row, (col - plan.region[1]) // plan.cell)
                if foot_path is not None:
                    footprints.extend(_chip_rows(model, chips, values))
            flush(plan.out_height)
            if foot_path is not None:
                t = time.perf_counter()
                _write_footprints(footprints, foot_path, {k: v for k, v in tags.items() if not k.startswith("PCA_")})
                timing["write"] += time.perf_counter() - t
            t_close = time.perf_counter()
        timing["write"] += time.perf_counter() - t_close
        cell_m = src.gsd * plan.cell
    elapsed = time.perf_counter() - start
    itemsize = np.dtype(main_profile["dtype"]).itemsize * main_profile["count"]
    km2 = cell_m**2 / 1e6  # one output cell
    file_bytes = output.stat().st_size
    valid_km2 = max(stats.valid_cells * km2, 1e-12)
    result = {
        "scene": src.name,
        "output": str(output),
        "probabilities": str(prob_path) if prob_path else None,
        "footprints": str(foot_path) if foot_path else None,
        "kind": model.kind,
        "model": model.label,
        "windows": windows_run,
        "windows_empty": reader.empty,
        "windows_total": plan.windows,
        "window": plan.window,
        "stride": plan.stride,
        "width": plan.out_width,
        "height": plan.out_height,
        "bands": main_profile["count"],
        "dtype": main_profile["dtype"],
        "cell_m": cell_m,
        "input_megapixels": input_pixels / 1e6,
        "output_megapixels": plan.out_width * plan.out_height / 1e6,
        "seconds": elapsed,
        "model_seconds": timing["model"],
        "preprocess_seconds": timing["preprocess"],
        "read_seconds": reader.seconds,
        "write_seconds": timing["write"],
        "bytes": file_bytes,
        "bytes_per_km2": itemsize / km2,
        "file_bytes_per_km2": file_bytes / valid_km2,
        "skipped": False,
        **stats.to_dict(),
    }
    logger.info("%s", summary_line(result))
    return result


def _write_rows(top, acc, weight, main, prob, layout: _Layout, stats: _Stats, out_height: int) -> None:
    """Finished rows -> normalised values -> the files; only the column blocks that hold data are written."""
    rows = min(acc.shape[1], out_height - top)
    if rows <= 0:
        return
    acc, weight = acc[:, :rows], weight[:rows]
    block = main.blocksize
    for c0 in range(0, weight.shape[1], block):
        w = weight[:, c0 : c0 + block]
        if not (w > 0).any():
            continue  # nothing here: the block stays sparse (reads as nodata)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = acc[:, :, c0 : c0 + block] / w  # (K, rows, b) / (rows, b)
        values[:, w <= 0] = np.nan
        encoded, probabilities = layout.encode(values)
        main.write(encoded, top, c0)
        if prob is not None and probabilities is not None:
            prob.write(probabilities, top, c0)
        stats.update(values, encoded, main.scales)


def summary_line(result: dict[str, Any]) -> str:
    """One line for a person: the scene, windows, seconds, the output, and its class histogram or value range."""
    if result.get("skipped"):
        return f"{result['scene']}: already done -> {result['output']}"
    head = (
        f"{result['scene']}: {result['windows']} windows ({result['windows_empty']} empty of "
        f"{result['windows_total']}) in {result['seconds']:.1f} s -> {result['output']} "
        f"({result['width']} x {result['height']} {result['dtype']} x {result['bands']}, "
        f"{result['cell_m']:g} m cells, {result['bytes_per_km2'] / 1e3:.1f} kB/km2 uncompressed)"
    )
    if "histogram" in result:
        total = max(sum(result["histogram"].values()), 1)
        top = sorted(result["histogram"].items(), key=lambda kv: -kv[1])[:5]
        return head + "; classes " + ", ".join(f"{n} {100 * c / total:.0f}%" for n, c in top if c)
    if result.get("value_range"):
        shown = list(result["value_range"].items())[:3]
        return head + "; values " + ", ".join(f"{n} {lo:.3g}..{hi:.3g}" for n, (lo, hi) in shown)
    return head + "; no valid cells"


# --------------------------------------------------------------------------------------------------
# many scenes
# --------------------------------------------------------------------------------------------------


def _scene_specs(inputs: Sequence[Any], open_kwargs: dict[str, Any]) -> list[Any]:
    """Every source of ``inputs`` (paths: rasters, band folders, STAC JSON; or SourceSpecs), unique names."""
    from ..geodata.sources import SourceSpec, sources_from_path

    specs = []
    for item in inputs:
        if isinstance(item, SourceSpec):
            specs.append(dataclasses.replace(item, **open_kwargs) if open_kwargs else item)
        else:
            specs.extend(sources_from_path(item, **open_kwargs))
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ClayInputError(f"several scenes are named {twice}; their maps would overwrite each other. Pass them once")
    return specs


def _output_name(spec) -> str:
    return f"{spec.name}.tif"  # a SourceSpec's name is filesystem-safe and stable across runs


def _check_existing(target: Path, digest: str, overwrite: bool) -> bool:
    """True when ``target`` is this run's finished map (skip it); raise when it is something else."""
    from ..errors import RasterError
    from ..geodata.raster import read_tags

    if not target.exists():
        return False
    if target.is_dir():
        raise OutputExistsError(f"{target} is a folder, where a map would be written; choose another --output")
    try:
        recorded = read_tags(target).get(SETTINGS_TAG)
    except RasterError:
        recorded = None
    if recorded == digest:
        return True
    if overwrite:
        return False
    why = "by another model or other settings" if recorded else "by something other than clay_hf predict"
    raise OutputExistsError(
        f"the output {target} exists and was written {why}; choose another --output folder, or pass --overwrite "
        "(overwrite=True) to replace it",
        path=str(target),
    )


def predict_scenes(
    inputs: Sequence[Any],
    model: MapModel,
    output_dir: str | os.PathLike,
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    open_kwargs: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Map every scene of ``inputs`` into ``output_dir/<scene>.tif``; process ``rank`` of ``world_size`` takes
    scenes ``rank::world_size`` (as ``embed.py`` takes its units), so ``accelerate launch`` splits a folder.

    A scene whose map already records this run's settings hash is skipped; another file at that path is refused
    (:class:`~clay_hf.errors.OutputExistsError`) unless ``overwrite``. The call holds the folder's write lock.
    ``settings`` are :func:`predict_scene`'s (``window``, ``overlap``, ``batch_size``, ``probabilities``...);
    ``open_kwargs`` the source fields (``sensor``, ``band_names``...).

    Returns:
        ``scenes`` (every scene's summary with its ``source_spec`` as a dict, skipped ones with ``skipped: True``),
        ``written``, ``skipped``,
        ``rank``, ``world_size``, ``seconds``, ``model`` (the provenance label).
    """
    from tqdm.auto import tqdm

    from ..locking import output_lock
    from .embeddings import model_fingerprint

    if rank is None or world_size is None:
        from ..distributed import rank_and_world_size

        rank, world_size = rank_and_world_size()
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"--output {output_dir} is a file; maps need a folder", path=str(output_dir))
    open_kwargs = dict(open_kwargs or {})
    specs = _scene_specs(inputs, open_kwargs)
    fingerprint = model_fingerprint(model.model)
    start, results = time.perf_counter(), []
    mine = specs[rank::world_size]
    with output_lock(output_dir, job="prediction run", rank=rank):
        scenes_bar = tqdm(mine, desc=f"scenes (rank {rank})", unit="scene", disable=not progress or len(mine) < 2)
        for spec in scenes_bar:
            target = output_dir / _output_name(spec)
            recorded = {k: v for k, v in settings.items() if k != "progress"}
            digest = _settings_digest(fingerprint, {"source": spec.to_dict(), **recorded})
            if _check_existing(target, digest, overwrite):
                results.append(
                    {"scene": spec.name, "output": str(target), "skipped": True, "source_spec": spec.to_dict()}
                )
                continue
            bar = tqdm(desc=spec.name, unit="window", disable=not progress, dynamic_ncols=True, leave=False)
            try:
                result = predict_scene(spec, model, target, progress=bar, settings_digest=digest, **settings)
                results.append({**result, "source_spec": spec.to_dict()})
            finally:
                bar.close()
    return {
        "scenes": results,
        "written": [r["output"] for r in results if not r.get("skipped")],
        "skipped": [r["output"] for r in results if r.get("skipped")],
        "rank": rank,
        "world_size": world_size,
        "units": len(specs),
        "seconds": time.perf_counter() - start,
        "model": model.label,
        "model_fingerprint": fingerprint,
    }


def scene_rgb_and_map(result: dict[str, Any], source: Any, max_size: int = 1024, **open_kwargs: Any):
    """The scene's RGB (3, h, w) float in [0, 1] and the map's first band (h, w), both decimated to at most
    ``max_size`` cells, for a quick-look figure (:func:`clay_hf.apps.figures.map_quicklook_png`)."""
    from ..geodata.raster import open_source, read_band

    with open_source(source, **open_kwargs) as src:
        factor = max(1, math.ceil(max(src.height, src.width) / max_size))
        spec, resolution = src.spec, src.resolution
    with open_source(dataclasses.replace(spec, resolution=resolution * factor)) as small:
        chip = small.read_chip(0, 0, (small.height, small.width))
        names = list(small.band_names)
    order = [names.index(n) for n in ("red", "green", "blue") if n in names]
    order = order if len(order) == 3 else [0, 1, 2][: len(names)]
    rgb = chip["pixels"][order].astype(np.float32)  # (C, h, w) -> (3, h, w)
    valid = chip["valid"]
    for band in rgb:
        low, high = np.percentile(band[valid], (2, 98)) if valid.any() else (0.0, 1.0)
        band[:] = np.clip((band - low) / max(high - low, 1e-6), 0, 1)
    rgb[:, ~valid] = 1.0  # nodata white
    values, _ = read_band(result["output"], 1, out_shape=rgb.shape[1:])
    return rgb, values
