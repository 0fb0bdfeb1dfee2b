"""Land-cover maps from images and scenes of any size, and ONNX export.

Band selection and scaling to the 8-bit RGB the model was trained on (`sources`, `scaling`), PyTorch and ONNX
Runtime models behind one interface (`predictors`), sliding-window inference with blended overlaps (`tiling`), class
rasters (GeoTIFF with CRS, transform and colour table when the input is georeferenced, PNG otherwise) and a
colourised preview with a legend (`writers`, `visualization`), per-class area statistics (`statistics`), the
top-level `predict_file`, `predict_paths` and `predict_image` (`prediction`), and the export (`onnx_export`).

At scale: inputs are cut into blocks of whole tile rows (`tiling.split_rows`, bit-exact with their halo) and split
between the processes of `accelerate launch` (`distributed`); each process writes its blocks into the run folder
(`run_state`, `block_prediction`) and the main process assembles Cloud-Optimized GeoTIFFs or VRTs over them
(`assembly`). Mosaics of many rasters are in-memory VRTs (`mosaic`). Map products: confidence and probability
rasters, test-time augmentation (`tta`), GeoPackage polygons (`vectorize`) and calibration measures (`calibration`).

Memory is bounded by the window buffers, not the scene. rasterio (extra `geo`) and onnx/onnxruntime (extra `onnx`)
are imported only when a raster or an ONNX model is used.
"""

from .assembly import COG_OPTIONS, copy_to_cog, write_vrt
from .calibration import ErrorDetection, ReliabilityBins, expected_calibration_error, plot_reliability_diagram
from .distributed import ProcessFailure, ProcessGroup, WorkItem, assign_work, end_processes
from .errors import InferenceError
from .export_utils import LogitsOnly, relative_error
from .half_precision import HALF_DTYPES, WeightConversionError, check_half_dtype, save_half_precision, to_half_precision
from .mosaic import MosaicInput, build_mosaic
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
from .run_state import WORK_FOLDER, RunFolder
from .scaling import SCALING_METHODS, Scaling, apply_offset, check_scaling, resolve_scaling
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
from .tiling import OUTPUT_STRIDE, TileGrid, blend_weights, block_tile_rows, iter_label_rows, plan_tiles, split_rows
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
    # prediction at scale: blocks, processes, COG assembly, mosaics (README "Prediction at scale")
    "COG_OPTIONS",
    "WORK_FOLDER",
    "MosaicInput",
    "ProcessFailure",
    "ProcessGroup",
    "RunFolder",
    "WorkItem",
    "apply_offset",
    "assign_work",
    "block_tile_rows",
    "build_mosaic",
    "copy_to_cog",
    "end_processes",
    "split_rows",
    "write_vrt",
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
