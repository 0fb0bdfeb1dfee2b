"""The outputs of one prediction: the class raster (GeoTIFF or PNG), the preview, and their publication together."""

import contextlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from ..file_utils import atomic_path
from .extras import import_rasterio
from .sources import NODATA_CLASS


class StagedFiles(contextlib.ExitStack):
    """Several outputs that appear together: `stage(path)` gives a temporary sibling of `path`
    (`file_utils.atomic_path`); every staged file is renamed into place when the block ends without an exception,
    and removed otherwise."""

    def stage(self, final: Path) -> Path:
        return self.enter_context(atomic_path(final))


class GeoTiffWriter:
    """A tiled, deflate-compressed uint8 GeoTIFF on a georeferenced grid, with a colour table and the prediction's
    metadata when given (class rasters) or band descriptions (confidence and probability rasters).

    Rows are buffered until whole 256-row blocks are complete, so each compressed block is written once.
    """

    block = 256

    def __init__(
        self,
        path: Path,
        height: int,
        width: int,
        crs,
        transform,
        metadata: dict,
        palette=None,
        descriptions: list[str] | None = None,
        nodata: int | None = NODATA_CLASS,
    ):
        rasterio = import_rasterio()
        descriptions = descriptions or ["land-cover class index (255 = no data)"]
        self.dataset = rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=len(descriptions),
            dtype="uint8",
            crs=crs,
            transform=transform,
            nodata=nodata,
            tiled=True,
            blockxsize=self.block,
            blockysize=self.block,
            compress="deflate",
            interleave="band",
            BIGTIFF="IF_SAFER",
        )
        if palette is not None:
            self.dataset.write_colormap(1, class_colormap(palette))
            self.dataset.update_tags(1, **{f"CLASS_{key}": value for key, value in metadata["classes"].items()})
        self.dataset.update_tags(LALE_PREDICTION=json.dumps(metadata))
        for band, description in enumerate(descriptions, start=1):
            self.dataset.set_band_description(band, description)
        self.pending = []
        self.pending_row = 0

    def write(self, row0: int, rows: np.ndarray):
        """Rows from `row0` (relative to this file): (rows, width) for one band, (bands, rows, width) for several."""
        from rasterio.windows import Window

        rows = rows[None] if rows.ndim == 2 else rows
        self.pending.append(rows)
        count = sum(part.shape[1] for part in self.pending)
        last = row0 + rows.shape[1] == self.dataset.height
        complete = count if last else count // self.block * self.block
        if complete:
            buffer = np.concatenate(self.pending, axis=1)
            window = Window(0, self.pending_row, self.dataset.width, complete)
            self.dataset.write(buffer[:, :complete], window=window)
            self.pending = [buffer[:, complete:]] if complete < count else []
            self.pending_row += complete

    def close(self):
        self.dataset.close()


def class_colormap(palette) -> dict:
    """GDAL colour table of a class raster: the palette, and transparent black elsewhere (255: no data)."""
    colormap = {index: (0, 0, 0, 0) for index in range(256)}
    colormap.update({index: (*map(int, color), 255) for index, color in enumerate(palette)})
    return colormap


class PngWriter:
    """A class-index PNG (mode L) with the prediction metadata in a text chunk; held whole until saved."""

    def __init__(self, path: Path, height: int, width: int, metadata: dict):
        self.path = path
        self.labels = np.zeros((height, width), dtype=np.uint8)
        self.metadata = metadata

    def write(self, row0: int, labels: np.ndarray):
        self.labels[row0 : row0 + labels.shape[0]] = labels

    def close(self):
        info = PngImagePlugin.PngInfo()
        info.add_text("lale_prediction", json.dumps(self.metadata))
        Image.fromarray(self.labels, mode="L").save(self.path, format="PNG", pnginfo=info)


class Preview:
    """A nearest-neighbour subsample of the class map, at most `size` pixels on its long side."""

    def __init__(self, height: int, width: int, size: int):
        self.step = max(1, -(-max(height, width) // size))
        self.labels = np.zeros((-(-height // self.step), -(-width // self.step)), dtype=np.uint8)

    def update(self, row0: int, labels: np.ndarray):
        first = -(-row0 // self.step) * self.step
        picked = labels[first - row0 :: self.step, :: self.step]
        self.labels[first // self.step : first // self.step + picked.shape[0]] = picked

    def rows_of(self, row0: int, row1: int) -> np.ndarray:
        """The preview rows scene rows [row0, row1) contribute: what one block stores, concatenated in order."""
        return self.labels[-(-row0 // self.step) : -(-row1 // self.step)]


def output_paths(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    georeferenced: bool,
    layout: str = "cog",
    products: tuple[str, ...] = (),
) -> dict[str, Path]:
    """Where the outputs of one input go: `<stem>_classes.tif|png`, `_color.png`, `_stats.json`, `_stats.csv`.

    `products` adds "confidence" (`<stem>_confidence.tif`), "probabilities" and "polygons" (`<stem>_polygons.gpkg`).
    With `layout="tiles"` each raster (the class map when georeferenced) is `<stem>_<layer>.vrt` over the block COGs
    in the folder `<stem>_<layer>/` ("<layer>_tiles").
    """
    stem = getattr(input_path, "stem", None) or Path(str(input_path)).stem
    output_dir = Path(output_dir)
    paths = {
        "classes": output_dir / f"{stem}_classes.{'tif' if georeferenced else 'png'}",
        "color": output_dir / f"{stem}_color.png",
        "stats_json": output_dir / f"{stem}_stats.json",
        "stats_csv": output_dir / f"{stem}_stats.csv",
    }
    for product in products:
        paths[product] = output_dir / (f"{stem}_polygons.gpkg" if product == "polygons" else f"{stem}_{product}.tif")
    if layout == "tiles":
        for layer in ("classes", "confidence", "probabilities"):
            if layer in paths and (georeferenced or layer != "classes"):
                paths[layer] = output_dir / f"{stem}_{layer}.vrt"
                paths[f"{layer}_tiles"] = output_dir / f"{stem}_{layer}"
    return paths


__all__ = ["GeoTiffWriter", "PngWriter", "Preview", "StagedFiles", "class_colormap", "output_paths"]
