"""What the Space accepts before it predicts: a readable image or raster within the size limit.

Only the file header is read here (PIL and rasterio both give the size without decoding the pixels), so an
oversized upload is refused before it costs memory or CPU. Everything else about the file (bands, scaling,
corrupt pixel data) is checked by `lale_hf.inference` itself.
"""

import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lale_hf.inference import IMAGE_SUFFIXES, RASTER_SUFFIXES


ACCEPTED_FORMATS = "a PNG or JPEG patch, or a GeoTIFF scene"
# Request folders older than this are removed when a new request arrives: visitors download within minutes.
REQUEST_FOLDER_LIFETIME_S = 3600


class UploadRejected(ValueError):
    """An upload the Space does not predict; the message is shown in the page as it is."""


@dataclass(frozen=True)
class UploadInfo:
    """What the header says: the size, and whether the raster has a projected CRS (areas, polygons in metres)."""

    width: int
    height: int
    projected: bool = False


def read_header(path: str | os.PathLike) -> UploadInfo:
    """Size (and CRS kind) of an uploaded image or raster, read from its header; `UploadRejected` when unreadable."""
    path = Path(path)
    name = path.name
    if not path.is_file() or path.stat().st_size == 0:
        raise UploadRejected(f"{name} is empty: upload {ACCEPTED_FORMATS}.")
    if path.suffix.lower() in RASTER_SUFFIXES:
        return _raster_header(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return UploadInfo(*image.size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UploadRejected(f"{name} is far too large to open ({error}).") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UploadRejected(
            f"{name} is not an image this Space can read: upload {ACCEPTED_FORMATS} "
            f"({', '.join(IMAGE_SUFFIXES + RASTER_SUFFIXES)})."
        ) from error


def _raster_header(path: Path) -> UploadInfo:
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    except ImportError as error:
        raise UploadRejected(
            f"{path.name}: this Space was installed without rasterio, so it reads no GeoTIFF."
        ) from error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                projected = dataset.crs is not None and dataset.crs.is_projected
                return UploadInfo(dataset.width, dataset.height, projected)
    except RasterioIOError as error:
        raise UploadRejected(f"{path.name} is not a raster this Space can read: upload {ACCEPTED_FORMATS}.") from error


def check_upload(path: str | os.PathLike, max_megapixels: float) -> UploadInfo:
    """The header of an upload that is readable and at most `max_megapixels`; `UploadRejected` otherwise."""
    info = read_header(path)
    width, height = info.width, info.height
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise UploadRejected(
            f"{Path(path).name} is {width}x{height} pixels ({megapixels:.2f} megapixels); this Space accepts at most "
            f"{max_megapixels:g} megapixels. Crop the scene, or run scripts/predict.py on your machine, which has no "
            "size limit."
        )
    return info


def new_request_folder(root: Path) -> Path:
    """A fresh folder for one request's outputs under `root`; folders past their lifetime are removed first."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in root.iterdir():
        try:
            if old.is_dir() and now - old.stat().st_mtime > REQUEST_FOLDER_LIFETIME_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another request removed it first
            pass
    return Path(tempfile.mkdtemp(prefix="request-", dir=root))


__all__ = ["ACCEPTED_FORMATS", "UploadInfo", "UploadRejected", "check_upload", "new_request_folder", "read_header"]
