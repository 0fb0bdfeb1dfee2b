"""Accuracy at equal training budget: `scripts/train.py` trains every model, the benchmark reads `all_results.json`."""

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from .zoo import build_model


ACCURACY_KEYS = ("eval_macro_f1", "eval_mean_iou")
# `accelerate launch` with this interpreter: the environment that runs the benchmark trains, whatever is on PATH.
ACCELERATE_LAUNCH = (sys.executable, "-m", "accelerate.commands.launch")


def read_accuracy(specs: Iterable[str]) -> dict[str, dict]:
    """Reads `NAME=PATH` pairs, PATH an `all_results.json` with `eval_macro_f1` and `eval_mean_iou` in [0, 1]."""
    accuracy = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"Expected NAME=PATH/all_results.json, got {spec!r}.")
        if not Path(path).is_file():
            raise FileNotFoundError(f"No all_results.json at {path!r} (for {name!r}).")
        values = json.loads(Path(path).read_text())
        missing = [key for key in ACCURACY_KEYS if key not in values]
        if missing:
            raise ValueError(f"{path} lacks {missing}; it has {sorted(values)}.")
        for key in ACCURACY_KEYS:
            if not 0.0 <= values[key] <= 1.0:
                raise ValueError(f"{path}: {key} = {values[key]} is not a fraction in [0, 1].")
        keys = (*ACCURACY_KEYS, "train_samples_per_second", "train_steps", "train_runtime_seconds")
        accuracy[name] = {key: values[key] for key in keys if key in values}
        accuracy[name]["source"] = str(path)
    return accuracy


def equal_budget_commands(
    models: Iterable[str],
    dataset_name: str,
    output_dir: str | os.PathLike,
    minutes: float,
    seed: int,
    train_script: str = "scripts/train.py",
    extra_args: Iterable[str] = (),
) -> list[tuple[str, list[str], Path]]:
    """One `accelerate launch scripts/train.py` per model (`ACCELERATE_LAUNCH`): same data, seed and wall-clock budget.

    The budget must be what stops training, and the learning rate must not follow a step count that the budget cuts
    short: hence an epoch count no run reaches and a constant schedule (`extra_args` come last and can override).
    Every run starts from the weights the benchmark times (`build_model`, seeded; batch norms at PyTorch's default:
    MobileViT's own init would start it from degenerate activations), saved to `output_dir/NAME/init`. Returns
    (name, command, all_results.json path) per model.
    """
    if not minutes > 0:
        raise ValueError(f"The training budget must be positive, got {minutes} minutes.")
    commands = []
    for name in models:
        init_dir, run_dir = Path(output_dir) / name / "init", Path(output_dir) / name / "run"
        build_model(name, seed).save_pretrained(init_dir)
        command = [
            *ACCELERATE_LAUNCH,
            train_script,
            *("--model_name_or_path", str(init_dir), "--dataset_name", dataset_name, "--output_dir", str(run_dir)),
            *("--seed", str(seed), "--max_train_minutes", f"{minutes:g}"),
            *("--num_train_epochs", "100000", "--lr_scheduler_type", "constant_with_warmup"),
            *extra_args,
        ]
        commands.append((name, command, run_dir / "all_results.json"))
    return commands
