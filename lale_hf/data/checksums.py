"""MD5 checksums of the ARAS400k zips: the published table, `md5sum`-format lists beside the zips, and verification."""

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm.auto import tqdm

from ..file_utils import write_atomic
from .aras400k_format import PUBLISHED_CHECKSUMS, PUBLISHED_MD5, Aras400kError


# An MD5 list beside the zips (`md5sum` format) overrides the published table for the files it names, e.g. for the
# procedural sample of `lale_hf.data.synthetic_landcover`, whose zips are not the published ones.
MD5_LIST_NAMES = ("MD5SUMS", "md5sums.txt")


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


def verify_checksums(zip_paths: list[Path], expected: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
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
