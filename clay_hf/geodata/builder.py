"""Chip datasets: tile raster sources into fixed-size chips and write them as sharded Parquet.

    >>> summary = build_chip_dataset([spec_a, spec_b], "chips/", chip_size=256, num_workers=4)
    >>> summary.num_chips, summary.num_shards

Layout of a build (one folder, any number of splits)::

    chips/
      README.md                          dataset card (:mod:`clay_hf.geodata.dataset_card`): the manifest, rendered
      manifest.json                      settings, sources, chips per sensor, dropped chips, shard files
      data/<split>/<source>-00000.parquet   one chip per row (schema below), shards named per source
      .build/config.json                 the settings every later run into this folder must share
      .build/<split>/<source>.json       a source's done marker, written last (resume skips these sources)
      .build/<split>/staging/<source>/   shards of a source being built (moved into data/ when it is done)
      .lock, .lock.json                  the write lock of the running build and its holder (.lock-rank<r>...)

The build records live in a hidden folder, so ``datasets.load_dataset("parquet", data_dir=...)`` (which
reads every file under a ``train/`` folder but skips hidden ones) sees only the shards. Each Parquet row
group holds at most ``ROW_GROUP_ROWS`` (16) chips, which gives ``IterableDataset.reshard()`` room to split
shards for many workers.

Each row is one chip record in the format of :mod:`clay_hf.geodata.chip_format` (its table, Arrow schema,
:func:`~clay_hf.geodata.chip_format.encode_chip` and :func:`~clay_hf.geodata.chip_format.decode_chip`).

Writes are atomic: a source's shards are written into its staging folder and moved into ``data/`` with
``os.replace`` only when the source is complete; its done marker is written after that. An interrupted build
(an exception, a killed worker, a lost node) never leaves a half-written shard, or the shards of a
half-built source, visible, and the next run resumes where it stopped: the sources it has to build again are
redone from scratch (their stray shards and staging folders are deleted first). Bad sources (corrupt,
without CRS, all nodata, bands of mismatched size, unknown band names, STAC items without usable assets)
stop the build with an error naming the file, or, with ``skip_errors=True``, are logged, recorded in the
manifest and retried next run. One build writes to a folder at a time (:func:`clay_hf.locking.output_lock`,
per rank): a second one fails at once with :class:`~clay_hf.errors.OutputLockedError` naming the holder's
pid; the lock of a killed build dies with it.

What a rerun trusts. A done marker records, at build time, the spec (:func:`spec_fingerprint`), the size and
modification time of each of the source's local files (its rasters, its cloud mask and the STAC JSON it came
from) and the row count of each shard. Every marker of the split is checked against the disk first:

- a source of this run is resumed only when its spec, every one of its files and its shards (their Parquet
  footers: readable, with the recorded row counts) are as they were; otherwise it is built again, with a
  warning saying why (``SourceSummary.rebuilt``). A source file that is now truncated then fails like any
  bad source, and its old chips are gone either way.
- a source built earlier but not given to this run stays (incremental builds, and the other ranks' shares
  of a cluster build), with a warning where its files changed, except when its files are gone (or its
  shards damaged): then it is removed from the dataset (shards and marker) with a warning naming it.
  ``keep_missing=True`` (``--keep-missing``) keeps a source whose files are gone, e.g. in a build folder
  copied from another machine. A URL is not checked.
- markers from older builds, without file and row records, are checked for their shards' total only.

The summary of a build (:class:`ChipBuildSummary`) counts the whole split as ``manifest.json`` and the card
do: this run's sources (``sources``: built, resumed, rebuilt, skipped) and the others in the folder
(``kept``); ``removed`` names what left it. The card is rewritten even when a build stops with an error,
since the build may have removed sources.

Sources are built in parallel by processes (``ProcessPoolExecutor``, spawn), and across machines by
giving each rank its share of the sources (``rank``/``world_size``, or
``accelerate.PartialState().split_between_processes``). A worker ends itself when the build process that
started it dies (killed, out of memory), so no worker outlives a killed build: a thread in each worker
watches ``os.getppid()``, and on Linux the kernel also sends it SIGKILL (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..distributed import accelerate_state
from ..errors import ChipSizeError, ClayError, ClayInputError, EmptyRasterError, IncompatibleBuildError, NoChipsError
from ..locking import output_lock
from ..sensors import get_sensor
from .chip_format import DEFAULT_MAX_NODATA, chip_schema, encode_chip
from .dataset_card import render_dataset_card
from .raster import iter_chips, open_source
from .sources import SourceSpec, sources_from_path

__all__ = [
    "FORMAT_VERSION",
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
PARENT_POLL_S = 0.5  # how often a worker process checks that the build process that started it is alive


# --------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------


def as_source_specs(sources: Sequence[Any], **fields: Any) -> list[SourceSpec]:
    """``SourceSpec`` objects as they are; paths through :func:`clay_hf.geodata.sources.sources_from_path`.

    A path is a raster file, a folder of band files (one source) or a STAC Item/ItemCollection JSON;
    ``fields`` (``sensor``, ``datetime``, ``resolution``...) apply to the paths (see ``sources_from_path``).
    """
    specs, _, _ = _expand_sources(sources, fields, skip_errors=False)
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
) -> tuple[list[SourceSpec], list[SourceSummary], dict[str, str]]:
    """Specs of ``sources``, the summaries of paths that failed (only with ``skip_errors``), and the file each
    spec given as a file path came from (a STAC JSON, whose changes a rerun must see; or the raster itself)."""
    _check_source_fields(fields)
    specs: list[SourceSpec] = []
    failed: list[SourceSummary] = []
    origins: dict[str, str] = {}
    for source in sources:
        if isinstance(source, SourceSpec):
            specs.append(source)
        elif isinstance(source, (str, os.PathLike)):
            try:
                found = sources_from_path(source, **fields)
                specs.extend(found)
                if os.path.isfile(source):
                    origins.update((spec.name, os.path.abspath(source)) for spec in found)
            except ClayError as err:
                if not skip_errors:
                    raise
                logger.warning("skipping bad source %s: %s", os.fspath(source), err)
                summary = _failed_summary(_input_name(source), err)
                failed.append(dataclasses.replace(summary, files=_file_stats([os.path.abspath(source)])))
        else:
            raise ClayInputError(
                f"a chip source must be a SourceSpec, a raster file, a folder of band files or a STAC JSON path, "
                f"got {type(source).__name__}; build one with clay_hf.geodata.sources.SourceSpec(paths=[...], sensor=...)"
            )
    names = [spec.name for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ClayInputError(
            f"sources must have distinct names (shards, chip ids and resume use them), got {twice} more than once; "
            "pass name= to the SourceSpecs, or list each source once"
        )
    return specs, failed, origins


def spec_fingerprint(spec: SourceSpec) -> str:
    """A hash of everything that describes a source: a source whose spec changed is built again on resume."""
    return hashlib.sha1(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _is_local(path: str) -> bool:
    """A path on this machine (not a URL or a GDAL virtual path such as ``/vsicurl/...``): its stats can be checked."""
    return not re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", path) and not path.startswith("/vsi")


def _source_files(spec: SourceSpec, origin: str | None = None) -> tuple[str, ...]:
    """The local files a source is read from (rasters, cloud mask, the STAC JSON it came from), absolute."""
    paths = [*spec.paths, *([spec.cloud_mask] if spec.cloud_mask else []), *([origin] if origin else [])]
    return tuple(sorted({os.path.abspath(p) for p in paths if _is_local(p)}))


def _file_stats(paths: Sequence[str]) -> dict[str, list[int]]:
    """``{path: [size in bytes, mtime in ns]}`` of the files of ``paths`` that exist."""
    stats = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        stats[path] = [st.st_size, st.st_mtime_ns]
    return stats


def _file_change(recorded: dict[str, list[int]] | None, paths: Sequence[str]) -> str | None:
    """What differs between the file stats of a done marker and ``paths`` now; None when nothing does (or when
    the marker, from an older build, recorded none)."""
    if recorded is None:
        return None
    now = _file_stats(paths)
    for path in sorted(set(recorded) | set(paths)):
        before, after = recorded.get(path), now.get(path)
        if before is not None and after is not None and list(before) == after:
            continue
        if after is None:
            return f"{path} is gone"
        if before is None:
            return f"{path} was not one of its files when it was built"
        if before[0] != after[0]:
            return f"{path} changed size since it was built ({before[0]} -> {after[0]} bytes)"
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(after[1] / 1e9))
        return f"{path} was modified since it was built (at {when})"
    return None


def _missing_files(recorded: dict[str, list[int]] | None) -> list[str]:
    return [path for path in recorded or {} if not os.path.exists(path)]


def _gone_text(gone: list[str]) -> str:
    return f"its files are gone ({gone[0]}{f' and {len(gone) - 1} more' if len(gone) > 1 else ''})"


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
    files: tuple[str, ...] = ()  # the local files it is read from (_source_files): their stats go into the marker


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
    shard_rows: list[int] | None = None  # chips per shard, checked against the Parquet footers on resume
    files: dict[str, list[int]] | None = None  # {local path: [size, mtime_ns]} at build time (marker only)
    rebuilt: str | None = None  # why a source a previous run had finished was built again

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


def _marker(output_dir: str | os.PathLike, split: str, name: str) -> Path:
    return Path(output_dir) / BUILD_DIR / split / f"{name}.json"


def _remove_source(output_dir: Path, split: str, summary: SourceSummary) -> None:
    """Take a finished source out of the dataset: its shards first, then its marker (an interruption in between
    leaves a marker with missing shards, which the next run removes too)."""
    folder = output_dir / "data" / split
    for shard in summary.shards:
        (folder / shard).unlink(missing_ok=True)
    _remove_stale(folder, summary.name)
    shutil.rmtree(output_dir / BUILD_DIR / split / "staging" / summary.name, ignore_errors=True)
    _marker(output_dir, split, summary.name).unlink(missing_ok=True)


def _failed_summary(name: str, err: BaseException, spec: SourceSpec | None = None) -> SourceSummary:
    return SourceSummary(
        name=name,
        sensor=spec.sensor if spec else None,
        band_names=[],
        license=spec.license if spec else None,
        num_chips=0,
        shards=[],
        seconds=0.0,
        fingerprint=spec_fingerprint(spec) if spec else "",
        note=f"{type(err).__name__}: {err}",
        skipped="error",
        platform=spec.platform if spec else None,
    )


def _write_marker(output_dir: str | os.PathLike, split: str, summary: SourceSummary) -> None:
    marker = _marker(output_dir, split, summary.name)
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
    _marker(task.output_dir, task.split, spec.name).unlink(missing_ok=True)
    files = _file_stats(task.files)  # before reading: a change while it is read shows on the next run
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
                raster,
                task.chip_size,
                task.stride,
                task.max_nodata_fraction,
                task.max_cloud_fraction,
                task.patch_size,
                stats=stats,
            )
            try:
                for chip in chips:
                    writer.add(encode_chip(chip))
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
        summary = dataclasses.replace(_failed_summary(spec.name, err, spec), files=files)
        _write_marker(task.output_dir, task.split, summary)
        return summary
    except BaseException:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shard_rows = [_parquet_rows(staging / s) for s in shards]
    for shard in shards:  # the source is complete: its shards appear in data/ (each rename atomic)
        os.replace(staging / shard, folder / shard)
    shutil.rmtree(staging, ignore_errors=True)
    summary = SourceSummary(
        name=spec.name,
        sensor=sensor,
        band_names=band_names,
        license=license,
        num_chips=sum(shard_rows),
        shards=shards,
        seconds=round(time.perf_counter() - start, 3),
        fingerprint=spec_fingerprint(spec),
        note=note,
        skipped=skipped,
        platform=platform,
        dropped_nodata=stats.get("nodata", 0),
        dropped_cloud=stats.get("cloud", 0),
        shard_rows=shard_rows,
        files=files,
    )
    _write_marker(task.output_dir, task.split, summary)  # last: the source is done
    logger.info("source %s: %d chips in %d shards (%.1f s)", spec.name, summary.num_chips, len(shards), summary.seconds)
    return summary


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows  # the footer only


def _shard_problem(folder: Path, summary: SourceSummary) -> str | None:
    """What is wrong with a finished source's shards in ``folder`` (missing, unreadable, other row counts than
    its marker records), read from the Parquet footers only; None when they are as built."""
    import pyarrow as pa

    expected = summary.shard_rows
    if expected is not None and len(expected) != len(summary.shards):
        return f"its done marker lists {len(summary.shards)} shards but {len(expected)} row counts"
    total = 0
    for i, shard in enumerate(summary.shards):
        path = folder / shard
        if not path.is_file():
            return f"shard {path} is missing"
        try:
            rows = _parquet_rows(path)
        except (OSError, pa.ArrowException) as err:
            return f"shard {path} is unreadable ({type(err).__name__}: {err})"
        if expected is not None and rows != expected[i]:
            return f"shard {path} holds {rows} chips, its done marker {expected[i]}"
        total += rows
    if total != summary.num_chips:
        return f"its shards hold {total} chips, its done marker {summary.num_chips}"
    return None


# --------------------------------------------------------------------------------------------------
# the build
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ChipBuildSummary:
    """The result of :func:`build_chip_dataset`: the split as ``manifest.json`` and the card count it.

    ``sources`` are this run's (this rank's share: built, resumed, rebuilt or skipped), ``kept`` the other
    sources of the split (built by earlier runs or other ranks); ``num_chips``, ``num_shards`` and the
    tallies count both, like the manifest. ``removed`` names the sources taken out of the dataset (their
    files are gone, or their shards damaged) and why; ``outdated`` the kept ones whose files changed or are
    gone (with ``keep_missing``).
    """

    output_dir: str
    split: str
    chip_size: int
    num_chips: int
    num_shards: int
    sources: list[SourceSummary]
    seconds: float
    kept: list[SourceSummary] = dataclasses.field(default_factory=list)
    removed: dict[str, str] = dataclasses.field(default_factory=dict)
    outdated: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_resumed(self) -> int:
        return sum(s.resumed for s in self.sources)

    @property
    def rebuilt(self) -> dict[str, str]:
        """This run's sources that a previous run had finished but that were built again, and why."""
        return {s.name: s.rebuilt for s in self.sources if s.rebuilt}

    @property
    def run_chips(self) -> int:
        """Chips of this run's sources (built or resumed), without the kept ones."""
        return sum(s.num_chips for s in self.sources)

    @property
    def chips_per_sensor(self) -> dict[str, int]:
        """Chips per sensor (the sensor-table name, else the platform) in the split, as in the manifest."""
        return _tally(self.sources + self.kept)["chips_per_sensor"]

    @property
    def dropped_chips(self) -> dict[str, int]:
        """Chips dropped for ``nodata`` and for ``cloud``."""
        return _tally(self.sources + self.kept)["dropped_chips"]

    @property
    def skipped_sources(self) -> dict[str, list[str]]:
        """Names of the sources skipped whole: ``too_small`` (smaller than a chip) and ``error`` (bad input)."""
        return _tally(self.sources + self.kept)["skipped_sources"]


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


def _split_for_rank(tasks: list[_Task], rank: int | None, world_size: int | None) -> tuple[list[_Task], Any, int]:
    """This machine's share of the sources: explicit rank/world_size, else accelerate's split, else all.

    Returns the share, the accelerate state when accelerate split it (None otherwise) and the rank.
    """
    if rank is not None or world_size is not None:
        rank, world_size = int(rank or 0), int(world_size or 1)
        if not 0 <= rank < world_size:
            raise ClayInputError(f"rank must be in [0, {world_size - 1}] for world_size {world_size}, got {rank}")
        return tasks[rank::world_size], None, rank
    state = accelerate_state()
    if state is None or state.num_processes == 1:
        return tasks, None, 0
    with state.split_between_processes(tasks) as mine:
        return list(mine), state, int(state.process_index)


def build_chip_dataset(
    sources: Sequence[Any],
    output_dir: str | os.PathLike,
    chip_size: int = 256,
    stride: int | None = None,
    max_nodata_fraction: float = DEFAULT_MAX_NODATA,
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
    keep_missing: bool = False,
) -> ChipBuildSummary:
    """Tile ``sources`` into ``chip_size`` chips and write them as sharded Parquet under ``output_dir``.

    Args:
        sources: ``clay_hf.geodata.sources.SourceSpec`` objects, or paths (:func:`clay_hf.geodata.sources.sources_from_path`): a raster
            file, a folder of band files (one source) or a STAC Item/ItemCollection JSON.
        output_dir: the dataset folder; created if needed. A folder from a previous run with the same
            settings is resumed: finished sources are skipped, unfinished ones, changed ones (spec, file sizes
            or times, the STAC JSON) and ones with damaged shards are redone; sources of earlier runs that
            are not given stay, unless their files are gone (see the module docstring). One build writes to
            a folder at a time (per rank).
        chip_size: chip side in pixels; a multiple of ``patch_size`` and at most the raster's size.
        stride: step between chips in pixels (default ``chip_size``: no overlap).
        max_nodata_fraction: drop chips with a larger fraction of nodata pixels (0: only complete chips).
        max_cloud_fraction: drop chips with a larger cloud fraction, where the source has a cloud mask.
        rows_per_shard: chips per Parquet file. For training on N processes x W dataloader workers make the
            total shard count a multiple of N x W (:func:`clay_hf.geodata.loader.get_dataloader` warns otherwise).
        num_workers: processes building sources in parallel (spawned; 1 builds in this process).
        split: the dataset split the chips belong to (``data/<split>/``).
        patch_size: the model's patch size P; ``chip_size`` must be a multiple of it.
        rank, world_size: build only this machine's share of ``sources`` (``sources[rank::world_size]``)
            on a cluster writing to one shared folder. Default: ``accelerate.PartialState`` when it is
            initialised (``split_between_processes``), else everything.
        progress: show a tqdm bar over the chip windows to read (each source is opened once more to count
            them), with chips written and chips/s.
        skip_errors: a bad source (corrupt or truncated, without CRS, all nodata, bands of mismatched size,
            unknown band names, a STAC item without usable assets) is logged, skipped and counted
            (``summary.skipped_sources["error"]``, ``manifest.json``) instead of stopping the build; it is
            tried again by the next run. Either way it leaves no shard behind.
        source_fields: :class:`~clay_hf.geodata.sources.SourceSpec` fields for the sources given as paths (``sensor``,
            ``datetime``, ``resolution``...): the spec of a raster or band folder, and what a STAC item
            does not say.
        keep_missing: keep the sources of earlier runs whose files are gone (a folder copied from another
            machine, sources on a disk that is not mounted) instead of removing them from the dataset.

    Returns:
        :class:`ChipBuildSummary` (this run's sources, the others kept, chips per sensor, dropped chips and
        skipped sources with reasons); its counts are those of ``manifest.json`` and the card.

    Raises:
        RasterError, StacError, UnknownBandError...: a bad source (without ``skip_errors``), naming its file.
        ChipSizeError: ``chip_size`` not a multiple of ``patch_size``, or larger than every raster (a source
            smaller than one chip is skipped with a warning and a ``note`` in its summary).
        IncompatibleBuildError: ``output_dir`` holds a build with another chip size, stride or thresholds.
        OutputLockedError: another build (of this rank) is writing to ``output_dir``; its pid is in the message.
        NoChipsError: no sources, or every chip of this run's sources was dropped.
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
        raise ClayInputError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
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
    specs, failed, origins = _expand_sources(sources, dict(source_fields or {}), skip_errors)
    tasks = [
        _Task(
            spec,
            str(output_dir),
            split,
            chip_size,
            stride,
            float(max_nodata_fraction),
            float(max_cloud_fraction),
            rows_per_shard,
            patch_size,
            bool(skip_errors),
            _source_files(spec, origins.get(spec.name)),
        )
        for spec in specs
    ]
    mine, state, lock_rank = _split_for_rank(tasks, rank, world_size)
    with output_lock(output_dir, job="chip build", rank=lock_rank):
        _check_build_config(output_dir, config)
        (output_dir / "data" / split).mkdir(parents=True, exist_ok=True)
        try:
            summaries, removed, outdated = _build_split(
                output_dir, split, specs, failed, mine, num_workers, progress, keep_missing
            )
        except BaseException:
            if state is None:  # the build may have removed or rebuilt sources: the card says what is there now
                _rewrite_card_after_failure(output_dir)
            raise
        if state is not None:  # accelerate: the main process writes the card once every rank is done
            state.wait_for_everyone()
            manifest = write_dataset_card(output_dir) if state.is_main_process else None
        else:  # one process, or independent ranks: rewrite it; run write_dataset_card once more after all finish
            manifest = write_dataset_card(output_dir)
    if manifest is not None:  # what the card counts, so the summary cannot disagree with it
        in_split = [SourceSummary.from_dict(d) for d in manifest["splits"].get(split, {}).get("sources", [])]
    else:
        in_split = list(_done_sources(output_dir, split).values())
    ours = {s.name for s in summaries}
    kept = [s for s in in_split if s.name not in ours]
    summary = ChipBuildSummary(
        output_dir=str(output_dir),
        split=split,
        chip_size=chip_size,
        num_chips=sum(s.num_chips for s in summaries + kept),
        num_shards=sum(len(s.shards) for s in summaries + kept),
        sources=summaries,
        seconds=round(time.perf_counter() - start, 3),
        kept=kept,
        removed=removed,
        outdated={name: why for name, why in outdated.items() if name in {s.name for s in kept}},
    )
    if summary.run_chips == 0 and mine and not any(s.skipped == "error" for s in summaries):
        if all(s.skipped == "too_small" for s in summaries):
            raise ChipSizeError("; ".join(s.note for s in summaries))
        notes = "".join(f"; {s.name}: {s.note}" for s in summaries if s.note)
        raise NoChipsError(
            f"no chips from {len(summaries)} source(s): every {chip_size}x{chip_size} chip had more than "
            f"{max_nodata_fraction:.0%} nodata or more than {max_cloud_fraction:.0%} cloud{notes}. Raise "
            "max_nodata_fraction or max_cloud_fraction, or choose a smaller chip_size"
        )
    return summary


def _build_split(
    output_dir: Path,
    split: str,
    specs: list[SourceSpec],
    failed: list[SourceSummary],
    mine: list[_Task],
    num_workers: int,
    progress: bool,
    keep_missing: bool,
) -> tuple[list[SourceSummary], dict[str, str], dict[str, str]]:
    """Check every done marker of ``split``, build what needs building, and return this run's summaries,
    the sources removed from the dataset and the kept ones that are outdated (name -> why)."""
    records = _read_markers(output_dir, split)
    names = {spec.name for spec in specs} | {f.name for f in failed}  # every rank's sources, not only mine
    failed_files = {path for f in failed for path in f.files or {}}
    removed, outdated = {}, {}
    for name, (previous, problem) in records.items():
        if name in names:
            continue  # a source of this run: decided below, by the rank that builds it
        if previous.skipped == "error":  # a bad input of an earlier run that is no longer given
            _marker(output_dir, split, name).unlink(missing_ok=True)
            continue
        gone = _missing_files(previous.files)
        if failed_files & set(previous.files or {}):  # e.g. a STAC JSON that now fails to read
            why = f"its input {sorted(failed_files & set(previous.files))[0]} now fails (skipped as an error)"
            logger.warning("removing source %s from %s: %s", name, output_dir, why)
            _remove_source(output_dir, split, previous)
            removed[name] = why
        elif problem is not None:
            logger.warning(
                "removing source %s from %s: %s, and it is not among this run's sources; pass its "
                "source to build it again",
                name,
                output_dir,
                problem,
            )
            _remove_source(output_dir, split, previous)
            removed[name] = problem
        elif gone and not keep_missing:
            why = _gone_text(gone)
            logger.warning(
                "removing source %s (%d chips) from %s: %s; keep such sources with --keep-missing (keep_missing=True)",
                name,
                previous.num_chips,
                output_dir,
                why,
            )
            _remove_source(output_dir, split, previous)
            removed[name] = why
        elif gone:
            outdated[name] = _gone_text(gone)
            logger.warning("keeping source %s (keep_missing): %s", name, outdated[name])
        elif (change := _file_change(previous.files, list(previous.files or {}))) is not None:
            outdated[name] = change
            logger.warning(
                "keeping source %s, which is not among this run's sources, with chips of its old files: "
                "%s; pass it to build it again",
                name,
                change,
            )
    for summary in failed:  # an input that failed to expand: what an earlier run built of it goes
        if summary.name in records:
            _remove_source(output_dir, split, records[summary.name][0])
        _write_marker(output_dir, split, summary)
    todo, resumed, reasons = [], [], {}
    for task in mine:
        previous, problem = records.get(task.spec.name, (None, None))
        if previous is None:
            todo.append(task)
            continue
        if previous.skipped == "error":
            logger.info("source %s failed last time; trying it again", task.spec.name)
            todo.append(task)
            continue
        if problem is not None:
            reason = problem
        elif previous.fingerprint != spec_fingerprint(task.spec):
            reason = "its spec changed since it was built"
        else:
            reason = _file_change(previous.files, task.files)
        if reason is None:
            resumed.append(dataclasses.replace(previous, resumed=True))
            continue
        logger.warning("building source %s again: %s", task.spec.name, reason)
        reasons[task.spec.name] = reason
        todo.append(task)
    if resumed:
        logger.info("resuming %s: %d of %d sources already built", output_dir, len(resumed), len(mine))

    built = [dataclasses.replace(s, rebuilt=reasons.get(s.name)) for s in _run_tasks(todo, num_workers, progress)]
    order = {t.spec.name: i for i, t in enumerate(mine)}
    return failed + sorted(resumed + built, key=lambda s: order[s.name]), removed, outdated


def _rewrite_card_after_failure(output_dir: Path) -> None:
    try:
        write_dataset_card(output_dir)
    except Exception as err:  # the build's own error is the one to raise
        logger.warning("could not rewrite the dataset card of %s after the failed build: %s", output_dir, err)


def _exit_with_parent(parent_pid: int) -> None:
    """``ProcessPoolExecutor`` initializer: end this worker when the build process that started it is gone.

    A killed build (SIGKILL, the OOM killer) cannot shut its pool down, and its workers would wait on their
    pipe forever. On Linux the kernel kills the worker when its parent dies (``PR_SET_PDEATHSIG``, set for
    the thread that spawned it, which waits in the pool until the pool is shut down); everywhere a daemon
    thread sees ``os.getppid()`` change (the orphan is adopted by another process) and exits at once.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - an unusual libc: the thread below suffices
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="clay_hf-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # no cleanup: the half-built source's staging folder is redone by the next run


def _window_counts(tasks: list[_Task]) -> list[int]:
    """The chip windows each task's source will read, at least 1: the progress bar's weights.

    Sources differ by thousands of times (a 61 px Landsat scene: 1 window; a Sentinel-2 tile: thousands), so a
    bar over sources extrapolates its first source to all of them. Each local source is opened once more here
    (file headers and one pixel per file); one that fails to open counts 1 (its build fails as fast, and reports
    why), a remote one counts the mean of the local ones (its headers are not fetched twice).
    """
    counts: list[int | None] = []
    for task in tasks:
        if not all(_is_local(path) for path in task.spec.paths):
            counts.append(None)
            continue
        try:
            with open_source(task.spec) as raster:
                height, width = raster.height, raster.width
        except (ClayError, OSError):
            counts.append(1)
            continue
        rows = len(range(0, height - task.chip_size + 1, task.stride))  # the windows iter_chips reads
        cols = len(range(0, width - task.chip_size + 1, task.stride))
        counts.append(max(1, rows * cols))
    known = [c for c in counts if c is not None]
    mean = max(1, round(sum(known) / len(known))) if known else 1
    return [mean if c is None else c for c in counts]


def _run_tasks(tasks: list[_Task], num_workers: int, progress: bool) -> list[SourceSummary]:
    from tqdm.auto import tqdm

    results: list[SourceSummary] = []
    # The bar counts chip windows read, so its rate and ETA hold over sources of any size.
    weights = dict(zip((t.spec.name for t in tasks), _window_counts(tasks) if progress else [1] * len(tasks)))
    bar = tqdm(total=sum(weights.values()), unit="window", disable=not progress, desc="chipping")
    chips, start = 0, time.perf_counter()

    def _done(summary: SourceSummary) -> None:
        nonlocal chips
        results.append(summary)
        chips += summary.num_chips
        bar.set_postfix(chips=chips, chips_per_s=f"{chips / max(time.perf_counter() - start, 1e-9):.1f}")
        bar.update(weights[summary.name])

    try:
        if num_workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                _done(_with_source_note(_build_source, task))
            return results
        context = multiprocessing.get_context("spawn")  # fork is unsafe with GDAL and torch threads
        pool = concurrent.futures.ProcessPoolExecutor(
            min(num_workers, len(tasks)), mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
        )
        with pool:
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


def _read_markers(output_dir: Path, split: str) -> dict[str, tuple[SourceSummary, str | None]]:
    """Every done marker of ``split``: ``{name: (summary, what is wrong with its shards or marker, or None)}``."""
    folder = output_dir / BUILD_DIR / split
    markers = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            summary = SourceSummary.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:
            empty = SourceSummary(
                name=path.stem, sensor=None, band_names=[], license=None, num_chips=0, shards=[], seconds=0.0
            )
            markers[path.stem] = (empty, f"its done marker {path} is unreadable ({type(err).__name__}: {err})")
            continue
        markers[summary.name] = (summary, _shard_problem(output_dir / "data" / split, summary))
    return markers


def _done_sources(output_dir: Path, split: str) -> dict[str, SourceSummary]:
    """The finished sources of ``split`` whose shards are as built (the others are logged and left out)."""
    done = {}
    for name, (summary, problem) in _read_markers(output_dir, split).items():
        if problem is None:
            done[name] = summary
        else:
            logger.warning(
                "leaving source %s out of %s: %s; rerun the build with it to build it again", name, output_dir, problem
            )
    return done


# --------------------------------------------------------------------------------------------------
# manifest and dataset card
# --------------------------------------------------------------------------------------------------


def write_dataset_card(output_dir: str | os.PathLike) -> dict[str, Any]:
    """(Re)write ``manifest.json`` and the ``README.md`` dataset card from the done markers of every split.

    Idempotent and atomic, so each rank of a cluster build can call it when it finishes: the last one to
    finish writes the complete card. A source whose shards are damaged or missing is left out (with a
    warning; the next build with it builds it again). The manifest leaves out the local file paths of the
    done markers (it is published with the shards). Returns the manifest.
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
            "sources": [{k: v for k, v in s.to_dict().items() if k != "files"} for s in sources],
        }
    manifest = {"format_version": FORMAT_VERSION, "settings": config, "splits": splits}
    atomic_write_text(output_dir / "manifest.json", json.dumps(manifest, indent=1))
    atomic_write_text(output_dir / "README.md", render_dataset_card(manifest, output_dir.name))
    return manifest


def iter_shards(output_dir: str | os.PathLike, split: str = "train") -> Iterator[Path]:
    """The finished Parquet shards of ``split``, in manifest order (sources in build order)."""
    for summary in _done_sources(Path(output_dir), split).values():
        for shard in summary.shards:
            yield Path(output_dir) / "data" / split / shard
