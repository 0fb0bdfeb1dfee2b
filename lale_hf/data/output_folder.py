"""Where a converter or generator may write: never over or inside its inputs, and `overwrite` replaces only a folder
this package wrote (it holds a marker file) unless `overwrite_any` says otherwise; and the hidden staging folder a
run writes to, swept at the next run if the run was killed."""

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path


try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from .aras400k_format import OutputFolderError


_RELATIONS = ("is", "is inside", "contains")


def _relation(output: Path, source: Path) -> str | None:
    if output == source:
        return "is"
    if source in output.parents:
        return "is inside"
    if output in source.parents:
        return "contains"
    return None


def check_output_folder(
    output_dir: Path,
    inputs: Iterable[Path],
    *,
    overwrite: bool,
    overwrite_any: bool,
    marker: str,
    written_by: str,
):
    """Refuses an `output_dir` that is, is inside, or contains one of `inputs` (all compared as real paths), and an
    existing one unless `overwrite`; `overwrite` alone replaces only an empty folder or one holding `marker`."""
    output_dir = Path(output_dir).resolve()
    overlaps = []
    for source in inputs:
        source = Path(source).resolve()
        relation = _relation(output_dir, source)
        if relation is not None:
            overlaps.append((_RELATIONS.index(relation), relation, source))
    if overlaps:
        # The closest overlap says the most: being a zip beats lying inside the folder that holds it.
        _, relation, source = min(overlaps)
        raise OutputFolderError(
            f"--output_dir {output_dir} {relation} the input {source}; writing there would replace or delete "
            "input files. Choose an --output_dir outside every input."
        )
    if not os.path.lexists(output_dir):
        return
    if not overwrite:
        raise OutputFolderError(f"--output_dir {output_dir} already exists; pass --overwrite to replace it.")
    if overwrite_any:
        return
    if output_dir.is_dir() and ((output_dir / marker).is_file() or not any(output_dir.iterdir())):
        return
    raise OutputFolderError(
        f"--output_dir {output_dir} exists and is not a folder written by {written_by} (it has no {marker}); "
        "--overwrite replaces only those. Pass --overwrite_any as well to replace it anyway, or choose another "
        "--output_dir."
    )


def write_error(error: OSError, path: Path) -> OutputFolderError:
    """The error to report when writing `path` failed: what happened and what to do, instead of a traceback."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error) or "disk is full" in str(error):
        advice = "the disk is full: free some space, or choose an --output_dir on another disk"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "the folder is not writable: choose a writable --output_dir"
    else:
        advice = "check the disk, or choose another --output_dir"
    return OutputFolderError(f"Cannot write {path}: {reason}; {advice}. The output folder was left as it was.")


# Staging: a run writes to a hidden sibling of its output and renames it at the end. A lock file beside the staging
# folder, held for the whole run, tells a live run's staging from the leftovers of a killed one.


def _staging_pattern(destination: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(destination.name)}\.(tmp|zips)-\d+-[0-9a-f]{{8}}(\.lock)?$")


def _lock(path: Path, blocking: bool):
    """An open handle on `path` holding an exclusive lock on it, or None when another process holds it."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    return handle


def sweep_stale_staging(destination: Path) -> list[Path]:
    """Removes the staging folders (and their lock files) that killed runs left beside `destination`; returns them.

    A staging folder whose lock no live process holds is stale; so is one without a lock file (each run creates
    its lock first and removes it last). Staging of a run still going, in any process, is left alone.
    """
    if fcntl is None or not destination.parent.is_dir():
        return []  # without flock a live run cannot be told from a dead one
    pattern, removed = _staging_pattern(destination), []
    for entry in sorted(destination.parent.iterdir()):
        if not pattern.match(entry.name) or entry.name.endswith(".lock"):
            continue
        lock_path = entry.with_name(entry.name + ".lock")
        handle = _lock(lock_path, blocking=False) if lock_path.exists() else None
        if lock_path.exists() and handle is None:
            continue  # held: a live run
        try:
            shutil.rmtree(entry, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            removed.append(entry)
        finally:
            if handle is not None:
                handle.close()
    # Lock files of runs killed before they made their folder.
    for entry in sorted(destination.parent.iterdir()):
        if pattern.match(entry.name) and entry.name.endswith(".lock") and not entry.with_suffix("").exists():
            handle = _lock(entry, blocking=False)
            if handle is not None:
                entry.unlink(missing_ok=True)
                handle.close()
    return removed


@contextlib.contextmanager
def staging_folder(destination: Path, kind: str = "tmp") -> Iterator[Path]:
    """Creates the hidden staging folder `.{name}.{kind}-{pid}-{random}` beside `destination` and yields it; holds
    its lock while the block runs, and removes whatever is left of it afterwards. Sweeps stale staging of killed
    runs first. An unwritable location is an `OutputFolderError` at once."""
    destination = Path(destination)
    staging = destination.parent / f".{destination.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lock_path = staging.with_name(staging.name + ".lock")
    lock = None
    try:
        # Creating these is the up-front check that the output can be written, before any long work.
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_staging(destination)
            lock = _lock(lock_path, blocking=True) if fcntl is not None else None
            staging.mkdir()
        except OSError as error:
            raise write_error(error, staging) from None
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # e.g. a read-only folder, where it was never created
            lock_path.unlink(missing_ok=True)
        if lock is not None:
            lock.close()
