"""What `import lale_hf` costs: wall time, CPU time and peak RSS in fresh interpreters, medians over several runs.

    python benchmarks/import_cost.py                       # the lale_hf this interpreter imports
    mkdir /tmp/lale-old && git archive 9288aa9 | tar -x -C /tmp/lale-old
    python benchmarks/import_cost.py --cwd . --cwd /tmp/lale-old   # two trees, runs interleaved

Each statement runs in its own interpreter, started from each `--cwd` (a `lale_hf/` folder there is imported before
the installed package). Runs alternate between the trees, so a busy machine slows them alike; CPU time (user +
system) is the steadier figure when other work shares the cores. The rows for `pass`, torch and transformers show
what the interpreter and the dependencies cost on their own; the last column names the heavy optional modules the
statement left in `sys.modules`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


HEAVY_MODULES = ("pyarrow", "rasterio", "onnx", "onnxruntime", "matplotlib", "sqlite3")
STATEMENTS = ("pass", "import torch", "import transformers", "import lale_hf")

# Runs in the child: times the statement and reports peak RSS (Linux ru_maxrss is in KiB).
CHILD = """
import json, resource, sys, time
def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, start_cpu = time.perf_counter(), cpu_seconds()
exec(sys.argv[1])
seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
module = sys.modules.get("lale_hf")
print(json.dumps({
    "seconds": seconds,
    "cpu_seconds": cpu,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "heavy": [name for name in sys.argv[2].split(",") if name in sys.modules],
    "lale_hf_file": getattr(module, "__file__", None),
}))
"""


class ImportFailed(RuntimeError):
    """A measured statement failed in its interpreter."""


def measure(statement: str, python: str, cwd: str) -> dict:
    """One fresh interpreter: seconds for the statement, peak RSS of the whole process, heavy modules loaded."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        [python, "-c", CHILD, statement, ",".join(HEAVY_MODULES)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImportFailed(f"`{statement}` failed in {python} (cwd {cwd}):\n{result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_costs(samples: list[dict]) -> dict:
    return {
        "seconds": statistics.median(s["seconds"] for s in samples),
        "cpu_seconds": statistics.median(s["cpu_seconds"] for s in samples),
        "peak_rss_mib": statistics.median(s["peak_rss_mib"] for s in samples),
        "heavy": samples[-1]["heavy"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure (default: this one)")
    parser.add_argument(
        "--cwd", action="append", help="directory the interpreters start in; repeat to compare trees (default: here)"
    )
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per statement; the median is shown")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    trees = args.cwd or [os.getcwd()]
    samples = {(tree, statement): [] for tree in trees for statement in STATEMENTS}
    try:
        for _ in range(args.runs):
            for tree in trees:
                for statement in STATEMENTS:
                    samples[tree, statement].append(measure(statement, args.python, tree))
    except ImportFailed as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Median of {args.runs} fresh interpreters ({args.python}).")
    for tree in trees:
        print(f"--cwd {tree}: lale_hf from {samples[tree, 'import lale_hf'][-1]['lale_hf_file']}")
    print("\n| --cwd | statement | wall time (s) | CPU time (s) | peak RSS (MiB) | heavy modules loaded |")
    print("|---|---|---|---|---|---|")
    for (tree, statement), tree_samples in samples.items():
        costs = median_costs(tree_samples)
        heavy = ", ".join(costs["heavy"]) or "none"
        print(
            f"| {tree} | `{statement}` | {costs['seconds']:.2f} | {costs['cpu_seconds']:.2f} | "
            f"{costs['peak_rss_mib']:.0f} | {heavy} |"
        )


if __name__ == "__main__":
    main()
