"""clay_hf: the Clay v1.5 Earth-observation foundation model, native to the Hugging Face ecosystem."""

from .configuration_clay import CLAY_PRESETS, ClayConfig
from .errors import (
    BandMismatchError,
    CheckpointError,
    ChipSizeError,
    ClayConfigError,
    ClayError,
    ClayInputError,
    NonFiniteInputError,
    UnknownSensorError,
)

__version__ = "0.1.0"
