"""Chip datasets: tile raster sources into fixed-size chips and write them as sharded Parquet.

    >>> summary = build_chip_dataset([spec_a, spec_b], "chips/", chip_size=256, num_workers=4)
    >>> summary.num_chips, summary.num_shards

Layout of a build (one folder, any number of splits)::

    chips/
      README.md                          dataset card: YAML ``configs`` -> the Parquet files, sources table
      manifest.json                      settings, sources, chips per sensor, dropped chips, shard files
      data/<split>/<source>-00000.parquet   one chip per row (schema below), shards named per source
      .build/config.json                 the settings every later run into this folder must share
      .build/<split>/<source>.json       a source's done marker, written last (resume skips these sources)
      .build/<split>/staging/<source>/   shards of a source being built (moved into data/ when it is done)

The build records live in a hidden folder, so ``datasets.load_dataset("parquet", data_dir=...)`` (which
reads every file under a ``train/`` folder but skips hidden ones) sees only the shards. Each Parquet row
group holds at most ``ROW_GROUP_ROWS`` (16) chips, which gives ``IterableDataset.reshard()`` room to split
shards for many workers.

Parquet schema (one row per chip; see :func:`chip_schema`)::

    chip_id string, pixels binary (C*H*W values, little-endian, native dtype), shape list<int32> [C, H, W],
    dtype string (numpy name), valid_mask binary|null (np.packbits of (H, W), null when every pixel is valid),
    sensor string|null, band_names list<string>, wavelengths list<double>|null (micrometres),
    mean list<double>|null, std list<double>|null, gsd double (metres), lat double, lon double,
    datetime string|null (ISO 8601), bounds list<double> [left, bottom, right, top], crs string,
    source string, license string|null, row int32, col int32, cloud_fraction double|null,
    platform string|null, decibels bool

The columns are the chip dict of :mod:`clay_hf.io` (``chip_id`` is io's ``"<source name>/<row>_<col>"``),
with ``valid`` packed into ``valid_mask`` and ``pixels`` split into bytes, shape and dtype.

Why bytes + shape + dtype rather than a ``datasets.Array3D`` feature: one build mixes band counts (a
10-band Sentinel-2 chip next to a 6-band Landsat one), dtypes (uint16 reflectance, float32 backscatter)
and, across builds, chip sizes. ``Array3D`` fixes the dtype and H, W for the whole dataset, and every
shard must share one Arrow schema for ``load_dataset("parquet", streaming=True)``; a binary column does
not care. It is plain Arrow (pyarrow, DuckDB and pandas read it without datasets' extension types), it is
bit-exact in the native dtype, and decoding is one ``np.frombuffer`` (:func:`clay_hf.data.decode_chip`).

Writes are atomic: a source's shards are written into its staging folder and moved into ``data/`` with
``os.replace`` only when the source is complete; its done marker is written after that. A rerun skips
sources with a marker (and an unchanged spec, by :func:`spec_fingerprint`) and redoes the others from
scratch (their stray shards and staging folders are deleted first), so an interrupted build (an
exception, a killed worker, a lost node) never leaves a half-written shard, or the shards of a half-built
source, visible, and resumes where it stopped. Bad sources (corrupt, without CRS, all nodata, bands of
mismatched size, unknown band names, STAC items without usable assets) stop the build with an error
naming the file, or, with ``skip_errors=True``, are logged, recorded in the manifest and retried next run.

Sources are built in parallel by processes (``ProcessPoolExecutor``, spawn), and across machines by
giving each rank its share of the sources (``rank``/``world_size``, or
``accelerate.PartialState().split_between_processes``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .errors import ChipSizeError, ClayError, ClayInputError, EmptyRasterError, IncompatibleBuildError, NoChipsError
from .io import SourceSpec, iter_chips, open_source, sources_from_path
from .sensors import get_sensor

__all__ = [
    "FORMAT_VERSION",
    "chip_schema",
    "as_source_specs",
    "spec_fingerprint",
    "SourceSummary",
    "ChipBuildSummary",
    "build_chip_dataset",
    "write_dataset_card",
    "iter_shards",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ROW_GROUP_ROWS = 16  # chips per Parquet row group: bounds memory, and reshard() splits shards at row groups
BUILD_DIR = ".build"  # hidden: load_dataset("parquet", data_dir=...) must not take its JSON for data


@functools.cache
def chip_schema():
    """The Arrow schema of every shard: explicit, so shards with all-null columns still share one schema."""
    import pyarrow as pa

    return pa.schema(
        [
            ("chip_id", pa.string()),
            ("pixels", pa.binary()),  # (C, H, W) little-endian bytes of `dtype`
            ("shape", pa.list_(pa.int32())),  # [C, H, W]
            ("dtype", pa.string()),  # numpy name: uint16, int16, float32...
            ("valid_mask", pa.binary()),  # np.packbits of (H, W) bool; null when every pixel is valid
            ("sensor", pa.string()),
            ("band_names", pa.list_(pa.string())),  # (C,)
            ("wavelengths", pa.list_(pa.float64())),  # (C,) micrometres
            ("mean", pa.list_(pa.float64())),  # (C,)
            ("std", pa.list_(pa.float64())),  # (C,)
            ("gsd", pa.float64()),  # metres
            ("lat", pa.float64()),  # chip centre, WGS84 degrees
            ("lon", pa.float64()),
            ("datetime", pa.string()),  # ISO 8601
            ("bounds", pa.list_(pa.float64())),  # [left, bottom, right, top] in `crs`
            ("crs", pa.string()),
            ("source", pa.string()),
            ("license", pa.string()),
            ("row", pa.int32()),  # chip origin in the source grid, pixels
            ("col", pa.int32()),
            ("cloud_fraction", pa.float64()),
            ("platform", pa.string()),  # the satellite, e.g. "sentinel-2a", when known
            ("decibels", pa.bool_()),  # SAR values already in decibels (the processor must not convert again)
        ]
    )


# --------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------


def as_source_specs(sources: Sequence[Any], **fields: Any) -> list[SourceSpec]:
    """``SourceSpec`` objects as they are; paths through :func:`clay_hf.io.sources_from_path`.

    A path is a raster file, a folder of band files (one source) or a STAC Item/ItemCollection JSON;
    ``fields`` (``sensor``, ``datetime``, ``resolution``...) apply to the paths (see ``sources_from_path``).
    """
    specs, _ = _expand_sources(sources, fields, skip_errors=False)
    return specs


def _input_name(source: Any) -> str:
    """A name for a path that could not be expanded into sources (for the summary and its marker)."""
    text = os.fspath(source).rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "source"


def _check_source_fields(fields: dict[str, Any]) -> None:
    """A bad ``--datetime`` or ``--sensor`` is the user's mistake, not a bad source to skip: raise it up front."""
    known = {f.name for f in dataclasses.fields(SourceSpec)} - {"paths"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ClayInputError(f"unknown source fields {unknown}; SourceSpec fields are {sorted(known)}")
    SourceSpec(paths=("fields-check",), **fields)  # validates datetime, resolution, qa_kind...
    if fields.get("sensor") is not None:
        get_sensor(fields["sensor"])  # an unknown name raises with a did-you-mean


def _expand_sources(
    sources: Sequence[Any], fields: dict[str, Any], skip_errors: bool
) -> tuple[list[SourceSpec], list[SourceSummary]]:
    """Specs of ``sources``, and the summaries of paths that failed (only with ``skip_errors``)."""
    _check_source_fields(fields)
    specs: list[SourceSpec] = []
    failed: list[SourceSummary] = []
    for source in sources:
        if isinstance(source, SourceSpec):
            specs.append(source)
        elif isinstance(source, (str, os.PathLike)):
            try:
                specs.extend(sources_from_path(source, **fields))
            except ClayError as err:
                if not skip_errors:
                    raise
                logger.warning("skipping bad source %s: %s", os.fspath(source), err)
                failed.append(_failed_summary(_input_name(source), err))
        else:
            raise ClayInputError(
                f"a chip source must be a SourceSpec, a raster file, a folder of band files or a STAC JSON path, "
                f"got {type(source).__name__}; build one with clay_hf.io.SourceSpec(paths=[...], sensor=...)"
            )
    names = [spec.name for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ClayInputError(
            f"sources must have distinct names (shards, chip ids and resume use them), got {twice} more than once; "
            "pass name= to the SourceSpecs, or list each source once"
        )
    return specs, failed


def spec_fingerprint(spec: SourceSpec) -> str:
    """A hash of everything that describes a source: a source whose spec changed is built again on resume."""
    return hashlib.sha1(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _chip_row(chip: dict[str, Any]) -> dict[str, Any]:
    """One chip dict -> one Parquet row (pixels as little-endian bytes of their native dtype)."""
    pixels = np.ascontiguousarray(chip["pixels"])  # (C, H, W)
    pixels = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    valid = chip.get("valid")
    all_valid = valid is None or bool(np.all(valid))
    return {
        "chip_id": str(chip["chip_id"]),
        "pixels": pixels.tobytes(),
        "shape": list(pixels.shape),
        "dtype": pixels.dtype.name,
        "valid_mask": None if all_valid else np.packbits(np.asarray(valid, dtype=bool)).tobytes(),
        "sensor": chip.get("sensor"),
        "band_names": [str(b) for b in chip["band_names"]],
        "wavelengths": _floats(chip.get("wavelengths")),
        "mean": _floats(chip.get("mean")),
        "std": _floats(chip.get("std")),
        "gsd": float(chip["gsd"]),
        "lat": float(chip["lat"]),
        "lon": float(chip["lon"]),
        "datetime": chip.get("datetime"),
        "bounds": _floats(chip["bounds"]),
        "crs": str(chip["crs"]),
        "source": str(chip["source"]),
        "license": chip.get("license"),
        "row": int(chip["row"]),
        "col": int(chip["col"]),
        "cloud_fraction": None if chip.get("cloud_fraction") is None else float(chip["cloud_fraction"]),
        "platform": chip.get("platform"),
        "decibels": bool(chip.get("decibels", False)),
    }


# --------------------------------------------------------------------------------------------------
# writing one source (runs in a worker process)
# --------------------------------------------------------------------------------------------------


class _ShardWriter:
    """Rows -> ``<key>-00000.parquet``, ``<key>-00001.parquet``... in ``folder`` (a source's staging folder),
    each written to a temporary file first, in row groups of at most ``ROW_GROUP_ROWS`` chips."""

    def __init__(self, folder: Path, key: str, rows_per_shard: int) -> None:
        self.folder, self.key, self.rows_per_shard = folder, key, rows_per_shard
        self.shards: list[str] = []
        self._rows: list[dict[str, Any]] = []
        self._writer = None
        self._tmp: Path | None = None
        self._in_shard = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= ROW_GROUP_ROWS or self._in_shard + len(self._rows) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        while self._rows:
            if self._writer is None:
                self._tmp = self.folder / f".{self.key}-{len(self.shards):05d}.parquet.tmp-{os.getpid()}"
                self._writer = pq.ParquetWriter(self._tmp, chip_schema(), compression="zstd")
            take = min(len(self._rows), self.rows_per_shard - self._in_shard)
            batch, self._rows = self._rows[:take], self._rows[take:]
            self._writer.write_table(pa.Table.from_pylist(batch, schema=chip_schema()), row_group_size=ROW_GROUP_ROWS)
            self._in_shard += take
            if self._in_shard >= self.rows_per_shard:
                self._finish_shard()

    def _finish_shard(self) -> None:
        self._writer.close()
        name = f"{self.key}-{len(self.shards):05d}.parquet"
        os.replace(self._tmp, self.folder / name)  # the shard appears complete or not at all
        self.shards.append(name)
        self._writer, self._tmp, self._in_shard = None, None, 0

    def close(self) -> list[str]:
        self._flush()
        if self._writer is not None:
            self._finish_shard()
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class _Task:
    spec: SourceSpec  # picklable; opened in the worker
    output_dir: str
    split: str
    chip_size: int
    stride: int
    max_nodata_fraction: float
    max_cloud_fraction: float
    rows_per_shard: int
    patch_size: int
    skip_errors: bool = False


SKIP_REASONS = ("too_small", "error")


@dataclasses.dataclass
class SourceSummary:
    """What one source contributed to a build (also its done marker ``.build/<split>/<name>.json``)."""

    name: str
    sensor: str | None
    band_names: list[str]
    license: str | None
    num_chips: int
    shards: list[str]
    seconds: float
    fingerprint: str = ""  # spec_fingerprint of the spec it was built from
    note: str | None = None  # why a source gave no chips (or fewer than it could)
    skipped: str | None = None  # "too_small" (smaller than a chip) or "error" (a bad source, skip_errors=True)
    resumed: bool = False  # True when a previous run had finished this source
    platform: str | None = None
    dropped_nodata: int = 0  # chips dropped for more nodata than max_nodata_fraction
    dropped_cloud: int = 0  # chips dropped for more cloud than max_cloud_fraction

    @property
    def sensor_label(self) -> str:
        """The key of per-sensor counts: the sensor-table name, else the platform, else "unknown"."""
        return self.sensor or self.platform or "unknown"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceSummary:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def _remove_stale(folder: Path, name: str) -> None:
    """Delete what an interrupted run left of this source: shards without a done marker, temporary files."""
    own = re.compile(rf"\.?{re.escape(name)}-\d{{5,}}\.parquet(\.tmp-\d+)?")  # not "<name>-2-00000.parquet"
    for path in folder.iterdir():
        if own.fullmatch(path.name):
            logger.debug("removing %s left by an interrupted build", path)
            path.unlink(missing_ok=True)


def _failed_summary(name: str, err: BaseException, spec: SourceSpec | None = None) -> SourceSummary:
    return SourceSummary(
        name=name, sensor=spec.sensor if spec else None, band_names=[], license=spec.license if spec else None,
        num_chips=0, shards=[], seconds=0.0, fingerprint=spec_fingerprint(spec) if spec else "",
        note=f"{type(err).__name__}: {err}", skipped="error", platform=spec.platform if spec else None,
    )  # fmt: skip


def _write_marker(output_dir: str | os.PathLike, split: str, summary: SourceSummary) -> None:
    marker = Path(output_dir) / BUILD_DIR / split / f"{summary.name}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(summary.to_dict(), indent=1))


def _build_source(task: _Task) -> SourceSummary:
    """Tile one source and write its shards, then its done marker. Top-level so spawn workers can import it.

    The shards go to the source's staging folder and are moved into ``data/<split>/`` once the source is
    complete. A bad source (a ``ClayError`` from opening or reading it, an all-nodata scene) is raised, or
    with ``task.skip_errors`` logged and recorded (no shards; retried by the next run).
    """
    start = time.perf_counter()
    spec = task.spec
    folder = Path(task.output_dir) / "data" / task.split
    staging = Path(task.output_dir) / BUILD_DIR / task.split / "staging" / spec.name
    (Path(task.output_dir) / BUILD_DIR / task.split / f"{spec.name}.json").unlink(missing_ok=True)
    _remove_stale(folder, spec.name)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    writer = _ShardWriter(staging, spec.name, task.rows_per_shard)
    stats: dict[str, int] = {}
    note = skipped = None
    try:
        with open_source(spec) as raster:
            sensor, band_names, license = raster.sensor, list(raster.band_names), raster.license
            platform = raster.platform
            chips = iter_chips(
                raster, task.chip_size, task.stride, task.max_nodata_fraction, task.max_cloud_fraction,
                task.patch_size, stats=stats,
            )  # fmt: skip
            try:
                for chip in chips:
                    writer.add(_chip_row(chip))
            except ChipSizeError as err:  # the raster is smaller than one chip: not an error, a skip
                note, skipped = str(err), "too_small"
                logger.warning("skipping source %s: %s", spec.name, err)
            except EmptyRasterError as err:
                if stats.get("empty", 0) == stats.get("windows", 0):
                    raise  # not one valid pixel: a wrong file or nodata value, a bad source
                note = str(err)  # every chip over the nodata threshold: dropped chips, counted below
                logger.info("source %s gave no chips: %s", spec.name, err)
        shards = writer.close()
    except ClayError as err:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        if not task.skip_errors:
            raise
        logger.warning("skipping bad source %s: %s", spec.name, err)
        summary = _failed_summary(spec.name, err, spec)
        _write_marker(task.output_dir, task.split, summary)
        return summary
    except BaseException:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    num_chips = sum(_parquet_rows(staging / s) for s in shards)
    for shard in shards:  # the source is complete: its shards appear in data/ (each rename atomic)
        os.replace(staging / shard, folder / shard)
    shutil.rmtree(staging, ignore_errors=True)
    summary = SourceSummary(
        name=spec.name,
        sensor=sensor,
        band_names=band_names,
        license=license,
        num_chips=num_chips,
        shards=shards,
        seconds=round(time.perf_counter() - start, 3),
        fingerprint=spec_fingerprint(spec),
        note=note,
        skipped=skipped,
        platform=platform,
        dropped_nodata=stats.get("nodata", 0),
        dropped_cloud=stats.get("cloud", 0),
    )
    _write_marker(task.output_dir, task.split, summary)  # last: the source is done
    logger.info("source %s: %d chips in %d shards (%.1f s)", spec.name, summary.num_chips, len(shards), summary.seconds)
    return summary


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


# --------------------------------------------------------------------------------------------------
# the build
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ChipBuildSummary:
    """The result of :func:`build_chip_dataset` (also written as ``manifest.json``)."""

    output_dir: str
    split: str
    chip_size: int
    num_chips: int
    num_shards: int
    sources: list[SourceSummary]
    seconds: float

    @property
    def num_resumed(self) -> int:
        return sum(s.resumed for s in self.sources)

    @property
    def chips_per_sensor(self) -> dict[str, int]:
        """Chips per sensor (the sensor-table name, else the platform), resumed sources included."""
        return _tally(self.sources)["chips_per_sensor"]

    @property
    def dropped_chips(self) -> dict[str, int]:
        """Chips dropped for ``nodata`` and for ``cloud``."""
        return _tally(self.sources)["dropped_chips"]

    @property
    def skipped_sources(self) -> dict[str, list[str]]:
        """Names of the sources skipped whole: ``too_small`` (smaller than a chip) and ``error`` (bad input)."""
        return _tally(self.sources)["skipped_sources"]


def _tally(sources: Sequence[SourceSummary]) -> dict[str, Any]:
    """Chips per sensor, chips dropped per reason and sources skipped per reason (summary and manifest)."""
    per_sensor: dict[str, int] = {}
    for s in sources:
        if s.num_chips:
            per_sensor[s.sensor_label] = per_sensor.get(s.sensor_label, 0) + s.num_chips
    return {
        "chips_per_sensor": dict(sorted(per_sensor.items())),
        "dropped_chips": {
            "nodata": sum(s.dropped_nodata for s in sources),
            "cloud": sum(s.dropped_cloud for s in sources),
        },
        "skipped_sources": {reason: [s.name for s in sources if s.skipped == reason] for reason in SKIP_REASONS},
    }


def _check_build_config(output_dir: Path, config: dict[str, Any]) -> None:
    """Refuse a folder holding a build with other settings; record the settings for the next run."""
    path = output_dir / BUILD_DIR / "config.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (previous.get(k), v) for k, v in config.items() if previous.get(k) != v}
        if changed:
            diffs = ", ".join(f"{k} {old!r} there vs {new!r} now" for k, (old, new) in changed.items())
            raise IncompatibleBuildError(
                f"{output_dir} holds a chip build made with other settings ({diffs}); "
                "use the same settings to resume it, or choose a new --output folder (or delete this one)"
            )
        return
    if output_dir.exists() and any((output_dir / "data").glob("*/*.parquet")):
        raise IncompatibleBuildError(
            f"{output_dir} holds Parquet shards but no {BUILD_DIR}/config.json; it is not a clay_hf chip build "
            "(or an older one): choose a new --output folder"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(config, indent=1))


def _split_for_rank(tasks: list[_Task], rank: int | None, world_size: int | None) -> tuple[list[_Task], Any]:
    """This machine's share of the sources: explicit rank/world_size, else accelerate's split, else all.

    Returns the share and the accelerate state when accelerate split it (None otherwise).
    """
    if rank is not None or world_size is not None:
        rank, world_size = int(rank or 0), int(world_size or 1)
        if not 0 <= rank < world_size:
            raise ClayError(f"rank must be in [0, {world_size - 1}] for world_size {world_size}, got {rank}")
        return tasks[rank::world_size], None
    state = _accelerate_state()
    if state is None or state.num_processes == 1:
        return tasks, None
    with state.split_between_processes(tasks) as mine:
        return list(mine), state


def _accelerate_state():
    """The initialised ``accelerate.PartialState``, or None (not installed, or never initialised)."""
    try:
        from accelerate import PartialState
    except ImportError:  # pragma: no cover - accelerate is a training extra
        return None
    return PartialState() if PartialState._shared_state else None


def build_chip_dataset(
    sources: Sequence[Any],
    output_dir: str | os.PathLike,
    chip_size: int = 256,
    stride: int | None = None,
    max_nodata_fraction: float = 0.0,
    max_cloud_fraction: float = 1.0,
    rows_per_shard: int = 256,
    num_workers: int = 1,
    split: str = "train",
    patch_size: int = 8,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = False,
    skip_errors: bool = False,
    source_fields: dict[str, Any] | None = None,
) -> ChipBuildSummary:
    """Tile ``sources`` into ``chip_size`` chips and write them as sharded Parquet under ``output_dir``.

    Args:
        sources: ``clay_hf.io.SourceSpec`` objects, or paths (:func:`clay_hf.io.sources_from_path`): a raster
            file, a folder of band files (one source) or a STAC Item/ItemCollection JSON.
        output_dir: the dataset folder; created if needed. A folder from a previous run with the same
            settings is resumed: finished sources are skipped, unfinished ones are redone.
        chip_size: chip side in pixels; a multiple of ``patch_size`` and at most the raster's size.
        stride: step between chips in pixels (default ``chip_size``: no overlap).
        max_nodata_fraction: drop chips with a larger fraction of nodata pixels (0: only complete chips).
        max_cloud_fraction: drop chips with a larger cloud fraction, where the source has a cloud mask.
        rows_per_shard: chips per Parquet file. For training on N processes x W dataloader workers make the
            total shard count a multiple of N x W (:func:`clay_hf.data.get_dataloader` warns otherwise).
        num_workers: processes building sources in parallel (spawned; 1 builds in this process).
        split: the dataset split the chips belong to (``data/<split>/``).
        patch_size: the model's patch size P; ``chip_size`` must be a multiple of it.
        rank, world_size: build only this machine's share of ``sources`` (``sources[rank::world_size]``)
            on a cluster writing to one shared folder. Default: ``accelerate.PartialState`` when it is
            initialised (``split_between_processes``), else everything.
        progress: show a tqdm bar (chips and chips/s).
        skip_errors: a bad source (corrupt or truncated, without CRS, all nodata, bands of mismatched size,
            unknown band names, a STAC item without usable assets) is logged, skipped and counted
            (``summary.skipped_sources["error"]``, ``manifest.json``) instead of stopping the build; it is
            tried again by the next run. Either way it leaves no shard behind.
        source_fields: :class:`~clay_hf.io.SourceSpec` fields for the sources given as paths (``sensor``,
            ``datetime``, ``resolution``...): the spec of a raster or band folder, and what a STAC item
            does not say.

    Returns:
        :class:`ChipBuildSummary` (chips per sensor, dropped chips and skipped sources with reasons); the same
        numbers are in ``manifest.json``.

    Raises:
        RasterError, StacError, UnknownBandError...: a bad source (without ``skip_errors``), naming its file.
        ChipSizeError: ``chip_size`` not a multiple of ``patch_size``, or larger than every raster (a source
            smaller than one chip is skipped with a warning and a ``note`` in its summary).
        IncompatibleBuildError: ``output_dir`` holds a build with another chip size, stride or thresholds.
        NoChipsError: no sources, or every chip was dropped.
    """
    start = time.perf_counter()
    if isinstance(chip_size, bool) or not isinstance(chip_size, int) or chip_size < patch_size:
        raise ChipSizeError(f"chip_size must be an integer of at least patch_size {patch_size}, got {chip_size!r}")
    if chip_size % patch_size:
        lower = chip_size - chip_size % patch_size
        raise ChipSizeError(
            f"chip_size {chip_size} is not a multiple of the patch size {patch_size}; use {lower} or {lower + patch_size}"
        )
    stride = int(stride or chip_size)
    if stride < 1:
        raise ChipSizeError(f"stride must be a positive number of pixels, got {stride}")
    if rows_per_shard < 1:
        raise ClayError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    if not sources:
        raise NoChipsError("no sources given; pass GeoTIFF paths, STAC Items or SourceSpec objects")
    output_dir = Path(output_dir)
    config = {
        "format_version": FORMAT_VERSION,
        "chip_size": chip_size,
        "stride": stride,
        "max_nodata_fraction": float(max_nodata_fraction),
        "max_cloud_fraction": float(max_cloud_fraction),
    }
    specs, failed = _expand_sources(sources, dict(source_fields or {}), skip_errors)
    _check_build_config(output_dir, config)
    (output_dir / "data" / split).mkdir(parents=True, exist_ok=True)

    tasks = [
        _Task(spec, str(output_dir), split, chip_size, stride, float(max_nodata_fraction), float(max_cloud_fraction),
              rows_per_shard, patch_size, bool(skip_errors))
        for spec in specs
    ]  # fmt: skip
    mine, state = _split_for_rank(tasks, rank, world_size)
    done = _done_sources(output_dir, split)
    names = {spec.name for spec in specs} | {f.name for f in failed}
    for name, previous in done.items():  # a bad input of an earlier run that is no longer given, or now reads
        if previous.skipped == "error" and name not in names:
            (output_dir / BUILD_DIR / split / f"{name}.json").unlink(missing_ok=True)
    for summary in failed:
        _write_marker(output_dir, split, summary)
    todo, resumed = [], []
    for task in mine:
        previous = done.get(task.spec.name)
        if previous is not None and previous.skipped == "error":
            logger.info("source %s failed last time; trying it again", task.spec.name)
        elif previous is not None and previous.fingerprint == spec_fingerprint(task.spec):
            resumed.append(dataclasses.replace(previous, resumed=True))
            continue
        elif previous is not None:
            logger.warning("source %s changed since it was built; building it again", task.spec.name)
        todo.append(task)
    if resumed:
        logger.info("resuming %s: %d of %d sources already built", output_dir, len(resumed), len(mine))

    built = _run_tasks(todo, num_workers, progress)
    order = {t.spec.name: i for i, t in enumerate(mine)}
    summaries = failed + sorted(resumed + built, key=lambda s: order[s.name])
    if state is not None:  # accelerate: the main process writes the card once every rank is done
        state.wait_for_everyone()
        if state.is_main_process:
            write_dataset_card(output_dir)
    else:  # one process, or independent ranks: rewrite it; run write_dataset_card once more after all finish
        write_dataset_card(output_dir)
    summary = ChipBuildSummary(
        output_dir=str(output_dir),
        split=split,
        chip_size=chip_size,
        num_chips=sum(s.num_chips for s in summaries),
        num_shards=sum(len(s.shards) for s in summaries),
        sources=summaries,
        seconds=round(time.perf_counter() - start, 3),
    )
    if summary.num_chips == 0 and mine and not any(s.skipped == "error" for s in summaries):
        if all(s.skipped == "too_small" for s in summaries):
            raise ChipSizeError("; ".join(s.note for s in summaries))
        notes = "".join(f"; {s.name}: {s.note}" for s in summaries if s.note)
        raise NoChipsError(
            f"no chips from {len(summaries)} source(s): every {chip_size}x{chip_size} chip had more than "
            f"{max_nodata_fraction:.0%} nodata or more than {max_cloud_fraction:.0%} cloud{notes}. Raise "
            "max_nodata_fraction or max_cloud_fraction, or choose a smaller chip_size"
        )
    return summary


def _run_tasks(tasks: list[_Task], num_workers: int, progress: bool) -> list[SourceSummary]:
    from tqdm.auto import tqdm

    results: list[SourceSummary] = []
    bar = tqdm(total=len(tasks), unit="source", disable=not progress, desc="chipping")
    chips, start = 0, time.perf_counter()

    def _done(summary: SourceSummary) -> None:
        nonlocal chips
        results.append(summary)
        chips += summary.num_chips
        bar.set_postfix(chips=chips, chips_per_s=f"{chips / max(time.perf_counter() - start, 1e-9):.1f}")
        bar.update(1)

    try:
        if num_workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                _done(_with_source_note(_build_source, task))
            return results
        context = multiprocessing.get_context("spawn")  # fork is unsafe with GDAL and torch threads
        with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(tasks)), mp_context=context) as pool:
            futures = {pool.submit(_build_source, task): task for task in tasks}
            try:
                for future in concurrent.futures.as_completed(futures):
                    try:
                        _done(future.result())
                    except BaseException as err:
                        err.add_note(f"while building chips of source {futures[future].spec.name!r}")
                        raise
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return results
    finally:
        bar.close()


def _with_source_note(fn, task: _Task) -> SourceSummary:
    try:
        return fn(task)
    except BaseException as err:
        err.add_note(f"while building chips of source {task.spec.name!r}")
        raise


def _done_sources(output_dir: Path, split: str) -> dict[str, SourceSummary]:
    folder = output_dir / BUILD_DIR / split
    done = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        summary = SourceSummary.from_dict(json.loads(path.read_text(encoding="utf-8")))
        if all((output_dir / "data" / split / s).is_file() for s in summary.shards):
            done[summary.name] = summary
        else:
            logger.warning("source %s has a done marker but missing shards; building it again", summary.name)
    return done


# --------------------------------------------------------------------------------------------------
# manifest and dataset card
# --------------------------------------------------------------------------------------------------

_HF_LICENSES = {"cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "odbl", "apache-2.0", "mit", "other"}


def _hf_license(licenses: set[str]) -> str:
    """The card's ``license`` field: the Hub's lower-case id when every source shares one, else other/unknown."""
    known = {lic for lic in licenses if lic}
    if len(known) == 1 and next(iter(known)).lower() in _HF_LICENSES:
        return next(iter(known)).lower()
    return "other" if known else "unknown"


def write_dataset_card(output_dir: str | os.PathLike) -> dict[str, Any]:
    """(Re)write ``manifest.json`` and the ``README.md`` dataset card from the done markers of every split.

    Idempotent and atomic, so each rank of a cluster build can call it when it finishes: the last one to
    finish writes the complete card. Returns the manifest.
    """
    output_dir = Path(output_dir)
    config_path = output_dir / BUILD_DIR / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    splits = {}
    for folder in sorted(p for p in (output_dir / BUILD_DIR).glob("*") if p.is_dir()):
        sources = list(_done_sources(output_dir, folder.name).values())
        splits[folder.name] = {
            "num_chips": sum(s.num_chips for s in sources),
            **_tally(sources),  # chips_per_sensor, dropped_chips, skipped_sources
            "shards": [f"data/{folder.name}/{shard}" for s in sources for shard in s.shards],
            "sources": [s.to_dict() for s in sources],
        }
    manifest = {"format_version": FORMAT_VERSION, "settings": config, "splits": splits}
    atomic_write_text(output_dir / "manifest.json", json.dumps(manifest, indent=1))
    atomic_write_text(output_dir / "README.md", _card_text(output_dir.name, config, splits))
    return manifest


def _card_text(name: str, config: dict[str, Any], splits: dict[str, Any]) -> str:
    from huggingface_hub import DatasetCardData

    sources = [s for split in splits.values() for s in split["sources"]]
    card = DatasetCardData(
        license=_hf_license({s.get("license") for s in sources}),
        pretty_name=f"{name} (Clay chips)",
        tags=["earth-observation", "remote-sensing", "satellite-imagery", "clay"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}/*.parquet"} for split in splits],
            }
        ],
    )
    rows = [
        f"| {split} | {s['name']} | {s['sensor'] or 'unknown'} | {', '.join(s['band_names'])} | "
        f"{s['num_chips']} | {s['license'] or 'unknown'} |"
        for split, info in splits.items()
        for s in info["sources"]
    ]
    total = sum(info["num_chips"] for info in splits.values())
    size = config.get("chip_size", "?")
    counts = [
        f"- {split}: chips per sensor {json.dumps(info['chips_per_sensor'])}; dropped chips "
        f"{json.dumps(info['dropped_chips'])}; skipped sources "
        f"{json.dumps({k: len(v) for k, v in info['skipped_sources'].items()})}"
        for split, info in splits.items()
    ]
    return "\n".join(
        [
            "---",
            card.to_yaml(),
            "---",
            "",
            f"# {name}",
            "",
            f"{total} chips of {size} x {size} pixels for [Clay](https://github.com/Clay-foundation/model), "
            "written by `clay_hf.chips.build_chip_dataset` (`scripts/prepare_chips.py`).",
            "",
            "One chip per row: `pixels` holds the `shape` (C, H, W) array as little-endian bytes of `dtype`; "
            "`clay_hf.data.decode_chip` turns a row back into an array, `clay_hf.data.get_dataloader` into "
            "batches of one band set.",
            "",
            *counts,
            "",
            "| split | source | sensor | bands | chips | license |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Settings: `{json.dumps(config, sort_keys=True)}`",
            "",
        ]
    )


def iter_shards(output_dir: str | os.PathLike, split: str = "train") -> Iterator[Path]:
    """The finished Parquet shards of ``split``, in manifest order (sources in build order)."""
    for summary in _done_sources(Path(output_dir), split).values():
        for shard in summary.shards:
            yield Path(output_dir) / "data" / split / shard
