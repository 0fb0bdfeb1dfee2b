"""Atomic training checkpoints: the `step_N` folders and the position in the data that resumes exactly."""

import dataclasses
import json
import os
from pathlib import Path

from ..file_utils import write_atomic


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Finished `step_N` checkpoint folders, oldest first."""
    folders = [p for p in Path(output_dir).glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[5:]))


@dataclasses.dataclass
class TrainingState:
    """What a checkpoint needs beyond accelerate's state to resume exactly: the position in the data."""

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0
    best_macro_f1: float = -1.0
    loss_history: list = dataclasses.field(default_factory=list)
    last_eval: dict | None = None
    eval_history: list = dataclasses.field(default_factory=list)
    learning_rate_last: float | None = None
    budget_timing_start: float = 0.0

    def summary(self) -> dict:
        """What the run did, for `all_results.json`: steps, samples, time, losses, learning rate, evaluations."""
        last_scores = [entry["eval_macro_f1"] for entry in self.eval_history[-5:]]
        return {
            "train_steps": self.completed_steps,
            "train_samples": self.samples_seen,
            "train_runtime_seconds": round(self.train_seconds, 2),
            "train_samples_per_second": round(self.samples_seen / max(self.train_seconds, 1e-9), 3),
            "train_loss_first": self.loss_history[0] if self.loss_history else None,
            "train_loss_last": self.loss_history[-1] if self.loss_history else None,
            "train_loss_history": self.loss_history,
            "final_learning_rate": self.learning_rate_last,
            "eval_history": self.eval_history,
            "eval_macro_f1_spread_last5": (max(last_scores) - min(last_scores)) if last_scores else None,
        }

    def save(self, folder: str | os.PathLike):
        write_atomic(Path(folder) / "training_state.json", json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "TrainingState":
        path = Path(folder) / "training_state.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a training checkpoint of lale-hf: {path.name} is missing.")
        return cls(**json.loads(path.read_text()))
