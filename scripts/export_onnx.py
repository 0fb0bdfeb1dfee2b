#!/usr/bin/env python
"""Exports a LALE checkpoint (Hub id or folder) to ONNX with dynamic batch, height and width.

The label names and the checkpoint's preprocessing (mean, std, rescale factor, channel order) go into the ONNX
metadata, so that `scripts/predict.py --model model.onnx` runs it through ONNX Runtime with the same pre- and
post-processing.

Example:
  python scripts/export_onnx.py --model org/lale-tiny --output lale-tiny.onnx
"""

import argparse

import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import lale_hf  # noqa: F401  (registers LALE with the Auto classes)
from lale_hf.inference import InferenceError, compare_with_onnx, export_onnx


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hub id or local checkpoint folder.")
    parser.add_argument("--output", required=True, help="The .onnx file to write.")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--no_check", action="store_true", help="Skip the ONNX Runtime vs PyTorch comparison.")
    return parser, parser.parse_args()


def main():
    parser, args = parse_args()
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: --model {args.model}: cannot load a segmentation model ({error})\n")
    try:
        processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError):
        processor = None  # no preprocessor_config.json: LALE's defaults
    try:
        path = export_onnx(
            model, args.output, image_processor=processor, opset_version=args.opset, model_name=args.model
        )
        print(f"wrote {path}")
        if not args.no_check:
            generator = torch.Generator().manual_seed(0)
            for shape in ((1, 3, 256, 256), (2, 3, 384, 512)):
                error = compare_with_onnx(model, path, torch.randn(*shape, generator=generator))
                print(f"ONNX Runtime vs PyTorch, input {shape}: max relative logit difference {error:.2e}")
    except (InferenceError, OSError, ImportError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
