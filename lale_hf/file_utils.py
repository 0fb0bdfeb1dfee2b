"""Atomic file and folder writes: a reader never sees a half-written output."""

import os
import shutil
import tempfile
import uuid
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


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Writes `data` (text as UTF-8) to a temporary sibling, then renames it to `path`; creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; outputs are for everyone to read
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
