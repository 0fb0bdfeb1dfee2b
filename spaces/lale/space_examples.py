"""The Space's example inputs, drawn from the package's procedural land-cover sample when the app starts.

No imagery ships with the Space: the patches come from `lale_hf.data.generate_patch` (deterministic for a seed), and
the GeoTIFF example is one procedural scene written as Sentinel-2-like reflectance (x 10000, 16 bits, bands B, G, R,
NIR) with a UTM CRS and a 10 m grid, so that areas come out in km².
"""

from pathlib import Path

import numpy as np
from PIL import Image

from lale_hf.data import generate_patch
from lale_hf.file_utils import atomic_path


EXAMPLE_PATCH_SEEDS = (3, 11)
EXAMPLE_SCENE_SEED = 2  # fields, a town and water: most classes in one scene
EXAMPLE_SCENE_SIZE = 512
# 8-bit values to reflectance x 10000: the patches' brightest pixel becomes about 0.3, typical of land surfaces.
REFLECTANCE_PER_LEVEL = 12
EXAMPLE_CRS = "EPSG:32633"  # UTM zone 33N
EXAMPLE_ORIGIN = (500000.0, 4500000.0)  # upper-left corner, metres
PIXEL_SIZE_M = 10.0


def write_example_patch(path: Path, seed: int) -> Path:
    """An 8-bit RGB procedural patch (256x256) as PNG or JPEG, by `path`'s suffix."""
    image, _ = generate_patch(seed)
    with atomic_path(path) as temporary:
        Image.fromarray(image).save(temporary, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return path


def write_example_scene(path: Path, seed: int = EXAMPLE_SCENE_SEED, size: int = EXAMPLE_SCENE_SIZE) -> Path:
    """A georeferenced 16-bit, 4-band (B, G, R, NIR) GeoTIFF of one procedural scene."""
    import rasterio
    from rasterio.transform import from_origin

    image, _ = generate_patch(seed, size=size)
    rgb = image.astype(np.uint16) * REFLECTANCE_PER_LEVEL
    # Vegetation reflects near infrared strongly: green above red raises NIR (a stand-in, not a physical model).
    red, green = image[..., 0].astype(np.float32), image[..., 1].astype(np.float32)
    nir = np.clip(green * 1.5 + np.maximum(green - red, 0) * 4, 0, 255) * REFLECTANCE_PER_LEVEL
    bands = np.stack([rgb[..., 2], rgb[..., 1], rgb[..., 0], nir.astype(np.uint16)])
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 4,
        "dtype": "uint16",
        "crs": EXAMPLE_CRS,
        "transform": from_origin(*EXAMPLE_ORIGIN, PIXEL_SIZE_M, PIXEL_SIZE_M),
        "compress": "deflate",
    }
    with atomic_path(path) as temporary:
        with rasterio.open(temporary, "w", **profile) as dataset:
            dataset.write(bands)
            for index, name in enumerate(("B02 blue", "B03 green", "B04 red", "B08 near infrared"), start=1):
                dataset.set_band_description(index, name)
    return path


def write_examples(folder: Path) -> tuple[list[list], list[str]]:
    """Writes the examples into `folder` (once; kept when already there); returns the rows of `gr.Examples`
    ([file, bands, scaling]) and their labels."""
    folder.mkdir(parents=True, exist_ok=True)
    patch_png = folder / f"procedural-patch-{EXAMPLE_PATCH_SEEDS[0]}.png"
    patch_jpeg = folder / f"procedural-patch-{EXAMPLE_PATCH_SEEDS[1]}.jpg"
    scene = folder / f"procedural-scene-{EXAMPLE_SCENE_SEED}-BGRN.tif"
    if not patch_png.is_file():
        write_example_patch(patch_png, EXAMPLE_PATCH_SEEDS[0])
    if not patch_jpeg.is_file():
        write_example_patch(patch_jpeg, EXAMPLE_PATCH_SEEDS[1])
    rows = [[str(patch_png), "auto", "auto"], [str(patch_jpeg), "auto", "auto"]]
    labels = ["Procedural patch, PNG, 256x256", "Procedural patch, JPEG, 256x256"]
    try:
        if not scene.is_file():
            write_example_scene(scene)
        rows.append([str(scene), "3,2,1", "auto"])
        labels.append(f"Procedural GeoTIFF scene: 16-bit B, G, R, NIR, {EXAMPLE_SCENE_SIZE} px at 10 m")
    except ImportError:  # installed without rasterio: no GeoTIFF example
        pass
    return rows, labels


__all__ = ["write_example_patch", "write_example_scene", "write_examples"]
