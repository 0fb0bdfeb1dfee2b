"""The multi-seed comparison as markdown tables and a plot of macro F1 against training cost."""

import io
import os

from lale_hf.file_utils import write_atomic


def _interval(summary: dict, scale: float = 100.0) -> str:
    return (
        f"{summary['mean'] * scale:.1f} ± {summary['std'] * scale:.1f} "
        f"[{summary['ci_low'] * scale:.1f}, {summary['ci_high'] * scale:.1f}]"
    )


def render_markdown(report: dict) -> str:
    """Tables per mode: scores (mean ± std [95% interval], in points), costs, and the paired comparisons."""
    lines = [f"# Multi-seed accuracy comparison ({report['created']})", ""]
    lines += [f"Command: `{report['command']}`", "", f"Machine: {report['machine']}", ""]
    lines += [
        "Scores are in points (x100): mean ± sample std over seeds [95% Student-t interval of the mean]. "
        "Pairs are compared seed by seed (same seed: same data order and augmentation); the interval is that "
        "of the mean paired difference, and p is the paired t-test's.",
        "",
    ]
    if report.get("speeds"):
        lines += [
            "Isolated training speed (images/s, median of interleaved rounds, batch "
            f"{report['settings']['batch_size']}): " + ", ".join(f"{m} {v:.2f}" for m, v in report["speeds"].items()),
            "",
        ]
    for mode, block in report["summary"].items():
        lines += [f"## {mode}", ""]
        lines += [
            "| model | params (M) | inference GMACs (256x256) | steps | train TFLOPs | macro F1 | mIoU | max spread of last 5 evals |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for model, entry in block["models"].items():
            steps = sorted(set(entry["steps"]))
            spread = entry["spread_last5_max"]
            lines.append(
                f"| {model} | {entry['parameters'] / 1e6:.3f} | {entry['inference_gmacs']:.3f} | "
                f"{'/'.join(map(str, steps))} | {sum(entry['train_tflops']) / len(entry['train_tflops']):.1f} | "
                f"{_interval(entry['eval_macro_f1'])} | {_interval(entry['eval_mean_iou'])} | "
                f"{'n/a' if spread is None else f'{spread * 100:.1f}'} |"
            )
        lines += [
            "",
            "| pair (first minus second) | Δ macro F1 [95% CI] | p | Δ mIoU [95% CI] | p |",
            "|---|---|---|---|---|",
        ]
        for pair, scores in block["pairs"].items():
            f1, iou = scores["eval_macro_f1"], scores["eval_mean_iou"]
            lines.append(
                f"| {pair} | {_interval(f1)} | {f1['p_value']:.3f} | {_interval(iou)} | {iou['p_value']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_comparison(report: dict, path: str | os.PathLike):
    """Macro F1 (mean and 95% interval over seeds) against training TFLOPs, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(report["summary"])
    if not modes:
        raise ValueError("no model has finished runs at 2 or more seeds yet: nothing to plot")
    figure, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), dpi=120, squeeze=False)
    for axis, mode in zip(axes[0], modes):
        for model, entry in report["summary"][mode]["models"].items():
            f1 = entry["eval_macro_f1"]
            cost = sum(entry["train_tflops"]) / len(entry["train_tflops"])
            axis.errorbar(
                [cost],
                [f1["mean"] * 100],
                yerr=[[(f1["mean"] - f1["ci_low"]) * 100], [(f1["ci_high"] - f1["mean"]) * 100]],
                fmt="o",
                capsize=4,
                label=model,
            )
            axis.scatter([cost] * len(f1["values"]), [v * 100 for v in f1["values"]], s=10, alpha=0.4)
        axis.set_xlabel("training compute (TFLOPs, forward + backward)")
        axis.set_ylabel("validation macro F1 (points)")
        axis.set_title(f"{mode}: mean and 95% interval over seeds")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomic(path, buffer.getvalue())
