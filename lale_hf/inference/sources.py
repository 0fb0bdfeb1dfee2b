"""Inputs: images held in memory and rasters read window by window, their bands, and which pixels hold data."""

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InferenceError
from .extras import import_rasterio


RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
INPUT_SUFFIXES = RASTER_SUFFIXES + IMAGE_SUFFIXES
REMOTE_PREFIXES = ("http://", "https://", "/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/")
# The class index written where the source holds no data.
NODATA_CLASS = 255


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
            raise InferenceError(
                f"{name}: expected an image of shape (H, W) or (H, W, bands), got shape {array.shape}."
            )
        self.name = name
        self.array = array
        self.height, self.width, self.count = array.shape
        self.dtype = array.dtype
        self.nodata = None
        self.default_bands = default_bands if default_bands is not None else _default_bands_by_count(self.count)
        check_size(name, self.height, self.width)

    def read(self, bands: Sequence[int], row: int, col: int, height: int, width: int) -> np.ndarray:
        """Window (height, width, len(bands)); `bands` are 1-based."""
        return self.array[row : row + height, col : col + width][..., [band - 1 for band in bands]]

    def close(self):
        pass


class RasterioSource:
    """A raster read window by window through rasterio; never held whole in memory.

    `path` is a file, an http(s) URL (read with range requests) or a VRT's XML text (a mosaic, named `name`).
    """

    def __init__(self, path: Path | str, name: str | None = None):
        rasterio = import_rasterio()
        self.name = name or str(path)
        try:
            with warnings.catch_warnings():
                # A raster without a geotransform is fine here: it is simply not georeferenced.
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self.dataset = rasterio.open(path)
        except rasterio.errors.RasterioIOError as error:
            raise InferenceError(f"{self.name}: cannot read it as a raster ({error}).") from error
        dataset = self.dataset
        self.height, self.width, self.count = dataset.height, dataset.width, dataset.count
        try:
            check_size(self.name, self.height, self.width)
            _check_vrt_sources(self.name, dataset)
            if len(set(dataset.dtypes)) != 1:
                raise InferenceError(f"{path}: bands of different data types {dataset.dtypes} are not supported.")
        except InferenceError:
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
        except import_rasterio().errors.RasterioError as error:
            raise InferenceError(
                f"{self.name}: cannot read rows {row}-{row + height}, columns {col}-{col + width} ({error})."
            ) from error
        return np.moveaxis(data, 0, -1)[..., [unique.index(band) for band in bands]]

    def close(self):
        self.dataset.close()


def is_remote(path) -> bool:
    """An http(s) URL or a GDAL virtual-file path: read through GDAL, never checked on the local disk."""
    return isinstance(path, str) and path.startswith(REMOTE_PREFIXES)


def _check_vrt_sources(name: str, dataset):
    """GDAL opens a VRT whose source files are missing and fails only when it reads them; fail now, by name."""
    if dataset.driver != "VRT":
        return
    missing = [f for f in dataset.files[1:] if not f.startswith("/vsi") and not Path(f).is_file()]
    if missing:
        raise InferenceError(f"{name}: the VRT refers to missing file(s): {', '.join(missing)}.")


def _default_bands_by_count(count: int) -> tuple[int, ...] | None:
    # One band is grey (replicated), three are RGB; other counts need `bands`.
    return {1: (1, 1, 1), 3: (1, 2, 3)}.get(count)


def check_size(name: str, height: int, width: int):
    if height < 1 or width < 1:
        raise InferenceError(f"{name}: the image has zero size ({width}x{height} pixels).")


def open_source(path: str | os.PathLike):
    """Opens an image file (PIL) or a raster (rasterio, also over http(s)) for windowed reading, with clear errors
    for bad files."""
    if hasattr(path, "xml"):  # a `mosaic.MosaicInput`: VRT text GDAL opens directly
        return RasterioSource(path.xml, name=path.name)
    if is_remote(path):
        if not path.startswith("/vsi") and not urlparse(path).path.lower().endswith(RASTER_SUFFIXES):
            raise InferenceError(f"{path}: a URL must name a raster file ({', '.join(RASTER_SUFFIXES)}).")
        return RasterioSource(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file.")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; expected an image or raster file.")
    if path.stat().st_size == 0:
        raise InferenceError(f"{path}: the file is empty (0 bytes).")
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
        raise InferenceError(
            f"{path}: too large to load whole as an image ({error}); write large scenes as GeoTIFF, which is read "
            "window by window."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InferenceError(f"{path}: cannot read it as an image ({error}).") from error
    # PIL's band layouts are known: grey (+ alpha) or RGB (+ alpha).
    default_bands = (1, 2, 3) if array.ndim == 3 and array.shape[-1] in (3, 4) else (1, 1, 1)
    return ImageSource(array, name=str(path), default_bands=default_bands)


def resolve_bands(source, bands: Sequence[int] | str | None = None) -> tuple[int, int, int]:
    """The three 1-based band indexes fed to the model as R, G, B; `bands` like "3,2,1" or (3, 2, 1)."""
    if bands is None:
        if source.default_bands is None:
            raise InferenceError(
                f"{source.name}: has {source.count} bands and no red/green/blue colour interpretation; say which "
                "bands are R, G, B, e.g. --bands 3,2,1 for Sentinel-2 stacked as B, G, R, NIR."
            )
        return tuple(source.default_bands)
    bands = parse_bands(bands)
    for band in bands:
        if not 1 <= band <= source.count:
            raise InferenceError(
                f"{source.name}: has {source.count} band(s), but --bands asks for band {band} "
                f"(bands are numbered from 1)."
            )
    return bands


def parse_bands(bands: Sequence[int] | str) -> tuple[int, int, int]:
    """Three band numbers from "3,2,1" or (3, 2, 1); checked against a source by `resolve_bands`."""
    if isinstance(bands, str):
        try:
            bands = [int(part) for part in bands.split(",")]
        except ValueError as error:
            raise InferenceError(
                f"--bands {bands!r}: expected three comma-separated band numbers, e.g. 3,2,1."
            ) from error
    try:
        bands = tuple(int(band) for band in bands)
    except (TypeError, ValueError) as error:
        raise InferenceError(f"--bands {bands!r}: expected three band numbers (R, G, B), e.g. 3,2,1.") from error
    if len(bands) != 3:
        raise InferenceError(f"--bands {bands}: expected three band numbers (R, G, B), e.g. 3,2,1.")
    return bands


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path | str]:
    """Files as given, URLs (as strings), and the image/raster files directly inside folders (sorted)."""
    files = []
    for item in inputs:
        if is_remote(str(item)):
            files.append(str(item))
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise InferenceError(f"{path}: the folder holds no image or raster file ({', '.join(INPUT_SUFFIXES)}).")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder.")
    if not files:
        raise InferenceError("No input given.")
    return files


def nodata_values(source, bands: Sequence[int]) -> np.ndarray | None:
    """The raster's nodata value of each selected band, or None when it declares none (NaN stays NaN)."""
    values = [source.nodata[band - 1] for band in bands] if source.nodata else []
    if not values or any(value is None for value in values):
        return None
    return np.asarray(values, dtype=source.dtype)


def may_hold_nodata(source, nodata: np.ndarray | None) -> bool:
    """Whether some pixel of this source can be no data: a declared nodata value, or floats (NaN and ±inf)."""
    return nodata is not None or np.issubdtype(source.dtype, np.inexact)


def valid_mask(window: np.ndarray, nodata: np.ndarray | None) -> np.ndarray | None:
    """(H, W) bool of the pixels that hold data; None when every pixel does.

    No data: every selected band equals its declared nodata value, or any selected band is NaN or ±inf (a pixel
    with one non-finite band cannot be scaled). A declared nodata of NaN is matched by the second rule, since
    NaN != NaN.
    """
    invalid = None
    if nodata is not None:
        invalid = np.all(window == nodata, axis=-1)
    if np.issubdtype(window.dtype, np.inexact):
        non_finite = ~np.all(np.isfinite(window), axis=-1)
        invalid = non_finite if invalid is None else invalid | non_finite
    return None if invalid is None else ~invalid


__all__ = [
    "IMAGE_SUFFIXES",
    "INPUT_SUFFIXES",
    "NODATA_CLASS",
    "RASTER_SUFFIXES",
    "ImageSource",
    "RasterioSource",
    "check_size",
    "expand_inputs",
    "is_remote",
    "may_hold_nodata",
    "nodata_values",
    "open_source",
    "parse_bands",
    "resolve_bands",
    "valid_mask",
]
