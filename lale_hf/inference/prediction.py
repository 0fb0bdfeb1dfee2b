"""Prediction end to end: land-cover maps of image files, rasters and in-memory images of any size.

Every input is checked before any prediction starts (readable, bands, scaling, tiles, outputs); each input's outputs
(class raster, colourised preview with a legend, statistics as JSON and CSV) appear together, only when complete.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InferenceError
from .extras import optional_rasterio_env
from .predictors import Predictor, load_predictor
from .scaling import DEPRECATED_SCALING_NAMES, Scaling, check_scaling, parse_scaling, resolve_scaling
from .sources import NODATA_CLASS, ImageSource, expand_inputs, open_source, parse_bands, resolve_bands
from .statistics import AreaStatistics, statistics_csv
from .tiling import TileGrid, check_tiling, iter_label_rows, plan_tiles
from .visualization import colorize_with_legend, palette_for_labels
from .writers import GeoTiffWriter, PngWriter, Preview, StagedFiles, output_paths


BLENDING = (
    "weighted mean of logits at 1/4 resolution with linear ramps over tile overlaps, then bilinear upsampling and "
    "argmax"
)


def _positive_int(value, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InferenceError(f"{option} {value!r}: expected a positive integer.")
    return int(value)


@dataclass(frozen=True)
class PredictionSettings:
    """How inputs are predicted and written: the keyword arguments `predict_file`, `predict_paths` and
    `predict_image` share, validated once when built.

    `bands`: 1-based R, G, B band numbers ("3,2,1" or (3, 2, 1); None: the input's RGB). `scaling`: one of
    `SCALING_METHODS` or a positive gain (see `Scaling`). `tile_size` (a multiple of 32) and `overlap` (fraction
    of a tile, 0 to 0.5): the sliding windows. `batch_size`: tiles per model call. `preview_size`: longest side of
    the colourised preview. `overwrite`: replace existing outputs. `progress`: show progress bars.
    """

    bands: tuple[int, int, int] | str | None = None
    scaling: str | float = "auto"
    tile_size: int = 256
    overlap: float = 0.25
    batch_size: int = 8
    preview_size: int = 2048
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.bands is not None:
            object.__setattr__(self, "bands", parse_bands(self.bands))
        parse_scaling(self.scaling)  # raises on a bad choice; warns once for a deprecated name
        if isinstance(self.scaling, str) and self.scaling in DEPRECATED_SCALING_NAMES:
            object.__setattr__(self, "scaling", DEPRECATED_SCALING_NAMES[self.scaling])
        check_tiling(self.tile_size, self.overlap)
        object.__setattr__(self, "batch_size", _positive_int(self.batch_size, "--batch_size"))
        object.__setattr__(self, "preview_size", _positive_int(self.preview_size, "--preview_size"))


@dataclass(frozen=True)
class InputPlan:
    """What was checked about one input before predicting: its bands, scaling method and output paths."""

    path: Path
    bands: tuple[int, int, int]
    scaling_method: str
    outputs: dict[str, Path]


def plan_input(path: str | os.PathLike, output_dir: str | os.PathLike, settings: PredictionSettings) -> InputPlan:
    """Everything about one input that can be checked without predicting: readable, bands, scaling, outputs."""
    source = open_source(path)
    try:
        band_indexes = resolve_bands(source, settings.bands)
        method = check_scaling(source, settings.scaling)
        plan_tiles(source.height, source.width, settings.tile_size, settings.overlap)
        outputs = output_paths(path, output_dir, source.georeferenced)
    finally:
        source.close()
    if not settings.overwrite:
        existing = [str(p) for p in outputs.values() if p.exists()]
        if existing:
            raise FileExistsError(
                f"{path}: outputs already exist ({', '.join(existing)}); pass --overwrite to replace them."
            )
    return InputPlan(Path(path), band_indexes, method, outputs)


def prediction_metadata(
    plan: InputPlan, source, predictor: Predictor, scaling: Scaling, grid: TileGrid, palette, tile_size: int
) -> dict:
    """Every setting a prediction used, recorded in the stats JSON, GeoTIFF tags and PNG text."""
    from .. import __version__

    return {
        "lale_hf_version": __version__,
        "model": predictor.name,
        "backend": predictor.backend,
        "input": str(plan.path),
        "input_size": [source.height, source.width],
        "input_dtype": str(source.dtype),
        "bands": list(plan.bands),
        "scaling": scaling.to_dict(),
        "preprocessing": predictor.preprocessing.to_dict(),
        "tile_size": tile_size,
        "overlap": grid.overlap,
        "num_tiles": grid.num_tiles,
        "blending": BLENDING,
        "classes": {str(index): label for index, label in sorted(predictor.id2label.items())},
        "palette": [list(map(int, color)) for color in palette],
        "nodata_class": NODATA_CLASS,
        "crs": source.crs.to_string() if source.crs is not None else None,
        "transform": list(source.transform)[:6] if source.georeferenced else None,
    }


def _predict_and_stage(plan: InputPlan, source, predictor: Predictor, settings: PredictionSettings, staged) -> dict:
    scaling = resolve_scaling(source, plan.bands, settings.scaling, progress=settings.progress)
    grid = plan_tiles(source.height, source.width, settings.tile_size, settings.overlap)
    palette = palette_for_labels(predictor.id2label)
    metadata = prediction_metadata(plan, source, predictor, scaling, grid, palette, settings.tile_size)
    classes_path = staged.stage(plan.outputs["classes"])
    if source.georeferenced:
        writer = GeoTiffWriter(classes_path, source, palette, metadata)
    else:
        writer = PngWriter(classes_path, source, metadata)
    crs = source.crs if source.georeferenced else None
    statistics = AreaStatistics(predictor.id2label, source.height, source.width, crs, source.transform)
    preview = Preview(source.height, source.width, settings.preview_size)
    rows = iter_label_rows(source, predictor, plan.bands, scaling, grid, settings.batch_size, settings.progress)
    try:
        for row0, labels in rows:
            writer.write(row0, labels)
            statistics.update(row0, labels)
            preview.update(row0, labels)
    finally:
        writer.close()
    stats = {**statistics.to_dict(), "prediction": metadata}
    annotations = {item["id"]: f"{item['percent']:.1f} %" for item in stats["classes"]}
    title = f"{plan.path.name} ({source.width}x{source.height} px)"
    figure = colorize_with_legend(preview.labels, predictor.id2label, palette, annotations=annotations, title=title)
    figure.save(staged.stage(plan.outputs["color"]), format="PNG")
    staged.stage(plan.outputs["stats_json"]).write_text(json.dumps(stats, indent=2) + "\n")
    staged.stage(plan.outputs["stats_csv"]).write_text(statistics_csv(stats))
    return stats


def run_plan(plan: InputPlan, predictor: Predictor, settings: PredictionSettings) -> dict:
    """Predicts one planned input and publishes its outputs; returns the statistics with the output paths."""
    source = open_source(plan.path)
    try:
        with StagedFiles() as staged:
            stats = _predict_and_stage(plan, source, predictor, settings, staged)
    finally:
        source.close()
    return {**stats, "outputs": {key: str(value) for key, value in plan.outputs.items()}}


def predict_file(
    path: str | os.PathLike,
    model,
    output_dir: str | os.PathLike,
    bands: Sequence[int] | str | None = None,
    scaling: str | float = "auto",
    tile_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    preview_size: int = 2048,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Predicts one image or raster and writes its class map, colourised preview and area statistics.

    `model` is a `Predictor`, a model object, a checkpoint folder, a Hub id or an .onnx file; the other arguments
    are those of `PredictionSettings`. Outputs appear only when all of them are complete. Returns the statistics
    JSON content, with the output paths under "outputs".
    """
    settings = PredictionSettings(bands, scaling, tile_size, overlap, batch_size, preview_size, overwrite, progress)
    predictor = load_predictor(model)
    with optional_rasterio_env():
        return run_plan(plan_input(path, output_dir, settings), predictor, settings)


def predict_paths(
    inputs: Sequence[str | os.PathLike],
    model,
    output_dir: str | os.PathLike,
    bands: Sequence[int] | str | None = None,
    scaling: str | float = "auto",
    tile_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    preview_size: int = 2048,
    overwrite: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
    num_threads: int | None = None,
    torch_compile: bool = False,
) -> list[dict]:
    """`predict_file` over files and folders; every input is checked before the model loads or any prediction.

    `trust_remote_code`, `num_threads` (ONNX Runtime threads) and `torch_compile` go to `load_predictor`.
    """
    settings = PredictionSettings(bands, scaling, tile_size, overlap, batch_size, preview_size, overwrite, progress)
    files = expand_inputs(inputs)
    with optional_rasterio_env():
        plans = [plan_input(path, output_dir, settings) for path in files]
        targets = [str(p) for plan in plans for p in plan.outputs.values()]
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise InferenceError(f"Several inputs would write the same outputs ({', '.join(duplicates)}): rename them.")
        predictor = load_predictor(
            model, trust_remote_code=trust_remote_code, num_threads=num_threads, torch_compile=torch_compile
        )
        return [run_plan(plan, predictor, settings) for plan in plans]


def predict_image(
    image,
    model,
    bands: Sequence[int] | str | None = None,
    scaling: str | float = "auto",
    tile_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """Class-index map (H, W) uint8 of an in-memory image (PIL image or (H, W[, bands]) array) of any size."""
    settings = PredictionSettings(bands, scaling, tile_size, overlap, batch_size, overwrite=False, progress=progress)
    predictor = load_predictor(model)
    if isinstance(image, Image.Image):
        image = image.convert("RGB") if image.mode not in ("RGB", "L", "I;16", "I", "F") else image
    source = ImageSource(np.asarray(image), name="<image>")
    band_indexes = resolve_bands(source, settings.bands)
    scaling = resolve_scaling(source, band_indexes, settings.scaling)
    grid = plan_tiles(source.height, source.width, settings.tile_size, settings.overlap)
    labels = np.empty((source.height, source.width), dtype=np.uint8)
    rows = iter_label_rows(source, predictor, band_indexes, scaling, grid, settings.batch_size, settings.progress)
    for row0, block in rows:
        labels[row0 : row0 + block.shape[0]] = block
    return labels


__all__ = ["InputPlan", "PredictionSettings", "predict_file", "predict_image", "predict_paths"]
