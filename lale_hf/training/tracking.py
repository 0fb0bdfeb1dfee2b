"""What a training run records and publishes: hyperparameters without secrets, and the allow-list of a push."""

import re
from collections.abc import Mapping
from pathlib import Path


# Argument names that hold credentials. They are never tracked, written to a card or log, or pushed.
SECRET_NAME = re.compile(r"token|secret|password|passwd|credential|api_?key|auth", re.IGNORECASE)

# What a pushed training folder holds: the model as save_pretrained writes it (weights, config, processor, the
# remote-code files), the card, the results and the plot, and TensorBoard event files. Checkpoints (optimizer and
# RNG state), hidden staging folders and anything else in the output folder stay local.
MODEL_FOLDER_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "preprocessor_config.json",
    "README.md",
    "all_results.json",
    "eval_results.json",
    "confusion_matrix.png",
)
TENSORBOARD_EVENTS = "runs/*events.out.tfevents.*"


def secret_values(arguments: Mapping) -> list[str]:
    """The non-empty string values of every argument whose name says it is a credential."""
    return [v for k, v in arguments.items() if SECRET_NAME.search(k) and isinstance(v, str) and v]


def tracked_hyperparameters(arguments: Mapping) -> dict:
    """`arguments` fit for trackers and cards: credentials dropped, lists as strings, no value holding a secret."""
    secrets = secret_values(arguments)
    tracked = {}
    for name, value in arguments.items():
        if SECRET_NAME.search(name):
            continue
        value = str(value) if isinstance(value, (list, tuple)) else value
        if isinstance(value, str) and any(secret in value for secret in secrets):
            continue
        tracked[name] = value
    return tracked


def push_allow_patterns(folder: str | Path) -> list[str]:
    """The exact paths (relative to `folder`) a push of a training output folder uploads.

    An allow-list: the model's files by name, the top-level Python files that save_pretrained copies for remote
    code, and TensorBoard event files; nothing else, whatever else the folder holds.
    """
    folder = Path(folder)
    patterns = list(MODEL_FOLDER_FILES)
    patterns += sorted(p.name for p in folder.glob("*.py") if p.is_file())
    patterns.append(TENSORBOARD_EVENTS)
    return patterns
