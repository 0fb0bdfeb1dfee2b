"""Test-time augmentation: a model's logits averaged over flipped and rotated copies of its input.

Overhead imagery has no "up": a field seen from the other side is still a field, and training augments with the
eight flips and 90-degree rotations (`lale_hf.training`). Averaging the logits over such copies, each transformed
back onto the input's grid, gives the map the model would draw if it were exactly invariant to them.

Modes (the copies form a group, so the averaged model is exactly equivariant to that group, up to float rounding):
- `none`: the model as it is (1 model pass per tile);
- `flip`: identity, horizontal flip, vertical flip and both (= 180-degree rotation), 4 passes per tile; tiles of any
  shape;
- `d4`: the 8 symmetries of the square (4 rotations by 90 degrees, each with and without a horizontal flip), 8 passes
  per tile. Rotating a non-square tile swaps its height and width; such copies run as their own batch.

Measured on the 60 real s2glc-sample validation patches with three lale-tiny checkpoints (docs/map-products.md):
`flip` and `d4` both add +0.3 macro-F1 points (every seed), for 4.3x and 8.5x the model time of `none`.

The logits live at 1/4 of the input resolution, so a flip of the input is a flip of the logit grid only when height
and width are multiples of `OUTPUT_STRIDE`; other sizes are refused (the tiling uses multiples of 32).
"""

import numpy as np
import torch

from .errors import InferenceError
from .predictors import Predictor
from .tiling import OUTPUT_STRIDE


TTA_MODES = ("none", "flip", "d4")
# Input axes of a (B, 3, H, W) batch and of the logits (B, C, H/4, W/4).
_HEIGHT, _WIDTH = -2, -1


def transforms_for(mode: str) -> tuple[tuple[int, bool], ...]:
    """The copies of a mode as (quarter turns counter-clockwise, then horizontally flipped?) pairs, identity first.

    A copy is `rot90(flip(x) if flipped else x, turns)` over the last two axes; `flip` mode's vertical flip is
    `rot90(hflip(x), 2)` and its double flip `rot90(x, 2)`.
    """
    if mode == "none":
        return ((0, False),)
    if mode == "flip":
        return ((0, False), (0, True), (2, True), (2, False))
    if mode == "d4":
        return tuple((turns, flipped) for turns in range(4) for flipped in (False, True))
    raise InferenceError(f"--tta {mode!r}: expected one of {', '.join(TTA_MODES)}.")


def apply_transform(array, turns: int, flipped: bool):
    """The copy of an (..., H, W) numpy array or tensor: flipped horizontally if asked, then rotated `turns` times."""
    if isinstance(array, torch.Tensor):
        if flipped:
            array = torch.flip(array, dims=(_WIDTH,))
        return torch.rot90(array, turns, dims=(_HEIGHT, _WIDTH)) if turns % 4 else array
    if flipped:
        array = np.flip(array, axis=_WIDTH)
    return np.rot90(array, turns, axes=(_HEIGHT, _WIDTH)) if turns % 4 else array


def invert_transform(array, turns: int, flipped: bool):
    """Undoes `apply_transform`: rotated back, then flipped back."""
    if isinstance(array, torch.Tensor):
        array = torch.rot90(array, -turns, dims=(_HEIGHT, _WIDTH)) if turns % 4 else array
        return torch.flip(array, dims=(_WIDTH,)) if flipped else array
    array = np.rot90(array, -turns, axes=(_HEIGHT, _WIDTH)) if turns % 4 else array
    return np.flip(array, axis=_WIDTH) if flipped else array


def onnx_static_axes(predictor: Predictor) -> list[str]:
    """Names of the batch, height and width axes an ONNX Runtime model's input fixes to a number (empty if none)."""
    session = getattr(predictor, "session", None)
    if session is None:
        return []
    shape = session.get_inputs()[0].shape
    names = ("batch", "channels", "height", "width")
    return [f"{names[axis]}={dim}" for axis, dim in enumerate(shape) if axis != 1 and isinstance(dim, int)]


class TestTimeAugmentation(Predictor):
    """A `Predictor` whose logits are `predictor`'s averaged over the copies of `mode` (see the module doc).

    Each batch of B tiles becomes one model call per tile shape holding every copy (4B or 8B images), or calls of at
    most `max_batch_size` images. The average sums the copies in a fixed order, so a tile's logits do not depend on
    which process or batch predicts it beyond what the model itself does with batch size.

    An ONNX model whose input fixes the batch, height or width cannot take the batched (or, for non-square tiles,
    rotated) copies: it is refused with a message, unless `mode` is `none`.
    """

    __test__ = False  # "Test..." is not a pytest class

    def __init__(self, predictor: Predictor, mode: str = "flip", max_batch_size: int | None = None):
        self.transforms = transforms_for(mode)
        if max_batch_size is not None and max_batch_size < 1:
            raise InferenceError(f"max_batch_size must be a positive number of images, got {max_batch_size}.")
        static = onnx_static_axes(predictor) if mode != "none" else []
        if static:
            raise InferenceError(
                f"--tta {mode} with the ONNX model {predictor.name}: its input has fixed axes ({', '.join(static)}), "
                "so it cannot take the batched and rotated copies TTA feeds it. Re-export it with dynamic batch, "
                "height and width (lale_hf.inference.export_onnx or scripts/export_onnx.py do), or use --tta none."
            )
        super().__init__(predictor.name, predictor.id2label, predictor.preprocessing)
        self.predictor = predictor
        self.mode = mode
        self.max_batch_size = max_batch_size
        self.backend = predictor.backend

    def _run(self, copies: np.ndarray) -> torch.Tensor:
        if self.max_batch_size is None or len(copies) <= self.max_batch_size:
            return self.predictor(copies)
        return torch.cat(
            [
                self.predictor(copies[start : start + self.max_batch_size])
                for start in range(0, len(copies), self.max_batch_size)
            ]
        )

    def __call__(self, pixel_values: np.ndarray) -> torch.Tensor:
        if self.mode == "none":
            return self.predictor(pixel_values)
        height, width = pixel_values.shape[_HEIGHT], pixel_values.shape[_WIDTH]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise InferenceError(
                f"--tta {self.mode}: tiles of {height}x{width} pixels; flips and rotations map the logit grid onto "
                f"itself only for heights and widths that are multiples of {OUTPUT_STRIDE}."
            )
        # Copies that keep the tile's shape run together, copies that swap height and width (odd turns of a
        # non-square tile) together; a square tile makes one group.
        groups: dict[tuple[int, int], list[tuple[int, bool]]] = {}
        for turns, flipped in self.transforms:
            shape = (height, width) if turns % 2 == 0 or height == width else (width, height)
            groups.setdefault(shape, []).append((turns, flipped))
        batch = len(pixel_values)
        back: dict[tuple[int, bool], torch.Tensor] = {}
        for transforms in groups.values():
            copies = np.concatenate(
                [np.ascontiguousarray(apply_transform(pixel_values, *transform)) for transform in transforms]
            )
            logits = self._run(copies)
            for index, transform in enumerate(transforms):
                back[transform] = invert_transform(logits[index * batch : (index + 1) * batch], *transform)
        # Summed in the mode's fixed order, whatever the grouping.
        total = torch.zeros_like(back[self.transforms[0]], dtype=torch.float32)
        for transform in self.transforms:
            total += back[transform]
        return total / len(self.transforms)


__all__ = ["TTA_MODES", "TestTimeAugmentation", "apply_transform", "invert_transform", "transforms_for"]
