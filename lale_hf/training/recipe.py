"""The converging recipe: a learning-rate schedule whose length is fixed from measured throughput, EMA weights,
and class weights from the training split's pixel counts.

A time budget (`--max_train_minutes`) used to stop training mid-schedule: with a constant learning rate the last
evaluation was wherever the noise left it (macro F1 swung 0.28-0.36 between evaluations 30 steps apart). Here the
run first measures its own speed for a few steps inside the warm-up, turns the remaining budget into a step count
that all processes agree on, and then decays the learning rate to its end at exactly that step.
"""

import math
from collections.abc import Iterable

import numpy as np
import torch

from .errors import TrainingDataError, TrainingError


SCHEDULES = ("cosine", "linear", "polynomial", "constant_with_warmup", "constant")


def learning_rate_factor(step: float, warmup_steps: int, planned_steps: int | None, schedule: str) -> float:
    """Multiplier of the peak learning rate after `step` optimizer steps.

    Linear warm-up over `warmup_steps`, then `schedule` decays to 0 at `planned_steps` ("polynomial" is power 1, as
    transformers' default). While `planned_steps` is still unknown (a time budget being measured) the factor stays at
    its post-warm-up value of 1.
    """
    if schedule not in SCHEDULES:
        raise TrainingError(f"unknown learning-rate schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if schedule in ("constant", "constant_with_warmup") or planned_steps is None:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, planned_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR over optimizer steps whose total can be fixed after training has started.

    accelerate steps a prepared scheduler once per process for every optimizer step, so the scheduler's own counter
    is divided by `steps_per_update`. `planned_steps` is part of the state dict, so a resumed run decays to the same
    end without measuring again.
    """

    def __init__(
        self, optimizer, warmup_steps: int, schedule: str, planned_steps: int | None = None, steps_per_update: int = 1
    ):
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.planned_steps = planned_steps
        self.steps_per_update = steps_per_update
        learning_rate_factor(0, warmup_steps, planned_steps, schedule)  # rejects an unknown schedule now
        super().__init__(optimizer, self._factor)

    def _factor(self, scheduler_step: int) -> float:
        step = scheduler_step / self.steps_per_update
        return learning_rate_factor(step, self.warmup_steps, self.planned_steps, self.schedule)

    def state_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict: dict):
        self.__dict__.update(state_dict)


def planned_total_steps(
    completed_steps: int, measured_seconds: float, measured_steps: int, elapsed_seconds: float, budget_seconds: float
) -> int:
    """The step at which a time budget ends, from the speed of the last `measured_steps` steps.

    Steps already taken count as taken; the rest of the budget is spent at the measured rate.
    """
    if measured_steps <= 0 or measured_seconds <= 0:
        raise TrainingError("the step budget needs at least one timed step")
    remaining = max(0.0, budget_seconds - elapsed_seconds)
    return completed_steps + int(remaining * measured_steps / measured_seconds)


class ExponentialMovingAverage:
    """An exponential moving average of a model's floating-point parameters and buffers.

    After each optimizer step: `ema = d * ema + (1 - d) * weights`, with the decay warmed up as
    `d = min(decay, (1 + n) / (10 + n))` for the n-th update (as timm and torch's swa_utils do), so the average is
    not dominated by the random initialisation in short runs. Integer buffers are copied.
    Registered with `accelerator.register_for_checkpointing`, so it is saved and resumed with the run.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise TrainingError(f"--ema_decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        decay = self.current_decay()
        for name, tensor in model.state_dict().items():
            shadow = self.shadow[name]
            if tensor.dtype.is_floating_point:
                shadow.mul_(decay).add_(tensor.detach().to(shadow.dtype), alpha=1.0 - decay)
            else:
                shadow.copy_(tensor)
        self.num_updates += 1

    @torch.no_grad()
    def swap(self, model: torch.nn.Module):
        """Exchanges the model's weights with the average (call again to swap back)."""
        for name, tensor in model.state_dict().items():
            saved = tensor.detach().clone()
            tensor.copy_(self.shadow[name])
            self.shadow[name] = saved

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state_dict: dict):
        self.decay = state_dict["decay"]
        self.num_updates = state_dict["num_updates"]
        for name, tensor in state_dict["shadow"].items():
            self.shadow[name].copy_(tensor)


def class_pixel_counts(
    labels: Iterable, num_labels: int, ignore_index: int = 255, split_name: str = "train", names: Iterable | None = None
) -> np.ndarray:
    """Pixels of each class over a split's label maps; a value outside [0, K) other than `ignore_index` is an error
    naming the split, the example and the value."""
    counts = np.zeros(num_labels, dtype=np.int64)
    names = iter(names) if names is not None else None
    for index, label in enumerate(labels):
        label = np.asarray(label)
        name = next(names) if names is not None else index
        values = np.bincount(label.ravel(), minlength=max(num_labels, ignore_index + 1))
        outside = [v for v in np.flatnonzero(values) if v >= num_labels and v != ignore_index]
        if outside:
            raise TrainingDataError(
                f"split {split_name!r}, example {name}: label value {outside[0]} is outside the {num_labels} "
                f"classes [0, {num_labels - 1}] (and is not the ignore index {ignore_index})"
            )
        counts += values[:num_labels]
    return counts


def class_weights_from_counts(counts: np.ndarray) -> np.ndarray:
    """Inverse square-root frequency weights, scaled so that the average weight of a labelled pixel is 1.

    The square root keeps rare classes from dominating (plain inverse frequency weighs a class of 0.1% of the pixels
    a thousand times a common one). A class absent from the split gets weight 1: no pixel uses it.
    """
    counts = np.asarray(counts, dtype=np.float64)
    frequencies = counts / counts.sum()
    weights = np.ones_like(frequencies)
    present = counts > 0
    weights[present] = frequencies[present] ** -0.5
    weights[present] /= (frequencies[present] * weights[present]).sum()
    return weights
