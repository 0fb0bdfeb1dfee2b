"""The page's views of one prediction, drawn from the files and statistics `lale_hf.inference.predict_paths` wrote.

Nothing is predicted here: the class map is read back from the class raster, the colours, class names, band choice
and scaling come from the statistics JSON, and the input is scaled for display with the package's own `Scaling`.
"""

import html
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lale_hf.file_utils import atomic_path
from lale_hf.inference import NODATA_CLASS, Scaling, open_source
from lale_hf.inference.sources import nodata_values, valid_mask


NODATA_COLOR = (0, 0, 0)
# Longest side of the map shown in the page: enough for a screen, small enough to send on every opacity change.
DISPLAY_SIZE = 1024
# Rows read from the input per block when building the display image.
READ_BLOCK_ROWS = 256


def display_step(height: int, width: int, size: int = DISPLAY_SIZE) -> int:
    """The nearest-neighbour stride that brings the longest side to at most `size` pixels."""
    return max(1, -(-max(height, width) // size))


def input_for_display(stats: dict, size: int = DISPLAY_SIZE) -> np.ndarray:
    """The input as the model saw it (its R, G, B bands scaled to 8 bits), subsampled to at most `size` pixels.

    `per_patch_max` scales each model tile by its own maximum; here each block of rows is, which looks the same.
    """
    prediction = stats["prediction"]
    scaling = Scaling(**{key: prediction["scaling"].get(key) for key in ("method", "peak", "gain")})
    bands = prediction["bands"]
    source = open_source(prediction["input"])
    try:
        step = display_step(source.height, source.width, size)
        nodata = nodata_values(source, bands)
        block_rows = step * max(1, READ_BLOCK_ROWS // step)
        blocks = []
        for row0 in range(0, source.height, block_rows):
            window = source.read(bands, row0, 0, min(block_rows, source.height - row0), source.width)
            window = window[::step, ::step]
            blocks.append(scaling.apply(window, valid_mask(window, nodata)))
    finally:
        source.close()
    return np.concatenate(blocks, axis=0)


def class_map_for_display(stats: dict, size: int = DISPLAY_SIZE) -> np.ndarray:
    """The class raster `predict_paths` wrote (GeoTIFF or PNG), subsampled like `input_for_display`."""
    path = Path(stats["outputs"]["classes"])
    height, width = stats["prediction"]["input_size"]
    step = display_step(height, width, size)
    if path.suffix.lower() == ".png":
        with Image.open(path) as image:
            return np.asarray(image)[::step, ::step]
    import rasterio

    # The class raster is one byte a pixel: reading it whole is cheap next to the scene itself.
    with rasterio.open(path) as dataset:
        return dataset.read(1)[::step, ::step]


def colorize(class_map: np.ndarray, stats: dict) -> np.ndarray:
    """RGB uint8 of a class map in the palette recorded with the prediction (no data in black)."""
    lookup = np.zeros((256, 3), dtype=np.uint8)
    lookup[: len(stats["prediction"]["palette"])] = stats["prediction"]["palette"]
    lookup[NODATA_CLASS] = NODATA_COLOR
    return lookup[class_map]


def blend(background: np.ndarray, colored: np.ndarray, opacity: float) -> np.ndarray:
    """The colourised map over the input at `opacity` (0: the input only, 1: the map only)."""
    opacity = float(np.clip(opacity, 0.0, 1.0))
    mixed = background.astype(np.float32) * (1.0 - opacity) + colored.astype(np.float32) * opacity
    return np.round(mixed).astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> Path:
    """`array` as PNG at zlib level 1: on a 1024x1024 map 3x faster than PIL's default level, and 9% larger."""
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG", compress_level=1)
    return path


def save_layers(folder: Path, background: np.ndarray, colored: np.ndarray) -> str:
    """Keeps the two display layers in the request's folder (uncompressed: milliseconds to write and read), so a
    visitor's session holds only the folder's name, not megabytes of pixels, until the opacity changes."""
    for name, array in (("background", background), ("classes", colored)):
        with atomic_path(folder / f"display-{name}.npy") as temporary, open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return str(folder)


def load_layers(folder: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The layers `save_layers` kept, or None once the request's folder has been cleaned away."""
    if not folder:
        return None
    try:
        return tuple(np.load(Path(folder) / f"display-{name}.npy") for name in ("background", "classes"))
    except FileNotFoundError:
        return None


def class_colors(stats: dict) -> dict[str, str]:
    """Class label to its hex colour, "no data" included."""
    palette = stats["prediction"]["palette"]
    colors = {}
    for item in stats["classes"]:
        rgb = NODATA_COLOR if item["id"] == NODATA_CLASS else palette[item["id"]]
        colors[item["label"]] = "#{:02x}{:02x}{:02x}".format(*rgb)
    return colors


def legend_html(stats: dict) -> str:
    """A legend of every class: colour swatch, name and share of the scene."""
    colors = class_colors(stats)
    rows = []
    for item in stats["classes"]:
        label = html.escape(item["label"])
        rows.append(
            f'<li class="legend-row" data-class-id="{item["id"]}">'
            f'<span class="legend-swatch" style="background:{colors[item["label"]]}"></span>'
            f'<span class="legend-label">{label}</span> <span class="legend-share">{item["percent"]:.2f} %</span></li>'
        )
    return f'<ul class="legend">{"".join(rows)}</ul>'


def area_table(stats: dict) -> pd.DataFrame:
    """Per-class pixels, share and (georeferenced input) area in km², as the statistics JSON holds them."""
    table = pd.DataFrame(
        {
            "class": [item["label"] for item in stats["classes"]],
            "pixels": [item["pixels"] for item in stats["classes"]],
            "share (%)": [round(item["percent"], 2) for item in stats["classes"]],
        }
    )
    if stats.get("total_km2") is not None:
        table["area (km²)"] = [round(item["km2"], 4) for item in stats["classes"]]
    return table


def area_chart(stats: dict) -> tuple[pd.DataFrame, str]:
    """The bar chart's data (area in km² when georeferenced, otherwise share) and the name of its value column."""
    table = area_table(stats)
    value = "area (km²)" if "area (km²)" in table else "share (%)"
    return table[["class", value]], value


def summary_markdown(stats: dict, seconds: float, tta: str = "none") -> str:
    """One line on what was predicted: the file, its size, the settings, and the time taken."""
    prediction = stats["prediction"]
    height, width = prediction["input_size"]
    area = f", {stats['total_km2']:.2f} km²" if stats.get("total_km2") is not None else ""
    return (
        f"**{html.escape(Path(prediction['input']).name)}**: {width}x{height} px{area}; bands "
        f"{','.join(map(str, prediction['bands']))}, scaling {prediction['scaling']['method']}, "
        f"{prediction['num_tiles']} tile(s){'' if tta == 'none' else f', TTA {tta}'}; predicted in {seconds:.2f} s."
    )


__all__ = [
    "area_chart",
    "area_table",
    "blend",
    "class_colors",
    "class_map_for_display",
    "colorize",
    "display_step",
    "input_for_display",
    "legend_html",
    "load_layers",
    "save_layers",
    "save_png",
    "summary_markdown",
]
