"""Atomic file and folder writes: a reader never sees a half-written output."""

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def replace_folder(staging: str | os.PathLike, destination: str | os.PathLike):
    """Moves a finished staging folder to `destination`, replacing an old one only once the new one is complete."""
    staging, destination = Path(staging), Path(destination)
    if not destination.exists():
        os.replace(staging, destination)
        return
    retired = destination.parent / f".{destination.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(destination, retired)
    try:
        os.replace(staging, destination)
    except BaseException:
        os.replace(retired, destination)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _readable_mode() -> int:
    """0666 less the process umask: what `open()` would have given the file (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling of `path` (an empty file) to write to; renames it onto `path` when the block ends
    without an exception, removes it otherwise. For writers that need a path (zipfile, pyarrow, onnx.save_model).
    Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(descriptor)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, _readable_mode())  # outputs are for everyone to read
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Writes `data` (text as UTF-8) to a temporary sibling, then renames it to `path`; creates the parent folder."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def make_readable(folder: str | os.PathLike):
    """Gives the files directly in `folder` the permissions `open()` would have (some writers create them 0600)."""
    for path in Path(folder).iterdir():
        if path.is_file():
            os.chmod(path, _readable_mode())


def publish_files(staging: str | os.PathLike, folder: str | os.PathLike):
    """Moves every finished file of `staging` into `folder` by rename (each appears whole, readable by all), then
    removes `staging`. For outputs that share their folder with others (a training run's model beside its
    checkpoints), where `replace_folder` would replace too much."""
    staging, folder = Path(staging), Path(folder)
    make_readable(staging)
    for path in staging.iterdir():
        os.replace(path, folder / path.name)
    staging.rmdir()
