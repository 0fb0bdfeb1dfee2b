#!/usr/bin/env python
"""Converts ARAS400k (the official zips, or the same splits extracted) into a `datasets` folder, and optionally
publishes it on the Hub.

    python scripts/prepare_aras400k.py --input_dir downloads/aras400k --output_dir data/aras400k --num_proc 8
    python scripts/prepare_aras400k.py --generate_sample --output_dir data/aras400k-sample
    python scripts/prepare_aras400k.py --input_dir downloads/aras400k --output_dir data/aras400k \\
        --push_to_hub my-org/aras400k

The zips are checked against the published MD5s; an `MD5SUMS` or `md5sums.txt` file beside them (`md5sum` format)
overrides the published sums for the files it lists (the generated sample ships one). The result loads with
`datasets.load_dataset(output_dir)` (also with `streaming=True`).
"""

import argparse
import json
import os
from pathlib import Path

from lale_hf.argument_types import positive_int
from lale_hf.data import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_SHARD_SIZE,
    SPLIT_SOURCES,
    Aras400kError,
    convert_aras400k,
    prepare_embedded_sample,
    push_dataset_to_hub,
)
from lale_hf.file_utils import write_atomic
from lale_hf.hub_utils import HubPushError


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--input_dir",
        type=Path,
        help="Folder holding train.zip, val.zip, test.zip, synth.zip (any "
        "subset) or the extracted train/, val/, test/, synth/ folders.",
    )
    parser.add_argument("--output_dir", type=Path, required=True, help="Where to write the dataset folder.")
    parser.add_argument("--splits", nargs="+", choices=list(SPLIT_SOURCES), help="Convert only these splits.")
    parser.add_argument("--num_proc", type=positive_int, default=os.cpu_count() or 1, help="Worker processes.")
    parser.add_argument("--skip_md5", action="store_true", help="Do not verify the zips' MD5 sums.")
    parser.add_argument(
        "--skip_unpaired",
        action="store_true",
        help="Leave out unpaired and duplicated file stems (counted in the report) instead of failing.",
    )
    parser.add_argument(
        "--allow_split_overlap",
        action="store_true",
        help="Convert even if validation or test shares file stems with another split (counted in the report).",
    )
    parser.add_argument(
        "--unknown_to_ignore",
        action="store_true",
        help="Map mask colours outside the ARAS palette to 255 (ignore) instead of failing.",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an existing --output_dir written by this tool (it holds lale-hf-dataset.json).",
    )
    parser.add_argument(
        "--overwrite_any",
        action="store_true",
        help="With --overwrite: replace --output_dir even if this tool did not write it.",
    )
    parser.add_argument(
        "--max_shard_size",
        type=positive_int,
        default=DEFAULT_MAX_SHARD_SIZE,
        help="Target size of one Parquet shard, in bytes.",
    )
    parser.add_argument(
        "--max_image_pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="Refuse images whose PNG header declares more pixels than this, before decoding them (default "
        "1024x1024; ARAS400k patches are 256x256).",
    )
    parser.add_argument(
        "--generate_sample",
        action="store_true",
        help="Generate the procedural ARAS400k-format sample and convert it (no --input_dir).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generated sample.")
    parser.add_argument(
        "--sample_sizes",
        type=json.loads,
        default=None,
        help='Patches per split of the generated sample, e.g. \'{"train": 512, "val": 128}\'.',
    )
    parser.add_argument("--report_json", type=Path, help="Also write the conversion report as JSON here.")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="Publish the converted folder as this dataset repo.")
    parser.add_argument(
        "--hub_token",
        default=None,
        help="Hub token. Prefer the HF_TOKEN environment variable or `hf auth login`, the default.",
    )
    parser.add_argument("--hub_private", action="store_true", help="Create the Hub repository as private.")
    args = parser.parse_args()
    if args.generate_sample == (args.input_dir is not None):
        parser.error("pass exactly one of --input_dir and --generate_sample")
    return parser, args


def main():
    parser, args = parse_args()

    # Convert (or generate and convert); the output folder appears only when everything succeeded.
    try:
        if args.generate_sample:
            report = prepare_embedded_sample(
                args.output_dir,
                seed=args.seed,
                sizes=args.sample_sizes,
                num_proc=args.num_proc,
                overwrite=args.overwrite,
                overwrite_any=args.overwrite_any,
            )
        else:
            report = convert_aras400k(
                args.input_dir,
                args.output_dir,
                splits=args.splits,
                num_proc=args.num_proc,
                verify_md5=not args.skip_md5,
                skip_unpaired=args.skip_unpaired,
                unknown_to_ignore=args.unknown_to_ignore,
                allow_split_overlap=args.allow_split_overlap,
                overwrite=args.overwrite,
                overwrite_any=args.overwrite_any,
                max_shard_size=args.max_shard_size,
                max_image_pixels=args.max_image_pixels,
            )
    except Aras400kError as error:
        parser.exit(2, f"error: {error}\n")
    print(report.format_table())
    if args.report_json:
        write_atomic(args.report_json, json.dumps(report.to_dict(), indent=2) + "\n")

    # Publish the card, the class names and the shards (nothing else in the folder).
    if args.push_to_hub:
        try:
            url = push_dataset_to_hub(args.output_dir, args.push_to_hub, token=args.hub_token, private=args.hub_private)
        except (Aras400kError, HubPushError) as error:
            parser.exit(2, f"error: {error}\n")
        print(f"Pushed to {url}")


if __name__ == "__main__":
    main()
