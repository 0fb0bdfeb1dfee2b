"""Polygons of a class raster as a GeoPackage layer, block of rows by block of rows, exact across block borders.

Each polygon is one 4-connected region of one class (after the minimum mapping unit), with the fields
`class_name`, `class_index`, `pixel_count`, `area_m2` (pixel count times the pixel's area in square metres, so the
areas are the raster's own area statistics, unchanged by simplification) and `mean_confidence` (the mean of an
optional uint8 confidence raster over the polygon's pixels, 0-255 read as 0-1; the field is absent without one).
No-data pixels (class 255, or the raster's nodata value) belong to no polygon.

How memory stays bounded, and why the result is exact:
1. Minimum mapping unit (MMU, pixels): regions of fewer pixels are merged into a neighbour by GDAL's sieve
   (`rasterio.features.sieve`, 4-connected, no-data never merged into) run on each block with a halo of MMU rows
   above and below. A region smaller than the MMU spans fewer rows than the halo, so whether a region touching the
   block is small is decided exactly; which neighbour absorbs it can differ from a sieve of the whole scene where
   the neighbours' sizes are cut by the halo (rare: measured in the tests against a whole-scene sieve).
2. Each block is polygonised in pixel coordinates (`rasterio.features.shapes`, 4-connected), and the polygons are
   burnt back as a label raster (exact for polygons on pixel edges). Labels of the same class facing each other
   across a block border are joined (union-find); a region is finished, its pieces unioned (exact: integer
   coordinates) and written, once the block below no longer continues it. Memory holds one block (plus halo) and
   the regions still open at the current border.
3. Coordinates go from pixels to the CRS through the raster's transform, applied to every vertex once, so
   neighbouring polygons share their border vertices exactly.

Simplification (`simplify_tolerance`, map units): shapely's `coverage_simplify` (Visvalingam-Whyatt; the tolerance is
roughly the square root of the area of the triangles removed) on batches of finished polygons, which moves an edge
shared by two polygons once for both: no gaps and no overlaps appear. Only edges inside a batch are simplified;
edges to polygons of another batch, to no-data and at the scene border keep their pixel steps.

Areas need a projected CRS: a raster without CRS, or with a geographic one (degrees), is refused; reproject it
first (e.g. `gdalwarp -t_srs EPSG:326XX`). The GeoPackage (version 1.2, readable by older GDAL and QGIS) is written
to a temporary sibling and renamed when complete; an error leaves no file.
"""

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..file_utils import atomic_path
from .errors import InferenceError
from .extras import import_rasterio, rasterio_env


NODATA_CLASS = 255
DEFAULT_LAYER = "land_cover"
# Finished polygons are simplified and written in batches of at least this many (after the block that completes
# them): larger batches simplify more shared edges and hold more polygons in memory (about 10 kB each).
WRITE_BATCH = 5000


class VectorizeError(InferenceError):
    """A class raster, confidence raster or setting that vectorisation cannot use; the message names it."""


@dataclass(frozen=True)
class VectorizeSettings:
    """What made a GeoPackage: recorded in the summary `vectorize_class_raster` returns."""

    min_mapping_unit: int = 0
    simplify_tolerance: float = 0.0
    block_rows: int = 1024
    layer: str = DEFAULT_LAYER
    write_batch: int = WRITE_BATCH
    connectivity: int = 4

    def check(self):
        if isinstance(self.min_mapping_unit, bool) or not isinstance(self.min_mapping_unit, int | np.integer):
            raise VectorizeError(f"--min_mapping_unit {self.min_mapping_unit!r}: expected a whole number of pixels.")
        if self.min_mapping_unit < 0:
            raise VectorizeError(
                f"--min_mapping_unit {self.min_mapping_unit}: expected a number of pixels >= 0 (0 or 1 keeps every "
                "region)."
            )
        if not math.isfinite(self.simplify_tolerance) or self.simplify_tolerance < 0:
            raise VectorizeError(
                f"--simplify_tolerance {self.simplify_tolerance}: expected a distance in map units >= 0 (0: none)."
            )
        if self.block_rows < 1:
            raise VectorizeError(f"block_rows {self.block_rows}: expected a positive number of rows.")
        if self.write_batch < 1:
            raise VectorizeError(f"write_batch {self.write_batch}: expected a positive number of polygons.")
        if not self.layer:
            raise VectorizeError("layer: expected a non-empty layer name.")


def _class_names(dataset, id2label: dict | None) -> dict[int, str]:
    if id2label:
        return {int(key): str(value) for key, value in id2label.items()}
    # lale_hf's class rasters carry CLASS_<index>=<name> band tags.
    tags = dataset.tags(1)
    return {int(key[6:]): value for key, value in tags.items() if key.startswith("CLASS_") and key[6:].isdigit()}


def _metres_per_unit(dataset, path) -> float:
    crs = dataset.crs
    if crs is None:
        raise VectorizeError(
            f"{path}: the raster has no CRS, so polygons would have no place and no area in m²; vectorise a "
            "georeferenced class raster (from a georeferenced input)."
        )
    if crs.is_geographic:
        raise VectorizeError(
            f"{path}: the raster's CRS ({crs.to_string()}) is geographic (degrees), where a pixel's area in m² "
            "varies with latitude; reproject it to a projected CRS first (e.g. gdalwarp -t_srs EPSG:326XX, UTM)."
        )
    try:
        unit, factor = crs.linear_units_factor
    except Exception as error:  # rasterio raises CRSError for CRSs without a linear unit
        raise VectorizeError(f"{path}: the CRS {crs.to_string()} has no linear unit to measure areas in.") from error
    return float(factor)


def _open_inputs(class_raster, confidence_raster):
    rasterio = import_rasterio()
    class_path = Path(class_raster)
    if not class_path.is_file():
        raise FileNotFoundError(f"{class_path}: no such class raster.")
    dataset = rasterio.open(class_path)
    confidence = None
    try:
        if dataset.count != 1 or dataset.dtypes[0] != "uint8":
            raise VectorizeError(
                f"{class_path}: expected one uint8 band of class indices (255 = no data), got {dataset.count} "
                f"band(s) of {dataset.dtypes[0]}."
            )
        if confidence_raster is not None:
            confidence_path = Path(confidence_raster)
            if not confidence_path.is_file():
                raise FileNotFoundError(f"{confidence_path}: no such confidence raster.")
            confidence = rasterio.open(confidence_path)
            if confidence.count != 1 or confidence.dtypes[0] != "uint8":
                raise VectorizeError(
                    f"{confidence_path}: expected one uint8 band of confidence (0-255), got {confidence.count} "
                    f"band(s) of {confidence.dtypes[0]}."
                )
            if confidence.shape != dataset.shape or not confidence.transform.almost_equals(dataset.transform):
                raise VectorizeError(
                    f"{confidence_path}: its grid ({confidence.shape}, {tuple(confidence.transform)[:6]}) differs "
                    f"from the class raster's ({dataset.shape}, {tuple(dataset.transform)[:6]})."
                )
    except BaseException:
        dataset.close()
        if confidence is not None:
            confidence.close()
        raise
    return dataset, confidence


def sieved_blocks(dataset, settings: VectorizeSettings, nodata_values: tuple[int, ...]):
    """Yields (first row, class rows) of the raster after the minimum mapping unit, block of rows by block of rows
    (see step 1 of the module doc). Pixels in `nodata_values` come out as `NODATA_CLASS`."""
    from rasterio.features import sieve
    from rasterio.windows import Window

    height, width = dataset.shape
    mmu = settings.min_mapping_unit
    halo = mmu if mmu > 1 else 0
    for row0 in range(0, height, settings.block_rows):
        row1 = min(row0 + settings.block_rows, height)
        top, bottom = max(0, row0 - halo), min(height, row1 + halo)
        classes = dataset.read(1, window=Window(0, top, width, bottom - top))
        valid = ~np.isin(classes, nodata_values)
        classes[~valid] = NODATA_CLASS
        if halo:
            classes = sieve(classes, size=mmu, mask=valid, connectivity=settings.connectivity)
        yield row0, classes[row0 - top : row1 - top]


class _Components:
    """Union-find over the regions of all blocks so far, with each open region's pieces and sums."""

    def __init__(self):
        self.parent: dict[int, int] = {}
        self.pieces: dict[int, list] = {}
        self.class_index: dict[int, int] = {}
        self.pixels: dict[int, int] = {}
        self.confidence_sum: dict[int, float] = {}

    def add(self, key: int, polygon, class_index: int, pixels: int, confidence_sum: float):
        self.parent[key] = key
        self.pieces[key] = [polygon]
        self.class_index[key] = class_index
        self.pixels[key] = pixels
        self.confidence_sum[key] = confidence_sum

    def find(self, key: int) -> int:
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:  # path compression
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, first: int, second: int):
        first, second = self.find(first), self.find(second)
        if first == second:
            return
        if len(self.pieces[first]) < len(self.pieces[second]):
            first, second = second, first
        self.parent[second] = first
        self.pieces[first].extend(self.pieces.pop(second))
        self.pixels[first] += self.pixels.pop(second)
        self.confidence_sum[first] += self.confidence_sum.pop(second)
        self.class_index.pop(second)

    def finish(self, open_keys: set[int]):
        """Removes and yields (class, pixels, confidence sum, pieces) of every region not among `open_keys`' roots;
        forgets the keys of finished regions."""
        open_roots = {self.find(key) for key in open_keys}
        finished = [root for root in self.pieces if root not in open_roots]
        for root in finished:
            yield (
                self.class_index.pop(root),
                self.pixels.pop(root),
                self.confidence_sum.pop(root),
                self.pieces.pop(root),
            )
        # Keep only keys that lead to an open root, re-pointed straight at it.
        self.parent = {key: root for key in self.parent if (root := self.find(key)) in open_roots}


def _polygonise_block(classes: np.ndarray, row0: int, connectivity: int):
    """(label raster, [(label, polygon in pixel coordinates, class)]) of a block's regions; labels start at 1."""
    import shapely
    from affine import Affine
    from rasterio.features import rasterize, shapes

    to_pixels = Affine.translation(0, row0)
    regions, burn = [], []
    for number, (geometry, value) in enumerate(
        shapes(classes, mask=classes != NODATA_CLASS, connectivity=connectivity, transform=to_pixels), start=1
    ):
        rings = geometry["coordinates"]
        regions.append((number, shapely.Polygon(rings[0], rings[1:]), int(value)))
        burn.append((geometry, number))  # GeoJSON as GDAL gave it: rasterize converts shapely objects slowly
    labels = np.zeros(classes.shape, dtype=np.int32)
    if burn:
        labels = rasterize(burn, out_shape=classes.shape, transform=to_pixels, fill=0, dtype="int32")
    return labels, regions


def _to_map(polygons: list, transform):
    """Pixel-coordinate polygons to the raster's CRS, every vertex through the same affine transform."""
    import shapely

    a, b, c, d, e, f = tuple(transform)[:6]
    return shapely.transform(
        np.asarray(polygons, dtype=object),
        lambda xy: np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]),
    )


class _LayerWriter:
    """Appends batches of features to one GeoPackage layer (pyogrio, WKB geometries)."""

    def __init__(self, path: Path, settings: VectorizeSettings, crs_wkt: str, with_confidence: bool):
        self.path, self.settings, self.crs_wkt, self.with_confidence = path, settings, crs_wkt, with_confidence
        self.started = False
        self.features = 0

    def write(self, class_names: list[str], class_indices, pixel_counts, areas, confidences, geometries):
        import pyogrio.raw
        import shapely

        if not len(geometries):
            return
        fields = ["class_name", "class_index", "pixel_count", "area_m2"]
        data = [
            np.asarray(class_names, dtype=object),
            np.asarray(class_indices, dtype=np.int32),
            np.asarray(pixel_counts, dtype=np.int64),
            np.asarray(areas, dtype=np.float64),
        ]
        if self.with_confidence:
            fields.append("mean_confidence")
            data.append(np.asarray(confidences, dtype=np.float64))
        with warnings.catch_warnings():
            # The temporary sibling's name does not end in .gpkg; the renamed file does.
            warnings.filterwarnings("ignore", message=".*(extension|file extension).*", category=RuntimeWarning)
            pyogrio.raw.write(
                str(self.path),
                shapely.to_wkb(np.asarray(geometries, dtype=object)),
                field_data=data,
                fields=fields,
                crs=self.crs_wkt,
                geometry_type="Polygon",
                driver="GPKG",
                layer=self.settings.layer,
                append=self.started,
                dataset_options=None if self.started else {"VERSION": "1.2"},
            )
        self.started = True
        self.features += len(geometries)


def vectorize_class_raster(
    class_raster: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    confidence_raster: str | os.PathLike | None = None,
    id2label: dict | None = None,
    min_mapping_unit: int = 0,
    simplify_tolerance: float = 0.0,
    block_rows: int = 1024,
    layer: str = DEFAULT_LAYER,
    write_batch: int = WRITE_BATCH,
    overwrite: bool = False,
) -> dict:
    """Writes the polygons of `class_raster` (a one-band uint8 GeoTIFF, 255 = no data) to the GeoPackage
    `output_path` (see the module doc) and returns a summary: settings, feature count, and per class the number of
    polygons, pixels and m².

    Class names come from `id2label`, else from the raster's CLASS_<index> band tags (lale_hf writes them), else
    "class <index>".
    """
    import shapely

    settings = VectorizeSettings(min_mapping_unit, float(simplify_tolerance), block_rows, layer, write_batch)
    settings.check()
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".gpkg":
        raise VectorizeError(f"{output_path}: expected a GeoPackage file name ending in .gpkg.")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass overwrite=True (--overwrite) to replace it.")
    with rasterio_env():
        dataset, confidence = _open_inputs(class_raster, confidence_raster)
        try:
            metres = _metres_per_unit(dataset, class_raster)
            crs = dataset.crs
            names = _class_names(dataset, id2label)
            transform = dataset.transform
            pixel_area_m2 = abs(transform.a * transform.e - transform.b * transform.d) * metres**2
            nodata_values = tuple({NODATA_CLASS} | ({int(dataset.nodata)} if dataset.nodata is not None else set()))
            with atomic_path(output_path) as temporary:
                temporary.unlink()  # GDAL creates the GeoPackage itself
                writer = _LayerWriter(temporary, settings, crs.to_wkt(), confidence is not None)
                per_class = _write_polygons(
                    dataset, confidence, settings, nodata_values, names, transform, pixel_area_m2, writer, shapely
                )
                if writer.features == 0:
                    raise VectorizeError(f"{class_raster}: no pixel holds a class (all no data): no polygon to write.")
        finally:
            dataset.close()
            if confidence is not None:
                confidence.close()
    return {
        "path": str(output_path),
        "layer": settings.layer,
        "settings": asdict(settings),
        "crs": crs.to_string(),
        "pixel_area_m2": pixel_area_m2,
        "features": writer.features,
        "classes": per_class,
    }


def _write_polygons(dataset, confidence, settings, nodata_values, names, transform, pixel_area_m2, writer, shapely):
    from rasterio.windows import Window

    components = _Components()
    per_class: dict[int, dict] = {}
    finished: list[tuple] = []
    previous_bottom = None  # (keys, classes) of the last row of the previous block
    next_key = 1
    height, width = dataset.shape

    def flush():
        if not finished:
            return
        class_indices = [item[0] for item in finished]
        geometries = [item[3] for item in finished]
        if settings.simplify_tolerance > 0:
            # Pixel-corner vertices on every edge, so that polygons sharing an edge share its vertices (a coverage).
            geometries = shapely.segmentize(np.asarray(geometries, dtype=object), 1.0)
        geometries = _to_map(geometries, transform)
        if settings.simplify_tolerance > 0:
            geometries = shapely.coverage_simplify(geometries, settings.simplify_tolerance, simplify_boundary=False)
        pixel_counts = [item[1] for item in finished]
        writer.write(
            [names.get(index, f"class {index}") for index in class_indices],
            class_indices,
            pixel_counts,
            [count * pixel_area_m2 for count in pixel_counts],
            [item[2] / count / 255.0 for item, count in zip(finished, pixel_counts)],
            geometries,
        )
        for index, count in zip(class_indices, pixel_counts):
            entry = per_class.setdefault(
                index, {"name": names.get(index, f"class {index}"), "polygons": 0, "pixels": 0}
            )
            entry["polygons"] += 1
            entry["pixels"] += count
        finished.clear()

    for row0, classes in sieved_blocks(dataset, settings, nodata_values):
        labels, regions = _polygonise_block(classes, row0, settings.connectivity)
        counts = np.bincount(labels.ravel(), minlength=len(regions) + 1)
        if confidence is not None:
            scores = confidence.read(1, window=Window(0, row0, width, len(classes)))
            sums = np.bincount(labels.ravel(), weights=scores.ravel().astype(np.float64), minlength=len(regions) + 1)
        else:
            sums = np.zeros(len(regions) + 1)
        for number, polygon, class_index in regions:
            components.add(next_key + number - 1, polygon, class_index, int(counts[number]), float(sums[number]))
        keys = np.where(labels > 0, labels + (next_key - 1), 0)
        if previous_bottom is not None:
            above_keys, above_classes = previous_bottom
            joined = (above_keys > 0) & (keys[0] > 0) & (above_classes == classes[0])
            for pair in np.unique(np.stack([above_keys[joined], keys[0][joined]], axis=1), axis=0):
                components.union(int(pair[0]), int(pair[1]))
        next_key += len(regions)
        last_block = row0 + len(classes) >= height
        open_keys = set() if last_block else {int(key) for key in np.unique(keys[-1]) if key > 0}
        for class_index, pixels, confidence_sum, pieces in components.finish(open_keys):
            polygon = pieces[0] if len(pieces) == 1 else shapely.union_all(pieces)
            finished.append((class_index, pixels, confidence_sum, polygon))
        if len(finished) >= settings.write_batch:
            flush()
        previous_bottom = (keys[-1].copy(), classes[-1].copy())
    flush()
    for entry in per_class.values():
        entry["area_m2"] = entry["pixels"] * pixel_area_m2
    return {index: per_class[index] for index in sorted(per_class)}


__all__ = ["NODATA_CLASS", "VectorizeError", "VectorizeSettings", "sieved_blocks", "vectorize_class_raster"]
