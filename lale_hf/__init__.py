"""LALE for transformers. Importing this package registers LALE with the Auto classes.

`import lale_hf` loads only the config, the model, the image processor and the Auto registrations. Every other
public name (conversion, prediction, ONNX export, metrics) is imported on first use through module `__getattr__`,
so registering the model never pulls pyarrow, rasterio, onnx or matplotlib.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
)

from .configuration_lale import ARAS400K_LABELS, ARAS400K_PALETTE, LALE_PRESETS, LaleConfig
from .image_processing_lale import LaleImageProcessor, color_mask_to_label_map, colorize_label_map, scale_to_uint8
from .lazy_imports import lazy_attributes
from .modeling_lale import LaleBackbone, LaleForSemanticSegmentation, LaleModel, LalePreTrainedModel


__version__ = "0.1.0"

AutoConfig.register("lale", LaleConfig, exist_ok=True)
AutoModel.register(LaleConfig, LaleModel, exist_ok=True)
AutoModelForSemanticSegmentation.register(LaleConfig, LaleForSemanticSegmentation, exist_ok=True)
AutoBackbone.register(LaleConfig, LaleBackbone, exist_ok=True)
AutoImageProcessor.register(LaleConfig, image_processor_classes={"pil": LaleImageProcessor}, exist_ok=True)

# save_pretrained writes `auto_map` and copies these modules, so checkpoints load with trust_remote_code=True alone.
LaleConfig.register_for_auto_class()
LaleModel.register_for_auto_class("AutoModel")
LaleForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
LaleBackbone.register_for_auto_class("AutoBackbone")
LaleImageProcessor.register_for_auto_class("AutoImageProcessor")

# Public name -> the submodule that defines it, imported on first access.
_LAZY_NAMES = {
    "convert_aras400k": ".data.conversion",
    "generate_sample": ".data.synthetic_landcover",
    "predict_file": ".inference",
    "predict_image": ".inference",
    "predict_paths": ".inference",
    "SegmentationMetrics": ".metrics",
    "export_onnx": ".inference",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES)


__all__ = [
    "ARAS400K_LABELS",
    "ARAS400K_PALETTE",
    "LALE_PRESETS",
    "LaleBackbone",
    "LaleConfig",
    "LaleForSemanticSegmentation",
    "LaleImageProcessor",
    "LaleModel",
    "LalePreTrainedModel",
    "SegmentationMetrics",
    "color_mask_to_label_map",
    "colorize_label_map",
    "convert_aras400k",
    "export_onnx",
    "generate_sample",
    "predict_file",
    "predict_image",
    "predict_paths",
    "scale_to_uint8",
]
