"""Finding each split's source and pairing its members: the on-disk (SQLite) index of images and masks by stem.

Listing and pairing 400k pairs this way costs no memory per pair; workers read their shard's pairs back from the
index by rank.
"""

import dataclasses
import os
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from .aras400k_format import SPLIT_SOURCES, Aras400kError
from .zip_members import iter_folder_members, iter_zip_members


DEFAULT_MAX_MEMBER_SIZE = 64 * 1024**2
# Models are scored on these splits: a patch in one of them and in any other split leaks into the score. The training
# splits (train, synthetic) may share stems, e.g. synthetic patches named after the real patch they were made from.
EVALUATION_SPLITS = ("validation", "test")


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """Where one split comes from: an official zip or an extracted folder."""

    split: str
    path: Path
    kind: str  # "zip" or "folder"
    tree: Path | None = None  # the input folder: symbolic links in a split folder must not lead outside it

    @property
    def label(self) -> str:
        """How messages name the source: a zip by its file name, a folder by its path."""
        return self.path.name if self.kind == "zip" else str(self.path)


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

    A zip wins over a folder of the same split (the zip is what the checksums cover). A zip or split folder that
    is a symbolic link to somewhere outside `input_dir` is refused.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise Aras400kError(f"--input_dir {input_dir} is not a folder; expected one holding train.zip, val.zip, ...")
    tree = input_dir.resolve()
    wanted = list(SPLIT_SOURCES) if splits is None else list(splits)
    unknown = [split for split in wanted if split not in SPLIT_SOURCES]
    if unknown:
        raise Aras400kError(f"Unknown split(s) {unknown}; expected some of {list(SPLIT_SOURCES)}.")
    found = {}
    for split in wanted:
        source_name = SPLIT_SOURCES[split]
        zip_path = input_dir / f"{source_name}.zip"
        if zip_path.is_file():
            found[split] = SplitSource(split, _inside_tree(zip_path, tree), "zip", tree)
            continue
        for folder in (input_dir / source_name, input_dir / split, input_dir / "ARAS400k" / source_name):
            if folder.is_dir():
                found[split] = SplitSource(split, _inside_tree(folder, tree), "folder", tree)
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


def _inside_tree(path: Path, tree: Path) -> Path:
    """`path`, checked to stay inside `tree` once symbolic links are resolved."""
    target = path.resolve()
    if target != tree and tree not in target.parents:
        raise Aras400kError(
            f"{path} is a symbolic link to {target}, outside the input folder {tree}; refusing to read files from "
            "outside it. Pass the folder that holds the split itself as --input_dir."
        )
    return path


def _valid_utf8(name: str) -> bool:
    """False for a name holding undecodable bytes (kept by Python as surrogate escapes), which SQLite, Parquet and
    the Hub cannot store."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unsafe_member_path(name: str) -> bool:
    """Absolute paths, drive letters and `..` components, in either separator."""
    normalized = name.replace("\\", "/")
    return (
        normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized) is not None or ".." in normalized.split("/")
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
        CREATE INDEX IF NOT EXISTS pairs_by_stem ON pairs (stem, split);
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
    if source.kind == "zip":
        members = iter_zip_members(source.path)
    else:
        members = iter_folder_members(source.path, source.tree)
    where = source.label
    split = source.split
    prefixes = {"images": set(), "masks": set()}
    unsafe, not_png, oversized, not_utf8 = _Examples(), _Examples(), _Examples(), _Examples()
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
            if not _valid_utf8(name):
                not_utf8.add(os.fsencode(name))  # shown as bytes: the name has no text form
            elif not parts[-1].lower().endswith(".png"):
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
    if not_utf8.count:
        raise Aras400kError(
            f"{where}: {not_utf8.count} file name(s) in images/ or masks/ are not valid UTF-8: {not_utf8.listing()}. "
            "Rename them to UTF-8 (e.g. with convmv) and convert again."
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
            f"{where}: empty split, no PNG files under an images/ or masks/ folder ({ignored} other member(s) ignored)."
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


def shared_stems(database: sqlite3.Connection, splits: Iterable[str], allow: bool = False) -> dict[str, int]:
    """Finds stems paired in two splits when one of them is an evaluation split (`EVALUATION_SPLITS`): the same
    patch would be trained on and scored on. Raises `Aras400kError` listing them unless `allow`; returns
    {split: how many of its stems another split shares}.
    """
    splits = list(splits)
    conflicts = [
        (first, second)
        for index, first in enumerate(splits)
        for second in splits[index + 1 :]
        if first in EVALUATION_SPLITS or second in EVALUATION_SPLITS
    ]
    problems, counts = [], dict.fromkeys(splits, 0)
    for first, second in conflicts:
        query = "SELECT a.stem FROM pairs AS a JOIN pairs AS b ON b.stem = a.stem AND b.split = ? WHERE a.split = ?"
        count = database.execute(f"SELECT COUNT(*) FROM ({query})", (second, first)).fetchone()[0]
        if not count:
            continue
        first_ten = [row[0] for row in database.execute(f"{query} ORDER BY a.stem LIMIT 10", (second, first))]
        listing = ", ".join(repr(stem) for stem in first_ten) + (f" and {count - 10} more" if count > 10 else "")
        problems.append(f"{first} and {second} share {count} stem(s): {listing}")
    if problems and not allow:
        raise Aras400kError(
            "The same patch name is in a training and an evaluation split, or in both evaluation splits, so the "
            "scores would be measured on training data; " + "; ".join(problems) + ". Remove the duplicates, or pass "
            "--allow_split_overlap to convert anyway (counted in the report)."
        )
    for split in splits:
        others = [second if first == split else first for first, second in conflicts if split in (first, second)]
        if others:
            marks = ", ".join("?" * len(others))
            counts[split] = database.execute(
                f"SELECT COUNT(DISTINCT stem) FROM pairs WHERE split = ? AND stem IN "
                f"(SELECT stem FROM pairs WHERE split IN ({marks}))",
                (split, *others),
            ).fetchone()[0]
    return counts
