#!/usr/bin/env python
"""Test-time augmentation and calibration on real patches: what `--tta none|flip|d4` buys and costs.

Each 256x256 validation patch is one tile, so its whole-image logits are the prediction pipeline's logits: they are
computed through `lale_hf.inference.TestTimeAugmentation` (over the checkpoint's `TorchPredictor`, channels-last as
`predict.py` runs it), upsampled bilinearly to the labels (as the pipeline does) and scored with
`lale_hf.metrics.SegmentationMetrics` (macro F1, mIoU). From the softmax of the same logits:

- the expected calibration error over 10 equal-width bins of the top-class probability (what `--save_confidence`
  stores), its maximum (MCE), and a reliability diagram;
- how well three certainty scores (top-class probability, margin between the two top classes, 1 - normalised
  entropy), quantised to the 256 levels of a uint8 raster, separate right from wrong pixels (ROC AUC).

Time: the logits of the first `--timing_patches` patches per mode, in interleaved rounds (the mode order rotates
each round), as seconds per megapixel (the fastest round: on a shared machine the least disturbed) and as a ratio to
`none` paired within each round (median over rounds). Every number is given per checkpoint and as mean ± std over
the checkpoints (seeds); the differences to `none` are paired seed by seed.

The measurement in docs/map-products.md (checkpoints of benchmarks/benchmark_accuracy.py, see docs/accuracy.md):
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4 python benchmarks/benchmark_tta.py --threads 1 \\
      --json docs/reliability-2026-11-30.json --plot docs/reliability-2026-11-30.png
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lale_hf.file_utils import write_atomic
from lale_hf.image_processing_lale import color_mask_to_label_map
from lale_hf.inference import InferenceError, TestTimeAugmentation, load_predictor
from lale_hf.inference.calibration import ErrorDetection, ReliabilityBins, confidence_scores, plot_reliability_diagram
from lale_hf.inference.tta import TTA_MODES
from lale_hf.metrics import SegmentationMetrics


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "s2glc-sample" / "val"
DEFAULT_MODELS = [REPO_ROOT / "outputs" / "accuracy" / "lale-tiny" / f"seed-{seed}" / "steps-600" for seed in range(3)]
SCORES = ("top_probability", "margin", "certainty")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA), help="A folder with images/ and masks/ (ARAS PNGs).")
    parser.add_argument("--models", nargs="+", default=[str(path) for path in DEFAULT_MODELS])
    parser.add_argument("--modes", nargs="+", default=list(TTA_MODES), choices=TTA_MODES)
    parser.add_argument("--batch_size", type=int, default=8, help="Tiles per call (TTA multiplies the images).")
    parser.add_argument("--rounds", type=int, default=5, help="Timing rounds (modes take turns).")
    parser.add_argument("--timing_patches", type=int, default=16, help="Patches timed per round.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max_patches", type=int, help="Only the first N patches (for a quick check).")
    parser.add_argument("--json", help="Write the results here.")
    parser.add_argument("--plot", help="Write the reliability diagram (all checkpoints pooled) here, as PNG.")
    return parser.parse_args()


def load_patches(data_dir: Path, max_patches: int | None) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    images = sorted((data_dir / "images").glob("*.png"))[:max_patches]
    if not images:
        raise FileNotFoundError(f"--data_dir {data_dir}: no images/*.png.")
    rgb, labels = [], []
    for path in images:
        mask_path = data_dir / "masks" / path.name
        if not mask_path.is_file():
            raise FileNotFoundError(f"{mask_path}: the mask of {path.name} is missing.")
        rgb.append(np.asarray(Image.open(path).convert("RGB")))
        labels.append(color_mask_to_label_map(Image.open(mask_path), unknown_to_ignore=True, source=str(mask_path)))
    return [path.stem for path in images], rgb, np.stack(labels)


def logits_of(tta: TestTimeAugmentation, pixel_values: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    return [tta(pixel_values[start : start + batch_size]) for start in range(0, len(pixel_values), batch_size)]


def evaluate(tta, pixel_values, labels, batch_size, id2label) -> tuple[dict, ReliabilityBins]:
    metrics = SegmentationMetrics(len(id2label), ignore_index=255, id2label=id2label)
    bins = ReliabilityBins()
    detection = {score: ErrorDetection() for score in SCORES}
    for start, logits in zip(range(0, len(labels), batch_size), logits_of(tta, pixel_values, batch_size)):
        references = torch.from_numpy(labels[start : start + len(logits)]).long()
        upsampled = torch.nn.functional.interpolate(
            logits, size=references.shape[-2:], mode="bilinear", align_corners=False
        )
        probabilities = upsampled.softmax(dim=1)
        predictions = probabilities.argmax(dim=1)
        metrics.update(predictions, references)
        correct = predictions == references
        bins.update_from_probabilities(probabilities, references)
        for name, score in confidence_scores(probabilities).items():
            detection[name].update(score, correct, references)
    scores = metrics.compute()
    result = {"macro_f1": scores["macro_f1"], "mean_iou": scores["mean_iou"]}
    calibration = bins.to_dict()
    result.update(
        ece_top_probability=calibration["ece"],
        mce_top_probability=calibration["mce"],
        mean_confidence=calibration["mean_confidence"],
        pixel_accuracy=calibration["accuracy"],
        reliability_bins=calibration["bins"],
    )
    result.update({f"auroc_{name}": detection[name].auroc() for name in SCORES})
    return result, bins


def time_modes(ttas: dict, pixel_values, batch_size, rounds) -> tuple[dict, dict]:
    """Wall-clock and process CPU seconds for the patches per mode and round; the order of the modes rotates from
    round to round. CPU seconds (all threads of this process) barely depend on what else the machine runs; wall
    seconds do."""
    names = list(ttas)
    for name in names:  # warm-up: allocator, oneDNN primitives for each batch shape
        logits_of(ttas[name], pixel_values[:batch_size], batch_size)
    seconds, cpu_seconds = {name: [] for name in names}, {name: [] for name in names}
    for round_index in range(rounds):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            start, cpu_start = time.perf_counter(), time.process_time()
            logits_of(ttas[name], pixel_values, batch_size)
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
    return seconds, cpu_seconds


def mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render_table(report: dict) -> str:
    lines = [
        "| tta | macro F1 | mIoU | ECE (top prob.) | MCE | AUROC top prob. | AUROC margin | AUROC 1-entropy "
        "| Δ F1 vs none | CPU s / Mpx | CPU time vs none | wall s / Mpx | wall time vs none |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def points(entry, scale=100.0, digits=1):
        return f"{scale * entry['mean']:.{digits}f} ± {scale * entry['std']:.{digits}f}"

    for mode, entry in report["modes"].items():
        lines.append(
            f"| {mode} | {points(entry['macro_f1'])} | {points(entry['mean_iou'])} "
            f"| {points(entry['ece_top_probability'])} | {points(entry['mce_top_probability'])} "
            f"| {points(entry['auroc_top_probability'], 1, 3)} | {points(entry['auroc_margin'], 1, 3)} "
            f"| {points(entry['auroc_certainty'], 1, 3)} | {points(entry['macro_f1_minus_none'], 100, 2)} "
            f"| {points(entry['cpu_seconds_per_mpx'], 1, 2)} | {points(entry['cpu_ratio_vs_none'], 1, 2)}x "
            f"| {points(entry['seconds_per_mpx'], 1, 2)} | {points(entry['time_ratio_vs_none'], 1, 2)}x |"
        )
    return "\n".join(lines)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    names, rgb, labels = load_patches(Path(args.data_dir), args.max_patches)
    megapixels = len(rgb) * rgb[0].shape[0] * rgb[0].shape[1] / 1e6
    per_model, pooled = [], {mode: ReliabilityBins() for mode in args.modes}
    for model in args.models:
        predictor = load_predictor(model)
        pixel_values = np.stack([predictor.normalize(image) for image in rgb])
        ttas = {mode: TestTimeAugmentation(predictor, mode) for mode in args.modes}
        entry = {"model": str(model), "modes": {}}
        for mode, tta in ttas.items():
            result, bins = evaluate(tta, pixel_values, labels, args.batch_size, predictor.id2label)
            pooled[mode].merge(bins)
            entry["modes"][mode] = result
        timed = pixel_values[: args.timing_patches]
        seconds, cpu_seconds = time_modes(ttas, timed, args.batch_size, args.rounds)
        timed_megapixels = megapixels * len(timed) / len(pixel_values)
        for mode in args.modes:
            entry["modes"][mode]["seconds"] = seconds[mode]
            entry["modes"][mode]["seconds_per_mpx"] = min(seconds[mode]) / timed_megapixels
            entry["modes"][mode]["cpu_seconds"] = cpu_seconds[mode]
            entry["modes"][mode]["cpu_seconds_per_mpx"] = statistics.median(cpu_seconds[mode]) / timed_megapixels
            if "none" in seconds:
                ratios = [mode_s / none_s for mode_s, none_s in zip(seconds[mode], seconds["none"])]
                entry["modes"][mode]["time_ratio_vs_none"] = statistics.median(ratios)
                entry["modes"][mode]["fastest_ratio_vs_none"] = min(seconds[mode]) / min(seconds["none"])
                cpu_ratios = [mode_s / none_s for mode_s, none_s in zip(cpu_seconds[mode], cpu_seconds["none"])]
                entry["modes"][mode]["cpu_ratio_vs_none"] = statistics.median(cpu_ratios)
                for key in ("macro_f1", "mean_iou", "ece_top_probability"):
                    entry["modes"][mode][f"{key}_minus_none"] = entry["modes"][mode][key] - entry["modes"]["none"][key]
        per_model.append(entry)
        print(f"{model}: " + ", ".join(f"{m} F1 {100 * r['macro_f1']:.1f}" for m, r in entry["modes"].items()))
    aggregate_keys = [
        "macro_f1",
        "mean_iou",
        "ece_top_probability",
        "mce_top_probability",
        "auroc_top_probability",
        "auroc_margin",
        "auroc_certainty",
        "seconds_per_mpx",
        "time_ratio_vs_none",
        "fastest_ratio_vs_none",
        "cpu_seconds_per_mpx",
        "cpu_ratio_vs_none",
        "macro_f1_minus_none",
        "mean_iou_minus_none",
        "ece_top_probability_minus_none",
    ]
    modes = {
        mode: {
            key: mean_std([entry["modes"][mode][key] for entry in per_model])
            for key in aggregate_keys
            if key in per_model[0]["modes"][mode]
        }
        for mode in args.modes
    }
    for mode in args.modes:
        modes[mode]["pooled_reliability"] = pooled[mode].to_dict()
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "data_dir": str(args.data_dir),
        "num_patches": len(rgb),
        "num_pixels": int(labels.size),
        "patches": names,
        "machine": {
            "cpu": cpu_name(),
            "threads": args.threads,
            "torch": torch.__version__,
            "ld_preload": os.environ.get("LD_PRELOAD", ""),
        },
        "settings": {
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "timing_patches": min(args.timing_patches, len(rgb)),
            "modes": args.modes,
        },
        "modes": modes,
        "per_model": per_model,
    }
    table = render_table(report)
    print(table)
    if args.plot:
        title = f"lale-tiny on {len(rgb)} real val patches, {len(args.models)} checkpoint(s) pooled"
        plot_reliability_diagram({f"tta {mode}": pooled[mode] for mode in args.modes}, args.plot, title=title)
        report["plot"] = str(args.plot)
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (InferenceError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
