"""Atomic writes: permissions under the umask, which folders may be replaced, nothing left on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from clay_hf.atomic import atomic_folder, atomic_path, atomic_write_text, check_replaceable_folder, is_clay_model_folder
from clay_hf.errors import ClayError, OutputExistsError


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_folders_end_with_the_modes_open_and_mkdir_give(tmp_path, umask_022):
    # Defect: tempfile's 0600 files and 0700 folders were renamed into place as they were.
    text = atomic_write_text(tmp_path / "manifest.json", "{}")
    with atomic_path(tmp_path / "shard.parquet") as tmp:
        tmp.write_bytes(b"PAR1")
    with atomic_folder(tmp_path / "final") as folder:
        (folder / "model.safetensors").write_bytes(b"x")
        (folder / "sub").mkdir()
        (folder / "sub" / "a.json").write_text("{}")
    plain = tmp_path / "plain.txt"
    plain.write_text("reference")
    assert _mode(plain) == 0o644
    assert _mode(text) == _mode(tmp_path / "shard.parquet") == 0o644
    assert _mode(tmp_path / "final") == _mode(tmp_path / "final" / "sub") == 0o755
    assert _mode(tmp_path / "final" / "model.safetensors") == _mode(tmp_path / "final" / "sub" / "a.json") == 0o644


def test_a_stricter_umask_is_followed_too(tmp_path):
    previous = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.json", "{}")
        with atomic_folder(tmp_path / "private") as folder:
            (folder / "w").write_text("x")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "private.json") == 0o600
    assert _mode(tmp_path / "private") == 0o700 and _mode(tmp_path / "private" / "w") == 0o600


def test_executable_bits_of_written_files_are_kept(tmp_path, umask_022):
    with atomic_folder(tmp_path / "out") as folder:
        script = folder / "run.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o700)
    assert _mode(tmp_path / "out" / "run.sh") == 0o755


def test_a_folder_with_other_files_is_only_replaced_when_asked(tmp_path):
    target = tmp_path / "D"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"is not a model folder \(it holds notes.txt, sub/\)") as info:
        with atomic_folder(target, what="model folder") as tmp:
            (tmp / "config.json").write_text("{}")
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, ClayError)
    assert info.value.path == str(target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]  # the refusal comes before any temporary folder
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]


def test_a_folder_the_writer_recognises_or_an_empty_one_is_replaced(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "clay"}')
    (model / "old.bin").write_text("old")
    assert is_clay_model_folder(model)
    with atomic_folder(model, is_clay_model_folder) as tmp:
        (tmp / "config.json").write_text('{"model_type": "clay", "new": true}')
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]
    (tmp_path / "empty").mkdir()
    with atomic_folder(tmp_path / "empty") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "empty" / "a").is_file()
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "vit"}')
    assert not is_clay_model_folder(other) and not is_clay_model_folder(tmp_path / "missing")


@pytest.mark.parametrize("relative", [".", "..", "sub/.."])
def test_the_current_directory_and_its_parents_are_never_replaced(tmp_path, monkeypatch, relative):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(OutputExistsError, match="is the current directory or one of its parents"):
        check_replaceable_folder(relative, overwrite=True)
    with pytest.raises(OutputExistsError, match="never replaced"):
        with atomic_folder(Path(relative), overwrite=True):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputExistsError, match="exists and is not a folder"):
        check_replaceable_folder(tmp_path / "out", overwrite=True)


def test_a_failure_inside_the_block_keeps_the_old_folder_and_leaves_nothing(tmp_path):
    target = tmp_path / "final"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(target, overwrite=True) as tmp:
            (tmp / "weights").write_text("new")
            raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_failed_rename_puts_the_old_folder_back_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "final"
    target.mkdir()
    (target / "weights").write_text("old")
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):  # the new folder cannot be renamed into place (once)
        if Path(dst) == target and not calls:
            calls.append(src)
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        with atomic_folder(target, overwrite=True) as tmp:
            (tmp / "weights").write_text("new")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
