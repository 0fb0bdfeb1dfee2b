"""Augmentation of overhead imagery, deterministic for a (seed, epoch, index) triple."""

import numpy as np
from PIL import Image


class OverheadAugmentation:
    """Augmentation for nadir imagery, deterministic for a (seed, epoch, index) triple.

    The eight flips/90-degree rotations (the dihedral group: overhead scenes have no "up"), a random scale and crop
    back to `crop_size` (labels resized with nearest, padding with `ignore_index`), and brightness/contrast jitter.
    """

    def __init__(
        self,
        crop_size: int = 256,
        scale_range: tuple[float, float] = (0.75, 1.5),
        brightness: float = 0.2,
        contrast: float = 0.2,
        ignore_index: int = 255,
    ):
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"`scale_range` must be (low, high) with 0 < low <= high, got {scale_range}.")
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.brightness = brightness
        self.contrast = contrast
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = rng.uniform(*self.scale_range) * self.crop_size / max(image.shape[:2])
        height, width = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
        image, label = self._crop_or_pad(image, label, rng)

        rotations, flip = int(rng.integers(4)), bool(rng.integers(2))
        image, label = np.rot90(image, rotations), np.rot90(label, rotations)
        if flip:
            image, label = image[:, ::-1], label[:, ::-1]

        image = image.astype(np.float32)
        contrast = 1.0 + rng.uniform(-self.contrast, self.contrast)
        brightness = 1.0 + rng.uniform(-self.brightness, self.brightness)
        mean = image.mean(axis=(0, 1), keepdims=True)
        # Rounded back to 8 bits: the model's preprocessing takes images as a processor receives them.
        image = np.rint(np.clip(((image - mean) * contrast + mean) * brightness, 0, 255)).astype(np.uint8)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def _crop_or_pad(self, image, label, rng):
        size = self.crop_size
        pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        top = int(rng.integers(image.shape[0] - size + 1))
        left = int(rng.integers(image.shape[1] - size + 1))
        return image[top : top + size, left : left + size], label[top : top + size, left : left + size]
