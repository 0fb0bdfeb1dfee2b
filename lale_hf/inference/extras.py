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


# Remote rasters: no directory listing on open (one request instead of many), a few retries for flaky networks.
REMOTE_READ_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jp2,.img",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}


def rasterio_env():
    """rasterio's GDAL environment with a bounded block cache and the remote-read options; settings in the
    environment (GDAL_CACHEMAX, GDAL_HTTP_MAX_RETRY...) win."""
    options = {"GDAL_CACHEMAX": GDAL_CACHE_BYTES, **REMOTE_READ_OPTIONS}
    return import_rasterio().Env(**{key: value for key, value in options.items() if key not in os.environ})


def optional_rasterio_env():
    """`rasterio_env()` where rasterio is installed, otherwise nothing (plain images need no GDAL)."""
    try:
        return rasterio_env()
    except ImportError:
        return contextlib.nullcontext()


__all__ = ["import_onnx", "import_onnxruntime", "import_rasterio", "optional_rasterio_env", "rasterio_env"]
