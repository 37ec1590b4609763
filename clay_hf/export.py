"""Export a Clay model for deployment: an ONNX file (for onnxruntime and friends) or a ``torch.export`` ``.pt2``.

    >>> from clay_hf.export import export_model
    >>> info = export_model("models/clay-v1.5", "deploy/clay.onnx", sensor="sentinel-2-l2a", chip_size=256)
    >>> info["inputs"][0]["shape"]                       # ['batch', 10, 'height', 'width']

The exported graph is the transformers forward with positional inputs and named outputs:

==================  ==============  =========================================================================
input               shape           meaning (as :class:`~clay_hf.ClayImageProcessor` returns it)
==================  ==============  =========================================================================
``pixel_values``    (B, C, H, W)    normalised bands, in the export's dtype; H and W multiples of the patch
``wavelengths``     (C,)            float32 micrometres (an input: the weight generator is part of the graph)
``gsd``             (B,)            float32 metres, one per chip (the processor's scalar is repeated)
``time``            (B, 4)          float32 week/hour sines and cosines, zeros where unknown
``latlon``          (B, 4)          float32 location sines and cosines, zeros where unknown
==================  ==============  =========================================================================

Outputs: ``last_hidden_state`` (B, 1+L, D) and ``pooler_output`` (B, D) for an encoder (``ClayModel``; a
``ClayForPreTraining`` folder exports its encoder), ``logits`` for a task head ((B, K) for
``ClayForImageClassification``, (B, K, H, W) for ``ClayForSemanticSegmentation``). The batch and the chip size are
dynamic (H and W any multiples of the patch size), the band count C is fixed to the bands exported for, because the
normalisation recorded beside the file is theirs; the wavelengths stay an input, so another band set of C bands
runs through the same file. ``wavelengths`` is kept an input by default rather than folded in as a constant: the
file then has the transformers forward's signature, and the generator costs well under 1% of a forward pass.

Beside ``FILE`` the export writes ``FILE.json`` (:func:`export_info_path`) and ``FILE.preprocessor_config.json``
(:func:`processor_config_path`: the :class:`~clay_hf.ClayImageProcessor` config, so
``ClayImageProcessor.from_pretrained(that_path)`` preprocesses the same way; the JSON holds it too). The JSON's
fields: ``format`` (``"onnx"`` or ``"pt2"``), ``file`` and its ``sha256``, ``task``, ``sensor``, ``band_names``,
``wavelengths``, ``mean``/``std`` (per band, ``(x - mean) / std``), ``gsd`` (metres), ``is_sar_db`` (convert to
decibels first), ``patch_size``, ``chip_size`` (the size it was traced and checked at), ``dynamic``, ``dtype``,
``opset`` (ONNX only), ``inputs``/``outputs`` (names, shapes, dtypes), ``id2label`` (heads), ``model`` (class,
source, provenance label and record), ``config`` (the model's ``config.json``), ``check`` (largest difference to
the eager model on the traced inputs), ``versions`` (clay_hf, torch, onnx), ``image_processor``. An ONNX file carries the same JSON in
its metadata (``clay_hf_export``). Files are written atomically: each appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .atomic import atomic_path, atomic_write_text
from .errors import ChipSizeError, ClayConfigError, ClayInputError
from .image_processing_clay import ClayImageProcessor
from .sensors import get_sensor

__all__ = [
    "EXPORT_FORMATS",
    "INPUT_NAMES",
    "DEFAULT_OPSET",
    "METADATA_KEY",
    "ClayExportModule",
    "export_model",
    "export_info_path",
    "processor_config_path",
    "example_inputs",
    "file_sha256",
    "load_model_for_export",
    "read_export_info",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "pt2")
INPUT_NAMES = ("pixel_values", "wavelengths", "gsd", "time", "latlon")
DEFAULT_OPSET = 18  # the opset of torch's ONNX function library; onnxruntime >= 1.14 runs it
METADATA_KEY = "clay_hf_export"  # the JSON in the ONNX file's metadata and the .pt2 file's extra files
INFO_FORMAT = "clay_hf export 1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_TASKS = {
    "ClayModel": "feature-extraction",
    "ClayForPreTraining": "feature-extraction",  # exported as its encoder
    "ClayForImageClassification": "image-classification",
    "ClayForSemanticSegmentation": "semantic-segmentation",
}
_MAX_GRID = 512  # patches per side the dynamic shapes allow: 4096 px at patch size 8


def export_info_path(path: str | os.PathLike) -> Path:
    """The JSON beside an exported file: ``clay.onnx`` -> ``clay.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def processor_config_path(path: str | os.PathLike) -> Path:
    """The image processor config beside an exported file: ``clay.onnx`` -> ``clay.onnx.preprocessor_config.json``
    (``ClayImageProcessor.from_pretrained`` takes the file's path)."""
    path = Path(path)
    return path.with_name(path.name + ".preprocessor_config.json")


def read_export_info(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON written beside an exported file (``FILE.json``), or the copy inside an ONNX file without one."""
    path = Path(path)
    sidecar = export_info_path(path)
    if sidecar.is_file():
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    elif path.suffix.lower() == ".onnx" and path.is_file():
        import onnx

        metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if METADATA_KEY not in metadata:
            raise ClayInputError(
                f"{path} was not exported by clay_hf: it has no {sidecar.name} and no "
                f"{METADATA_KEY!r} metadata; export it with scripts/export.py"
            )
        info = json.loads(metadata[METADATA_KEY])
    else:
        raise ClayInputError(
            f"{path} is not an exported Clay file with its {sidecar.name} beside it; export one with scripts/export.py"
        )
    if info.get("format_version") != INFO_FORMAT:
        raise ClayInputError(f"{sidecar} is not a clay_hf export record (expected {INFO_FORMAT!r})")
    return info


# --------------------------------------------------------------------------------------------------
# the traced module
# --------------------------------------------------------------------------------------------------
class ClayExportModule(nn.Module):
    """A Clay model's transformers forward with the positional inputs of :data:`INPUT_NAMES` and a tuple of outputs.

    ``output_names`` are ``("last_hidden_state", "pooler_output")`` for an encoder, ``("logits",)`` for a head.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.task = _task(model)
        self.output_names = ("last_hidden_state", "pooler_output") if self.task == "feature-extraction" else ("logits",)

    def forward(self, pixel_values, wavelengths, gsd, time, latlon) -> tuple[torch.Tensor, ...]:
        out = self.model(pixel_values, wavelengths, gsd, time=time, latlon=latlon, return_dict=True)
        return tuple(out[name] for name in self.output_names)


def _task(model: nn.Module) -> str:
    name = type(model).__name__
    if name not in _TASKS or getattr(getattr(model, "config", None), "model_type", None) != "clay":
        raise ClayInputError(f"expected a Clay model ({', '.join(_TASKS)}), got {name}")
    return _TASKS[name]


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
def load_model_for_export(
    model_or_folder: nn.Module | str | os.PathLike, dtype: str = "float32", trust_remote_code: bool = False
) -> nn.Module:
    """The model to trace, in eval mode and ``dtype``: a Clay model object (a copy when it must change), or a folder /
    Hub id loaded with the class its ``config.json`` names (a ``ClayForPreTraining`` folder as its encoder).

    ``trust_remote_code=True`` loads the folder's own ``modeling_clay.py`` through the transformers Auto classes.
    """
    if dtype not in _DTYPES:
        raise ClayConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if isinstance(model_or_folder, nn.Module):
        model = model_or_folder
        if type(model).__name__ == "ClayForPreTraining":
            model = model.clay
        _task(model)
        model = _plain_copy(model, _DTYPES[dtype])
    else:
        model = _load_folder(model_or_folder, _DTYPES[dtype], trust_remote_code)
    return model.eval()


def _plain_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` itself when it can be traced as it is, else a copy in ``dtype`` without the CPU inference tunings."""
    from .cpu_inference import CpuPrepackedLinear, prepare_for_cpu_inference
    from .modeling_clay import ClayPreTrainedModel

    prepared = any(isinstance(m, CpuPrepackedLinear) for m in model.modules())
    param = next(model.parameters())
    if not prepared and param.dtype == dtype and param.device.type == "cpu" and not model.training:
        return model
    model = copy.deepcopy(model)
    if prepared and isinstance(model, ClayPreTrainedModel):
        prepare_for_cpu_inference(model, enabled=False)  # oneDNN's private ops have no ONNX form
    return model.to(device="cpu", dtype=dtype)


def _load_folder(name_or_path: str | os.PathLike, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoConfig

    from . import modeling_clay

    where = os.fspath(name_or_path)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ClayConfigError(
            f"{where} is not a Clay model folder or Hub id: its config.json cannot be read ({type(err).__name__}: "
            f"{str(err)[:200]}); pass a folder written by save_pretrained or scripts/convert_clay_checkpoint.py"
        ) from err
    if getattr(config, "model_type", None) != "clay":
        raise ClayConfigError(
            f"{where} is not a Clay model: its config.json says model_type {getattr(config, 'model_type', None)!r}, "
            "expected 'clay'"
        )
    architecture = (getattr(config, "architectures", None) or ["ClayModel"])[0]
    heads = {
        "ClayForImageClassification": "AutoModelForImageClassification",
        "ClayForSemanticSegmentation": "AutoModelForSemanticSegmentation",
    }
    if trust_remote_code:
        # The folder's own classes, even where clay_hf has registered its classes for the Auto classes.
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        auto = heads.get(architecture, "AutoModel")
        reference = (getattr(config, "auto_map", None) or {}).get(auto)
        if reference is None:
            raise ClayConfigError(
                f"{where} has no remote code for {auto} (no auto_map entry in its config.json); export it without "
                "trust_remote_code"
            )
        cls = get_class_from_dynamic_module(reference, where)
    else:
        cls = getattr(modeling_clay, architecture) if architecture in heads else modeling_clay.ClayModel
    return cls.from_pretrained(where, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# bands and inputs
# --------------------------------------------------------------------------------------------------
def _resolve_bands(
    sensor: str | None,
    band_names: Sequence[str] | None,
    wavelengths: Sequence[float] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    gsd: float | None,
) -> dict[str, Any]:
    """The band facts the export is made for: a sensor of the table (optionally some of its bands), or explicit
    wavelengths with their mean, std and gsd (the processor's rule)."""
    if sensor is not None:
        table = get_sensor(sensor)
        if band_names is not None:
            table = table.select(band_names)
        bands = {
            "sensor": table.name,
            "band_names": list(table.band_names),
            "wavelengths": list(table.wavelengths_um),
            "mean": list(table.mean),
            "std": list(table.std),
            "gsd": table.gsd_m,
            "is_sar_db": table.is_sar_db,
        }
        overrides = {"wavelengths": wavelengths, "mean": mean, "std": std}
        bands.update({k: [float(x) for x in v] for k, v in overrides.items() if v is not None})
        if gsd is not None:
            bands["gsd"] = float(gsd)
    elif wavelengths is None:
        raise ClayInputError(
            "say which bands the exported file takes: pass sensor= (e.g. 'sentinel-2-l2a'), or wavelengths= "
            "(micrometres) with mean=, std= and gsd="
        )
    else:
        missing = [name for name, value in (("mean", mean), ("std", std), ("gsd", gsd)) if value is None]
        if missing:
            raise ClayInputError(
                f"with wavelengths= and no sensor, also pass {', '.join(m + '=' for m in missing)} (one mean and std "
                "per band, gsd in metres): they are recorded beside the file so that preprocessing stays the same"
            )
        bands = {
            "sensor": None,
            "band_names": list(band_names) if band_names is not None else None,
            "wavelengths": [float(w) for w in wavelengths],
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "gsd": float(gsd),
            "is_sar_db": False,
        }
    counts = {k: len(bands[k]) for k in ("band_names", "wavelengths", "mean", "std") if bands[k] is not None}
    if len(set(counts.values())) > 1:
        raise ClayInputError(f"one value per band is needed in each of {', '.join(counts)}; got {counts}")
    return bands


def example_inputs(
    num_bands: int,
    chip_size: int,
    batch_size: int = 2,
    wavelengths: Sequence[float] | None = None,
    gsd: float = 10.0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Seeded inputs in :data:`INPUT_NAMES` order to trace and check an export with."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch_size, num_bands, chip_size, chip_size, generator=generator).to(dtype)  # (B, C, H, W)
    waves = (
        torch.tensor(wavelengths, dtype=torch.float32)
        if wavelengths is not None
        else torch.linspace(0.4, 2.2, num_bands)
    )
    angles = torch.rand(batch_size, 2, generator=generator) * 6.283  # (B, 2)
    circle = torch.cat((angles.sin(), angles.cos()), dim=1)  # (B, 4)
    return pixels, waves, torch.full((batch_size,), float(gsd)), circle, circle.flip(1)


def _dynamic_shapes(patch_size: int) -> dict[str, Any]:
    """Batch dynamic everywhere; H and W any multiple of the patch size (``P * grid``)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=65536)
    grid_h, grid_w = Dim("grid_h", min=1, max=_MAX_GRID), Dim("grid_w", min=1, max=_MAX_GRID)
    return {
        "pixel_values": {0: batch, 2: patch_size * grid_h, 3: patch_size * grid_w},
        "wavelengths": None,
        "gsd": {0: batch},
        "time": {0: batch},
        "latlon": {0: batch},
    }


def _shapes(module: ClayExportModule, num_bands: int, dynamic: bool, batch: int, chip: int) -> dict[str, list]:
    config = module.model.config
    b, h, w = ("batch", "height", "width") if dynamic else (batch, chip, chip)
    tokens = "1 + height * width / patch_size^2" if dynamic else 1 + (chip // config.patch_size) ** 2
    inputs = {
        "pixel_values": [b, num_bands, h, w],
        "wavelengths": [num_bands],
        "gsd": [b],
        "time": [b, 4],
        "latlon": [b, 4],
    }
    if module.task == "feature-extraction":
        outputs = {"last_hidden_state": [b, tokens, config.hidden_size], "pooler_output": [b, config.hidden_size]}
    elif module.task == "image-classification":
        outputs = {"logits": [b, config.num_labels]}
    else:
        outputs = {"logits": [b, config.num_labels, h, w]}
    return {"inputs": inputs, "outputs": outputs}


# --------------------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------------------
def export_model(
    model_or_folder: nn.Module | str | os.PathLike,
    output: str | os.PathLike,
    format: Literal["onnx", "pt2"] | None = None,
    *,
    sensor: str | None = None,
    band_names: Sequence[str] | None = None,
    wavelengths: Sequence[float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    gsd: float | None = None,
    chip_size: int = 256,
    batch_size: int = 2,
    dtype: str = "float32",
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    trust_remote_code: bool = False,
    check: bool = True,
) -> dict[str, Any]:
    """Export a Clay model to ``output`` (ONNX or ``torch.export`` ``.pt2``) with its JSON beside it; returns the JSON.

    Args:
        model_or_folder: a Clay model (``ClayModel``, a task head, ``ClayForPreTraining`` for its encoder) or a
            folder / Hub id of one.
        output: the file to write; its folder must exist. ``format`` defaults to its suffix (``.onnx``, ``.pt2``).
        sensor, band_names: the sensor-table bands the file takes (``band_names`` a subset, in the order of the
            band axis); or ``wavelengths`` (micrometres) with ``mean``, ``std`` and ``gsd`` for other imagery.
            ``wavelengths``/``mean``/``std``/``gsd`` given with a sensor override its numbers.
        chip_size: the chip side the export is traced and checked at (a multiple of the patch size).
        batch_size: the batch it is traced and checked at.
        dtype: the weights' and ``pixel_values``' dtype (``float16``/``bfloat16`` files are for GPUs: onnxruntime's
            CPU provider lacks some of their kernels).
        dynamic: batch and chip size left symbolic (H, W any multiple of the patch size); False fixes both.
        opset: ONNX opset.
        trust_remote_code: load a folder through its own ``modeling_clay.py`` (the Hub remote code).
        check: run the exported file on the traced inputs and record its largest difference to the eager model.

    Raises:
        ClayConfigError: not a Clay model folder, an unknown format or dtype. UnknownSensorError: an unknown
        sensor. ChipSizeError: a chip size that is not a positive multiple of the patch size. ClayInputError: the
        output's folder does not exist, or the bands are not described.
    """
    output = Path(output)
    format = format or output.suffix.lower().lstrip(".")
    if format not in EXPORT_FORMATS:
        raise ClayConfigError(
            f"format must be one of {', '.join(EXPORT_FORMATS)} (or an output ending in .onnx or "
            f".pt2), got {format!r} for {output}"
        )
    if format == "onnx" and dtype == "bfloat16":
        raise ClayConfigError(
            "dtype bfloat16 is for .pt2 files; an ONNX file is float32 or float16 (onnxruntime's CPU "
            "provider has no bfloat16 kernels for most of the graph)"
        )
    if not output.parent.is_dir():
        raise ClayInputError(
            f"the folder of output {output} does not exist: create {output.parent} first, or choose another output path"
        )
    bands = _resolve_bands(sensor, band_names, wavelengths, mean, std, gsd)
    model = load_model_for_export(model_or_folder, dtype=dtype, trust_remote_code=trust_remote_code)
    patch_size = model.config.patch_size
    if (
        isinstance(chip_size, bool)
        or not isinstance(chip_size, int)
        or chip_size < patch_size
        or chip_size % patch_size
    ):
        raise ChipSizeError(
            f"the chip size {chip_size} (chip_size=) is not a positive multiple of the model's patch size "
            f"{patch_size}; use {max(patch_size, round(chip_size / patch_size) * patch_size)}"
        )
    module = ClayExportModule(model).eval()
    num_bands = len(bands["wavelengths"])
    inputs = example_inputs(num_bands, chip_size, batch_size, bands["wavelengths"], bands["gsd"], _DTYPES[dtype])
    shapes = _dynamic_shapes(patch_size) if dynamic else None
    with torch.no_grad():
        program = torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)
        expected = module(*inputs)
    info = _export_info(module, model_or_folder, bands, format, output, dtype, dynamic, batch_size, chip_size, opset)
    processor = ClayImageProcessor(patch_size=patch_size, sensor=bands["sensor"])
    info["image_processor"] = processor.to_dict()
    if format == "onnx":
        _write_onnx(program, module.output_names, output, info, opset)
    else:
        _write_pt2(program, output, info)
    info["sha256"] = file_sha256(output)
    if check:
        info["check"] = _check(output, format, inputs, expected, module.output_names, batch_size, chip_size)
    atomic_write_text(export_info_path(output), json.dumps(info, indent=1) + "\n")
    atomic_write_text(processor_config_path(output), processor.to_json_string())
    logger.info("exported %s (%s, %s) to %s", type(model).__name__, format, dtype, output)
    return info


def _export_info(module, source, bands, format, output, dtype, dynamic, batch, chip, opset) -> dict[str, Any]:
    from . import __version__
    from .provenance import model_provenance

    model = module.model
    config = model.config
    provenance = model_provenance(model)
    info: dict[str, Any] = {
        "format_version": INFO_FORMAT,
        "format": format,
        "file": output.name,
        "task": module.task,
        **bands,
        "patch_size": config.patch_size,
        "chip_size": chip,
        "dynamic": {"batch": dynamic, "height_width": f"multiples of {config.patch_size}" if dynamic else None},
        "dtype": dtype,
        "opset": opset if format == "onnx" else None,
        **_shapes(module, len(bands["wavelengths"]), dynamic, batch, chip),
    }
    input_dtypes = {"pixel_values": dtype}
    info["inputs"] = [
        {"name": n, "shape": s, "dtype": input_dtypes.get(n, "float32")} for n, s in info["inputs"].items()
    ]
    info["outputs"] = [{"name": n, "shape": s, "dtype": dtype} for n, s in info["outputs"].items()]
    if module.task != "feature-extraction":
        info["id2label"] = {str(k): v for k, v in config.id2label.items()}
    info["model"] = {
        "class": type(model).__name__,
        "source": os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(model, "name_or_path", ""),
        "provenance": provenance.label,
        "provenance_record": provenance.to_dict(),
    }
    info["config"] = config.to_dict()
    info["versions"] = {"clay_hf": __version__, "torch": torch.__version__.split("+")[0]}
    return info


def _write_onnx(program, output_names: tuple[str, ...], output: Path, info: dict[str, Any], opset: int) -> None:
    import onnx

    with _quiet_onnx_exporter():
        onnx_program = torch.onnx.export(
            program, output_names=list(output_names), opset_version=opset, dynamo=True, optimize=True, verbose=False
        )
    info["versions"]["onnx"] = onnx.__version__
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(info)
    with atomic_path(output) as tmp:
        onnx_program.save(tmp, external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)


def _write_pt2(program, output: Path, info: dict[str, Any]) -> None:
    with atomic_path(output) as tmp:
        torch.export.save(program, tmp, extra_files={METADATA_KEY: json.dumps(info)})


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """The exporter prints its steps and warns about torchvision ops; only clay_hf's own log line is wanted."""
    import warnings

    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks (the ``sha256`` of the JSON)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(output: Path, format: str, inputs, expected, names, batch: int, chip: int) -> dict[str, Any]:
    """Run the written file on the traced inputs: its largest absolute difference to the eager model, per output."""
    if format == "onnx":
        from .onnx_runtime import create_onnx_session

        session = create_onnx_session(output)
        feed = dict(zip(INPUT_NAMES, (x.numpy() for x in inputs)))
        got = [torch.from_numpy(x) for x in session.run(list(names), feed)]
    else:
        with torch.no_grad():
            got = list(torch.export.load(output).module()(*inputs))
    diffs = {n: float((g.float() - e.float()).abs().max()) for n, g, e in zip(names, got, expected)}
    return {"batch_size": batch, "chip_size": chip, "max_abs_diff": diffs}
