#!/usr/bin/env python
"""Compare training recipes run by `benchmark_accuracy.py` into separate output folders, seed by seed.

    python benchmarks/compare_recipes.py --model lale-tiny --steps 600 --baseline default \
        default=outputs/accuracy old=outputs/ablation-old-recipe class-weights=outputs/ablation-class-weights

Each folder holds MODEL/seed-N/steps-S/all_results.json. Prints, per recipe, macro F1 and mIoU (mean ± std
[95% t-interval], points), the largest spread of the last five evaluations, and the paired difference to the
baseline over the seeds both have; writes the same as markdown and JSON with --output.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from lale_bench.seed_statistics import paired_comparison, seed_summary
from lale_hf.file_utils import write_atomic


def read_recipe(folder: Path, model: str, steps: int) -> dict[int, dict]:
    """Seed -> all_results.json of the runs of `model` at `steps` in `folder`."""
    runs = {}
    for path in sorted(folder.glob(f"{model}/seed-*/steps-{steps}/all_results.json")):
        seed = int(re.search(r"seed-(\d+)", str(path)).group(1))
        runs[seed] = json.loads(path.read_text())
    return runs


def points(summary: dict) -> str:
    return f"{summary['mean'] * 100:.1f} ± {summary['std'] * 100:.1f} [{summary['ci_low'] * 100:.1f}, {summary['ci_high'] * 100:.1f}]"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", help="NAME=FOLDER pairs.")
    parser.add_argument("--model", default="lale-tiny")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--baseline", required=True, help="The NAME the others are compared with.")
    parser.add_argument("--output", help="Write the table here (.md) and beside it as .json.")
    args = parser.parse_args(argv)
    recipes = dict(spec.split("=", 1) for spec in args.recipes)
    if args.baseline not in recipes:
        parser.error(f"--baseline {args.baseline!r} is not one of {sorted(recipes)}")
    runs = {name: read_recipe(Path(folder), args.model, args.steps) for name, folder in recipes.items()}
    for name, by_seed in runs.items():
        if len(by_seed) < 2:
            parser.error(f"{name}: {len(by_seed)} finished run(s) of {args.model} at {args.steps} steps; need 2+")
    score = {name: {s: r["eval_macro_f1"] for s, r in by_seed.items()} for name, by_seed in runs.items()}
    iou = {name: {s: r["eval_mean_iou"] for s, r in by_seed.items()} for name, by_seed in runs.items()}
    rows, record = [], {}
    for name, by_seed in runs.items():
        spreads = [r["eval_macro_f1_spread_last5"] for r in by_seed.values()]
        entry = {
            "seeds": sorted(by_seed),
            "eval_macro_f1": seed_summary(list(score[name].values())),
            "eval_mean_iou": seed_summary(list(iou[name].values())),
            "spread_last5_max": max(spreads),
        }
        if name != args.baseline:
            entry["paired_vs_baseline"] = paired_comparison(score[name], score[args.baseline])
        record[name] = entry
        paired = entry.get("paired_vs_baseline")
        rows.append(
            f"| {name} | {points(entry['eval_macro_f1'])} | {points(entry['eval_mean_iou'])} | "
            f"{entry['spread_last5_max'] * 100:.1f} | "
            + (f"{points(paired)} (p {paired['p_value']:.2f})" if paired else "baseline")
            + " |"
        )
    table = "\n".join(
        [
            f"| recipe | macro F1 | mIoU | max spread of last 5 evals | Δ macro F1 vs {args.baseline} (paired) |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.output:
        write_atomic(args.output, table + "\n")
        write_atomic(Path(args.output).with_suffix(".json"), json.dumps({"command": sys.argv, **record}, indent=2))


if __name__ == "__main__":
    main()
