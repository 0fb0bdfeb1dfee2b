"""Sliding windows: the tile grid, blending of overlapping logits, and class rows streamed top to bottom.

Memory is bounded by the window buffers: inputs are read one tile at a time, logits are blended at the model's 1/4
output resolution in a buffer one tile high, and class rows are yielded as soon as no later tile can change them.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InferenceError
from .predictors import Predictor
from .scaling import Scaling, no_valid_pixel_error
from .sources import NODATA_CLASS, check_size, may_hold_nodata, nodata_values, valid_mask


OUTPUT_STRIDE = 4
# Blended logits are upsampled in column chunks of this many pixels, so no buffer spans the scene width at full
# resolution.
UPSAMPLE_CHUNK = 1024


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of a scene lie.

    A scene that fits one tile is one tile of its own size, so prediction equals plain whole-image inference.
    Otherwise the scene is padded (edge-replicated, at most 3 pixels) to a multiple of 4 so that every tile starts
    on the 1/4-resolution logit grid, and the last tile of each row and column is moved back to end at the border.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int
    padded_height: int
    padded_width: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    overlap: int
    single: bool

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def stride(self) -> int:
        return max(self.tile_height, self.tile_width) - self.overlap


def _starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return tuple(starts)


def check_tiling(tile_size: int, overlap: float):
    """Raises `InferenceError` unless `tile_size` is a positive multiple of 32 and `overlap` lies in [0, 0.5]."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 32 or tile_size % 32:
        raise InferenceError(
            f"--tile_size {tile_size}: expected a positive multiple of 32 (the model downsamples 32x)."
        )
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap <= 0.5:
        raise InferenceError(f"--overlap {overlap}: expected a fraction of the tile between 0 and 0.5.")


def plan_tiles(height: int, width: int, tile_size: int = 256, overlap: float = 0.25) -> TileGrid:
    """The tile grid for a scene; `overlap` is a fraction of the tile (0 to 0.5), rounded to 4 pixels."""
    check_tiling(tile_size, overlap)
    check_size("scene", height, width)
    overlap_px = int(round(tile_size * overlap / OUTPUT_STRIDE)) * OUTPUT_STRIDE
    if height <= tile_size and width <= tile_size:
        return TileGrid(height, width, height, width, height, width, (0,), (0,), overlap_px, True)
    padded_height = -(-height // OUTPUT_STRIDE) * OUTPUT_STRIDE
    padded_width = -(-width // OUTPUT_STRIDE) * OUTPUT_STRIDE
    tile_height, tile_width = min(tile_size, padded_height), min(tile_size, padded_width)
    stride = tile_size - overlap_px
    return TileGrid(
        height,
        width,
        tile_height,
        tile_width,
        padded_height,
        padded_width,
        _starts(padded_height, tile_height, stride),
        _starts(padded_width, tile_width, stride),
        overlap_px,
        False,
    )


def blend_weights(start: int, length: int, total: int, overlap: int) -> np.ndarray:
    """1-D weights of a tile at 1/4 resolution: linear ramps over the overlap towards neighbouring tiles only.

    Two neighbours' ramps sum to one across their overlap, a smooth cross-fade; sides on the scene border keep
    weight 1, so a lone tile is weighted 1 everywhere.
    """
    cells = length // OUTPUT_STRIDE if length % OUTPUT_STRIDE == 0 else -(-length // OUTPUT_STRIDE)
    weights = np.ones(cells, dtype=np.float32)
    ramp = overlap / OUTPUT_STRIDE
    if ramp > 0:
        position = np.arange(cells, dtype=np.float32) + 0.5
        if start > 0:
            weights = np.minimum(weights, position / ramp)
        if start + length < total:
            weights = np.minimum(weights, (cells - position) / ramp)
    return weights


def _read_tile(source, bands, nodata, scaling: Scaling, grid: TileGrid, y: int, x: int) -> np.ndarray:
    """The scaled uint8 RGB tile at (y, x), no data as 0, edge-padded where the grid runs past the scene."""
    height, width = min(grid.tile_height, grid.height - y), min(grid.tile_width, grid.width - x)
    window = source.read(bands, y, x, height, width)
    tile = scaling.apply(window, valid_mask(window, nodata))
    if height < grid.tile_height or width < grid.tile_width:
        tile = np.pad(tile, ((0, grid.tile_height - height), (0, grid.tile_width - width), (0, 0)), mode="edge")
    return tile


def _pixel_value_table(source, scaling: Scaling, predictor: Predictor) -> np.ndarray | None:
    """(3, levels) float32: the `pixel_values` of every raw 8- or 16-bit level, per output channel, or None where
    no such table applies (float input, per-tile scaling, a predictor with its own `normalize`).

    Scaling and normalisation work pixel by pixel and band by band, so looking raw values up in a table made by
    the same two functions gives the same float32 values, bit for bit, in one pass and with no intermediate copy.
    """
    if source.dtype not in (np.uint8, np.uint16) or scaling.method == "per_patch_max":
        return None
    if type(predictor).normalize is not Predictor.normalize:
        return None
    levels = np.arange(np.iinfo(source.dtype).max + 1, dtype=source.dtype)
    return predictor.normalize(scaling.apply(np.repeat(levels[:, None, None], 3, axis=2)))[:, :, 0]


def _tile_region(source, bands, nodata, scaling, grid, predictor, table, y: int, x0: int, x1: int) -> np.ndarray:
    """float32 (3, tile height, x1 - x0) `pixel_values` of the tile-row region from column x0 to x1, read once;
    edge-padded where the grid runs past the scene, as a tile of its own would be."""
    height, width = min(grid.tile_height, grid.height - y), min(x1, grid.width) - x0
    window = source.read(bands, y, x0, height, width)
    valid = valid_mask(window, nodata)
    if table is not None:
        flip = predictor.preprocessing.flip_channel_order
        values = np.empty((3, height, width), dtype=np.float32)
        for channel in range(3):
            np.take(table[channel], window[..., 2 - channel if flip else channel], out=values[channel])
            if valid is not None:
                values[channel][~valid] = table[channel][0]  # no data scales as 0
    else:
        values = predictor.normalize(scaling.apply(window, valid))
    if height < grid.tile_height or width < x1 - x0:
        values = np.pad(values, ((0, 0), (0, grid.tile_height - height), (0, x1 - x0 - width)), mode="edge")
    return values


def _batches(
    source, bands, nodata, scaling, grid, predictor, batch_size, tile_rows: range
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Batches of tiles, in raster order, and their logits.

    A batch never spans two tile rows, so a tile row is batched the same way whichever block of rows it is
    predicted in: batch composition can change a convolution's floating-point path, and blocks must be bit-exact.
    A batch's tiles are read as one region and scaled and normalised once (overlaps included), except with
    per-tile scaling or a predictor's own `normalize`, where each tile is scaled and normalised alone.
    """
    table = _pixel_value_table(source, scaling, predictor)
    per_tile = scaling.method == "per_patch_max" or type(predictor).normalize is not Predictor.normalize
    for y in (grid.ys[index] for index in tile_rows):
        tiles = [(y, x) for x in grid.xs]
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            if per_tile:
                pixel_values = np.stack(
                    [predictor.normalize(_read_tile(source, bands, nodata, scaling, grid, y, x)) for y, x in chunk]
                )
            else:
                x0, x1 = chunk[0][1], chunk[-1][1] + grid.tile_width
                region = _tile_region(source, bands, nodata, scaling, grid, predictor, table, y, x0, x1)
                pixel_values = np.stack([region[:, :, x - x0 : x - x0 + grid.tile_width] for _, x in chunk])
            yield chunk, predictor(pixel_values)


def _upsample_to_labels(logits: torch.Tensor, first_row: int, grid: TileGrid, row0: int, row1: int) -> np.ndarray:
    """Class indices of output rows [row0, row1) from blended logits whose first row is logit row `first_row`."""
    labels = np.empty((row1 - row0, grid.width), dtype=np.uint8)
    for col0, col1, crop in _upsampled_chunks(logits, first_row, grid, row0, row1):
        labels[:, col0:col1] = _argmax(crop)
    return labels


def _upsample_to_probabilities(
    logits: torch.Tensor, first_row: int, grid: TileGrid, row0: int, row1: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and class probabilities (softmax of the upsampled blended logits, float32 (classes, rows,
    width)) of output rows [row0, row1)."""
    labels = np.empty((row1 - row0, grid.width), dtype=np.uint8)
    probabilities = np.empty((logits.shape[0], row1 - row0, grid.width), dtype=np.float32)
    for col0, col1, crop in _upsampled_chunks(logits, first_row, grid, row0, row1):
        labels[:, col0:col1] = _argmax(crop)
        probabilities[:, :, col0:col1] = torch.softmax(crop, dim=0).numpy()
    return labels, probabilities


def _upsampled_chunks(logits: torch.Tensor, first_row: int, grid: TileGrid, row0: int, row1: int):
    """Full-resolution logits of output rows [row0, row1), as (col0, col1, (classes, rows, col1 - col0)) chunks.

    Bilinear upsampling by exactly 4 is shift-invariant, so upsampling blocks with a one-cell halo gives the same
    values as upsampling the whole scene at once; column chunks keep the full-resolution buffer small.
    """
    if grid.single:
        upsampled = torch.nn.functional.interpolate(
            logits[None], size=(grid.height, grid.width), mode="bilinear", align_corners=False
        )[0]
        yield 0, grid.width, upsampled[:, row0:row1]
        return
    cells_high, cells_wide = grid.padded_height // OUTPUT_STRIDE, grid.padded_width // OUTPUT_STRIDE
    top = max(row0 // OUTPUT_STRIDE - 1, 0)
    bottom = min((row1 - 1) // OUTPUT_STRIDE + 2, cells_high)
    # Only the last two upsampled rows of a block see its lower edge, and they lie below row1.
    bottom = min(bottom, first_row + logits.shape[1])
    rows = logits[:, top - first_row : bottom - first_row]
    for col0 in range(0, grid.width, UPSAMPLE_CHUNK):
        col1 = min(col0 + UPSAMPLE_CHUNK, grid.width)
        left = max(col0 // OUTPUT_STRIDE - 1, 0)
        right = min((col1 - 1) // OUTPUT_STRIDE + 2, cells_wide)
        block = rows[:, :, left:right]
        size = (block.shape[1] * OUTPUT_STRIDE, block.shape[2] * OUTPUT_STRIDE)
        upsampled = torch.nn.functional.interpolate(block[None], size=size, mode="bilinear", align_corners=False)[0]
        crop = upsampled[
            :,
            row0 - top * OUTPUT_STRIDE : row1 - top * OUTPUT_STRIDE,
            col0 - left * OUTPUT_STRIDE : col1 - left * OUTPUT_STRIDE,
        ]
        yield col0, col1, crop


def _argmax(logits: torch.Tensor) -> np.ndarray:
    """uint8 class indices of (classes, H, W) logits; ties go to the first class, as with `np.argmax`.

    A running maximum over the class planes reads each plane once, in memory order: faster than `np.argmax` over
    the leading axis (which gathers strided values), itself several times faster than torch's on CPU. A NaN
    anywhere propagates into the maximum, and then `np.argmax` decides, as before.
    """
    values = logits.numpy()
    best = values[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    better = np.empty(best.shape, dtype=bool)
    for index in range(1, len(values)):
        np.greater(values[index], best, out=better)
        np.maximum(best, values[index], out=best)
        np.putmask(labels, better, index)
    if np.isnan(best).any():
        return values.argmax(axis=0).astype(np.uint8)
    return labels


def iter_label_rows(
    source,
    predictor: Predictor,
    bands: Sequence[int],
    scaling: Scaling,
    grid: TileGrid,
    batch_size: int = 8,
    progress: bool = True,
    rows: tuple[int, int] | None = None,
    probabilities: bool = False,
) -> Iterator[tuple]:
    """Predicts a scene tile by tile and yields `(first_row, class rows)` top to bottom, each row exactly once.

    Logits of overlapping tiles are averaged with `blend_weights` at 1/4 resolution in a buffer one tile high;
    logit rows no later tile reaches are normalised, upsampled and turned into class rows.

    `rows=(row0, row1)` predicts only those output rows, from the tile rows `block_tile_rows` names (the block and
    a halo); they equal, bit for bit, the same rows of a whole-scene run. A block does not check that the scene
    holds a valid pixel: its caller does, over all blocks.

    `probabilities=True` yields `(first_row, class rows, probabilities)`: the softmax of the same upsampled
    blended logits the classes come from, float32 (classes, rows, width), so they have no seams either.
    """
    if batch_size < 1:
        raise InferenceError(f"--batch_size {batch_size}: expected a positive integer.")
    num_classes = len(predictor.id2label)
    cells_high, cells_wide = logit_grid_shape(grid)
    tile_cells = -(-grid.tile_height // OUTPUT_STRIDE)
    whole = rows is None or tuple(rows) == (0, grid.height)
    row0, row1 = (0, grid.height) if rows is None else rows
    tile_rows = block_tile_rows(grid, row0, row1)
    # The logit rows the last output row needs: the final flush stops there.
    last_cell = cells_high if whole else min(cells_high, (row1 - 1) // OUTPUT_STRIDE + 2)
    nodata = nodata_values(source, bands)
    masked = may_hold_nodata(source, nodata)
    valid_pixels = 0
    weights_x = {x: blend_weights(x, grid.tile_width, grid.padded_width, grid.overlap) for x in grid.xs}
    # acc/weight hold logit rows [acc_row, acc_row + tile_cells) of the current tile row; ready holds final,
    # normalised logit rows from ready_row on, kept until the rows they feed have been emitted.
    acc = weight = None
    acc_row = 0
    ready = torch.zeros(num_classes, 0, cells_wide)
    ready_row = grid.ys[tile_rows.start] // OUTPUT_STRIDE
    emitted = row0

    def finish_rows(upto_cell: int):
        nonlocal acc, weight, acc_row, ready, ready_row, emitted, valid_pixels
        count = upto_cell - acc_row
        final = acc[:, :count] / weight[:count]
        ready = torch.cat([ready, final], dim=1)
        acc, weight, acc_row = acc[:, count:], weight[count:], upto_cell
        done = upto_cell >= cells_high
        # An output row needs the logit row below it, which must be final too.
        limit = row1 if done else min(row1, upto_cell * OUTPUT_STRIDE - 2)
        if limit > emitted:
            if probabilities:
                labels, probs = _upsample_to_probabilities(ready, ready_row, grid, emitted, limit)
            else:
                labels = _upsample_to_labels(ready, ready_row, grid, emitted, limit)
            if masked:
                valid_pixels += _mask_nodata(source, bands, nodata, labels, emitted)
            yield (emitted, labels, probs) if probabilities else (emitted, labels)
            emitted = limit
            keep_from = max(emitted // OUTPUT_STRIDE - 1, 0)
            ready, ready_row = ready[:, keep_from - ready_row :], keep_from

    num_tiles = len(tile_rows) * len(grid.xs)
    with tqdm(total=num_tiles, desc=Path(source.name).name, unit="tile", disable=not progress) as bar:
        for tiles, logits in _batches(source, bands, nodata, scaling, grid, predictor, batch_size, tile_rows):
            if logits.shape[-2:] != (tile_cells, -(-grid.tile_width // OUTPUT_STRIDE)):
                raise InferenceError(
                    f"The model returned logits of size {tuple(logits.shape[-2:])} for tiles of "
                    f"{grid.tile_height}x{grid.tile_width}; expected 1/{OUTPUT_STRIDE} of the tile size."
                )
            for (y, x), tile_logits in zip(tiles, logits, strict=True):
                cell_y = y // OUTPUT_STRIDE
                if acc is None or cell_y != acc_row:
                    if acc is not None:
                        yield from finish_rows(cell_y)
                    # Start the buffer at this tile row, carrying the overlap rows of the previous one.
                    carried = 0 if acc is None else acc.shape[1]
                    new_acc = torch.zeros(num_classes, tile_cells, cells_wide)
                    new_weight = torch.zeros(tile_cells, cells_wide)
                    if carried:
                        new_acc[:, :carried] = acc
                        new_weight[:carried] = weight
                    acc, weight, acc_row = new_acc, new_weight, cell_y
                    weights_y = torch.from_numpy(blend_weights(y, grid.tile_height, grid.padded_height, grid.overlap))
                cell_x = x // OUTPUT_STRIDE
                tile_weight = weights_y[:, None] * torch.from_numpy(weights_x[x])[None, :]
                cells_x = tile_logits.shape[-1]
                acc[:, : tile_logits.shape[-2], cell_x : cell_x + cells_x] += tile_logits * tile_weight
                weight[: tile_logits.shape[-2], cell_x : cell_x + cells_x] += tile_weight
                bar.update(1)
        yield from finish_rows(last_cell)
    if whole and masked and not valid_pixels:
        # Checked at the end for scalings without a first pass; the caller discards what was written.
        raise no_valid_pixel_error(source, bands, nodata)


def logit_grid_shape(grid: TileGrid) -> tuple[int, int]:
    """Rows and columns of the scene's blended logits at 1/4 resolution."""
    if grid.single:
        return -(-grid.height // OUTPUT_STRIDE), -(-grid.width // OUTPUT_STRIDE)
    return grid.padded_height // OUTPUT_STRIDE, grid.padded_width // OUTPUT_STRIDE


def block_tile_rows(grid: TileGrid, row0: int, row1: int) -> range:
    """The tile rows (indexes into `grid.ys`) whose tiles reach the logit rows output rows [row0, row1) need.

    Bilinear upsampling by 4 reads the logit rows from `row0 // 4 - 1` to `(row1 - 1) // 4 + 1`; every tile that
    covers one of them is included, in the order a whole-scene run adds them, so their blended values are the same
    floating-point sums.
    """
    if not 0 <= row0 < row1 <= grid.height:
        raise InferenceError(f"Rows [{row0}, {row1}) lie outside the scene's {grid.height} rows.")
    cells_high, _ = logit_grid_shape(grid)
    tile_cells = -(-grid.tile_height // OUTPUT_STRIDE)
    low = max(row0 // OUTPUT_STRIDE - 1, 0)
    high = min((row1 - 1) // OUTPUT_STRIDE + 1, cells_high - 1)
    needed = [i for i, y in enumerate(grid.ys) if y // OUTPUT_STRIDE <= high and y // OUTPUT_STRIDE + tile_cells > low]
    return range(needed[0], needed[-1] + 1)


def split_rows(grid: TileGrid, tile_rows_per_block: int) -> list[tuple[int, int]]:
    """Output-row ranges of blocks of `tile_rows_per_block` tile rows each, covering the scene once.

    A boundary lies in the middle of the rows only its tile row covers (between the previous tile row's end and the
    next one's start), so the blocks on both sides share one tile row, predicted twice, rather than the two an
    overlap zone would cost. Blocks follow the tile grid and depend on nothing else (not on the number of
    processes).
    """
    if tile_rows_per_block < 1:
        raise InferenceError(f"--block_rows {tile_rows_per_block}: expected a positive number of tile rows.")
    ys, height = grid.ys, grid.height
    starts = [0]
    for index in range(tile_rows_per_block, len(ys), tile_rows_per_block):
        covered_above = ys[index - 1] + grid.tile_height
        next_start = ys[index + 1] if index + 1 < len(ys) else height
        boundary = ys[index]
        if next_start > covered_above:  # a zone only this tile row covers
            boundary = (covered_above + next_start) // 2 // OUTPUT_STRIDE * OUTPUT_STRIDE
        if starts[-1] < boundary < height:
            starts.append(boundary)
    return list(zip(starts, [*starts[1:], height], strict=True))


def _mask_nodata(source, bands, nodata: np.ndarray | None, labels: np.ndarray, row0: int) -> int:
    """Sets the pixels of `labels` (rows from `row0`) that hold no data to `NODATA_CLASS`; returns how many hold
    data."""
    valid_pixels = 0
    for col0 in range(0, source.width, UPSAMPLE_CHUNK):
        col1 = min(col0 + UPSAMPLE_CHUNK, source.width)
        window = source.read(bands, row0, col0, labels.shape[0], col1 - col0)
        valid = valid_mask(window, nodata)
        labels[:, col0:col1][~valid] = NODATA_CLASS
        valid_pixels += int(valid.sum())
    return valid_pixels


__all__ = [
    "OUTPUT_STRIDE",
    "TileGrid",
    "blend_weights",
    "block_tile_rows",
    "check_tiling",
    "iter_label_rows",
    "logit_grid_shape",
    "plan_tiles",
    "split_rows",
]
