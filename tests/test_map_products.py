"""Map products through the prediction pipeline: confidence and probability rasters, TTA, GeoPackage polygons, on
real Sentinel-2 patches, and their bad inputs."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")
from rasterio.features import rasterize  # noqa: E402
from test_distributed_prediction import CRS_UTM, ORIGIN, mosaic_array, real_patches, write_geotiff  # noqa: E402
from test_inference import border_change_rates  # noqa: E402

from lale_hf.inference import InferenceError, load_predictor, plan_tiles, predict_paths  # noqa: E402


@pytest.fixture(scope="module")
def real_scene(s2glc_sample, tmp_path_factory) -> Path:
    """A 512x768 georeferenced (UTM) mosaic of six real patches: three tile rows, several blocks."""
    folder = tmp_path_factory.mktemp("products")
    return write_geotiff(folder / "scene.tif", mosaic_array(real_patches(s2glc_sample, 6), 3), *ORIGIN)


def test_confidence_is_the_softmax_maximum_of_the_whole_image_logits(s2glc_sample, lale_tiny_checkpoint, tmp_path):
    patch = sorted((s2glc_sample / "val" / "images").glob("*.png"))[3]
    result = predict_paths([patch], lale_tiny_checkpoint, tmp_path, progress=False, save_confidence=True)[0]
    with rasterio.open(result["outputs"]["confidence"]) as dataset:
        confidence = dataset.read(1).astype(int)
        assert dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and dataset.nodata == 0
    predictor = load_predictor(lale_tiny_checkpoint)
    image = np.asarray(Image.open(patch).convert("RGB"))
    logits = predictor(predictor.normalize(image)[None])
    upsampled = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    expected = np.rint(torch.softmax(upsampled[0], dim=0).max(dim=0).values.numpy() * 255).astype(int)
    assert np.abs(confidence - expected).max() <= 1 and (confidence == expected).mean() > 0.999
    assert result["products"]["confidence"]["path"] == f"{patch.stem}_confidence.tif"


def test_confidence_has_no_seams_and_probabilities_sum_to_255(s2glc_sample, lale_tiny_checkpoint, tmp_path):
    from test_inference import real_mosaic

    image = real_mosaic(s2glc_sample, 600, 700)
    path = tmp_path / "mosaic.png"
    Image.fromarray(image).save(path)

    def products(overlap: float, folder: str):
        settings = {"overlap": overlap, "save_confidence": True, "save_probabilities": True, "progress": False}
        result = predict_paths([path], lale_tiny_checkpoint, tmp_path / folder, **settings)[0]
        with (
            rasterio.open(result["outputs"]["confidence"]) as c,
            rasterio.open(result["outputs"]["probabilities"]) as p,
        ):
            return c.read(1).astype(float), p.read().astype(int), p.descriptions

    def edge_jumps(values: np.ndarray, overlap: float) -> tuple[float, float]:
        # border_change_rates on a map of "changes by more than 8 levels" between neighbours.
        grid = plan_tiles(600, 700, 256, overlap)
        steps_x = np.abs(np.diff(values, axis=1)) > 8
        steps_y = np.abs(np.diff(values, axis=0)) > 8
        at_edges_x, interior_x = border_change_rates(np.pad(steps_x, ((0, 0), (0, 1))).astype(np.uint8), grid)
        at_edges_y, interior_y = border_change_rates(np.pad(steps_y, ((0, 1), (0, 0))).astype(np.uint8), grid)
        return at_edges_x + at_edges_y, interior_x + interior_y

    confidence, probabilities, names = products(0.25, "blended")
    totals = probabilities.sum(axis=0)
    assert np.abs(totals - 255).max() <= len(names) / 2, (totals.min(), totals.max())
    assert names[0] == "probability of Tree x 255" and len(names) == 7
    at_edges, interior = edge_jumps(confidence, 0.25)
    stitched, _, _ = products(0.0, "stitched")
    control_edges, control_interior = edge_jumps(stitched, 0.0)
    assert control_edges >= 2 * control_interior, (control_edges, control_interior)  # the measure sees seams
    assert at_edges <= 1.25 * interior, (at_edges, interior)


def test_geopackage_polygons_reproduce_the_class_map_and_its_areas(real_scene, lale_tiny_checkpoint, tmp_path):
    settings = {"progress": False, "vectorize": True, "block_rows": 1, "tta": "flip"}
    result = predict_paths([real_scene], lale_tiny_checkpoint, tmp_path, **settings)[0]
    gpkg = Path(result["outputs"]["polygons"])
    assert not Path(tmp_path / "scene_confidence.tif").exists()  # computed for the mean confidence only
    info = subprocess.run(["ogrinfo", "-so", "-al", str(gpkg)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "land_cover" in info.stdout and "mean_confidence" in info.stdout, info.stderr
    meta, _, geometries, fields = pyogrio.raw.read(gpkg)
    columns = dict(zip(meta["fields"], fields, strict=True))
    assert f"Feature Count: {len(geometries)}" in info.stdout
    import shapely

    shapes = shapely.from_wkb(geometries)
    with rasterio.open(result["outputs"]["classes"]) as dataset:
        labels, transform = dataset.read(1), dataset.transform
        assert dataset.crs == CRS_UTM
    burnt = rasterize(
        zip(shapes, columns["class_index"], strict=True), out_shape=labels.shape, transform=transform, fill=255
    )
    assert (burnt == labels).mean() >= 0.999
    confidences = columns["mean_confidence"]
    assert ((confidences > 0) & (confidences <= 1)).all()
    for item in result["classes"]:
        area = columns["area_m2"][columns["class_index"] == item["id"]].sum()
        assert area == pytest.approx(item["km2"] * 1e6, rel=1e-3), item
    # One polygon per 4-connected region of a class: none is cut in two at a block border.
    from scipy import ndimage

    regions = sum(ndimage.label(labels == index)[1] for index in np.unique(labels) if index != 255)
    assert len(geometries) == regions
    recorded = result["products"]["polygons"]
    assert recorded["path"] == "scene_polygons.gpkg" and recorded["settings"]["min_mapping_unit"] == 0
    assert json.loads((tmp_path / "scene_stats.json").read_text())["prediction"]["tta"] == "flip"


def test_bad_map_product_settings_give_clear_errors_and_no_output(
    s2glc_sample, real_scene, lale_tiny_checkpoint, tmp_path
):
    from test_tta import export_static_onnx

    from lale_hf import LaleForSemanticSegmentation

    patch = sorted((s2glc_sample / "val" / "images").glob("*.png"))[0]
    output = tmp_path / "out"

    def refused(inputs, model, match, **settings):
        with pytest.raises(InferenceError, match=match):
            predict_paths(inputs, model, output, progress=False, **settings)
        assert not output.exists() or not any(output.iterdir())

    refused(
        [patch], lale_tiny_checkpoint, r"s2glc_\d+\.png: --vectorize needs a projected CRS .* no CRS", vectorize=True
    )
    refused([real_scene], lale_tiny_checkpoint, "--min_mapping_unit -3", vectorize=True, min_mapping_unit=-3)
    refused([real_scene], lale_tiny_checkpoint, "--tta 'd8'", tta="d8")
    model = LaleForSemanticSegmentation.from_pretrained(lale_tiny_checkpoint, use_safetensors=True)
    static = export_static_onnx(model, tmp_path / "static.onnx", shape=(1, 3, 256, 256))
    refused([patch], static, r"--tta flip with the ONNX model .*static\.onnx.*fixed axes", tta="flip")
