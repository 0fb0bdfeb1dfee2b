"""Prediction in child processes: the peak RSS of `scripts/predict.py` per scene size, and its wall time.

Each run is a fresh process started through `predict_child.py`, which reports the process's own high-water mark
(VmHWM): that prediction's model, buffers, GDAL's block cache and the Python runtime. `wait4`'s ru_maxrss is not
used: on Linux a child inherits its parent's peak through fork and exec, so it would report at least the size of
the benchmark process that started it.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "predict_child.py"
PREDICT = REPO_ROOT / "scripts" / "predict.py"


def peak_rss_of(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Runs `command`; returns its `ru_maxrss` in MiB (which includes the peak of this process at the fork) and its
    wall time in seconds. Raises with its stderr if it fails."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, wall


def predict_command(backend: str, models: dict[str, Path], scene: Path, output_dir: Path, settings: dict) -> list:
    model = models["onnx"] if backend == "onnxruntime" else models["checkpoint"]
    command = [sys.executable, str(PREDICT), str(scene), "--model", str(model), "--output_dir", str(output_dir)]
    command += ["--bands", settings["bands"], "--tile_size", str(settings["tile_size"])]
    command += ["--overlap", str(settings["overlap"]), "--batch_size", str(settings["batch_size"])]
    command += ["--overwrite", "--no_progress"]
    if backend == "compiled":
        command.append("--torch_compile")
    return command


def measure_memory(
    backends: list[str], models: dict[str, Path], scenes: dict[int, Path], work: Path, settings: dict
) -> list[dict]:
    """Peak RSS (VmHWM) and wall time of one `scripts/predict.py` process per backend and scene size."""
    rows = []
    for backend in backends:
        for size, scene in sorted(scenes.items()):
            command = predict_command(backend, models, scene, work / f"memory-{backend}-{size}", settings)
            timings = work / f"memory-{backend}-{size}.json"
            _, seconds = peak_rss_of([command[0], str(CHILD), "--timings", str(timings), *command[1:]])
            record = json.loads(timings.read_text())
            rows.append({"backend": backend, "scene": size, "peak_rss_mib": record["peak_rss_mib"], "seconds": seconds})
    return rows
