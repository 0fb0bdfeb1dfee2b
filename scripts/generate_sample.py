#!/usr/bin/env python
"""Generates the procedural land-cover sample in ARAS400k's distribution format: train.zip, val.zip, test.zip and
synth.zip (`ARAS400k/{split}/images/NAME.png`, `masks/NAME.png`), their `md5sums.txt`, and a marker file.
Byte-identical for a given seed. A stand-in for plumbing and demos, never a source of accuracy claims.

    python scripts/generate_sample.py --output_dir downloads/aras400k-sample --seed 0
    python scripts/prepare_aras400k.py --input_dir downloads/aras400k-sample --output_dir data/aras400k-sample
"""

import argparse
import os
from pathlib import Path

from lale_hf.data import DEFAULT_SAMPLE_SIZES, Aras400kError, generate_sample


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True, help="Folder to write the zips to.")
    parser.add_argument("--seed", type=int, default=0)
    for split, default in DEFAULT_SAMPLE_SIZES.items():
        parser.add_argument(f"--num_{split}", type=int, default=default, help=f"Patches in {split}.zip (0: none).")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an existing --output_dir holding an earlier sample (lale-procedural-sample.json).",
    )
    parser.add_argument(
        "--overwrite_any",
        action="store_true",
        help="With --overwrite: replace --output_dir even if it holds no earlier sample.",
    )
    return parser, parser.parse_args()


def main():
    parser, args = parse_args()
    sizes = {split: getattr(args, f"num_{split}") for split in DEFAULT_SAMPLE_SIZES}
    sizes = {split: count for split, count in sizes.items() if count > 0}
    try:
        output_dir = generate_sample(
            args.output_dir,
            seed=args.seed,
            sizes=sizes,
            num_proc=args.num_proc,
            overwrite=args.overwrite,
            overwrite_any=args.overwrite_any,
        )
    except Aras400kError as error:
        parser.exit(2, f"error: {error}\n")
    print((output_dir / "md5sums.txt").read_text(), end="")
    print(f"{sum(sizes.values())} patches -> {output_dir}")


if __name__ == "__main__":
    main()
