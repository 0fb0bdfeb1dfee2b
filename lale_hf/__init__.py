"""LALE for transformers. Importing this package registers LALE with the Auto classes."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
)

from .configuration_lale import ARAS400K_LABELS, ARAS400K_PALETTE, LALE_PRESETS, LaleConfig
from .image_processing_lale import LaleImageProcessor, color_mask_to_label_map, colorize_label_map, scale_to_uint8
from .modeling_lale import LaleBackbone, LaleForSemanticSegmentation, LaleModel, LalePreTrainedModel
from .aras400k import convert_aras400k
from .inference import predict_file, predict_image, predict_paths
from .metrics import SegmentationMetrics
from .onnx_export import export_onnx
from .synthetic_landcover import generate_sample


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
