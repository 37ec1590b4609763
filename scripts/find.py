#!/usr/bin/env python
"""Find things in embedded scenes from a few examples: detections (GeoJSON, GeoParquet) and score rasters (COG).

    python scripts/find.py EMBEDDINGS --positive LON,LAT [--positive LON,LAT ...] [--negative LON,LAT ...]
        --output DIR [--positive-id CHIP_ID] [--negative-id CHIP_ID] [--examples shapes.geojson]
        [--level chip|patch] [--method cosine|classifier] [--top-k N]

EMBEDDINGS is what scripts/embed.py wrote (a folder, every split read; one scene or many, of one sensor or
several), one of its shards, or a Hub dataset id of such a folder. Examples are places: --positive/--negative take
one LON,LAT point each (degrees, longitude first; repeat the flag for more, and write a negative coordinate as
--positive=-34.9,-8.0), --positive-id/--negative-id a chip id (or, at --level patch, CHIP_ID#ROW,COL for one
patch), --examples a GeoJSON/GeoPackage/GeoParquet of shapes (a "label" property positive/negative, default
positive): the chips or patches they cover. Every chip (--level chip) or patch token (--level patch, needs
embed.py --outputs cls patches) is scored by its cosine with the examples' Rocchio query (--method cosine) or by a
logistic regression of the examples against random background (--method classifier); chips with more nodata than
--max-nodata are never scored.

Writes into DIR: detections.geojson and detections.parquet (the --top-k best chips or patches, EPSG:4326, with
score, rank, chip id, source), examples.geojson (what each example resolved to), and per scene
<scene>_chip_scores.tif (and <scene>_patch_scores.tif at --level patch): float32 COGs in the scene's CRS, one
cell per chip or patch, nodata where nothing was scored; and find_summary.json. Prints one line at the end.
Exit status: 0 done; 2 a mistake in the command (a malformed point, a point outside every scene, an example on
nodata, an unknown chip id); 1 the input cannot serve (an empty folder, embeddings of different widths or models,
no patch tokens for --level patch). Nothing is written when the run fails.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clay_hf import cli  # noqa: E402
from clay_hf.geodata.chip_format import DEFAULT_MAX_NODATA  # noqa: E402

EXAMPLES = """examples:
  # embed a scene with its patch tokens, then find places like two points and unlike a third
  python scripts/embed.py scene.tif --model made-with-clay/Clay-v1.5-hf --output emb/ --outputs cls patches
  python scripts/find.py emb/ --positive 13.402,52.518 --positive 13.411,52.521 --negative 13.38,52.50 \\
      --output found/

  # patch level with a classifier, examples from a file of shapes (label: positive/negative), 50 detections
  python scripts/find.py emb/ --examples pools.geojson --level patch --method classifier --top-k 50 \\
      --output found-pools/

  # by chip id, a negative coordinate written with '=', search across every scene and sensor in emb/
  python scripts/find.py emb/ --positive-id scene-1a2b3c4d/0_256 --positive=-34.90,-8.05 --output found/
"""

SUMMARY_FILE = "find_summary.json"


@dataclasses.dataclass(kw_only=True)
class FindArguments:
    """The search (``clay_hf.apps.finder.Finder.find``)."""

    embeddings: str = dataclasses.field(
        metadata={
            "positional": True,
            "help": "an embedding folder written by scripts/embed.py, one shard, or a Hub dataset id",
        }
    )
    output: str = dataclasses.field(metadata={"help": "folder for detections.geojson/.parquet and the score rasters"})
    positive: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "action": "append",
            "nargs": None,
            "metavar": "LON,LAT",
            "help": "a place of what to find, in degrees (repeat the flag for more)",
        },
    )
    negative: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "action": "append",
            "nargs": None,
            "metavar": "LON,LAT",
            "help": "a place of what not to find (repeatable)",
        },
    )
    positive_id: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "action": "append",
            "nargs": None,
            "metavar": "CHIP_ID",
            "help": "a chip id of what to find (at --level patch also CHIP_ID#ROW,COL); repeatable",
        },
    )
    negative_id: list[str] | None = dataclasses.field(
        default=None,
        metadata={"action": "append", "nargs": None, "metavar": "CHIP_ID", "help": "a chip id to steer away from"},
    )
    examples: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "vector files of example shapes (GeoJSON, GeoPackage, GeoParquet; property 'label': "
            "positive or negative, default positive)"
        },
    )
    level: Literal["chip", "patch"] = dataclasses.field(
        default="chip", metadata={"help": "score every chip, or every patch token (needs embed.py --outputs patches)"}
    )
    method: Literal["cosine", "classifier"] = dataclasses.field(
        default="cosine",
        metadata={"help": "cosine with the examples' Rocchio query, or a logistic regression against background"},
    )
    top_k: int = dataclasses.field(default=100, metadata={"help": "detections written"})
    max_nodata: float = dataclasses.field(
        default=DEFAULT_MAX_NODATA, metadata={"help": "chips (and patches) with more nodata are never scored"}
    )
    background: int = dataclasses.field(
        default=256, metadata={"help": "random chips or patches the classifier takes as negatives"}
    )
    keep_examples: bool = dataclasses.field(
        default=False, metadata={"help": "rank the examples among the detections too"}
    )
    split: str | None = dataclasses.field(
        default=None, metadata={"help": "read one split of the embedding folder (default: every split)"}
    )
    embedding_column: Literal["embedding", "mean_embedding"] = dataclasses.field(
        default="embedding", metadata={"help": "the chip vectors: the cls token, or the mean of the patch tokens"}
    )
    no_center: bool = dataclasses.field(
        default=False, metadata={"help": "do not subtract the collection's mean embedding before the cosine"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the classifier's background draw"})
    json: bool = dataclasses.field(
        default=False, metadata={"help": f"also print the JSON summary (always written to OUTPUT/{SUMMARY_FILE})"}
    )
    quiet: bool = dataclasses.field(default=False, metadata={"help": "no progress bar"})

    def __post_init__(self) -> None:
        from clay_hf.apps.finder import ExampleError, parse_point
        from clay_hf.errors import ClayConfigError

        for flag, points in (("--positive", self.positive), ("--negative", self.negative)):
            for text in points or ():
                try:
                    parse_point(text)
                except ExampleError as err:
                    raise ClayConfigError(f"{flag}: {err}") from None
        if not (self.positive or self.positive_id or self.examples):
            raise ClayConfigError("give at least one example of what to find: --positive, --positive-id or --examples")
        if self.top_k < 1 or self.background < 0:
            raise ClayConfigError(f"--top-k must be >= 1 and --background >= 0, got {self.top_k}, {self.background}")
        if not 0.0 <= self.max_nodata <= 1.0:
            raise ClayConfigError(f"--max-nodata must be a fraction from 0 to 1, got {self.max_nodata}")


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([FindArguments], description=__doc__.splitlines()[0], examples=EXAMPLES)


def parse_args(argv: list[str] | None = None) -> tuple[FindArguments, cli.ScriptOptions]:
    return build_parser().parse(argv)


def find(args: FindArguments) -> int:
    from tqdm.auto import tqdm

    from clay_hf.apps.finder import ExampleError, Finder
    from clay_hf.atomic import atomic_write_text

    finder = Finder.from_parquet(
        args.embeddings, split=args.split, embedding_column=args.embedding_column, center=not args.no_center
    )
    try:  # the examples first: a place or id the embeddings cannot serve is a mistake in the command
        examples = finder.resolve(
            positive=[*(args.positive or []), *(args.positive_id or [])],
            negative=[*(args.negative or []), *(args.negative_id or [])],
            examples=args.examples,
            level=args.level,
            max_nodata=args.max_nodata,
        )
    except ExampleError as err:
        cli.report_error(err, build_parser().flags)
        return cli.EXIT_USAGE
    what = "reading and scoring patches" if args.level == "patch" else "scoring chips"
    with tqdm(desc=what, unit=args.level, disable=args.quiet, dynamic_ncols=True) as bar:
        result = finder.score(
            examples,
            level=args.level,
            method=args.method,
            top_k=args.top_k,
            max_nodata=args.max_nodata,
            background=args.background,
            keep_examples=args.keep_examples,
            seed=args.seed,
            progress=bar,
        )
    paths = result.write(args.output)
    summary = {
        "line": result.summary(),
        "level": result.level,
        "method": result.method,
        "model": result.model,
        "scored": result.num_scored,
        "scenes": len(finder.sources),
        "examples": [
            {"label": e.label, "given": e.given, "id": finder.unit_id(e.chip, e.patch)} for e in result.examples
        ],
        "detections": [str(p) for p in paths["detections"]],
        "examples_file": str(paths["examples"]),
        "rasters": [str(p) for p in paths["rasters"]],
        "best": result.detections.iloc[0][["id", "score"]].to_dict() if len(result.detections) else None,
    }
    text = json.dumps(summary, default=float)
    atomic_write_text(Path(args.output) / SUMMARY_FILE, text + "\n")
    print(f"{summary['line']} -> {args.output} ({len(paths['rasters'])} score raster(s))")
    if args.json:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), find, argv, outputs=lambda args: [args.output])


if __name__ == "__main__":
    sys.exit(main())
