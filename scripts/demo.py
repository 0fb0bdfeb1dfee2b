#!/usr/bin/env python
"""The main job, end to end on the CPU: data, training with `accelerate launch`, evaluation, a Hub-ready folder and
a colourised prediction of a validation image.

    python scripts/demo.py                                   # the embedded procedural sample (no download)
    python scripts/demo.py --aras400k_dir /data/aras400k     # the official ARAS400k zips instead
    python scripts/demo.py --num_train_samples 16 --num_eval_samples 4 --image_size 64 --train_minutes 0.1

Without `--aras400k_dir` it generates the procedural land-cover sample, a stand-in for plumbing and demos whose
scores say nothing about real imagery. Everything goes under --output_dir, and `demo_outputs.json` there lists it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lale_hf import LALE_PRESETS
from lale_hf.argument_types import non_negative_int, positive_float, positive_int
from lale_hf.data import DATASET_MARKER, DEFAULT_SAMPLE_SIZES, Aras400kError, convert_aras400k, generate_sample
from lale_hf.file_utils import write_atomic


REPO_ROOT = Path(__file__).resolve().parents[1]
# Written first into every --output_dir the demo uses: only such a folder (or an empty one) is replaced.
DEMO_MARKER = "lale-hf-demo.json"
OUTPUT_LIST = "demo_outputs.json"
# The procedural sample's splits (named as in the official zips) and the option that sizes each.
SAMPLE_SIZE_OPTIONS = {
    "train": "num_train_samples",
    "val": "num_eval_samples",
    "test": "num_eval_samples",
    "synth": "num_synthetic_samples",
}


def multiple_of_32(text: str) -> int:
    value = positive_int(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 32 (the encoder's stride), got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aras400k_dir", type=Path, help="Folder with the official train/val/test/synth zips.")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--preset", default="lale-tiny", choices=sorted(LALE_PRESETS))
    parser.add_argument(
        "--train_minutes", type=positive_float, default=4.0, help="Wall-clock training budget (0.1 is 6 seconds)."
    )
    parser.add_argument("--image_size", type=multiple_of_32, default=256, help="Training crop size in pixels.")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="Training batch per process.")
    parser.add_argument("--eval_steps", type=positive_int, default=100, help="Evaluate and checkpoint every N steps.")
    sample = parser.add_argument_group("procedural sample (without --aras400k_dir)")
    sample.add_argument(
        "--num_train_samples", type=positive_int, help=f"Training patches (default {DEFAULT_SAMPLE_SIZES['train']})."
    )
    sample.add_argument(
        "--num_eval_samples",
        type=positive_int,
        help=f"Validation patches, and as many test patches (default {DEFAULT_SAMPLE_SIZES['val']}).",
    )
    sample.add_argument(
        "--num_synthetic_samples",
        type=non_negative_int,
        help=f"Synthetic-split patches, 0 for none (default {DEFAULT_SAMPLE_SIZES['synth']}).",
    )
    parser.add_argument("--num_processes", type=positive_int, default=1, help="Training processes.")
    parser.add_argument("--num_proc", type=positive_int, default=2, help="Processes generating and converting data.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="Start again, replacing an --output_dir an earlier demo wrote."
    )
    args = parser.parse_args(argv)
    sized = [f"--{name}" for name in dict.fromkeys(SAMPLE_SIZE_OPTIONS.values()) if getattr(args, name) is not None]
    if args.aras400k_dir is not None and sized:
        parser.error(f"{', '.join(sized)} size the procedural sample and do not apply with --aras400k_dir")
    if args.aras400k_dir is not None and not args.aras400k_dir.is_dir():
        parser.error(f"--aras400k_dir {args.aras400k_dir} is not a folder")
    output_dir = args.output_dir
    if output_dir.exists():
        if not args.overwrite:
            parser.error(f"{output_dir} exists; pass --overwrite to start again, or another --output_dir")
        if not written_by_demo(output_dir):
            parser.error(f"--overwrite replaces only a folder the demo wrote ({DEMO_MARKER}), and {output_dir} is not")
    return parser, args


def written_by_demo(folder: Path) -> bool:
    """True for an empty folder, one holding the demo's marker, or the dataset folder of a demo from before it."""
    return folder.is_dir() and (
        not any(folder.iterdir()) or (folder / DEMO_MARKER).is_file() or (folder / "dataset" / DATASET_MARKER).is_file()
    )


def sample_sizes(args) -> dict[str, int]:
    """Patches per split of the procedural sample; splits sized 0 are left out."""
    sizes = {}
    for split, option in SAMPLE_SIZE_OPTIONS.items():
        count = getattr(args, option)
        sizes[split] = DEFAULT_SAMPLE_SIZES[split] if count is None else count
    return {split: count for split, count in sizes.items() if count > 0}


def run(parser, step: str, command: list[str], env: dict | None = None):
    """Runs one step of the job; a failed step ends the demo with its exit code (its own message is above)."""
    print("+", " ".join(command), flush=True)
    returncode = subprocess.run(command, cwd=REPO_ROOT, env=env).returncode
    if returncode != 0:
        parser.exit(returncode, f"error: {step} failed with exit code {returncode}\n")


def main(argv=None):
    parser, args = parse_args(argv)
    output_dir = args.output_dir.resolve()
    started = time.monotonic()
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    write_atomic(output_dir / DEMO_MARKER, json.dumps({"written_by": "scripts/demo.py", **vars(args)}, default=str))
    try:
        source = args.aras400k_dir or generate_sample(
            output_dir / "aras400k-sample", seed=args.seed, sizes=sample_sizes(args), num_proc=args.num_proc
        )
        dataset_dir = output_dir / "dataset"
        print(convert_aras400k(source, dataset_dir, num_proc=args.num_proc).format_table())
    except Aras400kError as error:
        parser.exit(2, f"error: {error}\n")

    model_dir = output_dir / args.preset
    # accelerate's --cpu starts one process; several CPU processes need the multi-process launcher.
    device = ["--cpu"] if args.num_processes == 1 else ["--multi_gpu"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.num_processes)]
    launch += ["--num_machines", "1", *device, "--mixed_precision", "no", "--dynamo_backend", "no"]
    train_args = [
        *("--dataset_name", str(dataset_dir), "--preset", args.preset, "--output_dir", str(model_dir)),
        *("--image_size", str(args.image_size), "--per_device_train_batch_size", str(args.batch_size)),
        *("--max_train_minutes", str(args.train_minutes), "--num_train_epochs", "1000"),
        *("--eval_steps", str(args.eval_steps), "--checkpointing_steps", str(args.eval_steps)),
        *("--checkpoints_total_limit", "1", "--learning_rate", "2e-3", "--num_warmup_steps", "20"),
        # The converging recipe: the budget becomes a step count the cosine schedule decays to, with EMA weights.
        *("--ema_decay", "0.999", "--seed", str(args.seed)),
        *("--with_tracking", "--report_to", "tensorboard"),
    ]
    run(parser, "training", [*launch, "scripts/train.py", *train_args], {**os.environ, "ACCELERATE_USE_CPU": "true"})

    from datasets import load_dataset  # only here: the steps above run without it in this process

    example = load_dataset(str(dataset_dir), split="validation")[0]
    example_path = output_dir / f"{example['name']}.png"
    example["image"].save(example_path)
    prediction_dir = output_dir / "prediction"
    predict_args = [str(example_path), "--model", str(model_dir), "--output_dir", str(prediction_dir), "--no_progress"]
    run(parser, "prediction", [sys.executable, "scripts/predict.py", *predict_args])

    stem = example_path.stem
    outputs = {
        "data": str(source),
        "dataset": str(dataset_dir),
        "model": str(model_dir),
        "model_weights": str(model_dir / "model.safetensors"),
        "model_card": str(model_dir / "README.md"),
        "results": str(model_dir / "all_results.json"),
        "confusion_matrix": str(model_dir / "confusion_matrix.png"),
        "best_checkpoint": str(model_dir / "best"),
        "tensorboard_logs": str(model_dir / "runs"),
        "example_image": str(example_path),
        "prediction_classes": str(prediction_dir / f"{stem}_classes.png"),
        "prediction_color": str(prediction_dir / f"{stem}_color.png"),
        "prediction_stats": str(prediction_dir / f"{stem}_stats.json"),
        "prediction_stats_csv": str(prediction_dir / f"{stem}_stats.csv"),
    }
    missing = [name for name, path in outputs.items() if not Path(path).exists()]
    if missing:
        parser.exit(1, f"error: the job finished without {', '.join(missing)}\n")
    write_atomic(output_dir / OUTPUT_LIST, json.dumps(outputs, indent=2) + "\n")

    results = json.loads((model_dir / "all_results.json").read_text())
    print(f"\nDone in {(time.monotonic() - started) / 60:.1f} min. Everything is under {output_dir}:")
    print(f"  data (ARAS400k zips)  {source}")
    print(f"  datasets folder       {dataset_dir}  (load_dataset('{dataset_dir}'))")
    print(f"  Hub-ready model       {model_dir}  (model card README.md, all_results.json, confusion_matrix.png)")
    print(f"  best checkpoint       {model_dir / 'best'}")
    print(f"  TensorBoard logs      {model_dir / 'runs'}")
    print(f"  prediction            {prediction_dir}  (colourised map with legend, class raster, area statistics)")
    print(f"  list of outputs       {output_dir / OUTPUT_LIST}")
    print(
        f"Trained {results['train_steps']} steps (stopped by {results['stop_reason']}): validation macro F1 "
        f"{results['eval_macro_f1']:.4f}, mIoU {results['eval_mean_iou']:.4f}"
    )
    print(f"Publish with: hf upload <org>/{args.preset} {model_dir} . --exclude 'step_*' --exclude 'best/*'")


if __name__ == "__main__":
    main()
