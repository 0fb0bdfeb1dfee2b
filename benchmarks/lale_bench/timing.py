"""Timing: workloads (tasks), interleaved rounds, paired ratios, and the lockstep between benchmark processes."""

import contextlib
import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .paths import DTYPES


@dataclass
class Task:
    """One timed workload: each call of `run` processes `units` items (images, or GFLOP for the matmul).

    Tasks of one `group` (the same workload on every model) run back to back; `record` receives the results.
    """

    group: str
    run: Callable[[], object]
    units: float
    record: dict
    calls: int = 1
    samples: list[float] = field(default_factory=list)


def time_calls(task: Task, calls: int, synchronize: Callable[[], None]) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        task.run()
    synchronize()
    return time.perf_counter() - start


def warm_up(task: Task, warmup_calls: int, min_seconds: float, synchronize: Callable[[], None]):
    """Runs `warmup_calls` untimed calls, then sets how many calls one sample takes (at least `min_seconds`)."""
    time_calls(task, warmup_calls, synchronize)
    task.calls = max(1, math.ceil(min_seconds / max(time_calls(task, 1, synchronize), 1e-9)))


def run_rounds(tasks: list[Task], rounds: int, synchronize: Callable[[], None], turn=contextlib.nullcontext):
    """Takes `rounds` samples of every task, interleaved: round after round, group after group.

    Tasks of one group (the same workload on every model) run back to back, so the samples that a ratio pairs were
    taken seconds apart; the order inside a group rotates each round so that no model always goes first. `turn()`
    wraps every group: the lockstep with a second benchmark process (see `LockstepTurn`).
    """
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.group, []).append(task)
    for round_idx in range(rounds):
        for members in groups.values():
            shift = round_idx % len(members)
            with turn():
                for task in members[shift:] + members[:shift]:
                    task.samples.append(task.units * task.calls / time_calls(task, task.calls, synchronize))


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Ratio of two series round by round, and its median: noise shared within a round cancels."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(
            f"Paired series must have the same non-zero length, got {len(numerator)} and {len(denominator)}."
        )
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "samples": ratios}


class LockstepTurn:
    """Takes turns with other benchmark processes over two pipe descriptors: wait for "go", run, answer "done".

    Two processes under different allocators then alternate group by group, and never time while the other runs.
    """

    def __init__(self, go_fd: int, done_fd: int):
        self._go = os.fdopen(go_fd, "r")
        self._done = os.fdopen(done_fd, "w")

    @contextlib.contextmanager
    def __call__(self):
        if self._go.readline().strip() != "go":
            raise RuntimeError("Lockstep coordinator closed the pipe before the benchmark finished.")
        try:
            yield
        finally:
            self._done.write("done\n")
            self._done.flush()


def run_lockstep(commands: list[tuple[list[str], dict]]) -> None:
    """Runs benchmark processes that take turns (`LockstepTurn`), one turn each in rotation, until all have exited.

    Each command gets `--lockstep_fds GO,DONE` appended. Raises if any process fails.
    """
    workers = []
    for command, env in commands:
        go_read, go_write = os.pipe()
        done_read, done_write = os.pipe()
        process = subprocess.Popen(
            [*command, "--lockstep_fds", f"{go_read},{done_write}"], env=env, pass_fds=(go_read, done_write)
        )
        os.close(go_read)
        os.close(done_write)
        workers.append((process, os.fdopen(go_write, "w"), os.fdopen(done_read, "r")))
    active = list(workers)
    while active:
        for worker in list(active):
            _, go, done = worker
            try:
                go.write("go\n")
                go.flush()
                finished = not done.readline()
            except BrokenPipeError:
                finished = True
            if finished:
                active.remove(worker)
    failed = [command for (command, _), (process, _, _) in zip(commands, workers, strict=True) if process.wait() != 0]
    if failed:
        raise RuntimeError(f"Benchmark worker(s) failed: {failed}")


def matmul_task(size: int, dtype: str, device: torch.device) -> Task:
    """A square `size` x `size` matrix product, in GFLOP/s: the machine's dense-compute ceiling at that size."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, DTYPES[dtype]) for _ in range(2))
    out = torch.empty_like(a)
    record = {"dtype": dtype, "size": size}
    return Task(f"{dtype}|matmul", lambda: torch.mm(a, b, out=out), units=2 * size**3 / 1e9, record=record)
