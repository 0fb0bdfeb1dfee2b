"""The evaluation loop (each sample counted once across processes) and its confusion-matrix plot."""

import io
import logging
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from ..file_utils import write_atomic


logger = logging.getLogger(__name__)


def json_ready(results: dict) -> dict:
    """Results with NaN (a score undefined for a class absent from the data) as null, for strict JSON."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in results.items()}


def save_confusion_matrix_plot(confusion_matrix, id2label: dict[int, str], path: str | os.PathLike):
    """Row-normalised confusion matrix (rows: reference, columns: prediction) as a PNG, written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'lale-hf[train]'): no confusion-matrix plot.")
        return
    counts = np.asarray(confusion_matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    names = [id2label[i] for i in range(len(id2label))]
    # metrics.py keeps one extra column for predictions outside the label set.
    columns = names + ["outside"] * (counts.shape[1] - len(names))
    figure, axes = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.75 + 0.7 * len(names)), dpi=120)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), share in np.ndenumerate(shares):
        if rows[row, 0] > 0:
            axes.text(
                column,
                row,
                f"{share:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share > 0.5 else "black",
            )
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), [f"{n} ({int(r)} px)" for n, r in zip(names, rows[:, 0])])
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    axes.set_title("Confusion matrix (rows sum to 1)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


@torch.no_grad()
def evaluate(model, dataloader, accelerator, id2label: dict[int, str], ignore_index: int = 255) -> dict:
    """Macro F1, mIoU, accuracies and per-class scores over the whole split, each sample counted exactly once.

    Each sample's confusion matrix is gathered with `gather_for_metrics`, which drops the samples that the last,
    uneven batch repeats across processes; the sum is the matrix of one process seeing the whole split.
    """
    from ..metrics import confusion_matrix_per_sample, metrics_from_confusion_matrix

    model.eval()
    num_labels = len(id2label)
    total = torch.zeros(num_labels, num_labels, dtype=torch.int64, device=accelerator.device)
    num_samples = 0
    for batch in tqdm(dataloader, desc="evaluation", leave=False, disable=not accelerator.is_local_main_process):
        logits = model(pixel_values=batch["pixel_values"]).logits
        if logits.shape[-2:] != batch["labels"].shape[-2:]:
            logits = torch.nn.functional.interpolate(
                logits, size=batch["labels"].shape[-2:], mode="bilinear", align_corners=False
            )
        per_sample = confusion_matrix_per_sample(logits.argmax(dim=1), batch["labels"], num_labels, ignore_index)
        per_sample = accelerator.gather_for_metrics(per_sample)
        total += per_sample.sum(dim=0)
        num_samples += per_sample.shape[0]
    results = {f"eval_{k}": v for k, v in metrics_from_confusion_matrix(total.cpu(), id2label).items()}
    return {**results, "num_samples": num_samples, "confusion_matrix": total.cpu().tolist()}
