"""The pixel preprocessing of any segmentation checkpoint, read from its own image processor and written once.

`preprocessing_from_processor(processor)` reads what a transformers image processor does to an 8-bit image (LALE,
SegFormer, MobileViT, UPerNet...): the size it produces, the rescale factor, the mean and std, and the channel order
(MobileViT's processor flips RGB to BGR and does not normalise). `Preprocessing.to_tensor` applies exactly that to
uint8 arrays, without resizing, so prediction tiles, training crops and the ONNX metadata share one normalisation.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


class PreprocessingError(ValueError):
    """A processor or an image that this preprocessing cannot handle."""


def _size_of(size, name: str) -> tuple[int, int] | None:
    if size is None:
        return None

    def get(key):
        return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)

    if isinstance(size, int):
        return (size, size)
    if get("height") and get("width"):
        return (int(get("height")), int(get("width")))
    if get("shortest_edge"):
        return (int(get("shortest_edge")), int(get("shortest_edge")))
    if get("longest_edge"):
        return (int(get("longest_edge")), int(get("longest_edge")))
    raise PreprocessingError(f"{name} {size!r}: expected a height and width, or a shortest or longest edge.")


def _per_channel(values, name: str) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    values = tuple(float(value) for value in values)
    if not values:
        raise PreprocessingError(f"{name}: expected one value per channel, got none.")
    return values * 3 if len(values) == 1 else values


@dataclass(frozen=True)
class Preprocessing:
    """What an image processor does to an 8-bit image, minus resizing: rescale, normalise, reorder channels.

    `size` (height, width) is the input size the processor produces: its crop size when it centre-crops, otherwise
    its resize target (a shortest or longest edge as a square); None when it does not resize. `mean` and `std` are
    per input channel (RGB order) and applied before the channel flip, as MobileViT's processor orders its steps.
    """

    size: tuple[int, int] | None = (256, 256)
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    flip_channel_order: bool = False

    def __post_init__(self):
        if len(self.mean) != len(self.std):
            raise PreprocessingError(f"image_mean has {len(self.mean)} values but image_std {len(self.std)}.")
        if self.do_normalize and not all(value > 0 for value in self.std):
            raise PreprocessingError(f"image_std {list(self.std)}: every value must be positive.")

    @property
    def num_channels(self) -> int:
        return len(self.mean)

    @functools.cached_property
    def lookup_table(self) -> np.ndarray:
        """(channels, 256) float32: the processed value of every 8-bit level per input channel.

        Computed with transformers' own NumPy arithmetic (float64 rescale cast to float32, float32 normalisation),
        so a lookup gives bit-identical `pixel_values`.
        """
        levels = np.arange(256, dtype=np.uint8)
        if self.do_rescale:
            values = (levels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            values = levels.astype(np.float32)
        values = np.tile(values, (self.num_channels, 1))
        if self.do_normalize:
            mean = np.asarray(self.mean, dtype=np.float32)
            std = np.asarray(self.std, dtype=np.float32)
            values = (values - mean[:, None]) / std[:, None]
        return np.ascontiguousarray(values, dtype=np.float32)

    def to_array(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, C) or (N, H, W, C) to float32 (C, H, W) or (N, C, H, W) `pixel_values`, not resized."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (3, 4):
            raise PreprocessingError(
                f"expected a uint8 image of shape (H, W, C) or (N, H, W, C), got {image.dtype} of shape {image.shape}."
            )
        if image.shape[-1] != self.num_channels:
            raise PreprocessingError(
                f"got an image with {image.shape[-1]} channels; this preprocessing has {self.num_channels}."
            )
        table = self.lookup_table
        values = np.stack([table[channel][image[..., channel]] for channel in range(self.num_channels)], axis=-3)
        if self.flip_channel_order:
            values = np.ascontiguousarray(values[..., ::-1, :, :])
        return values

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """`to_array` as a torch tensor."""
        return torch.from_numpy(self.to_array(image))

    def to_dict(self) -> dict:
        """JSON-ready, with transformers' image processor key names (as recorded in outputs and ONNX metadata)."""
        return {
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "rescale_factor": float(self.rescale_factor),
            "do_rescale": bool(self.do_rescale),
            "do_normalize": bool(self.do_normalize),
            "do_flip_channel_order": bool(self.flip_channel_order),
            "size": None if self.size is None else {"height": self.size[0], "width": self.size[1]},
        }

    @classmethod
    def from_dict(cls, values: Mapping) -> "Preprocessing":
        """The inverse of `to_dict`; files written before `do_flip_channel_order` and `size` were recorded read as
        RGB and size unknown."""
        try:
            return cls(
                size=_size_of(values.get("size"), "size"),
                rescale_factor=float(values["rescale_factor"]),
                do_rescale=bool(values["do_rescale"]),
                do_normalize=bool(values["do_normalize"]),
                mean=_per_channel(values["image_mean"], "image_mean"),
                std=_per_channel(values["image_std"], "image_std"),
                flip_channel_order=bool(values.get("do_flip_channel_order", False)),
            )
        except (KeyError, TypeError) as error:
            raise PreprocessingError(f"incomplete preprocessing record {dict(values)!r} ({error!r}).") from error


def preprocessing_from_processor(processor) -> Preprocessing:
    """The `Preprocessing` of a transformers image processor (any model's), read from its attributes.

    A processor that does not normalise (MobileViT: `do_normalize` None) keeps its mean and std on record but
    `do_normalize` False, so they are not applied.
    """
    name = type(processor).__name__
    crop_size = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop_size is not None:
        size = _size_of(crop_size, f"{name}.crop_size")
    elif getattr(processor, "do_resize", False):
        size = _size_of(getattr(processor, "size", None), f"{name}.size")
    else:
        size = None
    mean = getattr(processor, "image_mean", None)
    std = getattr(processor, "image_std", None)
    return Preprocessing(
        size=size,
        rescale_factor=float(getattr(processor, "rescale_factor", None) or 1 / 255),
        do_rescale=bool(getattr(processor, "do_rescale", False)),
        do_normalize=bool(getattr(processor, "do_normalize", False)),
        mean=_per_channel(0.0 if mean is None else mean, f"{name}.image_mean"),
        std=_per_channel(1.0 if std is None else std, f"{name}.image_std"),
        flip_channel_order=bool(getattr(processor, "do_flip_channel_order", False)),
    )


__all__ = ["Preprocessing", "PreprocessingError", "preprocessing_from_processor"]
