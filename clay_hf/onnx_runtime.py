"""Run an exported Clay ONNX file (:mod:`clay_hf.export`) with onnxruntime, behind the model's own interface.

    >>> from clay_hf.onnx_runtime import OnnxClayModel
    >>> model = OnnxClayModel("deploy/clay.onnx")
    >>> inputs = model.preprocess(chips, datetimes="2024-06-01", lat=52.5, lon=13.4)   # the export's processor
    >>> model(**inputs).pooler_output.shape                                           # (B, D), as ClayModel

:class:`OnnxClayModel` takes what :class:`~clay_hf.ClayImageProcessor` returns (torch tensors or numpy arrays; a
scalar ``gsd`` is repeated over the batch, missing ``time``/``latlon`` are zeros, ``valid_mask`` is accepted and
not used, as by the model) and returns the transformers output classes with torch tensors: ``ClayModelOutput``
(``last_hidden_state``, ``pooler_output``) for an encoder, ``ImageClassifierOutput`` / ``SemanticSegmenterOutput``
(``logits``) for a head. It has ``config``, ``dtype``, ``device`` and ``name_or_path`` like a model, so
:func:`clay_hf.apps.embeddings.embed_to_parquet` writes the same GeoParquet through it
(``scripts/embed.py --backend onnx``).

:func:`create_onnx_session` is the session factory it uses: the CPU provider with every graph optimisation
(``ORT_ENABLE_ALL``); benchmarks time sessions made by it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import ImageClassifierOutput, SemanticSegmenterOutput

from .configuration_clay import ClayConfig
from .errors import BandMismatchError, ChipSizeError, ClayConfigError, ClayInputError
from .export import INPUT_NAMES, file_sha256, read_export_info
from .image_processing_clay import ClayImageProcessor
from .modeling_clay import ClayModelOutput

__all__ = ["OnnxClayModel", "create_onnx_session", "load_onnx_encoder"]

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


def create_onnx_session(
    path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None, optimize: bool = True
):
    """An ``onnxruntime.InferenceSession`` for ``path``: the CPU provider, all graph optimisations (``optimize``).

    ``threads`` sets the intra-op thread count (None: onnxruntime's default, one per physical core).
    """
    try:
        import onnxruntime as ort
    except ImportError as err:  # the `export` extra
        raise ImportError("running ONNX files needs onnxruntime: pip install 'clay_hf[export]'") from err

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])


class OnnxClayModel:
    """An exported Clay ONNX file in onnxruntime, called like the torch model it was exported from.

    Args:
        path: the ``.onnx`` file; its JSON (``FILE.json``) is read beside it, or from the file's metadata.
        threads, providers: passed to :func:`create_onnx_session`.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ClayInputError(f"{self.path} does not exist; export a model first (scripts/export.py)")
        self.info = read_export_info(self.path)
        if self.info.get("format") != "onnx":
            raise ClayInputError(f"{self.path} is a {self.info.get('format')} export, not an ONNX file")
        self.config = ClayConfig.from_dict(self.info["config"])
        self.task = self.info["task"]
        self.output_names = [o["name"] for o in self.info["outputs"]]
        self.num_bands = len(self.info["wavelengths"])
        self.dtype = getattr(torch, self.info["dtype"])
        self.device = torch.device("cpu")
        self.name_or_path = os.fspath(self.path)
        self.processor = ClayImageProcessor.from_dict(self.info["image_processor"])
        self.session = create_onnx_session(self.path, threads=threads, providers=providers)

    # ---------------------------------------------------------------- what the file takes

    def preprocess(self, images: Any, **kwargs: Any):
        """Raw chips -> model inputs with the export's processor and bands (``kwargs`` as for the processor)."""
        if self.info["sensor"] is not None:
            kwargs.setdefault("sensor", self.info["sensor"])
            if self.info["band_names"] is not None:
                kwargs.setdefault("band_names", self.info["band_names"])
        else:
            for key in ("wavelengths", "mean", "std", "gsd"):
                kwargs.setdefault(key, self.info[key])
        return self.processor(images, **kwargs)

    def model_fingerprint(self) -> str:
        """What identifies the embeddings this file makes: ``onnx:`` and the sha256 of the file."""
        return f"onnx:{file_sha256(self.path)}"

    # ---------------------------------------------------------------- the call

    def __call__(
        self,
        pixel_values,
        wavelengths,
        gsd,
        time=None,
        latlon=None,
        valid_mask=None,
        return_dict: bool = True,
    ):
        """Run the file; arguments as for ``ClayModel.forward`` (``valid_mask`` is not used, as by the model)."""
        feed = self._feed(pixel_values, wavelengths, gsd, time, latlon)
        outputs = [torch.from_numpy(np.asarray(x)) for x in self.session.run(self.output_names, feed)]
        if not return_dict:
            return tuple(outputs)
        named = dict(zip(self.output_names, outputs))
        if self.task == "feature-extraction":
            return ClayModelOutput(**named)
        if self.task == "image-classification":
            return ImageClassifierOutput(**named)
        return SemanticSegmenterOutput(**named)

    def _feed(self, pixel_values, wavelengths, gsd, time, latlon) -> dict[str, np.ndarray]:
        pixels = _array(pixel_values, _NUMPY_DTYPES[self.info["dtype"]])
        if pixels.ndim != 4:
            raise ClayInputError(
                f"pixel_values must be a (B, C, H, W) array, got shape {pixels.shape}; add a batch "
                "dimension with pixel_values[None] or use preprocess()"
            )
        b, c, height, width = pixels.shape
        if c != self.num_bands:
            bands = f" ({', '.join(self.info['band_names'])})" if self.info["band_names"] else ""
            what = f"sensor {self.info['sensor']!r}" if self.info["sensor"] else "its wavelengths"
            raise BandMismatchError(
                f"{self.path.name} was exported for {self.num_bands} bands of {what}{bands}, got pixel_values with "
                f"{c} bands; pass those bands in that order, or export the model again for your bands",
                num_bands=c,
                num_values=self.num_bands,
            )
        self._check_size(b, height, width)
        waves = _array(wavelengths, np.float32).reshape(-1)
        if waves.shape != (c,):
            raise BandMismatchError(
                f"pixel_values has {c} bands but wavelengths has shape {waves.shape}; expected ({c},)",
                num_bands=c,
                num_values=waves.shape[0],
            )
        gsd = _array(gsd, np.float32)
        if gsd.ndim == 0 or gsd.shape == (1,):
            gsd = np.full((b,), gsd.reshape(()), dtype=np.float32)  # one gsd for every chip
        if gsd.shape != (b,):
            raise ClayInputError(f"gsd must be a number (metres) or a ({b},) array, got shape {gsd.shape}")
        meta = {}
        for name, value in (("time", time), ("latlon", latlon)):
            value = np.zeros((b, 4), np.float32) if value is None else _array(value, np.float32)
            if value.shape != (b, 4):
                raise ClayInputError(
                    f"{name} must have shape ({b}, 4) (sines and cosines, see ClayImageProcessor), "
                    f"got {value.shape}; pass None when unknown"
                )
            meta[name] = value
        values = (pixels, waves, gsd, meta["time"], meta["latlon"])
        return dict(zip(INPUT_NAMES, (np.ascontiguousarray(v) for v in values)))

    def _check_size(self, batch: int, height: int, width: int) -> None:
        p = self.info["patch_size"]
        fixed_batch, _, fixed_h, fixed_w = self.info["inputs"][0]["shape"]  # ints where the export fixed them
        if isinstance(fixed_batch, int) and batch != fixed_batch:
            raise ClayInputError(
                f"{self.path.name} was exported for batches of {fixed_batch} only (dynamic=False), got {batch} chips"
            )
        if isinstance(fixed_h, int) and (height, width) != (fixed_h, fixed_w):
            raise ChipSizeError(
                f"{self.path.name} was exported for {fixed_h}x{fixed_w} chips only (dynamic=False), "
                f"got {height}x{width}"
            )
        if height < p or width < p or height % p or width % p:
            raise ChipSizeError(
                f"chip of {height}x{width} pixels does not fit patch_size {p}: height and width must "
                f"be positive multiples of {p}"
            )

    def __repr__(self) -> str:
        return f"OnnxClayModel({self.name_or_path!r}, task={self.task!r}, bands={self.num_bands})"


def load_onnx_encoder(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, device=None, threads: int | None = None
) -> OnnxClayModel:
    """An exported encoder for the embedding functions (:func:`clay_hf.apps.embeddings.load_embedding_model`).

    ``dtype`` must be the one the file was exported in (a file has one), ``device`` the CPU (or None).
    """
    model = OnnxClayModel(path, threads=threads)
    if model.task != "feature-extraction":
        raise ClayInputError(
            f"{path} is an exported {model.task} head (outputs {', '.join(model.output_names)}); embeddings need an "
            "encoder export (last_hidden_state): export the model folder's ClayModel"
        )
    if dtype != model.dtype:
        file_dtype = str(model.dtype).removeprefix("torch.")
        raise ClayConfigError(
            f"{path} was exported in {file_dtype}, not {str(dtype).removeprefix('torch.')}: pass {file_dtype} as dtype= "
            "(an exported file has one dtype), or export the model again in the dtype you want"
        )
    if device is not None and torch.device(device).type != "cpu":
        raise ClayConfigError(
            f"the ONNX backend runs on the CPU (onnxruntime's CPU provider), got device={str(device)!r}; pass "
            "device='cpu', or use the torch backend on that device"
        )
    return model


def _array(value: Any, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.float() if value.dtype == torch.bfloat16 else value
        value = value.numpy()
    return np.asarray(value, dtype=dtype)
