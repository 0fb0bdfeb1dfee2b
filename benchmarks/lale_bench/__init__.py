"""The benchmark library behind `benchmarks/benchmark*.py`; it is not part of the `lale_hf` package.

- `zoo`: the LALE presets and their transformers peers, built from configs with seeded random weights.
- `counting`: parameters, safetensors bytes, FLOPs (torch's counter, corrected) and peak tensor memory.
- `paths`: the deployment paths (eager, channels_last, torch.compile, ONNX Runtime) and the training step.
- `timing`: workloads, interleaved rounds, paired ratios, and the lockstep between two benchmark processes.
- `run`: the settings of a run and the measurement of every model in it.
- `summary`: best paths, paired ratios against the reference model, fractions of the matmul peak, targets.
- `equal_budget`: training every model for the same wall-clock budget, and reading the accuracy it reached.
- `report`: the JSON document, its markdown tables and the plot.
- `quiet`: filters for third-party notices that would bury the measurements.
"""

from .counting import (
    PeakTensorMemory,
    count_flops,
    count_parameters,
    flop_counter,
    model_figures,
    peak_memory_bytes,
    safetensors_bytes,
)
from .equal_budget import ACCELERATE_LAUNCH, ACCURACY_KEYS, equal_budget_commands, read_accuracy
from .paths import DTYPES, PATHS, TOLERANCES, PathUnavailable, make_train_step, prepare_path
from .quiet import silence_third_party_noise
from .report import build_report, plot_report, render_markdown
from .run import BenchmarkSettings, run_benchmark
from .summary import TARGETS, Target, compare_runs, evaluate_targets, find_series, summarize
from .timing import LockstepTurn, Task, paired_ratio, run_lockstep, run_rounds
from .zoo import DEFAULT_MODELS, ZOO, build_model, check_logits, zoo_config


__all__ = [
    "ACCELERATE_LAUNCH",
    "ACCURACY_KEYS",
    "DEFAULT_MODELS",
    "DTYPES",
    "PATHS",
    "TARGETS",
    "TOLERANCES",
    "ZOO",
    "BenchmarkSettings",
    "LockstepTurn",
    "PathUnavailable",
    "PeakTensorMemory",
    "Target",
    "Task",
    "build_model",
    "build_report",
    "check_logits",
    "compare_runs",
    "count_flops",
    "count_parameters",
    "equal_budget_commands",
    "evaluate_targets",
    "find_series",
    "flop_counter",
    "make_train_step",
    "model_figures",
    "paired_ratio",
    "peak_memory_bytes",
    "plot_report",
    "prepare_path",
    "read_accuracy",
    "render_markdown",
    "run_benchmark",
    "run_lockstep",
    "run_rounds",
    "safetensors_bytes",
    "silence_third_party_noise",
    "summarize",
    "zoo_config",
]
