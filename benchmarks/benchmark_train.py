#!/usr/bin/env python
"""Training-side benchmark: data loading with augmentation against the model's consumption rate, and training
throughput of LALE-tiny against SegFormer-B0 through `scripts/train.py` itself.

    python benchmarks/benchmark_train.py --dataset_name outputs/s2glc --output_json outputs/benchmark_train.json

Rounds are interleaved (A, B, A, B, ...) and medians reported, with every ratio taken within this run: the machine
is shared and noisy, so absolute figures from different runs are not comparable.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import SegformerConfig

from lale_hf import LaleConfig, LaleForSemanticSegmentation
from lale_hf.file_utils import write_atomic
from lale_hf.training import OverheadAugmentation, SegmentationDataset, load_segmentation_splits, segmentation_loss


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", required=True, help="A dataset folder written by prepare_aras400k.py.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--loader_batches", type=int, default=12, help="Batches timed per data-loader round.")
    parser.add_argument("--model_steps", type=int, default=6, help="Training steps timed per model round.")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=30, help="Steps of each scripts/train.py run.")
    parser.add_argument("--train_rounds", type=int, default=2)
    parser.add_argument("--skip_script_runs", action="store_true", help="Only the in-process measurements.")
    parser.add_argument("--output_json", default="outputs/benchmark_train.json")
    return parser.parse_args()


def loader_images_per_second(split, args, num_workers: int) -> float:
    augmentation = OverheadAugmentation(crop_size=args.image_size)
    dataset = SegmentationDataset(split, args.image_size, augmentation, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=num_workers, drop_last=True
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up is paid once per epoch, not per batch
    start = time.perf_counter()
    for _ in range(args.loader_batches):
        next(iterator)
    return args.loader_batches * args.batch_size / (time.perf_counter() - start)


def model_images_per_second(model, optimizer, args) -> float:
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 7, (args.batch_size, args.image_size, args.image_size))
    start = time.perf_counter()
    for _ in range(args.model_steps):
        loss = segmentation_loss(model(pixel_values=pixel_values).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return args.model_steps * args.batch_size / (time.perf_counter() - start)


def train_script_samples_per_second(model_args: list[str], args, workdir: Path) -> float:
    output = Path(tempfile.mkdtemp(dir=workdir))
    command = [sys.executable, "scripts/train.py", "--dataset_name", args.dataset_name, *model_args]
    command += ["--max_train_steps", str(args.train_steps), "--per_device_train_batch_size", str(args.batch_size)]
    command += ["--image_size", str(args.image_size), "--max_eval_samples", "8"]
    command += ["--eval_steps", str(args.train_steps + 1), "--output_dir", str(output)]
    subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads((output / "all_results.json").read_text())["train_samples_per_second"]


def main():
    args = parse_args()
    torch.manual_seed(0)
    splits, _ = load_segmentation_splits(args.dataset_name, ["train"])
    train_split = splits["train"]
    lale = LaleForSemanticSegmentation(LaleConfig()).train()
    optimizer = torch.optim.AdamW(lale.parameters(), lr=1e-4)
    model_images_per_second(lale, optimizer, args)  # warm-up

    rates = {f"loader_workers_{w}": [] for w in args.workers} | {"lale_tiny_train_step": []}
    for _ in range(args.rounds):
        for workers in args.workers:
            rates[f"loader_workers_{workers}"].append(loader_images_per_second(train_split, args, workers))
        rates["lale_tiny_train_step"].append(model_images_per_second(lale, optimizer, args))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    consumption = medians["lale_tiny_train_step"]

    print(
        f"\nData loading with augmentation vs LALE-tiny training consumption "
        f"(batch {args.batch_size}, {args.image_size}px, {torch.get_num_threads()} threads, median of {args.rounds})"
    )
    print("| pipeline | img/s | ratio to model consumption |\n|---|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} | {value / consumption:.2f}x |")

    script = {}
    if not args.skip_script_runs:
        with tempfile.TemporaryDirectory() as workdir:
            segformer_config = Path(workdir) / "segformer-b0.json"
            SegformerConfig(num_labels=7).to_json_file(segformer_config)
            runs = {"lale-tiny": ["--preset", "lale-tiny"], "segformer-b0": ["--config_name", str(segformer_config)]}
            samples = {name: [] for name in runs}
            for _ in range(args.train_rounds):
                for name, model_args in runs.items():
                    samples[name].append(train_script_samples_per_second(model_args, args, Path(workdir)))
        script = {name: statistics.median(values) for name, values in samples.items()}
        ratio = script["lale-tiny"] / script["segformer-b0"]
        print(
            f"\nscripts/train.py throughput ({args.train_steps} steps, batch {args.batch_size}, "
            f"median of {args.train_rounds} interleaved runs)"
        )
        print("| model | train img/s |\n|---|---|")
        for name, value in script.items():
            print(f"| {name} | {value:.2f} |")
        print(f"LALE-tiny / SegFormer-B0: {ratio:.2f}x")

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": torch.get_num_threads(),
        "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc",
        "args": vars(args),
        "rounds": rates,
        "medians_img_per_s": medians,
        "train_script_img_per_s": script,
    }
    write_atomic(args.output_json, json.dumps(report, indent=2))
    print(f"\nJSON: {args.output_json}")


if __name__ == "__main__":
    main()
