"""The image processor a training run uses and saves: the model's own, so training, prediction and the saved folder
preprocess alike (a MobileViT checkpoint expects BGR without normalisation, SegFormer ImageNet statistics)."""

import logging

from transformers import AutoImageProcessor
from transformers.models.auto.image_processing_auto import (
    IMAGE_PROCESSOR_MAPPING_NAMES,
    get_image_processor_class_from_name,
)
from transformers.utils import is_torchvision_available

from ..image_processing_lale import LaleImageProcessor
from .errors import TrainingError


logger = logging.getLogger(__name__)


def default_image_processor(model_type: str):
    """The default image processor of a transformers model type (LALE's own for "lale")."""
    if model_type == "lale":
        return LaleImageProcessor()
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if not names:
        raise TrainingError(
            f"no image processor is known for model type {model_type!r}; save one (preprocessor_config.json) beside "
            "the config or checkpoint"
        )
    backend = "torchvision" if is_torchvision_available() and names.get("torchvision") else "pil"
    return get_image_processor_class_from_name(names[backend])()


def set_processor_size(processor, image_size: int):
    """Makes `processor` produce `image_size` squares, the size the model is trained at."""
    square = {"height": image_size, "width": image_size}
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) is not None:
        processor.crop_size = square
        size = getattr(processor, "size", None) or {}
        processor.size = {"shortest_edge": image_size} if "shortest_edge" in size else square
    else:
        processor.size = square
    return processor


def training_image_processor(source: str | None, model_type: str, image_size: int, trust_remote_code: bool = False):
    """The processor saved beside `source` (a checkpoint or config folder or Hub id) if it has one, otherwise the
    model type's default; resized to `image_size`."""
    processor = None
    if source is not None:
        try:
            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        except OSError:
            logger.info(f"{source} holds no image processor: using the defaults of model type {model_type!r}")
    if processor is None:
        processor = default_image_processor(model_type)
    return set_processor_size(processor, image_size)
