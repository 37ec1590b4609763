"""README.md: its Python snippets run as written (the way doc tests run) where the main job leaves its outputs,
with what its first command installs, and what it says about commands, flags, paths and the sample cache holds."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .launch import load_script

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
# Folders of the repository: a README path under one of them names a file of the checkout.
REPO_DIRS = ("clay_hf/", "scripts/", "tests/", "spaces/", ".ci/", "results/")
COMMAND_SCRIPT = re.compile(r"^(?:scripts|spaces)/\w+\.py$")


def fenced_blocks(language: str) -> list[tuple[str, int, str]]:
    """``(section heading, first code line number, code)`` of every ```language block, in README order."""
    blocks = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", TEXT, re.M | re.S):
        before = TEXT[: match.start()]
        headings = re.findall(r"^#{2,3} (.+)$", before, re.M)
        blocks.append((headings[-1] if headings else "top", before.count("\n") + 2, match.group(1)))
    return blocks


def prose() -> str:
    """The README without its fenced blocks."""
    return re.sub(r"^```.*?^```$", "", TEXT, flags=re.M | re.S)


def code_spans() -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose())


PYTHON_BLOCKS = fenced_blocks("python")


def compiled(line: int, code: str):
    """The block compiled so that tracebacks name README.md and its line numbers."""
    return compile("\n" * (line - 1) + code, str(README), "exec")


def shape_claims(line: int, code: str) -> list[tuple[int, str, tuple[int, ...]]]:
    """Lines that are a bare expression with a comment starting with a shape, e.g. ``out.pooler_output  # (4, 192)``:
    ``(README line, expression, shape)``."""
    lines = code.splitlines()
    claims = []
    for node in ast.parse(code).body:
        if not isinstance(node, ast.Expr) or node.end_lineno != node.lineno:
            continue
        text = lines[node.lineno - 1]
        comment = re.match(r"\s*#\s*\(([\d\s+*,]+)\)", text[node.end_col_offset :])
        if comment:
            shape = tuple(eval(part, {}) for part in comment.group(1).split(","))  # digits, + and * only
            claims.append((line + node.lineno - 1, ast.get_source_segment(code, node), shape))
    return claims


# ---------------------------------------------------------------------------------------------- the snippets


@pytest.fixture(scope="module")
def main_job_folder(tmp_path_factory, sample_chip_dataset) -> Path:
    """A folder as ``python scripts/run_pipeline.py`` leaves it, for what the snippets read: ``outputs/train/final``
    (a ``save_pretrained`` ClayForPreTraining of the main job's preset, tiny, with its processor config; seeded
    weights instead of 120 steps) and ``outputs/chips`` (real chips: the BigEarthNet chip dataset)."""
    from clay_hf import ClayConfig, ClayForPreTraining, ClayImageProcessor

    folder = tmp_path_factory.mktemp("main-job")
    torch.manual_seed(0)
    final = folder / "outputs" / "train" / "final"
    ClayForPreTraining(ClayConfig.from_preset("tiny")).save_pretrained(final)
    ClayImageProcessor().save_pretrained(final)
    shutil.copytree(sample_chip_dataset, folder / "outputs" / "chips")
    return folder


@pytest.mark.parametrize(("section", "line", "code"), PYTHON_BLOCKS, ids=[b[0] for b in PYTHON_BLOCKS])
def test_python_block_runs(main_job_folder, monkeypatch, one_torch_thread, section, line, code):
    monkeypatch.chdir(main_job_folder)
    namespace = {"__name__": "__readme__"}
    exec(compiled(line, code), namespace)
    if section == "Chips from your imagery":
        assert namespace["batch"]["pixel_values"].shape[0] == 32  # the loop ran over real batches
    if section == "Embed and search":
        assert len(namespace["ds"]) == 9 and "9 chips" in code and namespace["index"].has_faiss_index
    if section == "Find things":
        assert len(namespace["result"].detections) == 20 and Path("outputs/find/found/detections.geojson").is_file()
    for claim_line, expression, shape in shape_claims(line, code):
        value = eval(expression, namespace)
        assert tuple(value.shape) == shape, f"README.md:{claim_line}: {expression} is {tuple(value.shape)}"


def test_the_snippets_are_all_tested():
    assert [section for section, _, _ in PYTHON_BLOCKS] == [
        "Use",
        "Chips from your imagery",
        "Embed and search",
        "Find things",
    ]
    # the Use snippet states the sizes of the model it loads, and they are checked above
    (use,) = [(line, code) for section, line, code in PYTHON_BLOCKS if section == "Use"]
    assert [expression for _, expression, _ in shape_claims(*use)] == ["out.pooler_output", "out.last_hidden_state"]
    assert 'from_pretrained("outputs/train/final")' in use[1]


def _first_command_modules_blocked() -> list[str]:
    """Top-level modules installed here whose distributions the README's first command does not install: its
    ``pip install`` requirements (``torch==...``, ``-e ".[extras]"``: this project with those extras) and everything
    they require, by the installed metadata (``pip install -e`` rewrites the project's from pyproject.toml)."""
    first = fenced_blocks("bash")[0][2].splitlines()[0]
    todo = []
    for part in first.split("&&"):
        words = shlex.split(part)
        if words[:2] == ["pip", "install"]:
            todo += [Requirement(f"clay_hf{w[1:]}" if w.startswith(".[") else w) for w in words[2:] if w != "-e"]
    installed, seen = set(), set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        installed.add(key[0])
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                todo.append(dep)
    return sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if module.isidentifier() and not {canonicalize_name(d) for d in dists} & installed
    )


@pytest.mark.slow
def test_blocks_run_with_only_what_the_first_command_installs(main_job_folder):
    blocked = _first_command_modules_blocked()
    assert "faiss" not in blocked  # build_faiss_index in "Embed and search" needs the search extra
    assert "pytest" in blocked and "playwright" in blocked  # the test extras are not part of the first command
    program = "\n".join(
        [
            "import sys",
            f"for name in {blocked!r}:",
            "    sys.modules[name] = None  # import fails; importlib.util.find_spec says it is not installed",
            *(
                f"exec(compile({chr(10) * (line - 1) + code!r}, {str(README)!r}, 'exec'), {{}})"
                for _, line, code in PYTHON_BLOCKS
            ),
            "print('ok')",
        ]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: a second thread mostly waits
    proc = subprocess.run(
        [sys.executable, "-c", program], cwd=main_job_folder, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- the sample cache


def test_the_sample_cache_is_where_the_readme_says(monkeypatch, tmp_path):
    from clay_hf.geodata.sample_data import SAMPLE_PACKAGES, data_home

    stated = re.findall(r"`(~/\.cache/[\w./]+?)/?`", prose())
    assert stated and set(stated) == {"~/.cache/clay_hf/sample_data"}
    monkeypatch.delenv("CLAY_HF_DATA", raising=False)
    assert data_home() == Path(stated[0]).expanduser()
    assert "`$CLAY_HF_DATA`" in TEXT and "`CLAY_HF_DATA`" in TEXT
    monkeypatch.setenv("CLAY_HF_DATA", str(tmp_path))
    assert data_home() == tmp_path
    # the folder names the README lists are the ones fetch_sample_package unpacks into
    folders = {f"{p.name}-{p.version}/" for p in SAMPLE_PACKAGES.values()}
    assert folders <= set(code_spans())


# ---------------------------------------------------------------------------------------------- commands, paths


def bash_commands() -> list[str]:
    """Every command of the bash blocks (continuations joined, ``&&`` split, comments dropped) and every inline
    code span that runs a script."""
    commands = []
    for _, _, code in fenced_blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            commands += [part.strip() for part in line.split("#")[0].split("&&") if part.strip()]
    commands += [span for span in code_spans() if re.match(r"python (scripts|spaces)/", span)]
    return commands


def script_flags(command: str) -> tuple[str | None, list[str]]:
    """``(script path, --flags after it)``; flags before it belong to accelerate or torchrun."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if COMMAND_SCRIPT.match(word):
            return word, [w.split("=")[0] for w in words[i + 1 :] if w.startswith("--")]
    return None, []


@cache
def help_flags(script: str) -> frozenset[str]:
    """The options in ``script --help``, from its own ``parse_args`` (imported here: no interpreter start per script)."""
    module = load_script(ROOT / script)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stopped:
        module.parse_args(["--help"])
    assert stopped.value.code == 0, f"{script} --help exited with {stopped.value.code}"
    return frozenset(re.findall(r"(?<![\w-])--[a-z][\w-]*", out.getvalue()))


def test_commands_name_real_scripts_and_flags():
    checked = 0
    for command in bash_commands():
        script, flags = script_flags(command)
        if script is None:
            continue
        assert (ROOT / script).is_file(), f"README runs {script}, which does not exist"
        unknown = sorted(set(flags) - help_flags(script))
        assert not unknown, f"README: {command!r} passes {unknown}, not in {script} --help"
        checked += 1
    assert checked >= 25
    # flags named in the prose belong to some script
    every = frozenset().union(*(help_flags(s) for s in {script_flags(c)[0] for c in bash_commands()} - {None}))
    named = {flag for span in code_spans() for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", span)}
    assert named and not named - every, f"README names {sorted(named - every)}, which no script takes"


def test_space_commands_share_one_model():
    """The collection is built with the model the app starts with (else the app builds another one)."""
    models = {}
    for command in bash_commands():
        script, _ = script_flags(command)
        if script in ("spaces/app.py", "spaces/build_collection.py"):
            words = shlex.split(command)
            assert "--model" in words, f"README: {command!r} does not say which model"
            models.setdefault(words[words.index("--model") + 1], []).append(command)
    assert len(models) == 1 and "outputs/train/final" in models, models
    assert any("spaces/app.py" in c for c in models["outputs/train/final"])


def _path_tokens() -> list[str]:
    links = [t for t in re.findall(r"\]\(([^)\s#]+)\)", prose()) if "://" not in t]
    words = [w for span in code_spans() for w in span.split()]
    words += [w for _, _, code in fenced_blocks("bash") for w in code.split()]
    return links + [w.strip(",;:()") for w in words]


def test_repository_paths_exist():
    checked = 0
    for token in _path_tokens():
        if token.startswith(REPO_DIRS) and (Path(token).suffix or token.endswith("/") or token.startswith(".ci/")):
            assert (ROOT / token).exists(), f"README names {token}, which is not in the checkout"
            checked += 1
        elif re.fullmatch(r"test_\w+\.py", token):  # "tests/test_atomic.py, test_locking.py, ..."
            assert (ROOT / "tests" / token).is_file(), f"README names {token}, which is not in tests/"
            checked += 1
    assert checked >= 30


def test_dotted_names_resolve():
    names = {m.group(1) for span in code_spans() if (m := re.fullmatch(r"(clay_hf(?:\.\w+)+)(?:\(.*\))?", span))}
    names |= {m for _, _, code in PYTHON_BLOCKS for m in re.findall(r"from (clay_hf[\w.]*) import", code)}
    assert len(names) >= 6
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            assert hasattr(obj, attribute), f"README names {name}: {'.'.join(parts[:cut])} has no {attribute!r}"
            obj = getattr(obj, attribute)
