"""Many rasters predicted as one: a mosaic VRT built in memory from rasters on one pixel grid (`--mosaic NAME`).

The VRT is XML text that GDAL opens directly, so every process builds the same mosaic without writing a file.
Rasters must share CRS, pixel size, band count and data type, and lie on one pixel grid (offsets a whole number
of pixels); where they overlap, later files win, as in `gdalbuildvrt`.
"""

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .assembly import add_simple_source, vrt_dataset
from .errors import InferenceError
from .extras import import_rasterio
from .sources import RASTER_SUFFIXES, is_remote


@dataclass(frozen=True)
class MosaicInput:
    """A mosaic of `files` named `name` (its outputs are `<name>_classes.tif`...), as VRT XML text."""

    name: str
    files: tuple[str, ...]
    xml: str

    @property
    def stem(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


def build_mosaic(name: str, files) -> MosaicInput:
    """Checks that `files` form one mosaic and returns it; raises `InferenceError` naming the file that does not."""
    rasterio = import_rasterio()
    from affine import Affine  # rasterio's own dependency: imported with it, only when a mosaic is built

    if not name or "/" in name or name.startswith("."):
        raise InferenceError(f"--mosaic {name!r}: expected a plain name for the outputs, e.g. --mosaic region.")
    files = [str(f) for f in files]
    if len(files) < 2:
        raise InferenceError(f"--mosaic {name}: expected two or more rasters, got {len(files)}.")
    for file in files:
        if not is_remote(file) and Path(file).suffix.lower() not in RASTER_SUFFIXES:
            raise InferenceError(f"--mosaic: {file} is not a raster ({', '.join(RASTER_SUFFIXES)}).")
    infos = []
    for file in files:
        try:
            with rasterio.open(file) as dataset:
                infos.append((file, dataset.profile, dataset.crs, dataset.transform, dataset.colorinterp))
        except rasterio.errors.RasterioIOError as error:
            raise InferenceError(f"--mosaic: {file}: cannot read it as a raster ({error}).") from error
    first, profile, crs, transform, colorinterp = infos[0]
    if crs is None:
        raise InferenceError(f"--mosaic: {first} has no CRS; a mosaic needs georeferenced rasters.")
    for file, other, other_crs, other_transform, _ in infos[1:]:
        if other_crs != crs:
            raise InferenceError(
                f"--mosaic: {file} is in {other_crs} but {first} is in {crs}; reproject them to one CRS first."
            )
        if (
            (other_transform.a, other_transform.e) != (transform.a, transform.e)
            or other_transform.b
            or other_transform.d
        ):
            raise InferenceError(
                f"--mosaic: {file} has pixels of {other_transform.a}x{-other_transform.e} but {first} has "
                f"{transform.a}x{-transform.e} (or a rotation); resample them to one grid first."
            )
        if other["count"] != profile["count"] or other["dtype"] != profile["dtype"]:
            raise InferenceError(
                f"--mosaic: {file} has {other['count']} {other['dtype']} band(s) but {first} has {profile['count']} "
                f"{profile['dtype']}."
            )
    left = min(t.c for *_, t, _ in infos)
    top = max(t.f for *_, t, _ in infos)
    right = max(t.c + t.a * p["width"] for _, p, _, t, _ in infos)
    bottom = min(t.f + t.e * p["height"] for _, p, _, t, _ in infos)
    width, height = _pixels((right - left) / transform.a, first), _pixels((top - bottom) / -transform.e, first)
    root = vrt_dataset(width, height, crs, Affine(transform.a, 0.0, left, 0.0, transform.e, top))
    data_type = _GDAL_TYPES[profile["dtype"]]
    for band in range(1, profile["count"] + 1):
        element = ET.SubElement(root, "VRTRasterBand", dataType=data_type, band=str(band))
        if profile.get("nodata") is not None:
            ET.SubElement(element, "NoDataValue").text = repr(float(profile["nodata"]))
        ET.SubElement(element, "ColorInterp").text = colorinterp[band - 1].name.capitalize()
        for file, other, _, other_transform, _ in infos:
            x_off = _pixels((other_transform.c - left) / transform.a, file)
            y_off = _pixels((top - other_transform.f) / -transform.e, file)
            add_simple_source(element, _gdal_path(file), band, other["width"], other["height"], x_off, y_off, False)
    return MosaicInput(name, tuple(files), ET.tostring(root, encoding="unicode"))


_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def _pixels(value: float, file: str) -> int:
    rounded = round(value)
    if not math.isclose(value, rounded, abs_tol=1e-6):
        raise InferenceError(
            f"--mosaic: {file} is not on the mosaic's pixel grid (offset {value:.4f} pixels); resample it first."
        )
    return int(rounded)


def _gdal_path(file: str) -> str:
    if file.startswith(("http://", "https://")):
        return f"/vsicurl/{file}"
    return file if is_remote(file) else str(Path(file).resolve())


__all__ = ["MosaicInput", "build_mosaic"]
