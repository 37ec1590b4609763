"""The clay_hf exception family.

Every error a user can trigger is a ``ClayError`` and also inherits the builtin that fits
(``ValueError``, ``KeyError`` or ``OSError``), so ``except ValueError`` keeps working. Messages say
what was expected, what arrived and what to do.
"""

from __future__ import annotations

import re

__all__ = [
    "ClayError",
    "ClayConfigError",
    "ClayInputError",
    "UnknownSensorError",
    "BandMismatchError",
    "NonFiniteInputError",
    "ChipSizeError",
    "CheckpointError",
    "RasterError",
    "SampleDataError",
    "CorruptRasterError",
    "MissingCRSError",
    "BandOverlapError",
    "EmptyRasterError",
    "UnknownBandError",
    "StacError",
    "ChipDatasetError",
    "IncompatibleBuildError",
    "NoChipsError",
    "LoaderStateError",
    "HubPublishError",
    "CollectionError",
    "OutputExistsError",
    "OutputLockedError",
]


class ClayError(Exception):
    """Base class of every clay_hf error.

    Messages name what the user can change in the words of the Python interface, as ``name=``
    (``band_names=``, ``wavelengths=``); :func:`clay_hf.errors.for_cli` rewrites those into the matching command-line
    flags (``--band-names``) so a script reports the same error in its own words.
    """


class ClayConfigError(ClayError, ValueError):
    """Two architecture numbers disagree, or one is out of range."""


class ClayInputError(ClayError, ValueError):
    """An argument of the wrong shape, type or value: model and processor inputs, loader and builder options."""


class BandMismatchError(ClayInputError):
    """The number of bands does not match the number of wavelengths (or band names, means, stds).

    ``num_bands`` is how many bands the data has (the image, the file, the sensor's band names) and
    ``num_values`` how many per-band values were given for them (wavelengths, names, means, stds, or the
    chosen sensor's bands); either is None where the raising code does not know it.
    """

    def __init__(self, message: str, num_bands: int | None = None, num_values: int | None = None) -> None:
        super().__init__(message)
        self.num_bands, self.num_values = num_bands, num_values

    def __reduce__(self):  # keep the numbers through pickling (errors sent between processes)
        return type(self), (str(self.args[0]) if self.args else "", self.num_bands, self.num_values)


class ChipSizeError(ClayInputError):
    """A chip smaller than one patch, or a side that is not a multiple of the patch size."""


# `name=` in a message, not preceded by a letter, digit, dot or dash (so "x.name=" and "--name=" stay).
_PYTHON_ARGUMENT = re.compile(r"(?<![\w.\-])([a-z][a-z0-9_]*)=(?!=)")


def for_cli(error: BaseException | str, flags: dict[str, str] | None = None) -> str:
    """The error's message with every Python argument (``band_names=``) written as its flag (``--band-names``).

    ``flags`` maps argument names whose flag is not the dashed spelling of the name (e.g.
    ``{"output_dir": "--output"}``); a name mapped to ``""`` is left as written.
    """
    message = str(error)
    flags = flags or {}

    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        mapped = flags.get(name)
        if mapped == "":
            return match.group(0)
        return mapped or "--" + name.replace("_", "-")

    return _PYTHON_ARGUMENT.sub(flag, message)


class UnknownSensorError(ClayError, KeyError):
    """A sensor name that is not in the sensor table."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class NonFiniteInputError(ClayInputError):
    """NaN or infinite values where the model needs finite numbers."""


class CheckpointError(ClayError, OSError):
    """A file that is not a (readable) Clay checkpoint, or tensors of unexpected shape."""


class RasterError(ClayError, OSError):
    """A raster that cannot be read: missing, corrupt, truncated, without CRS, or of mismatched size."""


class SampleDataError(ClayError, OSError):
    """Sample imagery that could not be fetched from the package index or unpacked."""


class CorruptRasterError(RasterError):
    """A raster file that exists but cannot be decoded: truncated, damaged, or not a raster at all."""


class MissingCRSError(RasterError):
    """A raster without a coordinate reference system, so its pixels cannot be placed on the Earth."""


class BandOverlapError(RasterError):
    """Band files (or a cloud mask) whose extents do not overlap, or that are in different CRSs."""


class EmptyRasterError(RasterError):
    """A scene where every chip window is nodata, so it yields no chips at all."""


class UnknownBandError(ClayInputError):
    """A band name that the source's sensor does not have (the message suggests the closest ones)."""


class StacError(ClayError, ValueError):
    """A STAC Item or ItemCollection without assets that can be read as chips, or a malformed one."""


class ChipDatasetError(ClayError, OSError):
    """A chip dataset folder that is missing, empty or unreadable, or a row without the metadata to use it."""


class IncompatibleBuildError(ChipDatasetError):
    """An output folder holding a previous chip build made with other settings (chip size, stride, thresholds)."""


class NoChipsError(ClayError, ValueError):
    """No chips where some are needed: a build where every chip was dropped or there were no sources, or a
    dataset or split that gives a process no batch."""


class LoaderStateError(ClayError, ValueError):
    """A data loader state that does not fit the loader it is loaded into (other seed, batch size, ranks...)."""


class HubPublishError(ClayError, ValueError):
    """A folder, repo id or option that cannot be published as asked."""


class CollectionError(ClayError, OSError):
    """A Space collection folder that is missing, damaged, or was embedded by another model than the Space's."""


class OutputExistsError(ClayError, FileExistsError):
    """An output folder that holds something clay_hf would delete: another run, another model, other files."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OutputLockedError(ClayError, BlockingIOError):
    """An output folder another live process is writing to (its pid is in the message and ``.pid``)."""

    def __init__(self, message: str, path: str | None = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.path, self.pid = path, pid

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
