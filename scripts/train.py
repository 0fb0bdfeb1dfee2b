#!/usr/bin/env python
"""Train LALE (or any transformers semantic-segmentation model) on ARAS400k-style data with 🤗 Accelerate.

    accelerate launch scripts/train.py --dataset_name outputs/aras400k --preset lale-tiny --output_dir outputs/lale-tiny

Argument names follow transformers' `run_semantic_segmentation_no_trainer.py` where they overlap.
"""

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSemanticSegmentation

from lale_hf import LALE_PRESETS, LaleConfig, LaleForSemanticSegmentation, hub_utils
from lale_hf.argument_types import non_negative_float, non_negative_int, positive_float, positive_int, unit_interval
from lale_hf.file_utils import make_readable, publish_files, replace_folder, write_atomic
from lale_hf.model_card import build_model_card
from lale_hf.preprocessing import preprocessing_from_processor
from lale_hf.training import (
    LOSSES,
    SCHEDULES,
    ExponentialMovingAverage,
    OverheadAugmentation,
    SegmentationDataset,
    StepSchedule,
    StreamingSegmentationDataset,
    TrainingError,
    TrainingState,
    align_classes_by_name,
    class_pixel_counts,
    class_weights_from_counts,
    evaluate,
    first_samples,
    json_ready,
    list_checkpoints,
    load_segmentation_splits,
    planned_total_steps,
    push_allow_patterns,
    save_confusion_matrix_plot,
    segmentation_loss,
    tracked_hyperparameters,
    training_image_processor,
)


logger = get_logger(__name__)

# A time-budgeted run skips this many steps (allocator and kernel warm-up) before timing its speed.
BUDGET_UNTIMED_STEPS = 5
# Hub pushes: attempts, and the first wait between them (doubled each time).
PUSH_ATTEMPTS = 3
PUSH_BACKOFF_SECONDS = 2.0
# How far past its budget a planned run may go (the machine slowed down) before it stops anyway.
BUDGET_OVERRUN = 1.25


def checkpoint_interval(text: str) -> str:
    if text != "epoch" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected 'epoch' or a positive number of steps, got {text!r}")
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name", required=True, help="A Hub dataset id or a folder written by prepare_aras400k.py."
    )
    data.add_argument("--train_split", default="train")
    data.add_argument("--validation_split", default="validation")
    data.add_argument(
        "--include_synthetic", action="store_true", help="Train on train + synthetic, as the ARAS400k paper."
    )
    data.add_argument("--synthetic_split", default="synthetic")
    data.add_argument("--max_train_samples", type=positive_int)
    data.add_argument("--max_eval_samples", type=positive_int)
    data.add_argument("--image_size", type=positive_int, default=256)
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)
    data.add_argument(
        "--streaming",
        action="store_true",
        help="Stream the training splits (sharded per process); needs --max_train_steps.",
    )
    data.add_argument("--shuffle_buffer_size", type=positive_int, default=1000, help="Shuffle buffer of --streaming.")
    data.add_argument("--no_augmentation", action="store_true", help="Disable flips/rotations, scale/crop, jitter.")
    data.add_argument("--scale_range", type=positive_float, nargs=2, default=(0.75, 1.5))

    model = parser.add_argument_group("model (exactly one of --preset, --model_name_or_path, --config_name)")
    model.add_argument("--preset", choices=sorted(LALE_PRESETS), help="Train a LALE preset from scratch.")
    model.add_argument("--model_name_or_path", help="Fine-tune any checkpoint (Hub id or folder).")
    model.add_argument("--config_name", help="Train from scratch from the config JSON of any segmentation model.")
    model.add_argument("--ignore_mismatched_sizes", action="store_true", help="Re-initialise a head of another size.")
    model.add_argument(
        "--ignore_label_names",
        action="store_true",
        help="Fine-tune a checkpoint whose class names differ from the dataset's (its head is relabelled as is). "
        "Without it, other names are an error, and the same names in another order reorder the head by name.",
    )
    model.add_argument("--trust_remote_code", action="store_true")
    model.add_argument("--activation_checkpointing", action="store_true")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--per_device_train_batch_size", type=positive_int, default=8)
    optim.add_argument("--per_device_eval_batch_size", type=positive_int, default=16)
    optim.add_argument("--learning_rate", type=positive_float, default=1e-3)
    optim.add_argument("--weight_decay", type=non_negative_float, default=0.01)
    optim.add_argument("--num_train_epochs", type=positive_int, default=20)
    optim.add_argument("--max_train_steps", type=positive_int, help="Overrides --num_train_epochs.")
    optim.add_argument(
        "--max_train_minutes",
        type=positive_float,
        help="Time budget of the training steps (evaluations and checkpoints come on top). The run times its steps "
        "inside the warm-up, fixes the step count that fills the budget (agreed by all processes) and decays the "
        "learning rate to that step, so the budget ends on a converged model, not mid-schedule.",
    )
    optim.add_argument(
        "--budget_timing_steps",
        type=positive_int,
        default=10,
        help="Steps timed to plan a --max_train_minutes run (after 5 untimed ones).",
    )
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    optim.add_argument("--max_grad_norm", type=non_negative_float, default=1.0)
    optim.add_argument(
        "--lr_scheduler_type",
        default="cosine",
        choices=SCHEDULES,
        help="Decay to 0 at the last step (cosine by default; see docs/accuracy.md).",
    )
    optim.add_argument(
        "--num_warmup_steps",
        type=non_negative_int,
        default=20,
        help="Linear warm-up; a --max_train_minutes run times its speed inside it.",
    )
    optim.add_argument("--loss", default="ce", choices=LOSSES)
    optim.add_argument("--label_smoothing", type=unit_interval, default=0.0)
    optim.add_argument(
        "--class_weights",
        nargs="+",
        help="'auto' (inverse square-root pixel frequency of the training split; the default, except with "
        "--streaming), 'none', or one loss weight per class. auto lowered lale-tiny's seed-to-seed std of macro F1 "
        "from 4.6 to 1.0 points on real patches (docs/accuracy.md).",
    )
    optim.add_argument(
        "--ema_decay",
        type=unit_interval,
        help="Keep an exponential moving average of the weights; it is evaluated and saved.",
    )
    optim.add_argument("--channels_last", action="store_true", help="Train in channels-last memory format.")
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="Defaults to accelerate's config.")
    optim.add_argument("--seed", type=non_negative_int, default=42)

    run = parser.add_argument_group("evaluation, checkpoints, output")
    run.add_argument("--eval_steps", type=positive_int, help="Evaluate every N optimizer steps (default: every epoch).")
    run.add_argument(
        "--eval_from_step",
        type=non_negative_int,
        default=0,
        help="With --eval_steps: evaluate only from this step on (the end of a run is what matters).",
    )
    run.add_argument(
        "--eval_image_size",
        type=positive_int,
        help="Evaluate on patches of this size (default --image_size), e.g. whole 256 patches after "
        "training on 128 crops.",
    )
    run.add_argument("--checkpointing_steps", type=checkpoint_interval, help="'epoch' or a number of optimizer steps.")
    run.add_argument("--checkpoints_total_limit", type=positive_int, help="Keep only the newest N step checkpoints.")
    run.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder.")
    run.add_argument(
        "--allow_inexact_resume",
        action="store_true",
        help="Resume although the checkpoint lacks a process's RNG state (the run will not reproduce).",
    )
    run.add_argument("--output_dir", required=True)
    run.add_argument("--with_tracking", action="store_true")
    run.add_argument("--report_to", default="tensorboard")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id")
    run.add_argument(
        "--hub_token",
        help="Prefer the HF_TOKEN environment variable or `hf auth login`: a token on the command line stays in the "
        "shell history and the process list. It is never tracked, written or pushed.",
    )
    run.add_argument("--hub_private_repo", action="store_true")
    run.add_argument("--push_checkpoints", action="store_true", help="Also push every evaluated model as a commit.")
    args = parser.parse_args(argv)

    if sum(x is not None for x in (args.preset, args.model_name_or_path, args.config_name)) != 1:
        parser.error("give exactly one of --preset, --model_name_or_path, --config_name")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. org/lale-tiny)")
    if args.streaming and (
        args.max_train_steps is None or args.checkpointing_steps == "epoch" or args.max_train_samples
    ):
        parser.error(
            "--streaming needs --max_train_steps (a stream has no length), and takes neither "
            "--checkpointing_steps epoch nor --max_train_samples"
        )
    if args.class_weights is None:
        args.class_weights = ["none"] if args.streaming else ["auto"]
    if args.class_weights not in (["auto"], ["none"]):
        try:
            args.class_weights = [non_negative_float(value) for value in args.class_weights]
        except (ValueError, argparse.ArgumentTypeError):
            parser.error(f"--class_weights takes 'auto', 'none' or numbers >= 0, got {' '.join(args.class_weights)}")
    if args.class_weights == ["auto"] and args.streaming:
        parser.error("--class_weights auto counts the pixels of the training split, which a stream cannot do ahead")
    return args


def build_model(args, id2label):
    label2id = {name: index for index, name in id2label.items()}
    if args.preset:
        return LaleForSemanticSegmentation(LaleConfig.from_preset(args.preset, id2label=id2label, label2id=label2id))
    if args.config_name:
        config = AutoConfig.from_pretrained(args.config_name, trust_remote_code=args.trust_remote_code)
        config.id2label, config.label2id = id2label, label2id
        return AutoModelForSemanticSegmentation.from_config(config, trust_remote_code=args.trust_remote_code)
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    if config.num_labels != len(id2label) and not args.ignore_mismatched_sizes:
        raise TrainingError(
            f"{args.model_name_or_path} predicts {config.num_labels} classes but the dataset has "
            f"{len(id2label)} ({', '.join(id2label.values())}); pass --ignore_mismatched_sizes to re-initialise the head."
        )
    if config.num_labels != len(id2label):  # --ignore_mismatched_sizes: a new head, named by the dataset
        return AutoModelForSemanticSegmentation.from_pretrained(
            args.model_name_or_path,
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
            trust_remote_code=args.trust_remote_code,
            use_safetensors=True,
        )
    # Weights are read as safetensors only: a pickled checkpoint is refused, never unpickled.
    model = AutoModelForSemanticSegmentation.from_pretrained(
        args.model_name_or_path, trust_remote_code=args.trust_remote_code, use_safetensors=True
    )
    logger.info(
        f"  Classes: {align_classes_by_name(model, id2label, args.model_name_or_path, args.ignore_label_names)}"
    )
    return model


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except TrainingError as error:
        # Library errors carry the message; a script reports it and exits 2, like an argument error.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def train(args):
    accelerator_kwargs = (
        {"log_with": args.report_to, "project_dir": os.path.join(args.output_dir, "runs")} if args.with_tracking else {}
    )
    if args.mixed_precision:
        accelerator_kwargs["mixed_precision"] = args.mixed_precision
    # A seedable sampler makes the shuffled order a function of (seed, epoch): resuming replays it exactly.
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        **accelerator_kwargs,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)

    # Data: every check runs before the model is built, so a bad argument fails at once.
    train_splits = [args.train_split] + ([args.synthetic_split] if args.include_synthetic else [])
    if args.streaming:
        streams, id2label = load_segmentation_splits(args.dataset_name, train_splits, streaming=True)
        splits, _ = load_segmentation_splits(args.dataset_name, [args.validation_split])
        train_split = datasets.concatenate_datasets([streams[s] for s in train_splits])
    else:
        splits, id2label = load_segmentation_splits(args.dataset_name, [*train_splits, args.validation_split])
        train_split = first_samples(
            datasets.concatenate_datasets([splits[s] for s in train_splits]), args.max_train_samples
        )
    eval_split = first_samples(splits[args.validation_split], args.max_eval_samples)
    num_labels = len(id2label)
    if args.class_weights not in (["auto"], ["none"]) and len(args.class_weights) != num_labels:
        raise TrainingError(f"--class_weights has {len(args.class_weights)} values for {num_labels} classes")
    if not args.streaming:
        # One pass over the training labels: a value outside the classes fails here, naming its example, whatever
        # the loss (Dice once clamped it silently), and the pixel counts give --class_weights auto.
        names = train_split["name"] if "name" in train_split.column_names else None
        pixel_counts = class_pixel_counts(
            train_split.select_columns(["label"])["label"], num_labels, split_name="+".join(train_splits), names=names
        )
        logger.info(f"  Training pixels per class: {dict(zip(id2label.values(), pixel_counts.tolist()))}")
    if args.class_weights == ["auto"]:
        class_weights = torch.tensor(class_weights_from_counts(pixel_counts), dtype=torch.float32)
        logger.info(f"  Class weights (auto): {[round(w, 4) for w in class_weights.tolist()]}")
    else:
        class_weights = None if args.class_weights == ["none"] else torch.tensor(args.class_weights)
    model = build_model(args, id2label)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The model's own processor: training feeds what it would be fed at prediction, and it is saved with the model.
    # Sized for whole patches (--eval_image_size) when training on crops: prediction sees patches, not crops.
    processor = training_image_processor(
        args.model_name_or_path or args.config_name,
        model.config.model_type,
        args.eval_image_size or args.image_size,
        args.trust_remote_code,
    )
    preprocessing = preprocessing_from_processor(processor)
    augmentation = (
        None
        if args.no_augmentation
        else OverheadAugmentation(crop_size=args.image_size, scale_range=tuple(args.scale_range), ignore_index=255)
    )
    if args.streaming:
        train_dataset = StreamingSegmentationDataset(
            train_split,
            args.image_size,
            augmentation,
            seed=args.seed,
            shuffle_buffer_size=args.shuffle_buffer_size,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            preprocessing=preprocessing,
            num_labels=num_labels,
        )
    else:
        train_dataset = SegmentationDataset(
            train_split,
            args.image_size,
            augmentation,
            seed=args.seed,
            preprocessing=preprocessing,
            num_labels=num_labels,
        )
    eval_dataset = SegmentationDataset(
        eval_split,
        args.eval_image_size or args.image_size,
        preprocessing=preprocessing,
        num_labels=num_labels,
        split_name=args.validation_split,
    )
    # Own generators: creating a loader iterator must not draw from the global RNG that dropout and drop-path use,
    # or a resumed run (which creates one more iterator) would diverge from an uninterrupted one.
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        shuffle=not args.streaming,
        drop_last=True,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_dataloader = torch.utils.data.DataLoader(
        eval_dataset,
        batch_size=args.per_device_eval_batch_size,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )

    no_decay = ("bias", "norm", "scale")
    parameter_groups = [
        {
            "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": args.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(parameter_groups, lr=args.learning_rate)

    if args.streaming:
        # A stream has no length: epochs run until the step budget is spent.
        max_train_steps, num_train_epochs, steps_per_epoch = args.max_train_steps, args.max_train_steps, None
    else:
        steps_per_epoch = math.ceil(
            len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps
        )
        if steps_per_epoch == 0:
            raise TrainingError("the training split is smaller than one batch per process")
        if args.max_train_steps is not None:
            max_train_steps = args.max_train_steps
        elif args.max_train_minutes is not None:
            max_train_steps = None  # fixed from the measured speed once the first steps are timed
        else:
            max_train_steps = args.num_train_epochs * steps_per_epoch
        num_train_epochs = math.ceil(max_train_steps / steps_per_epoch) if max_train_steps else 10**9
    # accelerate steps a prepared scheduler once per process for every optimizer step.
    lr_scheduler = StepSchedule(
        optimizer,
        args.num_warmup_steps,
        args.lr_scheduler_type,
        planned_steps=max_train_steps,
        steps_per_update=accelerator.num_processes,
    )
    if args.streaming:
        # The stream is already sharded per process; accelerate would shard it again.
        model, optimizer, eval_dataloader, lr_scheduler = accelerator.prepare(
            model, optimizer, eval_dataloader, lr_scheduler
        )
    else:
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
            model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
        )
    schedule = lr_scheduler.scheduler  # the StepSchedule inside accelerate's wrapper
    ema = ExponentialMovingAverage(accelerator.unwrap_model(model), args.ema_decay) if args.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    if args.with_tracking:
        # Trackers write their hyperparameters into files that a push uploads: never a credential.
        accelerator.init_trackers("lale", tracked_hyperparameters(vars(args)))

    state = TrainingState()
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        # A killed run leaves the checkpoint it was writing as a hidden partial folder: never reuse or publish it.
        for stale in output_dir.glob(".partial_step_*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    if args.resume_from_checkpoint:
        checkpoint = (
            (list_checkpoints(output_dir) or [None])[-1]
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if checkpoint is None or not checkpoint.is_dir():
            raise TrainingError(f"no checkpoint to resume from ({args.resume_from_checkpoint!r} in {output_dir})")
        accelerator.print(f"Resumed from checkpoint: {checkpoint}")
        # accelerate only logs a missing RNG state and goes on; the run would then silently differ.
        missing_rng = not (checkpoint / f"random_states_{accelerator.process_index}.pkl").is_file()
        if missing_rng and not args.allow_inexact_resume:
            raise TrainingError(
                f"{checkpoint} lacks random_states_{accelerator.process_index}.pkl, so process "
                f"{accelerator.process_index} cannot resume exactly (a checkpoint of another number of processes?); "
                "pass --allow_inexact_resume to resume anyway"
            )
        if missing_rng:
            logger.warning(
                f"Resuming from {checkpoint} without its RNG state: the run will not reproduce exactly",
                main_process_only=False,
            )
        accelerator.load_state(str(checkpoint))
        state = TrainingState.load(checkpoint)
        max_train_steps = schedule.planned_steps
        if max_train_steps is not None and not args.streaming:
            num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)

    def save_checkpoint():
        accelerator.wait_for_everyone()
        final = output_dir / f"step_{state.completed_steps}"
        partial = output_dir / f".partial_step_{state.completed_steps}"
        if accelerator.is_main_process and partial.exists():
            shutil.rmtree(partial)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        if accelerator.is_main_process:
            state.save(partial)
            replace_folder(partial, final)
            if args.checkpoints_total_limit:
                for stale in list_checkpoints(output_dir)[: -args.checkpoints_total_limit]:
                    shutil.rmtree(stale)
        accelerator.wait_for_everyone()

    def run_evaluation():
        # With EMA, the average is what is evaluated and saved; the raw weights go on training.
        if ema is not None:
            ema.swap(accelerator.unwrap_model(model))
        try:
            results = {**evaluate(model, eval_dataloader, accelerator, id2label), "step": state.completed_steps}
            state.last_eval = results
            accelerator.print(
                f"step {state.completed_steps}: macro F1 {results['eval_macro_f1']:.4f}, "
                f"mIoU {results['eval_mean_iou']:.4f}"
            )
            state.eval_history.append(
                {
                    "step": state.completed_steps,
                    "eval_macro_f1": results["eval_macro_f1"],
                    "eval_mean_iou": results["eval_mean_iou"],
                }
            )
            if args.with_tracking:
                accelerator.log({k: v for k, v in results.items() if isinstance(v, float)}, step=state.completed_steps)
            if accelerator.is_main_process:
                save_confusion_matrix_plot(results["confusion_matrix"], id2label, output_dir / "confusion_matrix.png")
            if results["eval_macro_f1"] > state.best_macro_f1:
                state.best_macro_f1 = results["eval_macro_f1"]
                save_model(output_dir / "best", results)
            if args.push_to_hub and args.push_checkpoints:
                save_model(output_dir / ".push", results)
                if accelerator.is_main_process:
                    message = f"step {state.completed_steps}: macro F1 {results['eval_macro_f1']:.4f}"
                    # Best effort: a Hub outage must not end a training run; the final push reports its failure.
                    try:
                        push_folder(args, output_dir / ".push", message)
                    except Exception as error:  # noqa: BLE001 (any client or network error)
                        logger.warning(f"Checkpoint push at step {state.completed_steps} failed after retries: {error}")
        finally:
            if ema is not None:
                ema.swap(accelerator.unwrap_model(model))
        return results

    def save_model(folder, results):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            partial = folder.with_name("." + folder.name + ".partial")
            accelerator.unwrap_model(model).save_pretrained(partial)
            processor.save_pretrained(partial)
            write_atomic(partial / "eval_results.json", json.dumps(json_ready(results), indent=2))
            make_readable(partial)
            replace_folder(partial, folder)

    def plan_budget_steps():
        """Turns the rest of the time budget into a step count; every process takes the smallest estimate."""
        timed_steps = state.completed_steps - BUDGET_UNTIMED_STEPS
        estimate = planned_total_steps(
            state.completed_steps,
            state.train_seconds - state.budget_timing_start,
            timed_steps,
            state.train_seconds,
            args.max_train_minutes * 60,
        )
        estimates = accelerator.gather(torch.tensor([estimate], device=accelerator.device))
        planned = max(state.completed_steps, int(estimates.min().item()))
        logger.info(
            f"Planned steps of the time budget: {planned} (this process estimated {estimate})", main_process_only=False
        )
        return planned

    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    num_examples = "streamed" if args.streaming else len(train_dataset)
    logger.info(
        f"  Num examples = {num_examples}, total batch = {total_batch_size}, steps per epoch = {steps_per_epoch}"
    )
    logger.info(f"  Optimization steps = {max_train_steps or 'fixed from the time budget after the first steps'}")
    budget_seconds = args.max_train_minutes * 60 if args.max_train_minutes is not None else None
    # A time budget shows a bar in seconds until its step count is fixed (a step bar would show 10^9 steps).
    progress_bar = tqdm(
        total=max_train_steps if max_train_steps else round(budget_seconds),
        initial=state.completed_steps if max_train_steps else round(state.train_seconds),
        unit="step" if max_train_steps else "s",
        disable=not accelerator.is_local_main_process,
    )
    stop_reason = "epochs"
    step_losses = []
    push_error = None
    step_clock = time.monotonic()
    for epoch in range(state.epoch, num_train_epochs):
        model.train()
        train_dataset.set_epoch(epoch)
        if not args.streaming:
            train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        if epoch == state.epoch and state.batches_in_epoch:
            batches = accelerator.skip_first_batches(train_dataloader, state.batches_in_epoch)
        else:
            state.batches_in_epoch = 0
        state.epoch = epoch
        for batch in batches:
            batch = {key: value.to(accelerator.device) for key, value in batch.items()}
            if args.channels_last:
                batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model):
                logits = model(pixel_values=batch["pixel_values"]).logits
                loss = segmentation_loss(
                    logits, batch["labels"], args.loss, class_weights, label_smoothing=args.label_smoothing
                )
                step_losses.append(loss.detach())
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            state.samples_seen += batch["pixel_values"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state.completed_steps += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            # The step's loss is the mean over its accumulated micro-batches and over the processes.
            state.loss_history.append(accelerator.gather(torch.stack(step_losses).mean()).mean().item())
            step_losses.clear()
            state.learning_rate_last = lr_scheduler.get_last_lr()[0]
            # The budget clock counts training steps only: evaluations and checkpoints are not part of it.
            now = time.monotonic()
            state.train_seconds += now - step_clock
            step_clock = now
            if max_train_steps:
                progress_bar.update(1)
            else:
                progress_bar.n = min(round(state.train_seconds), progress_bar.total)
                progress_bar.refresh()
            progress_bar.set_postfix(loss=f"{state.loss_history[-1]:.4f}", step=state.completed_steps)
            if args.with_tracking:
                accelerator.log(
                    {"train_loss": state.loss_history[-1], "lr": state.learning_rate_last}, step=state.completed_steps
                )
            if budget_seconds is not None and max_train_steps is None:
                if state.completed_steps == BUDGET_UNTIMED_STEPS:
                    state.budget_timing_start = state.train_seconds
                elif state.completed_steps == BUDGET_UNTIMED_STEPS + args.budget_timing_steps:
                    max_train_steps = schedule.planned_steps = plan_budget_steps()
                    if not args.streaming:
                        num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)
                    accelerator.print(
                        f"Time budget of {args.max_train_minutes} min: {max_train_steps} optimizer steps at the "
                        f"measured {args.budget_timing_steps / (state.train_seconds - state.budget_timing_start):.3f} steps/s"
                    )
                    progress_bar.close()
                    progress_bar = tqdm(
                        total=max_train_steps,
                        initial=state.completed_steps,
                        unit="step",
                        disable=not accelerator.is_local_main_process,
                    )
            if (
                args.eval_steps
                and state.completed_steps % args.eval_steps == 0
                and state.completed_steps >= args.eval_from_step
            ):
                run_evaluation()
                model.train()
            if (
                args.checkpointing_steps not in (None, "epoch")
                and state.completed_steps % int(args.checkpointing_steps) == 0
            ):
                save_checkpoint()
            step_clock = time.monotonic()
            if max_train_steps and state.completed_steps >= max_train_steps:
                stop_reason = (
                    "time budget (planned steps)"
                    if args.max_train_steps is None and budget_seconds
                    else "max_train_steps"
                )
                if not args.streaming and state.batches_in_epoch == len(train_dataloader):
                    # The last step also ended an epoch: record it as finished, and keep its epoch checkpoint.
                    state.epoch, state.batches_in_epoch = epoch + 1, 0
                    if args.checkpointing_steps == "epoch":
                        save_checkpoint()
                break
            if budget_seconds is not None:
                # A safety net if the machine slows down after planning. Every process must agree, or one would
                # wait forever in the next collective.
                elapsed = torch.tensor(state.train_seconds, device=accelerator.device)
                if accelerator.reduce(elapsed, reduction="max").item() > budget_seconds * BUDGET_OVERRUN:
                    stop_reason = "time budget exceeded before the planned steps"
                    break
        else:
            state.epoch, state.batches_in_epoch = epoch + 1, 0
            # Process shards of a stream end at different steps: no collective may hang on the epoch's end.
            if not args.eval_steps and not args.streaming:
                run_evaluation()
            if args.checkpointing_steps == "epoch":
                save_checkpoint()
            step_clock = time.monotonic()
            continue
        break
    progress_bar.close()

    results = (
        run_evaluation()
        if state.last_eval is None or state.last_eval["step"] != state.completed_steps
        else state.last_eval
    )
    last_scores = [entry["eval_macro_f1"] for entry in state.eval_history[-5:]]
    results = {
        **json_ready({k: v for k, v in results.items() if k != "confusion_matrix"}),
        "train_steps": state.completed_steps,
        "train_samples": state.samples_seen,
        "train_runtime_seconds": round(state.train_seconds, 2),
        "train_samples_per_second": round(state.samples_seen / max(state.train_seconds, 1e-9), 3),
        "train_loss_first": state.loss_history[0] if state.loss_history else None,
        "train_loss_last": state.loss_history[-1] if state.loss_history else None,
        "train_loss_history": state.loss_history,
        "final_learning_rate": state.learning_rate_last,
        "eval_history": state.eval_history,
        "eval_macro_f1_spread_last5": (max(last_scores) - min(last_scores)) if last_scores else None,
        "ema_decay": args.ema_decay,
        "stop_reason": stop_reason,
        "stopped_by_time_budget": stop_reason.startswith("time budget"),
        "num_processes": accelerator.num_processes,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.swap(unwrapped)  # the average is the final model
        # Written to a staging folder, then each file renamed into place: never a half-written model.safetensors.
        staging = output_dir / ".final.partial"
        shutil.rmtree(staging, ignore_errors=True)
        unwrapped.save_pretrained(staging)
        processor.save_pretrained(staging)
        publish_files(staging, output_dir)
        card = build_model_card(
            results=results,
            args=tracked_hyperparameters(vars(args)),
            config=unwrapped.config,
            num_parameters=unwrapped.num_parameters(),
            num_processes=accelerator.num_processes,
            device=str(accelerator.device),
        )
        card.save(output_dir / "README.md")
        write_atomic(output_dir / "all_results.json", json.dumps(results, indent=2))
        accelerator.print(
            f"Saved model to {output_dir}: macro F1 {results['eval_macro_f1']:.4f}, mIoU {results['eval_mean_iou']:.4f}"
        )
        if args.push_to_hub:
            try:
                push_folder(args, output_dir, f"Training finished: step {state.completed_steps}")
            except Exception as error:  # noqa: BLE001 (any client or network error)
                push_error = error
    accelerator.wait_for_everyone()
    # Closes the trackers and the process group: a rank exiting with gloo's threads alive can abort
    # ("terminate called without an active exception").
    accelerator.end_training()
    if push_error is not None:
        raise TrainingError(
            f"everything is saved in {output_dir}, but the push to {args.hub_model_id} failed after retries: "
            f"{push_error}. Push the folder later with `hf upload {args.hub_model_id} {output_dir}`."
        )


def push_folder(args, folder, message, attempts: int = PUSH_ATTEMPTS):
    """Pushes the allow-listed files of a training folder, retrying with backoff; raises the last error."""
    for attempt in range(1, attempts + 1):
        try:
            # token=None takes HF_TOKEN or the cached login.
            return hub_utils.push_folder(
                folder,
                args.hub_model_id,
                "model",
                message,
                token=args.hub_token,
                private=args.hub_private_repo,
                allow_patterns=push_allow_patterns(folder),
            )
        except Exception as error:  # noqa: BLE001 (any client or network error is retried)
            if attempt == attempts:
                raise
            delay = PUSH_BACKOFF_SECONDS * 2 ** (attempt - 1)
            logger.warning(f"Push of {folder} failed ({error}); attempt {attempt + 1} of {attempts} in {delay:g} s")
            time.sleep(delay)


if __name__ == "__main__":
    main()
