"""Prediction across processes with 🤗 Accelerate: who does which block, on which device, and how ranks agree.

`python scripts/predict.py` is one process; `accelerate launch [--num_processes N] scripts/predict.py` is N, on GPUs,
CPU processes (`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N`) or nodes. Ranks share no
GDAL dataset: each reads its inputs and writes its own block files, and the main process assembles after a barrier.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import InferenceError


class ProcessFailure(InferenceError):
    """Another process of the run failed; `kind` is the name of its exception type."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class WorkItem:
    """One block of output rows [row0, row1) of input `input_index`, and its size in pixels (for balancing)."""

    input_index: int
    row0: int
    row1: int
    pixels: int

    @property
    def key(self) -> str:
        return f"{self.input_index:05d}-rows-{self.row0:06d}-{self.row1:06d}"


def end_processes():
    """Ends the process group the ranks share, all together: a rank that exits while a peer still holds the
    group open can make gloo abort that peer. Scripts call it once, at the end (a no-op in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def assign_work(items: Sequence[WorkItem], num_processes: int) -> list[list[WorkItem]]:
    """Deterministic split balanced by pixel count: largest first to the least-loaded rank (ties: lowest rank).

    Many small inputs go out whole, one per item; a large raster arrives as several items of whole tile rows. Each
    rank's items come back in input and row order, so a rank opens each input once.
    """
    loads = [0] * num_processes
    assigned: list[list[WorkItem]] = [[] for _ in range(num_processes)]
    for item in sorted(items, key=lambda it: (-it.pixels, it.input_index, it.row0)):
        rank = min(range(num_processes), key=lambda r: (loads[r], r))
        loads[rank] += item.pixels
        assigned[rank].append(item)
    return [sorted(work, key=lambda it: (it.input_index, it.row0)) for work in assigned]


class ProcessGroup:
    """This process's place among the ranks `accelerate launch` started (one rank under plain `python`)."""

    def __init__(self):
        import torch
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # Unlike Accelerator, PartialState does not read ACCELERATE_USE_CPU: without cpu=True, CPU ranks started
        # by `accelerate launch --multi_gpu` would each think they run alone.
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        self.state = PartialState(cpu=cpu)
        self.index = self.state.process_index
        self.count = self.state.num_processes
        self.is_main = self.state.is_main_process
        self.device = self.state.device

    def share_cpu_threads(self) -> int:
        """On CPU, give each process on this node its share of the cores, so N processes do not oversubscribe."""
        import torch

        if self.device.type != "cpu" or self.count == 1:
            return torch.get_num_threads()
        # torchrun (behind accelerate launch) says how many ranks share this node.
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", self.count))
        threads = max(1, (os.cpu_count() or 1) // local_processes)
        torch.set_num_threads(threads)
        return threads

    def agree(self, step: str, work: Callable[[], object] | None = None):
        """Runs `work` (on this rank), then waits for every rank; raises on every rank when any rank failed.

        A plain barrier would hang the other ranks when one raises, so ranks exchange their outcome instead.
        """
        outcome, result = None, None
        if work is not None:
            try:
                result = work()
            except Exception as error:  # reported to every rank below, then raised again here
                outcome = (type(error).__name__, str(error))
                failure = error
        outcomes = self._gather(outcome)
        failed = [(rank, o) for rank, o in enumerate(outcomes) if o is not None]
        if failed:
            if outcome is not None:
                raise failure
            rank, (kind, message) = failed[0]
            raise ProcessFailure(f"{step} failed on process {rank} ({kind}): {message}", kind)
        return result

    def _gather(self, outcome) -> list:
        if self.count == 1:
            return [outcome]
        import torch.distributed as dist

        gathered = [None] * self.count
        dist.all_gather_object(gathered, outcome)
        return gathered


__all__ = ["ProcessFailure", "ProcessGroup", "WorkItem", "assign_work", "end_processes"]
