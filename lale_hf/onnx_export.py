"""ONNX export of a segmentation model: dynamic batch, height and width; labels and preprocessing in the metadata.

`lale_hf.inference.OnnxPredictor` reads that metadata, so an exported file predicts with the same pre- and
post-processing as the PyTorch model. Needs the `onnx` extra (onnx, onnxscript; onnxruntime to check or run).
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

from .image_processing_lale import LaleImageProcessor
from .inference.export_utils import LogitsOnly, relative_error


def export_onnx(
    model,
    output_path: str | os.PathLike,
    image_processor=None,
    opset_version: int = 18,
    example_size: int | tuple[int, int] = 256,
    model_name: str | None = None,
) -> Path:
    """Writes `model` as one self-contained ONNX file with dynamic batch, height and width.

    The metadata holds `id2label` and `label_names` (JSON), the `preprocessing` (mean, std, rescale factor) and the
    `output_stride` of the logits. The file is written under a temporary name and renamed when complete.
    """
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'lale-hf[onnx]'.") from error
    from . import __version__

    output_path = Path(output_path)
    if output_path.suffix.lower() != ".onnx":
        raise ValueError(f"--output {output_path}: expected a file name ending in .onnx.")
    processor = image_processor if image_processor is not None else LaleImageProcessor()
    model = model.eval()
    height, width = (example_size, example_size) if isinstance(example_size, int) else example_size
    # Tracing size only: the exported axes are dynamic.
    example = torch.zeros(2, 3, height, width)
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
        "preprocessing": json.dumps(
            {
                "image_mean": [float(v) for v in np.broadcast_to(processor.image_mean, (3,))],
                "image_std": [float(v) for v in np.broadcast_to(processor.image_std, (3,))],
                "rescale_factor": float(processor.rescale_factor),
                "do_rescale": bool(processor.do_rescale),
                "do_normalize": bool(processor.do_normalize),
            }
        ),
        "output_stride": "4",
        "model_type": str(model.config.model_type),
        "source_model": model_name or getattr(model, "name_or_path", "") or type(model).__name__,
        "exporter": f"lale_hf {__version__}, torch {torch.__version__} (dynamo)",
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_path.with_name(f".{output_path.name}.partial")
    try:
        onnx.save_model(proto, temporary)
        os.replace(temporary, output_path)
    finally:
        temporary.unlink(missing_ok=True)
    return output_path


def compare_with_onnx(model, onnx_path: str | os.PathLike, pixel_values: torch.Tensor) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch logits, relative to the largest |logit|."""
    from .inference import OnnxPredictor

    with torch.inference_mode():
        reference = model.eval()(pixel_values=pixel_values).logits.float()
    return relative_error(OnnxPredictor(onnx_path)(pixel_values.numpy()), reference)


__all__ = ["compare_with_onnx", "export_onnx"]
