"""Sensors as typed data: band order, wavelengths, normalisation and ground sample distance.

The table Clay v1.5 was trained with ships as package data (``sensors.json``, copied from the spec's
``sensors.md``) and is read once at import into frozen :class:`Sensor` records::

    >>> s2 = get_sensor("Sentinel-2")          # case-insensitive; aliases allowed
    >>> s2.name, s2.gsd_m, s2.band_names[:3]
    ('sentinel-2-l2a', 10.0, ('blue', 'green', 'red'))
    >>> s2.select(["red", "green", "blue"]).wavelengths_um
    (0.665, 0.56, 0.493)

Names are matched after lower-casing and turning ``_`` and spaces into ``-``. Aliases shipped with the
table:

======================  =============================================
canonical name          aliases
======================  =============================================
``sentinel-2-l2a``      ``sentinel-2``, ``sentinel2``, ``s2``, ``s2-l2a``
``planetscope-sr``      ``planetscope``, ``planet``
``landsat-c2l1``        ``landsat-c2-l1``, ``landsat-l1``
``landsat-c2l2-sr``     ``landsat-c2-l2-sr``, ``landsat-l2``, ``landsat-sr``
``sentinel-1-rtc``      ``sentinel-1``, ``sentinel1``, ``s1``, ``s1-rtc``
``satellogic-MSI-L1D``  ``satellogic``
``naip``, ``linz``,     (none)
``modis``
``sentinel-2-l1c``      ``s2-l1c``, ``sentinel-2-toa`` (not in the v1.5 table; see below)
======================  =============================================

``landsat``, ``landsat-8`` and ``landsat-9`` are deliberately NOT aliases: the level-1 and the
surface-reflectance tables differ, so the lookup error names both and asks which one.

**Sentinel-2 L1C.** Clay v1.5 was trained on Sentinel-2 L2A (surface reflectance) only, so its table has no
L1C (top-of-atmosphere reflectance) entry. ``sentinel-2-l1c`` is added after the v1.5 sensors so that L1C
sources are labelled by what they are: it has the L2A bands and wavelengths (the same instrument) and
borrows the L2A mean and std (``normalisation_from="sentinel-2-l2a"``). Those are the closest statistics the
model knows: the same bands and the same DN scale (reflectance x 10000), while top-of-atmosphere values run a
few hundred DN brighter than surface reflectance in the blue and green bands (atmospheric scattering) and
close to it in the near and short-wave infrared. So an L1C chip is normalised like an L2A chip, slightly
off-centre in the visible bands; its label (chip ``sensor``) keeps it apart from L2A in results.

**Radiometric offset.** From processing baseline 04.00 (in production from 25 January 2022) Sentinel-2 L1C and
L2A digital numbers carry +1000 (``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET`` = -1000). The v1.5 mean and std were
computed on values *without* it (DN = reflectance x 10000). Clay's Sentinel-2 training chips were made by
stacchip: its Sentinel-2 processor searched Earth Search v1's ``sentinel-2-l2a`` collection for two random years
of 2018-2022 (2018-2023 in Clay's training-data notes) and copied the COGs as they are; its chipper reads them
without any offset handling, and the normalisation was computed on those chips (``stacchip/processors/stats.py``).
Most of those scenes predate baseline 04.00, and for the later ones Earth Search's COGs hold the offset already
removed (``earthsearch:boa_offset_applied``, set since February 2022; a few scenes are known to be mis-flagged).
It is also the convention the Planetary Computer's ``harmonize_to_old`` example converts to. The readers and the
image processor therefore harmonise to it by default (``harmonize_offset``; :func:`radiometric_offset_rule`
holds the facts; see :mod:`clay_hf.geodata.raster`).

Users add their own sensors with :func:`register_sensor`, or pass wavelengths, mean and std straight
to the image processor.

The table also holds, as data, what the raster readers need to recognise a product: the band names products
and STAC catalogues use (``band_aliases``, ``platform_band_aliases``: ``"B02"`` -> ``"blue"``, Landsat TM/ETM+
numbering by platform), read by :func:`canonical_band` and :func:`map_band_names`; and the platform rules
(``platform_rules``, ``level_keywords``) that :func:`sensor_from_platform` applies to a STAC ``platform`` or a
file's ``SPACECRAFT_ID`` tag. Beyond tags, :func:`product_id_from_paths` reads Landsat and Sentinel product ids in
file and folder names (``LC08_L2SP_...``, ``S2A_MSIL2A_...``), :func:`sensor_from_instruments` a STAC item's
``instruments``, :func:`sensors_for_band_names` band names, and :func:`sensors_for_band_count` proposes sensors
for a file that says nothing but its band count and data type.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .errors import BandMismatchError, ClayInputError, UnknownBandError, UnknownSensorError

__all__ = [
    "Sensor",
    "get_sensor",
    "list_sensors",
    "register_sensor",
    "SENSORS_JSON",
    "normalize_band_name",
    "normalize_platform",
    "band_aliases",
    "canonical_band",
    "map_band_names",
    "sensor_from_platform",
    "sensor_from_instruments",
    "ProductId",
    "parse_product_id",
    "product_id_from_paths",
    "sensors_for_band_names",
    "sensors_for_band_count",
    "radiometric_offset_rule",
]

logger = logging.getLogger(__name__)

SENSORS_JSON = Path(__file__).with_name("sensors.json")

# Names that would be convenient aliases but are ambiguous; the lookup error explains the choice.
_AMBIGUOUS_NAMES: dict[str, tuple[str, ...]] = {
    "landsat": ("landsat-c2l2-sr", "landsat-c2l1"),
    "landsat-8": ("landsat-c2l2-sr", "landsat-c2l1"),
    "landsat-9": ("landsat-c2l2-sr", "landsat-c2l1"),
}


def _normalise_name(name: str) -> str:
    """Lookup key of a sensor name: lower case, ``_`` and spaces turned into ``-``."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


@dataclasses.dataclass(frozen=True)
class Sensor:
    """One platform of the sensor table: per-band numbers in band order, plus platform-wide facts.

    Args:
        name: canonical name (``"sentinel-2-l2a"``).
        band_names: band names in the order the bands are stacked, ``(C,)``.
        wavelengths_um: central wavelength of each band in micrometres, ``(C,)``; SAR bands use the
            stand-in values the model was trained with (Sentinel-1 VV 3.5, VH 4.0).
        mean: per-band mean of ``(x - mean) / std``, ``(C,)``, in the units of the input (decibels for SAR).
        std: per-band standard deviation, ``(C,)``, all > 0.
        gsd_m: nominal ground sample distance in metres.
        rgb_indices: 0-based indices of the red, green and blue bands fed to the teacher, or ``None``
            (Sentinel-1: the teacher sees VV, VH and (VV + VH) / 2 instead).
        is_sar_db: the input is linear SAR backscatter that is converted to decibels before
            normalising (values <= 0 become 1e-10, then ``10 * log10``).
        reconstruction_loss_scale: multiplier of the reconstruction loss for batches of this sensor
            (0.1 for MODIS in v1.5, 1.0 otherwise).
        aliases: other names :func:`get_sensor` accepts for this sensor.
        normalisation_from: for a sensor outside Clay v1.5's table, the table sensor whose mean and std it
            borrows (``sentinel-2-l1c``: ``"sentinel-2-l2a"``); ``None`` for the table's own numbers.
    """

    name: str
    band_names: tuple[str, ...]
    wavelengths_um: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gsd_m: float
    rgb_indices: tuple[int, int, int] | None = None
    is_sar_db: bool = False
    reconstruction_loss_scale: float = 1.0
    aliases: tuple[str, ...] = ()
    normalisation_from: str | None = None

    def __post_init__(self) -> None:
        # Frozen dataclass: coerce lists to tuples and numbers to float through object.__setattr__.
        set_ = lambda field, value: object.__setattr__(self, field, value)
        if not isinstance(self.name, str) or not self.name.strip():
            raise ClayInputError(f"a sensor needs a non-empty name, got {self.name!r}")
        set_("band_names", tuple(str(b) for b in self.band_names))
        set_("wavelengths_um", tuple(float(w) for w in self.wavelengths_um))
        set_("mean", tuple(float(m) for m in self.mean))
        set_("std", tuple(float(s) for s in self.std))
        set_("gsd_m", float(self.gsd_m))
        set_("is_sar_db", bool(self.is_sar_db))
        set_("reconstruction_loss_scale", float(self.reconstruction_loss_scale))
        set_("aliases", tuple(str(a) for a in self.aliases))

        n = len(self.band_names)
        if n == 0:
            raise ClayInputError(f"sensor {self.name!r} needs at least one band, got none")
        for field in ("wavelengths_um", "mean", "std"):
            if len(getattr(self, field)) != n:
                raise BandMismatchError(
                    f"sensor {self.name!r} has {n} band names but {len(getattr(self, field))} values in "
                    f"{field}; give one value per band",
                    num_bands=n,
                    num_values=len(getattr(self, field)),
                )
        if len(set(self.band_names)) != n:
            dupes = sorted({b for b in self.band_names if self.band_names.count(b) > 1})
            raise ClayInputError(f"sensor {self.name!r} has duplicate band names {dupes}; band names must be unique")
        for field in ("wavelengths_um", "mean", "std"):
            bad = [b for b, v in zip(self.band_names, getattr(self, field)) if not math.isfinite(v)]
            if bad:
                raise ClayInputError(f"sensor {self.name!r}: {field} must be finite, got non-finite for bands {bad}")
        bad_std = [(b, s) for b, s in zip(self.band_names, self.std) if s <= 0]
        if bad_std:
            raise ClayInputError(f"sensor {self.name!r}: every std must be > 0, got {bad_std}")
        if not (math.isfinite(self.gsd_m) and self.gsd_m > 0):
            raise ClayInputError(f"sensor {self.name!r}: gsd_m must be a positive number of metres, got {self.gsd_m}")
        if self.rgb_indices is not None:
            rgb = tuple(int(i) for i in self.rgb_indices)
            if len(rgb) != 3 or any(not 0 <= i < n for i in rgb):
                raise ClayInputError(
                    f"sensor {self.name!r}: rgb_indices must be 3 band indices in [0, {n - 1}], got {list(rgb)}"
                )
            set_("rgb_indices", rgb)

    @property
    def num_bands(self) -> int:
        """Number of bands C."""
        return len(self.band_names)

    def select(self, band_names: Sequence[str]) -> Sensor:
        """A sensor with only ``band_names``, in the order given (the order of the user's band axis).

        The name stays the same (the numbers are this sensor's); ``rgb_indices`` is remapped when the
        red, green and blue bands are all kept and ``None`` otherwise; aliases are dropped.

        Raises:
            ClayInputError: a band name this sensor does not have, a repeated name, or an empty list.
        """
        if isinstance(band_names, str):
            band_names = [band_names]
        band_names = list(band_names)
        if not band_names:
            raise ClayInputError(f"select() needs at least one band name of sensor {self.name!r}, got none")
        lookup = {b.lower(): i for i, b in enumerate(self.band_names)}
        indices = []
        for band in band_names:
            i = lookup.get(str(band).lower())
            if i is None:
                close = difflib.get_close_matches(str(band).lower(), list(lookup), n=3, cutoff=0.5)
                hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                raise ClayInputError(
                    f"sensor {self.name!r} has no band {band!r}{hint}; its bands are {list(self.band_names)}"
                )
            indices.append(i)
        if len(set(indices)) != len(indices):
            raise ClayInputError(f"band names must not repeat, got {band_names} for sensor {self.name!r}")
        rgb = None
        if self.rgb_indices is not None and all(i in indices for i in self.rgb_indices):
            rgb = tuple(indices.index(i) for i in self.rgb_indices)
        return dataclasses.replace(
            self,
            band_names=tuple(self.band_names[i] for i in indices),
            wavelengths_um=tuple(self.wavelengths_um[i] for i in indices),
            mean=tuple(self.mean[i] for i in indices),
            std=tuple(self.std[i] for i in indices),
            rgb_indices=rgb,
            aliases=(),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used in ``sensors.json`` (without the name, which is the key there)."""
        borrowed = {"normalisation_from": self.normalisation_from} if self.normalisation_from else {}
        return {
            "aliases": list(self.aliases),
            **borrowed,
            "gsd_m": self.gsd_m,
            "rgb_indices": list(self.rgb_indices) if self.rgb_indices is not None else None,
            "is_sar_db": self.is_sar_db,
            "reconstruction_loss_scale": self.reconstruction_loss_scale,
            "bands": [
                {"name": b, "wavelength_um": w, "mean": m, "std": s}
                for b, w, m, s in zip(self.band_names, self.wavelengths_um, self.mean, self.std)
            ],
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Sensor:
        """Build a sensor from its ``sensors.json`` entry."""
        bands = data["bands"]
        return cls(
            name=name,
            band_names=tuple(b["name"] for b in bands),
            wavelengths_um=tuple(b["wavelength_um"] for b in bands),
            mean=tuple(b["mean"] for b in bands),
            std=tuple(b["std"] for b in bands),
            gsd_m=data["gsd_m"],
            rgb_indices=tuple(data["rgb_indices"]) if data.get("rgb_indices") is not None else None,
            is_sar_db=data.get("is_sar_db", False),
            reconstruction_loss_scale=data.get("reconstruction_loss_scale", 1.0),
            aliases=tuple(data.get("aliases", ())),
            normalisation_from=data.get("normalisation_from"),
        )


# name -> Sensor, in table order then registration order; _LOOKUP maps every normalised name and alias.
_SENSORS: dict[str, Sensor] = {}
_LOOKUP: dict[str, str] = {}


def _keys(sensor: Sensor) -> list[str]:
    return [_normalise_name(n) for n in (sensor.name, *sensor.aliases)]


def list_sensors() -> list[str]:
    """Canonical names of all known sensors: the shipped table in its order, then registered ones."""
    return list(_SENSORS)


def get_sensor(name: str | Sensor) -> Sensor:
    """The sensor called ``name`` (case-insensitive, aliases allowed); a :class:`Sensor` is returned as is.

    Raises:
        UnknownSensorError: no such sensor; the message lists the closest names and all known ones.
    """
    if isinstance(name, Sensor):
        return name
    if not isinstance(name, str):
        raise UnknownSensorError(f"a sensor name must be a string, got {type(name).__name__} {name!r}")
    key = _normalise_name(name)
    if key in _LOOKUP:
        return _SENSORS[_LOOKUP[key]]
    if key in _AMBIGUOUS_NAMES:
        options = " or ".join(repr(o) for o in _AMBIGUOUS_NAMES[key])
        raise UnknownSensorError(
            f"sensor name {name!r} is ambiguous: use {options} (surface reflectance or level-1 digital numbers; "
            "their normalisation differs)"
        )
    close = difflib.get_close_matches(key, list(_LOOKUP), n=3, cutoff=0.4)
    close_canonical = list(dict.fromkeys(_SENSORS[_LOOKUP[c]].name for c in close))
    hint = f"did you mean {', '.join(repr(c) for c in close_canonical)}? " if close_canonical else ""
    raise UnknownSensorError(
        f"unknown sensor {name!r}; {hint}known sensors: {', '.join(list_sensors())}. "
        "Register your own with register_sensor(Sensor(...)) or pass wavelengths=, mean= and std= explicitly"
    )


def register_sensor(sensor: Sensor, overwrite: bool = False) -> Sensor:
    """Add ``sensor`` to the table so :func:`get_sensor` (and the image processor) find it by name.

    Args:
        sensor: the sensor; its name and aliases become lookup keys.
        overwrite: replace a sensor of the same name (its aliases go with it). Without it, a name or
            alias that is already taken raises.

    Raises:
        ClayInputError: ``sensor`` is not a :class:`Sensor`, or a name or alias is taken.
    """
    if not isinstance(sensor, Sensor):
        raise ClayInputError(f"register_sensor() takes a Sensor, got {type(sensor).__name__}")
    keys = _keys(sensor)
    own = _LOOKUP.get(_normalise_name(sensor.name))
    if own is not None and not overwrite:
        raise ClayInputError(
            f"sensor {sensor.name!r} is already registered; pass overwrite=True to replace it or choose another name"
        )
    taken = {k: _LOOKUP[k] for k in keys if k in _LOOKUP and _LOOKUP[k] != own}
    if taken:
        raise ClayInputError(
            f"cannot register sensor {sensor.name!r}: name(s) {sorted(taken)} already belong to "
            f"{sorted(set(taken.values()))}; choose other aliases"
        )
    if own is not None:
        for k in _keys(_SENSORS.pop(own)):
            _LOOKUP.pop(k, None)
    _SENSORS[sensor.name] = sensor
    for k in keys:
        _LOOKUP[k] = sensor.name
    logger.debug("registered sensor %r (%d bands)", sensor.name, sensor.num_bands)
    return sensor


def _read_json(path: Path = SENSORS_JSON) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_table(path: Path = SENSORS_JSON) -> Iterable[Sensor]:
    for name, data in _read_json(path)["sensors"].items():
        yield Sensor.from_dict(name, data)


_TABLE = _read_json()
for _sensor in _load_table():
    register_sensor(_sensor)
del _sensor

# ---------------------------------------------------------------------------------------------- band names


def normalize_band_name(name: str) -> str:
    """Lookup key of a band name: lower case, ``-`` and spaces turned into ``_`` (``"B8A"`` -> ``"b8a"``)."""
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def band_aliases(sensor: str | Sensor, platform: str | None = None) -> dict[str, str]:
    """Product band names (normalised) -> the table's band names of ``sensor``; ``platform`` picks a
    platform's own numbering (Landsat 4/5/7 TM/ETM+) where the table has one. Empty for unknown sensors."""
    name = sensor.name if isinstance(sensor, Sensor) else str(sensor)
    if platform:
        key = normalize_platform(platform)
        for rule in _TABLE.get("platform_band_aliases", ()):
            if name in rule["sensors"] and key in rule["platforms"]:
                return dict(rule["aliases"])
    return dict(_TABLE.get("band_aliases", {}).get(name, {}))


def canonical_band(sensor: Sensor, name: str, platform: str | None = None) -> str | None:
    """The table name of band ``name`` of ``sensor`` (aliases, file-name tails like ``s2_B02``), or None."""
    table = {normalize_band_name(b): b for b in sensor.band_names}
    aliases = band_aliases(sensor, platform)
    key = normalize_band_name(name)
    candidates = [key, re.sub(r"^(sr|st|toa)_", "", key), key.rsplit("_", 1)[-1]]
    for cand in candidates:
        if cand in table:
            return table[cand]
        if cand in aliases:
            return aliases[cand]
    return None


def map_band_names(sensor: Sensor, names: Sequence[str], platform: str | None, where: str) -> tuple[str, ...]:
    """``names`` as the table names of ``sensor`` (:func:`canonical_band`); ``where`` names the source in errors.

    Raises:
        UnknownBandError: a name the sensor does not have (with the closest names), or names that map to the
            same band twice.
    """
    mapped = []
    for name in names:
        canonical = canonical_band(sensor, name, platform)
        if canonical is None:
            known = list(sensor.band_names) + sorted(band_aliases(sensor))
            close = difflib.get_close_matches(normalize_band_name(name), known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise UnknownBandError(
                f"{where}: sensor {sensor.name!r} has no band {name!r}; {hint}its bands are "
                f"{list(sensor.band_names)}. Pass band_names= with these names, or sensor=None with "
                "wavelengths_um=, mean= and std= for a band set the table does not have"
            )
        mapped.append(canonical)
    if len(set(mapped)) != len(mapped):
        raise UnknownBandError(f"{where}: band names {list(names)} map to repeated sensor bands {mapped}")
    return tuple(mapped)


# ---------------------------------------------------------------------------------------------- platforms


def normalize_platform(platform: str) -> str:
    """Lookup key of a platform: lower case, ``_`` and spaces -> ``-``, ``landsat8`` -> ``landsat-8``."""
    text = str(platform).strip().lower().replace("_", "-").replace(" ", "-")
    return re.sub(r"^(landsat|sentinel)-?(\d)", r"\1-\2", text)


def _rule_matches(rule: dict[str, Any], platform: str) -> bool:
    return (
        platform in rule.get("platforms", ())
        or any(platform.startswith(p) for p in rule.get("prefixes", ()))
        or any(c in platform for c in rule.get("contains", ()))
    )


def sensor_from_platform(platform: str | None, hint: str = "") -> str | None:
    """The sensor-table name for a platform (STAC ``platform``, a file's ``SPACECRAFT_ID`` tag), or None.

    ``hint`` is the collection id or processing level ("sentinel-2-l1c", "landsat-c2-l2", "L1TP"): it decides
    between the level-1 and surface-reflectance tables (Sentinel-2 L1C or L2A, L2A when no level is given;
    Landsat level 1 or level 2). Landsat 4/5/7 level-1 data (8-bit digital numbers) and Landsat without a level
    have no table entry and give None. A name of the table itself ("sentinel-2-l2a") is returned as is. The
    rules are data: ``platform_rules`` in ``sensors.json``.
    """
    if not platform:
        return None
    key = normalize_platform(platform)
    # Level words are matched in the platform and the hint with the dashes dropped ("landsat-c2-l2" ->
    # "landsatc2l2"), the mission's own name dropped first, so that "sentinel-2-l1c" does not read as level 2.
    text = re.sub(r"sentinel[-_ ]?\d", "", f"{platform} {hint}".lower()).replace("-", "")
    present = {level for level, words in _TABLE["level_keywords"].items() if any(w in text for w in words)}
    for rule in _TABLE["platform_rules"]:
        if not _rule_matches(rule, key):
            continue
        if "sensor" in rule:
            return rule["sensor"]
        return next((lv["sensor"] for lv in rule.get("levels", ()) if set(lv["when"]) <= present), None)
    try:
        return get_sensor(platform).name
    except KeyError:
        return None


def sensor_from_instruments(instruments: Sequence[str] | str | None, hint: str = "") -> str | None:
    """The sensor-table name for a STAC item's ``instruments`` (``["msi"]``, ``["oli", "tirs"]``), or None.

    For items without ``platform``: each instrument stands for a platform (``instruments`` in ``sensors.json``),
    which :func:`sensor_from_platform` maps with ``hint`` (the collection id or processing level).
    """
    if not instruments:
        return None
    names = [instruments] if isinstance(instruments, str) else list(instruments)
    table = _TABLE.get("instruments", {})
    joined = "-".join(str(n).strip().lower() for n in names)
    for key in (joined, *(str(n).strip().lower() for n in names)):
        if key in table and (name := sensor_from_platform(table[key], hint)):
            return name
    return None


# ---------------------------------------------------------------------------------------------- product ids


class ProductId(NamedTuple):
    """What a Landsat or Sentinel product id in a file or folder name says.

    ``text``: the id as found; ``platform``: ``"landsat-8"``, ``"sentinel-2a"`` (``"sentinel-2"`` when the
    name does not say which satellite); ``level``: ``"L2A"``, ``"L1C"``, ``"L2SP"``, ``"L1TP"``, ``"GRDH"`` or
    None; ``collection``: the Landsat collection (``"02"``) or None; ``datetime``: the acquisition time (ISO
    8601, or a date) or None; ``processing_baseline``: the Sentinel-2 baseline (``"05.09"``) or None;
    ``sensor``: the sensor-table name it maps to (:func:`sensor_from_platform`) or None (Landsat without a
    level, Landsat 4/5/7 level 1).
    """

    text: str
    platform: str
    level: str | None
    collection: str | None
    datetime: str | None
    processing_baseline: str | None
    sensor: str | None

    def describe(self) -> str:
        """``"a Landsat 8 level-2 product (LC08_L2SP_...)"``: how messages name the evidence."""
        family, _, number = self.platform.partition("-")
        satellite = f"{family.capitalize()}-{number.upper()}" if family == "sentinel" else f"Landsat {number}"
        level = {"L2SP": "level-2", "L2SR": "level-2", "L1TP": "level-1", "L1GT": "level-1", "L1GS": "level-1"}
        what = level.get(self.level or "", self.level)
        text = self.text if len(self.text) <= 24 else self.text[:20] + "..."
        return f"a {satellite}{f' {what}' if what else ''} product ({text})"


# (family, pattern) of the product ids in file and folder names; the satellite letter or number completes the platform.
_PRODUCT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (family, re.compile(r"(?<![A-Za-z0-9])" + pattern))
    for family, pattern in (
        # Sentinel-2 SAFE products (and BigEarthNet patches): S2A_MSIL2A_20230601T103631_N0509_R008_T32TQM_...
        ("sentinel-2", r"S2(?P<sat>[A-D])_MSI(?P<level>L1C|L2A)_(?P<date>\d{8}T\d{6})(?:_N(?P<baseline>\d{4}))?"),
        # Sentinel-2 granules and datastrips of the old naming: S2A_OPER_MSI_L1C_TL_SGS__20170216T..._N02.04
        (
            "sentinel-2",
            r"S2(?P<sat>[A-D])_OPER_(?:MSI|PRD)_(?:MSI)?(?P<level>L1C|L2A)[\w.]*?(?:_N(?P<baseline>\d{2}\.\d{2}))?$",
        ),
        # Earth Search item ids: S2B_52SFA_20220126_0_L2A
        ("sentinel-2", r"S2(?P<sat>[A-D])_T?\d{2}[A-Z]{3}_(?P<date>\d{8})(?:T\d{6})?_\d+_(?P<level>L1C|L2A)"),
        # SAFE granule folders: L1C_T33UUU_A008642_20170216T102101
        ("sentinel-2", r"(?P<level>L1C|L2A)_T\d{2}[A-Z]{3}_A\d{6}_(?P<date>\d{8}T\d{6})"),
        # SAFE band files: T33UUU_20170216T102101_B02 (L1C), T33UUU_20170216T102101_B02_10m (L2A, with a resolution)
        (
            "sentinel-2",
            r"T\d{2}[A-Z]{3}_(?P<date>\d{8}T\d{6})_(?:B\d[\dA]|TCI|AOT|WVP|SCL)(?P<res>_\d{2}m)?(?![A-Za-z0-9])",
        ),
        # Landsat Collection 1 and 2: LC08_L2SP_044034_20210508_20210517_02_T1
        (
            "landsat",
            r"L[COTEM](?P<sat>\d{2})_(?P<level>L1TP|L1GT|L1GS|L2SP|L2SR)_\d{6}_(?P<date>\d{8})_\d{8}_(?P<collection>\d{2})_(?:T1|T2|RT)",
        ),
        # Landsat scene ids (before the collections): LC80440342015001LGN00, year and day of year
        ("landsat", r"L[COTEM](?P<sat>\d)\d{6}(?P<year>\d{4})(?P<doy>\d{3})[A-Z]{3}\d{2}"),
        # Sentinel-1: S1A_IW_GRDH_1SDV_20170613T165043_...
        (
            "sentinel-1",
            r"S1(?P<sat>[A-D])_(?:IW|EW|SM|WV|S\d)_(?P<level>GRD[FHM]|SLC_|RAW_|OCN_)\w*?_(?P<date>\d{8}T\d{6})",
        ),
    )
)


def _iso_stamp(stamp: str) -> str:
    if "T" in stamp:  # 20170613T101031
        return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"


def parse_product_id(name: str) -> ProductId | None:
    """The Landsat or Sentinel product id in one file or folder name (``LC08_L2SP_...``, ``S2A_MSIL2A_...``), or None.

    >>> parse_product_id("S2B_MSIL1C_20230601T103629_N0509_R008_T32TQM_20230601T124002.SAFE").sensor
    'sentinel-2-l1c'
    >>> parse_product_id("LC08_L2SP_044034_20210508_20210517_02_T1_SR_B4.TIF").sensor
    'landsat-c2l2-sr'
    """
    import datetime as dt

    stem = re.sub(r"\.(safe|tif{1,2}|jp2|json|zip|SAFE|TIF{1,2})$", "", str(name).rsplit("/", 1)[-1])
    for family, pattern in _PRODUCT_PATTERNS:
        match = pattern.search(stem)
        if not match:
            continue
        groups = match.groupdict()
        sat = groups.get("sat")
        level = groups.get("level")
        when = None
        if groups.get("date"):
            when = _iso_stamp(groups["date"])
        elif groups.get("year"):
            day = dt.date(int(groups["year"]), 1, 1) + dt.timedelta(days=int(groups["doy"]) - 1)
            when = day.isoformat()
        if family == "landsat":
            platform = f"landsat-{int(sat)}"
        else:
            platform = f"{family}{sat.lower()}" if sat else family
        if family == "sentinel-2" and level is None:
            level = "L2A" if groups.get("res") else "L1C"  # SAFE band files: L2A names carry a resolution
        baseline = groups.get("baseline")
        if baseline and "." not in baseline:
            baseline = f"{baseline[:2]}.{baseline[2:]}"
        collection = groups.get("collection")
        hint = " ".join(v for v in (level, f"c{int(collection)}" if collection else None) if v)
        return ProductId(
            match.group(0), platform, level, collection, when, baseline, sensor_from_platform(platform, hint)
        )
    return None


def product_id_from_paths(paths: Sequence[str], parents: int = 4) -> ProductId | None:
    """The first product id in the file names of ``paths``, else in the folders above the first path.

    Paths may be URLs (an Earth Search COG ``.../S2B_52SFA_20220126_0_L2A/B04.tif`` is named by its folder).
    ``parents`` is how many folders up are looked at (a SAFE band file sits four below the product folder).
    """
    for path in paths:
        if found := parse_product_id(str(path).rstrip("/").rsplit("/", 1)[-1]):
            return found
    if not paths:
        return None
    folders = str(paths[0]).replace("\\", "/").split("?")[0].rstrip("/").split("/")[:-1]
    for folder in reversed(folders[-parents:] if parents else []):
        if folder and (found := parse_product_id(folder)):
            return found
    return None


# ---------------------------------------------------------------------------------------------- evidence


def sensors_for_band_names(names: Sequence[str], platform: str | None = None) -> list[str]:
    """The sensors of the table whose bands (or their aliases) are exactly named by ``names``, in table order.

    Every name must map to a distinct band of the sensor (:func:`canonical_band`); several sensors may fit
    (``["blue", "green", "red"]`` fits six of them), a name only one sensor has (``"B8A"``, ``"rededge1"``)
    narrows it down.
    """
    found = []
    for sensor_name in list_sensors():
        sensor = get_sensor(sensor_name)
        mapped = [canonical_band(sensor, n, platform) for n in names]
        if names and None not in mapped and len(set(mapped)) == len(mapped):
            found.append(sensor_name)
    return found


def sensors_for_band_count(count: int, dtype: str | None = None) -> list[str]:
    """The sensors of the table with ``count`` bands, those whose products come in ``dtype`` first.

    Only a proposal for a message: a band count and a data type never decide a sensor on their own.
    """
    same = [n for n in list_sensors() if get_sensor(n).num_bands == count]
    typical = _TABLE.get("typical_dtypes", {})
    return sorted(same, key=lambda n: dtype is None or str(dtype) not in typical.get(n, ()))


def radiometric_offset_rule(sensor: str | Sensor | None) -> dict[str, Any] | None:
    """The radiometric-offset facts of a sensor whose products add a constant from some processing baseline on.

    ``{"offset_dn": 1000.0, "since_baseline": "04.00", "since_date": "2022-01-25", "offset_tags": [...]}`` for
    ``sentinel-2-l2a`` and ``sentinel-2-l1c`` (``radiometric_offsets`` in ``sensors.json``); None for the others.
    """
    if sensor is None:
        return None
    name = sensor.name if isinstance(sensor, Sensor) else str(sensor)
    rule = _TABLE.get("radiometric_offsets", {}).get(name)
    return dict(rule) if rule is not None else None
