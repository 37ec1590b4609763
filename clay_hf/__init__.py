"""clay_hf: the Clay v1.5 Earth-observation foundation model, native to the Hugging Face ecosystem.

Importing the package registers Clay with the transformers Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForPreTraining``, ``AutoModelForImageClassification``, ``AutoModelForSemanticSegmentation``,
``AutoImageProcessor``), so ``AutoModel.from_pretrained(folder_or_hub_id)`` works without ``trust_remote_code``.

Layout: the model core sits flat at the top (as in transformers); the wings are sub-packages:
:mod:`clay_hf.geodata` (rasters, sources, the chip format, the chip builder, the loader, sample data),
:mod:`clay_hf.training` (pre-training, fine-tuning) and :mod:`clay_hf.apps` (embeddings, search, evaluation,
Hub, Space). The README's entry points from the wings (``get_dataloader``, ``load_embedding_model``,
``embed_array``, ``embed_geotiff``, ``EmbeddingIndex``, ``TrainingConfig``, ``train``) are importable from
``clay_hf`` too; they load on first use, so ``import clay_hf`` stays light.
"""

import importlib

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSemanticSegmentation,
)

# The real class (the top-level name is a placeholder that needs Pillow even to register).
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from . import errors as _errors
from .configuration_clay import CLAY_PRESETS, ClayConfig
from .cpu_inference import cpu_prepacked_bytes, prepare_for_cpu_inference
from .errors import *  # noqa: F403  (the exception family; its __all__ is the list)
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

# Wing entry points, imported on first access (PEP 562) so the core import needs no pyarrow or accelerate.
_LAZY = {
    "get_dataloader": "clay_hf.geodata.loader",
    "load_chip_dataset": "clay_hf.geodata.loader",
    "build_chip_dataset": "clay_hf.geodata.builder",
    "load_embedding_model": "clay_hf.apps.embeddings",
    "embed_array": "clay_hf.apps.embeddings",
    "embed_geotiff": "clay_hf.apps.embeddings",
    "EmbeddingIndex": "clay_hf.apps.search",
    "TrainingConfig": "clay_hf.training.pretraining",
    "train": "clay_hf.training.pretraining",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clay_hf' has no attribute {name!r}")


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
    *_errors.__all__,
    *_LAZY,
]
