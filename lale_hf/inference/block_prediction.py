"""One rank's blocks, and the main process's assembly of every input's outputs from them.

A block is a range of whole tile rows of one input (`tiling.split_rows`); its rows are predicted with their halo
(`tiling.block_tile_rows`), so they equal a one-process run bit for bit. Each block's class rows go to its own file
in the run folder, with its pixel counts and preview rows; the main process then joins them into the outputs.
"""

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..file_utils import replace_folder
from .assembly import block_transform, copy_to_cog, write_vrt
from .distributed import WorkItem
from .errors import InferenceError
from .predictors import Predictor
from .run_state import RunFolder
from .scaling import Scaling
from .sources import NODATA_CLASS, open_source
from .statistics import AreaStatistics, statistics_csv
from .tiling import block_tile_rows, iter_label_rows, plan_tiles
from .vectorize import vectorize_class_raster
from .visualization import colorize_with_legend, palette_for_labels
from .writers import GeoTiffWriter, PngWriter, Preview, StagedFiles


def block_suffix(plan) -> str:
    return ".tif" if plan.georeferenced else ".npy"


# Map products beside the class map: uint8 rasters from the softmax of the blended, upsampled logits.
CONFIDENCE_DESCRIPTION = "top-class probability x 255 (softmax maximum of the blended logits; 0 = no data)"


def product_layers(settings) -> list[str]:
    """The rasters each block writes besides its classes: what the outputs and --vectorize (mean confidence) need."""
    layers = []
    if settings.save_confidence or settings.vectorize:
        layers.append("confidence")
    if settings.save_probabilities:
        layers.append("probabilities")
    return layers


def layer_descriptions(layer: str, id2label: dict) -> list[str]:
    if layer == "confidence":
        return [CONFIDENCE_DESCRIPTION]
    return [f"probability of {label} x 255" for _, label in sorted(id2label.items())]


def to_uint8(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as 0-255, rounded to nearest: each band within 0.5/255 of the probability."""
    return np.rint(probabilities * np.float32(255)).astype(np.uint8)


def predict_blocks(
    items: Sequence[WorkItem],
    plans,
    scalings: Sequence[Scaling],
    metadata: Sequence[dict],
    predictor: Predictor,
    settings,
    run_folder: RunFolder,
    show_progress: bool,
) -> list[WorkItem]:
    """Predicts the blocks in `items` that are not done yet; returns those it predicted."""
    todo = [item for item in items if not run_folder.is_done(item)]
    if not todo:
        return []
    tiles = sum(_block_tiles(plans[item.input_index], item, settings) for item in todo)
    source, opened = None, None
    with tqdm(total=tiles, desc="predicting blocks", unit="tile", disable=not show_progress) as bar:
        try:
            for item in todo:
                if opened != item.input_index:
                    if source is not None:
                        source.close()
                    source, opened = open_source(plans[item.input_index].path), item.input_index
                plan = plans[item.input_index]
                _predict_block(
                    item,
                    plan,
                    source,
                    scalings[item.input_index],
                    metadata[item.input_index],
                    predictor,
                    settings,
                    run_folder,
                )
                bar.update(_block_tiles(plan, item, settings))
        finally:
            if source is not None:
                source.close()
    return todo


def _block_tiles(plan, item: WorkItem, settings) -> int:
    grid = plan_tiles(plan.height, plan.width, settings.tile_size, settings.overlap)
    return len(block_tile_rows(grid, item.row0, item.row1)) * len(grid.xs)


def _predict_block(item, plan, source, scaling, metadata, predictor, settings, run_folder: RunFolder):
    grid = plan_tiles(plan.height, plan.width, settings.tile_size, settings.overlap)
    palette = palette_for_labels(predictor.id2label)
    crs = source.crs if plan.georeferenced else None
    statistics = AreaStatistics(predictor.id2label, plan.height, plan.width, crs, source.transform)
    preview = Preview(plan.height, plan.width, settings.preview_size)
    layers = product_layers(settings)
    rows = iter_label_rows(
        source, predictor, plan.bands, scaling, grid, settings.batch_size, progress=False,
        rows=(item.row0, item.row1), probabilities=bool(layers),
    )  # fmt: skip
    height = item.row1 - item.row0
    transform = block_transform(source.transform, item.row0) if plan.georeferenced else None
    tiles = settings.output_layout == "tiles"
    files = {"classes": run_folder.data_path(item, block_suffix(plan))}
    files.update({layer: run_folder.data_path(item, f".{layer}.tif") for layer in layers})
    with StagedFiles() as staged:
        # Block GeoTIFFs are written to a raw file first when each block must end up a COG (tiles layout).
        raw = {
            name: path.with_suffix(".raw.tif") if tiles else staged.stage(path)
            for name, path in files.items()
            if name != "classes" or plan.georeferenced
        }
        if plan.georeferenced:
            writers = {"classes": GeoTiffWriter(raw["classes"], height, plan.width, crs, transform, metadata, palette)}
        else:
            writers = {"classes": _ArrayWriter(staged.stage(files["classes"]), height, plan.width)}
        for layer in layers:
            nodata = 0 if layer == "confidence" else None
            descriptions = layer_descriptions(layer, predictor.id2label)
            writers[layer] = GeoTiffWriter(
                raw[layer], height, plan.width, crs, transform, metadata, descriptions=descriptions, nodata=nodata
            )
        try:
            for row, labels, *probabilities in rows:
                writers["classes"].write(row - item.row0, labels)
                statistics.update(row, labels)
                preview.update(row, labels)
                if probabilities:
                    _write_products(writers, row - item.row0, labels, probabilities[0])
        finally:
            for writer in writers.values():
                writer.close()
        if tiles:
            for name, path in files.items():
                if name != "classes" or plan.georeferenced:
                    try:
                        copy_to_cog(raw[name], staged.stage(path))
                    finally:
                        raw[name].unlink(missing_ok=True)
        preview_path = run_folder.preview_path(item)
        with open(staged.stage(preview_path), "wb") as handle:
            np.save(handle, preview.rows_of(item.row0, item.row1))
    run_folder.mark_done(item, [*files.values(), preview_path], statistics.counts, statistics.areas_m2, {})


def _write_products(writers: dict, row: int, labels: np.ndarray, probabilities: np.ndarray):
    no_data = labels == NODATA_CLASS
    if "confidence" in writers:
        confidence = to_uint8(probabilities.max(axis=0))
        confidence[no_data] = 0
        writers["confidence"].write(row, confidence)
    if "probabilities" in writers:
        bands = to_uint8(probabilities)
        bands[:, no_data] = 0
        writers["probabilities"].write(row, bands)


class _ArrayWriter:
    """The class rows of a block of an input without CRS, saved as .npy (joined into the PNG class map)."""

    def __init__(self, path: Path, height: int, width: int):
        self.path = path
        self.rows = np.empty((height, width), dtype=np.uint8)

    def write(self, row: int, labels: np.ndarray):
        self.rows[row : row + labels.shape[0]] = labels

    def close(self):
        with open(self.path, "wb") as handle:
            np.save(handle, self.rows)


def assemble_input(
    plan, items: Sequence[WorkItem], metadata: dict, predictor: Predictor, settings, run_folder: RunFolder
) -> dict:
    """Joins one input's blocks into its outputs, published together; returns its statistics JSON content."""
    source = open_source(plan.path)
    try:
        crs = source.crs if plan.georeferenced else None
        statistics = AreaStatistics(predictor.id2label, plan.height, plan.width, crs, source.transform)
    finally:
        source.close()
    records = [run_folder.record(item) for item in items]
    for record in records:  # block order, so float sums do not depend on the number of processes
        statistics.counts += np.asarray(record["counts"], dtype=np.int64)
        statistics.areas_m2 += np.asarray(record["areas_m2"], dtype=np.float64)
    if statistics.counts[NODATA_CLASS] == plan.height * plan.width:
        raise InferenceError(f"{plan.name}: no valid pixel in bands {list(plan.bands)}; nothing to predict.")
    palette = palette_for_labels(predictor.id2label)
    outputs = plan.outputs
    products = {}
    with StagedFiles() as staged:
        layer_files = {}
        for layer in ["classes", *product_layers(settings)]:
            if layer == "classes" and not plan.georeferenced:
                writer = PngWriter(staged.stage(outputs["classes"]), plan.height, plan.width, metadata)
                for item in items:
                    writer.write(item.row0, np.load(run_folder.data_path(item, ".npy")))
                writer.close()
                continue
            suffix = ".tif" if layer == "classes" else f".{layer}.tif"
            blocks = [(run_folder.data_path(item, suffix).name, item.row0, item.row1 - item.row0) for item in items]
            layout = {
                "palette": palette if layer == "classes" else None,
                "descriptions": None if layer == "classes" else layer_descriptions(layer, predictor.id2label),
                "nodata": {"classes": NODATA_CLASS, "confidence": 0}.get(layer),
            }
            if layer not in outputs:  # computed for --vectorize only: a VRT in the run folder is enough
                layer_files[layer] = run_folder.root / f"input-{items[0].input_index:05d}.{layer}.vrt"
                blocks = [(f"blocks/{name}", row0, rows) for name, row0, rows in blocks]
                write_vrt(layer_files[layer], blocks, plan.width, plan.height, source.crs, source.transform,
                          metadata, **layout)  # fmt: skip
            elif settings.output_layout == "tiles":
                layer_files[layer] = _publish_tiles(layer, outputs, run_folder, blocks, plan, source, metadata, layout,
                                                    staged)  # fmt: skip
            else:
                vrt = run_folder.root / f"input-{items[0].input_index:05d}.{layer}.vrt"
                blocks = [(f"blocks/{name}", row0, rows) for name, row0, rows in blocks]
                write_vrt(vrt, blocks, plan.width, plan.height, source.crs, source.transform, metadata, **layout)
                layer_files[layer] = staged.stage(outputs[layer])
                copy_to_cog(vrt, layer_files[layer])
            if layer in outputs and layer != "classes":
                products[layer] = {"path": Path(outputs[layer]).name, "bands": layout["descriptions"]}
        if settings.vectorize:
            polygons = run_folder.root / f"input-{items[0].input_index:05d}.gpkg"
            summary = _deterministic_geopackage(
                vectorize_class_raster,
                layer_files["classes"],
                polygons,
                confidence_raster=layer_files["confidence"],
                id2label=predictor.id2label,
                min_mapping_unit=settings.min_mapping_unit,
                simplify_tolerance=settings.simplify_tolerance,
                overwrite=True,
            )
            os.replace(polygons, staged.stage(outputs["polygons"]))
            products["polygons"] = {**summary, "path": outputs["polygons"].name}
        preview = np.concatenate([np.load(run_folder.preview_path(item)) for item in items])
        stats = {**statistics.to_dict(), "prediction": metadata, "products": products}
        annotations = {entry["id"]: f"{entry['percent']:.1f} %" for entry in stats["classes"]}
        title = f"{plan.name} ({plan.width}x{plan.height} px)"
        figure = colorize_with_legend(preview, predictor.id2label, palette, annotations=annotations, title=title)
        figure.save(staged.stage(outputs["color"]), format="PNG")
        staged.stage(outputs["stats_json"]).write_text(json.dumps(stats, indent=2) + "\n")
        staged.stage(outputs["stats_csv"]).write_text(statistics_csv(stats))
    return {**stats, "outputs": {key: str(value) for key, value in outputs.items()}}


def _publish_tiles(layer, outputs, run_folder, blocks, plan, source, metadata, layout, staged) -> Path:
    """The block COGs are linked into `<stem>_<layer>/` (published whole) and a VRT over them becomes the output."""
    folder = Path(outputs[f"{layer}_tiles"])
    staging = folder.with_name(f".{folder.name}.staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        for name, row0, rows in blocks:
            _link_or_copy(run_folder.blocks / name, staging / _tile_name(row0, rows))
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    tiles = [(f"{folder.name}/{_tile_name(row0, rows)}", row0, rows) for _, row0, rows in blocks]
    vrt = staged.stage(outputs[layer])
    write_vrt(vrt, tiles, plan.width, plan.height, source.crs, source.transform, metadata, **layout)
    return vrt


def _deterministic_geopackage(function, *args, **kwargs):
    """Runs `function` with GDAL's GeoPackage timestamp fixed, so that the same polygons give the same bytes
    whatever the run (pyogrio's own GDAL; the option is put back afterwards)."""
    import pyogrio

    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    try:
        return function(*args, **kwargs)
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})


def _tile_name(row0: int, rows: int) -> str:
    return f"rows-{row0:06d}-{row0 + rows:06d}.tif"


def _link_or_copy(source: Path, destination: Path):
    try:
        os.link(source, destination)  # same file system: no copy of a continent's tiles
    except OSError:
        shutil.copy2(source, destination)


__all__ = ["assemble_input", "block_suffix", "predict_blocks"]
