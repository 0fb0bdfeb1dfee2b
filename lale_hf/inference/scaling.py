"""Raw band values to the 8-bit RGB the model saw in training: the scaling methods and their scene statistics."""

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..image_processing_lale import scale_to_uint8
from .errors import InferenceError
from .sources import nodata_values, valid_mask


SCALING_METHODS = ("auto", "none", "per_patch_max", "scene_max", "patch_max_median")
# Accepted for older commands and code; "per_patch_max" is the one name, as in `lale_hf.scale_to_uint8`.
DEPRECATED_SCALING_NAMES = {"tile_max": "per_patch_max"}
ARAS_PATCH_SIZE = 256
SCALING_DESCRIPTIONS = {
    "none": "8-bit input used as is",
    "per_patch_max": "each model tile divided by its own maximum (x / max * 255), as ARAS400k scaled each patch",
    "scene_max": "x / peak * 255 with peak the scene maximum (first pass)",
    "patch_max_median": "x / peak * 255 with peak the median over the scene's 256x256 blocks of each block's maximum "
    "(first pass); equals ARAS400k per-patch scaling on a single patch",
    "gain": "x * gain, clipped to 0..255",
}


@dataclass(frozen=True)
class Scaling:
    """How raw band values become the 8-bit RGB the model saw in training.

    `none`: 8-bit input used as is. `per_patch_max`: every model tile divided by its own maximum, the ARAS400k rule
    applied per tile (brightness can then change from tile to tile). `scene_max` and `patch_max_median`: one divisor
    for the whole scene from a first streaming pass: its maximum, or the median over its 256x256 blocks (the
    ARAS400k patch size) of each block's maximum, i.e. what a typical ARAS400k patch cut from this scene was divided
    by, robust to a few bright clouds. `gain`: `x * gain`, the fixed alternative. Divisors apply as
    `x / peak * 255`, clipped and truncated to uint8 exactly as ARAS400k was built, so a single patch scaled with
    `patch_max_median` reproduces it. Pixels without data (the declared nodata value, NaN, ±inf) are left out of
    every maximum and become 0.
    """

    method: str
    peak: float | None = None
    gain: float | None = None
    offset: float = 0.0

    def apply(self, bands: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """uint8 (H, W, C) from raw (H, W, C) values; pixels outside `valid` (default: the finite ones) become 0 and
        are left out of the per-patch maximum."""
        bands = np.asarray(bands)
        if valid is None:
            valid = valid_mask(bands, None)
        if valid is not None:
            bands = np.where(valid[..., None], bands, np.zeros((), dtype=bands.dtype))
        if self.offset:
            bands = apply_offset(bands, self.offset)
        if self.method == "none":
            return np.asarray(bands, dtype=np.uint8)
        if self.method == "gain":
            return scale_to_uint8(bands, self.gain)
        peak = float(bands.max()) if self.method == "per_patch_max" and bands.size else self.peak
        if not peak or peak <= 0:
            return np.zeros(bands.shape, dtype=np.uint8)
        return np.clip(np.asarray(bands, dtype=np.float32) / peak * 255.0, 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        out = {"method": self.method, "description": SCALING_DESCRIPTIONS[self.method]}
        if self.peak is not None:
            out["peak"] = self.peak
        if self.gain is not None:
            out["gain"] = self.gain
        if self.offset:
            out["offset"] = self.offset
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "Scaling":
        return cls(values["method"], values.get("peak"), values.get("gain"), values.get("offset", 0.0))


def apply_offset(bands: np.ndarray, offset: float) -> np.ndarray:
    """`bands + offset` as float32, clipped at 0: Sentinel-2 L2A from processing baseline 04.00 on stores
    reflectance x 10000 + 1000 (`BOA_ADD_OFFSET = -1000`), so `--offset -1000` gives back reflectance x 10000."""
    return np.maximum(np.asarray(bands, dtype=np.float32) + np.float32(offset), np.float32(0))


def parse_scaling(scaling: str | float) -> tuple[str, float | None]:
    """(method, gain): a method name from `SCALING_METHODS`, or "gain" and a positive number."""
    if isinstance(scaling, str) and scaling in DEPRECATED_SCALING_NAMES:
        warnings.warn(
            f"--scaling {scaling} is deprecated; use {DEPRECATED_SCALING_NAMES[scaling]}.", FutureWarning, stacklevel=3
        )
        return DEPRECATED_SCALING_NAMES[scaling], None
    if isinstance(scaling, str) and scaling in SCALING_METHODS:
        return scaling, None
    if isinstance(scaling, bool):
        gain = math.nan
    else:
        try:
            gain = float(scaling)
        except (TypeError, ValueError):
            raise InferenceError(
                f"--scaling {scaling!r}: expected one of {', '.join(SCALING_METHODS)} or a positive gain such as "
                "0.085 (255 / 3000 for Sentinel-2 reflectance x 10000)."
            ) from None
    if not math.isfinite(gain) or gain <= 0:
        raise InferenceError(f"--scaling {scaling!r}: a gain must be a positive number.")
    return "gain", gain


def check_offset(offset: float) -> float:
    """A finite number (0: no offset); raises `InferenceError` otherwise."""
    if isinstance(offset, bool) or not isinstance(offset, (int, float, np.number)) or not math.isfinite(offset):
        raise InferenceError(f"--offset {offset!r}: expected a finite number added to raw values (e.g. -1000).")
    return float(offset)


def check_scaling(source, scaling: str | float = "auto", offset: float = 0.0) -> str:
    """Validates `scaling` for this source without reading pixels; returns the method that will be used."""
    method, _ = parse_scaling(scaling)
    if check_offset(offset) and method in ("none", "auto") and source.dtype == np.uint8:
        raise InferenceError(
            f"{source.name}: --offset {offset:g} applies to raw reflectance, not to 8-bit input used as is; choose a "
            "scaling (patch_max_median, per_patch_max, scene_max or a gain) or leave --offset at 0."
        )
    if method == "auto":
        method = "none" if source.dtype == np.uint8 else "patch_max_median"
    if method == "none" and source.dtype != np.uint8:
        raise InferenceError(
            f"{source.name}: --scaling none needs 8-bit input, got {source.dtype}; use patch_max_median, "
            "per_patch_max, scene_max or a gain."
        )
    return method


def resolve_scaling(
    source,
    bands,
    scaling: str | float = "auto",
    block_size: int = ARAS_PATCH_SIZE,
    progress: bool = False,
    offset: float = 0.0,
) -> Scaling:
    """Turns a scaling choice into a `Scaling`, reading the scene once (block by block) when it needs statistics.

    Blocks default to the ARAS400k patch size whatever the tile size: the statistic imitates the dataset's patches.
    `offset` is added to raw values before anything else (`apply_offset`).
    """
    method = check_scaling(source, scaling, offset)
    offset = float(offset)
    if method == "gain":
        return Scaling("gain", gain=parse_scaling(scaling)[1], offset=offset)
    if method in ("none", "per_patch_max"):
        return Scaling(method, offset=offset)
    nodata = nodata_values(source, bands)
    maxima = []
    starts = [(row, col) for row in range(0, source.height, block_size) for col in range(0, source.width, block_size)]
    for row, col in tqdm(starts, desc=f"scaling pass {Path(source.name).name}", unit="block", disable=not progress):
        window = source.read(bands, row, col, min(block_size, source.height - row), min(block_size, source.width - col))
        valid = valid_mask(window, nodata)
        values = window[valid] if valid is not None else window
        if offset:
            values = apply_offset(values, offset)
        if values.size:
            maxima.append(float(values.max()))
    if not maxima:
        raise no_valid_pixel_error(source, bands, nodata)
    maxima = [value for value in maxima if value > 0]
    if not maxima:
        return Scaling(method, peak=0.0, offset=offset)
    peak = max(maxima) if method == "scene_max" else float(np.median(maxima))
    return Scaling(method, peak=peak, offset=offset)


def no_valid_pixel_error(source, bands, nodata) -> InferenceError:
    declared = f"the nodata value {nodata.tolist()}, NaN or ±inf" if nodata is not None else "NaN or ±inf"
    return InferenceError(
        f"{source.name}: no valid pixel in bands {list(bands)}: every pixel is {declared}; nothing to predict."
    )


__all__ = [
    "SCALING_METHODS",
    "Scaling",
    "apply_offset",
    "check_offset",
    "check_scaling",
    "parse_scaling",
    "resolve_scaling",
]
