#!/usr/bin/env python
"""Embed GeoTIFFs or a chip dataset with Clay into sharded GeoParquet, on one CPU or many GPUs.

    python scripts/embed.py INPUT --model PATH_OR_HUB_ID --output DIR [--batch-size N] [--dtype bfloat16]
    python scripts/embed.py INPUT --model MODEL.onnx --backend onnx --output DIR

INPUT is a GeoTIFF, a folder of GeoTIFFs (tiled into --chip-size chips), a chip dataset folder written by
scripts/prepare_chips.py, or a Hub dataset id. Every process takes its own work units (raster files or input
shards) and writes one shard per unit to DIR/data/<split>/, then a record of it (rows, bytes, a hash of its
chip ids) to DIR/.clay_embeddings/<split>/. A rerun skips the shards that match their record and writes the
others again (missing, truncated or damaged ones: each is named in a warning and counted in the summary), so
an interrupted job just runs again. DIR/embedding_info.json records the model (its name and a fingerprint of
its weights), the dtype, --outputs and the chipping settings; a rerun with others is refused, as is a
non-empty DIR that is not an embedding folder, unless --overwrite is given: it deletes the shards and records
clay_hf wrote there (other files stay) and starts again. One job writes into DIR at a time (a lock that dies
with the process). On success each process prints one line (chips, shards, seconds, chips/s, the folder) and
writes its summary as JSON to DIR/embed_summary.json (DIR/embed_summary-rank<r>.json for rank r > 0 of a
multi-process job); ``--json`` prints that JSON too. ``--backend onnx`` embeds through an encoder exported by
scripts/export.py, with onnxruntime on the CPU: the same rows and GeoParquet (the info file names the ONNX file and
its sha256 as the model). Exit status: 0 done, 1 the work failed (a damaged input,
a folder another job is writing to), 2 a mistake in the command (an unknown sensor, an --output made with
another model or settings without --overwrite). Several processes or GPUs:

    accelerate launch --num_processes 8 scripts/embed.py chips/ --model models/clay-v1.5 --output emb/
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 scripts/embed.py chips/ --model ... --output emb/
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

EXAMPLES = """examples:
  # the sample chips, cls + mean-pooled embeddings
  python scripts/embed.py data/chips --model runs/tiny/final --output data/embeddings --outputs cls mean

  # a folder of Sentinel-2 GeoTIFFs (sensor given, as the files do not say it), 256 px chips, bf16 on a GPU
  python scripts/embed.py scenes/ --model made-with-clay/Clay-v1.5-hf --output emb/ --sensor sentinel-2-l2a \\
      --chip-size 256 --dtype bfloat16 --batch-size 64

  # an RGB drone mosaic with explicit band numbers (no sensor table entry)
  python scripts/embed.py drone.tif --model models/clay-v1.5 --output emb/ --wavelengths 0.65 0.56 0.48 \\
      --mean 120 115 100 --std 50 45 45 --chip-size 224

  # through an exported ONNX encoder (scripts/export.py), with onnxruntime on the CPU
  python scripts/embed.py data/chips --model deploy/clay-s2.onnx --backend onnx --output data/embeddings-onnx

  # the same chips again with another model into the same folder: start it afresh
  python scripts/embed.py data/chips --model runs/small/final --output data/embeddings --overwrite
"""

SUMMARY_FILE = "embed_summary.json"


@dataclasses.dataclass(kw_only=True)  # keyword-only: the fields keep the order of --help, required or not
class EmbedArguments:
    """The embedding job (``clay_hf.apps.embeddings.embed_to_parquet``); the source options are ``SourceOptions``."""

    input: str = dataclasses.field(
        metadata={
            "positional": True,
            "help": "a GeoTIFF, a folder of GeoTIFFs, a chip dataset folder, or a Hub dataset id",
        }
    )
    model: str = dataclasses.field(
        metadata={
            "help": "a Clay model folder or Hub id (ClayModel or ClayForPreTraining), or an exported encoder "
            "(.onnx, from scripts/export.py)"
        }
    )
    backend: Literal["auto", "torch", "onnx"] = dataclasses.field(
        default="auto",
        metadata={"help": "torch (transformers) or onnx (onnxruntime, CPU); auto: onnx for a --model ending in .onnx"},
    )
    output: str = dataclasses.field(
        metadata={"help": "output folder (GeoParquet shards under data/<split>/)", "library_name": "output_dir"}
    )
    batch_size: int = dataclasses.field(default=32, metadata={"help": "chips per batch"})
    dtype: Literal["float32", "bfloat16", "float16"] = dataclasses.field(
        default="float32", metadata={"help": "model dtype"}
    )
    outputs: list[Literal["cls", "mean", "patches"]] = dataclasses.field(
        default_factory=lambda: ["cls"],
        metadata={"help": "what to keep per chip: cls token, mean of patch tokens, all patch tokens"},
    )
    split: str = dataclasses.field(
        default="train", metadata={"help": "split of a chip dataset, and the output split name"}
    )
    chip_size: int = dataclasses.field(default=256, metadata={"help": "chip side for GeoTIFF input, in pixels"})
    stride: int | None = dataclasses.field(
        default=None, metadata={"help": "step between chips for GeoTIFF input (default: the chip size)"}
    )
    edge: Literal["shift", "drop"] = dataclasses.field(
        default="shift",
        metadata={
            "help": "raster input: the margin a stride leaves at the right and bottom edge is covered by a last chip "
            "moved inward (shift, overlapping its neighbour) or left out (drop)"
        },
    )
    device: str | None = dataclasses.field(
        default=None, metadata={"help": "device (default: this process's accelerator device, else cpu)"}
    )
    no_tune_allocator: bool = dataclasses.field(
        default=False, metadata={"help": "on CPU, keep glibc's default mmap behaviour for big tensors"}
    )
    overwrite: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "delete the embeddings in --output (written by another model, dtype, --outputs or chipping "
            "settings, or a folder that is not an embedding folder) and start again; other files stay"
        },
    )
    json: bool = dataclasses.field(
        default=False, metadata={"help": f"also print the JSON summary (always written to OUTPUT/{SUMMARY_FILE})"}
    )
    quiet: bool = dataclasses.field(default=False, metadata={"help": "no progress bar"})


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser(
        [EmbedArguments, cli.SourceOptions], description=__doc__.splitlines()[0], examples=EXAMPLES
    )


def parse_args(argv: list[str] | None = None) -> tuple[EmbedArguments, cli.SourceOptions, cli.ScriptOptions]:
    return build_parser().parse(argv)


def embed(args: EmbedArguments, source: cli.SourceOptions) -> int:
    import clay_hf  # noqa: F401  (registers the Auto classes)
    from clay_hf.apps.embeddings import embed_to_parquet, load_embedding_model
    from clay_hf.atomic import atomic_write_text
    from clay_hf.cpu_inference import prepare_for_cpu_inference

    try:
        from accelerate import PartialState

        # PartialState reads no ACCELERATE_USE_CPU (Accelerator does): ask for CPU (gloo) explicitly.
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or args.device == "cpu"
        state = PartialState(cpu=cpu)
        rank, world, device = state.process_index, state.num_processes, args.device or state.device
    except ImportError:  # accelerate is only in the train extra; one process then
        rank, world, device = 0, 1, args.device or "cpu"
    if str(device).startswith("cpu") and not args.no_tune_allocator:
        from clay_hf.runtime import tune_cpu_allocator

        tune_cpu_allocator()  # big activations from the heap: no page faults on every forward pass
    onnx = args.backend == "onnx" or (args.backend == "auto" and args.model.lower().endswith(".onnx"))
    if onnx:
        device = args.device or "cpu"  # onnxruntime's CPU provider, whatever accelerator the process has
    start = time.perf_counter()
    model = load_embedding_model(args.model, dtype=args.dtype, device=device, backend="onnx" if onnx else "torch")
    if str(device).startswith("cpu") and not onnx:
        prepare_for_cpu_inference(model)  # prepacked linear weights, reduced-precision attention (opt-in)
    summary = embed_to_parquet(
        args.input,
        model,
        args.output,
        batch_size=args.batch_size,
        outputs=args.outputs,
        split=args.split,
        chip_size=args.chip_size,
        stride=args.stride,
        edge=args.edge,
        max_nodata_fraction=source.max_nodata,
        rank=rank,
        world_size=world,
        progress=not args.quiet,
        overwrite=args.overwrite,
        **source.open_kwargs(),
    )
    elapsed = time.perf_counter() - start
    summary["seconds"] = round(elapsed, 2)
    summary["chips_per_s"] = round(summary["chips"] / elapsed, 2) if elapsed > 0 else None
    name = SUMMARY_FILE if rank == 0 else f"{Path(SUMMARY_FILE).stem}-rank{rank}.json"
    summary["summary_file"] = str(Path(args.output) / name)
    text = json.dumps(summary)
    atomic_write_text(summary["summary_file"], text + "\n")
    print(summary_line(summary))
    if args.json:
        print(text)
    return 0


def summary_line(summary: dict) -> str:
    """One line for a person: chips, shards, seconds, chips/s and the output folder (with what was skipped,
    rewritten or removed)."""
    shards = len(summary["written"])
    done = f", {len(summary['skipped'])} already done" if summary["skipped"] else ""
    rewritten = len(summary["rewritten"])
    damaged = f", rewrote {rewritten} damaged shard{'s' if rewritten != 1 else ''}" if rewritten else ""
    removed = f", removed {len(summary['removed'])} old file(s)" if summary["removed"] else ""
    who = f"rank {summary['rank']}/{summary['world_size']}: " if summary["world_size"] > 1 else ""
    folder = Path(summary["summary_file"]).parent
    return (
        f"{who}{summary['chips']} chips into {shards} shard{'s' if shards != 1 else ''}{done}{damaged}{removed} in "
        f"{summary['seconds']:.1f} s ({summary['chips_per_s'] or 0.0:.1f} chips/s) -> {folder} "
        f"(summary: {Path(summary['summary_file']).name})"
    )


def main(argv: list[str] | None = None) -> int:
    # a failed first run leaves no folder holding only the settings record (clay_hf.apps.embeddings.INFO_FILE)
    return cli.run(
        build_parser(), embed, argv, outputs=lambda args, _: [args.output], scratch_files=["embedding_info.json"]
    )


if __name__ == "__main__":
    sys.exit(main())
