"""The clay_hf exception family.

Every error a user can trigger is a ``ClayError`` and also inherits the builtin that fits
(``ValueError``, ``KeyError`` or ``OSError``), so ``except ValueError`` keeps working. Messages say
what was expected, what arrived and what to do.
"""

from __future__ import annotations

import re

# The base class and the errors the configuration and the model raise are defined beside the configuration, so
# the model file (and the Hub remote code) needs only the configuration module; they are part of this family.
from .configuration_clay import BandMismatchError, ChipSizeError, ClayConfigError, ClayError, ClayInputError

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
