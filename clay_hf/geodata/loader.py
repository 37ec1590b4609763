"""Streaming chip datasets into Clay batches, for training and for embedding.

    >>> loader = get_dataloader("chips/", batch_size=32, num_workers=4, seed=0, drop_last=True)
    >>> for epoch in range(3):
    ...     loader.set_epoch(epoch)
    ...     for batch in loader:
    ...         model(**{k: batch[k] for k in ("pixel_values", "wavelengths", "gsd", "time", "latlon")})

A sample is one chip record as :func:`clay_hf.geodata.chip_format.decode_chip` returns it for one Parquet row
(the table in :mod:`clay_hf.geodata.chip_format`: ``pixels`` (C, H, W) in the native dtype, ``valid`` (H, W),
metadata).

A batch (what :class:`ChipLoader` yields); every chip of a batch shares one band set::

    pixel_values (B, C, H, W) float32 normalised, wavelengths (C,) float32, gsd (B,) float32 metres,
    time (B, 4), latlon (B, 4) float32, chip_id list[str], sensor str|None, band_names list[str]

Pipeline per process: ``split_dataset_by_node`` (once: this rank's shards) -> ``shuffle(seed, buffer)`` and
``set_epoch`` (datasets' own shard and buffer shuffling) -> torch ``DataLoader`` workers (datasets shards
its files over them; started once and kept across epochs) decoding rows -> band-set buckets in the main
process (a bucket that reaches ``batch_size`` is emitted, so sensors interleave across steps) ->
:class:`~clay_hf.ClayImageProcessor` per batch -> optional time/lat-lon dropout.

Do not hand a :class:`ChipLoader` to ``accelerator.prepare``: it already reads only this rank's shards,
and accelerate would shard it a second time (or, with its default ``dispatch_batches``, read everything
on rank 0 and fail on the string columns).

Exact resume: the order of batches is a pure function of (seed, epoch, rank, world size, dataloader
workers, shuffle buffer, batch size), so the loader's state is just ``(epoch, batches consumed)``.
Resuming replays the epoch's rows up to that point through the buckets without decoding pixels into
float or running the processor, then continues bit for bit. That costs re-reading the consumed part of
the epoch; in exchange it needs no saved shuffle buffer or bucket contents. (datasets' own
``state_dict`` with torchdata's ``StatefulDataLoader`` does not save the shuffle buffer, so with
``shuffle`` it resumes at the right shard but not in the same order, and the buckets would need saving
too.)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..distributed import rank_and_world_size
from ..errors import BandMismatchError, ChipDatasetError, ClayInputError, LoaderStateError
from ..image_processing_clay import ClayImageProcessor
from .chip_format import decode_chip

__all__ = [
    "load_chip_dataset",
    "band_set_key",
    "processor_kwargs",
    "list_shard_files",
    "collate_chips",
    "ChipLoader",
    "get_dataloader",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# chips -> processor arguments
# --------------------------------------------------------------------------------------------------


def processor_kwargs(chips: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Keyword arguments of :class:`~clay_hf.ClayImageProcessor` for chips that share one band set.

    Returns ``images`` (B, C, H, W) and ``sensor``/``band_names`` (table sensors) or ``wavelengths``,
    ``mean``, ``std`` (others), plus ``gsd``, ``datetimes``, ``lat``, ``lon``, ``convert_to_db=False`` for SAR
    chips already in decibels, and, when some pixels are not ``valid``, float32 images with NaN there and
    ``nodata=nan`` (the processor fills them with the band mean and returns a ``valid_mask``).
    """
    if not chips:
        raise ClayInputError("processor_kwargs() needs at least one chip, got none")
    first = chips[0]
    key = lambda c: (c["sensor"], tuple(c["band_names"]), tuple(c["wavelengths"] or ()), bool(c.get("decibels")))
    if any(key(c) != key(first) for c in chips):
        raise BandMismatchError(
            f"chips of one batch must share one band set; got {sorted({key(c)[:2] for c in chips})}. "
            "Group chips by sensor and band names first"
        )
    images = np.stack([c["pixels"] for c in chips])  # B x (C, H, W) -> (B, C, H, W)
    valid = np.stack([c["valid"] for c in chips])  # B x (H, W) -> (B, H, W)
    kwargs: dict[str, Any] = {"images": images}
    if not valid.all():  # nodata -> NaN, which the processor fills with the band mean and reports in valid_mask
        images = images.astype(np.float32)
        images[np.broadcast_to(~valid[:, None], images.shape)] = np.nan  # (B, 1, H, W) -> (B, C, H, W)
        kwargs.update(images=images, nodata=float("nan"))
    if first["sensor"] is not None:
        kwargs.update(sensor=first["sensor"], band_names=list(first["band_names"]))
        if first["mean"] is not None:  # explicit numbers of the spec override the table's
            kwargs.update(wavelengths=first["wavelengths"], mean=first["mean"], std=first["std"])
    elif first["wavelengths"] is None or first["mean"] is None or first["std"] is None:
        raise ClayInputError(
            f"chips of {first['source']!r} have no sensor and no wavelengths/mean/std; open the source with "
            "sensor= or wavelengths_um=, mean= and std="
        )
    else:
        kwargs.update(wavelengths=first["wavelengths"], mean=first["mean"], std=first["std"])
    kwargs.update(
        gsd=[c["gsd"] for c in chips],
        datetimes=[c["datetime"] for c in chips],
        lat=[c["lat"] for c in chips],
        lon=[c["lon"] for c in chips],
    )
    if first.get("decibels"):
        kwargs["convert_to_db"] = False
    return kwargs


# --------------------------------------------------------------------------------------------------
# loading and decoding
# --------------------------------------------------------------------------------------------------


def list_shard_files(folder: Path, split: str) -> list[str]:
    """A local build's finished shards: from ``manifest.json`` when present (only complete sources), else a glob."""
    manifest = folder / "manifest.json"
    if manifest.is_file():
        splits = json.loads(manifest.read_text(encoding="utf-8")).get("splits", {})
        if split not in splits:
            raise ChipDatasetError(
                f"{folder} has no split {split!r}; its splits are {sorted(splits)}. Build it with "
                f"scripts/prepare_chips.py --split {split}"
            )
        return [str(folder / shard) for shard in splits[split]["shards"]]
    return [str(p) for p in sorted((folder / "data" / split).glob("*.parquet"))]


def load_chip_dataset(path_or_hub_id: str | os.PathLike, split: str = "train", streaming: bool = True):
    """A chip dataset as a ``datasets.IterableDataset`` (``streaming=True``) or ``Dataset``.

    Args:
        path_or_hub_id: a folder written by :func:`clay_hf.geodata.builder.build_chip_dataset`, or a Hub dataset id
            (its card's ``configs`` point at the Parquet files).
        split: the split to load.
        streaming: stream the Parquet shards (default) instead of converting them to a local Arrow cache.

    Raises:
        ChipDatasetError: a local path that is not a chip dataset folder, without shards for ``split``, or with a
            shard that is not a complete Parquet file (its footer is read, so a truncated shard is named here).
    """
    from datasets import load_dataset

    folder = Path(path_or_hub_id)
    if folder.is_dir():
        files = list_shard_files(folder, split)
        if not files:
            raise ChipDatasetError(
                f"no Parquet shards for split {split!r} in {folder}; build them with "
                f"scripts/prepare_chips.py --output {folder}"
            )
        _check_footers(files, folder)
        return load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
    if folder.exists() or str(path_or_hub_id).startswith((".", "/", "~")):  # a path, not a Hub id
        raise ChipDatasetError(f"{path_or_hub_id} is not a chip dataset folder (expected data/<split>/*.parquet)")
    return load_dataset(str(path_or_hub_id), split=split, streaming=streaming)


def _rebuild_hint(shard: str) -> str:
    folder = Path(shard).parents[2] if len(Path(shard).parents) > 2 else Path(shard).parent
    return f"rebuild the dataset with scripts/prepare_chips.py --output {folder} (or delete the shard and rebuild it)"


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"  # pyarrow's messages span lines


def _check_footers(files: list[str], folder: Path) -> None:
    """Read every shard's Parquet footer (a few KiB each): a truncated or overwritten shard is named before training."""
    import pyarrow.parquet as pq

    for shard in files:
        try:
            pq.read_metadata(shard)
        except FileNotFoundError as err:
            raise ChipDatasetError(
                f"the chip shard {shard} listed in {folder / 'manifest.json'} is missing; rebuild the dataset with "
                f"scripts/prepare_chips.py --output {folder}"
            ) from err
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError, ArrowIOError an OSError
            raise ChipDatasetError(
                f"the chip shard {shard} is not a complete Parquet file ({_one_line(err)}); it is truncated or damaged: "
                f"{_rebuild_hint(shard)}"
            ) from err


def _count_rows(files: list[str]) -> int:
    """Rows in ``files``, from their Parquet footers (checked readable by :func:`load_chip_dataset`)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(shard).num_rows for shard in files)


def _damaged_shard(files: list[str] | None) -> tuple[str, Exception] | None:
    """The first of ``files`` that cannot be read through (every row group), with its error (the error path only)."""
    import pyarrow.parquet as pq

    for shard in files or ():
        try:
            parquet = pq.ParquetFile(shard)
            for index in range(parquet.num_row_groups):
                parquet.read_row_group(index)
        except (OSError, ValueError) as err:
            return shard, err
    return None


def _shard_read_error(files: list[str] | None, err: Exception) -> ChipDatasetError:
    """A ChipDatasetError for an Arrow/IO error raised while streaming rows, naming the shard that causes it."""
    found = _damaged_shard(files)
    if found is not None:
        shard, cause = found
        return ChipDatasetError(
            f"cannot read the chip shard {shard} ({_one_line(cause)}); it is damaged: {_rebuild_hint(shard)}"
        )
    where = f"one of its {len(files)} shards" if files else "one of its shards"
    return ChipDatasetError(
        f"reading the chip dataset failed in {where} ({_one_line(err)}); check the files and rebuild "
        "damaged ones with scripts/prepare_chips.py"
    )


def band_set_key(sample: dict[str, Any]) -> tuple:
    """Chips with equal keys can share a batch: same sensor, bands, per-band numbers, SAR scale and chip size."""
    as_tuple = lambda v: None if v is None else tuple(v)
    return (
        sample.get("sensor"),
        tuple(sample["band_names"]),
        as_tuple(sample.get("wavelengths")),
        as_tuple(sample.get("mean")),
        as_tuple(sample.get("std")),
        bool(sample.get("decibels", False)),
        tuple(sample["pixels"].shape),  # (C, H, W)
    )


def collate_chips(samples: list[dict[str, Any]], processor: ClayImageProcessor) -> dict[str, Any]:
    """Chip samples of one band set -> one batch of model inputs (the schema in the module docstring)."""
    first = samples[0]
    try:
        kwargs = processor_kwargs(samples)  # sensor + band_names for table sensors, else wavelengths/mean/std
    except ClayInputError as err:
        raise ChipDatasetError(
            f"chip {first.get('chip_id')!r}: {err}. Rebuild its source with a sensor (or wavelengths_um=, mean=, "
            "std=) in the SourceSpec, or register_sensor(...) before loading"
        ) from err
    inputs = processor(kwargs.pop("images"), return_tensors="pt", **kwargs)
    return {
        "pixel_values": inputs["pixel_values"],  # (B, C, H, W)
        "wavelengths": inputs["wavelengths"],  # (C,)
        "gsd": inputs["gsd"],  # (B,)
        "time": inputs["time"],  # (B, 4)
        "latlon": inputs["latlon"],  # (B, 4)
        "chip_id": [s["chip_id"] for s in samples],
        "sensor": first.get("sensor"),
        "band_names": list(first["band_names"]),
    }


# --------------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------------


class _Failure:
    """A ChipDatasetError raised in a DataLoader worker, carried to the main process as its plain message."""

    def __init__(self, message: str) -> None:
        self.message = message


class _DecodedRows(torch.utils.data.IterableDataset):
    """Rows of a datasets ``IterableDataset`` decoded into samples.

    Iterated inside a DataLoader worker, the wrapped dataset shards its files over the workers itself
    (it checks ``torch.utils.data.get_worker_info()``), so each worker reads different shards. An unreadable
    shard becomes a ChipDatasetError naming it (``shard_files``: where to look); in a worker it is yielded as
    a :class:`_Failure`, so the main process raises it with its own message rather than the worker's traceback.
    """

    def __init__(self, dataset, shard_files: list[str] | None = None) -> None:
        self.dataset, self.shard_files = dataset, shard_files

    def __iter__(self) -> Iterator[dict[str, Any] | _Failure]:
        try:
            yield from self._decoded()
        except ChipDatasetError as err:
            if torch.utils.data.get_worker_info() is None:
                raise
            yield _Failure(str(err))

    def _decoded(self) -> Iterator[dict[str, Any]]:
        import pyarrow as pa

        rows = iter(self.dataset)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except ChipDatasetError:
                raise
            except (OSError, pa.ArrowException) as err:  # a truncated or overwritten shard, seen while streaming it
                raise _shard_read_error(self.shard_files, err) from err
            yield decode_chip(row)


def _identity(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


class ChipLoader:
    """This process's batches of a chip dataset, one band set per batch, with an exact resume state.

    Made by :func:`get_dataloader` (see there for the arguments). Iterating runs the rest of the current
    epoch and then advances ``epoch``; :meth:`set_epoch` starts an epoch from its first batch.
    :meth:`state_dict` / :meth:`load_state_dict` save and restore ``(epoch, batches consumed)``, so it can
    be registered with ``accelerator.register_for_checkpointing``. ``shard_files`` (the dataset's Parquet
    files, when known) lets an error while reading name the damaged shard; ``num_rows`` (the dataset's row count,
    when known) lets it read the shards one at a time when they all fit in the shuffle buffer (see
    :func:`get_dataloader`'s ``max_buffer_input_shards``).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 256,
        drop_last: bool = False,
        time_latlon_dropout: float = 0.0,
        processor: ClayImageProcessor | None = None,
        max_buffer_input_shards: int = 10,
        shard_files: list[str] | None = None,
        num_rows: int | None = None,
    ) -> None:
        from datasets.distributed import split_dataset_by_node

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ClayInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ClayInputError(f"rank must be in [0, {world_size - 1}] for world_size {world_size}, got {rank}")
        if num_workers < 0 or shuffle_buffer < 0:
            raise ClayInputError(f"num_workers and shuffle_buffer must be >= 0, got {num_workers} and {shuffle_buffer}")
        if not 0.0 <= time_latlon_dropout <= 1.0:
            raise ClayInputError(f"time_latlon_dropout is a probability in [0, 1], got {time_latlon_dropout}")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, shuffle_buffer
        self.drop_last, self.time_latlon_dropout = drop_last, float(time_latlon_dropout)
        self.max_buffer_input_shards = max(1, int(max_buffer_input_shards))
        if num_rows is not None and num_rows <= shuffle_buffer:
            # The buffer holds every row, so it yields a uniform permutation of the epoch whatever order the shards
            # come in; interleaving them would only add datasets' 5 s pause per epoch (after its reader threads).
            self.max_buffer_input_shards = 1
        self.processor = processor if processor is not None else ClayImageProcessor()
        self.num_shards = dataset.num_shards  # of the whole dataset, or of this rank when split already
        self.shard_files = list(shard_files) if shard_files is not None else None  # to name a damaged one

        distributed = getattr(dataset, "_distributed", None)
        if distributed is not None:  # split already (once is enough: twice would halve the data again)
            if (distributed.rank, distributed.world_size) != (rank, world_size):
                raise ClayInputError(
                    f"the dataset was already split for rank {distributed.rank} of {distributed.world_size}, "
                    f"not rank {rank} of {world_size}; pass the unsplit dataset"
                )
        else:
            self._check_shards()
            if world_size > 1:
                dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        if shuffle_buffer > 0:
            dataset = dataset.shuffle(
                seed=seed, buffer_size=shuffle_buffer, max_buffer_input_shards=self.max_buffer_input_shards
            )
        self.dataset = dataset
        self._workers: torch.utils.data.DataLoader | None = None  # started on first use, kept across epochs
        self.epoch = 0
        self.batches_consumed = 0  # in self.epoch

    def _check_shards(self) -> None:
        n, world, workers = self.num_shards, self.world_size, max(1, self.num_workers)
        if n % world:
            logger.warning(
                "%d shards do not split evenly over %d processes: every process reads every shard and keeps 1 row in "
                "%d (correct, but %dx the reading); rebuild with a rows_per_shard that gives a multiple of %d shards",
                n,
                world,
                world,
                world,
                world * workers,
            )
            return
        per_rank = n // world
        if self.num_workers > per_rank:
            logger.warning(
                "%d dataloader workers but only %d shards per process: %d workers stay idle; use at most %d workers "
                "or more shards",
                self.num_workers,
                per_rank,
                self.num_workers - per_rank,
                per_rank,
            )
        elif self.num_workers and per_rank % self.num_workers:
            logger.warning(
                "%d shards per process do not split evenly over %d dataloader workers; some workers read one "
                "shard more (a multiple of %d shards in all would balance them)",
                per_rank,
                self.num_workers,
                world * workers,
            )

    # ------------------------------------------------------------------ epochs and state

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (each epoch has its own shard and buffer order)."""
        self.epoch, self.batches_consumed = int(epoch), 0

    def _fingerprint(self) -> dict[str, Any]:
        keys = (
            "seed",
            "batch_size",
            "rank",
            "world_size",
            "num_workers",
            "shuffle_buffer",
            "max_buffer_input_shards",
            "drop_last",
            "num_shards",
        )
        return {k: getattr(self, k) for k in keys}

    def state_dict(self) -> dict[str, Any]:
        """``epoch``, ``batches_consumed`` in it, and the settings the order depends on (checked on load)."""
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` was taken: the next batch is the one that would have come next.

        Raises:
            LoaderStateError: the state was taken with other settings, so the order would differ.
        """
        differ = {k: (state.get(k), v) for k, v in self._fingerprint().items() if k in state and state[k] != v}
        if differ:
            diffs = ", ".join(f"{k} {old!r} in the state vs {new!r} here" for k, (old, new) in differ.items())
            raise LoaderStateError(
                f"cannot resume exactly: the loader state was saved with other settings ({diffs}); "
                "use the same settings, or call set_epoch() to start a fresh epoch"
            )
        self.epoch, self.batches_consumed = int(state["epoch"]), int(state["batches_consumed"])

    # ------------------------------------------------------------------ iteration

    def _samples(self) -> Iterator[dict[str, Any]]:
        if self.num_workers == 0:
            yield from _DecodedRows(self.dataset, self.shard_files)
            return
        if self._workers is None:
            # Persistent: the workers start once (not at every epoch) and see set_epoch through the dataset's
            # epoch, which datasets keeps in shared memory for them.
            self._workers = torch.utils.data.DataLoader(
                _DecodedRows(self.dataset, self.shard_files),
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_identity,
                persistent_workers=True,
            )
        for sample in self._workers:
            if isinstance(sample, _Failure):
                raise ChipDatasetError(sample.message)
            yield sample

    def _sample_groups(self) -> Iterator[list[dict[str, Any]]]:
        """Lists of samples of one band set, in the epoch's deterministic order."""
        buckets: dict[tuple, list[dict[str, Any]]] = {}
        for sample in self._samples():
            key = band_set_key(sample)
            bucket = buckets.setdefault(key, [])
            bucket.append(sample)
            if len(bucket) == self.batch_size:
                yield buckets.pop(key)
        if not self.drop_last:
            yield from buckets.values()  # the incomplete buckets, in the order they were opened
        elif buckets:
            logger.debug("dropping %d chips in incomplete buckets", sum(len(b) for b in buckets.values()))

    def _dropout(self, batch: dict[str, Any], epoch: int, index: int) -> dict[str, Any]:
        """Zero time and latlon of a random fraction of the chips (the spec's metadata dropout)."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, index])
        drop = torch.from_numpy(rng.random(len(batch["chip_id"])) < self.time_latlon_dropout)  # (B,)
        batch["time"] = torch.where(drop[:, None], 0.0, batch["time"])  # (B, 4)
        batch["latlon"] = torch.where(drop[:, None], 0.0, batch["latlon"])  # (B, 4)
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, skip = self.epoch, self.batches_consumed
        self.dataset.set_epoch(epoch)
        if skip:
            logger.info("resuming epoch %d after %d batches: replaying them without processing", epoch, skip)
        for index, samples in enumerate(self._sample_groups()):
            if index < skip:
                continue
            batch = collate_chips(samples, self.processor)
            if self.time_latlon_dropout > 0:
                batch = self._dropout(batch, epoch, index)
            self.batches_consumed = index + 1
            yield batch
        self.epoch, self.batches_consumed = epoch + 1, 0


def get_dataloader(
    dataset_or_path,
    batch_size: int,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 256,
    drop_last: bool = False,
    time_latlon_dropout: float = 0.0,
    processor: ClayImageProcessor | None = None,
    split: str = "train",
    max_buffer_input_shards: int = 10,
) -> ChipLoader:
    """Batches of this process's share of a chip dataset, every batch of one band set.

    Args:
        dataset_or_path: a chip dataset folder or Hub id (:func:`load_chip_dataset`), or a
            ``datasets.IterableDataset`` / ``Dataset`` with the chip columns.
        batch_size: chips per batch.
        rank, world_size: this process and the number of processes; default from an initialised
            ``accelerate.PartialState`` (or ``torch.distributed``), else 0 and 1. Each process reads
            different shards (``split_dataset_by_node``, once): do not also ``accelerator.prepare`` it.
        num_workers: DataLoader worker processes decoding rows; datasets gives each its own shards.
        seed: seeds the shard and buffer shuffling and the dropout; every process must use the same one.
        shuffle_buffer: rows in the shuffle buffer per worker; 0 keeps the file order (embedding).
        drop_last: drop the incomplete batches left in the band-set buckets at the end of an epoch
            (training); keep them to see every chip exactly once (embedding).
        time_latlon_dropout: probability of zeroing a chip's ``time`` and ``latlon`` (0.2 in Clay v1.5 training).
        processor: the image processor (default ``ClayImageProcessor()``: patch size 8, hour 12, lon first).
        split: the split to load when ``dataset_or_path`` is a folder or Hub id.
        max_buffer_input_shards: shards read at once into the shuffle buffer (datasets' default 10). Shards
            are written per source, so this is what mixes sensors within an epoch. With more than 1, datasets
            sleeps 5 s at the end of every epoch (a guard against apache/arrow#45214), so a dataset whose rows
            all fit in ``shuffle_buffer`` (a folder's count, from its shard footers, or a ``Dataset``'s length)
            reads its shards one at a time: the buffer then holds the whole epoch and yields a uniform
            permutation of it either way. Use 1 for quick runs and tests on larger ones.

    Returns:
        :class:`ChipLoader`: iterate it for batches (see the module docstring), ``set_epoch`` per epoch,
        ``state_dict``/``load_state_dict`` to resume mid-epoch.
    """
    import datasets

    shard_files = num_rows = None
    if isinstance(dataset_or_path, (str, os.PathLike)):
        dataset = load_chip_dataset(dataset_or_path, split=split, streaming=True)
        if Path(dataset_or_path).is_dir():
            shard_files = list_shard_files(Path(dataset_or_path), split)
            num_rows = _count_rows(shard_files)
    elif isinstance(dataset_or_path, datasets.IterableDataset):
        dataset = dataset_or_path
    elif isinstance(dataset_or_path, datasets.Dataset):
        num_rows = len(dataset_or_path)
        dataset = dataset_or_path.to_iterable_dataset(num_shards=max(1, (world_size or 1) * max(1, num_workers)))
    else:
        raise ClayInputError(
            f"get_dataloader takes a chip dataset folder, Hub id or datasets (Iterable)Dataset, "
            f"got {type(dataset_or_path).__name__}"
        )
    if rank is None or world_size is None:
        default_rank, default_world = rank_and_world_size()
        rank = default_rank if rank is None else rank
        world_size = default_world if world_size is None else world_size
    return ChipLoader(
        dataset,
        batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        drop_last=drop_last,
        time_latlon_dropout=time_latlon_dropout,
        processor=processor,
        max_buffer_input_shards=max_buffer_input_shards,
        shard_files=shard_files,
        num_rows=num_rows,
    )
