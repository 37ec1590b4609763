#!/usr/bin/env python
"""Publish a Clay model folder, a chip dataset or the Gradio Space to the Hugging Face Hub.

Each kind uploads only the files that belong to it (see clay_hf.apps.hub) and never tokens, caches, dotfiles,
temporary files, checkpoint folders or anything outside the folder. --dry-run prints the exact file list.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

EXAMPLES = """examples:
  # see what would be uploaded (paths and sizes), upload nothing
  python scripts/push_to_hub.py model models/clay-v1.5 --repo-id me/Clay-v1.5-hf --dry-run

  # a converted or trained model folder, with the evaluation numbers in its model card
  python scripts/push_to_hub.py model models/clay-v1.5 --repo-id me/Clay-v1.5-hf \\
      --metrics results/evaluation.json --dataset me/clay-chips --license apache-2.0

  # a chip dataset built by scripts/prepare_chips.py, private, on a branch
  python scripts/push_to_hub.py dataset data/chips --repo-id me/clay-chips --private --branch v2 \\
      --commit-message "Add the 2024 chips"

  # the Gradio Space, with the model it starts from (spaces/model) and its collection (spaces/collection)
  python scripts/push_to_hub.py space spaces --repo-id me/clay-explorer

Log in first (hf auth login) or set HF_TOKEN; HF_ENDPOINT selects another Hub.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["model", "dataset", "space"], help="what the folder holds")
    parser.add_argument("folder", type=Path, help="the folder to publish")
    parser.add_argument("--repo-id", required=True, help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--revision", "--branch", dest="revision", default=None, help="branch to commit to (created from main)"
    )
    parser.add_argument("--commit-message", default=None, help="commit title")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded; upload nothing")
    card = parser.add_argument_group("model card (kind model)")
    card.add_argument("--no-card", action="store_true", help="keep the folder's README.md instead of rendering one")
    card.add_argument(
        "--card-template", type=Path, default=None, help="template (default: clay_hf/apps/templates/model_card.md)"
    )
    card.add_argument("--license", default="apache-2.0", help="Hub license id of the weights (default apache-2.0)")
    card.add_argument("--dataset", action="append", default=[], help="Hub dataset id the model was trained on")
    card.add_argument("--training-data", default=None, help="text of the card's training-data section")
    card.add_argument("--metrics", type=Path, default=None, help="metrics JSON (e.g. scripts/evaluate.py output)")
    space = parser.add_argument_group("Space (kind space)")
    space.add_argument("--no-bundled-model", action="store_true",
                       help="push a Space without model/ (it names its model in the CLAY_SPACE_MODEL variable)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from clay_hf.apps.hub import push_dataset, push_model, push_space
    from clay_hf.errors import ClayError

    common = dict(
        private=args.private, revision=args.revision, commit_message=args.commit_message, dry_run=args.dry_run
    )
    try:
        if args.kind == "model":
            result = push_model(
                args.folder, args.repo_id, card=not args.no_card, card_template=args.card_template,
                license=args.license, datasets=args.dataset, training_data=args.training_data,
                metrics=args.metrics, **common,
            )  # fmt: skip
        elif args.kind == "dataset":
            result = push_dataset(args.folder, args.repo_id, **common)
        else:
            result = push_space(args.folder, args.repo_id, bundled_model=not args.no_bundled_model, **common)
    except ClayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.plan.summary())
    if result.dry_run:
        print(f"dry run: nothing uploaded ({args.kind} {args.repo_id}@{result.revision})")
    else:
        print(f"uploaded to {result.repo_url} @ {result.revision}: commit {result.commit_oid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
