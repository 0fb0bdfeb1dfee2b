#!/usr/bin/env python
"""Accuracy comparisons that survive noise: several seeds per model, mean ± std with 95% intervals, and paired
comparisons across seeds, at equal compute, at equal steps, or at an equal wall-clock budget.

    python benchmarks/benchmark_accuracy.py --dataset_name outputs/s2glc \
        --models lale-tiny segformer-b0 mobilevit-xxs-deeplabv3 --seeds 0 1 2 \
        --modes equal-compute equal-steps --budget_seconds 120 --equal_steps 300 --output_dir outputs/accuracy

Equal compute gives each model the optimizer steps it completes in `--budget_seconds` at its isolated training
speed, measured first in this run (interleaved rounds). The runs then go `--parallel` at a time and their scores do
not depend on machine load. `wall-clock` mode (`train.py --max_train_minutes`) does depend on it: it is there for
completeness, clearly named. A killed comparison resumes: finished runs are kept.
"""

import argparse
import datetime
import json
import platform
import shlex
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from lale_bench.multiseed import (  # noqa: E402
    MODES,
    collect_results,
    measure_training_speed,
    model_costs,
    plan_runs,
    run_trainings,
    summarize_comparison,
    train_command,
)
from lale_bench.multiseed_report import plot_comparison, render_markdown  # noqa: E402
from lale_bench.quiet import silence_third_party_noise  # noqa: E402
from lale_bench.zoo import ZOO  # noqa: E402
from lale_hf.file_utils import write_atomic  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", help="A dataset folder written by prepare_aras400k.py.")
    parser.add_argument(
        "--models", nargs="+", default=["lale-tiny", "segformer-b0", "mobilevit-xxs-deeplabv3"], choices=sorted(ZOO)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["equal-compute", "equal-steps"], choices=MODES)
    parser.add_argument(
        "--budget_seconds",
        type=float,
        default=120.0,
        help="Equal compute: seconds of isolated training each model gets (and wall-clock mode's budget).",
    )
    parser.add_argument("--equal_steps", type=int, default=300, help="Optimizer steps of every model in equal-steps.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--inference_image_size", type=int, default=256, help="Patch size of the GMACs column.")
    parser.add_argument("--timing_rounds", type=int, default=3)
    parser.add_argument("--speeds_json", help="Reuse the speeds of an earlier report of this script.")
    parser.add_argument("--parallel", type=int, default=2, help="Training runs at a time.")
    parser.add_argument("--threads_per_run", type=int, default=1)
    parser.add_argument("--train_args", default="", help="Extra train.py arguments, one string (the recipe).")
    parser.add_argument("--output_dir", default="outputs/accuracy")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Report the runs that finished so far (models with at least 2 seeds), train nothing.",
    )
    parser.add_argument("--from_json", help="Re-render the markdown and plot of an earlier report.json.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    silence_third_party_noise()
    output_dir = Path(args.output_dir)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        if not args.dataset_name:
            raise SystemExit("error: --dataset_name is required unless --from_json is given")
        if len(args.seeds) < 2:
            raise SystemExit("error: give at least 2 --seeds (3 or more for a useful interval)")
        speeds = None
        if "equal-compute" in args.modes:
            if args.speeds_json:
                speeds = json.loads(Path(args.speeds_json).read_text())["speeds"]
            else:
                print(f"Measuring isolated training speed ({args.timing_rounds} interleaved rounds)...")
                speeds = measure_training_speed(args.models, args.batch_size, args.image_size, args.timing_rounds)
            print("Training images/s: " + ", ".join(f"{m} {v:.2f}" for m, v in speeds.items()))
        runs = plan_runs(
            args.models, args.seeds, args.modes, args.batch_size, speeds, args.budget_seconds, args.equal_steps
        )
        train_args = shlex.split(args.train_args)
        commands = {
            run.name: train_command(
                run,
                str(args.dataset_name),
                output_dir,
                str(REPO_ROOT / "scripts" / "train.py"),
                args.threads_per_run,
                args.batch_size,
                args.image_size,
                train_args,
            )
            for run in runs
        }
        if not args.report_only:
            run_trainings(runs, commands, output_dir, args.parallel, args.threads_per_run)
        records = collect_results(runs, output_dir)
        costs = model_costs(args.models, args.image_size, args.inference_image_size)
        report = {
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python " + shlex.join(sys.argv),
            "machine": f"{platform.processor() or platform.machine()}, {_cpu_model()}",
            "settings": {k: v for k, v in vars(args).items() if k != "from_json"},
            "speeds": speeds,
            "runs": records,
            "summary": summarize_comparison(records, costs, args.batch_size),
        }
        write_atomic(output_dir / "report.json", json.dumps(report, indent=2))
    markdown = render_markdown(report)
    write_atomic(output_dir / "report.md", markdown)
    plot_comparison(report, output_dir / "accuracy.png")
    print(markdown)
    print(f"Report: {output_dir / 'report.json'}, {output_dir / 'report.md'}, plot {output_dir / 'accuracy.png'}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
