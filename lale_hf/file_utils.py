"""Atomic file and folder writes: a reader never sees a half-written output."""

import os
import shutil
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


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` to a temporary sibling, then renames it to `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path
