"""Land-cover maps from images and scenes of any size.

Band selection and scaling to the 8-bit RGB the model was trained on, sliding-window inference with blended
overlaps, class rasters (GeoTIFF with CRS, transform and colour table when the input is georeferenced, PNG
otherwise), a colourised preview with a legend, and per-class area statistics.

Memory is bounded by the window buffers: inputs are read one tile at a time, logits are blended at the model's
1/4 output resolution in a buffer one tile high, and class rows are written as soon as no later tile can change
them. rasterio (extra `geo`) and onnxruntime (extra `onnx`) are imported only when a raster or an ONNX model is used.
"""

import contextlib
import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from tqdm.auto import tqdm

from ..image_processing_lale import LaleImageProcessor, scale_to_uint8
from ..visualization import colorize_with_legend, palette_for_labels


RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
INPUT_SUFFIXES = RASTER_SUFFIXES + IMAGE_SUFFIXES
SCALING_METHODS = ("auto", "none", "tile_max", "scene_max", "patch_max_median")
NODATA_CLASS = 255
ARAS_PATCH_SIZE = 256
OUTPUT_STRIDE = 4
# GDAL's block cache defaults to 5% of RAM and would fill with every block of a large scene (the GDAL_CACHEMAX
# environment variable overrides this limit).
GDAL_CACHE_BYTES = 64 * 1024 * 1024
# Blended logits are upsampled in column chunks of this many pixels, so no buffer spans the scene width at full
# resolution.
UPSAMPLE_CHUNK = 1024
EARTH_RADIUS_M = 6371007.2  # authalic radius, for areas in geographic coordinates


def _import_rasterio():
    try:
        import rasterio
    except ImportError as error:
        raise ImportError(
            "GeoTIFF and other raster formats need rasterio: pip install 'lale-hf[geo]' (or pip install rasterio)."
        ) from error
    return rasterio


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "ONNX models need onnxruntime: pip install 'lale-hf[onnx]' (or pip install onnxruntime)."
        ) from error
    return onnxruntime


def _rasterio_env():
    # A GDAL_CACHEMAX set by the user wins.
    limit = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_BYTES}
    return _import_rasterio().Env(**limit)


# ---------------------------------------------------------------------------------------------------------------
# Inputs


class ImageSource:
    """An image held in memory (a PIL-readable file or an array); windows are slices of it."""

    crs = None
    transform = None
    georeferenced = False

    def __init__(self, array: np.ndarray, name: str = "<array>", default_bands: tuple[int, ...] | None = None):
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise ValueError(f"{name}: expected an image of shape (H, W) or (H, W, bands), got shape {array.shape}.")
        self.name = name
        self.array = array
        self.height, self.width, self.count = array.shape
        self.dtype = array.dtype
        self.nodata = None
        self.default_bands = default_bands if default_bands is not None else _default_bands_by_count(self.count)
        _check_size(name, self.height, self.width)

    def read(self, bands: Sequence[int], row: int, col: int, height: int, width: int) -> np.ndarray:
        """Window (height, width, len(bands)); `bands` are 1-based."""
        return self.array[row : row + height, col : col + width][..., [band - 1 for band in bands]]

    def close(self):
        pass


class RasterioSource:
    """A raster read window by window through rasterio; never held whole in memory."""

    def __init__(self, path: Path):
        rasterio = _import_rasterio()
        self.name = str(path)
        try:
            with warnings.catch_warnings():
                # A raster without a geotransform is fine here: it is simply not georeferenced.
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self.dataset = rasterio.open(path)
        except rasterio.errors.RasterioIOError as error:
            raise ValueError(f"{path}: cannot read it as a raster ({error}).") from error
        dataset = self.dataset
        self.height, self.width, self.count = dataset.height, dataset.width, dataset.count
        try:
            _check_size(self.name, self.height, self.width)
            if len(set(dataset.dtypes)) != 1:
                raise ValueError(f"{path}: bands of different data types {dataset.dtypes} are not supported.")
        except ValueError:
            dataset.close()
            raise
        self.dtype = np.dtype(dataset.dtypes[0])
        self.crs = dataset.crs
        self.transform = dataset.transform
        self.georeferenced = dataset.crs is not None
        self.nodata = dataset.nodatavals
        names = [interp.name for interp in dataset.colorinterp]
        if all(color in names for color in ("red", "green", "blue")):
            self.default_bands = tuple(names.index(color) + 1 for color in ("red", "green", "blue"))
        else:
            self.default_bands = _default_bands_by_count(self.count)

    def read(self, bands: Sequence[int], row: int, col: int, height: int, width: int) -> np.ndarray:
        from rasterio.windows import Window

        unique = sorted(set(bands))
        try:
            data = self.dataset.read(indexes=unique, window=Window(col, row, width, height))
        except _import_rasterio().errors.RasterioError as error:
            raise ValueError(
                f"{self.name}: cannot read rows {row}-{row + height}, columns {col}-{col + width} ({error})."
            ) from error
        return np.moveaxis(data, 0, -1)[..., [unique.index(band) for band in bands]]

    def close(self):
        self.dataset.close()


def _default_bands_by_count(count: int) -> tuple[int, ...] | None:
    # One band is grey (replicated), three are RGB; other counts need `bands`.
    return {1: (1, 1, 1), 3: (1, 2, 3)}.get(count)


def _check_size(name: str, height: int, width: int):
    if height < 1 or width < 1:
        raise ValueError(f"{name}: the image has zero size ({width}x{height} pixels).")


def open_source(path: str | os.PathLike):
    """Opens an image file (PIL) or a raster (rasterio) for windowed reading, with clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file.")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; expected an image or raster file.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes).")
    if path.suffix.lower() in RASTER_SUFFIXES:
        return RasterioSource(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
            array = np.array(image)
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"{path}: too large to load whole as an image ({error}); write large scenes as GeoTIFF, which is read "
            "window by window."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path}: cannot read it as an image ({error}).") from error
    # PIL's band layouts are known: grey (+ alpha) or RGB (+ alpha).
    default_bands = (1, 2, 3) if array.ndim == 3 and array.shape[-1] in (3, 4) else (1, 1, 1)
    return ImageSource(array, name=str(path), default_bands=default_bands)


def resolve_bands(source, bands: Sequence[int] | str | None = None) -> tuple[int, int, int]:
    """The three 1-based band indexes fed to the model as R, G, B; `bands` like "3,2,1" or (3, 2, 1)."""
    if bands is None:
        if source.default_bands is None:
            raise ValueError(
                f"{source.name}: has {source.count} bands and no red/green/blue colour interpretation; say which "
                "bands are R, G, B, e.g. --bands 3,2,1 for Sentinel-2 stacked as B, G, R, NIR."
            )
        return tuple(source.default_bands)
    if isinstance(bands, str):
        try:
            bands = [int(part) for part in bands.split(",")]
        except ValueError as error:
            raise ValueError(f"--bands {bands!r}: expected three comma-separated band numbers, e.g. 3,2,1.") from error
    bands = tuple(int(band) for band in bands)
    if len(bands) != 3:
        raise ValueError(f"--bands {bands}: expected three band numbers (R, G, B), e.g. 3,2,1.")
    for band in bands:
        if not 1 <= band <= source.count:
            raise ValueError(
                f"{source.name}: has {source.count} band(s), but --bands asks for band {band} "
                f"(bands are numbered from 1)."
            )
    return bands


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and the image/raster files directly inside folders (sorted)."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: the folder holds no image or raster file ({', '.join(INPUT_SUFFIXES)}).")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder.")
    if not files:
        raise ValueError("No input given.")
    return files


# ---------------------------------------------------------------------------------------------------------------
# Scaling to 8-bit RGB


@dataclass(frozen=True)
class Scaling:
    """How raw band values become the 8-bit RGB the model saw in training.

    `none`: 8-bit input used as is. `tile_max`: every model tile divided by its own maximum, the ARAS400k rule
    applied per tile (brightness can then change from tile to tile). `scene_max` and `patch_max_median`: one divisor
    for the whole scene from a first streaming pass: its maximum, or the median over its 256x256 blocks (the
    ARAS400k patch size) of each block's maximum, i.e. what a typical ARAS400k patch cut from this scene was divided
    by, robust to a few bright clouds. `gain`: `x * gain`, the fixed alternative. Divisors apply as
    `x / peak * 255`, clipped and truncated to uint8 exactly as ARAS400k was built, so a single patch scaled with
    `patch_max_median` reproduces it.
    """

    method: str
    peak: float | None = None
    gain: float | None = None

    def apply(self, bands: np.ndarray) -> np.ndarray:
        if self.method == "none":
            return np.asarray(bands, dtype=np.uint8)
        if self.method == "gain":
            return scale_to_uint8(bands, self.gain)
        peak = float(bands.max()) if self.method == "tile_max" and bands.size else self.peak
        if not peak or peak <= 0:
            return np.zeros(bands.shape, dtype=np.uint8)
        return np.clip(np.asarray(bands, dtype=np.float32) / peak * 255.0, 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        descriptions = {
            "none": "8-bit input used as is",
            "tile_max": "each model tile divided by its own maximum (x / max * 255)",
            "scene_max": "x / peak * 255 with peak the scene maximum (first pass)",
            "patch_max_median": "x / peak * 255 with peak the median over the scene's 256x256 blocks of each "
            "block's maximum (first pass); equals ARAS400k per-patch scaling on a single patch",
            "gain": "x * gain, clipped to 0..255",
        }
        out = {"method": self.method, "description": descriptions[self.method]}
        if self.peak is not None:
            out["peak"] = self.peak
        if self.gain is not None:
            out["gain"] = self.gain
        return out


def _parse_scaling(scaling: str | float) -> tuple[str, float | None]:
    if isinstance(scaling, (int, float)) and not isinstance(scaling, bool):
        gain = float(scaling)
    elif isinstance(scaling, str) and scaling in SCALING_METHODS:
        return scaling, None
    else:
        try:
            gain = float(scaling)
        except (TypeError, ValueError):
            raise ValueError(
                f"--scaling {scaling!r}: expected one of {', '.join(SCALING_METHODS)} or a positive gain such as "
                "0.085 (255 / 3000 for Sentinel-2 reflectance x 10000)."
            ) from None
    if not math.isfinite(gain) or gain <= 0:
        raise ValueError(f"--scaling {scaling!r}: a gain must be a positive number.")
    return "gain", gain


def check_scaling(source, scaling: str | float = "auto") -> str:
    """Validates `scaling` for this source without reading pixels; returns the method that will be used."""
    method, _ = _parse_scaling(scaling)
    if method == "auto":
        method = "none" if source.dtype == np.uint8 else "patch_max_median"
    if method == "none" and source.dtype != np.uint8:
        raise ValueError(
            f"{source.name}: --scaling none needs 8-bit input, got {source.dtype}; use patch_max_median, "
            "tile_max, scene_max or a gain."
        )
    return method


def _nodata_values(source, bands) -> np.ndarray | None:
    """The raster's nodata value of each selected band, or None when it declares none."""
    values = [source.nodata[band - 1] for band in bands] if source.nodata else []
    if not values or any(value is None for value in values):
        return None
    return np.asarray(values, dtype=source.dtype)


def _valid_mask(window: np.ndarray, nodata: np.ndarray | None) -> np.ndarray | None:
    """False where every selected band holds its nodata value."""
    return None if nodata is None else ~np.all(window == nodata, axis=-1)


def resolve_scaling(
    source, bands, scaling: str | float = "auto", block_size: int = ARAS_PATCH_SIZE, progress: bool = False
) -> Scaling:
    """Turns a scaling choice into a `Scaling`, reading the scene once (block by block) when it needs statistics.

    Blocks default to the ARAS400k patch size whatever the tile size: the statistic imitates the dataset's patches.
    """
    method = check_scaling(source, scaling)
    if method == "gain":
        return Scaling("gain", gain=_parse_scaling(scaling)[1])
    if method in ("none", "tile_max"):
        return Scaling(method)
    nodata = _nodata_values(source, bands)
    maxima = []
    starts = [(row, col) for row in range(0, source.height, block_size) for col in range(0, source.width, block_size)]
    for row, col in tqdm(starts, desc=f"scaling pass {Path(source.name).name}", unit="block", disable=not progress):
        window = source.read(bands, row, col, min(block_size, source.height - row), min(block_size, source.width - col))
        valid = _valid_mask(window, nodata)
        values = window[valid] if valid is not None else window
        if values.size:
            maxima.append(float(values.max()))
    maxima = [value for value in maxima if value > 0]
    if not maxima:
        return Scaling(method, peak=0.0)
    peak = max(maxima) if method == "scene_max" else float(np.median(maxima))
    return Scaling(method, peak=peak)


# ---------------------------------------------------------------------------------------------------------------
# Models: PyTorch and ONNX Runtime behind one interface


def _normalization_table(mean, std, rescale_factor=1 / 255, do_rescale=True, do_normalize=True) -> np.ndarray:
    """(3, 256) float32: the normalised value of every 8-bit level per channel.

    Computed with the image processor's own arithmetic (float64 rescale, float32 normalisation), so a lookup gives
    bit-identical `pixel_values`.
    """
    levels = np.arange(256, dtype=np.uint8)
    values = (levels.astype(np.float64) * rescale_factor).astype(np.float32) if do_rescale else levels.astype(np.float32)
    values = np.tile(values, (3, 1))
    if do_normalize:
        mean = np.broadcast_to(np.asarray(mean, dtype=np.float32), (3,))
        std = np.broadcast_to(np.asarray(std, dtype=np.float32), (3,))
        values = (values - mean[:, None]) / std[:, None]
    return np.ascontiguousarray(values, dtype=np.float32)


class Predictor:
    """A segmentation model that maps normalised pixel batches (B, 3, H, W) to logits (B, classes, H/4, W/4)."""

    backend = "none"

    def __init__(
        self, name: str, id2label: dict, image_mean, image_std, rescale_factor=1 / 255, do_rescale=True, do_normalize=True
    ):
        self.name = name
        self.id2label = {int(key): value for key, value in id2label.items()}
        self.preprocessing = {
            "image_mean": [float(v) for v in np.broadcast_to(np.asarray(image_mean, dtype=np.float64), (3,))],
            "image_std": [float(v) for v in np.broadcast_to(np.asarray(image_std, dtype=np.float64), (3,))],
            "rescale_factor": float(rescale_factor),
            "do_rescale": bool(do_rescale),
            "do_normalize": bool(do_normalize),
        }
        self.table = _normalization_table(image_mean, image_std, rescale_factor, do_rescale, do_normalize)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) to float32 (3, H, W) by table lookup."""
        return np.stack([self.table[channel][image[..., channel]] for channel in range(3)])

    def __call__(self, pixel_values: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


def compile_for_inference(module: torch.nn.Module):
    """`torch.compile` with inductor's weight freezing: the weights become constants of the graph, prepacked for
    oneDNN, so later changes to them are not seen. The fastest PyTorch path on CPU here (`docs/benchmark.md`); the
    first call of each input shape compiles."""
    from torch._inductor import config as inductor_config

    compiled = torch.compile(module, dynamic=False)

    def run(*args, **kwargs):
        # torch.compile(options=...) does not pass freezing on; patching the config for the call does.
        with inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return run


class TorchPredictor(Predictor):
    """A transformers model (put in eval mode) with the preprocessing of its image processor.

    `channels_last` converts the model's weights in place and feeds it channels-last batches: 1.35x faster for
    LALE-tiny on CPU here, logits equal to 1e-6 relative. `torch_compile` runs it through `compile_for_inference`.
    """

    backend = "pytorch"

    def __init__(
        self,
        model,
        image_processor=None,
        name: str | None = None,
        channels_last: bool = False,
        torch_compile: bool = False,
    ):
        processor = image_processor if image_processor is not None else LaleImageProcessor()
        super().__init__(
            name or getattr(model, "name_or_path", "") or type(model).__name__,
            model.config.id2label,
            processor.image_mean,
            processor.image_std,
            processor.rescale_factor,
            processor.do_rescale,
            processor.do_normalize,
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(memory_format=self.memory_format)
        self.device = next(model.parameters()).device
        self.forward = self.model
        if torch_compile:
            # One eager call first: transformers installs its output-capturing hooks on the first forward, and
            # doing that inside the traced graph breaks the graph into pieces.
            with torch.inference_mode():
                self.model(pixel_values=torch.zeros(1, 3, 64, 64, device=self.device))
            self.forward = compile_for_inference(self.model)

    def __call__(self, pixel_values: np.ndarray) -> torch.Tensor:
        pixel_values = torch.from_numpy(pixel_values).to(self.device, memory_format=self.memory_format)
        with torch.inference_mode():
            logits = self.forward(pixel_values=pixel_values).logits
        return logits.float().cpu()


class OnnxPredictor(Predictor):
    """An ONNX model written by `lale_hf.onnx_export.export_onnx`, run by ONNX Runtime on the CPU."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        onnxruntime = _import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--model {path}: no such ONNX file.")
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for malformed files
            raise ValueError(f"--model {path}: not a readable ONNX model ({error}).") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "id2label" not in metadata or "preprocessing" not in metadata:
            raise ValueError(
                f"--model {path}: the ONNX file carries no label names or preprocessing in its metadata; export it "
                "with scripts/export_onnx.py."
            )
        preprocessing = json.loads(metadata["preprocessing"])
        super().__init__(str(path), json.loads(metadata["id2label"]), **preprocessing)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, pixel_values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: pixel_values})[0])


def load_predictor(
    model, trust_remote_code: bool = False, num_threads: int | None = None, torch_compile: bool = False
) -> Predictor:
    """A `Predictor` from a model object, a local checkpoint folder, a Hub id (cached or reachable) or an .onnx file.

    Checkpoints run channels-last on the CPU, and through `compile_for_inference` with `torch_compile`.
    """
    if isinstance(model, Predictor):
        return model
    if hasattr(model, "config") and callable(model):
        return TorchPredictor(model, torch_compile=torch_compile)
    reference = str(model)
    path = Path(reference)
    if path.suffix.lower() == ".onnx":
        if torch_compile:
            raise ValueError(f"--torch_compile applies to PyTorch checkpoints, not to the ONNX file {reference}.")
        return OnnxPredictor(path, num_threads=num_threads)
    if path.is_file():
        raise ValueError(
            f"--model {reference}: a file that is not an .onnx model; expected a checkpoint folder, a Hub id or an "
            ".onnx file."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"--model {reference}: the folder holds no config.json; expected a saved checkpoint.")
    looks_like_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", reference) is not None and not reference.startswith(".")
    if not path.is_dir() and not looks_like_hub_id:
        raise FileNotFoundError(f"--model {reference}: no such folder or .onnx file (and not a Hub id).")
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    try:
        loaded = AutoModelForSemanticSegmentation.from_pretrained(reference, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        where = "the local folder" if path.is_dir() else "no such local folder or .onnx file, and the Hub id"
        raise ValueError(f"--model {reference}: {where} gives no segmentation model ({error}).") from error
    try:
        processor = AutoImageProcessor.from_pretrained(reference, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        processor = None  # no preprocessor_config.json: LALE's defaults (ImageNet mean and std)
    if torch.cuda.is_available():
        loaded = loaded.to("cuda")
    return TorchPredictor(
        loaded, processor, name=reference, channels_last=loaded.device.type == "cpu", torch_compile=torch_compile
    )


# ---------------------------------------------------------------------------------------------------------------
# Sliding windows


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of a scene lie.

    A scene that fits one tile is one tile of its own size, so prediction equals plain whole-image inference.
    Otherwise the scene is padded (edge-replicated, at most 3 pixels) to a multiple of 4 so that every tile starts
    on the 1/4-resolution logit grid, and the last tile of each row and column is moved back to end at the border.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int
    padded_height: int
    padded_width: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    overlap: int
    single: bool

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def stride(self) -> int:
        return max(self.tile_height, self.tile_width) - self.overlap


def _starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return tuple(starts)


def plan_tiles(height: int, width: int, tile_size: int = 256, overlap: float = 0.25) -> TileGrid:
    """The tile grid for a scene; `overlap` is a fraction of the tile (0 to 0.5), rounded to 4 pixels."""
    if not isinstance(tile_size, int) or tile_size < 32 or tile_size % 32:
        raise ValueError(f"--tile_size {tile_size}: expected a positive multiple of 32 (the model downsamples 32x).")
    if not 0 <= overlap <= 0.5:
        raise ValueError(f"--overlap {overlap}: expected a fraction of the tile between 0 and 0.5.")
    _check_size("scene", height, width)
    overlap_px = int(round(tile_size * overlap / OUTPUT_STRIDE)) * OUTPUT_STRIDE
    if height <= tile_size and width <= tile_size:
        return TileGrid(height, width, height, width, height, width, (0,), (0,), overlap_px, True)
    padded_height = -(-height // OUTPUT_STRIDE) * OUTPUT_STRIDE
    padded_width = -(-width // OUTPUT_STRIDE) * OUTPUT_STRIDE
    tile_height, tile_width = min(tile_size, padded_height), min(tile_size, padded_width)
    stride = tile_size - overlap_px
    return TileGrid(
        height,
        width,
        tile_height,
        tile_width,
        padded_height,
        padded_width,
        _starts(padded_height, tile_height, stride),
        _starts(padded_width, tile_width, stride),
        overlap_px,
        False,
    )


def blend_weights(start: int, length: int, total: int, overlap: int) -> np.ndarray:
    """1-D weights of a tile at 1/4 resolution: linear ramps over the overlap towards neighbouring tiles only.

    Two neighbours' ramps sum to one across their overlap, a smooth cross-fade; sides on the scene border keep
    weight 1, so a lone tile is weighted 1 everywhere.
    """
    cells = length // OUTPUT_STRIDE if length % OUTPUT_STRIDE == 0 else -(-length // OUTPUT_STRIDE)
    weights = np.ones(cells, dtype=np.float32)
    ramp = overlap / OUTPUT_STRIDE
    if ramp > 0:
        position = np.arange(cells, dtype=np.float32) + 0.5
        if start > 0:
            weights = np.minimum(weights, position / ramp)
        if start + length < total:
            weights = np.minimum(weights, (cells - position) / ramp)
    return weights


def _read_tile(source, bands, scaling: Scaling, grid: TileGrid, y: int, x: int) -> np.ndarray:
    """The scaled uint8 RGB tile at (y, x), edge-padded where the grid runs past the scene."""
    height, width = min(grid.tile_height, grid.height - y), min(grid.tile_width, grid.width - x)
    tile = scaling.apply(source.read(bands, y, x, height, width))
    if height < grid.tile_height or width < grid.tile_width:
        tile = np.pad(tile, ((0, grid.tile_height - height), (0, grid.tile_width - width), (0, 0)), mode="edge")
    return tile


def _batches(source, bands, scaling, grid, predictor, batch_size) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Batches of tiles, in raster order, and their logits."""
    tiles = [(y, x) for y in grid.ys for x in grid.xs]
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        pixel_values = np.stack([predictor.normalize(_read_tile(source, bands, scaling, grid, y, x)) for y, x in chunk])
        yield chunk, predictor(pixel_values)


def _upsample_to_labels(logits: torch.Tensor, first_row: int, grid: TileGrid, row0: int, row1: int) -> np.ndarray:
    """Class indices of output rows [row0, row1) from blended logits whose first row is logit row `first_row`.

    Bilinear upsampling by exactly 4 is shift-invariant, so upsampling blocks with a one-cell halo gives the same
    values as upsampling the whole scene at once; column chunks keep the full-resolution buffer small.
    """
    if grid.single:
        upsampled = torch.nn.functional.interpolate(
            logits[None], size=(grid.height, grid.width), mode="bilinear", align_corners=False
        )[0]
        return _argmax(upsampled[:, row0:row1])
    cells_high, cells_wide = grid.padded_height // OUTPUT_STRIDE, grid.padded_width // OUTPUT_STRIDE
    top = max(row0 // OUTPUT_STRIDE - 1, 0)
    bottom = min((row1 - 1) // OUTPUT_STRIDE + 2, cells_high)
    # Only the last two upsampled rows of a block see its lower edge, and they lie below row1.
    bottom = min(bottom, first_row + logits.shape[1])
    rows = logits[:, top - first_row : bottom - first_row]
    labels = np.empty((row1 - row0, grid.width), dtype=np.uint8)
    for col0 in range(0, grid.width, UPSAMPLE_CHUNK):
        col1 = min(col0 + UPSAMPLE_CHUNK, grid.width)
        left = max(col0 // OUTPUT_STRIDE - 1, 0)
        right = min((col1 - 1) // OUTPUT_STRIDE + 2, cells_wide)
        block = rows[:, :, left:right]
        size = (block.shape[1] * OUTPUT_STRIDE, block.shape[2] * OUTPUT_STRIDE)
        upsampled = torch.nn.functional.interpolate(block[None], size=size, mode="bilinear", align_corners=False)[0]
        crop = upsampled[
            :,
            row0 - top * OUTPUT_STRIDE : row1 - top * OUTPUT_STRIDE,
            col0 - left * OUTPUT_STRIDE : col1 - left * OUTPUT_STRIDE,
        ]
        labels[:, col0:col1] = _argmax(crop)
    return labels


def _argmax(logits: torch.Tensor) -> np.ndarray:
    # NumPy's argmax over the leading class axis is several times faster than torch's on CPU; ties go to the first.
    return logits.numpy().argmax(axis=0).astype(np.uint8)


def iter_label_rows(
    source,
    predictor: Predictor,
    bands: Sequence[int],
    scaling: Scaling,
    grid: TileGrid,
    batch_size: int = 8,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """Predicts a scene tile by tile and yields `(first_row, class rows)` top to bottom, each row exactly once.

    Logits of overlapping tiles are averaged with `blend_weights` at 1/4 resolution in a buffer one tile high;
    logit rows no later tile reaches are normalised, upsampled and turned into class rows.
    """
    if batch_size < 1:
        raise ValueError(f"--batch_size {batch_size}: expected a positive integer.")
    num_classes = len(predictor.id2label)
    if grid.single:
        cells_high, cells_wide = -(-grid.height // OUTPUT_STRIDE), -(-grid.width // OUTPUT_STRIDE)
    else:
        cells_high, cells_wide = grid.padded_height // OUTPUT_STRIDE, grid.padded_width // OUTPUT_STRIDE
    tile_cells = -(-grid.tile_height // OUTPUT_STRIDE)
    nodata = _nodata_values(source, bands)
    weights_x = {x: blend_weights(x, grid.tile_width, grid.padded_width, grid.overlap) for x in grid.xs}
    # acc/weight hold logit rows [acc_row, acc_row + tile_cells) of the current tile row; ready holds final,
    # normalised logit rows from ready_row on, kept until the rows they feed have been emitted.
    acc = weight = None
    acc_row = 0
    ready = torch.zeros(num_classes, 0, cells_wide)
    ready_row = 0
    emitted = 0

    def finish_rows(upto_cell: int):
        nonlocal acc, weight, acc_row, ready, ready_row, emitted
        count = upto_cell - acc_row
        final = acc[:, :count] / weight[:count]
        ready = torch.cat([ready, final], dim=1)
        acc, weight, acc_row = acc[:, count:], weight[count:], upto_cell
        done = upto_cell >= cells_high
        # An output row needs the logit row below it, which must be final too.
        limit = grid.height if done else min(grid.height, upto_cell * OUTPUT_STRIDE - 2)
        if limit > emitted:
            labels = _upsample_to_labels(ready, ready_row, grid, emitted, limit)
            if nodata is not None:
                labels = _mask_nodata(source, bands, nodata, labels, emitted)
            yield emitted, labels
            emitted = limit
            keep_from = max(emitted // OUTPUT_STRIDE - 1, 0)
            ready, ready_row = ready[:, keep_from - ready_row :], keep_from

    with tqdm(total=grid.num_tiles, desc=Path(source.name).name, unit="tile", disable=not progress) as bar:
        for tiles, logits in _batches(source, bands, scaling, grid, predictor, batch_size):
            if logits.shape[-2:] != (tile_cells, -(-grid.tile_width // OUTPUT_STRIDE)):
                raise ValueError(
                    f"The model returned logits of size {tuple(logits.shape[-2:])} for tiles of "
                    f"{grid.tile_height}x{grid.tile_width}; expected 1/{OUTPUT_STRIDE} of the tile size."
                )
            for (y, x), tile_logits in zip(tiles, logits):
                cell_y = y // OUTPUT_STRIDE
                if acc is None or cell_y != acc_row:
                    if acc is not None:
                        yield from finish_rows(cell_y)
                    # Start the buffer at this tile row, carrying the overlap rows of the previous one.
                    carried = 0 if acc is None else acc.shape[1]
                    new_acc = torch.zeros(num_classes, tile_cells, cells_wide)
                    new_weight = torch.zeros(tile_cells, cells_wide)
                    if carried:
                        new_acc[:, :carried] = acc
                        new_weight[:carried] = weight
                    acc, weight, acc_row = new_acc, new_weight, cell_y
                    weights_y = torch.from_numpy(
                        blend_weights(y, grid.tile_height, grid.padded_height, grid.overlap)
                    )
                cell_x = x // OUTPUT_STRIDE
                tile_weight = weights_y[:, None] * torch.from_numpy(weights_x[x])[None, :]
                cells_x = tile_logits.shape[-1]
                acc[:, : tile_logits.shape[-2], cell_x : cell_x + cells_x] += tile_logits * tile_weight
                weight[: tile_logits.shape[-2], cell_x : cell_x + cells_x] += tile_weight
                bar.update(1)
        yield from finish_rows(cells_high)


def _mask_nodata(source, bands, nodata: np.ndarray, labels: np.ndarray, row0: int) -> np.ndarray:
    """Sets pixels where every selected band is the raster's nodata value to `NODATA_CLASS`."""
    for col0 in range(0, source.width, UPSAMPLE_CHUNK):
        col1 = min(col0 + UPSAMPLE_CHUNK, source.width)
        window = source.read(bands, row0, col0, labels.shape[0], col1 - col0)
        labels[:, col0:col1][~_valid_mask(window, nodata)] = NODATA_CLASS
    return labels


# ---------------------------------------------------------------------------------------------------------------
# Outputs


class AreaStatistics:
    """Per-class pixel counts, shares and (for georeferenced scenes) areas in km², accumulated row block by block.

    Projected CRS: pixel area from the transform in the CRS's linear unit. Geographic CRS (north-up): each row's
    pixel area on a sphere of the authalic radius. Shares are of all scene pixels, nodata included.
    """

    def __init__(self, id2label: dict, height: int, width: int, crs=None, transform=None):
        self.id2label = dict(id2label)
        self.height, self.width = height, width
        self.counts = np.zeros(256, dtype=np.int64)
        self.areas_m2 = np.zeros(256, dtype=np.float64)
        self.pixel_area_m2 = None
        self.row_area_m2 = None
        self.area_note = "not georeferenced: no areas"
        if crs is not None and transform is not None:
            if crs.is_projected:
                metres = crs.linear_units_factor[1]
                self.pixel_area_m2 = abs(transform.a * transform.e - transform.b * transform.d) * metres**2
                self.area_note = f"pixel area from the transform in {crs.linear_units_factor[0]}"
            elif crs.is_geographic and transform.b == 0 and transform.d == 0:
                self.row_area_m2 = self._geographic_row_area(transform)
                self.area_note = "geographic CRS: per-row pixel areas on a sphere of radius 6371007.2 m"
            else:
                self.area_note = "rotated geographic grid: no areas"

    @staticmethod
    def _geographic_row_area(transform):
        def row_area(rows: np.ndarray) -> np.ndarray:
            top = np.radians(transform.f + transform.e * rows)
            bottom = np.radians(transform.f + transform.e * (rows + 1))
            return EARTH_RADIUS_M**2 * abs(np.radians(transform.a)) * np.abs(np.sin(top) - np.sin(bottom))

        return row_area

    @property
    def georeferenced(self) -> bool:
        return self.pixel_area_m2 is not None or self.row_area_m2 is not None

    def update(self, row0: int, labels: np.ndarray):
        self.counts += np.bincount(labels.ravel(), minlength=256)
        if self.row_area_m2 is not None:
            areas = np.repeat(self.row_area_m2(np.arange(row0, row0 + labels.shape[0])), labels.shape[1])
            self.areas_m2 += np.bincount(labels.ravel(), weights=areas, minlength=256)

    def _km2(self, index: int) -> float | None:
        if self.pixel_area_m2 is not None:
            return float(self.counts[index] * self.pixel_area_m2 / 1e6)
        if self.row_area_m2 is not None:
            return float(self.areas_m2[index] / 1e6)
        return None

    def to_dict(self) -> dict:
        total = self.height * self.width
        rows = [(index, self.id2label[index]) for index in sorted(self.id2label)]
        if self.counts[NODATA_CLASS]:
            rows.append((NODATA_CLASS, "no data"))
        classes = [
            {
                "id": index,
                "label": label,
                "pixels": int(self.counts[index]),
                "percent": float(100.0 * self.counts[index] / total),
                "km2": self._km2(index),
            }
            for index, label in rows
        ]
        total_km2 = sum(item["km2"] for item in classes) if self.georeferenced else None
        return {
            "total_pixels": int(total),
            "total_km2": total_km2,
            "pixel_area_m2": self.pixel_area_m2,
            "area_note": self.area_note,
            "classes": classes,
        }


class _StagedFiles:
    """Outputs written under temporary names, renamed into place only once every one of them is complete."""

    def __init__(self):
        self.pairs = []

    def stage(self, final: Path) -> Path:
        temporary = final.with_name(f".{final.name}.partial")
        self.pairs.append((temporary, final))
        return temporary

    def commit(self):
        for temporary, final in self.pairs:
            os.replace(temporary, final)

    def discard(self):
        for temporary, _ in self.pairs:
            temporary.unlink(missing_ok=True)


class _GeoTiffWriter:
    """A tiled, deflate-compressed uint8 GeoTIFF with the source's CRS and transform and a colour table.

    Rows are buffered until whole 256-row blocks are complete, so each compressed block is written once.
    """

    block = 256

    def __init__(self, path: Path, source, palette, metadata: dict):
        rasterio = _import_rasterio()
        self.dataset = rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=source.width,
            height=source.height,
            count=1,
            dtype="uint8",
            crs=source.crs,
            transform=source.transform,
            nodata=NODATA_CLASS,
            tiled=True,
            blockxsize=self.block,
            blockysize=self.block,
            compress="deflate",
            BIGTIFF="IF_SAFER",
        )
        colormap = {index: (0, 0, 0, 0) for index in range(256)}
        colormap.update({index: (*map(int, color), 255) for index, color in enumerate(palette)})
        self.dataset.write_colormap(1, colormap)
        self.dataset.update_tags(LALE_PREDICTION=json.dumps(metadata))
        self.dataset.update_tags(1, **{f"CLASS_{key}": value for key, value in metadata["classes"].items()})
        self.dataset.set_band_description(1, "land-cover class index (255 = no data)")
        self.pending = []
        self.pending_row = 0

    def write(self, row0: int, labels: np.ndarray):
        from rasterio.windows import Window

        self.pending.append(labels)
        rows = sum(part.shape[0] for part in self.pending)
        last = row0 + labels.shape[0] == self.dataset.height
        complete = rows if last else rows // self.block * self.block
        if complete:
            buffer = np.concatenate(self.pending)
            self.dataset.write(buffer[:complete], 1, window=Window(0, self.pending_row, self.dataset.width, complete))
            self.pending = [buffer[complete:]] if complete < rows else []
            self.pending_row += complete

    def close(self):
        self.dataset.close()


class _PngWriter:
    """A class-index PNG (mode L) with the prediction metadata in a text chunk; held whole until saved."""

    def __init__(self, path: Path, source, metadata: dict):
        self.path = path
        self.labels = np.zeros((source.height, source.width), dtype=np.uint8)
        self.metadata = metadata

    def write(self, row0: int, labels: np.ndarray):
        self.labels[row0 : row0 + labels.shape[0]] = labels

    def close(self):
        info = PngImagePlugin.PngInfo()
        info.add_text("lale_prediction", json.dumps(self.metadata))
        Image.fromarray(self.labels, mode="L").save(self.path, format="PNG", pnginfo=info)


class _Preview:
    """A nearest-neighbour subsample of the class map, at most `size` pixels on its long side."""

    def __init__(self, height: int, width: int, size: int):
        self.step = max(1, -(-max(height, width) // size))
        self.labels = np.zeros((-(-height // self.step), -(-width // self.step)), dtype=np.uint8)

    def update(self, row0: int, labels: np.ndarray):
        first = -(-row0 // self.step) * self.step
        picked = labels[first - row0 :: self.step, :: self.step]
        self.labels[first // self.step : first // self.step + picked.shape[0]] = picked


def _stats_csv(stats: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class_id", "label", "pixels", "percent", "km2"])
    for item in stats["classes"]:
        km2 = "" if item["km2"] is None else f"{item['km2']:.6f}"
        writer.writerow([item["id"], item["label"], item["pixels"], f"{item['percent']:.4f}", km2])
    return buffer.getvalue()


def output_paths(input_path: str | os.PathLike, output_dir: str | os.PathLike, georeferenced: bool) -> dict[str, Path]:
    """Where the outputs of one input go: `<stem>_classes.tif|png`, `_color.png`, `_stats.json`, `_stats.csv`."""
    stem, output_dir = Path(input_path).stem, Path(output_dir)
    return {
        "classes": output_dir / f"{stem}_classes.{'tif' if georeferenced else 'png'}",
        "color": output_dir / f"{stem}_color.png",
        "stats_json": output_dir / f"{stem}_stats.json",
        "stats_csv": output_dir / f"{stem}_stats.csv",
    }


@dataclass
class _Plan:
    path: Path
    bands: tuple[int, int, int]
    scaling_method: str
    outputs: dict[str, Path]


def _plan(path, output_dir, bands, scaling, tile_size, overlap, overwrite) -> _Plan:
    """Everything about one input that can be checked without predicting: readable, bands, scaling, outputs."""
    source = open_source(path)
    try:
        band_indexes = resolve_bands(source, bands)
        method = check_scaling(source, scaling)
        plan_tiles(source.height, source.width, tile_size, overlap)
        outputs = output_paths(path, output_dir, source.georeferenced)
    finally:
        source.close()
    if not overwrite:
        existing = [str(p) for p in outputs.values() if p.exists()]
        if existing:
            raise FileExistsError(
                f"{path}: outputs already exist ({', '.join(existing)}); pass --overwrite to replace them."
            )
    return _Plan(Path(path), band_indexes, method, outputs)


def _maybe_rasterio_env():
    try:
        return _rasterio_env()
    except ImportError:
        return contextlib.nullcontext()


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

    `model` is a `Predictor`, a model object, a checkpoint folder, a Hub id or an .onnx file. Outputs appear only
    when all of them are complete. Returns the statistics JSON content, with the output paths under "outputs".
    """
    predictor = load_predictor(model)
    with _maybe_rasterio_env():
        plan = _plan(path, output_dir, bands, scaling, tile_size, overlap, overwrite)
        return _run_plan(plan, predictor, scaling, tile_size, overlap, batch_size, preview_size, progress)


def _run_plan(plan: _Plan, predictor: Predictor, scaling, tile_size, overlap, batch_size, preview_size, progress) -> dict:
    from .. import __version__

    source = open_source(plan.path)
    staged = _StagedFiles()
    try:
        resolved = resolve_scaling(source, plan.bands, scaling, progress=progress)
        grid = plan_tiles(source.height, source.width, tile_size, overlap)
        palette = palette_for_labels(predictor.id2label)
        metadata = {
            "lale_hf_version": __version__,
            "model": predictor.name,
            "backend": predictor.backend,
            "input": str(plan.path),
            "input_size": [source.height, source.width],
            "input_dtype": str(source.dtype),
            "bands": list(plan.bands),
            "scaling": resolved.to_dict(),
            "preprocessing": predictor.preprocessing,
            "tile_size": tile_size,
            "overlap": grid.overlap,
            "num_tiles": grid.num_tiles,
            "blending": "weighted mean of logits at 1/4 resolution with linear ramps over tile overlaps, then "
            "bilinear upsampling and argmax",
            "classes": {str(index): label for index, label in sorted(predictor.id2label.items())},
            "palette": [list(map(int, color)) for color in palette],
            "nodata_class": NODATA_CLASS,
            "crs": source.crs.to_string() if source.crs is not None else None,
            "transform": list(source.transform)[:6] if source.georeferenced else None,
        }
        plan.outputs["classes"].parent.mkdir(parents=True, exist_ok=True)
        classes_path = staged.stage(plan.outputs["classes"])
        if source.georeferenced:
            writer = _GeoTiffWriter(classes_path, source, palette, metadata)
        else:
            writer = _PngWriter(classes_path, source, metadata)
        statistics = AreaStatistics(
            predictor.id2label, source.height, source.width, source.crs if source.georeferenced else None, source.transform
        )
        preview = _Preview(source.height, source.width, preview_size)
        try:
            for row0, labels in iter_label_rows(source, predictor, plan.bands, resolved, grid, batch_size, progress):
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
        staged.stage(plan.outputs["stats_csv"]).write_text(_stats_csv(stats))
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    finally:
        source.close()
    return {**stats, "outputs": {key: str(value) for key, value in plan.outputs.items()}}


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
    """`predict_file` over files and folders; every input is checked before any prediction starts."""
    files = expand_inputs(inputs)
    with _maybe_rasterio_env():
        plans = [_plan(path, output_dir, bands, scaling, tile_size, overlap, overwrite) for path in files]
        targets = [str(p) for plan in plans for p in plan.outputs.values()]
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise ValueError(f"Several inputs would write the same outputs ({', '.join(duplicates)}): rename them.")
        predictor = load_predictor(
            model, trust_remote_code=trust_remote_code, num_threads=num_threads, torch_compile=torch_compile
        )
        return [
            _run_plan(plan, predictor, scaling, tile_size, overlap, batch_size, preview_size, progress) for plan in plans
        ]


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
    predictor = load_predictor(model)
    if isinstance(image, Image.Image):
        image = image.convert("RGB") if image.mode not in ("RGB", "L", "I;16", "I", "F") else image
    source = ImageSource(np.asarray(image), name="<image>")
    band_indexes = resolve_bands(source, bands)
    resolved = resolve_scaling(source, band_indexes, scaling)
    grid = plan_tiles(source.height, source.width, tile_size, overlap)
    labels = np.empty((source.height, source.width), dtype=np.uint8)
    for row0, rows in iter_label_rows(source, predictor, band_indexes, resolved, grid, batch_size, progress):
        labels[row0 : row0 + rows.shape[0]] = rows
    return labels


__all__ = [
    "AreaStatistics",
    "ImageSource",
    "OnnxPredictor",
    "Predictor",
    "RasterioSource",
    "Scaling",
    "TileGrid",
    "TorchPredictor",
    "blend_weights",
    "check_scaling",
    "expand_inputs",
    "iter_label_rows",
    "load_predictor",
    "open_source",
    "output_paths",
    "plan_tiles",
    "predict_file",
    "predict_image",
    "predict_paths",
    "resolve_bands",
    "resolve_scaling",
]
