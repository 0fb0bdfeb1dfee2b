"""Where a converter or generator may write: never over or inside its inputs, and `overwrite` replaces only a folder
this package wrote (it holds a marker file) unless `overwrite_any` says otherwise."""

import os
from collections.abc import Iterable
from pathlib import Path

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
