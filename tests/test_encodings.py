"""Time and lat/lon encodings and the SAR decibel transform (the training conventions are pinned here)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from clay_hf.encodings import TRAINING_HOUR, encode_latlon, encode_time, parse_datetime, to_decibels
from clay_hf.errors import ClayInputError


def _week_pair(week: int) -> list[float]:
    return [math.sin(2 * math.pi * week / 52), math.cos(2 * math.pi * week / 52)]


# ------------------------------------------------------------------------------------------- time


def test_training_convention_hour_12_is_the_default():
    # Every v1.5 training chip was stamped at noon: the hour pair is (sin pi, cos pi) = (0, -1).
    assert TRAINING_HOUR == 12
    out = encode_time([dt.datetime(2024, 6, 1, 10, 37), "2024-06-01T23:00:00Z", dt.date(2024, 6, 1)])
    assert out.shape == (3, 4) and out.dtype == torch.float32
    assert_close(out[:, 2:], torch.tensor([[0.0, -1.0]] * 3), atol=1e-6, rtol=0)


def test_week_is_the_iso_calendar_week():
    # 2024-06-01 is in ISO week 22; 2021-01-01 belongs to ISO week 53 of 2020.
    out = encode_time(["2024-06-01", "2021-01-01"])
    assert_close(out[:, :2], torch.tensor([_week_pair(22), _week_pair(53)]), atol=1e-6, rtol=0)


def test_capture_hour_is_optional_and_in_utc():
    out = encode_time(["2024-06-01T06:00:00Z", "2024-06-01T08:59:00+02:00", "2024-06-01"], use_capture_hour=True)
    # 06:00 UTC -> (1, 0); 08:59 at +02:00 is 06:59 UTC -> integer hour 6; a bare date keeps 12.
    assert_close(out[:, 2:], torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, -1.0]]), atol=1e-6, rtol=0)


def test_explicit_hour_for_every_sample():
    out = encode_time([dt.datetime(2024, 6, 1, 15)], hour=0)
    assert_close(out[0, 2:], torch.tensor([0.0, 1.0]))


def test_unknown_dates_give_zeros():
    out = encode_time([None, np.datetime64("NaT"), np.datetime64("2024-06-01T10:00")])
    assert torch.equal(out[:2], torch.zeros(2, 4))
    assert_close(out[2], torch.tensor([*_week_pair(22), 0.0, -1.0]), atol=1e-6, rtol=0)


def test_a_single_date_is_a_batch_of_one():
    assert encode_time("2024-06-01").shape == (1, 4)
    assert encode_time(np.array(["2024-06-01", "2024-06-08"], dtype="datetime64[D]")).shape == (2, 4)


def test_parse_datetime_forms():
    assert parse_datetime("2024-06-01") == dt.date(2024, 6, 1)
    assert parse_datetime("2024-06-01T10:30:00Z") == dt.datetime(2024, 6, 1, 10, 30)
    assert parse_datetime(np.datetime64("2024-06-01")) == dt.date(2024, 6, 1)
    assert parse_datetime(np.datetime64("2024-06-01T10:30:00.000000123")) == dt.datetime(2024, 6, 1, 10, 30)
    assert parse_datetime(None) is None


def test_time_errors():
    with pytest.raises(ClayInputError, match=r"cannot read 'June 1st' as a date; use ISO 8601"):
        encode_time(["June 1st"])
    with pytest.raises(
        ClayInputError, match=r"expected a datetime, date, numpy.datetime64 or ISO 8601 string, got int"
    ):
        encode_time([20240601])
    with pytest.raises(ClayInputError, match=r"hour must be a number in \[0, 24\), got 24"):
        encode_time(["2024-06-01"], hour=24)
    with pytest.raises(ClayInputError, match=r"either hour= or use_capture_hour=True, not both"):
        encode_time(["2024-06-01"], hour=6, use_capture_hour=True)


# ------------------------------------------------------------------------------------------- lat/lon


def test_training_convention_longitude_first_is_the_default():
    # lat 0, lon 90: lon pair (1, 0) comes first in the trained tensor, then the lat pair (0, 1).
    out = encode_latlon([0.0], [90.0])
    assert out.shape == (1, 4) and out.dtype == torch.float32
    assert_close(out, torch.tensor([[1.0, 0.0, 0.0, 1.0]]), atol=1e-6, rtol=0)
    assert_close(encode_latlon([0.0], [90.0], order="latlon"), torch.tensor([[0.0, 1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_latlon_values_for_a_real_place():
    lat, lon = 48.8566, 2.3522  # Paris
    expected = [math.sin(math.radians(lon)), math.cos(math.radians(lon))]
    expected += [math.sin(math.radians(lat)), math.cos(math.radians(lat))]
    assert_close(encode_latlon(lat, lon), torch.tensor([expected]))
    assert_close(encode_latlon(torch.tensor([lat]), np.array([lon])), torch.tensor([expected]))


def test_unknown_coordinates_give_zeros():
    out = encode_latlon([None, float("nan"), 10.0, -33.9], [5.0, 5.0, None, 359.0])
    assert torch.equal(out[:3], torch.zeros(3, 4))
    assert out[3].abs().sum() > 0


def test_latlon_errors():
    with pytest.raises(
        ClayInputError, match=r"lat must be in \[-90, 90\] degrees, got 120.0 at index 1; are lat and lon swapped\?"
    ):
        encode_latlon([10.0, 120.0], [0.0, 0.0])
    with pytest.raises(ClayInputError, match=r"lon must be in \[-180, 360\] degrees, got 400.0 at index 0"):
        encode_latlon([10.0], [400.0])
    with pytest.raises(ClayInputError, match=r"lat and lon must have the same length, got 2 and 1"):
        encode_latlon([10.0, 11.0], [0.0])
    with pytest.raises(
        ClayInputError, match=r"order must be 'lonlat' \(training\) or 'latlon' \(tutorials\), got 'xy'"
    ):
        encode_latlon([10.0], [0.0], order="xy")  # type: ignore[arg-type]
    with pytest.raises(ClayInputError, match=r"lat must be numbers in degrees"):
        encode_latlon(["north"], [0.0])


# ------------------------------------------------------------------------------------------- decibels


def test_to_decibels_numpy_and_torch():
    linear = [1.0, 0.1, 0.0, -1.0, float("nan")]
    expected = [0.0, -10.0, -100.0, -100.0, float("nan")]
    assert_close(
        torch.from_numpy(to_decibels(np.array(linear, dtype=np.float32))), torch.tensor(expected), equal_nan=True
    )
    assert_close(to_decibels(torch.tensor(linear)), torch.tensor(expected), equal_nan=True)


def test_to_decibels_dtypes():
    assert to_decibels(np.array([1, 10], dtype=np.uint16)).dtype == np.float32
    assert to_decibels(np.array([1.0], dtype=np.float64)).dtype == np.float64
    assert to_decibels(torch.tensor([0.0, 1.0], dtype=torch.float16)).tolist() == [-100.0, 0.0]
