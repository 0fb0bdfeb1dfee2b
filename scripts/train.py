#!/usr/bin/env python
"""Train LALE (or any transformers semantic-segmentation model) on ARAS400k-style data with 🤗 Accelerate.

    accelerate launch scripts/train.py --dataset_name outputs/aras400k --preset lale-tiny --output_dir outputs/lale-tiny

Argument names follow transformers' `run_semantic_segmentation_no_trainer.py` where they overlap.
"""

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

from lale_hf import hub_utils
from lale_hf.file_utils import make_readable, publish_files, replace_folder, write_atomic
from lale_hf.model_card import build_model_card
from lale_hf.preprocessing import preprocessing_from_processor
from lale_hf.training import (
    ExponentialMovingAverage,
    OverheadAugmentation,
    SegmentationDataset,
    StepSchedule,
    StreamingSegmentationDataset,
    TrainingError,
    TrainingState,
    build_model,
    class_pixel_counts,
    class_weights_from_counts,
    evaluate,
    first_samples,
    json_ready,
    list_checkpoints,
    load_segmentation_splits,
    parse_training_args,
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
# How far past its budget a planned run may go (the machine slowed down) before it stops anyway.
BUDGET_OVERRUN = 1.25


def main(argv=None):
    args = parse_training_args(argv, __doc__)
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
    results = {
        **json_ready({k: v for k, v in results.items() if k != "confusion_matrix"}),
        **state.summary(),
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


def push_folder(args, folder, message):
    """The allow-listed files of a training folder to `--hub_model_id` (token=None: HF_TOKEN or the cached login)."""
    return hub_utils.push_folder(
        folder,
        args.hub_model_id,
        "model",
        message,
        token=args.hub_token,
        private=args.hub_private_repo,
        allow_patterns=push_allow_patterns(folder),
    )


if __name__ == "__main__":
    main()
