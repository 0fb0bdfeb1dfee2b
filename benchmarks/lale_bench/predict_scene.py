"""The prediction benchmark's inputs: a deterministic large 16-bit scene of real patches, cached, and the model files.

A scene is a georeferenced 4-band (B, G, R, NIR) uint16 GeoTIFF mosaic of the real raw Sentinel-2 patches in
s2glc-sample/raw-tif, each placed with a seeded random rotation: real reflectance statistics at any size, the same
bytes on every run. It is written once into a cache folder (atomically) and reused by later runs.
"""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from lale_hf import LaleConfig, LaleForSemanticSegmentation, LaleImageProcessor
from lale_hf.file_utils import atomic_path


PATCH = 256


def raw_patches(raw_dir: Path) -> list[np.ndarray]:
    """The raw (4, 256, 256) uint16 patches of `raw_dir`, in name order."""
    import rasterio

    paths = sorted(Path(raw_dir).glob("*.tif"))
    if not paths:
        raise FileNotFoundError(f"{raw_dir}: no raw .tif patches (expected s2glc-sample/raw-tif).")
    patches = []
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # the raw patches have no CRS
            with rasterio.open(path) as dataset:
                patches.append(dataset.read())
    return patches


def scene_key(size: int, raw_dir: Path, seed: int) -> str:
    """A name that changes whenever the scene's bytes would: its size, seed and the source patches' content."""
    digest = hashlib.sha256()
    for path in sorted(Path(raw_dir).glob("*.tif")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"mosaic-{size}-seed{seed}-{digest.hexdigest()[:10]}"


def write_scene(path: Path, size: int, raw_dir: Path, seed: int = 0):
    """A size x size uint16 4-band tiled GeoTIFF (UTM 33N, 10 m) of real raw patches, written strip by strip."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    patches = raw_patches(raw_dir)
    rng = np.random.default_rng(seed)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000.0, 5200000.0, 10.0, 10.0),
        tiled=True,
        blockxsize=PATCH,
        blockysize=PATCH,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    with atomic_path(path) as partial, rasterio.open(partial, "w", **profile) as dataset:
        for row in range(0, size, PATCH):
            height = min(PATCH, size - row)
            strip = np.empty((4, height, size), dtype=np.uint16)
            for col in range(0, size, PATCH):
                patch = np.rot90(patches[rng.integers(len(patches))], k=int(rng.integers(4)), axes=(1, 2))
                width = min(PATCH, size - col)
                strip[:, :, col : col + width] = patch[:, :height, :width]
            dataset.write(strip, window=Window(0, row, size, height))


def cached_scene(cache_dir: Path, size: int, raw_dir: Path, seed: int = 0) -> Path:
    """The scene of this size and seed, generated into `cache_dir` on first use."""
    path = Path(cache_dir) / f"{scene_key(size, raw_dir, seed)}.tif"
    if not path.exists():
        write_scene(path, size, raw_dir, seed)
    return path


def benchmark_models(folder: Path, onnx: bool = True) -> dict[str, Path]:
    """A randomly initialised LALE-tiny (seed 0) as a checkpoint folder and, with `onnx`, as an ONNX file: speed does
    not depend on the weights. Reused when already there."""
    folder = Path(folder)
    checkpoint, onnx_path = folder / "lale-tiny", folder / "lale-tiny.onnx"
    model = None
    if not (checkpoint / "model.safetensors").exists():
        torch.manual_seed(0)
        model = LaleForSemanticSegmentation(LaleConfig.from_preset("lale-tiny")).eval()
        model.save_pretrained(checkpoint)
        LaleImageProcessor().save_pretrained(checkpoint)
    models = {"checkpoint": checkpoint}
    if onnx:
        if not onnx_path.exists():
            from lale_hf.inference import export_onnx

            if model is None:
                model = LaleForSemanticSegmentation.from_pretrained(checkpoint, use_safetensors=True).eval()
            export_onnx(model, onnx_path)  # written atomically
        models["onnx"] = onnx_path
    return models
