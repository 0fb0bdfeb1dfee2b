"""ARAS400k as a `datasets` dataset: converter from the official zips (or extracted folders), and its dataset card.

ARAS400k (Zenodo record 18890661, CC BY 4.0) ships `train.zip`, `val.zip`, `test.zip` and `synth.zip`, each holding
`images/NAME.png` (RGB, scaled per patch by its own maximum) and `masks/NAME.png` (colour-coded classes) under an
undocumented folder prefix. `convert_aras400k` turns any subset of them into Parquet shards with features `image`,
`label` (8-bit class-index PNG), `name`, `tile`, `patch_row`, `patch_col`, plus a dataset card, so that
`datasets.load_dataset(output_dir)` (also with `streaming=True`) and the Hub read the result.

Members are read straight from the zips (no extraction), workers convert whole shards in parallel, and the output
appears atomically: everything is written to a hidden temporary folder beside `output_dir` and renamed at the end.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import queue
import re
import shutil
import sqlite3
import struct
import time
import traceback
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image
from tqdm.auto import tqdm

from .configuration_lale import ARAS400K_LABELS, ARAS400K_PALETTE
from .file_utils import replace_folder, write_atomic
from .image_processing_lale import color_mask_to_label_map


ZENODO_URL = "https://zenodo.org/records/18890661"
AUTHORS_REPO_URL = "https://github.com/caglarmert/ARAS400k"

# Output split name -> the authors' split name (zip stem and folder name).
SPLIT_SOURCES = {"train": "train", "validation": "val", "test": "test", "synthetic": "synth"}

# The MD5 sums published with the dataset (authors' README and Zenodo record).
PUBLISHED_MD5 = {
    "train.zip": "95cd5caea68c813fd86888f9cd95b627",
    "val.zip": "76e61fd7557d65ba0596e44c0f92b43f",
    "test.zip": "01679231ee8e38701f5d3ab7de0b5719",
    "synth.zip": "0dc95bfdda44a816ade0d7ea747e4f9c",
}

PUBLISHED_CHECKSUMS = "the published ARAS400k checksums"

# An MD5 list beside the zips (`md5sum` format) overrides the published table for the files it names, e.g. for the
# procedural sample of `lale_hf.synthetic_landcover`, whose zips are not the published ones.
MD5_LIST_NAMES = ("MD5SUMS", "md5sums.txt")

# Written by `lale_hf.synthetic_landcover` beside its zips; the converter then labels the card as procedural.
SAMPLE_MARKER = "lale-procedural-sample.json"

IGNORE_INDEX = 255
DEFAULT_MAX_SHARD_SIZE = 500 * 1024**2
DEFAULT_MAX_MEMBER_SIZE = 64 * 1024**2
ROWS_PER_ROW_GROUP = 100
LABEL_PNG_COMPRESS_LEVEL = 1  # label maps compress well at any level; level 1 is 2x faster than the default 6

CITATION = """\
@inproceedings{caglar2026aras400k,
  title     = {Grounding Synthetic Data Generation With Vision and Language Models},
  author    = {{\\c{C}}a{\\u{g}}lar, {\\"U}mit Mert and Temizel, Alptekin},
  booktitle = {CVPR Workshop on Synthetic Data for Computer Vision},
  year      = {2026},
  eprint    = {2603.09625},
  archivePrefix = {arXiv},
  note      = {ARAS400k dataset: https://zenodo.org/records/18890661}
}"""

# ARAS names are `{tile}_{row:03d}_{col:03d}`, the tile being the 3x3-degree grid cell of the Sentinel-2/WorldCover
# mosaic (authors' dataset_creator.py). Names of other forms (e.g. synthetic patches) get no tile/row/col.
_ARAS_NAME = re.compile(r"^(?P<tile>[NS]\d{2}[EW]\d{3})_(?P<row>\d+)_(?P<col>\d+)$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


class Aras400kError(ValueError):
    """Bad input for the ARAS400k converter; the message names the file and what was expected."""


def parse_patch_name(name: str) -> tuple[str | None, int | None, int | None]:
    """`N45E010_003_004` -> ("N45E010", 3, 4): tile, patch row, patch column; (None, None, None) for other names."""
    match = _ARAS_NAME.match(name)
    if match is None:
        return None, None, None
    return match["tile"], int(match["row"]), int(match["col"])


def dataset_features():
    """The `datasets.Features` of a converted split."""
    from datasets import Features, Image as ImageFeature, Value

    return Features(
        {
            "image": ImageFeature(),
            "label": ImageFeature(),
            "name": Value("string"),
            "tile": Value("string"),
            "patch_row": Value("int32"),
            "patch_col": Value("int32"),
        }
    )


def id2label() -> dict[str, str]:
    """The class-index -> class-name map written to `id2label.json`."""
    return {str(index): name for index, name in enumerate(ARAS400K_LABELS)}


# ----------------------------------------------------------------------------------------------------------------
# Checksums


def md5_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """MD5 of a file, read in 4 MiB blocks; `progress(n)` is called with each block's size."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(4 * 1024**2):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


def read_md5_list(path: str | os.PathLike) -> dict[str, str]:
    """Parses an `md5sum`-format list (`<32 hex>  <file name>` per line, `#` comments) into {file name: md5}."""
    sums = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([0-9a-fA-F]{32})\s+\*?(.+)$", line)
        if match is None:
            raise Aras400kError(f"{path}, line {number}: expected '<32 hex digits>  <file name>', got {line!r}.")
        sums[Path(match[2].strip()).name] = match[1].lower()
    return sums


def expected_md5s(input_dir: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """{zip name: (md5, where the sum comes from)}: the published table, overridden by an MD5 list in `input_dir`."""
    expected = {name: (md5, PUBLISHED_CHECKSUMS) for name, md5 in PUBLISHED_MD5.items()}
    for list_name in MD5_LIST_NAMES:
        list_path = Path(input_dir) / list_name
        if list_path.is_file():
            expected.update({name: (md5, str(list_path)) for name, md5 in read_md5_list(list_path).items()})
    return expected


def write_md5_list(directory: str | os.PathLike, file_names: Iterable[str], list_name: str = "md5sums.txt") -> Path:
    """Writes an `md5sum`-format list of `file_names` in `directory` (atomically) and returns its path."""
    directory = Path(directory)
    lines = [f"{md5_file(directory / name)}  {name}\n" for name in sorted(file_names)]
    return write_atomic(directory / list_name, "".join(lines))


# ----------------------------------------------------------------------------------------------------------------
# Zip reading without extraction: a streamed central-directory scan (no per-member ZipInfo kept for the whole
# archive) and member reads by offset, so that workers neither parse the directory again nor hold it in memory.

_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
# A member's location inside its zip: local header offset, compressed size, size, CRC-32, method, flags.
_ZIP_LOCATION = struct.Struct("<QQQLHH")


def _zip_error(zip_path, message: str) -> Aras400kError:
    return Aras400kError(f"{zip_path}: {message} The zip is corrupt or truncated; download it again.")


def _iter_zip_members(zip_path: Path) -> Iterator[tuple[str, int, bytes]]:
    """Yields (member name, declared size, packed location) for every member, streaming the central directory."""
    file_size = zip_path.stat().st_size
    with open(zip_path, "rb") as handle:
        tail_size = min(file_size, _EOCD.size + 65535)
        handle.seek(file_size - tail_size)
        tail = handle.read(tail_size)
        eocd_at = tail.rfind(b"PK\x05\x06")
        if eocd_at < 0 or eocd_at + _EOCD.size > len(tail):
            raise _zip_error(zip_path, "not a zip file (no end-of-central-directory record).")
        _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, eocd_at)
        cd_end = file_size - tail_size + eocd_at
        locator_at = eocd_at - _EOCD64_LOCATOR.size
        if locator_at >= 0 and tail[locator_at : locator_at + 4] == b"PK\x06\x07":
            _, _, eocd64_offset, _ = _EOCD64_LOCATOR.unpack_from(tail, locator_at)
            handle.seek(eocd64_offset)
            record = handle.read(_EOCD64.size)
            if len(record) != _EOCD64.size or record[:4] != b"PK\x06\x06":
                raise _zip_error(zip_path, "broken ZIP64 end-of-central-directory record.")
            _, _, _, _, _, _, _, count, cd_size, cd_offset = _EOCD64.unpack(record)
            cd_end = cd_end - _EOCD64_LOCATOR.size - _EOCD64.size
        # Bytes prepended to the archive (self-extracting stubs) shift every offset by the same amount.
        concat = cd_end - cd_size - cd_offset
        if concat < 0:
            raise _zip_error(zip_path, "its central directory lies outside the file.")
        handle.seek(cd_offset + concat)
        buffer, position, remaining = b"", 0, cd_size
        for _ in range(count):
            if len(buffer) - position < _CENTRAL_HEADER.size + 65535 * 3 and remaining:
                block = handle.read(min(remaining, 1024**2))
                remaining -= len(block)
                buffer, position = buffer[position:] + block, 0
            if len(buffer) - position < _CENTRAL_HEADER.size:
                raise _zip_error(zip_path, "its central directory ends early.")
            (signature, _, _, flags, method, _, _, crc, csize, size, name_len, extra_len, comment_len, _, _, _,
             offset) = _CENTRAL_HEADER.unpack_from(buffer, position)  # fmt: skip
            if signature != b"PK\x01\x02":
                raise _zip_error(zip_path, "bad central-directory entry signature.")
            start = position + _CENTRAL_HEADER.size
            raw_name = buffer[start : start + name_len]
            extra = buffer[start + name_len : start + name_len + extra_len]
            position = start + name_len + extra_len + comment_len
            if position > len(buffer):
                raise _zip_error(zip_path, "its central directory ends early.")
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
            if 0xFFFFFFFF in (size, csize, offset):
                size, csize, offset = _apply_zip64_extra(extra, size, csize, offset, zip_path, name)
            if offset + concat + csize > file_size:
                raise _zip_error(zip_path, f"member {name!r} extends past the end of the file.")
            yield name, size, _ZIP_LOCATION.pack(offset + concat, csize, size, crc, method, flags)


def _apply_zip64_extra(extra: bytes, size: int, csize: int, offset: int, zip_path, name) -> tuple[int, int, int]:
    """Replaces the 0xFFFFFFFF placeholders by the 64-bit values of the ZIP64 extra field (in the spec's order)."""
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, position)
        if tag == 0x0001:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, position + 4))
            fields = [size, csize, offset]
            for index, value in enumerate(fields):
                if value == 0xFFFFFFFF:
                    if not values:
                        raise _zip_error(zip_path, f"member {name!r} has a short ZIP64 extra field.")
                    fields[index] = values.pop(0)
            return fields[0], fields[1], fields[2]
        position += 4 + length
    raise _zip_error(zip_path, f"member {name!r} needs a ZIP64 extra field but has none.")


class _ZipMemberReader:
    """Reads members of one zip by their packed location, checking size and CRC-32."""

    def __init__(self, zip_path: Path):
        self.zip_path = zip_path
        self.handle = open(zip_path, "rb")

    def read(self, name: str, location: bytes) -> bytes:
        offset, csize, size, crc, method, flags = _ZIP_LOCATION.unpack(location)
        where = f"{self.zip_path.name}:{name}"
        if flags & 0x1:
            raise Aras400kError(f"{where} is encrypted; ARAS400k zips are not.")
        self.handle.seek(offset)
        header = self.handle.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise _zip_error(self.zip_path, f"member {name!r} has no local header at offset {offset}.")
        name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
        self.handle.seek(offset + _LOCAL_HEADER.size + name_len + extra_len)
        data = self.handle.read(csize)
        if len(data) != csize:
            raise _zip_error(self.zip_path, f"member {name!r} is cut short.")
        if method == zipfile.ZIP_DEFLATED:
            inflater = zlib.decompressobj(-15)
            try:
                # Never inflate more than the declared size: a lying header cannot blow up memory.
                data = inflater.decompress(data, size + 1)
            except zlib.error as error:
                raise _zip_error(self.zip_path, f"member {name!r} does not inflate ({error}).") from None
        elif method != zipfile.ZIP_STORED:
            raise Aras400kError(
                f"{where} uses zip compression method {method}; only stored (0) and deflate (8) are supported. "
                "Extract the zip and pass the folder instead."
            )
        if len(data) != size or zlib.crc32(data) != crc:
            raise _zip_error(self.zip_path, f"member {name!r} fails its size/CRC-32 check.")
        return data

    def close(self):
        self.handle.close()


class _FolderMemberReader:
    """Reads members of an extracted split folder by relative path."""

    def __init__(self, root: Path):
        self.root = root

    def read(self, name: str, location: bytes) -> bytes:
        return (self.root / name).read_bytes()

    def close(self):
        pass


def _iter_folder_members(root: Path) -> Iterator[tuple[str, int, bytes]]:
    """Yields (relative posix path, size, b"") for every file under an extracted split folder, streaming."""
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                elif entry.is_file():
                    yield Path(entry.path).relative_to(root).as_posix(), entry.stat().st_size, b""


# ----------------------------------------------------------------------------------------------------------------
# Finding splits and pairing their members


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """Where one split comes from: an official zip or an extracted folder."""

    split: str
    path: Path
    kind: str  # "zip" or "folder"


@dataclasses.dataclass
class SplitIndex:
    """A split whose pairs are listed, sorted by stem, in the on-disk pair index; and what was left out."""

    source: SplitSource
    prefix: str
    num_pairs: int
    estimated_bytes: int
    skipped_unpaired: int = 0
    skipped_duplicates: int = 0
    ignored_members: int = 0


def find_split_sources(input_dir: str | os.PathLike, splits: Iterable[str] | None = None) -> dict[str, SplitSource]:
    """Finds each split's zip (`train.zip`, ...) or extracted folder (`train/`, `ARAS400k/train/`, ...) in `input_dir`.

    A zip wins over a folder of the same split (the zip is what the checksums cover).
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise Aras400kError(f"--input_dir {input_dir} is not a folder; expected one holding train.zip, val.zip, ...")
    wanted = list(SPLIT_SOURCES) if splits is None else list(splits)
    unknown = [split for split in wanted if split not in SPLIT_SOURCES]
    if unknown:
        raise Aras400kError(f"Unknown split(s) {unknown}; expected some of {list(SPLIT_SOURCES)}.")
    found = {}
    for split in wanted:
        source_name = SPLIT_SOURCES[split]
        zip_path = input_dir / f"{source_name}.zip"
        if zip_path.is_file():
            found[split] = SplitSource(split, zip_path, "zip")
            continue
        for folder in (input_dir / source_name, input_dir / split, input_dir / "ARAS400k" / source_name):
            if folder.is_dir():
                found[split] = SplitSource(split, folder, "folder")
                break
    missing = [split for split in wanted if split not in found]
    if splits is not None and missing:
        raise Aras400kError(
            f"{input_dir}: no source for split(s) {missing}; expected "
            + ", ".join(f"{SPLIT_SOURCES[s]}.zip or {SPLIT_SOURCES[s]}/" for s in missing)
            + "."
        )
    if not found:
        raise Aras400kError(
            f"{input_dir} holds none of train.zip, val.zip, test.zip, synth.zip, nor extracted train/, val/, "
            "test/, synth/ folders."
        )
    return found


def _unsafe_member_path(name: str) -> bool:
    """Absolute paths, drive letters and `..` components, in either separator."""
    normalized = name.replace("\\", "/")
    return (
        normalized.startswith("/")
        or re.match(r"^[A-Za-z]:", normalized) is not None
        or ".." in normalized.split("/")
    )


class _Examples:
    """Counts offending names and keeps the first few, so that pathological input costs no memory."""

    def __init__(self, keep: int = 10):
        self.count, self.names, self.keep = 0, [], keep

    def add(self, name: str):
        self.count += 1
        if len(self.names) < self.keep:
            self.names.append(name)

    def listing(self) -> str:
        shown = ", ".join(repr(name) for name in self.names)
        return shown + (f" and {self.count - len(self.names)} more" if self.count > len(self.names) else "")


def open_pair_index(path: str | os.PathLike) -> sqlite3.Connection:
    """The on-disk index of members and pairs (SQLite): listing and pairing 400k pairs costs no memory per pair."""
    database = sqlite3.connect(path)
    # A scratch file rebuilt on every run: no journal, no fsync.
    database.executescript(
        """
        PRAGMA journal_mode = OFF;
        PRAGMA synchronous = OFF;
        CREATE TABLE IF NOT EXISTS members (split TEXT, kind TEXT, stem TEXT, name TEXT, location BLOB);
        CREATE TABLE IF NOT EXISTS duplicated (split TEXT, stem TEXT);
        CREATE TABLE IF NOT EXISTS pairs (
            split TEXT, rank INTEGER, stem TEXT, image_name TEXT, image_location BLOB, mask_name TEXT,
            mask_location BLOB, PRIMARY KEY (split, rank)
        );
        """
    )
    return database


def _stems(database: sqlite3.Connection, query: str, split: str) -> tuple[int, str]:
    """(count, listing of the first ten) of the stems a query selects for a split."""
    count = database.execute(f"SELECT COUNT(*) FROM ({query})", (split,)).fetchone()[0]
    first = [row[0] for row in database.execute(f"{query} ORDER BY stem LIMIT 10", (split,))]
    return count, ", ".join(repr(stem) for stem in first) + (f" and {count - len(first)} more" if count > 10 else "")


_IMAGES_ONLY = """SELECT DISTINCT stem FROM members AS i WHERE split = ? AND kind = 'images' AND NOT EXISTS
    (SELECT 1 FROM members AS m WHERE m.split = i.split AND m.kind = 'masks' AND m.stem = i.stem)"""
_MASKS_ONLY = """SELECT DISTINCT stem FROM members AS m WHERE split = ? AND kind = 'masks' AND NOT EXISTS
    (SELECT 1 FROM members AS i WHERE i.split = m.split AND i.kind = 'images' AND i.stem = m.stem)"""
_DUPLICATED = "SELECT stem FROM duplicated WHERE split = ?"


def index_split(
    source: SplitSource,
    database: sqlite3.Connection,
    skip_unpaired: bool = False,
    max_member_size: int = DEFAULT_MAX_MEMBER_SIZE,
) -> SplitIndex:
    """Lists a split's members into the pair index, finds its `images/` and `masks/` folders at whatever prefix, and
    pairs them by stem (table `pairs`, ranked by stem).

    Rejects absolute or `..` member paths, non-PNG files in those folders, absurd declared sizes, several prefixes,
    and (unless `skip_unpaired`) unpaired or duplicated stems; an empty split is always an error.
    """
    members = _iter_zip_members(source.path) if source.kind == "zip" else _iter_folder_members(source.path)
    where = source.path.name if source.kind == "zip" else str(source.path)
    split = source.split
    prefixes = {"images": set(), "masks": set()}
    unsafe, not_png, oversized = _Examples(), _Examples(), _Examples()
    ignored = estimated_bytes = 0

    def rows():
        nonlocal ignored, estimated_bytes
        for name, size, location in members:
            if _unsafe_member_path(name):
                unsafe.add(name)
                continue
            if name.endswith("/"):
                continue
            parts = name.split("/")
            # macOS archive metadata and hidden files (.DS_Store) are never data.
            if parts[0] == "__MACOSX" or parts[-1].startswith("."):
                ignored += 1
                continue
            folder_at = next((i for i, part in enumerate(parts[:-1]) if part in ("images", "masks")), None)
            if folder_at is None:
                ignored += 1
                continue
            kind = parts[folder_at]
            if len(prefixes[kind]) < 10:  # more than one is an error already
                prefixes[kind].add("/".join(parts[:folder_at]))
            if not parts[-1].lower().endswith(".png"):
                not_png.add(name)
            elif size > max_member_size:
                oversized.add(f"{name} ({size} bytes)")
            else:
                estimated_bytes += size
                yield split, kind, parts[-1][:-4], name, location

    database.executemany("INSERT INTO members VALUES (?, ?, ?, ?, ?)", rows())
    if unsafe.count:
        raise Aras400kError(
            f"{where}: {unsafe.count} member path(s) are absolute or contain '..': {unsafe.listing()}. "
            "Refusing a zip that could write outside its folder."
        )
    if not_png.count:
        raise Aras400kError(
            f"{where}: {not_png.count} file(s) in images/ or masks/ are not PNG: {not_png.listing()}. "
            "ARAS400k images and masks are .png files."
        )
    if oversized.count:
        raise Aras400kError(
            f"{where}: {oversized.count} member(s) declare an absurd size (limit {max_member_size} bytes for a "
            f"256x256 patch): {oversized.listing()}."
        )
    all_prefixes = sorted(prefixes["images"] | prefixes["masks"])
    if not all_prefixes:
        raise Aras400kError(
            f"{where}: empty split, no PNG files under an images/ or masks/ folder ({ignored} other member(s) "
            "ignored)."
        )
    for kind, other in (("images", "masks"), ("masks", "images")):
        if not prefixes[other]:
            shown = [prefix + "/" if prefix else "(root)" for prefix in sorted(prefixes[kind])]
            raise Aras400kError(f"{where}: found {kind}/ under {shown} but no {other}/ folder.")
    if len(all_prefixes) > 1:
        raise Aras400kError(
            f"{where}: expected one images/ and one masks/ folder side by side, found them under "
            f"{[prefix + '/' if prefix else '(root)' for prefix in all_prefixes]}."
        )

    database.execute("CREATE INDEX IF NOT EXISTS members_by_stem ON members (split, kind, stem)")
    database.execute(
        "INSERT INTO duplicated SELECT DISTINCT split, stem FROM members WHERE split = ? "
        "GROUP BY kind, stem HAVING COUNT(*) > 1",
        (split,),
    )
    (images_only, images_listing), (masks_only, masks_listing), (duplicated, duplicated_listing) = (
        _stems(database, query, split) for query in (_IMAGES_ONLY, _MASKS_ONLY, _DUPLICATED)
    )
    if (duplicated or images_only or masks_only) and not skip_unpaired:
        problems = []
        if images_only:
            problems.append(f"{images_only} image(s) without a mask: {images_listing}")
        if masks_only:
            problems.append(f"{masks_only} mask(s) without an image: {masks_listing}")
        if duplicated:
            problems.append(f"{duplicated} stem(s) present more than once: {duplicated_listing}")
        raise Aras400kError(
            f"{where}: images and masks do not pair up by file name; " + "; ".join(problems) + ". "
            "Pass --skip_unpaired to leave them out."
        )
    num_pairs = database.execute(
        """INSERT INTO pairs
        SELECT i.split, ROW_NUMBER() OVER (ORDER BY i.stem) - 1, i.stem, i.name, i.location, m.name, m.location
        FROM members AS i JOIN members AS m ON m.split = i.split AND m.kind = 'masks' AND m.stem = i.stem
        WHERE i.split = ? AND i.kind = 'images' AND i.stem NOT IN (SELECT stem FROM duplicated WHERE split = ?)""",
        (split, split),
    ).rowcount
    database.commit()
    if not num_pairs:
        raise Aras400kError(f"{where}: empty split, no image/mask pair left to convert.")
    return SplitIndex(
        source=source,
        prefix=all_prefixes[0],
        num_pairs=num_pairs,
        estimated_bytes=estimated_bytes,
        skipped_unpaired=images_only + masks_only,
        skipped_duplicates=duplicated,
        ignored_members=ignored,
    )


# ----------------------------------------------------------------------------------------------------------------
# Converting pairs (worker side)


@dataclasses.dataclass
class _ShardTask:
    source: SplitSource
    split: str
    shard_index: int
    shard_path: Path
    index_path: Path
    start: int  # ranks [start, stop) of the split's pairs in the pair index
    stop: int
    schema: pa.Schema
    unknown_to_ignore: bool


@dataclasses.dataclass
class _ShardResult:
    split: str
    shard_index: int
    num_examples: int
    num_bytes: int
    unknown_pixels: int


@dataclasses.dataclass
class _ShardFailure:
    bad_input: bool  # an Aras400kError (bad input) rather than a bug or a system error
    detail: str


def check_png_image(data: bytes, source: str) -> tuple[int, int]:
    """Checks that `data` is a complete 8-bit RGB PNG (signature, IHDR, chunk CRCs, IEND); returns (width, height).

    Chunk CRC-32s cover the compressed pixels, so this catches truncation and corruption without decoding.
    """
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        raise Aras400kError(f"{source} is not a PNG file (no PNG signature and IHDR header).")
    width, height, bit_depth, color_type = struct.unpack_from(">IIBB", data, 16)
    if color_type != 2 or bit_depth != 8:
        kind = _PNG_COLOR_TYPES.get(color_type, f"colour type {color_type}")
        raise Aras400kError(
            f"{source} is a {kind} PNG ({bit_depth} bits per channel); ARAS400k images must be 8-bit RGB."
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as error:
        raise Aras400kError(f"{source} is a truncated or corrupt PNG ({type(error).__name__}: {error}).") from None
    return width, height


def mask_bytes_to_label_png(
    data: bytes, size: tuple[int, int], source: str, unknown_to_ignore: bool
) -> tuple[bytes, int]:
    """Decodes an ARAS colour mask, checks its size, maps colours to class indices; returns (label PNG, unknown px)."""
    try:
        with Image.open(io.BytesIO(data)) as mask:
            if mask.format != "PNG":
                raise Aras400kError(f"{source} is not a PNG file (it is {mask.format}).")
            # Size first: a mask that declares a huge size is refused before it is decoded.
            if mask.size != size:
                raise Aras400kError(
                    f"{source} is {mask.size[0]}x{mask.size[1]} but its image is {size[0]}x{size[1]}; "
                    "they must match."
                )
            mask.load()
            colors = np.asarray(mask if mask.mode == "RGB" else mask.convert("RGB"))
    except Aras400kError:
        raise
    except Exception as error:
        raise Aras400kError(f"{source} is a truncated or corrupt PNG ({type(error).__name__}: {error}).") from None
    try:
        label = color_mask_to_label_map(
            colors, ARAS400K_PALETTE, unknown_to_ignore=unknown_to_ignore, ignore_index=IGNORE_INDEX, source=source
        )
    except ValueError as error:
        found = str(error).split(" Pass unknown_to_ignore")[0]
        raise Aras400kError(f"{found} Pass --unknown_to_ignore to map them to {IGNORE_INDEX} (ignore).") from None
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG", compress_level=LABEL_PNG_COMPRESS_LEVEL)
    return buffer.getvalue(), int(np.count_nonzero(label == IGNORE_INDEX))


# Where finished rows are reported: a shared counter in worker processes, the progress bar when run in-process.
_progress_callback: Callable[[int], None] | None = None


def _report_progress(count: int):
    if _progress_callback is not None:
        _progress_callback(count)


def _worker_loop(task_queue, result_queue, counter):
    """Worker process: converts shards from `task_queue` until a None arrives; the first failure ends it."""

    def add(count: int):
        with counter.get_lock():
            counter.value += count

    global _progress_callback
    _progress_callback = add
    while (task := task_queue.get()) is not None:
        try:
            result_queue.put(_convert_shard(task))
        except BaseException as error:
            # Sent as text: not every exception pickles, and the message is what the user needs.
            detail = str(error) if isinstance(error, Aras400kError) else traceback.format_exc()
            result_queue.put(_ShardFailure(isinstance(error, Aras400kError), detail))
            return


def _convert_shard(task: _ShardTask) -> _ShardResult:
    """Converts one shard's pairs into one Parquet file, a row group at a time."""
    source = task.source
    reader = _ZipMemberReader(source.path) if source.kind == "zip" else _FolderMemberReader(source.path)
    label_of = source.path.name if source.kind == "zip" else str(source.path)
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
            image_source, mask_source = f"{label_of}:{image_path}", f"{label_of}:{mask_path}"
            image_bytes = reader.read(image_path, image_location)
            size = check_png_image(image_bytes, image_source)
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
    return _ShardResult(task.split, task.shard_index, num_examples, num_bytes, unknown_pixels)


def _write_row_group(writer: pq.ParquetWriter, schema: pa.Schema, columns: dict[str, list]) -> int:
    table = pa.Table.from_pydict(columns, schema=schema)
    writer.write_table(table)
    for values in columns.values():
        values.clear()
    return table.nbytes


# ----------------------------------------------------------------------------------------------------------------
# Orchestration


@dataclasses.dataclass
class SplitSummary:
    """What one converted split holds and where it came from."""

    split: str
    source: str
    member_prefix: str  # where images/ and masks/ were found in the zip or folder
    num_examples: int
    num_shards: int
    num_bytes: int
    parquet_bytes: int
    md5: str | None
    md5_checked_against: str
    skipped_unpaired: int
    skipped_duplicates: int
    ignored_members: int  # files outside images/ and masks/, hidden files, macOS metadata
    unknown_pixels: int


@dataclasses.dataclass
class ConversionReport:
    """Result of `convert_aras400k`."""

    output_dir: Path
    splits: dict[str, SplitSummary]
    procedural_sample: bool
    seconds: float
    cpu_seconds_main: float  # this process: checksums, indexing, card (and all the work when num_proc is 1)
    cpu_seconds_workers: float  # worker processes, summed

    @property
    def num_examples(self) -> int:
        return sum(summary.num_examples for summary in self.splits.values())

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "procedural_sample": self.procedural_sample,
            "seconds": round(self.seconds, 3),
            "cpu_seconds_main": round(self.cpu_seconds_main, 3),
            "cpu_seconds_workers": round(self.cpu_seconds_workers, 3),
            "num_examples": self.num_examples,
            "splits": {name: dataclasses.asdict(summary) for name, summary in self.splits.items()},
        }

    def format_table(self) -> str:
        header = f"{'split':<11} {'pairs':>8} {'shards':>6} {'parquet MB':>10} {'skipped':>8} {'unknown px':>10}  source"
        lines = [header, "-" * len(header)]
        for summary in self.splits.values():
            skipped = summary.skipped_unpaired + summary.skipped_duplicates
            lines.append(
                f"{summary.split:<11} {summary.num_examples:>8} {summary.num_shards:>6} "
                f"{summary.parquet_bytes / 1e6:>10.1f} {skipped:>8} {summary.unknown_pixels:>10}  {summary.source}"
            )
        rate = self.num_examples / self.seconds if self.seconds > 0 else float("nan")
        lines.append(f"{self.num_examples} pairs in {self.seconds:.1f} s ({rate:.0f} pairs/s) -> {self.output_dir}")
        return "\n".join(lines)


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


def _shard_tasks(indexes, shard_counts, data_dir: Path, index_path: Path, unknown_to_ignore: bool) -> list[_ShardTask]:
    schema = dataset_features().arrow_schema
    tasks = []
    for split, index in indexes.items():
        count = shard_counts[split]
        bounds = np.linspace(0, index.num_pairs, count + 1).round().astype(int).tolist()
        for shard in range(count):
            tasks.append(
                _ShardTask(
                    source=index.source,
                    split=split,
                    shard_index=shard,
                    shard_path=data_dir / f"{split}-{shard:05d}-of-{count:05d}.parquet",
                    index_path=index_path,
                    start=bounds[shard],
                    stop=bounds[shard + 1],
                    schema=schema,
                    unknown_to_ignore=unknown_to_ignore,
                )
            )
    # Largest first, so that the last shard to finish is a small one.
    return sorted(tasks, key=lambda task: task.start - task.stop)


def _run_tasks(tasks: list[_ShardTask], num_proc: int, total: int) -> list[_ShardResult]:
    """Runs shard tasks in `num_proc` worker processes (in this process when 1), with one progress bar here.

    The first failure stops everything; a worker that dies without a word (e.g. killed for lack of memory) is an
    error too, never a hang.
    """
    global _progress_callback
    if num_proc <= 1:
        with tqdm(total=total, unit="pair", desc="Converting ARAS400k", dynamic_ncols=True) as progress:
            _progress_callback = progress.update
            try:
                return [_convert_shard(task) for task in tasks]
            finally:
                _progress_callback = None
    # fork starts workers without re-importing lale_hf; elsewhere spawn is the only safe choice.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    counter, task_queue, result_queue = context.Value("q", 0), context.Queue(), context.Queue()
    workers = [
        context.Process(target=_worker_loop, args=(task_queue, result_queue, counter), daemon=True)
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
                        raise (Aras400kError if outcome.bad_input else RuntimeError)(outcome.detail)
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
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    max_member_size: int = DEFAULT_MAX_MEMBER_SIZE,
) -> ConversionReport:
    """Converts the ARAS400k zips (or extracted split folders) in `input_dir` into a `datasets` folder.

    The output holds `data/{split}-NNNNN-of-NNNNN.parquet`, `README.md` (dataset card with configs) and
    `id2label.json`; it appears only when everything succeeded. Splits are named train, validation, test, synthetic.
    Zips are checked against `PUBLISHED_MD5` unless `verify_md5=False`; an `MD5SUMS` or `md5sums.txt` file in
    `input_dir` (`md5sum` format) overrides those sums for the files it lists, as for the generated sample.
    Bad input raises `Aras400kError` naming the file; `skip_unpaired` leaves out unpaired and duplicated stems,
    `unknown_to_ignore` maps unknown mask colours to 255.
    """
    start, cpu_start = time.perf_counter(), os.times()
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if output_dir.exists() and not overwrite:
        raise Aras400kError(f"--output_dir {output_dir} already exists; pass --overwrite to replace it.")
    if output_dir == input_dir or output_dir in input_dir.parents:
        raise Aras400kError(f"--output_dir {output_dir} contains --input_dir {input_dir}; choose another folder.")
    if num_proc < 1:
        raise Aras400kError(f"--num_proc must be at least 1, got {num_proc}.")
    sources = find_split_sources(input_dir, splits)

    md5s = {}
    if verify_md5:
        md5s = _verify_checksums([s.path for s in sources.values() if s.kind == "zip"], expected_md5s(input_dir))
    staging = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (staging / "data").mkdir(parents=True)
        index_path = staging / "pair-index.sqlite"
        with contextlib.closing(open_pair_index(index_path)) as database:
            indexes = {
                split: index_split(source, database, skip_unpaired, max_member_size)
                for split, source in sources.items()
            }
        shard_counts = _plan_shards(indexes, max_shard_size, num_proc)
        tasks = _shard_tasks(indexes, shard_counts, staging / "data", index_path, unknown_to_ignore)
        results = _run_tasks(tasks, num_proc, sum(index.num_pairs for index in indexes.values()))
        index_path.unlink()
        summaries = {}
        for split, index in indexes.items():
            split_results = [result for result in results if result.split == split]
            summaries[split] = SplitSummary(
                split=split,
                source=str(index.source.path),
                member_prefix=index.prefix,
                num_examples=sum(result.num_examples for result in split_results),
                num_shards=shard_counts[split],
                num_bytes=sum(result.num_bytes for result in split_results),
                parquet_bytes=sum(p.stat().st_size for p in (staging / "data").glob(f"{split}-*.parquet")),
                md5=md5s[index.source.path.name][0] if index.source.path.name in md5s else None,
                md5_checked_against=(
                    md5s[index.source.path.name][1]
                    if index.source.path.name in md5s
                    else ("not checked" if index.source.kind == "zip" else "no checksum (extracted folder)")
                ),
                skipped_unpaired=index.skipped_unpaired,
                skipped_duplicates=index.skipped_duplicates,
                ignored_members=index.ignored_members,
                unknown_pixels=sum(result.unknown_pixels for result in split_results),
            )
        procedural = (input_dir / SAMPLE_MARKER).is_file()
        (staging / "README.md").write_text(render_dataset_card(summaries, procedural), encoding="utf-8")
        (staging / "id2label.json").write_text(json.dumps(id2label(), indent=2) + "\n", encoding="utf-8")
        replace_folder(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    cpu = os.times()
    return ConversionReport(
        output_dir,
        summaries,
        procedural,
        seconds=time.perf_counter() - start,
        cpu_seconds_main=cpu.user + cpu.system - cpu_start.user - cpu_start.system,
        # Finished worker processes have been joined, so their time is in this process's children's time.
        cpu_seconds_workers=cpu.children_user + cpu.children_system - cpu_start.children_user - cpu_start.children_system,
    )


def _verify_checksums(zip_paths: list[Path], expected: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Checks every zip against its expected MD5; returns {zip name: (md5, where the expected sum came from)}."""
    verified = {}
    total = sum(path.stat().st_size for path in zip_paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="Verifying MD5", dynamic_ncols=True) as progress:
        for path in zip_paths:
            if path.name not in expected:
                raise Aras400kError(
                    f"{path}: no expected MD5 for this file; list it in md5sums.txt beside it or pass --skip_md5."
                )
            want, origin = expected[path.name]
            got = md5_file(path, progress.update)
            if got != want:
                raise Aras400kError(
                    f"{path}: MD5 mismatch, expected {want} (from {origin}) but the file has {got}. The download is "
                    "incomplete or corrupt; download it again (or pass --skip_md5 to convert anyway)."
                )
            verified[path.name] = (got, origin)
    return verified


# ----------------------------------------------------------------------------------------------------------------
# Writing ARAS-format zips (for the procedural sample and for tests that rebuild the official layout)

_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _zip_entry(name: str, is_dir: bool = False) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
    info.create_system = 3  # fixed, so that the bytes do not depend on the OS that wrote them
    info.external_attr = ((0o40755 if is_dir else 0o100644) << 16) | (0x10 if is_dir else 0)
    return info


def write_split_zip(
    zip_path: str | os.PathLike,
    pairs: Iterable[tuple[str, bytes, bytes]],
    prefix: str = "ARAS400k/train/",
    compression: int = zipfile.ZIP_DEFLATED,
) -> int:
    """Writes (name, image PNG, colour-mask PNG) pairs as an ARAS400k split zip: `{prefix}images/NAME.png` and
    `{prefix}masks/NAME.png`, with folder entries. Byte-identical for identical input; written atomically.
    Returns the number of pairs."""
    zip_path = Path(zip_path)
    partial = zip_path.with_name(f".{zip_path.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with zipfile.ZipFile(partial, "w", compression=compression) as archive:
            folders = [prefix[: i + 1] for i, char in enumerate(prefix) if char == "/"]
            for folder in folders + [f"{prefix}images/", f"{prefix}masks/"]:
                archive.writestr(_zip_entry(folder, is_dir=True), b"")
            for name, image_png, mask_png in pairs:
                archive.writestr(_zip_entry(f"{prefix}images/{name}.png"), image_png)
                archive.writestr(_zip_entry(f"{prefix}masks/{name}.png"), mask_png)
                count += 1
        os.replace(partial, zip_path)
    finally:
        partial.unlink(missing_ok=True)
    return count


# ----------------------------------------------------------------------------------------------------------------
# Dataset card


def _size_category(count: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < bound:
            return name
    return "1M<n<10M"


class _CardDumper(yaml.SafeDumper):
    """Writes multi-line strings as YAML block scalars, for a readable card."""


_CardDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None),
)


def _class_table() -> str:
    lines = ["| label | class | mask colour (RGB) | hex |", "|---:|---|---|---|"]
    for index, (name, color) in enumerate(zip(ARAS400K_LABELS, ARAS400K_PALETTE)):
        hex_color = "#{:02x}{:02x}{:02x}".format(*color)
        lines.append(f"| {index} | {name} | ({color[0]}, {color[1]}, {color[2]}) | `{hex_color}` |")
    lines.append(f"| {IGNORE_INDEX} | (ignore) | colours outside the palette, only with `--unknown_to_ignore` | |")
    return "\n".join(lines)


def render_dataset_card(summaries: dict[str, SplitSummary], procedural_sample: bool = False) -> str:
    """The dataset card (README.md): YAML metadata with configs/data_files per split, then the documentation."""
    total = sum(summary.num_examples for summary in summaries.values())
    classes = ", ".join(f"{index} {name}" for index, name in enumerate(ARAS400K_LABELS))
    if procedural_sample:
        title = "ARAS400k-format procedural land-cover sample"
        description = (
            "A procedural land-cover sample generated by lale_hf.synthetic_landcover in the ARAS400k format. It is "
            "a stand-in for plumbing and demos, not satellite data: never report accuracy on it. "
        )
    else:
        title = "ARAS400k"
        description = (
            "ARAS400k: 256x256 Sentinel-2 RGB patches (10 m) with ESA WorldCover 2021 land-cover labels; real "
            "patches and synthetic (generated) patches. "
        )
    description += f"Labels are class-index PNGs; classes (label value: name): {classes}; {IGNORE_INDEX} = ignore."
    metadata = {
        "license": "cc-by-4.0",
        "pretty_name": title,
        "task_categories": ["image-segmentation"],
        "task_ids": ["semantic-segmentation"],
        "size_categories": [_size_category(total)],
        "tags": ["remote-sensing", "satellite-imagery", "sentinel-2", "land-cover", "esa-worldcover"],
        "configs": [
            {
                "config_name": "default",
                "default": True,
                "data_files": [
                    {"split": split, "path": f"data/{split}-*.parquet"} for split in summaries
                ],
            }
        ],
        "dataset_info": {
            "description": description,
            "citation": CITATION,
            "homepage": ZENODO_URL,
            "license": "cc-by-4.0",
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": "image"},
                {"name": "name", "dtype": "string"},
                {"name": "tile", "dtype": "string"},
                {"name": "patch_row", "dtype": "int32"},
                {"name": "patch_col", "dtype": "int32"},
            ],
            "splits": [
                {"name": split, "num_bytes": summary.num_bytes, "num_examples": summary.num_examples}
                for split, summary in summaries.items()
            ],
            "download_size": sum(summary.parquet_bytes for summary in summaries.values()),
            "dataset_size": sum(summary.num_bytes for summary in summaries.values()),
        },
    }
    split_rows = "\n".join(
        f"| {split} | {summary.num_examples} | `{Path(summary.source).name}` | "
        + (f"`{summary.md5}`" if summary.md5 else "")
        + f" | {Path(summary.md5_checked_against).name if summary.md5 else summary.md5_checked_against} |"
        for split, summary in summaries.items()
    )
    if procedural_sample:
        provenance = (
            "> **Procedural sample, not ARAS400k.** Generated deterministically from a seed by "
            "`lale_hf.synthetic_landcover` (Voronoi/noise layouts, rectangular crop fields, rivers and lakes, "
            "blocky built-up areas, class-specific colour and texture), in the exact ARAS400k distribution format. "
            "It exists for plumbing tests and demos; a model trained on it says nothing about real imagery."
        )
    else:
        provenance = (
            f"Converted from ARAS400k-format zips or folders by `lale_hf.aras400k.convert_aras400k` (sources and "
            "checksums below: the official release is the input whose MD5s match the published table, "
            f"{ZENODO_URL}, CC BY 4.0). Image PNG bytes are kept as they were (no re-encoding); colour masks became "
            "8-bit class-index PNGs by exact palette match. ARAS400k patches come from Sentinel-2 RGB (10 m), "
            "each scaled by its own maximum (`rgb / rgb.max() * 255`); labels are ESA WorldCover 2021 with wetland "
            "and moss merged into Grass, mangrove into Tree and snow into Barren. Patches with no-data pixels or "
            f"more than 90% water were dropped by the authors ({AUTHORS_REPO_URL})."
        )
    if procedural_sample:
        licence = (
            "The sample is generated by lale_hf code; it follows the format and palette of ARAS400k, published under "
            f"CC BY 4.0 on Zenodo ({ZENODO_URL}). For ARAS400k itself, cite:"
        )
    else:
        licence = f"ARAS400k is published under CC BY 4.0 on Zenodo ({ZENODO_URL}). If you use it, cite:"
    body = f"""# {title}

{provenance}

## Structure

| split | pairs | source | MD5 | MD5 checked against |
|---|---:|---|---|---|
{split_rows}

Each row has:

- `image`: the RGB patch, PNG (256x256 in ARAS400k).
- `label`: the class-index map, 8-bit grayscale PNG of the same size (value = class index below).
- `name`: the patch name (file stem in the original zips).
- `tile`, `patch_row`, `patch_col`: parsed from ARAS names `TILE_ROW_COL` (e.g. `N45E010_003_004`: the 3x3-degree
  grid tile and the patch's row and column in it); empty for names of another form.

## Classes

{_class_table()}

The same mapping is in `id2label.json`.

## Usage

```python
from datasets import load_dataset

dataset = load_dataset("path/or/repo-id")            # or streaming=True
example = dataset["train"][0]
example["image"], example["label"]                   # PIL RGB image, PIL "L" class-index map
```

## Licence and citation

{licence}

```bibtex
{CITATION}
```
"""
    front_matter = yaml.dump(metadata, Dumper=_CardDumper, sort_keys=False, allow_unicode=True, width=120)
    return f"---\n{front_matter}---\n\n{body}"


def prepare_embedded_sample(
    output_dir: str | os.PathLike,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    num_proc: int = 1,
    overwrite: bool = False,
    zips_dir: str | os.PathLike | None = None,
) -> ConversionReport:
    """Generates the procedural ARAS400k-format sample (`lale_hf.synthetic_landcover`) and converts it, in one call.

    The zips are kept in `zips_dir` when given, otherwise written to a temporary folder and removed. `sizes` maps
    the authors' split names (`train`, `val`, `test`, `synth`) to patch counts.
    """
    from .synthetic_landcover import generate_sample

    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not overwrite:
        raise Aras400kError(f"--output_dir {output_dir} already exists; pass --overwrite to replace it.")
    keep = zips_dir is not None
    zips = Path(zips_dir) if keep else output_dir.parent / f".{output_dir.name}.zips-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate_sample(zips, seed=seed, sizes=sizes, num_proc=num_proc, overwrite=keep and overwrite)
        return convert_aras400k(zips, output_dir, num_proc=num_proc, overwrite=overwrite)
    finally:
        if not keep:
            shutil.rmtree(zips, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Hub


def push_dataset_to_hub(
    dataset_dir: str | os.PathLike, repo_id: str, token: str | None = None, private: bool | None = None
) -> str:
    """Publishes a converted dataset folder as the dataset repository `repo_id`; returns the commit URL."""
    from huggingface_hub import HfApi

    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "README.md").is_file() or not (dataset_dir / "data").is_dir():
        raise Aras400kError(f"{dataset_dir} is not a converted dataset folder (no README.md and data/).")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=dataset_dir,
        commit_message="Upload ARAS400k-format dataset converted by lale_hf",
    )
    return commit.commit_url


__all__ = [
    "Aras400kError",
    "ConversionReport",
    "PUBLISHED_MD5",
    "SPLIT_SOURCES",
    "SplitSummary",
    "check_png_image",
    "convert_aras400k",
    "dataset_features",
    "expected_md5s",
    "find_split_sources",
    "id2label",
    "index_split",
    "md5_file",
    "open_pair_index",
    "parse_patch_name",
    "prepare_embedded_sample",
    "push_dataset_to_hub",
    "read_md5_list",
    "render_dataset_card",
    "write_md5_list",
    "write_split_zip",
]
