"""Class raster to GeoPackage polygons: block-wise polygonising is exact (rasterising the polygons back gives the raster
after the minimum mapping unit, no region is cut at a block border), areas and mean confidence match the pixels, the
file opens with pyogrio and GDAL's ogrinfo, simplification keeps a coverage, and bad input leaves no file."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
import shapely
import torch
from pyogrio import list_layers
from pyogrio.raw import read
from rasterio.features import rasterize, sieve
from rasterio.transform import from_origin
from scipy import ndimage

from lale_hf.inference.vectorize import VectorizeError, VectorizeSettings, sieved_blocks, vectorize_class_raster


BLOCK_ROWS = 64
PIXEL = 10.0  # metres
TRANSFORM = from_origin(500_000.0, 5_100_000.0, PIXEL, PIXEL)
NAMES = {0: "Tree", 1: "Shrub", 2: "Grass", 3: "Crop", 4: "Built-up", 5: "Barren", 6: "Water"}


def synthetic_classes(height: int = 520, width: int = 300, seed: int = 0) -> np.ndarray:
    """Irregular regions of 6 classes (argmax of smooth random fields), 3% single-pixel noise, a U and an upside-down
    U of class 6 whose arms cross block borders and join below / above them, and no-data (255) patches."""
    generator = torch.Generator().manual_seed(seed)
    fields = torch.randn(1, 6, height // 24 + 2, width // 24 + 2, generator=generator)
    smooth = torch.nn.functional.interpolate(fields, size=(height, width), mode="bilinear", align_corners=False)
    classes = smooth[0].argmax(0).numpy().astype(np.uint8)
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width)) < 0.03
    classes[noise] = rng.integers(0, 6, noise.sum())
    classes[40:156, 10:14] = 6  # U: two arms through the borders at 64 and 128, joined in the block of 128-191
    classes[40:156, 40:44] = 6
    classes[150:156, 10:44] = 6
    classes[230:236, 200:240] = 6  # upside-down U: one region above the border at 256 that splits below it
    classes[230:330, 200:204] = 6
    classes[230:330, 236:240] = 6
    classes[400:430, 100:160] = 255
    classes[rng.random((height, width)) < 0.001] = 255
    return classes


def write_raster(path, classes, crs="EPSG:32633", transform=TRANSFORM, names=True):
    profile = {"driver": "GTiff", "height": classes.shape[0], "width": classes.shape[1], "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile, crs=crs, transform=transform, nodata=255) as dataset:
        dataset.write(classes, 1)
        if names:
            dataset.update_tags(1, **{f"CLASS_{index}": name for index, name in NAMES.items()})
    return path


def read_layer(path):
    meta, _, geometries, field_data = read(path)
    fields = dict(zip(meta["fields"], field_data))
    return meta, shapely.from_wkb(geometries), fields


def reference_after_mmu(path, mmu: int) -> np.ndarray:
    with rasterio.open(path) as dataset:
        settings = VectorizeSettings(min_mapping_unit=mmu, block_rows=BLOCK_ROWS)
        return np.concatenate([rows for _, rows in sieved_blocks(dataset, settings, (255,))])


def components(classes: np.ndarray) -> int:
    return sum(ndimage.label(classes == value)[1] for value in np.unique(classes) if value != 255)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectorize")
    classes = synthetic_classes()
    rng = np.random.default_rng(1)
    confidence = rng.integers(0, 256, classes.shape, dtype=np.uint8)
    write_raster(folder / "classes.tif", classes)
    with rasterio.open(
        folder / "confidence.tif",
        "w",
        driver="GTiff",
        height=classes.shape[0],
        width=classes.shape[1],
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=TRANSFORM,
    ) as dataset:
        dataset.write(confidence, 1)
    return folder, classes, confidence


@pytest.mark.parametrize("mmu", [0, 6])
def test_polygons_reproduce_the_raster_after_mmu(scene, tmp_path, mmu):
    folder, classes, confidence = scene
    output = tmp_path / "polygons.gpkg"
    summary = vectorize_class_raster(
        folder / "classes.tif",
        output,
        confidence_raster=folder / "confidence.tif",
        min_mapping_unit=mmu,
        block_rows=BLOCK_ROWS,
    )
    expected = reference_after_mmu(folder / "classes.tif", mmu)
    meta, geometries, fields = read_layer(output)
    assert meta["geometry_type"] == "Polygon" and "32633" in meta["crs"]
    assert set(fields) == {"class_name", "class_index", "pixel_count", "area_m2", "mean_confidence"}
    assert summary["features"] == len(geometries)

    # Rasterised back, the polygons are the raster after the MMU, pixel for pixel.
    burnt = rasterize(
        zip(geometries, fields["class_index"].tolist()), out_shape=classes.shape, transform=TRANSFORM, fill=255
    )
    assert np.array_equal(burnt, expected)
    if mmu:
        assert (expected != classes).mean() > 0.01  # the MMU removed the noise pixels
        whole_scene = sieve(classes, size=mmu, mask=classes != 255, connectivity=4)
        assert (burnt == whole_scene).mean() >= 0.999

    # One polygon per 4-connected region: none is cut in two at a block border, and several cross one.
    assert all(geometry.geom_type == "Polygon" and geometry.is_valid for geometry in geometries)
    assert len(geometries) == components(expected)
    top_rows = (TRANSFORM.f - shapely.bounds(geometries)[:, 3]) / PIXEL
    bottom_rows = (TRANSFORM.f - shapely.bounds(geometries)[:, 1]) / PIXEL
    crossing = np.floor(top_rows / BLOCK_ROWS) != np.floor((bottom_rows - 1) / BLOCK_ROWS)
    assert crossing.sum() >= 10
    u_shape = shapely.Point(*rasterio.transform.xy(TRANSFORM, 100, 11))  # inside an arm of the U
    (holding,) = [index for index, geometry in enumerate(geometries) if geometry.contains(u_shape)]
    regions, _ = ndimage.label(expected == 6)
    assert fields["pixel_count"][holding] == (regions == regions[100, 11]).sum() > 2 * 116 * 4

    # Areas: the field is pixels x 100 m², and the polygons' own areas agree within 0.1% per class (exactly here).
    assert np.array_equal(fields["area_m2"], fields["pixel_count"] * PIXEL**2)
    for index in np.unique(expected[expected != 255]):
        pixel_area = (expected == index).sum() * PIXEL**2
        chosen = fields["class_index"] == index
        assert fields["area_m2"][chosen].sum() == pixel_area
        assert shapely.area(geometries[chosen]).sum() == pytest.approx(pixel_area, rel=1e-3)
        assert summary["classes"][int(index)]["area_m2"] == pixel_area
        assert set(fields["class_name"][chosen]) == {NAMES[int(index)]}

    # Mean confidence: the mean of the confidence raster over each polygon's pixels, 0-255 read as 0-1.
    numbers = rasterize(
        zip(geometries, range(1, len(geometries) + 1)), out_shape=classes.shape, transform=TRANSFORM, dtype="int32"
    )
    sums = np.bincount(numbers.ravel(), weights=confidence.ravel(), minlength=len(geometries) + 1)[1:]
    counts = np.bincount(numbers.ravel(), minlength=len(geometries) + 1)[1:]
    assert np.array_equal(counts, fields["pixel_count"])
    np.testing.assert_allclose(fields["mean_confidence"], sums / counts / 255, rtol=1e-12)

    ogrinfo = shutil.which("ogrinfo")
    if ogrinfo is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("GDAL's ogrinfo (Debian gdal-bin) is not installed")
        pytest.skip("GDAL's ogrinfo (Debian gdal-bin) is not installed")
    result = subprocess.run([ogrinfo, "-so", "-al", str(output)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"Feature Count: {len(geometries)}" in result.stdout and "Geometry: Polygon" in result.stdout
    assert "mean_confidence: Real" in result.stdout


def test_simplification_keeps_a_coverage(scene, tmp_path):
    folder, classes, _ = scene
    plain, simplified = tmp_path / "plain.gpkg", tmp_path / "simplified.gpkg"
    vectorize_class_raster(folder / "classes.tif", plain, min_mapping_unit=6, block_rows=BLOCK_ROWS)
    # Small write batches: edges between polygons of different batches must stay shared too.
    summary = vectorize_class_raster(
        folder / "classes.tif",
        simplified,
        min_mapping_unit=6,
        simplify_tolerance=15.0,
        block_rows=BLOCK_ROWS,
        write_batch=300,
    )
    assert summary["settings"]["write_batch"] == 300 and summary["settings"]["simplify_tolerance"] == 15.0
    _, before, _ = read_layer(plain)
    _, after, fields = read_layer(simplified)
    assert "mean_confidence" not in fields  # no confidence raster given
    assert len(after) == len(before)
    assert shapely.get_num_coordinates(after).sum() < 0.8 * shapely.get_num_coordinates(before).sum()
    assert all(geometry.is_valid and not geometry.is_empty for geometry in after)
    # No overlaps (areas add up to the union's) and no gaps (the union is the unsimplified one's).
    union = shapely.union_all(after)
    assert shapely.area(after).sum() == pytest.approx(union.area, rel=1e-9)
    assert union.area == pytest.approx(shapely.union_all(before).area, rel=1e-9)
    assert shapely.coverage_is_valid(after)
    # The pixel-count areas are the raster's, whatever the drawing.
    np.testing.assert_array_equal(fields["area_m2"], fields["pixel_count"] * PIXEL**2)


def assert_no_output(folder):
    assert [path.name for path in folder.iterdir()] == []


def test_bad_input_is_refused_and_leaves_no_file(scene, tmp_path):
    folder, classes, _ = scene
    output_folder = tmp_path / "out"
    output_folder.mkdir()
    output = output_folder / "polygons.gpkg"
    no_crs = write_raster(tmp_path / "no-crs.tif", classes, crs=None, transform=rasterio.Affine.identity())
    with pytest.raises(VectorizeError, match=r"no-crs\.tif: the raster has no CRS"):
        vectorize_class_raster(no_crs, output)
    degrees = write_raster(
        tmp_path / "degrees.tif", classes, crs="EPSG:4326", transform=from_origin(10, 50, 1e-4, 1e-4)
    )
    with pytest.raises(VectorizeError, match=r"geographic \(degrees\).*reproject"):
        vectorize_class_raster(degrees, output)
    with pytest.raises(VectorizeError, match=r"--min_mapping_unit -1: expected a number of pixels >= 0"):
        vectorize_class_raster(folder / "classes.tif", output, min_mapping_unit=-1)
    with pytest.raises(VectorizeError, match="--simplify_tolerance"):
        vectorize_class_raster(folder / "classes.tif", output, simplify_tolerance=-1.0)
    empty = write_raster(tmp_path / "empty.tif", np.full((70, 30), 255, np.uint8))
    with pytest.raises(VectorizeError, match="all no data"):
        vectorize_class_raster(empty, output, block_rows=BLOCK_ROWS)
    small = write_raster(tmp_path / "small.tif", classes[:100])
    with pytest.raises(VectorizeError, match="differs from the class raster's"):
        vectorize_class_raster(small, output, confidence_raster=folder / "confidence.tif")
    with pytest.raises(VectorizeError, match=r"\.gpkg"):
        vectorize_class_raster(folder / "classes.tif", output_folder / "polygons.shp")
    assert_no_output(output_folder)
    output.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        vectorize_class_raster(folder / "classes.tif", output)
    assert output.read_bytes() == b"keep me"


def test_names_without_tags_and_an_explicit_layer(tmp_path):
    classes = np.zeros((8, 8), np.uint8)
    classes[2:5, 2:5] = 3
    path = write_raster(tmp_path / "plain.tif", classes, names=False)
    summary = vectorize_class_raster(path, tmp_path / "a.gpkg", layer="classes")
    assert summary["classes"] == {
        0: {"name": "class 0", "polygons": 1, "pixels": 55, "area_m2": 5500.0},
        3: {"name": "class 3", "polygons": 1, "pixels": 9, "area_m2": 900.0},
    }
    assert [list(entry) for entry in list_layers(tmp_path / "a.gpkg")] == [["classes", "Polygon"]]
    _, geometries, fields = read_layer(tmp_path / "a.gpkg")
    assert sorted(fields["class_name"]) == ["class 0", "class 3"]
    assert geometries[list(fields["class_index"]).index(0)].interiors  # the square is a hole in class 0
    vectorize_class_raster(path, tmp_path / "a.gpkg", id2label={0: "Tree", 3: "Crop"}, overwrite=True)
    _, _, fields = read_layer(tmp_path / "a.gpkg")
    assert sorted(fields["class_name"]) == ["Crop", "Tree"]
