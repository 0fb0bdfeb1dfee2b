"""Half-precision checkpoints: weights stored in fp16 or bf16, half the bytes of fp32, loaded back to fp32.

`save_pretrained` records the weights' dtype in `config.json` (`"dtype": "float16"`), and transformers v5 loads a
checkpoint in that dtype unless told otherwise; `load_predictor` asks for float32, so prediction on the CPU computes
in fp32 from the rounded weights. Storage is what shrinks, not the arithmetic (`docs/quantization.md`).
"""

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..file_utils import make_readable, replace_folder
from .errors import InferenceError


HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class WeightConversionError(InferenceError):
    """A dtype, model or output folder that half-precision saving cannot use; the message names it."""


def check_half_dtype(dtype: str) -> torch.dtype:
    """The torch dtype for `--dtype fp16|bf16`, or a `WeightConversionError` naming the choices."""
    if dtype not in HALF_DTYPES:
        raise WeightConversionError(f"--dtype {dtype!r}: expected one of {', '.join(HALF_DTYPES)}.")
    return HALF_DTYPES[dtype]


def to_half_precision(model, dtype: str = "fp16"):
    """A copy of `model` with every floating-point weight in `dtype`; the original is left as it is.

    A weight outside fp16's range (|x| > 65504) would become infinite: that is an error naming the tensor.
    """
    torch_dtype = check_half_dtype(dtype)
    largest = torch.finfo(torch_dtype).max
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.numel() and tensor.abs().max().item() > largest:
            raise WeightConversionError(
                f"{name}: largest |value| {tensor.abs().max().item():.4g} is beyond {dtype}'s range ({largest:.4g}); "
                "keep this model in fp32 or use bf16."
            )
    half = copy.deepcopy(model).to(torch_dtype)
    return half.eval()


def save_half_precision(
    model, output_dir: str | os.PathLike, dtype: str = "fp16", image_processor=None, overwrite: bool = False
) -> Path:
    """Saves `model` with its weights in `dtype` (and `image_processor`, if given) to `output_dir`.

    The folder appears whole (written beside it, then renamed); an existing non-empty `output_dir` is refused
    unless `overwrite`, which replaces it only once the new one is complete.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise WeightConversionError(f"--output_dir {output_dir}: is a file; expected a folder to write.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise WeightConversionError(f"--output_dir {output_dir}: exists and is not empty (pass --overwrite).")
    half = to_half_precision(model, dtype)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        half.save_pretrained(staging)
        if image_processor is not None:
            image_processor.save_pretrained(staging)
        make_readable(staging)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the published folder from other users
        replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


__all__ = ["HALF_DTYPES", "WeightConversionError", "check_half_dtype", "save_half_precision", "to_half_precision"]
