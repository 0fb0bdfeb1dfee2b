import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, SegformerImageProcessorPil, pipeline
from transformers.modeling_outputs import SemanticSegmenterOutput

from lale_hf import (
    ARAS400K_PALETTE,
    LaleConfig,
    LaleForSemanticSegmentation,
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
    # A grey image with alpha: the alpha is dropped, whatever it holds.
    for alpha in (0, 200):
        grey_alpha = grey.convert("LA")
        grey_alpha.putalpha(alpha)
        assert grey_alpha.mode == "LA"
        assert torch.equal(processor(grey_alpha, return_tensors="pt")["pixel_values"], from_grey)
    # A palette image is painted with its palette's colours: 256 colours keep the patch close to the original.
    palette_image = rgb.quantize(colors=256)
    assert palette_image.mode == "P"
    painted = np.asarray(palette_image.getpalette(), dtype=np.uint8).reshape(-1, 3)[np.asarray(palette_image)]
    from_palette = processor(palette_image, return_tensors="pt")["pixel_values"]
    assert torch.equal(from_palette, processor(painted, return_tensors="pt")["pixel_values"])
    assert 0 < (from_palette - expected).abs().mean() < 0.1


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
    with pytest.raises(ValueError, match="scale_to_uint8") as error:
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


def test_segmentation_scores_match_segformer_on_real_patches(s2glc_sample, tiny_model):
    names = sorted(p.name for p in (s2glc_sample / "val" / "images").iterdir())[:2]
    images = [Image.open(s2glc_sample / "val" / "images" / name) for name in names]
    processor = LaleImageProcessor()
    with torch.no_grad():
        outputs = tiny_model(**processor(images, return_tensors="pt"))
    segformer = SegformerImageProcessorPil()
    for target_sizes in ([(256, 256), (300, 200)], None):
        ours = processor.post_process_semantic_segmentation(
            outputs, target_sizes=target_sizes, return_segmentation_scores=True
        )
        theirs = segformer.post_process_semantic_segmentation(
            outputs, target_sizes=target_sizes, return_segmentation_scores=True
        )
        assert len(ours) == len(theirs) == 2
        for got, expected in zip(ours, theirs, strict=True):
            assert type(got) is type(expected)
            assert type(got).__name__ == "SemanticSegmentationPostProcessorOutput"
            assert list(got.keys()) == list(expected.keys()) == ["segmentation", "segmentation_scores"]
            assert torch.equal(got.segmentation, expected.segmentation)
            assert torch.equal(got.segmentation_scores, expected.segmentation_scores)
            assert got.segmentation_scores.shape == (7, *got.segmentation.shape)
            assert torch.equal(got.segmentation, got.segmentation_scores.argmax(0))
        plain = processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
        assert all(torch.equal(map_, item.segmentation) for map_, item in zip(plain, ours, strict=True))
    # Target sizes as a tensor (SegFormer's processor in transformers 5.23 fails on those) give the same maps.
    as_list = processor.post_process_semantic_segmentation(outputs, target_sizes=[(256, 256), (300, 200)])
    as_tensor = processor.post_process_semantic_segmentation(
        outputs, target_sizes=torch.tensor([[256, 256], [300, 200]])
    )
    assert all(torch.equal(a, b) for a, b in zip(as_list, as_tensor, strict=True))
    sizes = [tuple(item.segmentation.shape) for item in ours]
    assert sizes == [(64, 64), (64, 64)]  # no target sizes: the logits' own 1/4 resolution
    # The random model predicts several classes, so the comparison covers a real argmax, not a constant map.
    assert len(ours[0].segmentation.unique()) > 1


def test_pipeline_still_segments_a_real_patch(s2glc_sample, tiny_checkpoint):
    path = sorted((s2glc_sample / "val" / "images").iterdir())[0]
    segmenter = pipeline("image-segmentation", model=str(tiny_checkpoint))
    segments = segmenter(str(path))
    processor = LaleImageProcessor.from_pretrained(tiny_checkpoint)
    image = Image.open(path)
    with torch.no_grad():
        outputs = segmenter.model(**processor(image, return_tensors="pt"))
    label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()
    id2label = segmenter.model.config.id2label
    assert [segment["label"] for segment in segments] == [id2label[int(i)] for i in np.unique(label_map)]
    for segment in segments:
        index = next(i for i, name in id2label.items() if name == segment["label"])
        assert np.array_equal(np.asarray(segment["mask"]) > 0, label_map == index)


def four_band_patch(sample) -> np.ndarray:
    """A real Sentinel-2 patch, B, G, R, NIR (H, W, 4), scaled to uint8 by its maximum."""
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(sample / "raw-tif" / "s2glc_00003.tif") as source:
        bands = source.read()
    return scale_to_uint8(bands.transpose(1, 2, 0), "per_patch_max")


RGB_MEAN, RGB_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BGRN_MEAN, BGRN_STD = [0.406, 0.456, 0.485, 0.3], [0.225, 0.224, 0.229, 0.2]


def test_n_band_processor_takes_n_band_uint8_arrays(s2glc_sample):
    bgrn = four_band_patch(s2glc_sample)
    size = {"height": 192, "width": 160}  # a real resize, not the patch's own 256x256
    four_band = LaleImageProcessor(image_mean=BGRN_MEAN, image_std=BGRN_STD, size=size)
    pixel_values = four_band(bgrn, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 4, 192, 160)
    # The B, G, R bands come out exactly as the RGB processor makes them: the fourth band is not resized as alpha.
    rgb = LaleImageProcessor(image_mean=RGB_MEAN, image_std=RGB_STD, size=size)
    from_rgb = rgb(np.ascontiguousarray(bgrn[..., [2, 1, 0]]), return_tensors="pt")["pixel_values"]
    assert torch.equal(pixel_values[0, [2, 1, 0]], from_rgb[0])
    # The NIR band: resized alone as a grey image, rescaled and normalised with the fourth mean and std.
    nir = np.asarray(Image.fromarray(bgrn[..., 3]).resize((160, 192), Image.Resampling.BILINEAR), dtype=np.float32)
    expected_nir = torch.from_numpy((nir / 255 - BGRN_MEAN[3]) / BGRN_STD[3])
    torch.testing.assert_close(pixel_values[0, 3], expected_nir, rtol=0, atol=1e-5)
    # Channels-first arrays and torch tensors give the same.
    channels_first = np.ascontiguousarray(bgrn.transpose(2, 0, 1))
    assert torch.equal(four_band(channels_first, return_tensors="pt")["pixel_values"], pixel_values)
    assert torch.equal(four_band(torch.from_numpy(channels_first), return_tensors="pt")["pixel_values"], pixel_values)
    # A model with four input channels runs on it.
    model = LaleForSemanticSegmentation(LaleConfig(num_channels=4)).eval()
    with torch.no_grad():
        assert model(pixel_values).logits.shape == (1, 7, 48, 40)


def test_n_band_processor_takes_n_band_float_arrays(s2glc_sample):
    bgrn = four_band_patch(s2glc_sample)
    as_float = bgrn.astype(np.float32) / 255.0
    same_size = LaleImageProcessor(image_mean=BGRN_MEAN, image_std=BGRN_STD)
    from_uint8 = same_size(bgrn, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(same_size(as_float, return_tensors="pt")["pixel_values"], from_uint8, rtol=0, atol=1e-5)
    # Resized, floats stay floats while PIL rounds 8-bit bands: at most one 8-bit step apart after normalising.
    resized = LaleImageProcessor(image_mean=BGRN_MEAN, image_std=BGRN_STD, size={"height": 192, "width": 160})
    from_float = resized(as_float, return_tensors="pt")["pixel_values"]
    from_uint8 = resized(bgrn, return_tensors="pt")["pixel_values"]
    bound = 1 / 255 / min(BGRN_STD) + 1e-5
    assert 0 < (from_float - from_uint8).abs().max() <= bound
    # Floats that are not multiples of 1/255 work too (PIL would refuse them as an 8-bit image).
    noisy = np.clip(as_float + np.float32(0.001), 0, 1)
    assert torch.isfinite(resized(noisy, return_tensors="pt")["pixel_values"]).all()
    with pytest.raises(ValueError, match=r"Float images must hold values in \[0, 1\]"):
        resized(as_float * 2)


def test_band_count_must_match_the_normalisation(s2glc_sample):
    bgrn = four_band_patch(s2glc_sample)
    with pytest.raises(ValueError, match=r"Got an image with 4 bands \(shape \(256, 256, 4\)\); expected 3") as error:
        LaleImageProcessor()(bgrn)
    assert "Got an image with 4 bands (shape (256, 256, 4)); expected 3 (RGB). LALE expects 8-bit RGB." in str(
        error.value
    )
    four_band = LaleImageProcessor(image_mean=BGRN_MEAN, image_std=BGRN_STD)
    with pytest.raises(ValueError, match=r"Got an image with 3 bands \(shape \(256, 256, 3\)\); expected 4\."):
        four_band(np.ascontiguousarray(bgrn[..., :3]))
    with pytest.raises(ValueError, match="`image_mean` .* and `image_std` .* must have one value per band"):
        LaleImageProcessor(image_mean=BGRN_MEAN)(bgrn)
    # The mean and std given at call time decide, as for any other processor argument.
    pixel_values = LaleImageProcessor()(bgrn, image_mean=BGRN_MEAN, image_std=BGRN_STD, return_tensors="pt")
    assert pixel_values["pixel_values"].shape == (1, 4, 256, 256)


def test_palette_round_trip_on_real_masks(s2glc_sample):
    names, _, masks = real_pairs(s2glc_sample, split="val", count=10)
    for name, mask in zip(names, masks, strict=True):
        label_map = color_mask_to_label_map(mask, source=name)
        assert label_map.dtype == np.uint8 and label_map.max() < len(ARAS400K_PALETTE)
        assert np.array_equal(np.asarray(colorize_label_map(label_map)), np.asarray(mask.convert("RGB")))


def test_unknown_mask_colour_is_named_or_mapped_to_ignore():
    mask = np.zeros((4, 5, 3), dtype=np.uint8)
    mask[:] = ARAS400K_PALETTE[6]
    mask[0, :3] = (1, 2, 3)
    with pytest.raises(ValueError, match=r"masks/N45E010_003_004\.png: 3 pixels .*\[\(1, 2, 3\): 3 px\]") as error:
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
