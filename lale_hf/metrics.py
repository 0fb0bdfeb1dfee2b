"""Land-cover segmentation metrics from a streamed confusion matrix.

`SegmentationMetrics` accumulates a confusion matrix in torch, on the device of the predictions, batch after batch.
Per-class and macro F1, precision, recall and IoU, mean and overall accuracy are derived from it at the end. The
matrix is additive: summing the matrices of several batches or processes (`reduce`, `merge`) gives exactly the
result of one pass over all the data. `confusion_matrix_per_sample` gives one matrix per sample instead, for
`accelerator.gather_for_metrics`; `metrics_from_confusion_matrix` turns any such matrix into a flat dict of floats.

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
        keep = _counted_pixels(references, self.num_labels, self.ignore_index)
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
        return {
            "num_labels": self.num_labels,
            "ignore_index": self.ignore_index,
            "confusion_matrix": self.confusion_matrix,
        }

    @classmethod
    def from_state_dict(cls, state: dict, id2label: dict | None = None) -> "SegmentationMetrics":
        metrics = cls(state["num_labels"], state["ignore_index"], id2label)
        metrics.confusion_matrix = torch.as_tensor(state["confusion_matrix"], dtype=torch.int64).clone()
        return metrics

    def compute(self) -> dict[str, float]:
        """Flat {name: float} from the counts so far; see `metrics_from_confusion_matrix`."""
        return metrics_from_confusion_matrix(self.confusion_matrix, self.id2label)


def confusion_matrix_per_sample(predictions, references, num_labels: int, ignore_index: int | None = 255):
    """One (K, K) confusion matrix per sample, shape (N, K, K), on the inputs' device.

    For `accelerator.gather_for_metrics`, which drops the samples an uneven last batch repeats across processes:
    summing the gathered matrices counts every sample once. Predictions must be class indices in [0, K) (argmax
    output); `SegmentationMetrics` also takes arbitrary predictions.
    """
    predictions = torch.as_tensor(predictions)
    references = torch.as_tensor(references, device=predictions.device)
    if predictions.shape != references.shape or predictions.dim() < 2:
        raise ValueError(
            f"Expected predictions and references of the same shape (N, ...), got {tuple(predictions.shape)} and "
            f"{tuple(references.shape)}."
        )
    num_samples = predictions.shape[0]
    predictions, references = predictions.reshape(num_samples, -1).long(), references.reshape(num_samples, -1).long()
    if not bool(((predictions >= 0) & (predictions < num_labels)).all()):
        raise ValueError(f"predictions must be class indices in [0, {num_labels}); use SegmentationMetrics otherwise.")
    keep = _counted_pixels(references, num_labels, ignore_index)
    sample = torch.arange(num_samples, device=predictions.device)[:, None].expand_as(references)
    index = (sample * num_labels + references) * num_labels + predictions
    counts = torch.bincount(index[keep], minlength=num_samples * num_labels * num_labels)
    return counts.reshape(num_samples, num_labels, num_labels)


def scores_from_confusion_matrix(confusion_matrix) -> dict:
    """Per-class arrays (`per_category_iou`, `_accuracy`, `_f1`, `_precision`, `_recall`, NaN where undefined) and
    their macro means, from a (K, K) matrix or a (K, K+1) one whose last column counts out-of-range predictions."""
    matrix = torch.as_tensor(confusion_matrix).detach().cpu().double().numpy()
    num_labels = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] not in (num_labels, num_labels + 1):
        raise ValueError(f"Expected a (K, K) or (K, K+1) confusion matrix, got shape {matrix.shape}.")
    true_positives = np.diag(matrix[:, :num_labels])
    predicted = matrix[:, :num_labels].sum(axis=0)
    actual = matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = true_positives / predicted
        recall = true_positives / actual
        iou = true_positives / (actual + predicted - true_positives)
        f1 = 2 * true_positives / (actual + predicted)
    return {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(recall),
        "overall_accuracy": float(true_positives.sum() / actual.sum()) if actual.sum() else float("nan"),
        "macro_f1": _nanmean(f1),
        "macro_precision": _nanmean(precision),
        "macro_recall": _nanmean(recall),
        "per_category_iou": iou,
        "per_category_accuracy": recall,
        "per_category_f1": f1,
        "per_category_precision": precision,
        "per_category_recall": recall,
    }


def metrics_from_confusion_matrix(confusion_matrix, id2label: dict | None = None) -> dict[str, float]:
    """Flat {name: float}, ready for logs and JSON: `macro_f1`, `macro_precision`, `macro_recall`, `mean_iou`,
    `mean_accuracy`, `overall_accuracy`, then `f1_<class>`, `iou_<class>`, `precision_<class>`, `recall_<class>` for
    every class (named by `id2label`, else by index; NaN where undefined, e.g. a class absent from references and
    predictions; macro means leave those out)."""
    scores = scores_from_confusion_matrix(confusion_matrix)
    flat = {name: value for name, value in scores.items() if not name.startswith("per_category")}
    names = {int(k): v for k, v in id2label.items()} if id2label else {}
    for metric in ("f1", "iou", "precision", "recall"):
        for index, value in enumerate(scores[f"per_category_{metric}"]):
            flat[f"{metric}_{names.get(index, index)}"] = float(value)
    return flat


def _counted_pixels(references: torch.Tensor, num_labels: int, ignore_index: int | None) -> torch.Tensor:
    """Mask of the pixels to count: references in [0, K) other than `ignore_index`; any other value is an error."""
    in_range = (references >= 0) & (references < num_labels)
    ignored = references == ignore_index if ignore_index is not None else torch.zeros_like(in_range)
    if not bool((in_range | ignored).all()):
        bad = torch.unique(references[~(in_range | ignored)])[:10].tolist()
        raise ValueError(
            f"references hold values {bad} outside [0, {num_labels}) that are not the ignore index {ignore_index}; "
            "check `num_labels` and `ignore_index`."
        )
    return in_range & ~ignored


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def land_cover_metrics_path() -> str:
    """Path of the `evaluate` module shipped in the package: `evaluate.load(land_cover_metrics_path())` works offline."""
    return str(Path(__file__).parent / "evaluate_modules" / "land_cover_metrics" / "land_cover_metrics.py")


__all__ = [
    "SegmentationMetrics",
    "confusion_matrix_per_sample",
    "land_cover_metrics_path",
    "metrics_from_confusion_matrix",
    "scores_from_confusion_matrix",
]
