"""Atomic writes: a file or a folder appears complete under its name, or not at all.

Everything is written to a temporary name in the same folder (so the final rename stays on one filesystem),
then renamed over the target with ``os.replace``. On an error the temporary file or folder is removed and an
existing target is left as it was. What appears ends with the permissions a plain ``open()`` or ``mkdir()``
would have given under the process's umask (``tempfile`` creates 0600 files and 0700 folders).

    >>> with atomic_path("shard.parquet") as tmp:
    ...     pq.write_table(table, tmp)
    >>> with atomic_folder("models/clay", replaceable=is_model_folder) as tmp:
    ...     model.save_pretrained(tmp)

A folder is only ever replaced when it is empty, when ``replaceable(path)`` says it is one this writer made
(a model folder, a collection...), or with ``overwrite=True``; the current directory and its parents never.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import OutputExistsError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_folder",
    "check_replaceable_folder",
    "is_clay_model_folder",
    "apply_umask",
]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, umask: int | None = None) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode ``open()``/``mkdir()`` would have given."""
    umask = current_umask() if umask is None else umask
    path = Path(path)
    if path.is_dir():
        os.chmod(path, 0o777 & ~umask)
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~umask)
            for name in files:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, _file_mode(full, umask))
    elif path.is_file():
        os.chmod(path, _file_mode(path, umask))


def _file_mode(path: str | os.PathLike, umask: int) -> int:
    """0666 under the umask, 0777 for a file its owner may execute (a script stays a script)."""
    return (0o777 if os.stat(path).st_mode & 0o100 else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            apply_umask(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def is_clay_model_folder(path: str | os.PathLike) -> bool:
    """A folder written by ``save_pretrained`` of a Clay model (its ``config.json`` says ``model_type: clay``)."""
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "clay"
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable_folder(
    path: str | os.PathLike,
    replaceable: Callable[[Path], bool] | None = None,
    overwrite: bool = False,
    what: str = "folder written by clay_hf",
) -> None:
    """Raise :class:`~clay_hf.errors.OutputExistsError` unless ``path`` may be replaced by a new folder.

    Never the current directory or one of its parents, nor a file; an existing non-empty folder only when
    ``replaceable(path)`` is true or with ``overwrite``.
    """
    path = Path(path)
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise OutputExistsError(
            f"{os.fspath(path)!r} is the current directory or one of its parents; it is never replaced. "
            "Choose a new folder below it",
            path=str(path),
        )
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise OutputExistsError(
            f"{os.fspath(path)!r} exists and is not a folder; choose another output", path=str(path)
        )
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries or overwrite or (replaceable is not None and replaceable(path)):
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise OutputExistsError(
        f"{os.fspath(path)!r} exists and is not a {what} (it holds {shown}); it would be deleted and replaced. "
        "Choose another output folder, or pass --overwrite (overwrite=True) to replace it",
        path=str(path),
    )


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike,
    replaceable: Callable[[Path], bool] | None = None,
    overwrite: bool = False,
    what: str = "folder written by clay_hf",
) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it replaces ``path`` when the block ends without an error.

    ``path`` is checked first (:func:`check_replaceable_folder`): an existing folder is replaced only when it is
    empty, when ``replaceable(path)`` is true (e.g. :func:`is_clay_model_folder`) or with ``overwrite``. It is
    moved aside first (a folder cannot be renamed over a non-empty one) and removed once the new one is in
    place, so at every moment ``path`` is either the old or the new complete folder; nothing is left behind
    when anything fails.
    """
    path = Path(path)
    check_replaceable_folder(path, replaceable, overwrite, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        apply_umask(tmp)
        old = None
        try:
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                os.replace(path, old / path.name)
            try:
                os.replace(tmp, path)
            except BaseException:
                if old is not None and (old / path.name).exists():  # put the previous folder back
                    os.replace(old / path.name, path)
                raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
