import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, SegformerImageProcessorPil
from transformers.modeling_outputs import SemanticSegmenterOutput

from lale_hf import (
    ARAS400K_PALETTE,
    LaleConfig,
    LaleImageProcessor,
    color_mask_to_label_map,
    colorize_label_map,
    scale_to_uint8,
)


def real_pairs(sample, split="train", count=6):
    names = sorted(p.name for p in (sample / split / "images").iterdir())[:count]
    images = [Image.open(sample / split / "images" / name) for name in names]
    masks = [Image.open(sample / split / "masks" / name) for name in names]
    return names, images, masks


def test_matches_segformer_processor_on_real_patches(s2glc_sample):
    _, images, masks = real_pairs(s2glc_sample)
    label_maps = [color_mask_to_label_map(mask) for mask in masks]
    lale = LaleImageProcessor(size={"height": 192, "width": 160})
    segformer = SegformerImageProcessorPil(
        size={"height": 192, "width": 160}, image_mean=lale.image_mean, image_std=lale.image_std
    )
    ours = lale(images, segmentation_maps=label_maps, return_tensors="pt")
    theirs = segformer(images, segmentation_maps=label_maps, return_tensors="pt")
    assert ours["pixel_values"].shape == (6, 3, 192, 160)
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert ours["labels"].dtype == torch.int64
    assert torch.equal(ours["labels"], theirs["labels"])


def test_defaults_are_256_bilinear_imagenet():
    processor = LaleImageProcessor()
    assert processor.size == {"height": 256, "width": 256}
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [0.229, 0.224, 0.225]
    image = np.full((100, 80, 3), 255, dtype=np.uint8)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 256, 256)
    expected = (1.0 - torch.tensor(processor.image_mean)) / torch.tensor(processor.image_std)
    torch.testing.assert_close(pixel_values[0, :, 0, 0], expected)


def test_registered_with_auto_image_processor(tmp_path):
    LaleImageProcessor(size={"height": 128, "width": 128}).save_pretrained(tmp_path)
    LaleConfig().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, LaleImageProcessor)
    assert processor.size["height"] == 128


def test_segmentation_maps_resize_nearest_and_reduce_labels():
    label_map = np.zeros((8, 8), dtype=np.uint8)
    label_map[:, 4:] = 3
    processor = LaleImageProcessor(size={"height": 16, "width": 16})
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    labels = processor(image, segmentation_maps=label_map, return_tensors="pt")["labels"][0]
    assert set(labels.unique().tolist()) == {0, 3}  # nearest: no interpolated class values
    reduced = processor(image, segmentation_maps=label_map, do_reduce_labels=True, return_tensors="pt")["labels"][0]
    assert set(reduced.unique().tolist()) == {255, 2}


def test_rgba_grayscale_and_palette_images_are_converted(s2glc_sample):
    _, images, _ = real_pairs(s2glc_sample, count=1)
    rgb = images[0].convert("RGB")
    processor = LaleImageProcessor()
    expected = processor(rgb, return_tensors="pt")["pixel_values"]
    rgba = rgb.copy()
    rgba.putalpha(128)
    assert torch.equal(processor(rgba, return_tensors="pt")["pixel_values"], expected)
    # Float arrays in [0, 1] are the 8-bit values divided by 255.
    as_float = np.asarray(rgb).astype(np.float32) / 255.0
    torch.testing.assert_close(processor(as_float, return_tensors="pt")["pixel_values"], expected, rtol=0, atol=1e-5)
    # Channels-first uint8 arrays are understood too.
    channels_first = np.asarray(rgb).transpose(2, 0, 1).copy()
    assert torch.equal(processor(channels_first, return_tensors="pt")["pixel_values"], expected)
    grey = rgb.convert("L")
    from_grey = processor(grey, return_tensors="pt")["pixel_values"]
    from_grey_array = processor(np.asarray(grey), return_tensors="pt")["pixel_values"]
    assert torch.equal(from_grey, from_grey_array)
    assert from_grey.shape == (1, 3, 256, 256)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((32, 32, 3), dtype=np.uint16), "uint16 image"),
        (np.zeros((32, 32, 4), dtype=np.uint8), "with 4 bands"),
        (np.zeros((6, 32, 32), dtype=np.uint8), "with 6 bands"),
        (np.full((32, 32, 3), 2.0, dtype=np.float32), "Float images must hold RGB values in [0, 1]"),
        (Image.fromarray(np.zeros((32, 32), dtype=np.uint16)), "Unsupported PIL image mode"),
    ],
)
def test_unsupported_inputs_say_what_to_do(image, message):
    with pytest.raises(ValueError) as error:
        LaleImageProcessor()(image)
    assert message in str(error.value)
    assert "scale_to_uint8" in str(error.value)


def test_post_process_returns_torch_maps_at_target_sizes():
    processor = LaleImageProcessor()
    logits = torch.randn(2, 7, 16, 16)
    outputs = SemanticSegmenterOutput(logits=logits)
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 64), (30, 50)])
    assert [tuple(m.shape) for m in maps] == [(64, 64), (30, 50)]
    assert all(isinstance(m, torch.Tensor) and m.dtype == torch.int64 for m in maps)
    plain = processor.post_process_semantic_segmentation(outputs)
    assert torch.equal(plain[1], logits[1].argmax(0))
    with pytest.raises(ValueError, match="Got 1 target sizes for a batch of 2"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(4, 4)])


def test_palette_round_trip_on_real_masks(s2glc_sample):
    names, _, masks = real_pairs(s2glc_sample, split="val", count=10)
    for name, mask in zip(names, masks):
        label_map = color_mask_to_label_map(mask, source=name)
        assert label_map.dtype == np.uint8 and label_map.max() < len(ARAS400K_PALETTE)
        assert np.array_equal(np.asarray(colorize_label_map(label_map)), np.asarray(mask.convert("RGB")))


def test_unknown_mask_colour_is_named_or_mapped_to_ignore():
    mask = np.zeros((4, 5, 3), dtype=np.uint8)
    mask[:] = ARAS400K_PALETTE[6]
    mask[0, :3] = (1, 2, 3)
    with pytest.raises(ValueError) as error:
        color_mask_to_label_map(mask, source="masks/N45E010_003_004.png")
    text = str(error.value)
    assert "masks/N45E010_003_004.png" in text and "(1, 2, 3): 3 px" in text
    label_map = color_mask_to_label_map(mask, unknown_to_ignore=True)
    assert (label_map[0, :3] == 255).all() and (label_map[1:] == 6).all()


def test_colorize_paints_ignore_index():
    label_map = np.array([[0, 255], [6, 3]], dtype=np.uint8)
    colours = np.asarray(colorize_label_map(label_map, ignore_color=(9, 9, 9)))
    assert colours[0, 1].tolist() == [9, 9, 9]
    assert colours[1, 0].tolist() == list(ARAS400K_PALETTE[6])


def test_scale_to_uint8_reproduces_aras_per_patch_max_scaling(s2glc_sample):
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(s2glc_sample / "raw-tif" / "s2glc_00003.tif") as source:
        bands = source.read()  # B, G, R, NIR
    rgb = bands[[2, 1, 0]].transpose(1, 2, 0)
    expected = np.asarray(Image.open(s2glc_sample / "train" / "images" / "s2glc_00003.png"))
    assert np.array_equal(scale_to_uint8(rgb, "per_patch_max"), expected)
    fixed = scale_to_uint8(rgb, 255 / 3000)
    assert fixed.dtype == np.uint8 and fixed.max() <= 255
    with pytest.raises(ValueError, match="`scaling` must be 'per_patch_max' or a positive gain"):
        scale_to_uint8(rgb, "percentile")
