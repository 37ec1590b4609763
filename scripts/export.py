#!/usr/bin/env python
"""Export a Clay model to ONNX (for onnxruntime) or a torch.export .pt2 file, with its JSON beside it.

    python scripts/export.py MODEL --output FILE [--format onnx|pt2] (--sensor NAME | --wavelengths ... --mean ...
        --std ... --gsd M) [--chip-size N] [--dtype float32|float16]

MODEL is a Clay model folder or Hub id: a ClayModel or ClayForPreTraining folder exports the encoder
(last_hidden_state, pooler_output), a fine-tuned ClayForImageClassification or ClayForSemanticSegmentation folder
its head (logits). The inputs are those of the transformers forward (pixel_values, wavelengths, gsd, time, latlon);
the batch and the chip size stay dynamic (H and W any multiple of the patch size), the band count is that of the
bands given. FILE is written atomically, then FILE.json (sensor, band order, wavelengths, normalisation, patch size,
opset, versions, the model's provenance, input and output names and shapes; see clay_hf.export) and
FILE.preprocessor_config.json (the ClayImageProcessor config). The file is checked against the eager model on the
traced inputs; the largest difference is in the summary line and the JSON. Exit status: 0 done, 1 the export failed,
2 a mistake in the command (not a Clay folder, an unknown sensor, a chip size that is not a multiple of the patch
size, an output folder that does not exist).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clay_hf import cli  # noqa: E402
from clay_hf.errors import ClayConfigError  # noqa: E402

EXAMPLES = """examples:
  # the encoder for Sentinel-2 L2A, for onnxruntime (dynamic batch and chip size, traced at 256 px)
  python scripts/export.py models/clay-v1.5 --output deploy/clay-s2.onnx --sensor sentinel-2-l2a

  # a torch.export program of the same model, for torch.export.load() without clay_hf's code
  python scripts/export.py models/clay-v1.5 --output deploy/clay-s2.pt2 --sensor sentinel-2-l2a

  # an RGB drone camera (no sensor table entry), float16 for a GPU runtime
  python scripts/export.py models/clay-v1.5 --output deploy/clay-rgb.onnx --wavelengths 0.65 0.56 0.48 \\
      --mean 120 115 100 --std 50 45 45 --gsd 0.1 --dtype float16

  # a fine-tuned segmentation head through its folder's own remote code
  python scripts/export.py runs/seg/final --output deploy/seg.onnx --sensor sentinel-2-l2a --trust-remote-code

then:
  python scripts/embed.py scenes/ --model deploy/clay-s2.onnx --backend onnx --output emb/ --sensor sentinel-2-l2a
"""


@dataclasses.dataclass(kw_only=True)
class ExportArguments:
    """The export (``clay_hf.export.export_model``)."""

    model: str = dataclasses.field(
        metadata={"positional": True, "help": "a Clay model folder or Hub id", "library_name": "model_or_folder"}
    )
    output: Path = dataclasses.field(metadata={"help": "the file to write (.onnx or .pt2); its folder must exist"})
    format: Literal["onnx", "pt2"] | None = dataclasses.field(
        default=None, metadata={"help": "onnx or pt2 (default: from the --output suffix)"}
    )
    chip_size: int = dataclasses.field(
        default=256, metadata={"help": "chip side to trace and check at, a multiple of the patch size"}
    )
    dtype: Literal["float32", "float16", "bfloat16"] = dataclasses.field(
        default="float32", metadata={"help": "weights and pixel_values dtype (bfloat16: pt2 only)"}
    )
    static: bool = dataclasses.field(
        default=False,
        metadata={"help": "fix the batch (2) and the chip size (--chip-size) instead of leaving them dynamic"},
    )
    opset: int = dataclasses.field(default=18, metadata={"help": "ONNX opset"})
    trust_remote_code: bool = dataclasses.field(
        default=False, metadata={"help": "load MODEL through its own modeling_clay.py (the Hub remote code)"}
    )
    no_check: bool = dataclasses.field(
        default=False, metadata={"help": "do not run the written file against the eager model"}
    )

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        suffix = self.output.suffix.lower().lstrip(".")
        if self.format is None and suffix not in ("onnx", "pt2"):
            raise ClayConfigError(f"--output {self.output} ends in neither .onnx nor .pt2; pass --format onnx or pt2")
        if not self.output.parent.is_dir():
            raise ClayConfigError(
                f"the folder of --output {self.output} does not exist: create {self.output.parent} first, or choose "
                "another --output"
            )


@dataclasses.dataclass(kw_only=True)
class BandOptions:
    """The bands the file takes: a sensor of the table, or explicit numbers (as ``cli.SourceOptions``)."""

    sensor: str | None = dataclasses.field(
        default=None, metadata={"help": "sensor-table name of the bands (e.g. sentinel-2-l2a, landsat-c2l2-sr)"}
    )
    band_names: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "the sensor's bands the file takes, in the order of the band axis"}
    )
    wavelengths: list[float] | None = dataclasses.field(
        default=None, metadata={"help": "band centres in micrometres, in band order (a sensor not in the table)"}
    )
    mean: list[float] | None = dataclasses.field(
        default=None, metadata={"help": "per-band mean of the pixel values (with --wavelengths)"}
    )
    std: list[float] | None = dataclasses.field(
        default=None, metadata={"help": "per-band standard deviation of the pixel values (with --wavelengths)"}
    )
    gsd: float | None = dataclasses.field(
        default=None, metadata={"help": "ground sample distance in metres (with --wavelengths; default: the sensor's)"}
    )

    def __post_init__(self) -> None:
        from clay_hf.sensors import get_sensor

        if self.sensor is not None:
            get_sensor(self.sensor)  # an unknown name raises with a did-you-mean: exit 2
        elif self.wavelengths is None:
            raise ClayConfigError(
                "say which bands the file takes: --sensor NAME, or --wavelengths with --mean, --std and --gsd"
            )
        else:
            missing = [
                flag
                for flag, value in (("--mean", self.mean), ("--std", self.std), ("--gsd", self.gsd))
                if value is None
            ]
            if missing:
                raise ClayConfigError(
                    f"with --wavelengths and no --sensor, also pass {', '.join(missing)}: they are recorded beside "
                    "the file so that preprocessing stays the same"
                )
        cli.check_band_counts(self.band_names, self.wavelengths, self.mean, self.std)


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([ExportArguments, BandOptions], description=__doc__.splitlines()[0], examples=EXAMPLES)


def parse_args(argv: list[str] | None = None) -> tuple[ExportArguments, BandOptions, cli.ScriptOptions]:
    return build_parser().parse(argv)


def export(args: ExportArguments, bands: BandOptions) -> int:
    from clay_hf.export import export_info_path, export_model

    info = export_model(
        args.model,
        args.output,
        args.format,
        sensor=bands.sensor,
        band_names=bands.band_names,
        wavelengths=bands.wavelengths,
        mean=bands.mean,
        std=bands.std,
        gsd=bands.gsd,
        chip_size=args.chip_size,
        dtype=args.dtype,
        dynamic=not args.static,
        opset=args.opset,
        trust_remote_code=args.trust_remote_code,
        check=not args.no_check,
    )
    print(summary_line(info, args.output, export_info_path(args.output)))
    return 0


def summary_line(info: dict, output: Path, sidecar: Path) -> str:
    """One line for a person: what was exported, for which bands, where, how close to eager, which model."""
    what = (
        f"{len(info['wavelengths'])} bands of {info['sensor']}"
        if info["sensor"]
        else f"{len(info['wavelengths'])} bands"
    )
    shape = (
        f"dynamic batch and H/W in {info['dynamic']['height_width']}"
        if info["dynamic"]["batch"]
        else (f"fixed {info['chip_size']} px")
    )
    check = ""
    if info.get("check"):
        worst = max(info["check"]["max_abs_diff"].values())
        check = f"; max |difference| to eager {worst:.1e} at {info['check']['chip_size']} px"
    mib = output.stat().st_size / 2**20
    return (
        f"exported {info['model']['class']} ({info['format']}, {info['dtype']}, {what}, {shape}) to {output} "
        f"({mib:.1f} MiB{check}) + {sidecar.name}; model: {info['model']['provenance']}"
    )


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), export, argv)


if __name__ == "__main__":
    sys.exit(main())
