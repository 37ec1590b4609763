"""Metadata encodings and the SAR decibel transform: pure functions with a shape contract.

B is the batch size. These turn dates and coordinates into the ``time`` and ``latlon`` tensors the model
takes; they hold no model code.

Two conventions of the released v1.5 weights are the defaults here (see the architecture spec):

* **hour 12**: every training chip was stamped at noon of its day, so ``encode_time`` uses h = 12
  (the pair ``(0, -1)``) unless asked for the capture hour;
* **longitude first**: the trained ``latlon`` tensor is ``[sin(lon), cos(lon), sin(lat), cos(lat)]``.
  Clay's tutorials build latitude first, which does not match training; ``order="latlon"`` gives it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from .errors import ClayInputError

__all__ = [
    "TRAINING_HOUR",
    "LatLonOrder",
    "encode_time",
    "encode_latlon",
    "to_decibels",
    "parse_datetime",
    "as_list",
]

logger = logging.getLogger(__name__)

# Every v1.5 training chip had h = 12 (stacchip set acquisitions to noon of their day).
TRAINING_HOUR = 12

LatLonOrder = Literal["lonlat", "latlon"]

DateLike = dt.datetime | dt.date | np.datetime64 | str | None
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def parse_datetime(value: Any) -> dt.datetime | dt.date | None:
    """One date-like value as a ``datetime`` (in UTC when it carried a zone), a ``date``, or ``None``.

    Accepts ``datetime``, ``date``, ``numpy.datetime64`` (NaT gives ``None``), ISO 8601 strings
    (``"2024-06-01"``, ``"2024-06-01T10:30:00Z"``) and anything with ``to_pydatetime()`` (pandas).
    A date without a time of day stays a ``date``.

    Raises:
        ClayInputError: a value of another type or a string that is not ISO 8601.
    """
    if value is None:
        return None
    if hasattr(value, "to_pydatetime") and not isinstance(value, dt.datetime):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value
    if isinstance(value, dt.date):
        return value
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return None
        unit, _ = np.datetime_data(value.dtype)
        if unit in ("Y", "M", "W", "D"):
            return value.astype("datetime64[D]").item()
        return value.astype("datetime64[us]").item()
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:  # "YYYY-MM-DD": a day, no time of day
                return dt.date.fromisoformat(text)
            return parse_datetime(dt.datetime.fromisoformat(text))
        except ValueError:
            raise ClayInputError(
                f"cannot read {value!r} as a date; use ISO 8601 such as '2024-06-01' or '2024-06-01T10:30:00Z'"
            ) from None
    raise ClayInputError(
        f"expected a datetime, date, numpy.datetime64 or ISO 8601 string, got {type(value).__name__} {value!r}"
    )


def as_list(values: Any) -> list[Any]:
    """A scalar becomes a one-element list; arrays, tensors and sequences become lists."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().reshape(-1).tolist() if values.ndim else [values.item()]
    if isinstance(values, np.ndarray):
        return list(values.reshape(-1)) if values.ndim else [values[()]]
    if isinstance(values, (str, bytes, dt.date, np.generic)) or not isinstance(values, Sequence):
        return [values]
    return list(values)


def encode_time(
    datetimes: DateLike | Sequence[DateLike] | np.ndarray,
    hour: float | None = None,
    *,
    use_capture_hour: bool = False,
) -> torch.Tensor:
    """Encode acquisition dates as ``[sin(2πw/52), cos(2πw/52), sin(2πh/24), cos(2πh/24)]``.

    w is the ISO calendar week (1..53) of the date in UTC. h is :data:`TRAINING_HOUR` (12) by default,
    as in training; ``use_capture_hour=True`` takes the integer UTC hour of each datetime instead (a bare
    date has no hour and keeps 12), and an explicit ``hour`` uses that hour for every sample. ``None``
    (or NaT) entries give a row of zeros, the model's "unknown".

    Args:
        datetimes: one date-like value or a sequence of B of them (see :func:`parse_datetime`).
        hour: hour of day in [0, 24) for every sample, overriding the default 12.
        use_capture_hour: use each datetime's own hour.

    Returns:
        float32 tensor ``(B, 4)``.

    Raises:
        ClayInputError: ``hour`` out of range, ``hour`` together with ``use_capture_hour``, or an unreadable date.
    """
    if hour is not None and use_capture_hour:
        raise ClayInputError("pass either hour= or use_capture_hour=True, not both")
    if hour is not None and not (isinstance(hour, (int, float)) and 0 <= hour < 24):
        raise ClayInputError(f"hour must be a number in [0, 24), got {hour!r}")
    parsed = [parse_datetime(v) for v in as_list(datetimes)]
    out = np.zeros((len(parsed), 4), dtype=np.float64)  # (B, 4)
    for i, when in enumerate(parsed):
        if when is None:
            continue
        week = when.isocalendar()[1]
        if hour is not None:
            h = float(hour)
        elif use_capture_hour and isinstance(when, dt.datetime):
            h = float(when.hour)
        else:
            h = float(TRAINING_HOUR)
        w_angle, h_angle = 2 * math.pi * week / 52, 2 * math.pi * h / 24
        out[i] = (math.sin(w_angle), math.cos(w_angle), math.sin(h_angle), math.cos(h_angle))
    return torch.from_numpy(out).to(torch.float32)


def _coordinates(values: Any, name: str) -> np.ndarray:
    """Coordinates as float64 ``(B,)`` with NaN for unknown (``None``) entries."""
    items = as_list(values)
    try:
        return np.array([np.nan if v is None else float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise ClayInputError(f"{name} must be numbers in degrees (or None for unknown), got {values!r}") from None


def encode_latlon(
    lat: float | Sequence[float | None] | np.ndarray | torch.Tensor | None,
    lon: float | Sequence[float | None] | np.ndarray | torch.Tensor | None,
    order: LatLonOrder = "lonlat",
) -> torch.Tensor:
    """Encode chip-centre coordinates in degrees as sines and cosines of their radians.

    ``order="lonlat"`` (default, the order the v1.5 weights were trained with) gives
    ``[sin(lon), cos(lon), sin(lat), cos(lat)]``; ``order="latlon"`` gives the tutorials'
    ``[sin(lat), cos(lat), sin(lon), cos(lon)]``. A sample whose lat or lon is ``None`` or NaN gets a row
    of zeros (unknown). Scalars count as a batch of one.

    Args:
        lat: latitude(s) in degrees, in [-90, 90], ``(B,)`` or scalar.
        lon: longitude(s) in degrees, in [-180, 360], ``(B,)`` or scalar.
        order: ``"lonlat"`` or ``"latlon"``.

    Returns:
        float32 tensor ``(B, 4)``.

    Raises:
        ClayInputError: unknown order, lat and lon of different lengths, or a value out of range.
    """
    if order not in ("lonlat", "latlon"):
        raise ClayInputError(f"order must be 'lonlat' (training) or 'latlon' (tutorials), got {order!r}")
    lat_deg, lon_deg = _coordinates(lat, "lat"), _coordinates(lon, "lon")  # (B,), (B,)
    if lat_deg.shape != lon_deg.shape:
        raise ClayInputError(f"lat and lon must have the same length, got {lat_deg.size} and {lon_deg.size}")
    known = ~(np.isnan(lat_deg) | np.isnan(lon_deg))  # (B,)
    for name, values, low, high in (("lat", lat_deg, -90.0, 90.0), ("lon", lon_deg, -180.0, 360.0)):
        bad = np.flatnonzero(~np.isnan(values) & ((values < low) | (values > high)))
        if bad.size:
            raise ClayInputError(
                f"{name} must be in [{low:g}, {high:g}] degrees, got {float(values[bad[0]])!r} at index {int(bad[0])}"
                + ("; are lat and lon swapped?" if name == "lat" else "")
            )
    lat_rad, lon_rad = np.deg2rad(np.where(known, lat_deg, 0.0)), np.deg2rad(np.where(known, lon_deg, 0.0))
    lat_pair = np.stack([np.sin(lat_rad), np.cos(lat_rad)], axis=-1)  # (B, 2)
    lon_pair = np.stack([np.sin(lon_rad), np.cos(lon_rad)], axis=-1)  # (B, 2)
    pairs = (lon_pair, lat_pair) if order == "lonlat" else (lat_pair, lon_pair)
    out = np.concatenate(pairs, axis=-1) * known[:, None]  # (B, 4), zeros where unknown
    return torch.from_numpy(out).to(torch.float32)


def to_decibels(x: ArrayT) -> ArrayT:
    """Linear SAR backscatter to decibels as in Clay's training: values <= 0 become 1e-10, then ``10*log10``.

    Works elementwise on a numpy array or a torch tensor of any shape and returns the same kind, in float64
    for float64 input and float32 otherwise. NaN stays NaN.
    """
    # 1e-10 underflows in half precision, so anything narrower than float32 is computed in float32.
    if isinstance(x, torch.Tensor):
        x = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
        return 10 * torch.log10(torch.where(x <= 0, torch.full_like(x, 1e-10), x))
    x = np.asarray(x)
    x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    return 10 * np.log10(np.where(x <= 0, x.dtype.type(1e-10), x))
