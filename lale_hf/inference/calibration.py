"""How far a map's confidence can be trusted: expected calibration error, reliability diagrams, error detection.

A confidence raster is calibrated when, among the pixels it gives confidence c, a fraction c is classified right.
`ReliabilityBins` counts pixels, summed confidence and correct pixels in 10 equal-width confidence bins
([0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]); like `lale_hf.metrics.SegmentationMetrics` the counts are additive over
batches and processes (`merge`). From them:

- ECE = sum over bins of (pixels in bin / all pixels) * |accuracy in bin - mean confidence in bin|, in [0, 1];
- MCE, the largest of those gaps over non-empty bins;
- the reliability table and diagram (`plot_reliability_diagram`, matplotlib with the Agg backend).

Reference pixels equal to `ignore_index` (255) are left out. Calibration is defined for a probability only; for
other certainty scores (the margin between the two top classes, one minus the normalised entropy) what matters is
whether low values mark the wrong pixels, which `ErrorDetection` measures as the area under the ROC curve of the
score separating correct from wrong pixels, on the 256 levels a uint8 raster stores.
"""

import os
from pathlib import Path

import numpy as np
import torch

from ..file_utils import atomic_path


NUM_CONFIDENCE_BINS = 10
RASTER_LEVELS = 256  # a uint8 confidence raster stores round(score * 255)


def confidence_scores(probabilities: torch.Tensor, dim: int = 1) -> dict[str, torch.Tensor]:
    """Per-pixel certainty scores in [0, 1] from class probabilities (softmax of the logits) along `dim`.

    `top_probability` (the softmax maximum), `margin` (top minus second probability) and `certainty`
    (1 - entropy / log(classes)).
    """
    top_two = probabilities.topk(2, dim=dim).values
    top, second = top_two.select(dim, 0), top_two.select(dim, 1)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=dim)
    certainty = 1 - entropy / np.log(probabilities.shape[dim])
    return {"top_probability": top, "margin": top - second, "certainty": certainty.clamp(0, 1)}


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _kept(references, ignore_index: int | None) -> np.ndarray | None:
    if references is None or ignore_index is None:
        return None
    return _as_numpy(references).reshape(-1) != ignore_index


class ReliabilityBins:
    """Pixel counts, summed confidence and correct pixels per equal-width confidence bin (see the module doc)."""

    def __init__(self, num_bins: int = NUM_CONFIDENCE_BINS):
        if num_bins < 1:
            raise ValueError(f"num_bins must be positive, got {num_bins}.")
        self.num_bins = num_bins
        self.pixels = np.zeros(num_bins, dtype=np.int64)
        self.confidence_sum = np.zeros(num_bins, dtype=np.float64)
        self.correct = np.zeros(num_bins, dtype=np.int64)

    def update(self, confidence, correct, references=None, ignore_index: int | None = 255) -> "ReliabilityBins":
        """Adds pixels: `confidence` in [0, 1] and `correct` (bool) of the same shape; where `references` (same
        shape) equals `ignore_index` the pixel is skipped."""
        confidence = _as_numpy(confidence).reshape(-1).astype(np.float64)
        correct = _as_numpy(correct).reshape(-1).astype(bool)
        if confidence.shape != correct.shape:
            raise ValueError(f"confidence has {confidence.size} values but correct {correct.size}.")
        keep = _kept(references, ignore_index)
        if keep is not None:
            if keep.shape != confidence.shape:
                raise ValueError(f"references have {keep.size} values but confidence {confidence.size}.")
            confidence, correct = confidence[keep], correct[keep]
        if confidence.size and (np.nanmin(confidence) < 0 or np.nanmax(confidence) > 1 or np.isnan(confidence).any()):
            raise ValueError("confidence values must lie in [0, 1].")
        # Left-closed bins; confidence 1.0 falls in the last one. Values are binned as given: a float32 0.7 is
        # 0.69999999 and falls in [0.6, 0.7).
        bins = np.minimum((confidence * self.num_bins).astype(np.int64), self.num_bins - 1)
        self.pixels += np.bincount(bins, minlength=self.num_bins)
        self.confidence_sum += np.bincount(bins, weights=confidence, minlength=self.num_bins)
        self.correct += np.bincount(bins, weights=correct, minlength=self.num_bins).astype(np.int64)
        return self

    def update_from_probabilities(
        self, probabilities: torch.Tensor, references, ignore_index: int | None = 255, dim: int = 1
    ) -> "ReliabilityBins":
        """Adds the top-class probability and whether its class is the reference, for probabilities (N, C, H, W)
        (class axis `dim`) and references (N, H, W)."""
        confidence, predictions = probabilities.max(dim=dim)
        correct = predictions.cpu() == torch.as_tensor(references).cpu()
        return self.update(confidence, correct, references, ignore_index)

    def merge(self, other: "ReliabilityBins") -> "ReliabilityBins":
        if other.num_bins != self.num_bins:
            raise ValueError(f"Cannot merge {other.num_bins} bins into {self.num_bins}.")
        self.pixels += other.pixels
        self.confidence_sum += other.confidence_sum
        self.correct += other.correct
        return self

    def _gaps(self) -> np.ndarray:
        filled = np.maximum(self.pixels, 1)
        return np.abs(self.correct / filled - self.confidence_sum / filled)

    def expected_calibration_error(self) -> float:
        total = self.pixels.sum()
        if total == 0:
            raise ValueError("no pixels counted: the expected calibration error is undefined.")
        return float((self.pixels / total * self._gaps()).sum())

    def maximum_calibration_error(self) -> float:
        if not self.pixels.any():
            raise ValueError("no pixels counted: the maximum calibration error is undefined.")
        return float(self._gaps()[self.pixels > 0].max())

    def table(self) -> list[dict]:
        """One row per bin: bounds, pixels, share of pixels, mean confidence and accuracy (None when empty)."""
        total = max(int(self.pixels.sum()), 1)
        rows = []
        for index in range(self.num_bins):
            pixels = int(self.pixels[index])
            rows.append(
                {
                    "lower": index / self.num_bins,
                    "upper": (index + 1) / self.num_bins,
                    "pixels": pixels,
                    "share": pixels / total,
                    "mean_confidence": float(self.confidence_sum[index] / pixels) if pixels else None,
                    "accuracy": float(self.correct[index] / pixels) if pixels else None,
                }
            )
        return rows

    def to_dict(self) -> dict:
        return {
            "num_bins": self.num_bins,
            "pixels": int(self.pixels.sum()),
            "accuracy": float(self.correct.sum() / max(self.pixels.sum(), 1)),
            "mean_confidence": float(self.confidence_sum.sum() / max(self.pixels.sum(), 1)),
            "ece": self.expected_calibration_error(),
            "mce": self.maximum_calibration_error(),
            "bins": self.table(),
        }


def expected_calibration_error(
    confidence, correct, references=None, ignore_index: int | None = 255, num_bins: int = NUM_CONFIDENCE_BINS
) -> float:
    """ECE of one set of pixels (see the module doc)."""
    return ReliabilityBins(num_bins).update(confidence, correct, references, ignore_index).expected_calibration_error()


class ErrorDetection:
    """How well a certainty score separates correct from wrong pixels: ROC AUC from histograms of the score
    quantised as a uint8 raster stores it (round(score * 255)), additive like `ReliabilityBins`.

    AUC = P(score of a random correct pixel > score of a random wrong one) + P(equal) / 2. 0.5 is no better than
    chance, 1.0 puts every wrong pixel below every correct one.
    """

    def __init__(self):
        self.correct_counts = np.zeros(RASTER_LEVELS, dtype=np.int64)
        self.wrong_counts = np.zeros(RASTER_LEVELS, dtype=np.int64)

    def update(self, score, correct, references=None, ignore_index: int | None = 255) -> "ErrorDetection":
        score = _as_numpy(score).reshape(-1).astype(np.float64)
        correct = _as_numpy(correct).reshape(-1).astype(bool)
        keep = _kept(references, ignore_index)
        if keep is not None:
            score, correct = score[keep], correct[keep]
        levels = np.clip(np.rint(score * (RASTER_LEVELS - 1)), 0, RASTER_LEVELS - 1).astype(np.int64)
        self.correct_counts += np.bincount(levels[correct], minlength=RASTER_LEVELS)
        self.wrong_counts += np.bincount(levels[~correct], minlength=RASTER_LEVELS)
        return self

    def merge(self, other: "ErrorDetection") -> "ErrorDetection":
        self.correct_counts += other.correct_counts
        self.wrong_counts += other.wrong_counts
        return self

    def auroc(self) -> float:
        correct_total, wrong_total = self.correct_counts.sum(), self.wrong_counts.sum()
        if correct_total == 0 or wrong_total == 0:
            return float("nan")  # undefined without both kinds of pixels
        wrong_below = np.cumsum(self.wrong_counts) - self.wrong_counts  # wrong pixels at strictly lower levels
        pairs = (self.correct_counts * (wrong_below + self.wrong_counts / 2)).sum()
        return float(pairs / (correct_total * wrong_total))


def plot_reliability_diagram(
    curves: dict[str, ReliabilityBins], path: str | os.PathLike, title: str = "Reliability diagram"
) -> Path:
    """A PNG with, per named curve, accuracy against mean confidence per bin (above, with the diagonal of perfect
    calibration and each curve's ECE in the legend) and the share of pixels per bin (below). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("plot_reliability_diagram needs at least one curve.")
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    num_curves = len(curves)
    for index, (name, bins) in enumerate(curves.items()):
        filled = bins.pixels > 0
        confidence = bins.confidence_sum[filled] / bins.pixels[filled]
        accuracy = bins.correct[filled] / bins.pixels[filled]
        label = f"{name} (ECE {100 * bins.expected_calibration_error():.1f}%)"
        (line,) = top.plot(confidence, accuracy, marker="o", markersize=4, label=label)
        width = 1 / bins.num_bins / num_curves
        lefts = np.arange(bins.num_bins) / bins.num_bins + index * width
        bottom.bar(lefts, bins.pixels / max(bins.pixels.sum(), 1), width=width, align="edge", color=line.get_color())
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy in bin", title=title)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set(xlabel="confidence (top-class probability), 10 bins", ylabel="share of pixels")
    bottom.grid(alpha=0.3)
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
    return path


__all__ = [
    "NUM_CONFIDENCE_BINS",
    "ErrorDetection",
    "ReliabilityBins",
    "confidence_scores",
    "expected_calibration_error",
    "plot_reliability_diagram",
]
