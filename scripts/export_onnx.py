#!/usr/bin/env python
"""Exports a LALE checkpoint (Hub id or folder) to ONNX with dynamic batch, height and width, in fp32 or int8.

The label names and the checkpoint's preprocessing (mean, std, rescale factor, channel order) go into the ONNX
metadata, so that `scripts/predict.py --model model.onnx` runs it through ONNX Runtime with the same pre- and
post-processing. `--quantize int8` writes a static int8 model (QDQ, per-channel weights) whose activation ranges are
calibrated on real images: a dataset folder (its train split) or a folder of 8-bit RGB images. `--model` may also be
an fp32 .onnx file written by this script, to quantise it without the checkpoint.

Examples:
  python scripts/export_onnx.py --model org/lale-tiny --output lale-tiny.onnx
  python scripts/export_onnx.py --model org/lale-tiny --output lale-tiny-int8.onnx --quantize int8 \\
      --calibration_dataset data/aras400k --calibration_samples 64
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lale_hf.argument_types import non_negative_int, positive_int
from lale_hf.inference import (
    CALIBRATION_METHODS,
    QUANTIZE_CHOICES,
    InferenceError,
    OnnxPredictor,
    QuantizationSettings,
    compare_with_onnx,
    export_onnx,
    load_calibration_images,
    quantize_onnx,
)
from lale_hf.inference.quantization import DEFAULT_CALIBRATION_SAMPLES


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hub id, local checkpoint folder, or (int8) an fp32 .onnx.")
    parser.add_argument("--output", required=True, help="The .onnx file to write.")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--no_check", action="store_true", help="Skip the comparison with the unquantised model.")
    quantization = parser.add_argument_group("int8 quantisation")
    quantization.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES)
    quantization.add_argument(
        "--calibration_dataset", help="Dataset folder (data/<split>-*.parquet) or folder of 8-bit RGB images."
    )
    quantization.add_argument("--calibration_split", default="train", help="The dataset split to calibrate on.")
    quantization.add_argument("--calibration_samples", type=positive_int, default=DEFAULT_CALIBRATION_SAMPLES)
    quantization.add_argument("--calibration_method", default="minmax", choices=CALIBRATION_METHODS)
    quantization.add_argument(
        "--keep_float",
        nargs="*",
        default=list(QuantizationSettings().keep_float),
        help="Nodes left in float: 'classifier', 'attention' or ONNX node names (none: quantise every Conv/MatMul).",
    )
    quantization.add_argument("--seed", type=non_negative_int, default=0, help="Which calibration images are drawn.")
    args = parser.parse_args()
    if args.quantize == "int8" and not args.calibration_dataset:
        parser.error("--quantize int8 needs --calibration_dataset (a dataset folder or a folder of RGB images).")
    if args.quantize == "none" and Path(args.model).suffix.lower() == ".onnx":
        parser.error(f"--model {args.model} is already an ONNX file; pass --quantize int8 to quantise it.")
    return parser, args


def load_checkpoint(parser, args):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import lale_hf  # noqa: F401  (registers LALE with the Auto classes)

    try:
        # fp32 whatever dtype the weights are stored in: the export computes in fp32.
        model = AutoModelForSemanticSegmentation.from_pretrained(
            args.model, trust_remote_code=args.trust_remote_code, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: --model {args.model}: cannot load a segmentation model ({error})\n")
    try:
        processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError):
        processor = None  # no preprocessor_config.json: LALE's defaults
    return model, processor


def check_fp32(model, path: Path):
    generator = torch.Generator().manual_seed(0)
    for shape in ((1, 3, 256, 256), (2, 3, 384, 512)):
        error = compare_with_onnx(model, path, torch.randn(*shape, generator=generator))
        print(f"ONNX Runtime vs PyTorch, input {shape}: max relative logit difference {error:.2e}")


def check_int8(fp32_path: Path, int8_path: Path, images: list[tuple[str, np.ndarray]]):
    """Class-map agreement of int8 with fp32 on the calibration images: int8 rounding shifts logits, so the check is
    which class wins, not a logit tolerance."""
    fp32, int8 = OnnxPredictor(fp32_path), OnnxPredictor(int8_path)
    agree = total = 0
    for _, image in images:
        pixel_values = fp32.normalize(image)[None]
        agree += int((fp32(pixel_values).argmax(1) == int8(pixel_values).argmax(1)).sum())
        total += image.shape[0] * image.shape[1] // 16
    print(
        f"int8 vs fp32 ONNX Runtime on the {len(images)} calibration images: {100 * agree / total:.2f}% of "
        "(1/4-resolution) class-map pixels agree"
    )


def main():
    parser, args = parse_args()
    output = Path(args.output)
    try:
        if args.quantize == "none":
            model, processor = load_checkpoint(parser, args)
            path = export_onnx(
                model, output, image_processor=processor, opset_version=args.opset, model_name=args.model
            )
            print(f"wrote {path}")
            if not args.no_check:
                check_fp32(model, path)
            return
        settings = QuantizationSettings(
            calibration_method=args.calibration_method,
            calibration_samples=args.calibration_samples,
            seed=args.seed,
            keep_float=tuple(args.keep_float),
            calibration_split=args.calibration_split,
        )
        # Bad calibration input fails here, before a minute of export.
        images = load_calibration_images(
            args.calibration_dataset, args.calibration_samples, args.seed, args.calibration_split
        )
        if output.suffix.lower() != ".onnx":
            raise InferenceError(f"--output {output}: expected a file name ending in .onnx.")
        with tempfile.TemporaryDirectory(prefix="lale-export-") as scratch:
            if Path(args.model).suffix.lower() == ".onnx":
                fp32_path = Path(args.model)
            else:
                model, processor = load_checkpoint(parser, args)
                fp32_path = export_onnx(
                    model,
                    Path(scratch) / "model.fp32.onnx",
                    image_processor=processor,
                    opset_version=args.opset,
                    model_name=args.model,
                )
                if not args.no_check:
                    check_fp32(model, fp32_path)
            path = quantize_onnx(fp32_path, output, args.calibration_dataset, settings)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; fp32 {fp32_path.stat().st_size / 1e6:.2f} MB)")
            if not args.no_check:
                check_int8(fp32_path, path, images)
    except (InferenceError, OSError, ImportError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
