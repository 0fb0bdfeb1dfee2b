#!/usr/bin/env python
"""Evaluate a segmentation checkpoint on a split: macro F1, mIoU, per-class scores and a confusion-matrix plot.

    accelerate launch scripts/evaluate.py --model_name_or_path outputs/lale-tiny --dataset_name outputs/aras400k \
        --split test --output_dir outputs/lale-tiny-test

Runs on one or several processes; every sample is counted exactly once.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoModelForSemanticSegmentation

import lale_hf  # noqa: F401  (registers LALE with the Auto classes)
from lale_hf.file_utils import write_atomic
from lale_hf.preprocessing import preprocessing_from_processor
from lale_hf.training import (
    SegmentationDataset,
    TrainingError,
    evaluate,
    first_samples,
    json_ready,
    load_segmentation_splits,
    save_confusion_matrix_plot,
    training_image_processor,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="Hub id or folder of a segmentation model.")
    parser.add_argument("--dataset_name", required=True, help="Hub id or folder written by prepare_aras400k.py.")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max_eval_samples", type=int)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument(
        "--ignore_label_names",
        action="store_true",
        help="Evaluate although the model's class names differ from the dataset's (scores keep the dataset's names).",
    )
    parser.add_argument("--output_dir", required=True)
    return parser.parse_args(argv)


def check_output_dir(path: Path):
    """Fails before the evaluation, not after it, when the results cannot be written."""
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingError(f"--output_dir {path}: {existing} is not a writable folder")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args):
    check_output_dir(Path(args.output_dir).resolve())
    accelerator = Accelerator()
    splits, id2label = load_segmentation_splits(args.dataset_name, [args.split])
    # Weights are read as safetensors only: a pickled checkpoint is refused, never unpickled.
    model = AutoModelForSemanticSegmentation.from_pretrained(
        args.model_name_or_path, trust_remote_code=args.trust_remote_code, use_safetensors=True
    )
    if model.config.num_labels != len(id2label):
        raise TrainingError(
            f"{args.model_name_or_path} predicts {model.config.num_labels} classes, the dataset has {len(id2label)}"
        )
    model_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    dataset_names = [id2label[i] for i in range(len(id2label))]
    if model_names != dataset_names and not args.ignore_label_names:
        raise TrainingError(
            f"{args.model_name_or_path} names its classes {model_names} but the dataset {dataset_names}: per-class "
            "scores would be reported under the wrong names (pass --ignore_label_names to evaluate anyway)"
        )
    processor = training_image_processor(
        args.model_name_or_path, model.config.model_type, args.image_size, args.trust_remote_code
    )
    dataset = SegmentationDataset(
        first_samples(splits[args.split], args.max_eval_samples),
        args.image_size,
        preprocessing=preprocessing_from_processor(processor),
        num_labels=len(id2label),
        split_name=args.split,
    )
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers
    )
    model, dataloader = accelerator.prepare(model, dataloader)
    results = evaluate(model, dataloader, accelerator, id2label)

    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_confusion_matrix_plot(results["confusion_matrix"], id2label, output_dir / "confusion_matrix.png")
        summary = json_ready(
            {
                **results,
                "split": args.split,
                "model": args.model_name_or_path,
                "num_processes": accelerator.num_processes,
            }
        )
        write_atomic(output_dir / "eval_results.json", json.dumps(summary, indent=2))
        width = max(len(name) for name in id2label.values())
        print(f"{args.split}: {results['num_samples']} samples")
        print(f"{'class':<{width}}  F1      IoU")
        for name in id2label.values():
            print(f"{name:<{width}}  {results[f'eval_f1_{name}']:.4f}  {results[f'eval_iou_{name}']:.4f}")
        print(
            f"macro F1 {results['eval_macro_f1']:.4f}, mIoU {results['eval_mean_iou']:.4f}; "
            f"results in {output_dir / 'eval_results.json'}, plot in {output_dir / 'confusion_matrix.png'}"
        )
    accelerator.wait_for_everyone()
    # Closes the process group before exit: a rank leaving with gloo's threads alive can abort
    # ("terminate called without an active exception").
    accelerator.end_training()


if __name__ == "__main__":
    main()
