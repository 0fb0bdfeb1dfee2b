"""Large-scene prediction: tiling equals plain inference, streaming equals the whole-scene blend, no seams, real
16-bit and georeferenced inputs through scripts/predict.py, area statistics, and clear errors on bad input."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin
from transformers import MobileViTImageProcessorPil, SegformerImageProcessorPil

from lale_hf import ARAS400K_PALETTE, LaleImageProcessor
from lale_hf.inference import (
    AreaStatistics,
    ImageSource,
    InferenceError,
    Scaling,
    TorchPredictor,
    blend_weights,
    check_scaling,
    load_predictor,
    plan_tiles,
    predict_file,
    predict_image,
    predict_paths,
    resolve_scaling,
)
from lale_hf.preprocessing import Preprocessing, PreprocessingError, preprocessing_from_processor


REPO_ROOT = Path(__file__).resolve().parents[1]
PREDICT = REPO_ROOT / "scripts" / "predict.py"
UTM_TRANSFORM = from_origin(500000.0, 5200000.0, 10.0, 10.0)


@pytest.fixture(scope="session")
def predictor(tiny_model):
    return TorchPredictor(tiny_model, LaleImageProcessor())


def real_mosaic(s2glc_sample: Path, height: int = 600, width: int = 700) -> np.ndarray:
    """An RGB uint8 scene of real 256x256 patches side by side."""
    files = sorted((s2glc_sample / "train" / "images").glob("*.png"))
    rows = -(-height // 256)
    cols = -(-width // 256)
    grid = [[np.array(Image.open(files[r * cols + c]).convert("RGB")) for c in range(cols)] for r in range(rows)]
    return np.concatenate([np.concatenate(row, axis=1) for row in grid], axis=0)[:height, :width]


def raw_mosaic(s2glc_sample: Path, height: int = 600, width: int = 700) -> np.ndarray:
    """A (4, H, W) uint16 B, G, R, NIR scene of the real raw patches."""
    patches = []
    for tif in sorted((s2glc_sample / "raw-tif").glob("*.tif")):
        with rasterio.open(tif) as dataset:
            patches.append(dataset.read())
    rows, cols = -(-height // 256), -(-width // 256)
    grid = [[patches[(r * cols + c) % len(patches)] for c in range(cols)] for r in range(rows)]
    return np.concatenate([np.concatenate(row, axis=2) for row in grid], axis=1)[:, :height, :width]


def write_geotiff(path: Path, data: np.ndarray, crs="EPSG:32633", transform=UTM_TRANSFORM, nodata=None, **extra):
    profile = dict(
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        **extra,
    )
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
    return path


def run_predict(env, *args, cwd=None):
    return subprocess.run(
        [sys.executable, str(PREDICT), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------------------------------------------
# Tiling


@pytest.mark.parametrize("size", [(256, 256), (250, 130), (64, 200)])
def test_one_tile_equals_plain_whole_image_inference(s2glc_sample, tiny_model, predictor, size):
    image = np.array(Image.open(s2glc_sample / "val" / "images" / "s2glc_00241.png").convert("RGB"))[
        : size[0], : size[1]
    ]
    processor = LaleImageProcessor()
    pixel_values = processor(image, do_resize=False, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        outputs = tiny_model(pixel_values=pixel_values)
    plain = processor.post_process_semantic_segmentation(outputs, target_sizes=[size])[0].numpy()

    tiled = predict_image(image, predictor)

    assert tiled.shape == size and tiled.dtype == np.uint8
    np.testing.assert_array_equal(tiled, plain)
    assert len(np.unique(plain)) > 1  # a constant map would make the comparison vacuous


def test_channels_last_predictor_gives_the_same_logits_and_map(s2glc_sample, tiny_model, predictor):
    image = np.array(Image.open(s2glc_sample / "val" / "images" / "s2glc_00241.png").convert("RGB"))
    fast = TorchPredictor(copy.deepcopy(tiny_model), LaleImageProcessor(), channels_last=True)
    pixel_values = np.stack([predictor.normalize(image), predictor.normalize(image[::-1].copy())])
    assert fast.model.lale.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(pixel_values), predictor(pixel_values), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(predict_image(image, fast), predict_image(image, predictor))


@pytest.mark.slow  # inductor compiles two graphs (a full and a partial batch), about a minute on two cores
def test_compiled_predictor_gives_the_same_map(s2glc_sample, tiny_model, predictor):
    scene = real_mosaic(s2glc_sample, 480, 520)  # 3x3 tiles at overlap 0.25: batches of 8 and 1
    fresh = type(tiny_model)(tiny_model.config)  # never run, as after loading: no output-capturing hooks yet
    fresh.load_state_dict(tiny_model.state_dict())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = TorchPredictor(fresh, LaleImageProcessor(), channels_last=True, torch_compile=True)
    np.testing.assert_array_equal(
        predict_image(scene, compiled, batch_size=8), predict_image(scene, predictor, batch_size=8)
    )
    assert not torch._dynamo.utils.counters["graph_break"]  # one graph per batch size, nothing run eagerly between
    with pytest.raises(ValueError, match="--torch_compile applies to PyTorch checkpoints, not to the ONNX file m.onnx"):
        load_predictor("m.onnx", torch_compile=True)


def test_single_patch_matches_the_default_processor_pipeline(s2glc_sample, tiny_model, predictor):
    image = Image.open(s2glc_sample / "val" / "images" / "s2glc_00250.png").convert("RGB")
    processor = LaleImageProcessor()
    with torch.inference_mode():
        outputs = tiny_model(**processor(image, return_tensors="pt"))
    plain = processor.post_process_semantic_segmentation(outputs, target_sizes=[(256, 256)])[0].numpy()
    np.testing.assert_array_equal(predict_image(image, predictor), plain)


@pytest.mark.parametrize(
    "processor_class", [LaleImageProcessor, SegformerImageProcessorPil, MobileViTImageProcessorPil]
)
def test_preprocessing_equals_each_models_own_processor(s2glc_sample, tiny_model, processor_class):
    image = np.array(Image.open(s2glc_sample / "val" / "images" / "s2glc_00241.png").convert("RGB"))[:200, :160]
    processor = processor_class()
    expected = processor(image, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"][0]
    preprocessing = preprocessing_from_processor(processor)

    assert torch.equal(preprocessing.to_tensor(image), expected)  # bit for bit
    assert torch.equal(preprocessing.to_tensor(np.stack([image, image]))[1], expected)
    assert Preprocessing.from_dict(preprocessing.to_dict()) == preprocessing
    if processor_class is MobileViTImageProcessorPil:  # BGR, rescaled, not normalised
        assert preprocessing.flip_channel_order and not preprocessing.do_normalize
        assert torch.equal(expected[0], torch.from_numpy((image[..., 2] * (1 / 255)).astype(np.float32)))
    else:
        assert not preprocessing.flip_channel_order and preprocessing.mean == tuple(processor.image_mean)
    # A predictor feeds its model what the model's own processor gives.
    predictor = TorchPredictor(tiny_model, processor)
    np.testing.assert_array_equal(predictor.normalize(image), expected.numpy())
    with pytest.raises(PreprocessingError, match="expected a uint8 image"):
        preprocessing.to_array(image.astype(np.float32))


def test_preprocessing_records_from_older_onnx_files_read_as_rgb():
    legacy = {
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "rescale_factor": 1 / 255,
        "do_rescale": True,
        "do_normalize": True,
    }
    assert Preprocessing.from_dict(legacy) == Preprocessing(size=None)
    with pytest.raises(PreprocessingError, match="incomplete preprocessing record"):
        Preprocessing.from_dict({"image_mean": [0.5]})


def naive_blend(image: np.ndarray, predictor, tile_size: int, overlap: float) -> np.ndarray:
    """The blend held whole in memory: every tile's weighted logits summed into one scene-size buffer, normalised,
    upsampled once. The streaming implementation must give exactly this."""
    grid = plan_tiles(image.shape[0], image.shape[1], tile_size, overlap)
    padded = np.pad(
        image, ((0, grid.padded_height - image.shape[0]), (0, grid.padded_width - image.shape[1]), (0, 0)), mode="edge"
    )
    cells = (grid.padded_height // 4, grid.padded_width // 4)
    total = torch.zeros(len(predictor.id2label), *cells)
    weight = torch.zeros(cells)
    for y in grid.ys:
        for x in grid.xs:
            tile = padded[y : y + grid.tile_height, x : x + grid.tile_width]
            logits = predictor(predictor.normalize(tile)[None])[0]
            w = (
                torch.from_numpy(blend_weights(y, grid.tile_height, grid.padded_height, grid.overlap))[:, None]
                * torch.from_numpy(blend_weights(x, grid.tile_width, grid.padded_width, grid.overlap))[None, :]
            )
            total[:, y // 4 : (y + grid.tile_height) // 4, x // 4 : (x + grid.tile_width) // 4] += logits * w
            weight[y // 4 : (y + grid.tile_height) // 4, x // 4 : (x + grid.tile_width) // 4] += w
    upsampled = torch.nn.functional.interpolate(
        (total / weight)[None], size=(grid.padded_height, grid.padded_width), mode="bilinear", align_corners=False
    )[0]
    return upsampled.argmax(dim=0)[: image.shape[0], : image.shape[1]].numpy().astype(np.uint8)


@pytest.mark.parametrize(
    "size, tile_size, overlap", [((300, 460), 256, 0.25), ((201, 300), 128, 0.5), ((150, 603), 128, 0.25)]
)
def test_streaming_equals_the_whole_scene_blend(s2glc_sample, predictor, size, tile_size, overlap):
    image = real_mosaic(s2glc_sample, *size)
    streamed = predict_image(image, predictor, tile_size=tile_size, overlap=overlap, batch_size=3)
    np.testing.assert_array_equal(streamed, naive_blend(image, predictor, tile_size, overlap))


def test_tiles_cover_the_scene_on_the_logit_grid():
    grid = plan_tiles(601, 10980, 256, 0.25)
    assert (grid.padded_height, grid.padded_width) == (604, 10980)
    assert grid.ys == (0, 192, 348) and grid.xs[-1] == 10980 - 256
    assert all(start % 4 == 0 for start in grid.ys + grid.xs)
    assert all(b - a <= 192 for a, b in zip(grid.xs[:-1], grid.xs[1:], strict=True))
    # Neighbouring ramps cross-fade: they sum to one over an overlap of exactly 64 pixels.
    left, right = blend_weights(0, 256, 1000, 64), blend_weights(192, 256, 1000, 64)
    np.testing.assert_allclose(left[-16:] + right[:16], 1.0, rtol=1e-6)
    assert left[0] == 1.0 and right[-1] < 0.1
    assert plan_tiles(200, 256).single and not plan_tiles(200, 257).single


def border_change_rates(labels: np.ndarray, grid) -> tuple[float, float]:
    """How often neighbouring pixels differ across tile edges, and across every other pixel line."""

    def edges(starts, tile, length):
        return sorted({s for s in starts if s > 0} | {s + tile for s in starts if s + tile < length})

    across_columns = (labels[:, 1:] != labels[:, :-1]).mean(axis=0)  # index i: between columns i and i + 1
    across_rows = (labels[1:] != labels[:-1]).mean(axis=1)
    edge_columns = [x - 1 for x in edges(grid.xs, grid.tile_width, labels.shape[1])]
    edge_rows = [y - 1 for y in edges(grid.ys, grid.tile_height, labels.shape[0])]
    at_edges = np.concatenate([across_columns[edge_columns], across_rows[edge_rows]])
    interior = np.concatenate([np.delete(across_columns, edge_columns), np.delete(across_rows, edge_rows)])
    return float(at_edges.mean()), float(interior.mean())


def test_large_scene_shows_no_seams(s2glc_sample, predictor):
    image = real_mosaic(s2glc_sample, 600, 700)
    blended = predict_image(image, predictor, overlap=0.25)
    at_edges, interior = border_change_rates(blended, plan_tiles(600, 700, 256, 0.25))
    assert interior > 0.005  # the map has structure
    assert at_edges <= 1.25 * interior, (at_edges, interior)

    # Control: the same measure flags hard-stitched tiles (no overlap), so it can see a seam.
    stitched = predict_image(image, predictor, overlap=0.0)
    at_edges, interior = border_change_rates(stitched, plan_tiles(600, 700, 256, 0.0))
    assert at_edges >= 3 * interior, (at_edges, interior)


# ----------------------------------------------------------------------------------------------------------------
# Scaling


def test_scaling_choices(s2glc_sample):
    with rasterio.open(s2glc_sample / "raw-tif" / "s2glc_00017.tif") as dataset:
        raw = np.moveaxis(dataset.read(), 0, -1)
    source = ImageSource(raw, name="s2glc_00017.tif")
    rgb = raw[..., [2, 1, 0]]
    expected = np.array(Image.open(s2glc_sample / "train" / "images" / "s2glc_00017.png").convert("RGB"))

    patch = resolve_scaling(source, (3, 2, 1), "auto")
    assert patch.method == "patch_max_median" and patch.peak == float(rgb.max())
    np.testing.assert_array_equal(patch.apply(rgb), expected)  # the ARAS400k per-patch scaling, exactly
    np.testing.assert_array_equal(resolve_scaling(source, (3, 2, 1), "per_patch_max").apply(rgb), expected)
    with pytest.warns(FutureWarning, match="tile_max is deprecated; use per_patch_max"):
        assert resolve_scaling(source, (3, 2, 1), "tile_max") == Scaling("per_patch_max")
    assert resolve_scaling(source, (3, 2, 1), "scene_max").peak == float(rgb.max())
    gain = resolve_scaling(source, (3, 2, 1), 0.085)
    np.testing.assert_array_equal(gain.apply(rgb), np.clip(rgb * np.float32(0.085), 0, 255).astype(np.uint8))
    assert gain.to_dict()["gain"] == 0.085

    assert check_scaling(ImageSource(expected), "auto") == "none"
    with pytest.raises(ValueError, match="needs 8-bit input, got uint16"):
        check_scaling(source, "none")
    for bad in ("per_pixel", -1, "0"):
        with pytest.raises(ValueError, match="--scaling"):
            check_scaling(source, bad)


def test_scene_scaling_ignores_blocks_of_nodata_and_a_bright_outlier():
    scene = np.full((512, 768, 3), 1000, dtype=np.uint16)
    scene[:256, :256] = 0  # an empty block
    scene[300, 300] = 9000  # one bright pixel (a cloud) in one block
    scaling = resolve_scaling(ImageSource(scene), (1, 2, 3), "patch_max_median")
    assert scaling.peak == 1000.0
    assert resolve_scaling(ImageSource(scene), (1, 2, 3), "scene_max").peak == 9000.0


# ----------------------------------------------------------------------------------------------------------------
# Real rasters through scripts/predict.py


def test_real_rasters_through_predict_script(s2glc_sample, tiny_checkpoint, predictor, tmp_path, clean_env):
    """A real 16-bit 4-band patch and a georeferenced mosaic of real patches, given as one folder."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "s2glc_00042.tif").write_bytes((s2glc_sample / "raw-tif" / "s2glc_00042.tif").read_bytes())
    data = raw_mosaic(s2glc_sample, 600, 700)
    data[:, :40, :] = 0  # a no-data margin, as at the edge of a Sentinel-2 swath
    scene = write_geotiff(inputs / "scene.tif", data, nodata=0, tiled=True, blockxsize=256, blockysize=256)

    result = run_predict(
        clean_env, "--model", tiny_checkpoint, "--output_dir", tmp_path / "out", "--bands", "3,2,1", inputs
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert files_in(out) == [
        "s2glc_00042_classes.png",
        "s2glc_00042_color.png",
        "s2glc_00042_stats.csv",
        "s2glc_00042_stats.json",
        "scene_classes.tif",
        "scene_color.png",
        "scene_stats.csv",
        "scene_stats.json",
    ]

    # The patch (no CRS): a PNG class map. Scaled by the default, the raw patch is exactly the ARAS-style PNG, so
    # the maps agree pixel for pixel.
    classes = Image.open(out / "s2glc_00042_classes.png")
    png = np.array(Image.open(s2glc_sample / "train" / "images" / "s2glc_00042.png").convert("RGB"))
    np.testing.assert_array_equal(np.array(classes), predict_image(png, predictor))
    recorded = json.loads(classes.text["lale_prediction"])
    stats = json.loads((out / "s2glc_00042_stats.json").read_text())
    assert recorded == stats["prediction"]
    assert recorded["bands"] == [3, 2, 1] and recorded["input_dtype"] == "uint16"
    assert recorded["scaling"]["method"] == "patch_max_median" and recorded["scaling"]["peak"] > 255
    assert stats["total_km2"] is None and stats["area_note"].startswith("not georeferenced")
    assert sum(item["pixels"] for item in stats["classes"]) == 256 * 256
    color = Image.open(out / "s2glc_00042_color.png")
    assert color.height >= 256 and color.width > 256  # the map and a legend beside it

    # The mosaic: a GeoTIFF with the scene's CRS, transform and size, a colour table and no data kept.
    with rasterio.open(out / "scene_classes.tif") as classes, rasterio.open(scene) as source:
        assert classes.crs == source.crs and classes.transform == source.transform
        assert (classes.height, classes.width, classes.count, classes.dtypes[0]) == (600, 700, 1, "uint8")
        assert classes.nodata == 255
        colormap = classes.colormap(1)
        assert [colormap[index][:3] for index in range(7)] == [tuple(color) for color in ARAS400K_PALETTE]
        assert json.loads(classes.tags()["LALE_PREDICTION"])["scaling"]["method"] == "patch_max_median"
        labels = classes.read(1)
    assert (labels[:40] == 255).all() and (labels[40:] != 255).all()
    in_memory = predict_image(np.moveaxis(data, 0, -1), predictor, bands=(3, 2, 1))
    np.testing.assert_array_equal(labels[40:], in_memory[40:])

    stats = json.loads((out / "scene_stats.json").read_text())
    assert stats["pixel_area_m2"] == 100.0
    assert sum(item["pixels"] for item in stats["classes"]) == 600 * 700
    assert stats["total_km2"] == pytest.approx(600 * 700 * 100 / 1e6)  # 42 km²
    assert sum(item["km2"] for item in stats["classes"]) == pytest.approx(42.0)
    assert sum(item["percent"] for item in stats["classes"]) == pytest.approx(100.0)
    nodata = [item for item in stats["classes"] if item["id"] == 255]
    assert nodata == [
        {"id": 255, "label": "no data", "pixels": 40 * 700, "percent": pytest.approx(40 / 6), "km2": pytest.approx(2.8)}
    ]
    counts = np.bincount(labels.ravel(), minlength=256)
    assert [item["pixels"] for item in stats["classes"]] == [int(counts[item["id"]]) for item in stats["classes"]]
    csv_rows = (out / "scene_stats.csv").read_text().splitlines()
    assert csv_rows[0] == "class_id,label,pixels,percent,km2" and len(csv_rows) == 1 + len(stats["classes"])


def test_area_statistics_in_geographic_coordinates():
    # One degree of latitude from the equator, 0.5 degrees wide: a sphere gives R² * dλ * (sin 1° - sin 0°).
    transform = from_origin(10.0, 1.0, 0.005, 0.01)
    statistics = AreaStatistics({0: "a", 1: "b"}, 100, 100, rasterio.crs.CRS.from_epsg(4326), transform)
    labels = np.zeros((100, 100), dtype=np.uint8)
    labels[:, 50:] = 1
    statistics.update(0, labels[:60])
    statistics.update(60, labels[60:])
    stats = statistics.to_dict()
    expected_km2 = 6371007.2**2 * np.radians(0.5) * np.sin(np.radians(1.0)) / 1e6
    assert stats["total_km2"] == pytest.approx(expected_km2, rel=1e-9)
    assert [item["km2"] for item in stats["classes"]] == pytest.approx([expected_km2 / 2] * 2, rel=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# NaN and infinity are no data (real rasters written as float32 GeoTIFFs)


def float_scene(s2glc_sample: Path, height: int = 600, width: int = 700) -> np.ndarray:
    """The raw uint16 mosaic of real patches as float32 reflectance counts (exact: every uint16 fits float32)."""
    return raw_mosaic(s2glc_sample, height, width).astype(np.float32)


def predict_raster(path: Path, predictor, out: Path, **kwargs) -> tuple[np.ndarray, dict]:
    result = predict_file(path, predictor, out, bands=(3, 2, 1), progress=False, **kwargs)
    with rasterio.open(result["outputs"]["classes"]) as classes:
        return classes.read(1), result


def test_declared_nan_nodata_is_no_data_everywhere(s2glc_sample, predictor, tmp_path):
    """A NaN margin declared as nodata=NaN gives exactly the map of the same scene stored as uint16 with nodata=0."""
    data = float_scene(s2glc_sample)
    data[:, :40, :] = np.nan  # the swath edge, all bands
    nan_scene = write_geotiff(
        tmp_path / "nan_nodata.tif", data, nodata=np.nan, tiled=True, blockxsize=256, blockysize=256
    )
    reference = data.copy()
    reference[:, :40, :] = 0
    zero_scene = write_geotiff(tmp_path / "zero_nodata.tif", reference.astype(np.uint16), nodata=0)

    labels, result = predict_raster(nan_scene, predictor, tmp_path / "out")
    expected, expected_result = predict_raster(zero_scene, predictor, tmp_path / "out")

    assert (labels[:40] == 255).all() and (labels[40:] != 255).all()
    np.testing.assert_array_equal(labels, expected)
    assert result["prediction"]["scaling"]["peak"] == expected_result["prediction"]["scaling"]["peak"]
    nodata = [item for item in result["classes"] if item["id"] == 255]
    assert nodata and nodata[0]["pixels"] == 40 * 700 and nodata[0]["km2"] == pytest.approx(2.8)
    assert sum(item["pixels"] for item in result["classes"] if item["id"] != 255) == 560 * 700


def test_nan_and_inf_pixels_without_declared_nodata_leave_the_scene_scaled(s2glc_sample, predictor, tmp_path):
    """One non-finite value in every 256x256 block (the divisor was 0 and the scene black): the pixels are no data,
    and everything else is the map of the same scene with zeros there."""
    data = float_scene(s2glc_sample)
    rng = np.random.default_rng(0)
    rows, cols = zip(
        *[
            (row + int(rng.integers(0, 88)), col + int(rng.integers(0, 188)))
            for row in (0, 256, 512)
            for col in (0, 256, 512)
        ],
        strict=True,
    )
    holes = np.zeros((600, 700), dtype=bool)
    holes[rows, cols] = True
    reference = data.copy()
    reference[:, holes] = 0
    for index, (row, col) in enumerate(zip(rows, cols, strict=True)):
        data[index % 3, row, col] = (np.nan, np.inf, -np.inf)[index % 3]  # in one selected band only
    holed = write_geotiff(tmp_path / "holed.tif", data)
    zeroed = write_geotiff(tmp_path / "zeroed.tif", reference)

    labels, result = predict_raster(holed, predictor, tmp_path / "out")
    expected, expected_result = predict_raster(zeroed, predictor, tmp_path / "out")

    assert result["prediction"]["scaling"]["peak"] == expected_result["prediction"]["scaling"]["peak"] > 255
    assert (labels[holes] == 255).all()
    np.testing.assert_array_equal(labels[~holes], expected[~holes])
    assert (expected != 255).all()
    nodata = [item for item in result["classes"] if item["id"] == 255]
    assert nodata[0]["pixels"] == holes.sum() == 9


def test_per_patch_max_tile_with_nan_is_not_blacked_out(s2glc_sample, predictor, tmp_path):
    """A tile holding NaN or inf is divided by the maximum of its finite pixels (NaN made it all black)."""
    with rasterio.open(s2glc_sample / "raw-tif" / "s2glc_00042.tif") as dataset:
        data = dataset.read().astype(np.float32)
    holes = np.zeros(data.shape[1:], dtype=bool)
    holes[100, 100:110] = holes[7, 9] = True
    reference = data.copy()
    reference[:, holes] = 0
    data[:, 100, 100:110] = np.nan
    data[0, 7, 9] = np.inf
    holed = write_geotiff(tmp_path / "holed.tif", data)
    zeroed = write_geotiff(tmp_path / "zeroed.tif", reference)

    labels, result = predict_raster(holed, predictor, tmp_path / "out", scaling="per_patch_max")
    expected, _ = predict_raster(zeroed, predictor, tmp_path / "out", scaling="per_patch_max")

    assert result["prediction"]["scaling"]["method"] == "per_patch_max"
    assert (labels[holes] == 255).all()
    np.testing.assert_array_equal(labels[~holes], expected[~holes])
    assert len(np.unique(expected)) > 1
    rgb, reference_rgb = (np.moveaxis(array, 0, -1)[..., [2, 1, 0]] for array in (data, reference))
    np.testing.assert_array_equal(Scaling("per_patch_max").apply(rgb), Scaling("per_patch_max").apply(reference_rgb))


@pytest.mark.parametrize("scaling", ["auto", "per_patch_max", "0.085"])
def test_a_scene_without_a_valid_pixel_is_an_error_naming_it(
    s2glc_sample, tiny_checkpoint, predictor, tmp_path, clean_env, scaling
):
    data = np.full((4, 300, 280), np.nan, dtype=np.float32)
    data[1, :10] = np.inf  # finite nowhere in all of the bands
    scene = write_geotiff(tmp_path / "all_nan.tif", data, nodata=np.nan)
    out = tmp_path / "out"
    with pytest.raises(InferenceError, match=r"all_nan\.tif: no valid pixel"):
        predict_file(scene, predictor, out, bands=(3, 2, 1), scaling=scaling, progress=False)
    assert files_in(out) == []
    with pytest.raises(InferenceError, match=r"<image>: no valid pixel"):
        predict_image(np.moveaxis(data, 0, -1), predictor, bands=(3, 2, 1), scaling=scaling)
    if scaling == "auto":
        result = run_predict(
            clean_env, "--model", tiny_checkpoint, "--output_dir", out, "--bands", "3,2,1", "--no_progress", scene
        )
        assert result.returncode == 2 and "all_nan.tif: no valid pixel" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and files_in(out) == []


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear errors, no partial outputs


def test_bad_inputs_give_clear_errors_and_write_nothing(s2glc_sample, tiny_checkpoint, predictor, tmp_path):
    good = s2glc_sample / "val" / "images" / "s2glc_00260.png"
    garbage_png = tmp_path / "garbage.png"
    garbage_png.write_bytes(b"this is not an image" * 10)
    garbage_tif = tmp_path / "garbage.tif"
    garbage_tif.write_bytes(b"II*\x00 not a tiff at all" * 10)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    two_bands = write_geotiff(tmp_path / "two_bands.tif", np.ones((2, 64, 64), dtype=np.uint16))
    out = tmp_path / "out"

    cases = [
        ([good, garbage_png], {}, InferenceError, r"garbage\.png: cannot read it as an image"),
        ([garbage_tif], {}, InferenceError, r"garbage\.tif: cannot read it as a raster"),
        ([good, empty], {}, InferenceError, r"empty\.png: the file is empty \(0 bytes\)"),
        (
            [two_bands],
            {"bands": "3,2,1"},
            InferenceError,
            r"two_bands\.tif: has 2 band\(s\), but --bands asks for band 3",
        ),
        ([two_bands], {}, InferenceError, r"two_bands\.tif: has 2 bands and no red/green/blue .* e\.g\. --bands 3,2,1"),
        ([tmp_path / "missing.png"], {}, FileNotFoundError, r"missing\.png: no such file"),
        ([good], {"bands": "1,2"}, InferenceError, r"expected three band numbers"),
        ([good], {"tile_size": 100}, InferenceError, r"--tile_size 100"),
        ([good], {"overlap": 0.9}, InferenceError, r"--overlap 0.9"),
        ([good], {"batch_size": 0}, InferenceError, r"--batch_size 0: expected a positive integer"),
        ([good], {"preview_size": 0}, InferenceError, r"--preview_size 0: expected a positive integer"),
        (
            [good],
            {"scaling": "per_pixel"},
            InferenceError,
            r"--scaling 'per_pixel': expected one of auto, none, "
            r"per_patch_max",
        ),
    ]
    for inputs, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            predict_paths(inputs, predictor, out, progress=False, **kwargs)
        assert files_in(out) == [], (inputs, kwargs)

    with pytest.raises(InferenceError, match="zero size"):
        predict_image(np.zeros((0, 5, 3), dtype=np.uint8), predictor)


@pytest.mark.parametrize(
    "model, error, message",
    [
        ("./no/such/checkpoint", FileNotFoundError, r"--model \./no/such/checkpoint: no such folder or \.onnx file"),
        ("missing.onnx", FileNotFoundError, r"--model missing\.onnx: no such ONNX file"),
        ("org/not-cached", ValueError, r"--model org/not-cached: no such local folder or \.onnx file, and the Hub id"),
    ],
)
def test_wrong_model_reference_is_a_clear_error(model, error, message):
    with pytest.raises(error, match=message):
        load_predictor(model)


def test_folder_without_checkpoint_and_non_onnx_file_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="holds no config.json"):
        load_predictor(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0")
    with pytest.raises(ValueError, match="a file that is not an .onnx model"):
        load_predictor(weights)


def test_a_read_failure_midway_leaves_no_partial_outputs(s2glc_sample, predictor, tmp_path):
    data = raw_mosaic(s2glc_sample, 512, 512)
    scene = write_geotiff(tmp_path / "cut.tif", data, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    size = scene.stat().st_size
    with open(scene, "r+b") as handle:  # damage the compressed blocks of the lower right quarter
        handle.seek(int(size * 0.6))
        handle.write(b"\xff" * int(size * 0.2))
    out = tmp_path / "out"
    # per_patch_max needs no first pass, so the damaged block is met only after the class raster has been started.
    with pytest.raises(InferenceError, match=r"cut\.tif: cannot read rows"):
        predict_file(scene, predictor, out, bands=(3, 2, 1), scaling="per_patch_max", progress=False)
    assert files_in(out) == []


def test_cli_error_exits_2_naming_the_problem(s2glc_sample, tmp_path, clean_env):
    out = tmp_path / "out"
    result = run_predict(
        clean_env, "--model", tmp_path / "nowhere", "--output_dir", out, s2glc_sample / "val" / "images"
    )
    assert result.returncode == 2
    assert f"--model {tmp_path / 'nowhere'}: no such folder" in result.stderr and "Traceback" not in result.stderr
    assert files_in(out) == []


def test_missing_optional_extras_are_named(s2glc_sample, clean_env, tmp_path):
    # Block the optional packages the way an install without the extras lacks them.
    code = (
        "import sys; sys.modules['rasterio'] = None; sys.modules['onnxruntime'] = None\n"
        "from lale_hf.inference import open_source, load_predictor\n"
        "for call in (lambda: open_source(sys.argv[1]), lambda: load_predictor(sys.argv[2])):\n"
        "    try:\n        call()\n    except ImportError as error:\n        print(error)\n"
    )
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, "-c", code, str(s2glc_sample / "raw-tif" / "s2glc_00003.tif"), str(model)],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'lale-hf[geo]'" in result.stdout and "pip install 'lale-hf[onnx]'" in result.stdout


def test_importing_inference_loads_no_optional_extra(clean_env):
    code = (
        "import sys, lale_hf.inference, lale_hf.preprocessing\n"
        "print(sorted(m for m in ('rasterio', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=clean_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_existing_outputs_need_overwrite(s2glc_sample, predictor, tmp_path):
    patch = s2glc_sample / "val" / "images" / "s2glc_00270.png"
    first = predict_file(patch, predictor, tmp_path, progress=False)
    before = Path(first["outputs"]["stats_json"]).read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_file(patch, predictor, tmp_path, progress=False)
    predict_file(patch, predictor, tmp_path, progress=False, overwrite=True, overlap=0.0)
    assert Path(first["outputs"]["stats_json"]).read_text() != before
    assert not list(tmp_path.glob(".*partial"))
