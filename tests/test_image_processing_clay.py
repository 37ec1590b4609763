"""ClayImageProcessor: normalisation with the table's numbers, metadata, nodata, errors, save/load, Auto class."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import clay_hf  # registers ClayConfig / ClayImageProcessor with the transformers Auto classes
from clay_hf.errors import (
    BandMismatchError,
    ChipSizeError,
    ClayInputError,
    NonFiniteInputError,
    UnknownSensorError,
)
from clay_hf.image_processing_clay import ClayImageProcessor
from clay_hf.sensors import get_sensor

S2 = get_sensor("sentinel-2-l2a")
S1 = get_sensor("sentinel-1-rtc")


@pytest.fixture
def s2_chips() -> np.ndarray:
    """Two Sentinel-2 L2A chips, (2, 10, 32, 32) uint16 reflectances in 0..10000."""
    return np.random.default_rng(0).integers(0, 10_000, size=(2, 10, 32, 32), dtype=np.uint16)


@pytest.fixture
def s1_chip() -> np.ndarray:
    """One Sentinel-1 RTC chip, (2, 16, 16) float32 linear backscatter in 0..1 (VV brighter than VH)."""
    rng = np.random.default_rng(1)
    vv = rng.gamma(2.0, 0.06, size=(16, 16))
    return np.stack([vv, vv * 0.2]).astype(np.float32)


def _expected(chips: np.ndarray, mean, std) -> torch.Tensor:
    mean = np.asarray(mean, dtype=np.float64)[:, None, None]
    std = np.asarray(std, dtype=np.float64)[:, None, None]
    return torch.from_numpy(((chips.astype(np.float64) - mean) / std).astype(np.float32))


# ------------------------------------------------------------------------------------------- outputs


def test_sentinel_2_outputs_and_normalisation(s2_chips):
    out = ClayImageProcessor(sensor="sentinel-2-l2a")(s2_chips)
    assert set(out) == {"pixel_values", "wavelengths", "gsd", "time", "latlon"}
    assert out["pixel_values"].shape == (2, 10, 32, 32) and out["pixel_values"].dtype == torch.float32
    assert_close(out["pixel_values"], _expected(s2_chips, S2.mean, S2.std))
    assert_close(out["wavelengths"], torch.tensor(S2.wavelengths_um, dtype=torch.float32))
    assert out["gsd"].shape == () and out["gsd"].item() == 10.0 and out["gsd"].dtype == torch.float32
    assert torch.equal(out["time"], torch.zeros(2, 4)) and torch.equal(out["latlon"], torch.zeros(2, 4))
    assert ClayImageProcessor.model_input_names == ["pixel_values", "wavelengths", "gsd", "time", "latlon"]


def test_the_mean_maps_to_zero_and_mean_plus_std_to_one():
    chip = np.empty((10, 8, 8), dtype=np.float32)
    chip[:, :4] = np.array(S2.mean)[:, None, None]
    chip[:, 4:] = (np.array(S2.mean) + np.array(S2.std))[:, None, None]
    pixels = ClayImageProcessor()(chip, sensor="s2")["pixel_values"][0]
    assert torch.equal(pixels[:, :4], torch.zeros(10, 4, 8))
    assert_close(pixels[:, 4:], torch.ones(10, 4, 8))


def test_input_forms_agree(s2_chips):
    processor = ClayImageProcessor(sensor="sentinel-2-l2a")
    reference = processor(s2_chips)["pixel_values"]
    assert torch.equal(processor(torch.from_numpy(s2_chips.astype(np.int32)))["pixel_values"], reference)
    assert torch.equal(processor(list(s2_chips))["pixel_values"], reference)
    assert torch.equal(processor(s2_chips[0])["pixel_values"], reference[:1])  # (C, H, W) -> B = 1
    assert torch.equal(processor.preprocess(s2_chips.astype(np.float64))["pixel_values"], reference)


def test_sentinel_1_is_converted_to_decibels_before_normalising(s1_chip):
    chip = s1_chip.copy()
    chip[0, 0, 0], chip[1, 0, 0] = 0.1, 0.0  # -10 dB; 0 -> 1e-10 -> -100 dB
    out = ClayImageProcessor(sensor="sentinel-1")(chip)
    expected = _expected(10 * np.log10(np.where(chip <= 0, 1e-10, chip)), S1.mean, S1.std)
    assert_close(out["pixel_values"], expected[None])
    assert_close(out["pixel_values"][0, 0, 0, 0], torch.tensor((-10.0 + 12.113) / 8.314))
    assert_close(out["pixel_values"][0, 1, 0, 0], torch.tensor((-100.0 + 18.673) / 8.017))
    assert_close(out["wavelengths"], torch.tensor([3.5, 4.0]))


def test_sentinel_1_already_in_decibels(s1_chip, caplog):
    db = 10 * np.log10(s1_chip)
    processor = ClayImageProcessor(sensor="sentinel-1-rtc")
    assert_close(processor(db, convert_to_db=False)["pixel_values"], _expected(db, S1.mean, S1.std)[None])
    with caplog.at_level(logging.WARNING, logger="clay_hf.image_processing_clay"):
        processor(db)
    assert "looks like decibels already" in caplog.text


def test_band_names_select_a_subset_in_the_given_order(s2_chips):
    rgb = s2_chips[:, [2, 1, 0]]
    out = ClayImageProcessor(sensor="sentinel-2-l2a")(rgb, band_names=["red", "green", "blue"])
    assert_close(out["wavelengths"], torch.tensor([0.665, 0.56, 0.493]))
    assert_close(out["pixel_values"], _expected(rgb, [1552.0, 1355.0, 1105.0], [1888.0, 1757.0, 1809.0]))


def test_explicit_wavelengths_mean_std_and_gsd(s2_chips):
    chips = s2_chips[:, :3]
    out = ClayImageProcessor()(chips, wavelengths=[0.65, 0.56, 0.48], mean=[100, 110, 120], std=[40, 50, 60], gsd=0.6)
    assert_close(out["pixel_values"], _expected(chips, [100, 110, 120], [40, 50, 60]))
    assert_close(out["wavelengths"], torch.tensor([0.65, 0.56, 0.48]))
    assert out["gsd"].item() == pytest.approx(0.6)


def test_explicit_values_override_the_sensor(s2_chips):
    out = ClayImageProcessor(sensor="sentinel-2-l2a")(s2_chips, mean=[0.0] * 10)
    assert_close(out["pixel_values"], _expected(s2_chips, [0.0] * 10, S2.std))
    assert_close(out["wavelengths"], torch.tensor(S2.wavelengths_um, dtype=torch.float32))


def test_gsd_default_override_and_per_sample(s2_chips):
    processor = ClayImageProcessor(sensor="sentinel-2-l2a")
    assert processor(s2_chips, gsd=20)["gsd"].item() == 20.0
    per_sample = processor(s2_chips, gsd=[10, 20])["gsd"]
    assert per_sample.shape == (2,) and per_sample.tolist() == [10.0, 20.0]
    assert ClayImageProcessor(sensor="modis")(np.zeros((7, 8, 8), np.int16))["gsd"].item() == 500.0


def test_time_and_latlon_follow_the_training_conventions(s2_chips):
    out = ClayImageProcessor(sensor="s2")(
        s2_chips, datetimes=["2024-06-01T10:30:00Z", None], lat=[0.0, None], lon=[90.0, 5.0]
    )
    week = 2 * np.pi * 22 / 52
    assert_close(
        out["time"][0], torch.tensor([np.sin(week), np.cos(week), 0.0, -1.0], dtype=torch.float32), atol=1e-6, rtol=0
    )
    assert torch.equal(out["time"][1], torch.zeros(4))
    assert_close(out["latlon"][0], torch.tensor([1.0, 0.0, 0.0, 1.0]), atol=1e-6, rtol=0)  # lon pair first
    assert torch.equal(out["latlon"][1], torch.zeros(4))


def test_metadata_options(s2_chips):
    processor = ClayImageProcessor(sensor="s2", latlon_order="latlon", use_capture_hour=True)
    out = processor(s2_chips, datetimes="2024-06-01T06:00:00Z", lat=0.0, lon=90.0)  # scalars apply to all
    assert_close(out["time"][:, 2:], torch.tensor([[1.0, 0.0]] * 2), atol=1e-6, rtol=0)
    assert_close(out["latlon"], torch.tensor([[0.0, 1.0, 1.0, 0.0]] * 2), atol=1e-6, rtol=0)
    out = processor(s2_chips, datetimes="2024-06-01T06:00:00Z", hour=18, lat=0.0, lon=90.0, latlon_order="lonlat")
    assert_close(out["time"][:, 2:], torch.tensor([[-1.0, 0.0]] * 2), atol=1e-6, rtol=0)
    assert_close(out["latlon"], torch.tensor([[1.0, 0.0, 0.0, 1.0]] * 2), atol=1e-6, rtol=0)


def test_nodata_value_is_filled_with_the_band_mean_and_masked(s2_chips):
    chips = s2_chips.copy()
    chips[0, :, 0, 0] = 0  # a nodata pixel in every band
    chips[1, 3, 5, 7] = 0  # nodata in one band only
    out = ClayImageProcessor(sensor="sentinel-2-l2a", nodata=0)(chips)
    assert torch.equal(out["pixel_values"][0, :, 0, 0], torch.zeros(10))
    assert out["pixel_values"][1, 3, 5, 7] == 0
    mask = out["valid_mask"]
    assert mask.shape == (2, 32, 32) and mask.dtype == torch.bool
    assert not mask[0, 0, 0] and not mask[1, 5, 7] and int((~mask).sum()) == int((chips == 0).any(axis=1).sum())
    keep = torch.from_numpy(chips != 0)  # (B, C, H, W): every other value is normalised as usual
    assert_close(out["pixel_values"][keep], _expected(chips, S2.mean, S2.std)[keep])


def test_nan_nodata_and_per_call_nodata(s1_chip):
    chip = s1_chip.copy()
    chip[:, 2, 3] = np.nan
    out = ClayImageProcessor(sensor="sentinel-1-rtc")(chip, nodata=float("nan"))
    assert torch.isfinite(out["pixel_values"]).all()
    assert torch.equal(out["pixel_values"][0, :, 2, 3], torch.zeros(2))
    assert not out["valid_mask"][0, 2, 3] and int(out["valid_mask"].sum()) == 16 * 16 - 1
    assert "valid_mask" not in ClayImageProcessor(sensor="sentinel-1-rtc")(s1_chip)


def test_radiometric_offset_is_removed_before_normalising(s2_chips):
    processor = ClayImageProcessor(sensor="sentinel-2-l2a")
    brighter = np.where(s2_chips > 0, s2_chips.astype(np.int64) + 1000, 0).astype(np.uint16)  # baseline 04.00
    reference = processor(s2_chips, nodata=0)["pixel_values"]
    # one offset for the batch, or one per sample (None: none); nodata pixels stay nodata
    assert_close(processor(brighter, nodata=0, offset_dn=1000)["pixel_values"], reference, rtol=0, atol=0)
    mixed = np.stack([s2_chips[0], brighter[1]])
    assert_close(processor(mixed, nodata=0, offset_dn=[None, 1000])["pixel_values"], reference, rtol=0, atol=0)
    kept = ClayImageProcessor(sensor="sentinel-2-l2a", harmonize_offset=False)
    assert torch.equal(kept(brighter, offset_dn=1000)["pixel_values"], processor(brighter)["pixel_values"])
    assert torch.equal(
        processor(brighter, offset_dn=1000, harmonize_offset=False)["pixel_values"], processor(brighter)["pixel_values"]
    )
    dark = np.full((1, 10, 8, 8), 900, dtype=np.uint16)  # below the offset: 1 (the darkest valid value), not < 0
    assert_close(processor(dark, offset_dn=1000)["pixel_values"], processor(np.ones_like(dark))["pixel_values"])
    with pytest.raises(ClayInputError, match=r"offset_dn must be >= 0 digital numbers"):
        processor(s2_chips, offset_dn=-1000)
    with pytest.raises(ClayInputError, match=r"got 3 offset_dn values for a batch of 2 images"):
        processor(s2_chips, offset_dn=[0, 0, 1000])
    with pytest.raises(ClayInputError, match=r"harmonize_offset must be True or False, got 'yes'"):
        ClayImageProcessor(harmonize_offset="yes")


def test_numpy_output(s2_chips):
    out = ClayImageProcessor(sensor="s2")(s2_chips, return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].dtype == np.float32
    assert out["time"].shape == (2, 4) and float(out["gsd"]) == 10.0


# ------------------------------------------------------------------------------------------- errors


def test_error_unknown_sensor(s2_chips):
    with pytest.raises(UnknownSensorError, match=r"unknown sensor 'sentinel-3'; did you mean"):
        ClayImageProcessor()(s2_chips, sensor="sentinel-3")
    with pytest.raises(UnknownSensorError, match=r"unknown sensor 'sentinal2'"):
        ClayImageProcessor(sensor="sentinal2")


def test_error_band_count_for_a_sensor(s2_chips):
    with pytest.raises(
        BandMismatchError,
        match=r"expected 10 bands for sensor 'sentinel-2-l2a' \(blue, .*, swir22\), got 4; "
        r"pass wavelengths= or band_names= or choose another sensor",
    ):
        ClayImageProcessor(sensor="sentinel-2-l2a")(s2_chips[:, :4])


def test_error_band_count_hints_at_channels_last(s2_chips):
    with pytest.raises(BandMismatchError, match=r"got 32; .* looks channels-last \(\.\.\., H, W, C\)"):
        ClayImageProcessor(sensor="sentinel-2-l2a")(np.moveaxis(s2_chips, 1, -1))


def test_error_band_count_for_explicit_values(s2_chips):
    with pytest.raises(BandMismatchError, match=r"the images have 10 bands but wavelengths= gives 3"):
        ClayImageProcessor()(s2_chips, wavelengths=[0.6, 0.5, 0.4], mean=[0] * 10, std=[1] * 10, gsd=10)
    with pytest.raises(BandMismatchError, match=r"the images have 3 bands but sensor 'sentinel-2-l2a' gives 10"):
        ClayImageProcessor()(s2_chips[:, :3], sensor="s2", wavelengths=[0.665, 0.56, 0.493])


def test_error_non_finite_values_name_the_band(s2_chips):
    chips = s2_chips.astype(np.float32)
    chips[0, 2, 0, :3] = np.nan
    chips[1, 9, 4, 4] = np.inf
    with pytest.raises(
        NonFiniteInputError,
        match=r"found 4 non-finite values \(NaN or inf\) that are not declared nodata: "
        r"3 in band 'red' \(index 2\), 1 in band 'swir22' \(index 9\); pass nodata=float\('nan'\)",
    ):
        ClayImageProcessor(sensor="sentinel-2-l2a")(chips)
    with pytest.raises(NonFiniteInputError, match=r"found 1 non-finite values .*1 in band 'swir22'"):
        ClayImageProcessor(sensor="sentinel-2-l2a", nodata=float("nan"))(chips)  # inf is never nodata
    with pytest.raises(NonFiniteInputError, match=r"3 in band index 2"):
        ClayImageProcessor()(chips[:1, :3], wavelengths=[0.5, 0.6, 0.7], mean=[0, 0, 0], std=[1, 1, 1], gsd=1)


def test_error_chip_sizes():
    processor = ClayImageProcessor(sensor="naip")
    with pytest.raises(ChipSizeError, match=r"chip of H=4, W=4 pixels is smaller than one patch \(patch_size=8\)"):
        processor(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(
        ChipSizeError,
        match=r"chip of H=250, W=256 pixels is not a multiple of patch_size=8; crop to 248 x 256 "
        r"\(images\[\.\.\., :248, :256\]\) or pad to 256 x 256",
    ):
        processor(np.zeros((4, 250, 256), np.uint8))
    with pytest.raises(ChipSizeError, match=r"not a multiple of patch_size=16"):
        ClayImageProcessor(sensor="naip", patch_size=16)(np.zeros((4, 24, 24), np.uint8))


def test_error_missing_band_metadata(s2_chips):
    with pytest.raises(
        ClayInputError, match=r"no band metadata: pass sensor= \(one of sentinel-2-l2a, .*\) or wavelengths="
    ):
        ClayImageProcessor()(s2_chips)
    with pytest.raises(ClayInputError, match=r"with wavelengths= and no sensor, also pass mean=, std=, gsd="):
        ClayImageProcessor()(s2_chips, wavelengths=S2.wavelengths_um)
    with pytest.raises(ClayInputError, match=r"with wavelengths= and no sensor, also pass gsd= "):
        # wavelengths= in the call sets the processor's default sensor aside: no silent 10 m gsd
        ClayImageProcessor(sensor="s2")(s2_chips[:, :2], wavelengths=[0.5, 0.6], mean=[0, 0], std=[1, 1])
    with pytest.raises(ClayInputError, match=r"band_names= selects bands of a sensor; pass sensor= as well"):
        ClayImageProcessor()(s2_chips, band_names=["red"])
    with pytest.raises(ClayInputError, match=r"sensor 'sentinel-2-l2a' has no band 'B04'"):
        ClayImageProcessor(sensor="s2")(s2_chips[:, :1], band_names=["B04"])


def test_error_bad_explicit_values(s2_chips):
    chips = s2_chips[:, :2]
    with pytest.raises(ClayInputError, match=r"every std must be > 0, got \[1.0, 0.0\]"):
        ClayImageProcessor()(chips, wavelengths=[0.5, 0.6], mean=[0, 0], std=[1, 0], gsd=1)
    with pytest.raises(ClayInputError, match=r"wavelengths must be positive micrometres"):
        ClayImageProcessor()(chips, wavelengths=[-0.5, 0.6], mean=[0, 0], std=[1, 1], gsd=1)
    with pytest.raises(ClayInputError, match=r"mean must be finite numbers"):
        ClayImageProcessor()(chips, wavelengths=[0.5, 0.6], mean=[0, float("nan")], std=[1, 1], gsd=1)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (
            np.zeros((8, 8), np.uint8),
            r"expected images of shape \(C, H, W\) or \(B, C, H, W\), got 2 dimensions \(8, 8\)",
        ),
        (np.zeros((1, 1, 4, 8, 8), np.uint8), r"got 5 dimensions \(1, 1, 4, 8, 8\)"),
        ([], r"expected at least one image, got an empty list"),
        (
            [np.zeros((4, 8, 8)), np.zeros((4, 16, 16))],
            r"must share one shape .* got shapes \[\(4, 8, 8\), \(4, 16, 16\)\]",
        ),
        ([np.zeros((1, 4, 8, 8))], r"a list of images must hold \(C, H, W\) arrays, got shape \(1, 4, 8, 8\)"),
        ([[1, 2], [3, 4]], r"expected images as a numpy array or torch tensor, got list"),
        (np.zeros((4, 8, 8), bool), r"expected images of a real numeric dtype, got bool"),
        (torch.zeros((4, 8, 8), dtype=torch.complex64), r"real numeric dtype, got torch.complex64"),
        (np.zeros((0, 4, 8, 8)), r"at least one image and one band, got shape \(0, 4, 8, 8\)"),
    ],
)
def test_error_image_shapes_and_types(images, message):
    with pytest.raises(ClayInputError, match=message):
        ClayImageProcessor(sensor="naip")(images)


def test_error_metadata_length_must_match_the_batch(s2_chips):
    processor = ClayImageProcessor(sensor="s2")
    with pytest.raises(ClayInputError, match=r"got 3 datetimes for a batch of 2 images; pass one per image"):
        processor(s2_chips, datetimes=["2024-06-01"] * 3)
    with pytest.raises(ClayInputError, match=r"got 1 lat values for a batch of 2 images"):
        processor(s2_chips, lat=[10.0], lon=[1.0, 2.0])
    with pytest.raises(ClayInputError, match=r"got 3 gsd values for a batch of 2 images"):
        processor(s2_chips, gsd=[10, 10, 10])
    with pytest.raises(ClayInputError, match=r"pass both lat= and lon= \(degrees\), or neither"):
        processor(s2_chips, lat=[10.0, 11.0])
    with pytest.raises(ClayInputError, match=r"gsd must be positive metres, got \[-10.0\]"):
        processor(s2_chips, gsd=-10)
    with pytest.raises(ClayInputError, match=r"lat must be in \[-90, 90\] degrees"):
        processor(s2_chips, lat=[100.0, 0.0], lon=[0.0, 0.0])


def test_error_bad_settings():
    with pytest.raises(ClayInputError, match=r"patch_size must be a positive integer, got 0"):
        ClayImageProcessor(patch_size=0)
    with pytest.raises(ClayInputError, match=r"latlon_order must be 'lonlat' \(training\) or 'latlon', got 'yx'"):
        ClayImageProcessor(latlon_order="yx")  # type: ignore[arg-type]
    with pytest.raises(ClayInputError, match=r"nodata must be a number, float\('nan'\) or None, got 'none'"):
        ClayImageProcessor(nodata="none")


# ------------------------------------------------------------------------------------------- save / load


def test_save_pretrained_round_trip(tmp_path, s2_chips):
    processor = ClayImageProcessor(sensor="Sentinel-2", latlon_order="latlon", use_capture_hour=True, nodata=0)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved == {
        "image_processor_type": "ClayImageProcessor",
        "patch_size": 8,
        "sensor": "sentinel-2-l2a",
        "latlon_order": "latlon",
        "use_capture_hour": True,
        "nodata": 0.0,
        "harmonize_offset": True,
    }
    loaded = ClayImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    kwargs = dict(datetimes=["2024-06-01T06:00:00Z"] * 2, lat=[1.0, 2.0], lon=[3.0, 4.0])
    for key, value in processor(s2_chips, **kwargs).items():
        assert torch.equal(loaded(s2_chips, **kwargs)[key], value), key
    assert ClayImageProcessor.from_pretrained(tmp_path, sensor="naip", patch_size=16).sensor == "naip"


def test_nan_nodata_is_saved_as_strict_json(tmp_path):
    ClayImageProcessor(nodata=float("nan")).save_pretrained(tmp_path)
    text = (tmp_path / "preprocessor_config.json").read_text()
    assert '"nodata": "nan"' in text and "NaN" not in text
    assert np.isnan(ClayImageProcessor.from_pretrained(tmp_path).nodata)
    assert "sensor" not in json.loads(text)  # None settings are left out and come back as None
    assert ClayImageProcessor.from_pretrained(tmp_path).sensor is None


def test_auto_image_processor_loads_a_clay_folder(tmp_path):
    # The realistic case: a model folder with config.json (model_type "clay") and preprocessor_config.json.
    # Works because importing clay_hf registers ClayImageProcessor for ClayConfig.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    clay_hf.ClayConfig().save_pretrained(tmp_path)
    ClayImageProcessor(sensor="naip").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clay"
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is ClayImageProcessor and processor.sensor == "naip"


def test_auto_image_processor_from_the_public_import(tmp_path):
    """Pillow is a dependency, so the public name works too."""
    from transformers import AutoImageProcessor

    ClayImageProcessor(sensor="linz", patch_size=16).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is ClayImageProcessor and processor.patch_size == 16 and processor.sensor == "linz"
