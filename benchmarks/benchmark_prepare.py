#!/usr/bin/env python
"""Throughput and peak memory of the ARAS400k converter on generated ARAS-format zip sets of several sizes.

For each size, the procedural sample (`lale_hf.data.generate_sample`, deflated zips like the official ones) is
generated once, then `scripts/prepare_aras400k.py` converts it in a subprocess with 1 process (the baseline of the
same run) and with `--num_proc` processes, MD5 verification included.

"CPU-bound pairs/s" divides the pairs by the CPU time of the main process plus that of the workers spread over
`--num_proc` cores: the rate with the machine to itself, which the wall-clock rate matches when nothing else runs.
Memory is sampled from /proc every 50 ms: the peak RSS of the main process and of the largest worker (VmHWM), and
the peak PSS of the whole process tree (forked workers share the main process's pages; PSS counts them once).
Prints a table and writes JSON.

    python benchmarks/benchmark_prepare.py --sizes 2500 10000 --num_proc 2

The project's goal: at least 400 pairs/s on 2 cores (ARAS400k's 400,240 pairs in under 20 minutes), and a peak
memory that does not grow with the dataset size.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from lale_hf.data import generate_sample
from lale_hf.file_utils import write_atomic


REPO_ROOT = Path(__file__).resolve().parents[1]
# Share of each split in a generated set (ARAS400k itself is a quarter real, three quarters synthetic).
SPLIT_SHARES = {"train": 0.6, "val": 0.1, "test": 0.1, "synth": 0.2}
ARAS400K_PAIRS = 400_240


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 10000], help="Pairs per generated zip set.")
    parser.add_argument("--num_proc", type=int, default=2, help="Worker processes of the measured runs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", type=Path, help="Where to keep the generated zips (reused when present).")
    parser.add_argument("--output_json", type=Path, default=Path("outputs/benchmark_prepare.json"))
    return parser.parse_args()


def peak_hwm_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far, in KiB; 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss_kib(pid: int) -> int:
    """The process's proportional set size in KiB (pages shared with forked workers counted once overall)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def measure_conversion(zips: Path, output: Path, num_proc: int) -> dict:
    """Runs the converter CLI in a subprocess while sampling the memory of its process tree."""
    report_path = output.with_name(output.name + ".report.json")
    command = [sys.executable, str(REPO_ROOT / "scripts" / "prepare_aras400k.py"), "--input_dir", str(zips)]
    command += ["--output_dir", str(output), "--num_proc", str(num_proc), "--overwrite"]
    command += ["--report_json", str(report_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    main = psutil.Process(process.pid)
    main_hwm = worker_hwm = tree_peak = 0
    while process.poll() is None:
        try:
            workers = main.children(recursive=True)
            main_hwm = max(main_hwm, peak_hwm_kib(main.pid))
            worker_hwm = max([worker_hwm] + [peak_hwm_kib(worker.pid) for worker in workers])
            tree_peak = max(tree_peak, sum(pss_kib(p.pid) for p in [main, *workers]))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    stderr = process.stderr.read()
    if process.returncode != 0:
        raise SystemExit(f"conversion failed:\n{stderr[-3000:]}")
    report = json.loads(report_path.read_text())
    report_path.unlink()
    pairs = report["num_examples"]
    return {
        "num_proc": num_proc,
        "pairs": pairs,
        "convert_seconds": report["seconds"],
        "pairs_per_second": pairs / report["seconds"],
        "cpu_seconds_main": report["cpu_seconds_main"],
        "cpu_seconds_workers": report["cpu_seconds_workers"],
        # What the run would take with its processes alone on the machine: the main process's own work plus the
        # workers' work spread over num_proc cores (the same-run wall rate shows what other load cost).
        "pairs_per_second_if_idle": pairs / (report["cpu_seconds_main"] + report["cpu_seconds_workers"] / num_proc),
        "wall_seconds_with_startup": wall,
        "peak_rss_main_mib": main_hwm / 1024,
        "peak_rss_largest_worker_mib": worker_hwm / 1024,
        "peak_pss_process_tree_mib": tree_peak / 1024,
        "parquet_mib": sum(s["parquet_bytes"] for s in report["splits"].values()) / 2**20,
    }


def main():
    args = parse_args()
    load_at_start = os.getloadavg()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="lale-benchmark-prepare-"))
    rows, generation = [], {}
    for size in args.sizes:
        zips = work_dir / f"zips-{size}-seed{args.seed}"
        if not (zips / "md5sums.txt").is_file():
            sizes = {split: max(1, round(size * share)) for split, share in SPLIT_SHARES.items()}
            start = time.perf_counter()
            generate_sample(zips, seed=args.seed, sizes=sizes, num_proc=args.num_proc, overwrite=True)
            generation[size] = {"patches": sum(sizes.values()), "seconds": time.perf_counter() - start}
        zip_mib = sum(p.stat().st_size for p in zips.glob("*.zip")) / 2**20
        for num_proc in sorted({1, args.num_proc}):
            output = work_dir / f"dataset-{size}-{num_proc}"
            row = {"size": size, "zip_mib": zip_mib, **measure_conversion(zips, output, num_proc)}
            shutil.rmtree(output)
            rows.append(row)
            print(f"  {size} pairs, {num_proc} proc: {row['pairs_per_second']:.0f} pairs/s", flush=True)
    for row in rows:
        baseline = next(r for r in rows if r["size"] == row["size"] and r["num_proc"] == 1)
        row["speedup_vs_1_proc"] = row["pairs_per_second"] / baseline["pairs_per_second"]
        row["aras400k_minutes_at_this_rate"] = ARAS400K_PAIRS / row["pairs_per_second"] / 60

    header = (
        f"{'pairs':>7} {'zips MiB':>8} {'procs':>5} {'pairs/s':>8} {'x 1 proc':>8} {'CPU-bound pairs/s':>17} "
        f"{'ARAS400k min':>12} "
        f"{'main RSS MiB':>12} {'worker RSS MiB':>14} {'tree PSS MiB':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['size']:>7} {row['zip_mib']:>8.0f} {row['num_proc']:>5} {row['pairs_per_second']:>8.0f} "
            f"{row['speedup_vs_1_proc']:>8.2f} {row['pairs_per_second_if_idle']:>17.0f} "
            f"{row['aras400k_minutes_at_this_rate']:>12.1f} "
            f"{row['peak_rss_main_mib']:>12.0f} {row['peak_rss_largest_worker_mib']:>14.0f} "
            f"{row['peak_pss_process_tree_mib']:>12.0f}"
        )
    for info in generation.values():
        print(
            f"generated {info['patches']} patches in {info['seconds']:.1f} s "
            f"({info['patches'] / info['seconds']:.0f} patches/s, {args.num_proc} processes)"
        )

    result = {
        "benchmark": "ARAS400k converter (scripts/prepare_aras400k.py) on generated ARAS-format zips",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "allocator": os.environ.get("LD_PRELOAD") or "system malloc",
            # Other work on the machine slows every run alike; the 1-process baseline of the same run shows it.
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "split_shares": SPLIT_SHARES,
        "runs": rows,
        "generation": generation,
    }
    write_atomic(args.output_json, json.dumps(result, indent=2) + "\n")
    print(f"load average {load_at_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; JSON -> {args.output_json}")
    if args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
