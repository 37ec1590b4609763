#!/usr/bin/env python
"""Publish a Clay model folder, a chip dataset or the Gradio Space to the Hugging Face Hub.

Each kind uploads only the files that belong to it (see clay_hf.apps.hub) and never tokens, caches, dotfiles,
temporary files, checkpoint folders or anything outside the folder. --dry-run prints the exact file list.

Exit status: 0 done, 1 the push failed (a folder that cannot be published as its kind, the Hub refused the upload
or could not be reached), 2 a mistake in the command (an unknown flag or kind, a malformed --repo-id).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ["CLAY_HF_LAZY_IMPORT"] = "1"  # --help without torch: cli.run registers the Auto classes before the work

from clay_hf import cli  # noqa: E402

del os.environ["CLAY_HF_LAZY_IMPORT"]  # child processes import clay_hf as users do

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


@dataclasses.dataclass(kw_only=True)  # keyword-only: the fields keep the order of --help, required or not
class PushArguments:
    """What to publish, where, and how to commit it."""

    kind: Literal["model", "dataset", "space"] = dataclasses.field(
        metadata={"positional": True, "help": "what the folder holds"}
    )
    folder: Path = dataclasses.field(metadata={"positional": True, "help": "the folder to publish"})
    repo_id: str = dataclasses.field(metadata={"help": "namespace/name on the Hub"})
    private: bool = dataclasses.field(default=False, metadata={"help": "create the repo private"})
    revision: str | None = dataclasses.field(
        default=None,
        metadata={"aliases": ["--revision", "--branch"], "help": "branch to commit to (created from main)"},
    )
    commit_message: str | None = dataclasses.field(default=None, metadata={"help": "commit title"})
    dry_run: bool = dataclasses.field(default=False, metadata={"help": "print what would be uploaded; upload nothing"})

    def __post_init__(self) -> None:
        # A malformed repo id is a mistake in the command (exit 2), found before any folder is read. The check
        # is the one push_folder applies.
        from clay_hf.apps.hub import _check_repo_id

        _check_repo_id(self.repo_id)


@dataclasses.dataclass
class ModelCardOptions:
    """The model card rendered into the folder's README.md (kind model)."""

    _argument_group_name = "model card (kind model)"  # a section of --help

    no_card: bool = dataclasses.field(
        default=False, metadata={"help": "keep the folder's README.md instead of rendering one"}
    )
    card_template: Path | None = dataclasses.field(
        default=None, metadata={"help": "template (default: clay_hf/apps/templates/model_card.md)"}
    )
    license: str = dataclasses.field(default="apache-2.0", metadata={"help": "Hub license id of the weights"})
    dataset: list[str] = dataclasses.field(
        default_factory=list,  # one id per --dataset, repeatable, as before
        metadata={"action": "append", "nargs": None, "help": "Hub dataset id the model was trained on (repeatable)"},
    )
    training_data: str | None = dataclasses.field(
        default=None, metadata={"help": "text of the card's training-data section"}
    )
    metrics: Path | None = dataclasses.field(
        default=None, metadata={"help": "metrics JSON (e.g. scripts/evaluate.py output)"}
    )


@dataclasses.dataclass
class SpaceOptions:
    """What a Space carries (kind space)."""

    _argument_group_name = "Space (kind space)"

    no_bundled_model: bool = dataclasses.field(
        default=False,
        metadata={"help": "push a Space without model/ (it names its model in the CLAY_SPACE_MODEL variable)"},
    )


def build_parser() -> cli.ArgumentParser:
    return cli.ArgumentParser(
        [PushArguments, ModelCardOptions, SpaceOptions], description=__doc__.splitlines()[0], examples=EXAMPLES
    )


def parse_args(
    argv: list[str] | None = None,
) -> tuple[PushArguments, ModelCardOptions, SpaceOptions, cli.ScriptOptions]:
    return build_parser().parse(argv)


def push(args: PushArguments, card: ModelCardOptions, space: SpaceOptions) -> int:
    """Publish the folder (or plan it, with --dry-run) and print the plan and where it went."""
    from clay_hf.apps.hub import push_dataset, push_model, push_space
    from clay_hf.errors import HubPublishError

    common = dict(
        private=args.private, revision=args.revision, commit_message=args.commit_message, dry_run=args.dry_run
    )
    try:
        if args.kind == "model":
            result = push_model(
                args.folder,
                args.repo_id,
                card=not card.no_card,
                card_template=card.card_template,
                license=card.license,
                datasets=card.dataset,
                training_data=card.training_data,
                metrics=card.metrics,
                **common,
            )
        elif args.kind == "dataset":
            result = push_dataset(args.folder, args.repo_id, **common)
        else:
            result = push_space(args.folder, args.repo_id, bundled_model=not space.no_bundled_model, **common)
    except _connection_errors() as err:  # huggingface_hub's own HTTP errors are OSErrors, reported by cli.run
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise HubPublishError(f"could not reach the Hub at {endpoint}: {err}") from None
    print(result.plan.summary())
    if result.dry_run:
        print(f"dry run: nothing uploaded ({args.kind} {args.repo_id}@{result.revision})")
    else:
        print(f"uploaded to {result.repo_url} @ {result.revision}: commit {result.commit_oid}")
    return 0


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The connection errors of the HTTP client under huggingface_hub (httpx, or its fork httpx2), which reach
    the caller unwrapped when the Hub cannot be reached."""
    errors = []
    for name in ("httpx", "httpx2"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(name).TransportError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), push, argv)


if __name__ == "__main__":
    sys.exit(main())
