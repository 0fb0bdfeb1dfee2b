"""Converting pairs into Parquet shards: one shard per task, in worker processes (or in this process), with one
progress bar in the parent and no hang when a worker dies."""

import dataclasses
import os
import queue
import sqlite3
import traceback
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .aras400k_format import Aras400kError, parse_patch_name
from .output_folder import write_error
from .pair_index import SplitSource
from .patch_png import check_png_image, mask_bytes_to_label_png
from .worker_processes import die_with_parent, parent_alive, process_context
from .zip_members import FolderMemberReader, ZipMemberReader


ROWS_PER_ROW_GROUP = 100


@dataclasses.dataclass
class ShardTask:
    source: SplitSource
    split: str
    shard_index: int
    shard_path: Path
    index_path: Path
    start: int  # ranks [start, stop) of the split's pairs in the pair index
    stop: int
    schema: pa.Schema
    unknown_to_ignore: bool
    max_image_pixels: int


@dataclasses.dataclass
class ShardResult:
    split: str
    shard_index: int
    num_examples: int
    num_bytes: int
    unknown_pixels: int


@dataclasses.dataclass
class _ShardFailure:
    error_class: type[Exception]  # Aras400kError (bad input), OutputFolderError, or RuntimeError for anything else
    detail: str


# Where finished rows are reported: a shared counter in worker processes, the progress bar when run in-process.
_progress_callback: Callable[[int], None] | None = None


def _report_progress(count: int):
    if _progress_callback is not None:
        _progress_callback(count)


def _worker_loop(task_queue, result_queue, counter, parent_pid: int):
    """Worker process: converts shards from `task_queue` until a None arrives; the first failure ends it, and so
    does the death of the parent (killed by the kernel on Linux, else found at the next row group or queue poll)."""
    die_with_parent(parent_pid)

    def add(count: int):
        if not parent_alive(parent_pid):
            os._exit(1)
        with counter.get_lock():
            counter.value += count

    global _progress_callback
    _progress_callback = add
    while True:
        try:
            task = task_queue.get(timeout=1.0)
        except queue.Empty:
            if not parent_alive(parent_pid):
                return
            continue
        if task is None:
            return
        try:
            result_queue.put(convert_shard(task))
        except BaseException as error:
            # Sent as text: not every exception pickles, and the message is what the user needs.
            if isinstance(error, Aras400kError):
                result_queue.put(_ShardFailure(type(error), str(error)))
            else:
                result_queue.put(_ShardFailure(RuntimeError, traceback.format_exc()))
            return


def convert_shard(task: ShardTask) -> ShardResult:
    """Converts one shard's pairs into one Parquet file, a row group at a time. A failed write (full disk, ...) is
    an `OutputFolderError`; unreadable inputs are an `Aras400kError` naming the file."""
    try:
        return _convert_shard(task)
    except OSError as error:  # reads raise Aras400kError, so this came from writing the shard
        raise write_error(error, task.shard_path) from None


def _convert_shard(task: ShardTask) -> ShardResult:
    source = task.source
    reader = ZipMemberReader(source.path) if source.kind == "zip" else FolderMemberReader(source.path, source.tree)
    columns = {name: [] for name in task.schema.names}
    num_examples = num_bytes = unknown_pixels = 0
    writer = pq.ParquetWriter(
        task.shard_path,
        task.schema,
        # PNG bytes are already compressed: stored plain, with no compression, dictionary or statistics to compute.
        compression={"image.bytes": "none", "label.bytes": "none"},
        use_dictionary=["tile"],
        column_encoding={"image.bytes": "PLAIN", "label.bytes": "PLAIN"},
        write_statistics=False,
    )
    # Each worker opens the index itself (read-only): SQLite connections must not cross a fork.
    index = sqlite3.connect(f"{task.index_path.as_uri()}?mode=ro", uri=True)
    pairs = index.execute(
        "SELECT stem, image_name, image_location, mask_name, mask_location FROM pairs "
        "WHERE split = ? AND rank >= ? AND rank < ? ORDER BY rank",
        (task.split, task.start, task.stop),
    )
    try:
        for stem, image_path, image_location, mask_path, mask_location in pairs:
            image_source, mask_source = f"{source.label}:{image_path}", f"{source.label}:{mask_path}"
            image_bytes = reader.read(image_path, image_location)
            size = check_png_image(image_bytes, image_source, task.max_image_pixels)
            label_bytes, unknown = mask_bytes_to_label_png(
                reader.read(mask_path, mask_location), size, mask_source, task.unknown_to_ignore
            )
            tile, row, col = parse_patch_name(stem)
            columns["image"].append({"bytes": image_bytes, "path": f"{stem}.png"})
            columns["label"].append({"bytes": label_bytes, "path": f"{stem}.png"})
            columns["name"].append(stem)
            columns["tile"].append(tile)
            columns["patch_row"].append(row)
            columns["patch_col"].append(col)
            unknown_pixels += unknown
            if len(columns["name"]) == ROWS_PER_ROW_GROUP:
                num_bytes += _write_row_group(writer, task.schema, columns)
                num_examples += ROWS_PER_ROW_GROUP
                _report_progress(ROWS_PER_ROW_GROUP)
        if columns["name"]:
            rows = len(columns["name"])
            num_bytes += _write_row_group(writer, task.schema, columns)
            num_examples += rows
            _report_progress(rows)
    finally:
        writer.close()
        reader.close()
        index.close()
    return ShardResult(task.split, task.shard_index, num_examples, num_bytes, unknown_pixels)


def _write_row_group(writer: pq.ParquetWriter, schema: pa.Schema, columns: dict[str, list]) -> int:
    table = pa.Table.from_pydict(columns, schema=schema)
    writer.write_table(table)
    for values in columns.values():
        values.clear()
    return table.nbytes


def run_tasks(tasks: list[ShardTask], num_proc: int, total: int) -> list[ShardResult]:
    """Runs shard tasks in `num_proc` worker processes (in this process when 1), with one progress bar here.

    The first failure stops everything; a worker that dies without a word (e.g. killed for lack of memory) is an
    error too, never a hang.
    """
    global _progress_callback
    if num_proc <= 1:
        with tqdm(total=total, unit="pair", desc="Converting ARAS400k", dynamic_ncols=True) as progress:
            _progress_callback = progress.update
            try:
                return [convert_shard(task) for task in tasks]
            finally:
                _progress_callback = None
    context = process_context()
    counter, task_queue, result_queue = context.Value("q", 0), context.Queue(), context.Queue()
    workers = [
        context.Process(target=_worker_loop, args=(task_queue, result_queue, counter, os.getpid()), daemon=True)
        for _ in range(min(num_proc, len(tasks)))
    ]
    # Workers start before any queue feeder or tqdm thread exists in this process.
    for worker in workers:
        worker.start()
    results = []
    try:
        for task in tasks:
            task_queue.put(task)
        for _ in workers:
            task_queue.put(None)
        with tqdm(total=total, unit="pair", desc="Converting ARAS400k", dynamic_ncols=True) as progress:
            while len(results) < len(tasks):
                try:
                    outcome = result_queue.get(timeout=0.5)
                except queue.Empty:
                    dead = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(
                            f"A converter worker process died with exit code {dead[0]} (killed, e.g. for lack of "
                            "memory); nothing was written. Try a smaller --num_proc."
                        ) from None
                else:
                    if isinstance(outcome, _ShardFailure):
                        raise outcome.error_class(outcome.detail)
                    results.append(outcome)
                progress.update(counter.value - progress.n)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()
        # Tasks never taken must not keep this process from exiting.
        task_queue.cancel_join_thread()
        task_queue.close()
    return results
