"""Image processor for Clay: multispectral chips and their metadata in, model inputs out.

    >>> processor = ClayImageProcessor(sensor="sentinel-2-l2a")
    >>> inputs = processor(chips, datetimes=["2024-06-01"], lat=[48.85], lon=[2.35])   # chips: (B, 10, 256, 256)
    >>> sorted(inputs.keys())
    ['gsd', 'latlon', 'pixel_values', 'time', 'wavelengths']

Shapes: B batch, C bands, H x W chip in pixels. Outputs (torch by default):

==================  ==============  =========================================================================
key                 shape           meaning
==================  ==============  =========================================================================
``pixel_values``    (B, C, H, W)    float32, ``(x - mean) / std`` per band (Sentinel-1: decibels first)
``wavelengths``     (C,)            float32 central wavelengths in micrometres
``gsd``             () or (B,)      float32 ground sample distance in metres (``(B,)`` only if given per sample)
``time``            (B, 4)          week and hour sines/cosines, hour 12 by default, zeros where unknown
``latlon``          (B, 4)          ``[sin(lon), cos(lon), sin(lat), cos(lat)]`` by default, zeros where unknown
``valid_mask``      (B, H, W)       bool, only when ``nodata`` is set: True where no band is nodata
==================  ==============  =========================================================================

No resizing and no resampling: chips must already be a multiple of the patch size. numpy and torch only.

**Sentinel-2 radiometric offset.** Products of processing baseline 04.00 and later (from 25 January 2022) add
1000 DN to every value, unless the archive removed it. The v1.5 mean and std were computed on values without it
(Earth Search's ``sentinel-2-l2a`` COGs, which hold the offset removed; see :mod:`clay_hf.sensors`), so with
``harmonize_offset=True`` (the default) ``preprocess(..., offset_dn=1000)`` subtracts it first (``max(x - 1000,
1)`` for valid values) and the same surface gets the same inputs in 2021 and 2023. The processor does not guess
``offset_dn`` from the date (arrays from Earth Search are harmonised already, from the Planetary Computer or
Copernicus not): chips from :mod:`clay_hf.geodata.raster` are harmonised when read and say so in their
``radiometric_offset``; pass ``offset_dn`` for arrays read elsewhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.utils import TensorType

from .encodings import LatLonOrder, as_list, encode_latlon, encode_time, to_decibels
from .errors import BandMismatchError, ChipSizeError, ClayInputError, NonFiniteInputError
from .sensors import Sensor, get_sensor, list_sensors

__all__ = ["ClayImageProcessor", "ClayImageProcessorKwargs"]

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


class ClayImageProcessorKwargs(TypedDict, total=False):
    """The processor's saved settings (``preprocessor_config.json``); ``from_pretrained`` may override them."""

    patch_size: int
    sensor: str | None
    latlon_order: str
    use_capture_hour: bool
    nodata: float | str | None
    harmonize_offset: bool


class _Bands(NamedTuple):
    """Per-band numbers for one call, after the sensor table and explicit overrides are combined."""

    sensor: str | None  # canonical sensor name, None for explicit wavelengths only
    band_names: tuple[str, ...] | None  # (C,), None when unknown
    wavelengths: list[float]  # (C,) micrometres
    mean: list[float]  # (C,)
    std: list[float]  # (C,)
    gsd_m: float | None  # the sensor's nominal gsd
    is_sar_db: bool


def _parse_nodata(nodata: Any) -> float | None:
    """``None``, a number, or ``"nan"`` (how NaN is written in JSON) -> ``None`` or a float."""
    if nodata is None:
        return None
    if isinstance(nodata, str) and nodata.strip().lower() == "nan":
        return math.nan
    if isinstance(nodata, bool) or not isinstance(nodata, (int, float, np.number)):
        raise ClayInputError(f"nodata must be a number, float('nan') or None, got {nodata!r}")
    return float(nodata)


def _is_scalar(values: Any) -> bool:
    """A single value rather than one per sample (a string or a date counts as one value)."""
    if isinstance(values, (np.ndarray, torch.Tensor)):
        return values.ndim == 0
    return not isinstance(values, (list, tuple)) and not (hasattr(values, "__len__") and not isinstance(values, str))


def _per_sample(values: Any, batch_size: int, name: str) -> list[Any]:
    """One value per sample: a scalar is repeated over the batch, a sequence must have length B."""
    if _is_scalar(values):
        return as_list(values) * batch_size
    items = as_list(values)
    if len(items) != batch_size:
        raise ClayInputError(
            f"got {len(items)} {name} for a batch of {batch_size} images; pass one per image "
            f"(None where unknown) or a single value for all"
        )
    return items


class ClayImageProcessor(BaseImageProcessor):
    r"""Turns raw multispectral chips into Clay's inputs: normalised pixels, wavelengths, gsd, time, latlon.

    Band metadata comes from a sensor of the table (:mod:`clay_hf.sensors`) or from explicit
    ``wavelengths``, ``mean`` and ``std`` (explicit values override the sensor's). Metadata follow the
    conventions of the released v1.5 weights: hour 12 in ``time`` and longitude first in ``latlon``.

    Args:
        patch_size: the model's patch size P; H and W must be multiples of it (8 for every Clay v1.5 size).
        sensor: default sensor name used when ``preprocess`` gets neither ``sensor`` nor ``wavelengths``.
        latlon_order: ``"lonlat"`` (training order, default) or ``"latlon"`` (Clay's tutorials).
        use_capture_hour: encode each datetime's own UTC hour instead of the training hour 12.
        nodata: value marking missing pixels (``float("nan")`` for NaN; saved as ``"nan"``), or ``None``.
            Such pixels become 0 after normalisation (the band mean) and a ``valid_mask`` is returned.
        harmonize_offset: subtract the radiometric offset that ``preprocess(offset_dn=...)`` says the images
            carry (Sentinel-2 processing baseline 04.00 and later: 1000 DN) before normalising, so inputs are in
            the convention the v1.5 normalisation was computed on (reflectance x 10000 without the offset).
            False leaves the values as given.
    """

    model_input_names = ["pixel_values", "wavelengths", "gsd", "time", "latlon"]
    valid_kwargs = ClayImageProcessorKwargs

    def __init__(
        self,
        patch_size: int = 8,
        sensor: str | None = None,
        latlon_order: LatLonOrder = "lonlat",
        use_capture_hour: bool = False,
        nodata: float | str | None = None,
        harmonize_offset: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)
        if kwargs:
            logger.warning("ClayImageProcessor: keeping unknown settings %s as attributes", sorted(kwargs))
        super().__init__(**kwargs)
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
            raise ClayInputError(f"patch_size must be a positive integer, got {patch_size!r}")
        if latlon_order not in ("lonlat", "latlon"):
            raise ClayInputError(f"latlon_order must be 'lonlat' (training) or 'latlon', got {latlon_order!r}")
        if sensor is not None:
            resolved = get_sensor(sensor)
            if isinstance(sensor, Sensor) and get_sensor(resolved.name) is not resolved:
                raise ClayInputError(
                    f"sensor {resolved.name!r} is not the registered one of that name; call register_sensor() first "
                    "so the processor can be saved and loaded by name"
                )
            sensor = resolved.name
        self.patch_size = int(patch_size)
        self.sensor = sensor
        self.latlon_order = latlon_order
        self.use_capture_hour = bool(use_capture_hour)
        self.nodata = _parse_nodata(nodata)
        if not isinstance(harmonize_offset, (bool, np.bool_)):
            raise ClayInputError(f"harmonize_offset must be True or False, got {harmonize_offset!r}")
        self.harmonize_offset = bool(harmonize_offset)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if isinstance(output.get("nodata"), float) and math.isnan(output["nodata"]):
            output["nodata"] = "nan"  # strict JSON has no NaN
        return output

    def preprocess(
        self,
        images: ArrayLike | Sequence[ArrayLike],
        sensor: str | Sensor | None = None,
        wavelengths: Sequence[float] | ArrayLike | None = None,
        mean: Sequence[float] | ArrayLike | None = None,
        std: Sequence[float] | ArrayLike | None = None,
        gsd: float | Sequence[float] | ArrayLike | None = None,
        datetimes: Any = None,
        lat: float | Sequence[float | None] | ArrayLike | None = None,
        lon: float | Sequence[float | None] | ArrayLike | None = None,
        band_names: Sequence[str] | None = None,
        nodata: float | str | None = None,
        hour: float | None = None,
        use_capture_hour: bool | None = None,
        latlon_order: LatLonOrder | None = None,
        convert_to_db: bool | None = None,
        offset_dn: float | Sequence[float | None] | ArrayLike | None = None,
        harmonize_offset: bool | None = None,
        return_tensors: str | TensorType | None = "pt",
    ) -> BatchFeature:
        """Normalise chips and encode their metadata.

        Args:
            images: ``(C, H, W)`` or ``(B, C, H, W)`` numpy array or torch tensor of any numeric dtype, or a
                list of ``(C, H, W)`` arrays of one shape. Raw sensor values (Sentinel-2 L2A reflectance
                0..10000, Sentinel-1 linear backscatter, ...), bands first.
            sensor: sensor name or :class:`Sensor` (default: the processor's ``sensor``).
            wavelengths, mean, std: per-band values ``(C,)``; override those of a ``sensor`` passed in this
                call. With ``wavelengths`` and no ``sensor`` in the call, the processor's default sensor is
                not used: then all three are required, and ``gsd`` too.
            gsd: ground sample distance in metres, one number or one per sample ``(B,)``; default the sensor's.
            datetimes: acquisition date(s): datetime, date, numpy.datetime64 or ISO string, one or one per
                sample; ``None`` entries (or no datetimes) give zeros.
            lat, lon: chip-centre coordinates in degrees, one or one per sample; ``None``/NaN give zeros.
            band_names: the sensor's bands present in ``images``, in the order of their band axis.
            nodata: overrides the processor's ``nodata`` for this call.
            hour: encode this hour of day for every sample instead of 12.
            use_capture_hour: overrides the processor's ``use_capture_hour``.
            latlon_order: overrides the processor's ``latlon_order``.
            convert_to_db: convert to decibels before normalising; default: the sensor's ``is_sar_db``
                (pass False for Sentinel-1 data that is already in decibels).
            offset_dn: the radiometric offset, in digital numbers, that the images still carry, one or one per
                sample (``None`` entries: none): 1000 for Sentinel-2 of processing baseline 04.00 and later from
                an archive that kept it (Copernicus, the Planetary Computer), 0 for earlier baselines and for
                Earth Search's ``sentinel-2-l2a`` COGs (already harmonised). Removed when ``harmonize_offset``.
            harmonize_offset: overrides the processor's ``harmonize_offset``.
            return_tensors: ``"pt"`` (default) or ``"np"``.

        Returns:
            :class:`~transformers.BatchFeature` with ``pixel_values`` (B, C, H, W), ``wavelengths`` (C,),
            ``gsd`` () or (B,), ``time`` (B, 4), ``latlon`` (B, 4), and ``valid_mask`` (B, H, W) when nodata is set.

        Raises:
            UnknownSensorError, BandMismatchError, ChipSizeError, NonFiniteInputError, ClayInputError.
        """
        pixels = self._to_batch(images)  # (B, C, H, W) float32
        batch_size, num_bands, height, width = pixels.shape
        bands = self._resolve_bands(num_bands, pixels.shape, sensor, wavelengths, mean, std, gsd, band_names)
        is_sar_db = bands.is_sar_db if convert_to_db is None else bool(convert_to_db)
        self._check_chip_size(height, width)

        nodata = _parse_nodata(nodata) if nodata is not None else self.nodata
        invalid = None  # (B, C, H, W) bool where a value is nodata
        if nodata is not None:
            invalid = torch.isnan(pixels) if math.isnan(nodata) else pixels == torch.tensor(nodata, dtype=torch.float32)
        self._check_finite(pixels, invalid, bands.band_names)
        harmonize = self.harmonize_offset if harmonize_offset is None else bool(harmonize_offset)
        if harmonize and offset_dn is not None:
            pixels = self._remove_offset(pixels, invalid, offset_dn, batch_size)

        if is_sar_db:
            self._warn_if_decibels(pixels, invalid)
            pixels = to_decibels(pixels)
        mean_t = torch.tensor(bands.mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        std_t = torch.tensor(bands.std, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        pixels = (pixels - mean_t) / std_t  # (B, C, H, W)

        data: dict[str, Any] = {}
        if invalid is not None:
            # Filling nodata with the band mean before normalising is the same as 0 after it.
            pixels = torch.where(invalid, torch.zeros((), dtype=pixels.dtype), pixels)
            data["valid_mask"] = ~invalid.any(dim=1)  # (B, C, H, W) -> (B, H, W)

        data = {
            "pixel_values": pixels,
            "wavelengths": torch.tensor(bands.wavelengths, dtype=torch.float32),  # (C,)
            "gsd": self._encode_gsd(gsd if gsd is not None else bands.gsd_m, batch_size),  # () or (B,)
            "time": self._encode_time(datetimes, batch_size, hour, use_capture_hour),  # (B, 4)
            "latlon": self._encode_latlon(lat, lon, batch_size, latlon_order),  # (B, 4)
            **data,
        }
        logger.debug(
            "preprocessed %d chips of %d bands (%s), %dx%d pixels, decibels=%s",
            batch_size,
            num_bands,
            bands.sensor or "explicit wavelengths",
            height,
            width,
            is_sar_db,
        )
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ---------------------------------------------------------------- steps of preprocess, in order

    @staticmethod
    def _to_batch(images: Any) -> torch.Tensor:
        """Any numeric ``(C, H, W)``, ``(B, C, H, W)`` or list of ``(C, H, W)`` -> float32 ``(B, C, H, W)``."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise ClayInputError("expected at least one image, got an empty list")
            arrays = [ClayImageProcessor._as_float_tensor(im) for im in images]
            shapes = {tuple(a.shape) for a in arrays}
            if len(shapes) > 1:
                raise ClayInputError(
                    f"images in a list must share one shape (one band set, one chip size), got shapes {sorted(shapes)}"
                )
            if arrays[0].ndim != 3:
                raise ClayInputError(
                    f"a list of images must hold (C, H, W) arrays, got shape {tuple(arrays[0].shape)}; "
                    "pass a single (B, C, H, W) array instead"
                )
            pixels = torch.stack(arrays)  # B x (C, H, W) -> (B, C, H, W)
        else:
            pixels = ClayImageProcessor._as_float_tensor(images)
            if pixels.ndim == 3:
                pixels = pixels.unsqueeze(0)  # (C, H, W) -> (1, C, H, W)
        if pixels.ndim != 4:
            raise ClayInputError(
                f"expected images of shape (C, H, W) or (B, C, H, W), got {pixels.ndim} dimensions "
                f"{tuple(pixels.shape)}; add or remove axes so bands come before height and width"
            )
        if pixels.shape[0] == 0 or pixels.shape[1] == 0:
            raise ClayInputError(f"expected at least one image and one band, got shape {tuple(pixels.shape)}")
        return pixels

    @staticmethod
    def _as_float_tensor(image: Any) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            tensor = image.detach().cpu()
        elif isinstance(image, np.ndarray):
            tensor = None
        else:
            raise ClayInputError(
                f"expected images as a numpy array or torch tensor, got {type(image).__name__}; "
                "read rasters into arrays first (bands, height, width)"
            )
        dtype = image.dtype
        numeric = (
            (dtype.is_floating_point or not (dtype.is_complex or dtype == torch.bool))
            if isinstance(image, torch.Tensor)
            else (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
        )
        if not numeric:
            raise ClayInputError(f"expected images of a real numeric dtype, got {dtype}")
        if tensor is None:
            tensor = torch.from_numpy(np.asarray(image, dtype=np.float32))
        return tensor.to(torch.float32)

    def _resolve_bands(
        self,
        num_bands: int,
        shape: torch.Size,
        sensor: str | Sensor | None,
        wavelengths: Any,
        mean: Any,
        std: Any,
        gsd: Any,
        band_names: Sequence[str] | None,
    ) -> _Bands:
        """Per-band numbers from the sensor table, overridden by explicit arrays; lengths checked against C."""
        sensor = sensor if sensor is not None else (self.sensor if wavelengths is None else None)
        base = None
        if sensor is not None:
            base = get_sensor(sensor)
            if band_names is not None:
                base = base.select(band_names)
        elif band_names is not None:
            raise ClayInputError("band_names= selects bands of a sensor; pass sensor= as well")
        elif wavelengths is None:
            raise ClayInputError(
                "no band metadata: pass sensor= (one of "
                f"{', '.join(list_sensors())}) or wavelengths= (micrometres), mean= and std= for your bands, "
                "or create the processor with ClayImageProcessor(sensor=...)"
            )
        else:
            missing = [n for n, v in (("mean", mean), ("std", std), ("gsd", gsd)) if v is None]
            if missing:
                raise ClayInputError(
                    f"with wavelengths= and no sensor, also pass {', '.join(m + '=' for m in missing)} "
                    "(one mean and std per band, gsd in metres), or pass sensor= to take them from the table"
                )

        explicit = {"wavelengths": wavelengths, "mean": mean, "std": std}
        values: dict[str, list[float]] = {}
        for field, given in explicit.items():
            if given is not None:
                values[field] = self._float_list(given, field)
                source = f"{field}="
            else:
                values[field] = list({"wavelengths": base.wavelengths_um, "mean": base.mean, "std": base.std}[field])
                source = f"sensor {base.name!r}"
            if len(values[field]) == num_bands:
                continue
            if base is not None and all(v is None for v in explicit.values()):
                hint = ""
                if shape[-1] == base.num_bands and shape[1] != base.num_bands:
                    hint = "; the array looks channels-last (..., H, W, C): move the band axis first"
                raise BandMismatchError(
                    f"expected {base.num_bands} bands for sensor {base.name!r} ({', '.join(base.band_names)}), "
                    f"got {num_bands}; pass wavelengths= or band_names= or choose another sensor{hint}",
                    num_bands=num_bands,
                    num_values=base.num_bands,
                )
            raise BandMismatchError(
                f"expected one {field} value per band: the images have {num_bands} bands but {source} gives "
                f"{len(values[field])}; pass wavelengths=, mean= and std= of length {num_bands}",
                num_bands=num_bands,
                num_values=len(values[field]),
            )
        if any(w <= 0 for w in values["wavelengths"]):
            raise ClayInputError(f"wavelengths must be positive micrometres, got {values['wavelengths']}")
        if any(s <= 0 for s in values["std"]):
            raise ClayInputError(f"every std must be > 0, got {values['std']}")
        return _Bands(
            sensor=base.name if base is not None else None,
            band_names=base.band_names if base is not None else None,
            wavelengths=values["wavelengths"],
            mean=values["mean"],
            std=values["std"],
            gsd_m=base.gsd_m if base is not None else None,
            is_sar_db=base.is_sar_db if base is not None else False,
        )

    @staticmethod
    def _float_list(values: Any, name: str) -> list[float]:
        items = as_list(values)
        try:
            floats = [float(v) for v in items]
        except (TypeError, ValueError):
            raise ClayInputError(f"{name} must be numbers, got {values!r}") from None
        if not all(math.isfinite(v) for v in floats):
            raise ClayInputError(f"{name} must be finite numbers, got {floats}")
        return floats

    def _check_chip_size(self, height: int, width: int) -> None:
        p = self.patch_size
        if height < p or width < p:
            raise ChipSizeError(
                f"chip of H={height}, W={width} pixels is smaller than one patch (patch_size={p}); "
                f"use chips of at least {p} x {p} pixels, a multiple of {p} (Clay was trained on 256 x 256)"
            )
        if height % p or width % p:
            crop_h, crop_w = height // p * p, width // p * p
            pad_h, pad_w = -(-height // p) * p, -(-width // p) * p
            raise ChipSizeError(
                f"chip of H={height}, W={width} pixels is not a multiple of patch_size={p}; crop to "
                f"{crop_h} x {crop_w} (images[..., :{crop_h}, :{crop_w}]) or pad to {pad_h} x {pad_w}"
            )

    @staticmethod
    def _check_finite(pixels: torch.Tensor, invalid: torch.Tensor | None, names: Sequence[str] | None) -> None:
        bad = ~torch.isfinite(pixels)  # (B, C, H, W)
        if invalid is not None:
            bad &= ~invalid
        per_band = bad.sum(dim=(0, 2, 3))  # (B, C, H, W) -> (C,)
        total = int(per_band.sum())
        if total == 0:
            return
        parts = []
        for c in torch.nonzero(per_band).flatten().tolist():
            label = f"band {names[c]!r} (index {c})" if names and len(names) == len(per_band) else f"band index {c}"
            parts.append(f"{int(per_band[c])} in {label}")
        raise NonFiniteInputError(
            f"found {total} non-finite values (NaN or inf) that are not declared nodata: {', '.join(parts)}; "
            "pass nodata=float('nan') (or your nodata value) to fill missing pixels with the band mean and get "
            "a valid_mask, or replace them before preprocessing"
        )

    @staticmethod
    def _remove_offset(
        pixels: torch.Tensor, invalid: torch.Tensor | None, offset_dn: Any, batch_size: int
    ) -> torch.Tensor:
        """``max(x - offset, 1)`` for the valid values of samples with an offset (as the raster reader does)."""
        offsets = [0.0 if o is None else o for o in _per_sample(offset_dn, batch_size, "offset_dn values")]
        values = ClayImageProcessor._float_list(offsets, "offset_dn")
        if any(v < 0 for v in values):
            raise ClayInputError(
                f"offset_dn must be >= 0 digital numbers (1000 for Sentinel-2 from baseline 04.00), got {values}"
            )
        offset = torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        change = (offset > 0).expand_as(pixels)  # (B, 1, 1, 1) -> (B, C, H, W)
        if invalid is not None:
            change = change & ~invalid
        return torch.where(change, torch.clamp(pixels - offset, min=1.0), pixels)  # (B, C, H, W)

    @staticmethod
    def _warn_if_decibels(pixels: torch.Tensor, invalid: torch.Tensor | None) -> None:
        """Linear backscatter is >= 0; mostly negative input has probably been converted to decibels already."""
        valid = pixels if invalid is None else pixels[~invalid]
        if valid.numel() and float((valid < 0).float().mean()) > 0.5:
            logger.warning(
                "Sentinel-1 input is mostly negative and looks like decibels already; it is converted to decibels "
                "again. Pass convert_to_db=False if it is in dB."
            )

    @staticmethod
    def _encode_gsd(gsd: Any, batch_size: int) -> torch.Tensor:
        if _is_scalar(gsd):
            values = ClayImageProcessor._float_list(gsd, "gsd")
        else:
            values = ClayImageProcessor._float_list(_per_sample(gsd, batch_size, "gsd values"), "gsd")
        if any(v <= 0 for v in values):
            raise ClayInputError(f"gsd must be positive metres, got {values}")
        if _is_scalar(gsd):
            return torch.tensor(values[0], dtype=torch.float32)  # ()
        return torch.tensor(values, dtype=torch.float32)  # (B,)

    def _encode_time(
        self, datetimes: Any, batch_size: int, hour: float | None, use_capture_hour: bool | None
    ) -> torch.Tensor:
        if datetimes is None:
            return torch.zeros(batch_size, 4)  # (B, 4), unknown
        capture = self.use_capture_hour if use_capture_hour is None else use_capture_hour
        if hour is not None and use_capture_hour is None:
            capture = False  # an explicit hour for this call wins over the processor's setting
        return encode_time(_per_sample(datetimes, batch_size, "datetimes"), hour=hour, use_capture_hour=capture)

    def _encode_latlon(self, lat: Any, lon: Any, batch_size: int, order: LatLonOrder | None) -> torch.Tensor:
        if lat is None and lon is None:
            return torch.zeros(batch_size, 4)  # (B, 4), unknown
        if lat is None or lon is None:
            raise ClayInputError("pass both lat= and lon= (degrees), or neither")
        lat_items = _per_sample(lat, batch_size, "lat values")
        lon_items = _per_sample(lon, batch_size, "lon values")
        return encode_latlon(lat_items, lon_items, order=order or self.latlon_order)
