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

With the environment variable ``CLAY_HF_LAZY_IMPORT=1`` the core loads on first use as well and nothing is
registered until :func:`register_auto_classes` runs: the scripts set it so that ``--help`` and argument errors
need neither torch nor transformers' models, and register when their work starts (:func:`clay_hf.cli.run`).
"""

import importlib
import importlib.util
import os

__version__ = "0.1.0"

# The model core: imported with the package (registering the Auto classes), or on first use when lazy.
_CORE = {
    "CLAY_PRESETS": "clay_hf.configuration_clay",
    "ClayConfig": "clay_hf.configuration_clay",
    "ClayModel": "clay_hf.modeling_clay",
    "ClayForPreTraining": "clay_hf.modeling_clay",
    "ClayForImageClassification": "clay_hf.modeling_clay",
    "ClayForSemanticSegmentation": "clay_hf.modeling_clay",
    "ClayPreTrainedModel": "clay_hf.modeling_clay",
    "ClayModelOutput": "clay_hf.modeling_clay",
    "ClayForPreTrainingOutput": "clay_hf.modeling_clay",
    "ClayImageProcessor": "clay_hf.image_processing_clay",
    "prepare_for_cpu_inference": "clay_hf.cpu_inference",
    "cpu_prepacked_bytes": "clay_hf.cpu_inference",
    "Sensor": "clay_hf.sensors",
    "get_sensor": "clay_hf.sensors",
    "list_sensors": "clay_hf.sensors",
    "register_sensor": "clay_hf.sensors",
}
# Wing entry points, always imported on first access (PEP 562): the core import needs no pyarrow or accelerate.
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
    module = _CORE.get(name) or _LAZY.get(name)
    if module is None and not name.startswith("__") and importlib.util.find_spec(f"clay_hf.{name}") is not None:
        return importlib.import_module(f"clay_hf.{name}")  # a submodule (clay_hf.cpu_inference), as when eager
    if module is None:
        errors = importlib.import_module("clay_hf.errors")  # the exceptions (they import the configuration: torch)

        if name == "__all__":
            return [*_CORE, *errors.__all__, *_LAZY, "register_auto_classes"]
        if name not in errors.__all__:
            raise AttributeError(f"module 'clay_hf' has no attribute {name!r}")
        module = "clay_hf.errors"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def register_auto_classes() -> None:
    """Register Clay with the transformers Auto classes (what ``import clay_hf`` does unless lazy); idempotent."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForPreTraining,
        AutoModelForSemanticSegmentation,
    )

    # The real class (the top-level name is a placeholder that needs Pillow even to register).
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    from . import modeling_clay as m
    from .configuration_clay import ClayConfig
    from .image_processing_clay import ClayImageProcessor

    AutoConfig.register("clay", ClayConfig, exist_ok=True)
    AutoModel.register(ClayConfig, m.ClayModel, exist_ok=True)
    AutoModelForPreTraining.register(ClayConfig, m.ClayForPreTraining, exist_ok=True)
    AutoModelForImageClassification.register(ClayConfig, m.ClayForImageClassification, exist_ok=True)
    AutoModelForSemanticSegmentation.register(ClayConfig, m.ClayForSemanticSegmentation, exist_ok=True)
    # The processor needs neither backend; registering both keeps transformers from asking for one.
    AutoImageProcessor.register(
        ClayConfig,
        image_processor_classes={"pil": ClayImageProcessor, "torchvision": ClayImageProcessor},
        exist_ok=True,
    )


if os.environ.get("CLAY_HF_LAZY_IMPORT") != "1":
    from .errors import *  # noqa: F403  (the exception family; its __all__ is the list)

    for _name in _CORE:
        __getattr__(_name)
    register_auto_classes()
    __all__ = __getattr__("__all__")
