"""Publishing end to end against a local Hub (tests/hub_server.py): push a converted Clay model, a chip dataset of
real imagery and the Space with scripts/push_to_hub.py, then load them from an EMPTY cache with the real clients
in subprocesses (with clay_hf, and with remote code where clay_hf cannot be imported)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from clay_hf.apps.hub import (
    HubPublishError,
    PlannedFile,
    UploadPlan,
    plan_upload,
    push_dataset,
    push_model,
    push_space,
    render_model_card,
)

from .chip_helpers import build_small
from .hub_server import REPO_ROOT, TEST_TOKEN, TEST_USER, run_client
from .launch import CONNECT_GUARD, LOOPBACK_HOSTS, free_port, load_script
from .model_helpers import RUN_REMOTE_CODE, WITHOUT_CLAY_HF

pytest_plugins = ["tests.hub_fixtures"]  # the local_hub and hub_env fixtures

MODEL_ID = f"{TEST_USER}/clay-micro"
DATASET_ID = f"{TEST_USER}/clay-chips"
SPACE_ID = f"{TEST_USER}/clay-explorer"
SPACE_BRANCH = "preview"
FAKE_TOKEN = "hf_" + "A1b2C3d4E5" * 3 + "F6g7"  # the shape of a real token (hf_ + 34 alphanumerics)
METRICS = {
    "eurosat": {"linear_probe": {"accuracy": 0.9123, "per_class": {"forest": {"f1": 0.5}}}, "knn": {"macro_f1": 0.8}},
    "wall_time_s": 12.0,
}
GITATTRIBUTES = ".gitattributes"  # every repo the Hub creates starts with it


def _add_decoys(folder: Path, outside: Path) -> list[str]:
    """Files that must never reach the Hub; returns their paths relative to ``folder``."""
    decoys = {
        ".cache/huggingface/token": FAKE_TOKEN,
        ".git/config": "[core]\n",
        ".env": f"HF_TOKEN={FAKE_TOKEN}\n",
        "token": FAKE_TOKEN,
        "hf_token.txt": FAKE_TOKEN,
        "__pycache__/modeling_clay.cpython-311.pyc": "\0\0",
        "checkpoints/step-10/model.safetensors": "weights",
        "checkpoint-20/config.json": "{}",
        ".tmp-upload.safetensors": "partial",
        "model.safetensors.tmp123": "partial",
        "notes.safetensors~": "editor backup",
        "data/train/.tmp-00009.parquet": "partial",
        "data/train/00009.parquet.tmp": "partial",
    }
    for rel, text in decoys.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    outside.mkdir(exist_ok=True)
    (outside / "secret-weights.safetensors").write_text("outside the folder")
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)  # a symlinked folder is not followed
    return [*decoys, "linked-folder/secret-weights.safetensors"]


def _popen(args: list, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *map(str, args)], env=env, cwd=REPO_ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory, converted_micro) -> dict[str, Path]:
    """The three folders to publish, each with decoys; the Space is the real spaces/ when it exists, with the model
    it starts from in model/ and its collection (real BigEarthNet chips, embedded by that model) in collection/."""
    root = tmp_path_factory.mktemp("publish")
    model = root / "model"
    shutil.copytree(converted_micro, model)
    chips = root / "chips"
    build_small(chips)
    space = root / "space"
    if (REPO_ROOT / "spaces" / "README.md").is_file():
        shutil.copytree(REPO_ROOT / "spaces", space, symlinks=True)
    else:  # a minimal stand-in until spaces/ exists
        space.mkdir()
        (space / "README.md").write_text(
            '---\ntitle: Clay explorer\nsdk: gradio\nsdk_version: 6.0.0\napp_file: app.py\npython_version: "3.11"\n'
            f"models:\n- {MODEL_ID}\ndatasets:\n- {DATASET_ID}\n---\n\n# Clay explorer\n"
        )
        (space / "app.py").write_text('import gradio as gr\n\nif __name__ == "__main__":\n    gr.Blocks().launch()\n')
        (space / "requirements.txt").write_text("clay_hf\ngradio\n")
    for built in ("model", "collection", "examples", "clay_hf"):  # a checkout's own builds (git-ignored) are not ours
        shutil.rmtree(space / built, ignore_errors=True)
    shutil.copytree(converted_micro, space / "model")
    if (space / "build_collection.py").is_file():  # as a maintainer prepares the Space before pushing it
        load_script(space / "build_collection.py").main([
            "--model", str(space / "model"), "--output", str(space / "collection"), "--packages", "bigearthnet-common",
            "--chip-size", "40", "--max-chips-per-source", "2", "--example", str(space / "examples" / "s2.tif"),
        ])  # fmt: skip
    else:
        (space / "collection").mkdir()
        (space / "collection" / "collection.json").write_text("{}")
    (root / "metrics.json").write_text(json.dumps(METRICS))
    decoys = {}
    for name, folder in (("model", model), ("dataset", chips), ("space", space)):
        decoys[name] = _add_decoys(folder, root / f"outside-{name}")
    (root / "decoys.json").write_text(json.dumps(decoys))
    return {"model": model, "dataset": chips, "space": space, "root": root}


@pytest.fixture(scope="module")
def pushed(folders, local_hub, tmp_path_factory) -> dict[str, str]:
    """The three folders pushed with scripts/push_to_hub.py, concurrently, from subprocesses."""
    env = {**os.environ, **local_hub.client_env(tmp_path_factory.mktemp("push-home"))}
    script = REPO_ROOT / "scripts" / "push_to_hub.py"
    commands = {
        "model": ["model", folders["model"], "--repo-id", MODEL_ID, "--dataset", DATASET_ID,
                  "--metrics", folders["root"] / "metrics.json", "--commit-message", "Add Clay micro"],
        "dataset": ["dataset", folders["dataset"], "--repo-id", DATASET_ID, "--private"],
        "space": ["space", folders["space"], "--repo-id", SPACE_ID, "--branch", SPACE_BRANCH],
    }  # fmt: skip
    procs = {name: _popen([script, *args], env) for name, args in commands.items()}
    outputs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"push {name} exited {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
        outputs[name] = out
    return outputs


def _expected(folder: Path, kind: str) -> set[str]:
    return set(plan_upload(folder, kind).paths)


# --------------------------------------------------------------------------------------------------
# what reaches the server
# --------------------------------------------------------------------------------------------------


def test_pushes_upload_exactly_the_planned_files(pushed, folders, local_hub):
    decoys = json.loads((folders["root"] / "decoys.json").read_text())
    cases = [("model", MODEL_ID, "main"), ("dataset", DATASET_ID, "main"), ("space", SPACE_ID, SPACE_BRANCH)]
    for kind, repo_id, revision in cases:
        files = local_hub.files(repo_id, kind, revision)
        assert set(files) == _expected(folders[kind], kind) | {GITATTRIBUTES}, kind
        for path, content in files.items():
            if path != GITATTRIBUTES:
                assert content == (folders[kind] / path).read_bytes(), path
        assert not set(decoys[kind]) & set(files), kind
        assert not any(p.startswith(".") and p != GITATTRIBUTES or "/." in p for p in files), sorted(files)
        assert not any(FAKE_TOKEN.encode() in content for content in files.values())
        assert not any("secret-weights" in p or "checkpoint" in p or "__pycache__" in p for p in files)
        assert f"uploaded to {local_hub.url}/" in pushed[kind]

    model_files = set(local_hub.files(MODEL_ID))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_clay.py",
            "configuration_clay.py", "errors.py", "README.md"} == model_files - {GITATTRIBUTES}  # fmt: skip
    dataset_files = set(local_hub.files(DATASET_ID, "dataset"))
    shards = {f"data/train/{p.name}" for p in (folders["dataset"] / "data" / "train").glob("[!.]*.parquet")}
    assert dataset_files == shards | {"README.md", "manifest.json", GITATTRIBUTES}
    assert len(shards) == 6
    # options: commit message, private flag, branch (main keeps only what the Hub created)
    assert local_hub.commits(MODEL_ID)[0].title == "Add Clay micro"
    assert local_hub.repo(DATASET_ID, "dataset").private and not local_hub.repo(MODEL_ID).private
    assert set(local_hub.files(SPACE_ID, "space", "main")) == {GITATTRIBUTES}
    space_files = local_hub.files(SPACE_ID, "space", SPACE_BRANCH)
    assert {"clay_hf/__init__.py", "clay_hf/modeling_clay.py", "clay_hf/sensors.json"} <= set(space_files)
    assert space_files["clay_hf/sensors.json"] == (REPO_ROOT / "clay_hf" / "sensors.json").read_bytes()


def test_model_card_is_rendered_with_real_numbers_and_parses(pushed, folders, local_hub):
    card = ModelCard.load(folders["model"] / "README.md")
    assert local_hub.files(MODEL_ID)["README.md"] == (folders["model"] / "README.md").read_bytes()
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert {"earth-observation", "remote-sensing", "clay", "mae", "multispectral", "sar"} <= set(data["tags"])
    assert data["datasets"] == [DATASET_ID]
    config = json.loads((folders["model"] / "config.json").read_text())
    text = card.text
    assert f"| encoder width D | {config['hidden_size']} |" in text
    assert f"| encoder layers | {config['num_hidden_layers']} |" in text
    assert f"| encoder heads x head dim | {config['num_attention_heads']} x {config['head_dim']} |" in text
    assert "| `sentinel-2-l2a` | 10: blue, green, red" in text and "| `sentinel-1-rtc` |" in text
    assert "| eurosat / linear_probe / accuracy | 0.9123 |" in text and "| eurosat / knn / macro_f1 | 0.8 |" in text
    assert "per_class" not in text and "wall_time" not in text
    assert f'AutoModel.from_pretrained("{MODEL_ID}")' in text
    assert not re.search(r"\{\{\s*[a-z0-9_]+\s*\}\}", text)


# --------------------------------------------------------------------------------------------------
# loading from the Hub with an empty cache
# --------------------------------------------------------------------------------------------------

CLIENT_WITH_CLAY_HF = textwrap.dedent(
    """
    import hashlib, re, sys
    import torch
    from datasets import load_dataset
    from huggingface_hub import ModelCard
    from transformers import AutoModel, AutoModelForPreTraining

    import clay_hf
    from clay_hf.geodata.chip_format import decode_chip
    from clay_hf.geodata.loader import load_chip_dataset

    model_id, dataset_id, inputs_path, out_path = sys.argv[1:5]
    data = torch.load(inputs_path)
    enc = AutoModel.from_pretrained(model_id).eval()
    pre = AutoModelForPreTraining.from_pretrained(model_id).eval()
    assert type(enc) is clay_hf.ClayModel and type(pre) is clay_hf.ClayForPreTraining
    with torch.no_grad():
        out = dict(
            embeddings=enc(**data["inputs"]).last_hidden_state,
            logits=pre(**data["inputs"], noise=data["noise"]).logits,
        )
    out["chip_ids"] = [row["chip_id"] for row in load_dataset(dataset_id, split="train", streaming=True)]
    first = decode_chip(next(iter(load_chip_dataset(dataset_id))))
    out["first_chip"] = (first["chip_id"], hashlib.sha256(first["pixels"].tobytes()).hexdigest())
    card = ModelCard.load(model_id)
    out["card_data"] = card.data.to_dict()
    exec(re.findall(r"```python\\n(.*?)```", card.text, re.S)[0], {})  # the card's first example runs as written
    torch.save(out, out_path)
    """
)

CLIENT_WITHOUT_CLAY_HF = (
    WITHOUT_CLAY_HF
    + "import torch\nsource, inputs_path, out_path = sys.argv[1:4]\ndata = torch.load(inputs_path)\n"
    + RUN_REMOTE_CODE
    + textwrap.dedent(
        """
    import re
    from huggingface_hub import ModelCard

    card = ModelCard.load(source)
    exec(re.findall(r"```python\\n(.*?)```", card.text, re.S)[1], {})  # the remote-code example runs as written
    torch.save(out, out_path)
    """
    )
)


@pytest.fixture(scope="module")
def reference(folders, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real chip of the dataset as model inputs, and the local folder's outputs for it.

    The reference loads the LOCAL folder with from_pretrained, the same loading path the Hub clients take (a
    safetensors file read into freshly built modules), so the comparison is bit for bit; comparing against
    the in-memory converted model instead can differ by ~1e-7, because CPU kernels may pick different code
    paths for differently aligned (memory-mapped) weight buffers.
    """
    from transformers import AutoModel, AutoModelForPreTraining

    from clay_hf import ClayImageProcessor
    from clay_hf.geodata.chip_format import decode_chip
    from clay_hf.geodata.loader import collate_chips, load_chip_dataset

    sample = decode_chip(next(iter(load_chip_dataset(folders["dataset"]))))
    batch = collate_chips([sample], ClayImageProcessor(patch_size=4))
    inputs = {k: batch[k] for k in ("pixel_values", "wavelengths", "gsd", "time", "latlon")}
    num_patches = (inputs["pixel_values"].shape[-1] // 4) ** 2
    noise = torch.rand(1, num_patches, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("reference") / "inputs.pt"
    torch.save({"inputs": inputs, "noise": noise}, path)
    enc = AutoModel.from_pretrained(folders["model"]).eval()
    pre = AutoModelForPreTraining.from_pretrained(folders["model"]).eval()
    with torch.no_grad():
        out = dict(
            embeddings=enc(**inputs).last_hidden_state,
            logits=pre(**inputs, noise=noise).logits,
            first_chip=sample["chip_id"],
        )
    return path, out


@pytest.fixture(scope="module")
def clients(pushed, reference, local_hub, tmp_path_factory) -> dict[str, dict]:
    """Both client scripts, run at the same time, each in its own process with its own EMPTY cache."""
    inputs_path, _ = reference
    work = tmp_path_factory.mktemp("clients")
    jobs = {
        "clay_hf": (CLIENT_WITH_CLAY_HF, [MODEL_ID, DATASET_ID, inputs_path]),
        "remote_code": (CLIENT_WITHOUT_CLAY_HF, [MODEL_ID, inputs_path]),
    }
    procs = {}
    for name, (source, args) in jobs.items():
        home = work / name / "hf-home"
        assert not home.exists()  # an empty cache
        (work / name).mkdir()
        (work / name / "client.py").write_text(source)
        env = {**os.environ, **local_hub.client_env(home)}
        procs[name] = _popen([work / name / "client.py", *args, work / name / "out.pt"], env)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"client {name} exited {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return {name: torch.load(work / name / "out.pt") for name in jobs}


def test_automodel_and_streamed_dataset_from_hub_with_clay_hf(clients, reference, folders):
    _, ref = reference
    out = clients["clay_hf"]
    assert torch.equal(out["embeddings"], ref["embeddings"])
    assert torch.equal(out["logits"], ref["logits"])

    from clay_hf.geodata.chip_format import decode_chip
    from clay_hf.geodata.loader import load_chip_dataset

    local = list(load_chip_dataset(folders["dataset"]))
    assert sorted(out["chip_ids"]) == sorted(row["chip_id"] for row in local) and len(local) == 18
    first_id, digest = out["first_chip"]
    match = next(decode_chip(row) for row in local if row["chip_id"] == first_id)
    assert hashlib.sha256(match["pixels"].tobytes()).hexdigest() == digest
    assert out["card_data"]["datasets"] == [DATASET_ID] and out["card_data"]["library_name"] == "transformers"


def test_remote_code_from_hub_without_clay_hf(clients, reference):
    _, ref = reference
    out = clients["remote_code"]
    assert out["module"].startswith("transformers_modules")
    assert torch.equal(out["embeddings"], ref["embeddings"])
    assert torch.equal(out["logits"], ref["logits"])


# --------------------------------------------------------------------------------------------------
# outside the checkout: a wheel install, and the pushed Space started from the Hub's copy
# --------------------------------------------------------------------------------------------------


def _env_outside_checkout(**extra: str) -> dict[str, str]:
    """``os.environ`` without the checkout on the path and without any Space setting, plus ``extra``."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONSAFEPATH")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("CLAY_SPACE_")}
    return {**env, **extra}


WHEEL_CLIENT = textwrap.dedent(
    """
    import json, sys
    import clay_hf
    from clay_hf.apps.hub import package_files, render_model_card

    model_folder, out_path = sys.argv[1:3]
    card = render_model_card(model_folder, "me/clay-micro", metrics={"knn": {"accuracy": 0.5}})
    out = {"file": clay_hf.__file__, "path": sys.path, "card": card, "bundled": sorted(package_files())}
    open(out_path, "w").write(json.dumps(out))
    """
)


def test_a_wheel_install_renders_the_model_card_from_its_package_data(tmp_path, converted_micro):
    """The wheel ships the card template and the sensor table; installed into a fresh venv and run from a folder
    outside the checkout (so the checkout is not importable), it renders a complete card."""
    import zipfile

    source = tmp_path / "source"  # a copy, so building leaves nothing in the checkout
    shutil.copytree(REPO_ROOT / "clay_hf", source / "clay_hf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("clay_hf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {"clay_hf/apps/templates/model_card.md", "clay_hf/sensors.json", "clay_hf/apps/hub.py"}
    assert shipped | {"clay_hf/apps/model_card.py", "clay_hf/geodata/dataset_card.py"} <= set(names)
    assert not any(n.startswith(("tests/", "spaces/", "scripts/")) or n == "model_card.md" for n in names)

    venv = tmp_path / "venv"  # the system site-packages give torch & co; pip comes from there too
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)  # fmt: skip
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "client.py").write_text(WHEEL_CLIENT)
    proc = subprocess.run([str(python), "client.py", str(converted_micro), "out.json"], cwd=elsewhere,
                          env=_env_outside_checkout(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((elsewhere / "out.json").read_text())
    assert Path(out["file"]).resolve().is_relative_to(venv.resolve()), out["file"]
    assert not any(Path(p).resolve() == REPO_ROOT for p in out["path"] if p)
    card = out["card"]
    assert (
        not re.search(r"\{\{\s*[a-z0-9_]+\s*\}\}", card) and "Rendered from clay_hf's templates/model_card.md" in card
    )
    config = json.loads((converted_micro / "config.json").read_text())
    assert f"| encoder width D | {config['hidden_size']} |" in card and "| knn / accuracy | 0.5 |" in card
    assert "| `sentinel-2-l2a` | 10: blue, green, red" in card
    assert {"clay_hf/apps/templates/model_card.md", "clay_hf/sensors.json"} <= set(out["bundled"])


DOWNLOAD_SPACE = textwrap.dedent(
    """
    import sys
    from huggingface_hub import snapshot_download

    repo_id, revision, local_dir = sys.argv[1:4]
    snapshot_download(repo_id, repo_type="space", revision=revision, local_dir=local_dir)
    """
)


def test_the_pushed_space_starts_offline_from_its_own_files(pushed, local_hub, hub_env, tmp_path):
    """The Space repo as the Hub holds it, downloaded with the real client and started the way a Space starts
    it (``python app.py`` in the repo folder): no CLAY_SPACE_* settings, the checkout not on the path, an empty
    home. It serves its bundled model and collection, and connects to nothing but its own port."""
    import time

    import httpx
    from gradio_client import Client, handle_file

    space = tmp_path / "space"
    run_client(["-c", DOWNLOAD_SPACE, SPACE_ID, SPACE_BRANCH, space], hub_env, cwd=tmp_path)
    served = local_hub.files(SPACE_ID, "space", SPACE_BRANCH)
    assert {p: (space / p).read_bytes() for p in served if p != GITATTRIBUTES} == {
        p: c for p, c in served.items() if p != GITATTRIBUTES
    }
    assert {"app.py", "clay_hf/apps/space.py", "model/config.json", "collection/collection.json"} <= set(served)
    chips = json.loads(served["collection/collection.json"])["count"]

    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(CONNECT_GUARD)
    log, home = tmp_path / "connects.txt", tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = _env_outside_checkout(PYTHONPATH=str(tmp_path / "guard"), CLAY_GUARD_LOG=str(log), HOME=str(home),
                                HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")  # fmt: skip
    hub_requests = len(local_hub.store.requests)
    proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=space,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a wait for the server, not a timing assertion
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the pushed Space did not start"
            time.sleep(0.5)
        page = httpx.get(f"{url}/config", timeout=30, follow_redirects=True).text
        assert f"{chips} precomputed sample chips" in page and "Model: `model`" in page  # its model/, collection/
        _, metadata = Client(url, verbose=False).predict(handle_file(str(space / "examples" / "s2.tif")),
                                                          "auto-detect", "", api_name="/inspect")  # fmt: skip
        assert metadata["sensor"] == "sentinel-2-l2a" and metadata["bands"][:3] == ["blue", "green", "red"]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    hosts = set(log.read_text().split()) if log.exists() else set()
    assert "127.0.0.1" in hosts and hosts <= LOOPBACK_HOSTS, (hosts, output[-2000:])  # the guard ran; nothing left
    assert len(local_hub.store.requests) == hub_requests  # nothing fetched from the Hub either
    assert not (home / ".cache" / "clay_hf").exists(), output[-2000:]  # no sample data, no rebuilt collection
    assert "building the collection" not in output and "no usable collection" not in output
    assert (space / "clay_hf" / "__pycache__").is_dir()  # the bundled package is the one that ran


# --------------------------------------------------------------------------------------------------
# dry run, the CLI and refusals (no server needed)
# --------------------------------------------------------------------------------------------------


def _cli():
    return load_script(REPO_ROOT / "scripts" / "push_to_hub.py")


def test_dry_run_prints_paths_and_sizes_and_uploads_nothing(folders, local_hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    before = len(local_hub.store.requests)
    folder = folders["model"]
    readme = folder / "README.md"
    card_before = (readme.read_bytes(), readme.stat().st_mtime_ns) if readme.exists() else None
    repo_id = f"{TEST_USER}/never-created"
    args = ["model", str(folder), "--repo-id", repo_id, "--dry-run", "--metrics", str(folders["root"] / "metrics.json")]
    assert _cli().main(args) == 0
    printed = capsys.readouterr().out
    plan = push_model(folder, repo_id, dry_run=True, metrics=folders["root"] / "metrics.json").plan
    for f in plan.files:
        assert re.search(rf"^  {re.escape(f.path_in_repo)} +{f.size:,d} B", printed, re.M), f.path_in_repo
    assert "README.md" in plan.paths and "(generated)" in printed and "dry run: nothing uploaded" in printed
    assert "never uploaded" in printed and ".cache/" in printed
    assert len(local_hub.store.requests) == before and not local_hub.exists(repo_id)
    after = (readme.read_bytes(), readme.stat().st_mtime_ns) if readme.exists() else None
    assert after == card_before  # the folder is left as it was
    for kind, push in (("dataset", push_dataset), ("space", push_space)):
        result = push(folders[kind], f"{TEST_USER}/never-{kind}", dry_run=True)
        assert result.dry_run and result.plan.paths == sorted(_expected(folders[kind], kind))
    assert len(local_hub.store.requests) == before


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        _cli().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--dry-run" in text and "--branch" in text and "--private" in text


def test_plan_rules_and_allow_patterns_match_upload_folder(folders):
    plan = plan_upload(folders["model"], "model")
    assert plan.paths == sorted(plan.paths) and "model.safetensors" in plan.paths
    reasons = dict(plan.excluded)
    assert reasons[".cache/"] == "never uploaded ('.*')" and reasons["token"] == "never uploaded ('token')"
    assert reasons["hf_token.txt"] == "never uploaded ('*token.txt')"
    assert reasons["model.safetensors.tmp123"] == "never uploaded ('*.tmp*')"
    assert reasons["checkpoint-20/"] == "never uploaded ('checkpoint-*')"
    assert reasons["linked-folder/"] == "symlinked folder (not followed)"
    assert dict(plan_upload(folders["dataset"], "dataset").excluded)[".build/"] == "never uploaded ('.*')"
    from huggingface_hub.utils import filter_repo_objects

    # upload_folder applies the escaped allow patterns: each matches its own file only, glob characters included
    names = ["a[1].py", "a1.py", "b*.py", "bb.py", "c?.py", "cc.py"]
    for name in names:
        only = UploadPlan("model", Path("."), (PlannedFile(name, 0),), ())
        assert list(filter_repo_objects(names, allow_patterns=only.allow_patterns())) == [name]
        assert list(filter_repo_objects([name], ignore_patterns=only.ignore_patterns())) == [name]


def test_refuses_symlinks_that_leave_the_folder(tmp_path, converted_micro):
    folder = tmp_path / "model"
    shutil.copytree(converted_micro, folder)
    (tmp_path / "elsewhere.safetensors").write_bytes(b"not yours")
    (folder / "extra.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(HubPublishError, match="symlinks that leave the folder.*extra.safetensors"):
        push_model(folder, "me/clay", dry_run=True)
    (folder / "extra.safetensors").unlink()
    (folder / "extra.safetensors").symlink_to(folder / "model.safetensors")  # inside the folder: fine
    (folder / "notes.txt").write_text("not a model file")
    plan = plan_upload(folder, "model")
    assert "extra.safetensors" in plan.paths and dict(plan.excluded)["notes.txt"] == "not part of a model repo"


def test_refuses_a_token_inside_a_planned_file(tmp_path, converted_micro):
    folder = tmp_path / "model"
    shutil.copytree(converted_micro, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hub_token": FAKE_TOKEN}))
    with pytest.raises(HubPublishError, match=r"\['config.json'\] contain something shaped like a Hugging Face token"):
        plan_upload(folder, "model")


def test_refuses_folders_of_the_wrong_kind(tmp_path, folders, converted_micro):
    with pytest.raises(HubPublishError, match="is not a model folder: expected config.json and"):
        push_model(folders["dataset"], "me/clay", dry_run=True, card=False)
    with pytest.raises(HubPublishError, match="is not a chip dataset folder"):
        push_dataset(folders["model"], "me/chips", dry_run=True)
    with pytest.raises(HubPublishError, match="is not a Space folder: expected README.md with 'sdk:'"):
        push_space(folders["dataset"], "me/space", dry_run=True)
    with pytest.raises(HubPublishError, match="is not a folder"):
        plan_upload(tmp_path / "missing", "model")
    with pytest.raises(HubPublishError, match="kind must be one of"):
        plan_upload(tmp_path, "bucket")
    folder = tmp_path / "no-auto-map"
    shutil.copytree(converted_micro, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))
    with pytest.raises(HubPublishError, match="needs an auto_map whose modules are in the folder"):
        push_model(folder, "me/clay", dry_run=True)


def test_refuses_a_space_without_the_model_and_collection_it_starts_from(tmp_path, folders):
    space = tmp_path / "space"
    shutil.copytree(folders["space"], space, symlinks=True)
    shutil.rmtree(space / "model")
    with pytest.raises(HubPublishError, match=r"is missing \['model/config.json'\], so the pushed Space could not"):
        push_space(space, "me/space", dry_run=True)
    assert "model/config.json" not in push_space(space, "me/space", dry_run=True, bundled_model=False).plan.paths
    cli = ["space", str(space), "--repo-id", "me/space", "--dry-run"]
    assert _cli().main(cli) == 1 and _cli().main([*cli, "--no-bundled-model"]) == 0  # a folder it cannot push: 1
    shutil.rmtree(space / "collection")
    with pytest.raises(HubPublishError, match=r"is missing \['collection/collection.json'\]"):
        push_space(space, "me/space", dry_run=True, bundled_model=False)


def test_refuses_bad_repo_ids(converted_micro):
    for bad in ("no-namespace", "a/b/c", "me/../x", "me/with space"):
        with pytest.raises(HubPublishError, match="repo id must look like 'namespace/name'"):
            push_model(converted_micro, bad, dry_run=True, card=False)


def test_push_model_refuses_an_unpublishable_folder_before_rendering_its_card(tmp_path, converted_micro):
    """The card module describes any model folder; push_model plans first, so the Hub's rules come first."""
    folder = tmp_path / "model"
    shutil.copytree(converted_micro, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))
    assert "| encoder width D |" in render_model_card(folder, "me/clay")  # a card needs no auto_map...
    with pytest.raises(HubPublishError, match="needs an auto_map"):  # ...a push does, with or without one
        push_model(folder, "me/clay", dry_run=True, card_template=tmp_path / "missing.md")


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["dataset", "{tmp}", "--repo-id", "me/chips", "--dry-run"], 1, "is not a chip dataset folder"),
        (["model", "{tmp}/missing", "--repo-id", "me/clay", "--dry-run"], 1, "is not a folder"),
        (["model", "{tmp}", "--repo-id", "no-namespace"], 2, "repo id must look like 'namespace/name'"),
        (["bucket", "{tmp}", "--repo-id", "me/clay"], 2, "invalid choice: 'bucket'"),
        (["model", "{tmp}"], 2, "the following arguments are required: --repo-id"),
    ],
)
def test_cli_errors_exit_1_for_a_failed_push_and_2_for_a_wrong_command_in_one_line(tmp_path, capsys, argv, code, words):
    assert _cli().main([arg.format(tmp=tmp_path) for arg in argv]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err


def test_cli_a_hub_it_cannot_reach_is_a_failed_push_in_one_line(tmp_path, converted_micro):
    """Nothing listens on the endpoint: the connection error of the HTTP client is reported as one line, exit 1."""
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "HF_TOKEN": TEST_TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    argv = ["model", str(converted_micro), "--repo-id", "me/clay", "--no-card"]
    script = REPO_ROOT / "scripts" / "push_to_hub.py"
    proc = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (
        proc.stderr.startswith("error: could not reach the Hub at http://127.0.0.1:") and proc.stderr.count("\n") == 1
    )


def test_cli_flags_keep_their_spellings(tmp_path):
    """--branch is --revision, --dataset repeats, the positional folder stays one after a --dataset."""
    args, card, space, _ = _cli().parse_args(
        ["--dataset", "me/a", "model", str(tmp_path), "--repo-id", "me/clay", "--dataset", "me/b", "--branch", "v2"]
    )
    assert (args.kind, args.folder, args.repo_id, args.revision) == ("model", tmp_path, "me/clay", "v2")
    assert card.dataset == ["me/a", "me/b"] and card.license == "apache-2.0" and not space.no_bundled_model


# --------------------------------------------------------------------------------------------------
# the server itself: routes the clients rely on
# --------------------------------------------------------------------------------------------------


def _request(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_server_resolve_range_revisions_and_errors(pushed, local_hub):
    files = local_hub.files(MODEL_ID)
    weights = files["model.safetensors"]
    head = local_hub.commits(MODEL_ID)[0].sha
    base = f"{local_hub.url}/{MODEL_ID}/resolve"
    status, headers, _ = _request(f"{base}/main/model.safetensors", "HEAD")
    assert status == 200 and headers["X-Repo-Commit"] == head and int(headers["Content-Length"]) == len(weights)
    assert headers["X-Linked-Etag"].strip('"') == hashlib.sha256(weights).hexdigest()
    status, headers, body = _request(f"{base}/{head[:10]}/model.safetensors", headers={"Range": "bytes=8-23"})
    assert status == 206 and body == weights[8:24] and headers["Content-Range"] == f"bytes 8-23/{len(weights)}"
    status, _, body = _request(f"{base}/main/model.safetensors", headers={"Range": "bytes=-5"})
    assert status == 206 and body == weights[-5:]
    status, headers, _ = _request(f"{base}/main/missing.json", "HEAD")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"
    status, headers, _ = _request(f"{base}/nope/config.json")
    assert status == 404 and headers["X-Error-Code"] == "RevisionNotFound"
    # the private dataset is hidden without the token, served with it
    url = f"{local_hub.url}/datasets/{DATASET_ID}/resolve/main/README.md"
    assert _request(url)[0] == 404
    assert _request(url, headers={"Authorization": f"Bearer {TEST_TOKEN}"})[0] == 200
    # creating an existing repo answers 409 with its url (what create_repo(exist_ok=True) expects)
    auth = {"Authorization": f"Bearer {TEST_TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"name": "clay-micro", "organization": TEST_USER, "type": "model"}).encode()
    status, _, answer = _request(f"{local_hub.url}/api/repos/create", "POST", auth, body)
    assert status == 409 and json.loads(answer)["url"] == f"{local_hub.url}/{MODEL_ID}"
    assert _request(f"{local_hub.url}/api/repos/create", "POST", {"Content-Type": "application/json"}, body)[0] == 401
    status, _, answer = _request(f"{local_hub.url}/api/models/{MODEL_ID}/revision/{head}")
    info = json.loads(answer)
    assert status == 200 and info["sha"] == head and info["cardData"]["library_name"] == "transformers"
    assert {s["rfilename"] for s in info["siblings"]} == set(files)
