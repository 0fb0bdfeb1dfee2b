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
from .tiling import iter_label_rows, plan_tiles
from .visualization import colorize_with_legend, palette_for_labels
from .writers import GeoTiffWriter, PngWriter, Preview, StagedFiles


def block_suffix(plan) -> str:
    return ".tif" if plan.georeferenced else ".npy"


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
    from .tiling import block_tile_rows

    grid = plan_tiles(plan.height, plan.width, settings.tile_size, settings.overlap)
    return len(block_tile_rows(grid, item.row0, item.row1)) * len(grid.xs)


def _predict_block(item, plan, source, scaling, metadata, predictor, settings, run_folder: RunFolder):
    grid = plan_tiles(plan.height, plan.width, settings.tile_size, settings.overlap)
    palette = palette_for_labels(predictor.id2label)
    crs = source.crs if plan.georeferenced else None
    statistics = AreaStatistics(predictor.id2label, plan.height, plan.width, crs, source.transform)
    preview = Preview(plan.height, plan.width, settings.preview_size)
    rows = iter_label_rows(
        source, predictor, plan.bands, scaling, grid, settings.batch_size, progress=False, rows=(item.row0, item.row1)
    )
    data_path = run_folder.data_path(item, block_suffix(plan))
    preview_path = run_folder.preview_path(item)
    with StagedFiles() as staged:
        if plan.georeferenced:
            transform = block_transform(source.transform, item.row0)
            height = item.row1 - item.row0
            raw = staged.stage(data_path) if settings.output_layout == "cog" else data_path.with_suffix(".raw.tif")
            writer = GeoTiffWriter(raw, height, plan.width, crs, transform, metadata, palette=palette)
            try:
                for row, labels in rows:
                    writer.write(row - item.row0, labels)
                    statistics.update(row, labels)
                    preview.update(row, labels)
            finally:
                writer.close()
            if settings.output_layout == "tiles":
                try:
                    copy_to_cog(raw, staged.stage(data_path))
                finally:
                    raw.unlink(missing_ok=True)
        else:
            block = np.empty((item.row1 - item.row0, plan.width), dtype=np.uint8)
            for row, labels in rows:
                block[row - item.row0 : row - item.row0 + labels.shape[0]] = labels
                statistics.update(row, labels)
                preview.update(row, labels)
            with open(staged.stage(data_path), "wb") as handle:
                np.save(handle, block)
        with open(staged.stage(preview_path), "wb") as handle:
            np.save(handle, preview.rows_of(item.row0, item.row1))
    run_folder.mark_done(item, [data_path, preview_path], statistics.counts, statistics.areas_m2, {})


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
    with StagedFiles() as staged:
        if plan.georeferenced:
            names = [(run_folder.data_path(item, ".tif").name, item.row0, item.row1 - item.row0) for item in items]
            if settings.output_layout == "tiles":
                _publish_tiles(outputs, run_folder, names, plan, source, metadata, palette, staged)
            else:
                vrt = run_folder.root / f"input-{items[0].input_index:05d}.vrt"
                names = [(f"blocks/{name}", row0, rows) for name, row0, rows in names]
                write_vrt(vrt, names, plan.width, plan.height, source.crs, source.transform, metadata, palette)
                copy_to_cog(vrt, staged.stage(outputs["classes"]))
        else:
            writer = PngWriter(staged.stage(outputs["classes"]), plan.height, plan.width, metadata)
            for item in items:
                writer.write(item.row0, np.load(run_folder.data_path(item, ".npy")))
            writer.close()
        preview = np.concatenate([np.load(run_folder.preview_path(item)) for item in items])
        stats = {**statistics.to_dict(), "prediction": metadata}
        annotations = {entry["id"]: f"{entry['percent']:.1f} %" for entry in stats["classes"]}
        title = f"{plan.name} ({plan.width}x{plan.height} px)"
        figure = colorize_with_legend(preview, predictor.id2label, palette, annotations=annotations, title=title)
        figure.save(staged.stage(outputs["color"]), format="PNG")
        staged.stage(outputs["stats_json"]).write_text(json.dumps(stats, indent=2) + "\n")
        staged.stage(outputs["stats_csv"]).write_text(statistics_csv(stats))
    return {**stats, "outputs": {key: str(value) for key, value in outputs.items()}}


def _publish_tiles(outputs, run_folder, names, plan, source, metadata, palette, staged):
    """The block COGs are linked into `<stem>_classes/` (published whole) and a VRT over them is the class map."""
    folder = Path(outputs["classes_tiles"])
    staging = folder.with_name(f".{folder.name}.staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        for name, row0, rows in names:
            _link_or_copy(run_folder.blocks / name, staging / _tile_name(row0, rows))
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    tiles = [(f"{folder.name}/{_tile_name(row0, rows)}", row0, rows) for _, row0, rows in names]
    vrt = staged.stage(outputs["classes"])
    write_vrt(vrt, tiles, plan.width, plan.height, source.crs, source.transform, metadata, palette)


def _tile_name(row0: int, rows: int) -> str:
    return f"rows-{row0:06d}-{row0 + rows:06d}.tif"


def _link_or_copy(source: Path, destination: Path):
    try:
        os.link(source, destination)  # same file system: no copy of a continent's tiles
    except OSError:
        shutil.copy2(source, destination)


__all__ = ["assemble_input", "block_suffix", "predict_blocks"]
