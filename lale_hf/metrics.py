"""Land-cover segmentation metrics from a streamed confusion matrix.

`SegmentationMetrics` accumulates a confusion matrix in torch, on the device of the predictions, batch after batch.
Per-class and macro F1, precision, recall and IoU, mean and overall accuracy are derived from it at the end. The
matrix is additive: summing the matrices of several batches or processes (`reduce`, `merge`) gives exactly the
result of one pass over all the data.

Conventions (those of evaluate's `mean_iou`):
- pixels whose reference is `ignore_index` are skipped; any other reference outside [0, K) is an error;
- a prediction outside [0, K) counts against the reference class (a miss: lower recall and IoU) but as no
  class's prediction (no false positive);
- a class with an undefined score (0/0, e.g. absent from references and predictions) is NaN and left out of the
  macro means, as scikit-learn does with `zero_division=np.nan`.
"""

from pathlib import Path

import numpy as np
import torch


class SegmentationMetrics:
    """Streamed confusion matrix for semantic segmentation with `num_labels` classes.

    Rows are reference classes, columns predicted classes; an extra last column counts predictions outside
    [0, `num_labels`).

    Example:

    ```python
    >>> metrics = SegmentationMetrics(num_labels=7, ignore_index=255)
    >>> for batch in dataloader:
    ...     predictions = model(batch["pixel_values"]).logits.argmax(dim=1)  # upsampled to the label size
    ...     metrics.update(predictions, batch["labels"])
    >>> results = metrics.reduce(accelerator).compute()  # sums over processes first
    ```
    """

    def __init__(self, num_labels: int, ignore_index: int | None = 255, id2label: dict | None = None, device=None):
        if num_labels < 1:
            raise ValueError(f"`num_labels` must be positive, got {num_labels}.")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.id2label = {int(k): v for k, v in id2label.items()} if id2label else None
        self.confusion_matrix = torch.zeros(num_labels, num_labels + 1, dtype=torch.int64, device=device)

    def update(self, predictions, references) -> "SegmentationMetrics":
        """Adds a batch: integer class maps of the same shape (tensors or arrays; any shape, e.g. (N, H, W)).

        The matrix moves to the predictions' device on the first update, so counting happens where the model ran.
        """
        predictions = torch.as_tensor(predictions)
        references = torch.as_tensor(references, device=predictions.device)
        if predictions.shape != references.shape:
            raise ValueError(
                f"predictions have shape {tuple(predictions.shape)} but references {tuple(references.shape)}; pass "
                "class-index maps of the same size (argmax the logits and upsample them to the label size first)."
            )
        if predictions.is_floating_point() or references.is_floating_point():
            raise ValueError("predictions and references must be integer class indices, not floats or logits.")
        if self.confusion_matrix.device != predictions.device:
            self.confusion_matrix = self.confusion_matrix.to(predictions.device)
        predictions, references = predictions.reshape(-1).long(), references.reshape(-1).long()
        keep = (references >= 0) & (references < self.num_labels)
        ignored = references == self.ignore_index if self.ignore_index is not None else torch.zeros_like(keep)
        if not bool((keep | ignored).all()):
            bad = torch.unique(references[~(keep | ignored)])[:10].tolist()
            raise ValueError(
                f"references hold values {bad} outside [0, {self.num_labels}) that are not the ignore index "
                f"{self.ignore_index}; check `num_labels` and `ignore_index`."
            )
        keep &= ~ignored
        predictions, references = predictions[keep], references[keep]
        columns = self.num_labels + 1
        predictions = torch.where((predictions >= 0) & (predictions < self.num_labels), predictions, self.num_labels)
        counts = torch.bincount(references * columns + predictions, minlength=self.num_labels * columns)
        self.confusion_matrix += counts.reshape(self.num_labels, columns)
        return self

    def reset(self):
        self.confusion_matrix.zero_()

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Adds another instance's counts (e.g. computed in another process) to this one."""
        if other.confusion_matrix.shape != self.confusion_matrix.shape:
            raise ValueError(
                f"Cannot merge metrics over {other.num_labels} classes into metrics over {self.num_labels} classes."
            )
        self.confusion_matrix += other.confusion_matrix.to(self.confusion_matrix.device)
        return self

    def reduce(self, accelerator=None) -> "SegmentationMetrics":
        """A copy whose matrix is summed over all processes (this instance is left as is, so it cannot be counted
        twice): through `accelerator.reduce` when an Accelerator is given, else `torch.distributed` when
        initialised; a plain copy in a single process."""
        reduced = SegmentationMetrics(self.num_labels, self.ignore_index, self.id2label)
        matrix = self.confusion_matrix.clone()
        if accelerator is not None:
            matrix = accelerator.reduce(matrix, reduction="sum")
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(matrix, op=torch.distributed.ReduceOp.SUM)
        reduced.confusion_matrix = matrix
        return reduced

    def state_dict(self) -> dict:
        return {"num_labels": self.num_labels, "ignore_index": self.ignore_index, "confusion_matrix": self.confusion_matrix}

    @classmethod
    def from_state_dict(cls, state: dict, id2label: dict | None = None) -> "SegmentationMetrics":
        metrics = cls(state["num_labels"], state["ignore_index"], id2label)
        metrics.confusion_matrix = torch.as_tensor(state["confusion_matrix"], dtype=torch.int64).clone()
        return metrics

    def compute(self) -> dict:
        """Metrics from the counts so far: floats, and NumPy arrays of shape (K,) for the per-class ones."""
        matrix = self.confusion_matrix.detach().cpu().double().numpy()
        true_positives = np.diag(matrix[:, : self.num_labels])
        predicted = matrix[:, : self.num_labels].sum(axis=0)
        actual = matrix.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = true_positives / predicted
            recall = true_positives / actual
            iou = true_positives / (actual + predicted - true_positives)
            f1 = 2 * true_positives / (actual + predicted)
            overall_accuracy = true_positives.sum() / actual.sum() if actual.sum() else float("nan")
        return {
            "mean_iou": _nanmean(iou),
            "mean_accuracy": _nanmean(recall),
            "overall_accuracy": float(overall_accuracy),
            "macro_f1": _nanmean(f1),
            "macro_precision": _nanmean(precision),
            "macro_recall": _nanmean(recall),
            "per_category_iou": iou,
            "per_category_accuracy": recall,
            "per_category_f1": f1,
            "per_category_precision": precision,
            "per_category_recall": recall,
        }

    def to_log_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat {name: float} for trackers: the macro scores, then `iou/<class>` and `f1/<class>` per class
        (classes with an undefined score are left out)."""
        results = self.compute()
        flat = {
            f"{prefix}{name}": value
            for name, value in results.items()
            if not name.startswith("per_category") and not np.isnan(value)
        }
        for metric in ("iou", "f1"):
            for index, value in enumerate(results[f"per_category_{metric}"]):
                if not np.isnan(value):
                    label = self.id2label.get(index, str(index)) if self.id2label else str(index)
                    flat[f"{prefix}{metric}/{label}"] = float(value)
        return flat


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def land_cover_metrics_path() -> str:
    """Path of the `evaluate` module shipped in the package: `evaluate.load(land_cover_metrics_path())` works offline."""
    return str(Path(__file__).parent / "evaluate_modules" / "land_cover_metrics" / "land_cover_metrics.py")


__all__ = ["SegmentationMetrics", "land_cover_metrics_path"]
