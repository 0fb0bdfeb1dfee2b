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

try:
    from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
except ImportError:  # transformers releases before this output class; remote code may run on them

    class SemanticSegmentationPostProcessorOutput(BatchFeature):
        """One image's post-processed prediction: `segmentation` (H, W) and `segmentation_scores` (classes, H, W)."""

        segmentation: "torch.Tensor"
        segmentation_scores: "torch.Tensor | None"


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
            f"({c >> 16}, {(c >> 8) & 255}, {c & 255}): {n} px"
            for c, n in zip(unknown_codes[:10], counts[:10], strict=True)
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


_RGB_HINT = (
    "LALE expects 8-bit RGB. For 16-bit or multi-band rasters (e.g. Sentinel-2 B, G, R, NIR), select the RGB "
    "bands and scale them with `lale_hf.scale_to_uint8(bands, scaling='per_patch_max')` first."
)


def _channel_axis(array: np.ndarray, input_data_format) -> int:
    """The band axis of a 3-D image: as the caller says, else the shorter of the first and last axes."""
    if input_data_format is not None:
        return 0 if ChannelDimension(input_data_format) == ChannelDimension.FIRST else 2
    # Images are far larger than their band count.
    return 0 if array.shape[0] < array.shape[-1] else 2


def _as_model_input(image, num_bands: int = 3, input_data_format=None) -> np.ndarray | Image.Image:
    """Brings one image to what the model was trained on, or says what to do instead.

    With `num_bands == 3` (RGB, the default) PIL images in 8-bit modes are converted to RGB and single-band arrays
    are replicated; with any other band count the image must have exactly `num_bands` bands. Arrays come back
    channels-first, 8-bit values as uint8 and floats in [0, 1] as float32 in the 8-bit range.
    """
    if num_bands == 3:
        hint = _RGB_HINT
    else:
        hint = (
            f"This processor expects {num_bands} bands (the length of its `image_mean` and `image_std`), as 8-bit "
            "integers or floats in [0, 1]; scale 16-bit rasters with `lale_hf.scale_to_uint8` first."
        )
    if isinstance(image, Image.Image):
        if num_bands == 3:
            if image.mode == "RGB":
                return image
            if image.mode in ("RGBA", "P", "PA", "LA", "L", "1", "CMYK", "YCbCr"):
                # Documented conversion: alpha is dropped, grey and palette images become RGB.
                return image.convert("RGB")
            raise ValueError(f"Unsupported PIL image mode {image.mode!r} (16-bit or float). {hint}")
        image = np.asarray(image)
        input_data_format = ChannelDimension.LAST
    array = image.numpy() if is_torch_available() and isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 2:
        array = array[None]
        input_data_format = ChannelDimension.FIRST
    if array.ndim != 3:
        raise ValueError(f"Expected an image of shape (H, W, C) or (C, H, W), got shape {array.shape}. {hint}")
    shape = tuple(array.shape)
    array = np.moveaxis(array, _channel_axis(array, input_data_format), 0)
    channels = array.shape[0]
    if num_bands == 3 and channels not in (1, 3):
        raise ValueError(f"Got an image with {channels} bands (shape {shape}); expected 3 (RGB). {hint}")
    if num_bands != 3 and channels != num_bands:
        raise ValueError(f"Got an image with {channels} bands (shape {shape}); expected {num_bands}. {hint}")
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
            raise ValueError(
                f"Float images must hold {'RGB ' if num_bands == 3 else ''}values in [0, 1]; got values in "
                f"[{np.nanmin(array)}, {np.nanmax(array)}]. {hint}"
            )
        # Documented conversion: floats in [0, 1] are the 8-bit range divided by 255.
        array = (array * 255.0).astype(np.float32)
    else:
        raise ValueError(f"Got a {array.dtype} image; {hint}")
    if channels == 1 and num_bands == 3:
        array = np.repeat(array, 3, axis=0)
    return array


def _image_bands(image_mean, image_std) -> int:
    """How many bands the normalisation describes: the length of `image_mean`/`image_std`, 3 for a scalar."""
    lengths = {len(value) for value in (image_mean, image_std) if isinstance(value, (list, tuple, np.ndarray))}
    if len(lengths) > 1:
        raise ValueError(
            f"`image_mean` ({list(image_mean)}) and `image_std` ({list(image_std)}) must have one value per band."
        )
    return lengths.pop() if lengths else 3


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

    A processor whose `image_mean` and `image_std` hold N values (e.g. four for B, G, R, NIR) takes N-band
    images instead, as uint8 or floats in [0, 1], arrays channels-first or channels-last, and nothing else.
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
        num_bands = _image_bands(kwargs.get("image_mean", self.image_mean), kwargs.get("image_std", self.image_std))
        input_data_format = kwargs.get("input_data_format")
        if isinstance(images, (list, tuple)):
            images = [_as_model_input(image, num_bands, input_data_format) for image in images]
        else:
            images = _as_model_input(images, num_bands, input_data_format)
        # Arrays now are channels-first; PIL images are read as (H, W, C) whatever this says.
        kwargs["input_data_format"] = ChannelDimension.FIRST
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
            label_kwargs = {
                **kwargs,
                "do_normalize": False,
                "do_rescale": False,
                "resample": PILImageResampling.NEAREST,
            }
            labels = self._preprocess(images=segmentation_maps, **label_kwargs)
            data["labels"] = [label.squeeze(0).astype(np.int64) for label in labels]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | None = None,
        reducing_gap: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Resizes a channels-first image; float images and band counts other than 1 and 3 are resized band by band.

        PIL resizes a fourth band as alpha (premultiplied) and quantises floats to 8 bits, so those go through one
        single-band PIL image each: "L" for uint8 (the same arithmetic PIL applies to each RGB band), "F" for floats.
        """
        is_float = np.issubdtype(image.dtype, np.floating)
        if image.shape[0] in (1, 3) and not is_float:
            return super().resize(image, size, resample, reducing_gap=reducing_gap, **kwargs)
        # transformers' own rules (height and width, shortest edge, max size) give the output size.
        probe = super().resize(np.zeros((1, *image.shape[1:]), dtype=np.uint8), size, PILImageResampling.NEAREST)
        height, width = probe.shape[1:]
        resample = PILImageResampling.BILINEAR if resample is None else resample
        bands = image.astype(np.float32) if is_float or image.dtype != np.uint8 else image
        resized = [
            Image.fromarray(np.ascontiguousarray(band)).resize((width, height), resample, reducing_gap=reducing_gap)
            for band in bands
        ]
        return np.stack([np.asarray(band) for band in resized])

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

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: list[tuple] | None = None, return_segmentation_scores: bool = False
    ) -> "list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]":
        """Turns model outputs into class-index maps (torch tensors), resized to `target_sizes` (H, W) if given.

        The logits are upsampled bilinearly to each target size, then the class with the highest score is taken. With
        `return_segmentation_scores=True` each item is a `SemanticSegmentationPostProcessorOutput` holding that
        `segmentation` (H, W) and the upsampled logits as `segmentation_scores` (classes, H, W), as SegFormer's
        processor returns them.
        """
        logits = outputs.logits
        if target_sizes is not None and len(logits) != len(target_sizes):
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits: pass one (H, W) per image."
            )
        results = []
        for index, scores in enumerate(logits):
            if target_sizes is not None:
                size = tuple(int(s) for s in target_sizes[index])
                upsampled = torch.nn.functional.interpolate(
                    scores[None], size=size, mode="bilinear", align_corners=False
                )
                scores = upsampled[0]
            segmentation = scores.argmax(dim=0)
            if return_segmentation_scores:
                data = {"segmentation": segmentation, "segmentation_scores": scores}
                results.append(SemanticSegmentationPostProcessorOutput(data=data))
            else:
                results.append(segmentation)
        return results


__all__ = ["LaleImageProcessor", "color_mask_to_label_map", "colorize_label_map", "scale_to_uint8"]
