"""ONNX export of a segmentation model: dynamic batch, height and width; labels and preprocessing in the metadata.

`OnnxPredictor` reads that metadata, so an exported file predicts with the same pre- and post-processing as the
PyTorch model. Needs the `onnx` extra (onnx, onnxscript; onnxruntime to check or run).
"""

import json
import os
from pathlib import Path

import torch

from ..file_utils import write_atomic
from ..image_processing_lale import LaleImageProcessor
from ..preprocessing import PreprocessingError, preprocessing_from_processor
from .errors import InferenceError
from .export_utils import LogitsOnly, relative_error
from .extras import import_onnx
from .predictors import OnnxPredictor
from .tiling import OUTPUT_STRIDE


def export_onnx(
    model,
    output_path: str | os.PathLike,
    image_processor=None,
    opset_version: int = 18,
    example_size: int | tuple[int, int] = 256,
    model_name: str | None = None,
) -> Path:
    """Writes `model` as one self-contained ONNX file with dynamic batch, height and width.

    The metadata holds `id2label` and `label_names` (JSON), the `preprocessing` of `image_processor` (LALE's
    defaults without one: `Preprocessing.to_dict()`, with mean, std, rescale factor and channel order) and the
    `output_stride` of the logits. The file appears atomically, only when complete.
    """
    onnx = import_onnx()
    from .. import __version__

    output_path = Path(output_path)
    if output_path.suffix.lower() != ".onnx":
        raise InferenceError(f"--output {output_path}: expected a file name ending in .onnx.")
    processor = image_processor if image_processor is not None else LaleImageProcessor()
    try:
        preprocessing = preprocessing_from_processor(processor)
    except PreprocessingError as error:
        raise InferenceError(f"--model {model_name or type(model).__name__}: {error}") from error
    model = model.eval()
    height, width = (example_size, example_size) if isinstance(example_size, int) else example_size
    # Tracing size only: the exported axes are dynamic.
    example = torch.zeros(2, preprocessing.num_channels, height, width)
    axes = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    program = torch.onnx.export(
        LogitsOnly(model).eval(),
        (example,),
        dynamo=True,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_shapes={"pixel_values": axes},
        opset_version=opset_version,
        verbose=False,
    )
    proto = program.model_proto
    id2label = {str(index): label for index, label in sorted(model.config.id2label.items())}
    metadata = {
        "id2label": json.dumps(id2label),
        "label_names": json.dumps(list(id2label.values())),
        "preprocessing": json.dumps(preprocessing.to_dict()),
        "output_stride": str(OUTPUT_STRIDE),
        "model_type": str(model.config.model_type),
        "source_model": model_name or getattr(model, "name_or_path", "") or type(model).__name__,
        "exporter": f"lale_hf {__version__}, torch {torch.__version__} (dynamo)",
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    # One self-contained protobuf (no external data), so its serialised bytes are the whole file.
    return write_atomic(output_path, proto.SerializeToString())


def compare_with_onnx(model, onnx_path: str | os.PathLike, pixel_values: torch.Tensor) -> float:
    """`relative_error` of ONNX Runtime's logits against PyTorch's for the same `pixel_values`."""
    with torch.inference_mode():
        reference = model.eval()(pixel_values=pixel_values).logits.float()
    onnx_logits = OnnxPredictor(onnx_path)(pixel_values.numpy())
    if onnx_logits.shape != reference.shape:
        raise InferenceError(
            f"{onnx_path}: ONNX logits have shape {tuple(onnx_logits.shape)}, PyTorch {tuple(reference.shape)}."
        )
    return relative_error(onnx_logits, reference)


__all__ = ["compare_with_onnx", "export_onnx"]
