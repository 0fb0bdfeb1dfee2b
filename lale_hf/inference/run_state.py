"""The work folder of a prediction run: its settings, its blocks, and the manifest of the blocks that are done.

`<output_dir>/.lale-run/` holds `run.json` (every setting that shapes the outputs, the inputs, the scaling each
input resolved to, and the block list) and `blocks/`: one data file per block (a GeoTIFF or a .npy), its preview
rows, and last a `<block>.done.json` record with the data file's SHA-256. A block is done only when its record
exists and the data file still has that hash, so a write cut short by a kill is recomputed, never taken for done.
Every file is written to a temporary sibling and renamed. The folder is removed once the outputs are assembled.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..file_utils import write_atomic
from .distributed import WorkItem
from .errors import InferenceError


WORK_FOLDER = ".lale-run"
RUN_FILE = "run.json"
RUN_FORMAT = 1
# Settings a resume must share with the interrupted run, and the option that sets each (in the order checked).
RESUME_SETTINGS = {
    "model": "--model",
    "model_sha256": "--model (its weights changed)",
    "backend": "--model",
    "inputs": "an input (its path, size or modification time)",
    "mosaic": "--mosaic",
    "bands": "--bands",
    "scaling": "--scaling",
    "offset": "--offset",
    "tile_size": "--tile_size",
    "overlap": "--overlap",
    "batch_size": "--batch_size",
    "block_rows": "--block_rows",
    "dtype": "--dtype",
    "output_layout": "--output_layout",
    "preview_size": "--preview_size",
    "products": "the map products (--save_confidence, --save_probabilities, --tta, --vectorize)",
}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class RunFolder:
    """`<output_dir>/.lale-run`: the run's settings, block files and done records (see the module docstring)."""

    def __init__(self, output_dir: str | os.PathLike):
        self.root = Path(output_dir) / WORK_FOLDER
        self.blocks = self.root / "blocks"
        self.run_file = self.root / RUN_FILE

    def exists(self) -> bool:
        return self.run_file.is_file()

    def start(self, run: dict, resume: bool, overwrite: bool) -> dict:
        """Creates the folder for a new run, or checks that `run` may continue the interrupted one; main only."""
        if self.exists():
            if resume:
                previous = self.read()
                check_resumable(previous, run, self.run_file)
                return previous
            if not overwrite:
                raise FileExistsError(
                    f"{self.root}: an interrupted prediction run is there; pass --resume to finish it or --overwrite "
                    "to start again."
                )
        if self.root.exists():
            shutil.rmtree(self.root)
        self.blocks.mkdir(parents=True)
        write_atomic(self.run_file, json.dumps({"format": RUN_FORMAT, **run}, indent=1) + "\n")
        return run

    def read(self) -> dict:
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InferenceError(f"{self.run_file}: unreadable run settings ({error}); pass --overwrite.") from error

    def data_path(self, item: WorkItem, suffix: str) -> Path:
        return self.blocks / f"{item.key}{suffix}"

    def preview_path(self, item: WorkItem) -> Path:
        return self.blocks / f"{item.key}.preview.npy"

    def record_path(self, item: WorkItem) -> Path:
        return self.blocks / f"{item.key}.done.json"

    def is_done(self, item: WorkItem) -> bool:
        """A done record whose data file and preview still have the recorded hashes."""
        try:
            record = json.loads(self.record_path(item).read_text())
            return all(sha256_file(self.blocks / name) == digest for name, digest in record["sha256"].items())
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return False

    def mark_done(self, item: WorkItem, files: list[Path], counts: np.ndarray, areas_m2: np.ndarray, extra: dict):
        """Writes the block's record last: from then on the block counts as done."""
        record = {
            "rows": [item.row0, item.row1],
            "sha256": {path.name: sha256_file(path) for path in files},
            "counts": counts.tolist(),
            "areas_m2": areas_m2.tolist(),
            **extra,
        }
        write_atomic(self.record_path(item), json.dumps(record) + "\n")

    def record(self, item: WorkItem) -> dict:
        return json.loads(self.record_path(item).read_text())

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


def check_resumable(previous: dict, run: dict, where: Path):
    """Raises `InferenceError` naming the first setting in which `run` differs from the interrupted run."""
    if previous.get("format") != RUN_FORMAT:
        raise InferenceError(f"{where}: written by another version of lale-hf; pass --overwrite to start again.")
    for key, option in RESUME_SETTINGS.items():
        if previous.get(key) != run.get(key):
            raise InferenceError(
                f"--resume: {option} differs from the interrupted run in {where.parent} "
                f"({key}: {_short(previous.get(key))} then, {_short(run.get(key))} now); rerun with the same "
                "settings, or pass --overwrite to start again."
            )


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


__all__ = ["RESUME_SETTINGS", "WORK_FOLDER", "RunFolder", "check_resumable", "sha256_file"]
