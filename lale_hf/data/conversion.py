"""`convert_aras400k`: ARAS400k zips (or extracted split folders) into a `datasets` folder of Parquet shards with a
dataset card, so that `datasets.load_dataset(output_dir)` (also with `streaming=True`) and the Hub read the result.

Members are read straight from the zips (no extraction), workers convert whole shards in parallel, and the output
appears atomically: everything is written to a hidden staging folder beside `output_dir` and renamed at the end.
"""

import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..file_utils import replace_folder
from ..hub_utils import push_folder
from .aras400k_format import DATASET_MARKER, SAMPLE_MARKER, Aras400kError, dataset_features, id2label
from .checksums import expected_md5s, verify_checksums
from .conversion_report import ConversionReport, SplitSummary
from .dataset_card import render_dataset_card
from .output_folder import check_output_folder, staging_folder, write_error
from .pair_index import (
    DEFAULT_MAX_MEMBER_SIZE,
    SplitIndex,
    find_split_sources,
    index_split,
    open_pair_index,
    shared_stems,
)
from .patch_png import DEFAULT_MAX_IMAGE_PIXELS
from .shard_workers import ShardTask, run_tasks


DEFAULT_MAX_SHARD_SIZE = 500 * 1024**2
# What a dataset push uploads: the card, the class names and the shards, nothing else that may lie in the folder.
DATASET_FILES = ("README.md", "id2label.json", "data/*.parquet")


def _plan_shards(indexes: dict[str, SplitIndex], max_shard_size: int, num_proc: int) -> dict[str, int]:
    """Shards per split: enough to keep each under `max_shard_size`, and at least `num_proc` shards overall."""
    counts = {
        split: min(index.num_pairs, max(1, math.ceil(index.estimated_bytes / max_shard_size)))
        for split, index in indexes.items()
    }
    while sum(counts.values()) < num_proc:
        splittable = [split for split in counts if indexes[split].num_pairs > counts[split]]
        if not splittable:
            break
        largest = max(splittable, key=lambda split: indexes[split].num_pairs / counts[split])
        counts[largest] += 1
    return counts


def _shard_tasks(
    indexes, shard_counts, data_dir: Path, index_path: Path, unknown_to_ignore: bool, max_image_pixels: int
) -> list[ShardTask]:
    schema = dataset_features().arrow_schema
    tasks = []
    for split, index in indexes.items():
        count = shard_counts[split]
        bounds = np.linspace(0, index.num_pairs, count + 1).round().astype(int).tolist()
        for shard in range(count):
            tasks.append(
                ShardTask(
                    source=index.source,
                    split=split,
                    shard_index=shard,
                    shard_path=data_dir / f"{split}-{shard:05d}-of-{count:05d}.parquet",
                    index_path=index_path,
                    start=bounds[shard],
                    stop=bounds[shard + 1],
                    schema=schema,
                    unknown_to_ignore=unknown_to_ignore,
                    max_image_pixels=max_image_pixels,
                )
            )
    # Largest first, so that the last shard to finish is a small one.
    return sorted(tasks, key=lambda task: task.start - task.stop)


def convert_aras400k(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    splits: Iterable[str] | None = None,
    num_proc: int = 1,
    verify_md5: bool = True,
    skip_unpaired: bool = False,
    unknown_to_ignore: bool = False,
    overwrite: bool = False,
    overwrite_any: bool = False,
    allow_split_overlap: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    max_member_size: int = DEFAULT_MAX_MEMBER_SIZE,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ConversionReport:
    """Converts the ARAS400k zips (or extracted split folders) in `input_dir` into a `datasets` folder.

    The output holds `data/{split}-NNNNN-of-NNNNN.parquet`, `README.md` (dataset card with configs) and
    `id2label.json`; it appears only when everything succeeded. Splits are named train, validation, test, synthetic.
    Zips are checked against `PUBLISHED_MD5` unless `verify_md5=False`; an `MD5SUMS` or `md5sums.txt` file in
    `input_dir` (`md5sum` format) overrides those sums for the files it lists, as for the generated sample.
    Bad input raises `Aras400kError` naming the file; `skip_unpaired` leaves out unpaired and duplicated stems,
    `unknown_to_ignore` maps unknown mask colours to 255. A stem in validation or test and in any other split is
    refused as leakage unless `allow_split_overlap` (then counted per split in the report); train and synthetic may
    share stems. An image declaring more than `max_image_pixels` pixels in its PNG header (default 1024x1024;
    ARAS400k patches are 256x256) is refused before it is decoded.

    `output_dir` may not be, lie inside, or contain `input_dir` or any zip or folder read (`OutputFolderError`).
    `overwrite` replaces an existing `output_dir` only if this function wrote it (it holds `DATASET_MARKER`) or it
    is empty; `overwrite_any` replaces any other folder or file.
    """
    start, cpu_start = time.perf_counter(), os.times()
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if num_proc < 1:
        raise Aras400kError(f"--num_proc must be at least 1, got {num_proc}.")
    if max_image_pixels < 1:
        raise Aras400kError(f"--max_image_pixels must be at least 1, got {max_image_pixels}.")
    sources = find_split_sources(input_dir, splits)
    check_output_folder(
        output_dir,
        [input_dir, *(source.path for source in sources.values())],
        overwrite=overwrite,
        overwrite_any=overwrite_any,
        marker=DATASET_MARKER,
        written_by="lale_hf.data.convert_aras400k",
    )

    # The staging folder comes first: an unwritable output fails now, not after hours of checksums.
    with staging_folder(output_dir) as staging:
        md5s = {}
        if verify_md5:
            md5s = verify_checksums([s.path for s in sources.values() if s.kind == "zip"], expected_md5s(input_dir))
        (staging / "data").mkdir()
        index_path = staging / "pair-index.sqlite"
        try:
            with contextlib.closing(open_pair_index(index_path)) as database:
                indexes = {
                    split: index_split(source, database, skip_unpaired, max_member_size)
                    for split, source in sources.items()
                }
                overlaps = shared_stems(database, indexes, allow=allow_split_overlap)
        except sqlite3.OperationalError as error:  # "database or disk is full", ...: the index is a staging file
            raise write_error(OSError(None, str(error)), index_path) from None
        shard_counts = _plan_shards(indexes, max_shard_size, num_proc)
        tasks = _shard_tasks(indexes, shard_counts, staging / "data", index_path, unknown_to_ignore, max_image_pixels)
        results = run_tasks(tasks, num_proc, sum(index.num_pairs for index in indexes.values()))
        index_path.unlink()
        summaries = {
            split: _summarize(index, [r for r in results if r.split == split], shard_counts[split], staging, md5s)
            for split, index in indexes.items()
        }
        for split, count in overlaps.items():
            summaries[split].stems_in_other_splits = count
        procedural = (input_dir / SAMPLE_MARKER).is_file()
        marker = {"written_by": "lale_hf.data.convert_aras400k", "splits": list(summaries)}
        try:
            (staging / "README.md").write_text(render_dataset_card(summaries, procedural), encoding="utf-8")
            (staging / "id2label.json").write_text(json.dumps(id2label(), indent=2) + "\n", encoding="utf-8")
            (staging / DATASET_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            replace_folder(staging, output_dir)
        except OSError as error:
            raise write_error(error, output_dir) from None
    cpu = os.times()
    # Finished worker processes have been joined, so their time is in this process's children's time.
    workers_cpu = cpu.children_user + cpu.children_system - cpu_start.children_user - cpu_start.children_system
    return ConversionReport(
        output_dir,
        summaries,
        procedural,
        seconds=time.perf_counter() - start,
        cpu_seconds_main=cpu.user + cpu.system - cpu_start.user - cpu_start.system,
        cpu_seconds_workers=workers_cpu,
    )


def _summarize(index: SplitIndex, results, num_shards: int, staging: Path, md5s: dict) -> SplitSummary:
    source = index.source
    if source.path.name in md5s:
        md5, checked_against = md5s[source.path.name]
    else:
        md5, checked_against = None, "not checked" if source.kind == "zip" else "no checksum (extracted folder)"
    return SplitSummary(
        split=source.split,
        source=str(source.path),
        member_prefix=index.prefix,
        num_examples=sum(result.num_examples for result in results),
        num_shards=num_shards,
        num_bytes=sum(result.num_bytes for result in results),
        parquet_bytes=sum(path.stat().st_size for path in (staging / "data").glob(f"{source.split}-*.parquet")),
        md5=md5,
        md5_checked_against=checked_against,
        skipped_unpaired=index.skipped_unpaired,
        skipped_duplicates=index.skipped_duplicates,
        ignored_members=index.ignored_members,
        unknown_pixels=sum(result.unknown_pixels for result in results),
        stems_in_other_splits=0,
    )


def prepare_embedded_sample(
    output_dir: str | os.PathLike,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    num_proc: int = 1,
    overwrite: bool = False,
    zips_dir: str | os.PathLike | None = None,
    overwrite_any: bool = False,
) -> ConversionReport:
    """Generates the procedural ARAS400k-format sample (`lale_hf.data.synthetic_landcover`) and converts it, in one
    call.

    The zips are kept in `zips_dir` when given, otherwise written to a temporary folder and removed. `sizes` maps
    the authors' split names (`train`, `val`, `test`, `synth`) to patch counts. `overwrite` and `overwrite_any`
    apply to both folders as in `convert_aras400k` and `generate_sample`.
    """
    from .synthetic_landcover import generate_sample

    output_dir = Path(output_dir).resolve()
    keep = zips_dir is not None
    check_output_folder(
        output_dir,
        [zips_dir] if keep else [],
        overwrite=overwrite,
        overwrite_any=overwrite_any,
        marker=DATASET_MARKER,
        written_by="lale_hf.data.convert_aras400k",
    )
    with contextlib.ExitStack() as stack:
        # Kept zips go where asked; otherwise into a staging folder beside the output, removed at the end.
        zips = Path(zips_dir) if keep else stack.enter_context(staging_folder(output_dir, kind="zips")) / "zips"
        generate_sample(
            zips, seed=seed, sizes=sizes, num_proc=num_proc, overwrite=keep and overwrite, overwrite_any=overwrite_any
        )
        return convert_aras400k(zips, output_dir, num_proc=num_proc, overwrite=overwrite, overwrite_any=overwrite_any)


def push_dataset_to_hub(
    dataset_dir: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False
) -> str:
    """Publishes a converted dataset folder as the dataset repository `repo_id` (its card, class names and shards
    only); returns the commit URL. `token=None` uses HF_TOKEN or the cached login."""
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "README.md").is_file() or not (dataset_dir / "data").is_dir():
        raise Aras400kError(f"{dataset_dir} is not a converted dataset folder (no README.md and data/).")
    return push_folder(
        dataset_dir,
        repo_id,
        repo_type="dataset",
        commit_message="Upload ARAS400k-format dataset converted by lale_hf",
        token=token,
        private=private,
        allow_patterns=DATASET_FILES,
    )
