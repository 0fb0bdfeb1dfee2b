#!/usr/bin/env python
"""Saves a checkpoint with half-precision weights (fp16 or bf16): half the bytes of fp32 on disk.

The weights' dtype is recorded in config.json; `scripts/predict.py` and `lale_hf.inference.load_predictor` load
them back to fp32 on the CPU. The script prints both sizes and how far the half-precision logits are from fp32's.

Example:
  python scripts/convert_weights.py --model runs/lale-tiny --output_dir runs/lale-tiny-fp16 --dtype fp16
"""

import argparse

import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import lale_hf  # noqa: F401  (registers LALE with the Auto classes)
from lale_hf.inference import HALF_DTYPES, InferenceError, relative_error, save_half_precision


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hub id or local checkpoint folder (fp32).")
    parser.add_argument("--output_dir", required=True, help="The folder to write.")
    parser.add_argument("--dtype", default="fp16", choices=list(HALF_DTYPES))
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output_dir.")
    parser.add_argument("--trust_remote_code", action="store_true")
    return parser, parser.parse_args()


def main():
    parser, args = parse_args()
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(
            args.model, trust_remote_code=args.trust_remote_code, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: --model {args.model}: cannot load a segmentation model ({error})\n")
    try:
        processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError):
        processor = None  # no preprocessor_config.json: the loader's defaults apply to the copy too
    try:
        output = save_half_precision(model, args.output_dir, args.dtype, processor, overwrite=args.overwrite)
        reloaded = AutoModelForSemanticSegmentation.from_pretrained(
            output, trust_remote_code=args.trust_remote_code, use_safetensors=True, dtype=torch.float32
        )
    except (InferenceError, OSError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    pixel_values = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        error = relative_error(reloaded.eval()(pixel_values=pixel_values).logits, model.eval()(pixel_values).logits)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {output} ({args.dtype}: {parameters * HALF_DTYPES[args.dtype].itemsize / 1e6:.2f} MB of weights)")
    print(f"{args.dtype} weights loaded to fp32 vs fp32: max relative logit difference {error:.2e}")


if __name__ == "__main__":
    main()
