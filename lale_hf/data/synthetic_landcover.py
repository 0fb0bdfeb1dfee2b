"""A procedural land-cover sample in the exact ARAS400k distribution format, generated deterministically from a seed.

The project cannot ship ARAS400k, so this makes a small stand-in with the same layout (`train.zip`, `val.zip`,
`test.zip`, `synth.zip` holding `ARAS400k/{split}/images/NAME.png` and `masks/NAME.png`, plus their MD5 list), the
ARAS palette, ARAS-style names (`N45E010_003_004`) and per-patch max scaling. Scenes are built from Voronoi regions
with noise-warped borders, rectangular fields for Crop, rivers and lakes for Water, blocky Built-up districts and
class-specific colour and texture, so that a model can learn them. It is for plumbing and demos, never a source of
accuracy claims.

Every patch is drawn from its own generator seeded by (seed, split, index), so the output is byte-identical for a
seed whatever the number of processes.
"""

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..configuration_lale import ARAS400K_LABELS, ARAS400K_PALETTE
from ..file_utils import replace_folder
from .aras400k_format import SAMPLE_MARKER, SPLIT_SOURCES, Aras400kError
from .checksums import write_md5_list
from .output_folder import check_output_folder, staging_folder
from .worker_processes import die_with_parent, process_context
from .zip_members import write_split_zip


GENERATOR_VERSION = 1
PATCH_SIZE = 256
DEFAULT_SAMPLE_SIZES = {"train": 512, "val": 128, "test": 128, "synth": 256}

TREE, SHRUB, GRASS, CROP, BUILT_UP, BARREN, WATER = range(7)

# Mean RGB of each class as surface reflectance x 10000, roughly what Sentinel-2 sees.
_CLASS_RGB = np.array(
    [
        (230, 380, 210),  # Tree: dark green canopy
        (620, 600, 430),  # Shrub: olive brown
        (520, 820, 360),  # Grass: bright green
        (600, 760, 420),  # Crop: replaced per field below
        (1250, 1180, 1120),  # Built-up: grey
        (1750, 1580, 1340),  # Barren: light beige
        (160, 300, 460),  # Water: dark blue
    ],
    dtype=np.float32,
)
# Crop fields in different stages: green crop, ripe yellow, bare brown soil, young light green.
_CROP_RGB = np.array([(420, 820, 300), (1150, 1020, 560), (930, 720, 520), (700, 900, 430)], dtype=np.float32)
# Roofs (red tiles, white, grey metal) and asphalt.
_ROOF_RGB = np.array([(1700, 880, 760), (2300, 2250, 2200), (1050, 1080, 1150)], dtype=np.float32)
_ROAD_RGB = np.array((780, 770, 800), dtype=np.float32)
# Per-class texture: (fine, per-pixel grain) and (medium, blotches) amplitudes as fractions of brightness.
_TEXTURE = np.array(
    [(0.22, 0.16), (0.30, 0.12), (0.05, 0.08), (0.04, 0.05), (0.18, 0.10), (0.10, 0.14), (0.02, 0.05)],
    dtype=np.float32,
)
# Scene types and the land-class mix of their regions (Tree, Shrub, Grass, Crop, Built-up, Barren).
_SCENES = {
    "farmland": (0.14, 0.04, 0.18, 0.58, 0.04, 0.02),
    "forest": (0.62, 0.12, 0.14, 0.10, 0.01, 0.01),
    "rangeland": (0.10, 0.36, 0.34, 0.05, 0.01, 0.14),
    "urban": (0.12, 0.02, 0.18, 0.10, 0.55, 0.03),
    "mountain": (0.22, 0.20, 0.18, 0.02, 0.01, 0.37),
}
_SCENE_WEIGHTS = (0.30, 0.24, 0.16, 0.15, 0.15)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise of unit scale: a random `cells` x `cells` grid upsampled bicubically to `size` x `size`."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    upsampled = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(upsampled)


def _rotated_coordinates(size: int, angle: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by `angle` and shifted by a random offset (fields and blocks along any axis)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    offset = rng.uniform(0, 1000, 2).astype(np.float32)
    return xx * cos + yy * sin + offset[0], -xx * sin + yy * cos + offset[1]


def _cells(coordinate: np.ndarray, rng: np.random.Generator, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Splits a coordinate axis into cells of random widths in [low, high); returns (cell index, distance to edge)."""
    span = float(coordinate.max()) + high
    edges = np.cumsum(rng.uniform(low, high, int(span / low) + 2)).astype(np.float32)
    index = np.searchsorted(edges, coordinate)
    start = np.concatenate([[0.0], edges]).astype(np.float32)[index]
    return index, np.minimum(coordinate - start, edges[index] - coordinate)


def generate_patch(seed, size: int = PATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One procedural patch: (RGB uint8 (H, W, 3) scaled by its own maximum, class-index map uint8 (H, W)).

    `seed` is anything `numpy.random.default_rng` takes (an int or a sequence of ints).
    """
    rng = np.random.default_rng(seed)
    scene = list(_SCENES)[rng.choice(len(_SCENES), p=_SCENE_WEIGHTS)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # Regions: Voronoi cells of noise-warped coordinates, each of a land class drawn from the scene's mix.
    num_regions = int(rng.integers(3, 10))
    warp = size / 10
    wx = xx + warp * (_smooth_noise(rng, size, 3) + 0.5 * _smooth_noise(rng, size, 7))
    wy = yy + warp * (_smooth_noise(rng, size, 3) + 0.5 * _smooth_noise(rng, size, 7))
    centers = rng.uniform(-0.1 * size, 1.1 * size, (num_regions, 2)).astype(np.float32)
    distances = (wx[None] - centers[:, 0, None, None]) ** 2 + (wy[None] - centers[:, 1, None, None]) ** 2
    region = np.argmin(distances, axis=0)
    region_class = rng.choice(6, size=num_regions, p=_SCENES[scene])
    labels = region_class[region].astype(np.uint8)
    # Regions of one class still differ a little in tone.
    tone = 1.0 + 0.08 * rng.standard_normal((num_regions, 3)).astype(np.float32)
    rgb = _CLASS_RGB[labels] * tone[region]

    # Crop: rectangular fields along a common direction, each in its own growth stage, with darker borders.
    crop = labels == CROP
    if crop.any():
        u, v = _rotated_coordinates(size, rng.uniform(0, np.pi), rng)
        field_u, edge_u = _cells(u, rng, 18, 64)
        field_v, edge_v = _cells(v, rng, 18, 64)
        stage = (field_u * 7919 + field_v * 104729 + int(rng.integers(1 << 20))) % len(_CROP_RGB)
        field_rgb = _CROP_RGB[stage] * (1.0 + 0.06 * rng.standard_normal(3).astype(np.float32))
        field_rgb[np.minimum(edge_u, edge_v) < 1.0] *= 0.8
        rgb[crop] = field_rgb[crop]

    # Built-up: a street grid of blocks, most of them built (roofs), some parks; streets are built-up too.
    built = labels == BUILT_UP
    if built.any():
        u, v = _rotated_coordinates(size, rng.uniform(0, np.pi / 2), rng)
        block_u, edge_u = _cells(u, rng, 10, 26)
        block_v, edge_v = _cells(v, rng, 10, 26)
        street = np.minimum(edge_u, edge_v) < rng.uniform(1.0, 2.5)
        block_code = block_u * 7919 + block_v * 104729 + int(rng.integers(1 << 20))
        park = (block_code % 100) < 18
        roof = (block_code // 100) % len(_ROOF_RGB)
        built_rgb = np.where(street[..., None], _ROAD_RGB, _ROOF_RGB[roof])
        built_rgb[park & ~street] = _CLASS_RGB[GRASS]
        rgb[built] = built_rgb[built]
        labels[built & park & ~street] = GRASS
    _add_villages(rng, labels, rgb, size, scene)
    _add_water(rng, labels, rgb, xx, yy, size)

    # Class-specific texture: per-pixel grain and medium-scale blotches.
    grain = rng.standard_normal((size, size)).astype(np.float32)
    blotches = _smooth_noise(rng, size, 24)
    amplitude = _TEXTURE[labels]
    rgb *= np.clip(1.0 + amplitude[..., 0] * grain + amplitude[..., 1] * blotches, 0.2, None)[..., None]
    # Light haze and overall brightness vary by acquisition; neighbouring pixels blend as in a 10 m sensor.
    rgb = rgb * rng.uniform(0.75, 1.25) + rng.uniform(0, 180)
    rgb = 0.6 * rgb + 0.1 * (np.roll(rgb, 1, 0) + np.roll(rgb, -1, 0) + np.roll(rgb, 1, 1) + np.roll(rgb, -1, 1))
    rgb = np.clip(rgb, 0, None)
    # ARAS400k scaling: each patch divided by its own maximum.
    image = (rgb / rgb.max() * 255).astype(np.uint8)
    return image, labels


def _add_villages(rng, labels, rgb, size, scene):
    """A few small blocky settlements in rural scenes."""
    if scene == "urban" or rng.random() > 0.45:
        return
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(3, 9))):
            y0 = int(np.clip(cy + rng.normal(0, 12), 0, size - 4))
            x0 = int(np.clip(cx + rng.normal(0, 12), 0, size - 4))
            h, w = rng.integers(3, 9, 2)
            labels[y0 : y0 + h, x0 : x0 + w] = BUILT_UP
            rgb[y0 : y0 + h, x0 : x0 + w] = _ROOF_RGB[rng.integers(len(_ROOF_RGB))]


def _add_water(rng, labels, rgb, xx, yy, size):
    """A meandering river and/or a lake with a noisy shore, never more than half the patch."""
    water = np.zeros((size, size), dtype=bool)
    if rng.random() < 0.3:
        angle = rng.uniform(0, np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        across = -xx * np.sin(angle) + yy * np.cos(angle)
        # Meanders: a few sinusoids of random wavelength along the river's axis.
        center = across.mean() + rng.uniform(-0.3, 0.3) * size
        for _ in range(3):
            wavelength, amplitude = rng.uniform(0.3, 1.2) * size, rng.uniform(0.02, 0.12) * size
            center = center + amplitude * np.sin(2 * np.pi * along / wavelength + rng.uniform(0, 2 * np.pi))
        width = rng.uniform(3, 12) * (1 + 0.3 * _smooth_noise(rng, size, 4))
        water |= np.abs(across - center) < width
    if rng.random() < 0.2:
        cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
        radius = rng.uniform(0.06, 0.2) * size * (1 + 0.35 * _smooth_noise(rng, size, 5))
        water |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    if water.mean() > 0.5:
        return
    labels[water] = WATER
    depth = 1.0 + 0.25 * _smooth_noise(rng, size, 6)
    rgb[water] = (_CLASS_RGB[WATER] * depth[..., None])[water]


def encode_pair(image: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    """PNG bytes of an RGB patch and of its ARAS colour mask (palette colours, RGB)."""
    colors = np.asarray(ARAS400K_PALETTE, dtype=np.uint8)[labels]
    encoded = []
    for array in (image, colors):
        buffer = io.BytesIO()
        # Level 1 is 3x faster than PIL's default 6 and, on these noisy patches, as small.
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        encoded.append(buffer.getvalue())
    return encoded[0], encoded[1]


def patch_name(split_tiles: list[str], index: int) -> str:
    """ARAS-style name of patch `index`: tiles hold 40x40 patches, as `{tile}_{row:03d}_{col:03d}`."""
    tile = split_tiles[index // 1600]
    row, col = divmod(index % 1600, 40)
    return f"{tile}_{row:03d}_{col:03d}"


def _split_tiles(seed: int, sizes: dict[str, int]) -> dict[str, list[str]]:
    """Disjoint tile names per split (so that splits are spatially apart, as in ARAS400k)."""
    rng = np.random.default_rng([seed, 1 << 16])
    cells = [f"N{lat:02d}E{lon:03d}" for lat in range(30, 60) for lon in range(0, 45)]
    order = rng.permutation(len(cells))
    tiles, used = {}, 0
    for split, count in sizes.items():
        needed = max(1, -(-count // 1600))
        tiles[split] = [cells[i] for i in order[used : used + needed]]
        used += needed
    return tiles


def _render(job: tuple[int, int, int, str]) -> tuple[str, bytes, bytes]:
    seed, split_code, index, name = job
    image, labels = generate_patch([seed, split_code, index])
    return (name, *encode_pair(image, labels))


def _iter_pairs(jobs: list, pool, progress) -> Iterator[tuple[str, bytes, bytes]]:
    """Renders jobs in order (in `pool` if given), ticking `progress` per patch."""
    for pair in pool.imap(_render, jobs, chunksize=16) if pool is not None else map(_render, jobs):
        progress.update(1)
        yield pair


def generate_sample(
    output_dir: str | os.PathLike,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    num_proc: int = 1,
    overwrite: bool = False,
    overwrite_any: bool = False,
) -> Path:
    """Writes the procedural sample in ARAS400k's distribution format to `output_dir`; returns it.

    `sizes` maps the authors' split names (`train`, `val`, `test`, `synth`) to patch counts (defaults:
    `DEFAULT_SAMPLE_SIZES`; splits left out are not written). The folder gets the zips, `md5sums.txt` (which the
    converter uses in place of the published sums) and `lale-procedural-sample.json`; it appears atomically.
    `overwrite` replaces an existing `output_dir` only if it is an earlier sample (it holds that marker file) or
    empty; `overwrite_any` replaces anything.
    """
    sizes = dict(DEFAULT_SAMPLE_SIZES if sizes is None else sizes)
    unknown = [split for split in sizes if split not in SPLIT_SOURCES.values()]
    if unknown or any(count < 1 for count in sizes.values()):
        raise Aras400kError(f"`sizes` must map some of {list(SPLIT_SOURCES.values())} to positive counts, got {sizes}.")
    output_dir = Path(output_dir).resolve()
    check_output_folder(
        output_dir,
        [],
        overwrite=overwrite,
        overwrite_any=overwrite_any,
        marker=SAMPLE_MARKER,
        written_by="lale_hf.data.generate_sample",
    )
    with staging_folder(output_dir) as staging:
        tiles = _split_tiles(seed, sizes)
        split_codes = {name: code for code, name in enumerate(SPLIT_SOURCES.values())}
        pool = None
        try:
            if num_proc > 1:
                pool = process_context().Pool(num_proc, initializer=die_with_parent, initargs=(os.getpid(),))
            with tqdm(total=sum(sizes.values()), unit="patch", desc="Generating sample", dynamic_ncols=True) as bar:
                for split, count in sizes.items():
                    jobs = [(seed, split_codes[split], i, patch_name(tiles[split], i)) for i in range(count)]
                    write_split_zip(staging / f"{split}.zip", _iter_pairs(jobs, pool, bar), prefix=f"ARAS400k/{split}/")
            write_md5_list(staging, [f"{split}.zip" for split in sizes])
            marker = {
                "generator": "lale_hf.data.synthetic_landcover",
                "version": GENERATOR_VERSION,
                "seed": seed,
                "sizes": sizes,
                "classes": list(ARAS400K_LABELS),
                "note": "Procedural stand-in in the ARAS400k format, for plumbing and demos; not satellite data.",
            }
            (staging / SAMPLE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            replace_folder(staging, output_dir)
        finally:
            if pool is not None:
                pool.terminate()
    return output_dir


__all__ = ["DEFAULT_SAMPLE_SIZES", "encode_pair", "generate_patch", "generate_sample", "patch_name"]
