"""The command line of the training script: every option, its default and the reason for it, checked when parsed."""

import argparse

from ..argument_types import non_negative_float, non_negative_int, positive_float, positive_int, unit_interval
from ..configuration_lale import LALE_PRESETS
from .losses import LOSSES
from .recipe import SCHEDULES


def checkpoint_interval(text: str) -> str:
    if text != "epoch" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected 'epoch' or a positive number of steps, got {text!r}")
    return text


def parse_training_args(argv=None, description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
