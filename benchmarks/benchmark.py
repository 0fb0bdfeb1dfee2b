#!/usr/bin/env python
"""Efficiency benchmark: the LALE presets against SegFormer-B0/B1, a 7 M UPerNet-ConvNeXt and MobileViT-XXS DeepLabV3,
all built from transformers configs with random weights, measured in one run on this machine.

    python benchmarks/benchmark.py --output_dir outputs/benchmark                   # the full CPU table
    python benchmarks/benchmark.py --allocator both --output_dir outputs/benchmark  # glibc and tcmalloc, in lockstep
    python benchmarks/benchmark.py --results lale-tiny=runs/lale-tiny/all_results.json ...   # add accuracy
    python benchmarks/benchmark.py --train_budget_minutes 30 --dataset_name outputs/s2glc    # train all, then measure
    python benchmarks/benchmark.py --from_json outputs/benchmark/benchmark.json --results ...  # re-render with accuracy

Per model: parameters, fp32 safetensors size, GMACs (torch's FLOP counter, MACs = FLOPs / 2), inference throughput
at each batch size along every deployment path (eager, channels_last, torch.compile, ONNX Runtime; each checked
against eager before it is timed), training throughput (forward, backward, AdamW step), peak tensor memory, and the
fraction of this machine's fp32 matmul peak, measured in the same run. Timing is interleaved round by round; every
ratio pairs the samples of one round. Writes benchmark.json, benchmark.md and benchmark.png to --output_dir.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lale_bench import (
    DEFAULT_MODELS,
    DTYPES,
    PATHS,
    ZOO,
    BenchmarkSettings,
    LockstepTurn,
    build_report,
    equal_budget_commands,
    plot_report,
    read_accuracy,
    render_markdown,
    run_benchmark,
    run_lockstep,
    silence_third_party_noise,
)
from lale_hf.allocator import allocator_env, detect_allocator
from lale_hf.file_utils import write_atomic


REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to measure")
    what.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(ZOO))
    what.add_argument(
        "--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="Deployment paths; eager is required."
    )
    what.add_argument(
        "--dtypes", nargs="+", choices=list(DTYPES), help="Default: fp32 on CPU, fp32 and bf16 (autocast) on CUDA."
    )
    what.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present.")
    what.add_argument("--image_size", type=int, default=256)
    what.add_argument("--inference_batch_sizes", type=int, nargs="+", default=[1, 16])
    what.add_argument("--train_batch_size", type=int, default=8)
    what.add_argument("--reference", default="lale-tiny", choices=list(ZOO), help="The model every ratio is taken for.")

    how = parser.add_argument_group("timing")
    how.add_argument("--rounds", type=int, default=5, help="Interleaved rounds; each gives one sample per workload.")
    how.add_argument("--warmup_calls", type=int, default=2)
    how.add_argument(
        "--min_seconds", type=float, default=0.5, help="Shortest time one sample takes (calls are repeated)."
    )
    how.add_argument(
        "--matmul_sizes",
        type=int,
        nargs="+",
        default=[512, 1024, 2048],
        help="Square matmuls timed with the models; the fastest is the machine's peak.",
    )
    how.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: torch's default).")
    how.add_argument("--seed", type=int, default=0)
    how.add_argument(
        "--allocator",
        default="current",
        choices=["current", "glibc", "tcmalloc", "both"],
        help="current: as started. glibc/tcmalloc: re-run under that malloc (tcmalloc via LD_PRELOAD). both: one "
        "process per allocator, taking turns group by group, and their paired ratios.",
    )

    accuracy = parser.add_argument_group("accuracy")
    accuracy.add_argument(
        "--results",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="all_results.json of a scripts/train.py run per model, e.g. lale-tiny=runs/x/all_results.json.",
    )
    accuracy.add_argument(
        "--train_budget_minutes",
        type=float,
        help="First train every model with scripts/train.py for this wall-clock budget, same data and seed.",
    )
    accuracy.add_argument(
        "--dataset_name", help="Dataset for --train_budget_minutes (a folder written by prepare_aras400k.py)."
    )
    accuracy.add_argument("--train_seed", type=int, default=42)
    accuracy.add_argument("--train_args", default="", help="Extra scripts/train.py arguments, one shell-quoted string.")
    accuracy.add_argument("--dry_run", action="store_true", help="Print the training commands and stop.")

    parser.add_argument("--output_dir", default="outputs/benchmark")
    parser.add_argument(
        "--from_json",
        metavar="BENCHMARK_JSON",
        help="Measure nothing: rebuild the report of an earlier run (e.g. with --results added).",
    )
    parser.add_argument("--lockstep_fds", help=argparse.SUPPRESS)  # set by --allocator both for its workers
    parser.add_argument("--worker_output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    args.dtypes = args.dtypes or (["fp32", "bf16"] if args.device == "cuda" else ["fp32"])
    if args.train_budget_minutes is not None and not args.dataset_name:
        parser.error("--train_budget_minutes needs --dataset_name")
    if args.allocator == "both" and args.device == "cuda":
        parser.error("--allocator both compares host allocators on the CPU; use --device cpu")
    if args.from_json and not Path(args.from_json).is_file():
        parser.error(f"--from_json {args.from_json}: no such file")
    if bool(args.lockstep_fds) != bool(args.worker_output):
        parser.error("--lockstep_fds and --worker_output go together")
    try:
        args.settings = BenchmarkSettings(
            models=args.models,
            paths=args.paths,
            dtypes=args.dtypes,
            device=args.device,
            image_size=args.image_size,
            inference_batch_sizes=args.inference_batch_sizes,
            train_batch_size=args.train_batch_size,
            rounds=args.rounds,
            warmup_calls=args.warmup_calls,
            min_seconds=args.min_seconds,
            matmul_sizes=args.matmul_sizes,
            threads=args.threads,
            seed=args.seed,
        )
        args.accuracy = read_accuracy(args.results)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    return args


def log(message):
    print(message, file=sys.stderr, flush=True)


def train_at_equal_budget(args) -> dict:
    """Trains every model with scripts/train.py for the same budget; returns their accuracy records."""
    commands = equal_budget_commands(
        args.models,
        args.dataset_name,
        Path(args.output_dir) / "equal_budget",
        args.train_budget_minutes,
        args.train_seed,
        str(TRAIN_SCRIPT),
        shlex.split(args.train_args),
    )
    for name, command, _ in commands:
        log(f"[train] {name}: {shlex.join(command)}")
        if not args.dry_run:
            subprocess.run(command, check=True)
    if args.dry_run:
        return {}
    return read_accuracy(f"{name}={results}" for name, _, results in commands)


def run_both_allocators(args) -> list[dict]:
    """One worker per allocator (glibc first), alternating group by group; returns their runs."""
    with tempfile.TemporaryDirectory() as folder:
        commands, outputs = [], []
        for allocator in ("glibc", "tcmalloc"):
            outputs.append(Path(folder) / f"{allocator}.json")
            worker = ["--allocator", allocator, "--worker_output", str(outputs[-1])]
            commands.append(([sys.executable, __file__, *sys.argv[1:], *worker], allocator_env(allocator)))
        run_lockstep(commands)
        return [json.loads(path.read_text()) for path in outputs]


def main():
    silence_third_party_noise()
    args = parse_args()
    started = time.perf_counter()
    command = shlex.join(["python", "benchmarks/benchmark.py", *sys.argv[1:]])

    if args.worker_output:  # a worker of --allocator both: measure under the allocator the parent set, hand back
        if detect_allocator() != args.allocator:
            raise SystemExit(f"error: worker asked for {args.allocator} but runs on {detect_allocator()}")
        go_fd, done_fd = (int(fd) for fd in args.lockstep_fds.split(","))
        run = run_benchmark(args.settings, turn=LockstepTurn(go_fd, done_fd), log=log)
        write_atomic(args.worker_output, json.dumps(run))
        return

    if args.allocator in ("glibc", "tcmalloc") and detect_allocator() != args.allocator and not args.from_json:
        if os.environ.get("LALE_BENCHMARK_REEXEC"):
            raise SystemExit(f"error: re-ran under {args.allocator} but the process still runs on {detect_allocator()}")
        env = {**allocator_env(args.allocator), "LALE_BENCHMARK_REEXEC": "1"}
        log(f"[allocator] re-running under {args.allocator}")
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)

    accuracy = args.accuracy
    if args.train_budget_minutes is not None:
        accuracy.update(train_at_equal_budget(args))
        if args.dry_run:
            return

    if args.from_json:  # re-render an earlier run's measurements, with any accuracy given now
        previous = json.loads(Path(args.from_json).read_text())
        runs = [{key: value for key, value in run.items() if key != "summary"} for run in previous["runs"]]
        command, total_seconds = previous["command"], previous["total_seconds"]
        accuracy = {**previous["accuracy"], **accuracy}
    else:
        runs = run_both_allocators(args) if args.allocator == "both" else [run_benchmark(args.settings, log=log)]
        total_seconds = time.perf_counter() - started

    report = build_report(runs, accuracy, reference=args.reference, command=command)
    report["total_seconds"] = total_seconds
    output_dir = Path(args.output_dir)
    markdown = render_markdown(report)
    write_atomic(output_dir / "benchmark.json", json.dumps(report, indent=1))
    write_atomic(output_dir / "benchmark.md", markdown)
    plot_report(report, output_dir / "benchmark.png")
    print(markdown)
    log(f"[done] {report['total_seconds'] / 60:.1f} min; wrote {output_dir}/benchmark.{{json,md,png}}")


if __name__ == "__main__":
    main()
