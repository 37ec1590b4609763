#!/usr/bin/env python
"""Embed GeoTIFFs or a chip dataset with Clay into sharded GeoParquet, on one CPU or many GPUs.

    python scripts/embed.py INPUT --model PATH_OR_HUB_ID --output DIR [--batch-size N] [--dtype bfloat16]

INPUT is a GeoTIFF, a folder of GeoTIFFs (tiled into --chip-size chips), a chip dataset folder written by
scripts/prepare_chips.py, or a Hub dataset id. Every process takes its own work units (raster files or input
shards) and writes one shard per unit to DIR/data/<split>/, then a record of it (rows, bytes, a hash of its
chip ids) to DIR/.clay_embeddings/<split>/. A rerun skips the shards that match their record and writes the
others again (missing, truncated or damaged ones: each is named in a warning and counted in the summary), so
an interrupted job just runs again. DIR/embedding_info.json records the model (its name and a fingerprint of
its weights), the dtype, --outputs and the chipping settings; a rerun with others is refused, as is a
non-empty DIR that is not an embedding folder, unless --overwrite is given: it deletes the shards and records
clay_hf wrote there (other files stay) and starts again. One job writes into DIR at a time (a lock that dies
with the process). Several processes or GPUs:

    accelerate launch --num_processes 8 scripts/embed.py chips/ --model models/clay-v1.5 --output emb/
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 scripts/embed.py chips/ --model ... --output emb/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

EXAMPLES = """examples:
  # the sample chips, cls + mean-pooled embeddings
  python scripts/embed.py data/chips --model runs/tiny/final --output data/embeddings --outputs cls mean

  # a folder of Sentinel-2 GeoTIFFs (sensor given, as the files do not say it), 256 px chips, bf16 on a GPU
  python scripts/embed.py scenes/ --model made-with-clay/Clay-v1.5-hf --output emb/ --sensor sentinel-2-l2a \\
      --chip-size 256 --dtype bfloat16 --batch-size 64

  # an RGB drone mosaic with explicit band numbers (no sensor table entry)
  python scripts/embed.py drone.tif --model models/clay-v1.5 --output emb/ --wavelengths 0.65 0.56 0.48 \\
      --mean 120 115 100 --std 50 45 45 --chip-size 224

  # the same chips again with another model into the same folder: start it afresh
  python scripts/embed.py data/chips --model runs/small/final --output data/embeddings --overwrite
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("input", help="a GeoTIFF, a folder of GeoTIFFs, a chip dataset folder, or a Hub dataset id")
    add("--model", required=True, help="a Clay model folder or Hub id (ClayModel or ClayForPreTraining)")
    add("--output", required=True, help="output folder (GeoParquet shards under data/<split>/)")
    add("--batch-size", type=int, default=32, help="chips per batch (default: 32)")
    add("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model dtype (default: float32)")
    add("--outputs", nargs="+", choices=("cls", "mean", "patches"), default=["cls"],
        help="what to keep per chip: cls token, mean of patch tokens, all patch tokens (default: cls)")  # fmt: skip
    add("--split", default="train", help="split of a chip dataset, and the output split name (default: train)")
    add("--chip-size", type=int, default=256, help="chip side for GeoTIFF input, in pixels (default: 256)")
    add("--stride", type=int, default=None, help="step between chips for GeoTIFF input (default: the chip size)")
    add("--max-nodata", type=float, default=0.5, help="skip chips with more nodata than this fraction (default: 0.5)")
    add("--sensor", default=None, help="sensor of GeoTIFF input when the file does not say (e.g. sentinel-2-l2a)")
    add("--band-names", nargs="+", default=None, help="band names of GeoTIFF input, in file order")
    add("--datetime", default=None, help="capture date/time of GeoTIFF input (ISO 8601) when the file lacks it")
    add("--wavelengths", nargs="+", type=float, default=None, help="band centres in micrometres (unknown sensors)")
    add("--mean", nargs="+", type=float, default=None, help="per-band mean (unknown sensors)")
    add("--std", nargs="+", type=float, default=None, help="per-band std (unknown sensors)")
    add("--device", default=None, help="device (default: this process's accelerator device, else cpu)")
    add("--no-tune-allocator", action="store_true", help="on CPU, keep glibc's default mmap behaviour for big tensors")
    add("--overwrite", action="store_true",
        help="delete the embeddings in --output (written by another model, dtype, --outputs or chipping settings, "
             "or a folder that is not an embedding folder) and start again; other files stay")  # fmt: skip
    add("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("embed")
    import clay_hf  # noqa: F401  (registers the Auto classes)
    from clay_hf.apps.embeddings import embed_to_parquet, load_embedding_model
    from clay_hf.cpu_inference import prepare_for_cpu_inference
    from clay_hf.errors import ClayError

    try:
        from accelerate import PartialState

        # PartialState reads no ACCELERATE_USE_CPU (Accelerator does): ask for CPU (gloo) explicitly.
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or args.device == "cpu"
        state = PartialState(cpu=cpu)
        rank, world, device = state.process_index, state.num_processes, args.device or state.device
    except ImportError:  # accelerate is only in the train extra; one process then
        rank, world, device = 0, 1, args.device or "cpu"
    open_kwargs = {k: v for k, v in dict(sensor=args.sensor, band_names=args.band_names, datetime=args.datetime,
                                         wavelengths_um=args.wavelengths, mean=args.mean, std=args.std).items()
                   if v is not None}  # fmt: skip
    if str(device).startswith("cpu") and not args.no_tune_allocator:
        from clay_hf.runtime import tune_cpu_allocator

        tune_cpu_allocator()  # big activations from the heap: no page faults on every forward pass
    start = time.perf_counter()
    try:
        model = load_embedding_model(args.model, dtype=args.dtype, device=device)
        if str(device).startswith("cpu"):
            prepare_for_cpu_inference(model)  # prepacked linear weights, reduced-precision attention (opt-in)
        summary = embed_to_parquet(
            args.input, model, args.output, batch_size=args.batch_size, outputs=args.outputs, split=args.split,
            chip_size=args.chip_size, stride=args.stride, max_nodata_fraction=args.max_nodata, rank=rank,
            world_size=world, progress=not args.quiet, overwrite=args.overwrite, **open_kwargs,
        )  # fmt: skip
    except ClayError as err:
        log.error("%s", err)
        return 1
    elapsed = time.perf_counter() - start
    summary["seconds"] = round(elapsed, 2)
    summary["chips_per_s"] = round(summary["chips"] / elapsed, 2) if elapsed > 0 else None
    rewritten = len(summary["rewritten"])
    damaged = f", rewrote {rewritten} damaged shard{'s' if rewritten != 1 else ''}" if rewritten else ""
    removed = f", removed {len(summary['removed'])} old file(s)" if summary["removed"] else ""
    log.info("rank %d/%d: %d chips into %d shard(s), %d already done%s%s, %.1f chips/s", rank, world,
             summary["chips"], len(summary["written"]), len(summary["skipped"]), damaged, removed,
             summary["chips_per_s"] or 0.0)  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
