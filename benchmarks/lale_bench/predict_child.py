#!/usr/bin/env python
"""Runs a prediction script in this process with the stage timers of `predict_profile` installed, then writes this
process's stage seconds, wall time and peak RSS (VmHWM) as JSON ("{rank}" in the path becomes the process index).

The prediction benchmark starts it directly (one process) or under `accelerate launch` (one per rank):

  python benchmarks/lale_bench/predict_child.py --timings t-{rank}.json scripts/predict.py ARGS...
"""

import json
import os
import resource
import runpy
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmark library, as its entry points import it

from lale_bench.predict_profile import StageTimer, patched_stages  # noqa: E402
from lale_hf.file_utils import write_atomic  # noqa: E402


def peak_rss_mib() -> float:
    """This process's peak RSS since it started its program: VmHWM, the high-water mark of its current memory map.

    Not `ru_maxrss`: Linux carries a parent's peak into a forked child through exec, so a child of a large process
    (the benchmark holds its recorded batches) would report at least its parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    if len(sys.argv) < 4 or sys.argv[1] != "--timings":
        sys.exit(f"usage: {sys.argv[0]} --timings PATH SCRIPT [ARGS...]")
    timings, script, *args = sys.argv[2:]
    rank = os.environ.get("RANK", "0")
    timer = StageTimer()
    sys.argv = [script, *args]
    code = 0
    start = time.perf_counter()
    with patched_stages(timer) as missing:
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
    wall = time.perf_counter() - start
    record = {
        "rank": int(rank),
        "wall_s": wall,
        "stages_s": dict(timer.totals),
        "inclusive_s": dict(timer.inclusive),
        "not_found": missing,
        "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": __import__("torch").get_num_threads(),
        "exit_code": code,
    }
    write_atomic(timings.replace("{rank}", rank), json.dumps(record, indent=2) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
