"""Prediction end to end: land-cover maps of image files, rasters and in-memory images of any size.

Every input is checked before any prediction starts (readable, bands, scaling, tiles, outputs); each input's outputs
(class raster, colourised preview with a legend, statistics as JSON and CSV) appear together, only when complete.
"""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .block_prediction import assemble_input, predict_blocks
from .distributed import ProcessGroup, WorkItem, assign_work
from .errors import InferenceError
from .extras import optional_rasterio_env
from .mosaic import MosaicInput, build_mosaic
from .predictors import PREDICTION_DTYPES, Predictor, load_predictor, model_fingerprint
from .run_state import RunFolder
from .scaling import (
    DEPRECATED_SCALING_NAMES,
    Scaling,
    check_offset,
    check_scaling,
    parse_scaling,
    resolve_scaling,
)
from .sources import NODATA_CLASS, ImageSource, expand_inputs, is_remote, open_source, parse_bands, resolve_bands
from .tiling import check_tiling, iter_label_rows, plan_tiles, split_rows
from .tta import TTA_MODES, TestTimeAugmentation
from .vectorize import VectorizeSettings
from .visualization import palette_for_labels
from .writers import output_paths


BLENDING = (
    "weighted mean of logits at 1/4 resolution with linear ramps over tile overlaps, then bilinear upsampling and "
    "argmax"
)


OUTPUT_LAYOUTS = ("cog", "tiles")
logger = logging.getLogger(__name__)


def _positive_int(value, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InferenceError(f"{option} {value!r}: expected a positive integer.")
    return int(value)


@dataclass(frozen=True)
class PredictionSettings:
    """How inputs are predicted and written: the keyword arguments `predict_file`, `predict_paths` and
    `predict_image` share, validated once when built.

    `bands`: 1-based R, G, B band numbers ("3,2,1" or (3, 2, 1); None: the input's RGB). `scaling`: one of
    `SCALING_METHODS` or a positive gain (see `Scaling`); `offset`: added to raw values first (-1000 for
    Sentinel-2 L2A from processing baseline 04.00 on). `tile_size` (a multiple of 32) and `overlap` (fraction of a
    tile, 0 to 0.5): the sliding windows. `batch_size`: tiles per model call. `preview_size`: longest side of the
    colourised preview. `overwrite`: replace existing outputs. `progress`: show progress bars. `block_rows`: tile
    rows per block, the unit of work split between processes and of `resume`. `output_layout`: "cog" (one
    Cloud-Optimized GeoTIFF per georeferenced input) or "tiles" (a VRT over one COG per block). `resume`: finish
    an interrupted run in the same output folder. `dtype`: "fp32", or "bf16" autocast on CUDA.
    """

    bands: tuple[int, int, int] | str | None = None
    scaling: str | float = "auto"
    tile_size: int = 256
    overlap: float = 0.25
    batch_size: int = 8
    preview_size: int = 2048
    overwrite: bool = False
    progress: bool = True
    offset: float = 0.0
    block_rows: int = 16
    output_layout: str = "cog"
    resume: bool = False
    dtype: str = "fp32"
    save_confidence: bool = False
    save_probabilities: bool = False
    tta: str = "none"
    vectorize: bool = False
    min_mapping_unit: int = 0
    simplify_tolerance: float = 0.0

    @property
    def products(self) -> tuple[str, ...]:
        """The map products asked for besides the class map, as `output_paths` names them."""
        chosen = (self.save_confidence, self.save_probabilities, self.vectorize)
        return tuple(name for name, wanted in zip(("confidence", "probabilities", "polygons"), chosen) if wanted)

    def __post_init__(self):
        if self.bands is not None:
            object.__setattr__(self, "bands", parse_bands(self.bands))
        parse_scaling(self.scaling)  # raises on a bad choice; warns once for a deprecated name
        if isinstance(self.scaling, str) and self.scaling in DEPRECATED_SCALING_NAMES:
            object.__setattr__(self, "scaling", DEPRECATED_SCALING_NAMES[self.scaling])
        check_tiling(self.tile_size, self.overlap)
        object.__setattr__(self, "batch_size", _positive_int(self.batch_size, "--batch_size"))
        object.__setattr__(self, "preview_size", _positive_int(self.preview_size, "--preview_size"))
        object.__setattr__(self, "block_rows", _positive_int(self.block_rows, "--block_rows"))
        object.__setattr__(self, "offset", check_offset(self.offset))
        if self.output_layout not in OUTPUT_LAYOUTS:
            raise InferenceError(
                f"--output_layout {self.output_layout!r}: expected one of {', '.join(OUTPUT_LAYOUTS)}."
            )
        if self.dtype not in PREDICTION_DTYPES:
            raise InferenceError(f"--dtype {self.dtype!r}: expected one of {', '.join(PREDICTION_DTYPES)}.")
        if self.tta not in TTA_MODES:
            raise InferenceError(f"--tta {self.tta!r}: expected one of {', '.join(TTA_MODES)}.")
        VectorizeSettings(self.min_mapping_unit, float(self.simplify_tolerance)).check()


@dataclass(frozen=True)
class InputPlan:
    """What was checked about one input before predicting: its size, bands, scaling method and output paths."""

    path: Path | str | MosaicInput
    bands: tuple[int, int, int]
    scaling_method: str
    outputs: dict[str, Path]
    height: int = 0
    width: int = 0
    georeferenced: bool = False

    @property
    def name(self) -> str:
        return self.path.name if isinstance(self.path, MosaicInput) else Path(str(self.path)).name


def plan_input(
    path, output_dir: str | os.PathLike, settings: PredictionSettings, check_existing: bool = True
) -> InputPlan:
    """Everything about one input that can be checked without predicting: readable, bands, scaling, outputs."""
    source = open_source(path)
    try:
        band_indexes = resolve_bands(source, settings.bands)
        method = check_scaling(source, settings.scaling, settings.offset)
        plan_tiles(source.height, source.width, settings.tile_size, settings.overlap)
        outputs = output_paths(path, output_dir, source.georeferenced, settings.output_layout, settings.products)
        size = (source.height, source.width, source.georeferenced)
        if settings.vectorize and (source.crs is None or not source.crs.is_projected):
            found = "no CRS" if source.crs is None else f"the geographic CRS {source.crs.to_string()}"
            raise InferenceError(
                f"{source.name}: --vectorize needs a projected CRS (areas in m²), and the input has {found}; "
                "reproject it first (e.g. gdalwarp -t_srs EPSG:326XX) or leave out --vectorize."
            )
    finally:
        source.close()
    if check_existing and not settings.overwrite:
        existing = [str(p) for p in outputs.values() if p.exists()]
        if existing:
            raise FileExistsError(
                f"{path}: outputs already exist ({', '.join(existing)}); pass --overwrite to replace them."
            )
    return InputPlan(path, band_indexes, method, outputs, *size)


def prediction_metadata(plan: InputPlan, source, predictor: Predictor, scaling: Scaling, settings) -> dict:
    """Every setting a prediction used, recorded in the stats JSON, GeoTIFF tags and PNG text."""
    from .. import __version__

    grid = plan_tiles(plan.height, plan.width, settings.tile_size, settings.overlap)
    palette = palette_for_labels(predictor.id2label)
    mosaic = plan.path if isinstance(plan.path, MosaicInput) else None
    return {
        "lale_hf_version": __version__,
        "model": predictor.name,
        "backend": predictor.backend,
        "input": mosaic.name if mosaic else str(plan.path),
        "mosaic_of": list(mosaic.files) if mosaic else None,
        "input_size": [source.height, source.width],
        "input_dtype": str(source.dtype),
        "bands": list(plan.bands),
        "scaling": scaling.to_dict(),
        "preprocessing": predictor.preprocessing.to_dict(),
        "tile_size": settings.tile_size,
        "overlap": grid.overlap,
        "num_tiles": grid.num_tiles,
        "blending": BLENDING,
        "dtype": settings.dtype,
        "tta": settings.tta,
        "classes": {str(index): label for index, label in sorted(predictor.id2label.items())},
        "palette": [list(map(int, color)) for color in palette],
        "nodata_class": NODATA_CLASS,
        "crs": source.crs.to_string() if source.crs is not None else None,
        "transform": list(source.transform)[:6] if source.georeferenced else None,
    }


def _run_description(plans: list[InputPlan], predictor: Predictor, settings: PredictionSettings, mosaic) -> dict:
    """The settings that shape the outputs: recorded in the run folder, compared on --resume."""
    return {
        "model": predictor.name,
        "model_sha256": model_fingerprint(predictor),
        "backend": predictor.backend,
        "inputs": [[str(plan.path), plan.height, plan.width, _file_identity(plan.path)] for plan in plans],
        "mosaic": list(mosaic.files) if mosaic else None,
        "bands": [list(plan.bands) for plan in plans],
        "scaling": settings.scaling,
        "offset": settings.offset,
        "tile_size": settings.tile_size,
        "overlap": settings.overlap,
        "batch_size": settings.batch_size,
        "block_rows": settings.block_rows,
        "dtype": settings.dtype,
        "output_layout": settings.output_layout,
        "preview_size": settings.preview_size,
        "products": {
            "tta": settings.tta,
            "confidence": settings.save_confidence,
            "probabilities": settings.save_probabilities,
            "vectorize": [settings.min_mapping_unit, settings.simplify_tolerance] if settings.vectorize else None,
        },
    }


def _file_identity(path) -> list | None:
    """Size and modification time of local input files, so that a resume notices an input rewritten in between."""
    if isinstance(path, MosaicInput):
        return [_file_identity(file) for file in path.files]
    if is_remote(str(path)):
        return None
    status = Path(path).stat()
    return [status.st_size, status.st_mtime_ns]


def _work_items(plans: list[InputPlan], settings: PredictionSettings) -> list[WorkItem]:
    items = []
    for index, plan in enumerate(plans):
        grid = plan_tiles(plan.height, plan.width, settings.tile_size, settings.overlap)
        for row0, row1 in split_rows(grid, settings.block_rows):
            items.append(WorkItem(index, row0, row1, (row1 - row0) * plan.width))
    return items


def _prepare_run(run_folder: RunFolder, plans, description: dict, settings: PredictionSettings) -> None:
    """Main process: creates or checks the run folder and records the scalings (first passes) and blocks."""
    if run_folder.exists() and settings.resume:
        run_folder.start(description, resume=True, overwrite=False)
        return
    if run_folder.exists() and not settings.overwrite:
        run_folder.start(description, resume=False, overwrite=False)  # raises, before the scaling pass
    scalings = []
    for plan in plans:
        source = open_source(plan.path)
        try:
            scalings.append(
                resolve_scaling(
                    source, plan.bands, settings.scaling, progress=settings.progress, offset=settings.offset
                )
            )
        finally:
            source.close()
    items = [vars(item) for item in _work_items(plans, settings)]
    run = {**description, "scalings": [s.to_dict() for s in scalings], "blocks": items}
    run_folder.start(run, resume=False, overwrite=settings.overwrite)


def predict_file(path: str | os.PathLike, model, output_dir: str | os.PathLike, **settings) -> dict:
    """Predicts one image or raster and writes its class map, colourised preview and area statistics.

    `model` is a `Predictor`, a model object, a checkpoint folder, a Hub id or an .onnx file; the keyword
    arguments are those of `predict_paths`. Outputs appear only when all of them are complete. Returns the
    statistics JSON content, with the output paths under "outputs" (None on the other processes of a distributed
    run).
    """
    results = predict_paths([path], model, output_dir, **settings)
    return results[0] if results else None


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
    offset: float = 0.0,
    block_rows: int = 16,
    output_layout: str = "cog",
    resume: bool = False,
    dtype: str = "fp32",
    mosaic: str | None = None,
    save_confidence: bool = False,
    save_probabilities: bool = False,
    tta: str = "none",
    vectorize: bool = False,
    min_mapping_unit: int = 0,
    simplify_tolerance: float = 0.0,
) -> list[dict]:
    """`predict_file` over files, URLs and folders, in one process or across the processes of `accelerate launch`.

    Every input is checked before the model loads or any prediction. Inputs are cut into blocks of `block_rows`
    tile rows, split between processes balanced by pixels; each process writes its blocks into
    `<output_dir>/.lale-run/`, and the main process assembles the outputs (see `PredictionSettings`). `mosaic`:
    predict all inputs as one raster of that name (they must share CRS and pixel grid). `trust_remote_code`,
    `num_threads` (ONNX Runtime threads) and `torch_compile` go to `load_predictor`. Returns each input's
    statistics on the main process, and an empty list on the others.

    Map products (all COGs, or a GeoPackage, in the input's CRS): `save_confidence` (`<stem>_confidence.tif`, the
    top-class probability x 255 from the blended logits), `save_probabilities` (one band per class, x 255, named
    by class), `tta` ("none", "flip" or "d4": logits averaged over flipped/rotated copies before blending; see
    `TestTimeAugmentation`), `vectorize` (`<stem>_polygons.gpkg`, see `vectorize_class_raster`, with
    `min_mapping_unit` pixels and `simplify_tolerance` map units).
    """
    settings = PredictionSettings(
        bands, scaling, tile_size, overlap, batch_size, preview_size, overwrite, progress, offset, block_rows,
        output_layout, resume, dtype, save_confidence, save_probabilities, tta, vectorize, min_mapping_unit,
        simplify_tolerance,
    )  # fmt: skip
    group = ProcessGroup()
    threads = group.share_cpu_threads()
    run_folder = RunFolder(output_dir)
    with optional_rasterio_env():
        files = expand_inputs(inputs)
        mosaic_input = build_mosaic(mosaic, files) if mosaic else None
        resuming = settings.resume and run_folder.exists()
        refs = [mosaic_input] if mosaic_input else files
        plans = [plan_input(ref, output_dir, settings, check_existing=not resuming) for ref in refs]
        targets = [str(p) for plan in plans for p in plan.outputs.values()]
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise InferenceError(f"Several inputs would write the same outputs ({', '.join(duplicates)}): rename them.")
        predictor = load_predictor(
            model,
            trust_remote_code=trust_remote_code,
            num_threads=num_threads or (threads if group.count > 1 else None),
            torch_compile=torch_compile,
            device=group.device if group.count > 1 else None,
            dtype=settings.dtype,
        )
        if settings.tta != "none":
            predictor = TestTimeAugmentation(predictor, settings.tta)
        description = _run_description(plans, predictor, settings, mosaic_input)
        try:
            return _run_blocks(group, run_folder, plans, predictor, settings, description)
        except InferenceError as error:
            # The input itself is at fault (e.g. no valid pixel): nothing a resume could finish.
            if group.is_main and not resuming and getattr(error, "kind", "InferenceError") == "InferenceError":
                run_folder.remove()
            raise


def _run_blocks(group: ProcessGroup, run_folder: RunFolder, plans, predictor, settings, description) -> list[dict]:
    """Prepare (main), predict each rank's blocks, assemble (main); every step ends with all ranks agreeing."""
    group.agree(
        "Preparing the run",
        lambda: _prepare_run(run_folder, plans, description, settings) if group.is_main else None,
    )
    run = run_folder.read()
    scalings = [Scaling.from_dict(values) for values in run["scalings"]]
    items = [WorkItem(**values) for values in run["blocks"]]
    metadata = []
    for plan, scaling_used in zip(plans, scalings, strict=True):
        source = open_source(plan.path)
        try:
            metadata.append(prediction_metadata(plan, source, predictor, scaling_used, settings))
        finally:
            source.close()
    mine = assign_work(items, group.count)[group.index]
    show = settings.progress and group.is_main
    predicted = group.agree(
        "Predicting blocks",
        lambda: predict_blocks(mine, plans, scalings, metadata, predictor, settings, run_folder, show),
    )
    logger.info(
        "process %d of %d: predicted %d of its %d blocks (%d were done before)",
        group.index,
        group.count,
        len(predicted),
        len(mine),
        len(mine) - len(predicted),
    )

    def assemble():
        if not group.is_main:
            return []
        results = []
        for index, plan in enumerate(plans):
            blocks = [item for item in items if item.input_index == index]
            results.append(assemble_input(plan, blocks, metadata[index], predictor, settings, run_folder))
        run_folder.remove()
        return results

    return group.agree("Assembling the outputs", assemble)


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
