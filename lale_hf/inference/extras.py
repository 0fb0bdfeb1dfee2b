"""The optional dependencies of prediction, imported on first use with the command that installs them.

rasterio comes with the `geo` extra, onnx and onnxruntime with the `onnx` extra; importing `lale_hf.inference` loads
none of them.
"""

import contextlib
import os


# GDAL's block cache defaults to 5% of RAM and would fill with every block of a large scene (the GDAL_CACHEMAX
# environment variable overrides this limit).
GDAL_CACHE_BYTES = 64 * 1024 * 1024


def import_rasterio():
    try:
        import rasterio
    except ImportError as error:
        raise ImportError(
            "GeoTIFF and other raster formats need rasterio: pip install 'lale-hf[geo]' (or pip install rasterio)."
        ) from error
    return rasterio


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "ONNX models need onnxruntime: pip install 'lale-hf[onnx]' (or pip install onnxruntime)."
        ) from error
    return onnxruntime


def import_onnx():
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'lale-hf[onnx]'.") from error
    return onnx


def rasterio_env():
    """rasterio's GDAL environment with a bounded block cache; a GDAL_CACHEMAX set by the user wins."""
    limit = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_BYTES}
    return import_rasterio().Env(**limit)


def optional_rasterio_env():
    """`rasterio_env()` where rasterio is installed, otherwise nothing (plain images need no GDAL)."""
    try:
        return rasterio_env()
    except ImportError:
        return contextlib.nullcontext()


__all__ = ["import_onnx", "import_onnxruntime", "import_rasterio", "optional_rasterio_env", "rasterio_env"]
