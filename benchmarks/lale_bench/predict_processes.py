"""One process against several: `scripts/predict.py` alone and under `accelerate launch`, each rank timed by stage,
and the projection of a continent-sized job from the measured per-process rate and merge time.

On CPU, several processes start as training does (`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu
--num_processes N`, gloo); each rank takes cores // N threads (`ProcessGroup.share_cpu_threads`). On a machine with
fewer cores than work, this shows the overhead of splitting, not scaling.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .predict_memory import CHILD, PREDICT, REPO_ROOT, predict_command


ACCELERATE_LAUNCH = (sys.executable, "-m", "accelerate.commands.launch")
MERGE_STAGE, PREDICT_STAGE = "assembly (merge)", "block loop"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_processes(
    num_processes: int,
    backend: str,
    models: dict,
    scene: Path,
    work: Path,
    settings: dict,
    extra: list[str] = (),
    threads: int | None = None,
) -> dict:
    """Runs the prediction of `scene` in `num_processes` processes; returns the wall time and each rank's record.

    `threads` sets OMP_NUM_THREADS for one process (several processes share the cores themselves)."""
    output_dir = work / f"processes-{num_processes}"
    timings = work / f"timings-{num_processes}x{threads or 0}-{{rank}}.json"
    predict = predict_command(backend, models, scene, output_dir, settings)[1:]  # without the interpreter
    child = [str(CHILD), "--timings", str(timings), *predict, *extra]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if num_processes == 1:
        command = [sys.executable, *child]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        command = [*ACCELERATE_LAUNCH, "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1"]
        command += ["--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += child
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    ranks = [json.loads(Path(str(timings).replace("{rank}", str(rank))).read_text()) for rank in range(num_processes)]
    # Rank 0 merges; every rank predicts its blocks (the block loop, from its first block to its last).
    merge = ranks[0]["inclusive_s"].get(MERGE_STAGE, 0.0)
    predict = max(rank["inclusive_s"].get(PREDICT_STAGE, 0.0) for rank in ranks)
    return {
        "processes": num_processes,
        "backend": backend,
        "threads_per_process": [rank["torch_threads"] for rank in ranks],
        "wall_s": wall,
        "predict_s": predict,
        "merge_s": merge,
        "ranks": ranks,
    }


def projection(pixels: float, per_process_mpx_s: float, merge_mpx_s: float, processes: int) -> dict:
    """Time for `pixels` on `processes` processes: the blocks split evenly at the measured per-process rate, then one
    main process merges at the measured merge rate (for the one-COG layout; `--output_layout tiles` writes a VRT
    over the block files instead, so its merge does not grow with the map)."""
    predict = pixels / (per_process_mpx_s * 1e6 * processes)
    merge = pixels / (merge_mpx_s * 1e6)
    return {"processes": processes, "predict_s": predict, "merge_s": merge, "total_s": predict + merge}


__all__ = ["PREDICT", "free_port", "projection", "run_processes"]
