"""Publishing to the Hugging Face Hub: a model folder, a chip dataset folder and the Space folder.

    >>> push_model("models/clay-v1.5", "made-with-clay/Clay-v1.5-hf", metrics="results/evaluation.json")
    >>> push_dataset("data/chips", "made-with-clay/clay-sample-chips")
    >>> push_space("spaces", "made-with-clay/clay-explorer")
    >>> print(push_model("models/clay-v1.5", "me/clay", dry_run=True).plan.summary())  # uploads nothing

Every push first makes an :class:`UploadPlan`: the files of the folder that belong to that kind of repo,
minus everything that must never leave the machine. The plan is what ``--dry-run`` prints and exactly what
is uploaded: ``HfApi.upload_folder`` gets the plan's paths as ``allow_patterns`` (escaped, one per file)
plus the ignore patterns below, so the two cannot disagree.

What is never uploaded, at any depth: dotfiles and dot-folders (``.git``, ``.cache``, ``.env``,
``.huggingface``, ``.tmp-*``), ``__pycache__`` and ``*.pyc``, temporary and partial files (``*.tmp*``,
``*~``, ``*.lock``, ``*.incomplete``, ``*.part``), checkpoint and run folders (``checkpoints``,
``checkpoint-*``, ``wandb``, ``lightning_logs``, ``flagged``), and anything named like a credential
(``token``, ``*_token``, ``*.token``, ``*token.txt``, ``*.pem``, ``*.key``, ``*credentials*``,
``*secret*``, ``id_rsa*``). Symlinked folders are not followed. A push is refused (:class:`HubPublishError`)
when a planned file is a symlink that resolves outside the folder, or when a small planned file contains
something shaped like a Hugging Face token (``hf_`` and 34 letters or digits).

What each kind uploads (``*`` stays within one folder level, ``**`` crosses levels):

- model: ``*.safetensors``, ``*.safetensors.index.json``, ``config.json`` (must carry an ``auto_map`` whose
  modules are in the folder, so ``trust_remote_code=True`` works), ``preprocessor_config.json``,
  ``generation_config.json``, ``*.py`` (the remote code), and ``README.md``: the model card of
  :func:`clay_hf.apps.model_card.render_model_card` (written into the folder before the upload unless
  ``card=False``).
- dataset: ``data/**/*.parquet``, ``README.md`` (the dataset card :func:`clay_hf.geodata.builder.write_dataset_card`
  writes with every build, :mod:`clay_hf.geodata.dataset_card`) and ``manifest.json``.
- space: every file (``**``) except the above; the folder needs a ``README.md`` with ``sdk:`` in its YAML
  and the ``app_file`` it names.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.resources
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..atomic import atomic_write_bytes
from ..errors import HubPublishError
from .model_card import DEFAULT_MODEL_CARD_TEMPLATE, render_model_card  # re-exported: the card of push_model

__all__ = [
    "HubPublishError",
    "PlannedFile",
    "UploadPlan",
    "PushResult",
    "KIND_PATTERNS",
    "NEVER_UPLOAD",
    "DEFAULT_MODEL_CARD_TEMPLATE",
    "plan_upload",
    "render_model_card",
    "push_folder",
    "push_model",
    "push_dataset",
    "push_space",
    "package_files",
]

logger = logging.getLogger(__name__)

Kind = Literal["model", "dataset", "space"]

KIND_PATTERNS: dict[str, tuple[str, ...]] = {
    "model": (
        "*.safetensors",
        "*.safetensors.index.json",
        "config.json",
        "preprocessor_config.json",
        "generation_config.json",
        "*.py",
        "README.md",
    ),
    "dataset": ("data/**/*.parquet", "README.md", "manifest.json"),
    "space": ("**",),
}

# Matched against every component of a path (file and folder names), fnmatch style.
NEVER_UPLOAD: tuple[str, ...] = (
    ".*",
    "__pycache__",
    "*.pyc",
    "*.pyo",
    "*.tmp",
    "*.tmp*",
    "*~",
    "*.swp",
    "*.lock",
    "*.incomplete",
    "*.part",
    "checkpoints",
    "checkpoint-*",
    "wandb",
    "lightning_logs",
    "flagged",
    "token",
    "*_token",
    "*.token",
    "*token.txt",
    "*.pem",
    "*.key",
    "*credentials*",
    "*secret*",
    "id_rsa*",
)

_TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{34}")
_TOKEN_SCAN_MAX_BYTES = 5 * 1024 * 1024  # weights and shards are not scanned; configs, code and cards are
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------------
# the plan: what leaves the machine
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    """One file of an upload: its path in the repo, its size in bytes, and whether push generates it."""

    path_in_repo: str
    size: int
    generated: bool = False


@dataclasses.dataclass(frozen=True)
class UploadPlan:
    """The files a push uploads (``files``) and the ones it leaves out with the reason (``excluded``)."""

    kind: str
    folder: Path
    files: tuple[PlannedFile, ...]
    excluded: tuple[tuple[str, str], ...]

    @property
    def paths(self) -> list[str]:
        return [f.path_in_repo for f in self.files]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def allow_patterns(self) -> list[str]:
        """One escaped pattern per planned file: ``upload_folder`` can match nothing else."""
        return [glob.escape(p) for p in self.paths]

    @staticmethod
    def ignore_patterns() -> list[str]:
        """:data:`NEVER_UPLOAD` for ``upload_folder`` (whose fnmatch ``*`` also matches ``/``) at any depth."""
        return [
            form for pattern in NEVER_UPLOAD for form in (pattern, f"*/{pattern}", f"{pattern}/*", f"*/{pattern}/*")
        ]

    def summary(self) -> str:
        """A readable listing: one line per file with its size, then the total and the exclusions."""
        width = max([len(p) for p in self.paths] + [10])
        lines = [f"{self.kind} folder {self.folder}: {len(self.files)} files, {_human(self.total_bytes)}"]
        lines += [
            f"  {f.path_in_repo:<{width}}  {f.size:>12,d} B{'  (generated)' if f.generated else ''}" for f in self.files
        ]
        if self.excluded:
            lines.append(f"left out ({len(self.excluded)}):")
            lines += [f"  {path:<{width}}  {reason}" for path, reason in self.excluded]
        return "\n".join(lines)


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A path pattern as a regex: ``**/`` any folders (or none), ``**`` anything, ``*`` and ``?`` within a name."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _never_upload_reason(path: str) -> str | None:
    import fnmatch

    for part in path.split("/"):
        for pattern in NEVER_UPLOAD:
            if fnmatch.fnmatchcase(part, pattern):
                return f"never uploaded ({pattern!r})"
    return None


def plan_upload(folder: str | os.PathLike, kind: Kind, generated: dict[str, bytes] | None = None) -> UploadPlan:
    """The files of ``folder`` that a push of ``kind`` uploads, after checking the folder is one of that kind.

    Args:
        folder: the folder to publish; nothing outside it is ever planned.
        kind: ``"model"``, ``"dataset"`` or ``"space"`` (see the module docstring for what each takes).
        generated: files push will write before uploading (path -> content), planned with their final size.

    Raises:
        HubPublishError: ``folder`` is not a folder or misses what ``kind`` needs, a planned file is a symlink
            out of the folder, or a planned file looks like it holds a token.
    """
    if kind not in KIND_PATTERNS:
        raise HubPublishError(f"kind must be one of {sorted(KIND_PATTERNS)}, got {kind!r}")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise HubPublishError(f"{str(folder)!r} is not a folder; pass the {kind} folder to publish")
    root = root.resolve()
    allow = [_pattern_regex(p) for p in KIND_PATTERNS[kind]]
    generated = dict(generated or {})
    files: dict[str, PlannedFile] = {}
    excluded: list[tuple[str, str]] = []
    escaping: list[str] = []

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        for name in sorted(dirnames):
            rel = prefix + name
            reason = _never_upload_reason(rel)
            if reason is None and (Path(dirpath) / name).is_symlink():
                reason = "symlinked folder (not followed)"
            if reason is not None:
                excluded.append((rel + "/", reason))
                dirnames.remove(name)
        for name in sorted(filenames):
            rel, path = prefix + name, Path(dirpath) / name
            reason = _never_upload_reason(rel)
            if reason is None and not any(r.match(rel) for r in allow):
                reason = f"not part of a {kind} repo"
            if reason is None and path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    escaping.append(f"{rel} -> {target}")
                    continue
                if not target.is_file():
                    reason = "symlink to something that is not a file"
            elif reason is None and not path.is_file():
                reason = "not a regular file"
            if reason is not None:
                excluded.append((rel, reason))
                continue
            files[rel] = PlannedFile(rel, path.stat().st_size)
    if escaping:
        raise HubPublishError(
            f"refusing to publish {root}: {len(escaping)} file(s) are symlinks that leave the folder "
            f"({'; '.join(escaping[:5])}); copy the real files in (cp -L) or remove the links"
        )
    for rel, content in generated.items():
        files[rel] = PlannedFile(rel, len(content), generated=True)

    _check_kind(root, kind, files, generated)
    _check_no_tokens(root, files, generated)
    # The plan is what upload_folder uploads: the same filter function with the same patterns.
    from huggingface_hub.utils import filter_repo_objects

    plan = UploadPlan(kind, root, tuple(files[p] for p in sorted(files)), tuple(sorted(excluded)))
    kept = set(
        filter_repo_objects(plan.paths, allow_patterns=plan.allow_patterns(), ignore_patterns=plan.ignore_patterns())
    )
    if kept != set(plan.paths):
        raise HubPublishError(f"internal: upload_folder would drop {sorted(set(plan.paths) - kept)} from the plan")
    return plan


def _read(root: Path, rel: str, generated: dict[str, bytes]) -> bytes:
    return generated[rel] if rel in generated else (root / rel).read_bytes()


def _check_kind(root: Path, kind: str, files: dict[str, PlannedFile], generated: dict[str, bytes]) -> None:
    names = set(files)
    if kind == "model":
        if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
            raise HubPublishError(
                f"{root} is not a model folder: expected config.json and *.safetensors, found {sorted(names) or 'none'}; "
                "write one with save_pretrained or scripts/convert_clay_checkpoint.py"
            )
        config = json.loads(_read(root, "config.json", generated))
        modules = {ref.split(".")[0] + ".py" for ref in (config.get("auto_map") or {}).values() if isinstance(ref, str)}
        if not modules or not modules <= names:
            raise HubPublishError(
                f"{root}/config.json needs an auto_map whose modules are in the folder for trust_remote_code; "
                f"auto_map modules {sorted(modules) or 'none'}, .py files {sorted(n for n in names if n.endswith('.py'))}; "
                "re-save the model with clay_hf's save_pretrained"
            )
    elif kind == "dataset":
        if not any(n.startswith("data/") and n.endswith(".parquet") for n in names) or "README.md" not in names:
            raise HubPublishError(
                f"{root} is not a chip dataset folder: expected data/<split>/*.parquet and README.md, found "
                f"{sorted(names)[:10] or 'none'}; build it with scripts/prepare_chips.py"
            )
    elif kind == "space":
        meta = _front_matter(_read(root, "README.md", generated)) if "README.md" in names else {}
        app_file = meta.get("app_file", "app.py")
        if not meta.get("sdk") or app_file not in names:
            raise HubPublishError(
                f"{root} is not a Space folder: expected README.md with 'sdk:' in its YAML and the app_file "
                f"({app_file!r}); found sdk={meta.get('sdk')!r} and files {sorted(names)[:10] or 'none'}"
            )


def _check_no_tokens(root: Path, files: dict[str, PlannedFile], generated: dict[str, bytes]) -> None:
    leaks = []
    for rel, f in files.items():
        if f.size <= _TOKEN_SCAN_MAX_BYTES and _TOKEN_RE.search(_read(root, rel, generated)):
            leaks.append(rel)
    if leaks:
        raise HubPublishError(
            f"refusing to publish {root}: {leaks} contain something shaped like a Hugging Face token (hf_...); "
            "remove it and revoke the token if it was real"
        )


def _front_matter(data: bytes) -> dict[str, Any]:
    import yaml

    text = data.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    loaded = yaml.safe_load(text[3:end]) if end > 0 else None
    return loaded if isinstance(loaded, dict) else {}


# --------------------------------------------------------------------------------------------------
# pushing
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What a push did: the plan, the repo URL and the commit (both ``None`` for a dry run)."""

    plan: UploadPlan
    repo_id: str
    repo_type: str
    revision: str
    repo_url: str | None = None
    commit_oid: str | None = None

    @property
    def dry_run(self) -> bool:
        return self.commit_oid is None


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise HubPublishError(
            f"repo id must look like 'namespace/name' (letters, digits, '-', '_', '.'), got {repo_id!r}"
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    kind: Kind,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    generated: dict[str, bytes] | None = None,
    space_sdk: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Publish ``folder`` as a ``kind`` repo: plan, create the repo (and branch), write generated files, upload.

    Args:
        folder: the folder to publish.
        repo_id: ``namespace/name`` on the Hub.
        kind: ``"model"``, ``"dataset"`` or ``"space"``.
        private: create the repo private (an existing repo keeps its visibility).
        revision: the branch to commit to; created from ``main`` when missing. Default ``main``.
        commit_message: the commit title (default: "Upload <kind> with clay_hf").
        dry_run: plan only; nothing is written, created or uploaded.
        generated: files to write into ``folder`` before the upload (``README.md`` for a model card).
        space_sdk: the Space SDK (default: the ``sdk`` of the Space's README).
        token, endpoint: passed to ``HfApi`` (default: the logged-in token and ``HF_ENDPOINT``).
    """
    _check_repo_id(repo_id)
    plan = plan_upload(folder, kind, generated=generated)
    branch = revision or "main"
    if dry_run:
        logger.info(
            "dry run: would upload %d files (%d bytes) to %s %s@%s",
            len(plan.files),
            plan.total_bytes,
            kind,
            repo_id,
            branch,
        )
        return PushResult(plan=plan, repo_id=repo_id, repo_type=kind, revision=branch)

    from huggingface_hub import HfApi

    for rel, content in (generated or {}).items():
        atomic_write_bytes(plan.folder / rel, content)
    if kind == "space" and space_sdk is None:
        space_sdk = _front_matter((plan.folder / "README.md").read_bytes()).get("sdk")
    api = HfApi(endpoint=endpoint, token=token)
    url = api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True, space_sdk=space_sdk)
    if branch != "main":
        api.create_branch(repo_id, branch=branch, repo_type=kind, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type=kind,
        folder_path=plan.folder,
        revision=branch,
        commit_message=commit_message or f"Upload {kind} with clay_hf",
        allow_patterns=plan.allow_patterns(),
        ignore_patterns=plan.ignore_patterns(),
    )
    logger.info("uploaded %d files to %s (commit %s)", len(plan.files), url, info.oid)
    return PushResult(
        plan=plan, repo_id=repo_id, repo_type=kind, revision=branch, repo_url=str(url), commit_oid=info.oid
    )


def push_model(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    card: bool = True,
    card_template: str | os.PathLike | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    training_data: str | None = None,
    metrics: str | os.PathLike | dict[str, Any] | None = None,
    **kwargs: Any,
) -> PushResult:
    """Publish a model folder (safetensors, config with auto_map, processor config, remote code) with its card.

    The card (:func:`clay_hf.apps.model_card.render_model_card`) is written to ``folder/README.md`` before the
    upload, or only planned in a dry run; ``card=False`` keeps the folder's own README.md. Other arguments go to
    :func:`push_folder`.
    """
    generated = None
    if card:
        plan_upload(folder, "model")  # a folder that cannot be published is refused before it is described
        text = render_model_card(
            folder,
            repo_id,
            template=card_template,
            license=license,
            datasets=datasets,
            training_data=training_data,
            metrics=metrics,
        )
        generated = {"README.md": text.encode("utf-8")}
    return push_folder(folder, repo_id, "model", generated=generated, **kwargs)


def push_dataset(folder: str | os.PathLike, repo_id: str, **kwargs: Any) -> PushResult:
    """Publish a chip dataset folder (``data/<split>/*.parquet``, README.md dataset card, manifest.json)."""
    return push_folder(folder, repo_id, "dataset", **kwargs)


def package_files() -> dict[str, bytes]:
    """The installed clay_hf package as ``{"clay_hf/<path>": bytes}``: its modules and package data (the sensor
    table, the model card template)."""
    root = Path(str(importlib.resources.files("clay_hf")))  # the whole package, wherever it is installed
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".py", ".json", ".md") and "__pycache__" not in p.relative_to(root).parts
    )
    return {f"clay_hf/{p.relative_to(root).as_posix()}": p.read_bytes() for p in files}


_SPACE_COLLECTION = "collection/collection.json"  # what a pushed Space starts from (spaces/app.py defaults)
_SPACE_MODEL = "model/config.json"


def push_space(
    folder: str | os.PathLike, repo_id: str, bundle_package: bool = True, bundled_model: bool = True, **kwargs: Any
) -> PushResult:
    """Publish the Space folder (README.md with the Space YAML, the app file, requirements, bundled data).

    ``bundle_package`` (default) writes this clay_hf package into ``folder/clay_hf/`` and uploads it with the app,
    so the Space imports the same code the folder was tested with (the Space's requirements hold the rest).

    The pushed Space starts from what the folder holds, so it must hold the precomputed collection
    (``collection/``, :func:`clay_hf.apps.space.build_collection`) and the model that embedded it (``model/``, a Clay
    folder); ``bundled_model=False`` for a Space that names its model in its ``CLAY_SPACE_MODEL`` variable.
    """
    generated = package_files() if bundle_package else None
    planned = set(plan_upload(folder, "space", generated=generated).paths)  # also checks it is a Space folder
    needed = [_SPACE_COLLECTION, _SPACE_MODEL] if bundled_model else [_SPACE_COLLECTION]
    missing = [rel for rel in needed if rel not in planned]
    if missing:
        raise HubPublishError(
            f"{folder} is missing {missing}, so the pushed Space could not start offline: put the model into "
            "model/ (scripts/convert_clay_checkpoint.py, or copy a model folder) and build collection/ with it "
            "(spaces/build_collection.py --model <that folder>); pass bundled_model=False (--no-bundled-model) "
            "when the Space names its model in CLAY_SPACE_MODEL"
        )
    return push_folder(folder, repo_id, "space", generated=generated, **kwargs)
