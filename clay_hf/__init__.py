"""clay_hf: the Clay v1.5 Earth-observation foundation model, native to the Hugging Face ecosystem.

Importing the package registers Clay with the transformers Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForPreTraining``, ``AutoModelForImageClassification``, ``AutoModelForSemanticSegmentation``,
``AutoImageProcessor``), so ``AutoModel.from_pretrained(folder_or_hub_id)`` works without ``trust_remote_code``.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSemanticSegmentation,
)

# The real class (the top-level name is a placeholder that needs Pillow even to register).
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .configuration_clay import CLAY_PRESETS, ClayConfig
from .cpu_inference import cpu_prepacked_bytes, prepare_for_cpu_inference
from .errors import (
    BandMismatchError,
    BandOverlapError,
    CheckpointError,
    ChipDatasetError,
    ChipSizeError,
    ClayConfigError,
    ClayError,
    ClayInputError,
    CollectionError,
    CorruptRasterError,
    EmptyRasterError,
    HubPublishError,
    IncompatibleBuildError,
    LoaderStateError,
    MissingCRSError,
    NoChipsError,
    NonFiniteInputError,
    OutputExistsError,
    OutputLockedError,
    RasterError,
    SampleDataError,
    StacError,
    UnknownBandError,
    UnknownSensorError,
)
from .image_processing_clay import ClayImageProcessor
from .modeling_clay import (
    ClayForImageClassification,
    ClayForPreTraining,
    ClayForPreTrainingOutput,
    ClayForSemanticSegmentation,
    ClayModel,
    ClayModelOutput,
    ClayPreTrainedModel,
)
from .sensors import Sensor, get_sensor, list_sensors, register_sensor

__version__ = "0.1.0"

AutoConfig.register("clay", ClayConfig, exist_ok=True)
AutoModel.register(ClayConfig, ClayModel, exist_ok=True)
AutoModelForPreTraining.register(ClayConfig, ClayForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(ClayConfig, ClayForImageClassification, exist_ok=True)
AutoModelForSemanticSegmentation.register(ClayConfig, ClayForSemanticSegmentation, exist_ok=True)
# The processor needs neither backend; registering both keeps transformers from asking for one.
AutoImageProcessor.register(
    ClayConfig, image_processor_classes={"pil": ClayImageProcessor, "torchvision": ClayImageProcessor}, exist_ok=True
)

__all__ = [
    "CLAY_PRESETS",
    "ClayConfig",
    "ClayModel",
    "ClayForPreTraining",
    "ClayForImageClassification",
    "ClayForSemanticSegmentation",
    "ClayPreTrainedModel",
    "ClayModelOutput",
    "ClayForPreTrainingOutput",
    "ClayImageProcessor",
    "prepare_for_cpu_inference",
    "cpu_prepacked_bytes",
    "Sensor",
    "get_sensor",
    "list_sensors",
    "register_sensor",
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
