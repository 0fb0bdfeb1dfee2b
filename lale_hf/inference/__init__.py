"""Land-cover maps from images and scenes of any size, and ONNX export.

Band selection and scaling to the 8-bit RGB the model was trained on (`sources`, `scaling`), PyTorch and ONNX
Runtime models behind one interface (`predictors`), sliding-window inference with blended overlaps (`tiling`), class
rasters (GeoTIFF with CRS, transform and colour table when the input is georeferenced, PNG otherwise) and a
colourised preview with a legend (`writers`, `visualization`), per-class area statistics (`statistics`), the
top-level `predict_file`, `predict_paths` and `predict_image` (`prediction`), and the export (`onnx_export`).

Memory is bounded by the window buffers, not the scene. rasterio (extra `geo`) and onnx/onnxruntime (extra `onnx`)
are imported only when a raster or an ONNX model is used.
"""

from .calibration import ErrorDetection, ReliabilityBins, expected_calibration_error, plot_reliability_diagram
from .errors import InferenceError
from .export_utils import LogitsOnly, relative_error
from .half_precision import HALF_DTYPES, WeightConversionError, check_half_dtype, save_half_precision, to_half_precision
from .onnx_export import compare_with_onnx, export_onnx
from .prediction import InputPlan, PredictionSettings, predict_file, predict_image, predict_paths
from .predictors import OnnxPredictor, Predictor, TorchPredictor, compile_for_inference, load_predictor
from .quantization import (
    CALIBRATION_METHODS,
    QUANTIZE_CHOICES,
    QuantizationError,
    QuantizationSettings,
    check_quantize_choice,
    is_quantized,
    load_calibration_images,
    quantization_record,
    quantize_onnx,
)
from .scaling import SCALING_METHODS, Scaling, check_scaling, resolve_scaling
from .sources import (
    IMAGE_SUFFIXES,
    INPUT_SUFFIXES,
    NODATA_CLASS,
    RASTER_SUFFIXES,
    ImageSource,
    RasterioSource,
    expand_inputs,
    open_source,
    resolve_bands,
)
from .statistics import AreaStatistics
from .tiling import OUTPUT_STRIDE, TileGrid, blend_weights, iter_label_rows, plan_tiles
from .tta import TTA_MODES, TestTimeAugmentation
from .vectorize import VectorizeError, VectorizeSettings, vectorize_class_raster
from .writers import output_paths


__all__ = [
    "IMAGE_SUFFIXES",
    "INPUT_SUFFIXES",
    "NODATA_CLASS",
    "OUTPUT_STRIDE",
    "RASTER_SUFFIXES",
    "SCALING_METHODS",
    "AreaStatistics",
    "ImageSource",
    "InferenceError",
    "InputPlan",
    "LogitsOnly",
    "OnnxPredictor",
    "PredictionSettings",
    "Predictor",
    "RasterioSource",
    "Scaling",
    "TileGrid",
    "TorchPredictor",
    "blend_weights",
    "check_scaling",
    "compare_with_onnx",
    "compile_for_inference",
    "expand_inputs",
    "export_onnx",
    "iter_label_rows",
    "load_predictor",
    "open_source",
    "output_paths",
    "plan_tiles",
    "predict_file",
    "predict_image",
    "predict_paths",
    "relative_error",
    "resolve_bands",
    "resolve_scaling",
    "TTA_MODES",
    "TestTimeAugmentation",
    "ErrorDetection",
    "ReliabilityBins",
    "expected_calibration_error",
    "plot_reliability_diagram",
    "VectorizeError",
    "VectorizeSettings",
    "vectorize_class_raster",
    # int8 ONNX and half-precision weights (docs/quantization.md)
    "CALIBRATION_METHODS",
    "HALF_DTYPES",
    "QUANTIZE_CHOICES",
    "QuantizationError",
    "QuantizationSettings",
    "WeightConversionError",
    "check_half_dtype",
    "check_quantize_choice",
    "is_quantized",
    "load_calibration_images",
    "quantization_record",
    "quantize_onnx",
    "save_half_precision",
    "to_half_precision",
]
