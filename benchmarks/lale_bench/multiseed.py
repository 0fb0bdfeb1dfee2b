"""Accuracy that survives noise: every model trained with several seeds through `train.py`, at equal compute
(each model gets the optimizer steps it completes in the budget at its isolated, measured speed), at equal steps,
or at an equal wall-clock budget, then summarised per model and compared pairwise across seeds.

Equal compute is defined by step counts, not by the clock of the training runs themselves: the speeds are measured
first, in interleaved rounds on an otherwise idle process, and turned into a step count per model. The training runs
can then go in parallel or under load without favouring anyone, and each run's score depends only on its seed.
"""

import itertools
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .counting import count_flops, count_parameters
from .equal_budget import ACCELERATE_LAUNCH
from .paths import make_train_step
from .seed_statistics import paired_comparison, seed_summary
from .timing import Task, run_rounds, warm_up
from .zoo import build_model


MODES = ("equal-compute", "equal-steps", "wall-clock")
SCORES = ("eval_macro_f1", "eval_mean_iou")


@dataclass(frozen=True)
class TrainingRun:
    """One `train.py` run: a model, a seed, and what bounds it (a step count, or minutes in wall-clock mode)."""

    mode: str
    model: str
    seed: int
    steps: int | None = None
    minutes: float | None = None

    @property
    def name(self) -> str:
        """The run's folder: named by what it trains, not by mode, so that a run two modes share runs once."""
        bound = f"steps-{self.steps}" if self.steps else f"minutes-{self.minutes:g}"
        return f"{self.model}/seed-{self.seed}/{bound}"


def measure_training_speed(
    models: list[str], batch_size: int, image_size: int, rounds: int = 3, min_seconds: float = 2.0, log=print
) -> dict[str, float]:
    """Training images per second of each model (forward, backward, AdamW; median of interleaved rounds)."""
    device, synchronize = torch.device("cpu"), lambda: None
    tasks = []
    for name in models:
        step, _ = make_train_step(build_model(name), batch_size, image_size, "fp32", device)
        task = Task(group="train", run=step, units=batch_size, record={"model": name})
        warm_up(task, warmup_calls=2, min_seconds=min_seconds, synchronize=synchronize)
        tasks.append(task)
        log(f"  warmed up {name}")
    run_rounds(tasks, rounds, synchronize)
    return {task.record["model"]: sorted(task.samples)[len(task.samples) // 2] for task in tasks}


def model_costs(models: list[str], image_size: int, inference_image_size: int = 256) -> dict[str, dict]:
    """Parameters, training GFLOPs per training image (forward and backward, at `image_size`) and inference GMACs
    per `inference_image_size` patch of each model."""
    costs = {}
    for name in models:
        model = build_model(name)
        costs[name] = {
            "parameters": count_parameters(model),
            "train_gflops_per_image": count_flops(model, image_size, train=True) / 1e9,
            "inference_gmacs": count_flops(model, inference_image_size) / 2e9,
            "inference_image_size": inference_image_size,
        }
    return costs


def plan_runs(
    models: list[str],
    seeds: list[int],
    modes: list[str],
    batch_size: int,
    speeds: dict[str, float] | None = None,
    budget_seconds: float | None = None,
    equal_steps: int | None = None,
) -> list[TrainingRun]:
    """The runs of a comparison. Equal compute: `budget_seconds` of each model's measured isolated speed, in steps."""
    runs = []
    if "equal-compute" in modes and (speeds is None or budget_seconds is None):
        raise ValueError("equal compute needs the measured speeds and a budget in seconds")
    if "equal-steps" in modes and not equal_steps:
        raise ValueError("equal steps needs a step count")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        # Seed by seed: a comparison stopped early still has every model at the seeds it finished.
        for seed, model in itertools.product(seeds, models):
            if mode == "equal-compute":
                steps = max(1, round(budget_seconds * speeds[model] / batch_size))
                runs.append(TrainingRun(mode, model, seed, steps=steps))
            elif mode == "equal-steps":
                runs.append(TrainingRun(mode, model, seed, steps=equal_steps))
            else:
                runs.append(TrainingRun(mode, model, seed, minutes=budget_seconds / 60))
    return runs


def train_command(
    run: TrainingRun,
    dataset_name: str,
    output_dir: Path,
    train_script: str,
    threads: int,
    batch_size: int,
    image_size: int,
    train_args: list[str],
) -> list[str]:
    """`accelerate launch train.py` for `run`, from the weights the speed was measured with (saved once per seed)."""
    init_dir = output_dir / "init" / f"{run.model}-seed-{run.seed}"
    if not (init_dir / "config.json").is_file():
        build_model(run.model, run.seed).save_pretrained(init_dir)
    bound = ["--max_train_steps", str(run.steps)] if run.steps else ["--max_train_minutes", f"{run.minutes:g}"]
    # Evaluations every 5% of the run over its last 20%: the last five show how settled the end is.
    eval_steps = max(1, (run.steps or 200) // 20)
    eval_from = max(0, (run.steps or 0) - 4 * eval_steps)
    return [
        *ACCELERATE_LAUNCH,
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(threads),
        train_script,
        "--model_name_or_path",
        str(init_dir),
        "--dataset_name",
        dataset_name,
        "--output_dir",
        str(output_dir / run.name),
        "--seed",
        str(run.seed),
        "--per_device_train_batch_size",
        str(batch_size),
        "--image_size",
        str(image_size),
        "--eval_steps",
        str(eval_steps),
        "--eval_from_step",
        str(eval_from),
        *bound,
        *train_args,
    ]


def run_trainings(
    runs: list[TrainingRun], commands: dict[str, list[str]], output_dir: Path, parallel: int, threads: int, log=print
) -> None:
    """Runs the commands, `parallel` at a time; a run whose `all_results.json` exists is skipped (resumable)."""
    unique = list({run.name: run for run in runs}.values())
    pending = [run for run in unique if not (output_dir / run.name / "all_results.json").is_file()]
    log(f"{len(unique) - len(pending)} of {len(unique)} runs already done; {len(pending)} to go, {parallel} at a time")
    active: list[tuple[TrainingRun, subprocess.Popen, float]] = []
    failures = []
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    while pending or active:
        while pending and len(active) < parallel:
            run = pending.pop(0)
            folder = output_dir / run.name
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "train.log", "w") as log_file:
                process = subprocess.Popen(
                    commands[run.name], stdout=log_file, stderr=subprocess.STDOUT, env=environment
                )
            active.append((run, process, time.monotonic()))
            log(f"started {run.name} ({run.steps or run.minutes} {'steps' if run.steps else 'min'})")
        time.sleep(1.0)
        for entry in list(active):
            run, process, started = entry
            if process.poll() is None:
                continue
            active.remove(entry)
            if process.returncode != 0:
                failures.append(run.name)
                log(f"FAILED {run.name} (exit {process.returncode}); see {output_dir / run.name / 'train.log'}")
            else:
                log(f"finished {run.name} in {time.monotonic() - started:.0f} s")
    if failures:
        raise RuntimeError(f"{len(failures)} training runs failed: {failures}")


def collect_results(runs: list[TrainingRun], output_dir: Path) -> list[dict]:
    """One record per run: its plan and what its `all_results.json` says."""
    records = []
    for run in runs:
        path = output_dir / run.name / "all_results.json"
        if not path.is_file():
            continue  # not run (yet): the summary covers the seeds that finished
        results = json.loads(path.read_text())
        records.append(
            {
                **asdict(run),
                **{key: results[key] for key in SCORES},
                "train_steps": results["train_steps"],
                "train_runtime_seconds": results["train_runtime_seconds"],
                "eval_macro_f1_spread_last5": results.get("eval_macro_f1_spread_last5"),
                "eval_history": results.get("eval_history", []),
            }
        )
    return records


def summarize_comparison(
    records: list[dict], costs: dict[str, dict], batch_size: int, confidence: float = 0.95
) -> dict:
    """Per mode: each model's scores over seeds (mean, std, interval), its training cost, and every pairwise
    paired comparison of macro F1 and mIoU across seeds."""
    summary = {}
    for mode in dict.fromkeys(record["mode"] for record in records):
        in_mode = [record for record in records if record["mode"] == mode]
        models = list(dict.fromkeys(record["model"] for record in in_mode))
        per_model = {}
        models = [m for m in models if sum(r["model"] == m for r in in_mode) >= 2]  # an interval needs 2 seeds
        for model in models:
            mine = [record for record in in_mode if record["model"] == model]
            steps = [record["train_steps"] for record in mine]
            spreads = [
                record["eval_macro_f1_spread_last5"]
                for record in mine
                if record["eval_macro_f1_spread_last5"] is not None
            ]
            per_model[model] = {
                **{score: seed_summary([record[score] for record in mine], confidence) for score in SCORES},
                "steps": steps,
                "train_tflops": [s * batch_size * costs[model]["train_gflops_per_image"] / 1e3 for s in steps],
                "spread_last5_max": max(spreads) if spreads else None,
                **costs[model],
            }
        pairs = {}
        for first, second in itertools.combinations(models, 2):
            by_seed = {
                model: {score: {r["seed"]: r[score] for r in in_mode if r["model"] == model} for score in SCORES}
                for model in (first, second)
            }
            pairs[f"{first} vs {second}"] = {
                score: paired_comparison(by_seed[first][score], by_seed[second][score], confidence) for score in SCORES
            }
        summary[mode] = {"models": per_model, "pairs": pairs}
    return summary
