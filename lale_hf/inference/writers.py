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
    """A tiled, deflate-compressed uint8 GeoTIFF with the source's CRS and transform and a colour table.

    Rows are buffered until whole 256-row blocks are complete, so each compressed block is written once.
    """

    block = 256

    def __init__(self, path: Path, source, palette, metadata: dict):
        rasterio = import_rasterio()
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


class PngWriter:
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


class Preview:
    """A nearest-neighbour subsample of the class map, at most `size` pixels on its long side."""

    def __init__(self, height: int, width: int, size: int):
        self.step = max(1, -(-max(height, width) // size))
        self.labels = np.zeros((-(-height // self.step), -(-width // self.step)), dtype=np.uint8)

    def update(self, row0: int, labels: np.ndarray):
        first = -(-row0 // self.step) * self.step
        picked = labels[first - row0 :: self.step, :: self.step]
        self.labels[first // self.step : first // self.step + picked.shape[0]] = picked


def output_paths(input_path: str | os.PathLike, output_dir: str | os.PathLike, georeferenced: bool) -> dict[str, Path]:
    """Where the outputs of one input go: `<stem>_classes.tif|png`, `_color.png`, `_stats.json`, `_stats.csv`."""
    stem, output_dir = Path(input_path).stem, Path(output_dir)
    return {
        "classes": output_dir / f"{stem}_classes.{'tif' if georeferenced else 'png'}",
        "color": output_dir / f"{stem}_color.png",
        "stats_json": output_dir / f"{stem}_stats.json",
        "stats_csv": output_dir / f"{stem}_stats.csv",
    }


__all__ = ["GeoTiffWriter", "PngWriter", "Preview", "StagedFiles", "output_paths"]
