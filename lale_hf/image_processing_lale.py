"""Image processor for LALE, and ARAS400k palette helpers."""

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, is_torch_available

from .configuration_lale import ARAS400K_PALETTE


if is_torch_available():
    import torch


def colorize_label_map(label_map, palette=ARAS400K_PALETTE, ignore_color=(0, 0, 0)) -> Image.Image:
    """Class-index map (H, W) to an RGB image; indices outside the palette (e.g. 255) get `ignore_color`."""
    label_map = np.asarray(label_map.cpu() if hasattr(label_map, "cpu") else label_map)
    if label_map.ndim != 2:
        raise ValueError(f"Expected a 2-D class-index map, got an array of shape {label_map.shape}.")
    lut = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return Image.fromarray(lut[np.clip(label_map, 0, 255).astype(np.uint8)], mode="RGB")


def color_mask_to_label_map(
    mask, palette=ARAS400K_PALETTE, unknown_to_ignore: bool = False, ignore_index: int = 255, source: str = "mask"
) -> np.ndarray:
    """ARAS colour mask (H, W, 3) to a uint8 class-index map by exact colour match.

    A colour outside `palette` is an error naming it, its pixel count and `source`, unless `unknown_to_ignore`
    maps it to `ignore_index`.
    """
    mask = np.asarray(mask.convert("RGB") if isinstance(mask, Image.Image) else mask)
    if mask.ndim != 3 or mask.shape[-1] != 3 or mask.dtype != np.uint8:
        raise ValueError(f"{source}: expected an 8-bit RGB colour mask, got shape {mask.shape} and dtype {mask.dtype}.")
    codes = (mask[..., 0].astype(np.int32) << 16) | (mask[..., 1].astype(np.int32) << 8) | mask[..., 2]
    palette_codes = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int32)
    order = np.argsort(palette_codes)
    sorted_codes = palette_codes[order]
    position = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
    known = sorted_codes[position] == codes
    label_map = np.where(known, order[position], ignore_index).astype(np.uint8)
    if not known.all() and not unknown_to_ignore:
        unknown_codes, counts = np.unique(codes[~known], return_counts=True)
        found = ", ".join(
            f"({c >> 16}, {(c >> 8) & 255}, {c & 255}): {n} px" for c, n in zip(unknown_codes[:10], counts[:10])
        )
        raise ValueError(
            f"{source}: {int((~known).sum())} pixels have colours outside the palette [{found}]. "
            f"Pass unknown_to_ignore=True to map them to the ignore index {ignore_index}."
        )
    return label_map


def scale_to_uint8(bands, scaling: str | float = "per_patch_max") -> np.ndarray:
    """Scales a (H, W, C) raster of any numeric dtype to uint8.

    `"per_patch_max"` divides by the patch's own maximum, as ARAS400k was built (`x / x.max() * 255`); a number is
    a fixed gain, `clip(x * gain, 0, 255)` (e.g. 255 / 3000 for Sentinel-2 reflectance x 10000).
    """
    bands = np.asarray(bands, dtype=np.float32)
    if scaling == "per_patch_max":
        peak = float(bands.max()) if bands.size else 0.0
        scaled = bands / peak * 255.0 if peak > 0 else np.zeros_like(bands)
    elif isinstance(scaling, (int, float)) and not isinstance(scaling, bool) and scaling > 0:
        scaled = bands * float(scaling)
    else:
        raise ValueError(f"`scaling` must be 'per_patch_max' or a positive gain, got {scaling!r}.")
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _as_rgb_input(image):
    """Brings one image to what the model was trained on, 8-bit-range RGB, or says what to do instead."""
    hint = (
        "LALE expects 8-bit RGB. For 16-bit or multi-band rasters (e.g. Sentinel-2 B, G, R, NIR), select the RGB "
        "bands and scale them with `lale_hf.scale_to_uint8(bands, scaling='per_patch_max')` first."
    )
    if isinstance(image, Image.Image):
        if image.mode in ("RGB",):
            return image
        if image.mode in ("RGBA", "P", "PA", "LA", "L", "1", "CMYK", "YCbCr"):
            # Documented conversion: alpha is dropped, grey and palette images become RGB.
            return image.convert("RGB")
        raise ValueError(f"Unsupported PIL image mode {image.mode!r} (16-bit or float). {hint}")
    array = image.numpy() if is_torch_available() and isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"Expected an image of shape (H, W, C) or (C, H, W), got shape {array.shape}. {hint}")
    # The band axis is the shorter of the first and last (images are far larger than their band count).
    channels_first = array.shape[0] < array.shape[-1]
    channels = array.shape[0] if channels_first else array.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"Got an image with {channels} bands (shape {array.shape}); expected 3 (RGB). {hint}")
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
            raise ValueError(
                f"Float images must hold RGB values in [0, 1]; got values in [{np.nanmin(array)}, "
                f"{np.nanmax(array)}]. {hint}"
            )
        # Documented conversion: floats in [0, 1] are the 8-bit range divided by 255.
        array = (array * 255.0).astype(np.float32)
    else:
        raise ValueError(f"Got a {array.dtype} image; {hint}")
    if channels == 1:
        array = np.repeat(array, 3, axis=0 if channels_first else -1)
    return array


class LaleImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce every label value by 1 and map 0 to 255, for datasets whose 0 is a background class that
        is not part of the label set.
    """

    do_reduce_labels: bool


class LaleImageProcessor(PilBackend):
    r"""
    Image processor for LALE (NumPy/PIL backend, no torchvision needed): resize to 256x256 (bilinear), rescale by
    1/255 and normalise with the ImageNet mean and std, as the ARAS400k baselines were trained. Segmentation maps
    are resized with nearest-neighbour interpolation and returned as int64 `labels`.

    Inputs: 8-bit RGB images. PIL images in other 8-bit modes (RGBA, LA, L, P) are converted to RGB (alpha
    dropped, grey replicated); single-band 8-bit arrays are replicated to three bands; float arrays must hold
    values in [0, 1] and are taken as 8-bit values divided by 255. 16-bit, integer and multi-band inputs are an
    error: select bands and scale with `scale_to_uint8` first.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = LaleImageProcessorKwargs
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 256, "width": 256}
    default_to_square = True
    crop_size = None
    do_resize = True
    do_center_crop = None
    do_rescale = True
    do_normalize = True
    do_reduce_labels = False
    rescale_factor = 1 / 255

    def __init__(self, **kwargs: Unpack[LaleImageProcessorKwargs]):
        super().__init__(**kwargs)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[LaleImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        segmentation_maps (`ImageInput`, *optional*):
            Class-index maps (H, W) to preprocess into `labels`.
        """
        images = [_as_rgb_input(image) for image in images] if isinstance(images, (list, tuple)) else _as_rgb_input(images)
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        do_convert_rgb: bool,
        input_data_format: ChannelDimension,
        return_tensors: str | TensorType | None,
        **kwargs,
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format
        )
        data = {"pixel_values": self._preprocess(images, **{**kwargs, "do_reduce_labels": False})}
        if segmentation_maps is not None:
            segmentation_maps = self._prepare_image_like_inputs(
                images=segmentation_maps,
                expected_ndims=2,
                do_convert_rgb=False,
                input_data_format=ChannelDimension.FIRST,
            )
            # Labels are resized with NEAREST and never rescaled or normalised.
            label_kwargs = {**kwargs, "do_normalize": False, "do_rescale": False, "resample": PILImageResampling.NEAREST}
            labels = self._preprocess(images=segmentation_maps, **label_kwargs)
            data["labels"] = [label.squeeze(0).astype(np.int64) for label in labels]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def reduce_label(self, image: np.ndarray) -> np.ndarray:
        """Reduces label values by 1 and maps 0 to 255."""
        image = image.astype(np.int64)
        image[image == 0] = 256
        return (image - 1).astype(np.uint8)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_reduce_labels: bool,
        resample: PILImageResampling | None,
        do_resize: bool,
        do_rescale: bool,
        do_normalize: bool,
        size: SizeDict,
        rescale_factor: float,
        image_mean: float | list[float],
        image_std: float | list[float],
        **kwargs,
    ) -> list[np.ndarray]:
        processed_images = []
        for image in images:
            if do_reduce_labels:
                image = self.reduce_label(image)
            if do_resize:
                image = self.resize(image, size, resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed_images.append(image)
        return processed_images

    def post_process_semantic_segmentation(self, outputs, target_sizes: list[tuple] | None = None):
        """Turns model outputs into class-index maps (torch tensors), resized to `target_sizes` (H, W) if given."""
        logits = outputs.logits
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(logits) != len(target_sizes):
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits: pass one (H, W) per image."
            )
        segmentation = []
        for logit, target_size in zip(logits, target_sizes):
            resized = torch.nn.functional.interpolate(
                logit[None], size=tuple(int(s) for s in target_size), mode="bilinear", align_corners=False
            )
            segmentation.append(resized[0].argmax(dim=0))
        return segmentation


__all__ = ["LaleImageProcessor", "color_mask_to_label_map", "colorize_label_map", "scale_to_uint8"]
