"""Members of a split's zip or extracted folder: listing and reading them without extraction, and writing
ARAS-format zips.

Zips are listed by a streamed central-directory scan (no per-member ZipInfo kept for the whole archive) and read by
offset, so that workers neither parse the directory again nor hold it in memory.
"""

import os
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..file_utils import atomic_path
from .aras400k_format import Aras400kError


_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
# A member's location inside its zip: local header offset, compressed size, size, CRC-32, method, flags.
_ZIP_LOCATION = struct.Struct("<QQQLHH")


def read_error(error: OSError, source) -> Aras400kError:
    """An input that cannot be read (permissions, I/O error): named, as bad input rather than a traceback."""
    return Aras400kError(f"Cannot read {source}: {error.strerror or error}.")


def _zip_error(zip_path, message: str) -> Aras400kError:
    return Aras400kError(f"{zip_path}: {message} The zip is corrupt or truncated; download it again.")


def iter_zip_members(zip_path: Path) -> Iterator[tuple[str, int, bytes]]:
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
            fields = _CENTRAL_HEADER.unpack_from(buffer, position)
            signature, flags, method, crc, csize, size = fields[0], *fields[3:5], *fields[7:10]
            name_len, extra_len, comment_len, offset = *fields[10:13], fields[16]
            if signature != b"PK\x01\x02":
                raise _zip_error(zip_path, "bad central-directory entry signature.")
            start = position + _CENTRAL_HEADER.size
            raw_name = buffer[start : start + name_len]
            extra = buffer[start + name_len : start + name_len + extra_len]
            position = start + name_len + extra_len + comment_len
            if position > len(buffer):
                raise _zip_error(zip_path, "its central directory ends early.")
            # Invalid UTF-8 stays as surrogate escapes (as os.scandir gives it), for the index to refuse it by name.
            name = raw_name.decode("utf-8", "surrogateescape") if flags & 0x800 else raw_name.decode("cp437")
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


class ZipMemberReader:
    """Reads members of one zip by their packed location, checking size and CRC-32."""

    def __init__(self, zip_path: Path):
        self.zip_path = zip_path
        try:
            self.handle = open(zip_path, "rb")
        except OSError as error:
            raise read_error(error, zip_path) from None

    def read(self, name: str, location: bytes) -> bytes:
        offset, csize, size, crc, method, flags = _ZIP_LOCATION.unpack(location)
        where = f"{self.zip_path.name}:{name}"
        if flags & 0x1:
            raise Aras400kError(f"{where} is encrypted; ARAS400k zips are not.")
        try:
            self.handle.seek(offset)
            header = self.handle.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                raise _zip_error(self.zip_path, f"member {name!r} has no local header at offset {offset}.")
            name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
            self.handle.seek(offset + _LOCAL_HEADER.size + name_len + extra_len)
            data = self.handle.read(csize)
        except OSError as error:
            raise read_error(error, where) from None
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


def _inside(path: Path, tree: Path) -> bool:
    return path == tree or tree in path.parents


def _outside_error(link: Path, target: Path, tree: Path) -> Aras400kError:
    return Aras400kError(
        f"{link} is a symbolic link to {target}, outside the input folder {tree}; refusing to read files from outside "
        "it. Replace the link by the file or folder it points to, or pass the folder that holds them as --input_dir."
    )


class FolderMemberReader:
    """Reads members of an extracted split folder by relative path; a file that a symbolic link now leads outside
    `tree` is refused, even if the link changed after listing."""

    def __init__(self, root: Path, tree: Path | None = None):
        self.root = root
        self.tree = Path(os.path.realpath(tree if tree is not None else root))

    def read(self, name: str, location: bytes) -> bytes:
        path = self.root / name
        target = Path(os.path.realpath(path))
        if not _inside(target, self.tree):
            raise _outside_error(path, target, self.tree)
        try:
            return target.read_bytes()
        except OSError as error:
            raise read_error(error, path) from None

    def close(self):
        pass


def iter_folder_members(root: Path, tree: Path | None = None) -> Iterator[tuple[str, int, bytes]]:
    """Yields (relative posix path, size, b"") for every file under an extracted split folder, streaming.

    Symbolic links are followed while they stay inside `tree` (default: `root`), whether to files or to folders
    (e.g. `images/` linked to a folder beside it); a link that leaves it is an `Aras400kError` naming the link, and
    so is a folder reached twice (a link loop).
    """
    tree = Path(os.path.realpath(tree if tree is not None else root))
    visited = {Path(os.path.realpath(root))}
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_symlink():
                    target = Path(os.path.realpath(path))
                    if not _inside(target, tree):
                        raise _outside_error(path, target, tree)
                    is_dir, is_file = target.is_dir(), target.is_file()
                else:
                    target, is_dir, is_file = path, entry.is_dir(follow_symlinks=False), entry.is_file()
                if is_dir:
                    real = Path(os.path.realpath(path))
                    if real in visited:
                        raise Aras400kError(
                            f"{path} leads to {real}, a folder already listed through another path (a symbolic-link "
                            "loop or a second link to the same folder)."
                        )
                    visited.add(real)
                    folders.append(path)
                elif is_file:
                    yield path.relative_to(root).as_posix(), target.stat().st_size, b""


# Writing ARAS-format zips (for the procedural sample and for tests that rebuild the official layout).

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
    count = 0
    with atomic_path(zip_path) as partial, zipfile.ZipFile(partial, "w", compression=compression) as archive:
        folders = [prefix[: i + 1] for i, char in enumerate(prefix) if char == "/"]
        for folder in folders + [f"{prefix}images/", f"{prefix}masks/"]:
            archive.writestr(_zip_entry(folder, is_dir=True), b"")
        for name, image_png, mask_png in pairs:
            archive.writestr(_zip_entry(f"{prefix}images/{name}.png"), image_png)
            archive.writestr(_zip_entry(f"{prefix}masks/{name}.png"), mask_png)
            count += 1
    return count
