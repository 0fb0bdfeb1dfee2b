#!/usr/bin/env python
"""The main job, end to end on the CPU: data, training with `accelerate launch`, evaluation, a Hub-ready folder and
a colourised prediction of a validation image.

    python scripts/demo.py                                   # the embedded procedural sample (no download)
    python scripts/demo.py --aras400k_dir /data/aras400k     # the official ARAS400k zips instead

Without `--aras400k_dir` it generates the procedural land-cover sample, a stand-in for plumbing and demos whose
scores say nothing about real imagery.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from datasets import load_dataset

from lale_hf.data import convert_aras400k, generate_sample


REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aras400k_dir", type=Path, help="Folder with the official train/val/test/synth zips.")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--preset", default="lale-tiny")
    parser.add_argument("--train_minutes", type=float, default=4.0, help="Wall-clock training budget.")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="Start again from an empty --output_dir.")
    return parser.parse_args()


def run(command: list[str]):
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO_ROOT)


def main():
    args = parse_args()
    output_dir = args.output_dir.resolve()
    started = time.monotonic()
    if output_dir.exists() and not args.overwrite:
        raise SystemExit(f"error: {output_dir} exists; pass --overwrite to start again, or another --output_dir")
    if args.aras400k_dir is not None and not args.aras400k_dir.is_dir():
        raise SystemExit(f"error: --aras400k_dir {args.aras400k_dir} is not a folder")
    source = args.aras400k_dir or generate_sample(output_dir / "aras400k-sample", seed=args.seed, overwrite=True,
                                                  num_proc=2)
    dataset_dir = output_dir / "dataset"
    print(convert_aras400k(source, dataset_dir, num_proc=2, overwrite=True).format_table())

    model_dir = output_dir / args.preset
    # accelerate's --cpu starts one process; several CPU processes need the multi-process launcher.
    device = ["--cpu"] if args.num_processes == 1 else ["--multi_gpu"]
    os.environ["ACCELERATE_USE_CPU"] = "true"
    run([
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.num_processes),
        "--num_machines", "1", *device, "--mixed_precision", "no", "--dynamo_backend", "no", "scripts/train.py",
        "--dataset_name", str(dataset_dir), "--preset", args.preset, "--output_dir", str(model_dir),
        "--max_train_minutes", str(args.train_minutes), "--num_train_epochs", "1000", "--eval_steps", "100",
        "--checkpointing_steps", "100", "--checkpoints_total_limit", "1", "--learning_rate", "2e-3",
        "--per_device_train_batch_size", "8", "--lr_scheduler_type", "constant_with_warmup", "--num_warmup_steps", "20", "--seed", str(args.seed),
        "--with_tracking", "--report_to", "tensorboard",
    ])

    example = load_dataset(str(dataset_dir), split="validation")[0]
    example_path = output_dir / f"{example['name']}.png"
    example["image"].save(example_path)
    prediction_dir = output_dir / "prediction"
    run([sys.executable, "scripts/predict.py", str(example_path), "--model", str(model_dir),
         "--output_dir", str(prediction_dir), "--overwrite"])

    print(f"\nDone in {(time.monotonic() - started) / 60:.1f} min. Everything is under {output_dir}:")
    print(f"  data (ARAS400k zips)  {source}")
    print(f"  datasets folder       {dataset_dir}  (load_dataset('{dataset_dir}'))")
    print(f"  Hub-ready model       {model_dir}  (model card README.md, all_results.json, confusion_matrix.png)")
    print(f"  best checkpoint       {model_dir / 'best'}")
    print(f"  TensorBoard logs      {model_dir / 'runs'}")
    print(f"  prediction            {prediction_dir}  (colourised map with legend, class raster, area statistics)")
    print(f"Publish with: huggingface-cli upload <org>/lale-tiny {model_dir} --exclude 'step_*' 'best/*'")


if __name__ == "__main__":
    main()
