"""The report of one or two runs: the JSON document, its markdown tables and the throughput plot."""

import io
import math
import os

from lale_hf.file_utils import write_atomic

from .equal_budget import ACCURACY_KEYS
from .summary import compare_runs, find_series, summarize


def build_report(
    runs: list[dict], accuracy: dict | None = None, reference: str = "lale-tiny", command: str = ""
) -> dict:
    """The JSON document: each run with its summary; with two runs (two allocators), their paired ratios."""
    report = {"command": command, "runs": [{**run, "summary": summarize(run, reference)} for run in runs]}
    report["accuracy"] = accuracy or {}
    report["allocator_comparison"] = None
    if len(runs) == 2:
        first, second = (run["environment"]["allocator"] for run in runs)
        report["allocator_comparison"] = {
            "numerator": second,
            "denominator": first,
            "ratios": compare_runs(runs[1], runs[0]),
        }
    return report


def _fmt_load(run: dict) -> str:
    load = run.get("load_average") or {}
    values = [load.get(k) for k in ("before_timing", "after_timing")]
    return "unknown" if None in values else f"{values[0]:.1f} before timing, {values[1]:.1f} after"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def _ratio_cell(ratio: dict | None) -> str:
    return "-" if ratio is None else f"{ratio['median']:.2f}x [{ratio['min']:.2f}, {ratio['max']:.2f}]"


def _results_table(run: dict, dtype: str, accuracy: dict) -> list[str]:
    settings, summary = run["settings"], run["summary"]
    batches, train_batch = settings["inference_batch_sizes"], settings["train_batch_size"]
    largest = max(batches)
    header = [
        "model",
        "params (M)",
        "fp32 safetensors (MB)",
        "GMACs",
        *(f"eager b{b}" for b in batches),
        f"train b{train_batch}",
        f"best path b{largest}",
        f"% of peak, eager / best b{largest}",
        f"peak memory, infer b{largest} / train (MB)",
    ]
    if accuracy:
        header += ["macro F1 (%)", "mIoU (%)"]
    rows = []
    for model in settings["models"]:
        info = run["models"][model]

        def speed(measure, batch_size, model=model):
            series = find_series(run, measure, model, dtype, batch_size)
            return "-" if series is None else f"{series['median']:.1f}"

        best = find_series(run, "inference/best", model, dtype, largest)
        fraction = {
            f["measure"]: 100 * f["median"]
            for f in summary["peak_fractions"]
            if (f["model"], f["dtype"], f["batch_size"]) == (model, dtype, largest)
        }
        memory = info["peak_memory_mb"]
        row = [
            model,
            f"{info['params'] / 1e6:.3f}",
            f"{info['safetensors_bytes'] / 1e6:.2f}",
            f"{info['gmacs']:.3f}",
            *(speed("inference/eager", b) for b in batches),
            speed("train/eager", train_batch),
            f"{best['median']:.1f} ({best['path']})" if best else "-",
            " / ".join(f"{fraction[m]:.0f}" if m in fraction else "-" for m in ("inference/eager", "inference/best")),
            f"{memory[f'{dtype}/inference_b{largest}']:.0f} / {memory[f'{dtype}/train_b{train_batch}']:.0f}",
        ]
        if accuracy:
            scores = accuracy.get(model)
            row += [f"{100 * scores[k]:.2f}" if scores else "-" for k in ACCURACY_KEYS]
        rows.append(row)
    return _table(header, rows)


def _paths_table(run: dict, dtype: str) -> list[str]:
    batches = run["settings"]["inference_batch_sizes"]
    speedups = {
        (s["model"], s["path"], s["batch_size"]): s for s in run["summary"]["path_speedups"] if s["dtype"] == dtype
    }
    records = {}
    for record in run["measurements"]:
        if record["dtype"] == dtype and record["mode"] == "inference":
            records.setdefault((record["model"], record["path"]), []).append(record)
    rows = []
    for (model, path), group in records.items():
        cells = []
        for record in group:
            if record["status"] != "ok" or "samples" not in record:
                cells.append(f"{record['status']}: {record['detail'][:80]}" if record["detail"] else record["status"])
            else:
                gain = speedups.get((model, path, record["batch_size"]))
                cells.append(f"{record['median']:.1f}" + (f" ({_ratio_cell(gain)})" if gain else ""))
        errors = [r["max_relative_error"] for r in group if r["max_relative_error"] is not None]
        seconds = [r["first_call_seconds"] for r in group if r["first_call_seconds"] is not None]
        rows.append(
            [model, path, *cells, f"{max(errors):.1e}" if errors else "-", f"{sum(seconds):.1f}" if seconds else "-"]
        )
    return _table(["model", "path", *(f"b{b}" for b in batches), "max rel. error", "first calls (s)"], rows)


def render_markdown(report: dict) -> str:
    """The report as markdown: per run and dtype the results, the paired ratios and the paths; targets; allocators."""
    lines = ["# LALE efficiency benchmark", ""]
    if report["command"]:
        lines += [f"`{report['command']}`", ""]
    for run in report["runs"]:
        env, settings, summary = run["environment"], run["settings"], run["summary"]
        lines += [
            f"## {env['device']}, {env['threads']} threads, allocator {env['allocator']}, {env['date'][:10]}",
            "",
            f"torch {env['torch']}, transformers {env['transformers']}, onnxruntime {env['onnxruntime']}. "
            f"Random weights, {settings['image_size']}x{settings['image_size']} inputs, 7 classes; "
            f"{settings['rounds']} interleaved rounds, medians. Throughput in images/s. GMACs = FLOPs / 2 (torch's "
            f"FLOP counter). Run time {run['wall_seconds'] / 60:.1f} min, "
            f"of which setup {run['setup_seconds'] / 60:.1f}. "
            f"1-minute load average {_fmt_load(run)} on {env['logical_cpus']} logical CPUs (this run included); "
            f"process peak RSS {run.get('peak_rss_mb', math.nan):.0f} MB.",
            "",
        ]
        for dtype in settings["dtypes"]:
            peak = run["matmul_peak"][dtype]
            lines += [f"### {dtype}; matmul peak {peak['median']:.0f} GFLOP/s (size {peak['size']}, same run)", ""]
            lines += _results_table(run, dtype, report["accuracy"])
            ratios = [r for r in summary["ratios"] if r["dtype"] == dtype]
            if ratios:
                columns = [
                    (m, b)
                    for m in ("inference/eager", "inference/best", "train/eager")
                    for b in sorted({r["batch_size"] for r in ratios if r["measure"] == m})
                ]
                cells = {(r["denominator"], r["measure"], r["batch_size"]): r for r in ratios}
                lines += [f"{summary['reference']} over each model, ratio of paired rounds: median [min, max]", ""]
                lines += _table(
                    ["model", *(f"{m.replace('inference/', '').replace('/eager', '')} b{b}" for m, b in columns)],
                    [
                        [model, *(_ratio_cell(cells.get((model, *c))) for c in columns)]
                        for model in settings["models"]
                        if model != summary["reference"]
                    ],
                )
            lines += ["Deployment paths: images/s (paired speed-up over eager), max error relative to eager fp32", ""]
            lines += _paths_table(run, dtype)
        if summary["targets"]:
            lines += ["### Targets (fp32)", ""]
            lines += _table(
                ["target", "measured", "required", "met"],
                [
                    [
                        t["name"],
                        f"{t['value']:.3f}",
                        " and ".join(f"{op} {v}" for op, v in ((">=", t["min"]), ("<=", t["max"])) if v is not None),
                        "yes" if t["met"] else "**no**",
                    ]
                    for t in summary["targets"]
                ],
            )
    comparison = report["allocator_comparison"]
    if comparison:
        lines += [
            f"## Allocator: {comparison['numerator']} over {comparison['denominator']}",
            "",
            "The two processes took turns group by group (lockstep); each ratio pairs the samples of one round.",
            "",
        ]
        lines += _table(
            ["model", "dtype", "workload", "ratio"],
            [
                [r["model"], r["dtype"], f"{r['mode']} {r['path']} b{r['batch_size']}", _ratio_cell(r)]
                for r in comparison["ratios"]
            ],
        )
    return "\n".join(lines)


def primary_run(report: dict) -> dict:
    """The run to plot: where the reference model's eager throughput was highest (the faster allocator)."""

    def reference_speed(run):
        settings = run["settings"]
        largest = max(settings["inference_batch_sizes"])
        series = find_series(run, "inference/eager", run["summary"]["reference"], settings["dtypes"][0], largest)
        return series["median"] if series else 0.0

    return max(report["runs"], key=reference_speed)


def plot_report(report: dict, path: str | os.PathLike):
    """Throughput against GMACs, bubble area by parameters; a macro F1 panel when accuracy was given."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = primary_run(report)
    settings, env, accuracy = run["settings"], run["environment"], report["accuracy"]
    dtype, largest = settings["dtypes"][0], max(settings["inference_batch_sizes"])
    figure, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(13 if accuracy else 7.5, 5.5), squeeze=False)
    speed_axis, accuracy_axis = axes[0, 0], axes[0, -1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for idx, model in enumerate(settings["models"]):
        info, color = run["models"][model], colors[idx % len(colors)]
        area = 60 * info["params"] / 1e6
        eager = find_series(run, "inference/eager", model, dtype, largest)
        best = find_series(run, "inference/best", model, dtype, largest)
        if eager is None:
            continue
        speed_axis.scatter(info["gmacs"], eager["median"], s=area, color=color, alpha=0.6, label=model)
        if best is not None and best["path"] != "eager":
            speed_axis.scatter(info["gmacs"], best["median"], s=area, facecolors="none", edgecolors=color)
            speed_axis.plot([info["gmacs"]] * 2, [eager["median"], best["median"]], color=color, lw=0.8, ls=":")
        if accuracy and model in accuracy:
            point = ((best or eager)["median"], 100 * accuracy[model]["eval_macro_f1"])
            accuracy_axis.scatter(*point, s=area, color=color, alpha=0.6)
            accuracy_axis.annotate(model, point, fontsize=8, xytext=(4, 4), textcoords="offset points")
    speed_axis.set(
        xscale="log",
        yscale="log",
        xlabel=f"GMACs per {settings['image_size']}x{settings['image_size']} image (FLOPs / 2)",
        ylabel=f"inference images/s, batch {largest}, {dtype}",
        title=f"filled: eager, ring: best path; area ~ parameters\n{env['device']}, {env['threads']} threads, "
        f"{env['allocator']}, {env['date'][:10]}",
    )
    speed_axis.legend(fontsize=8, markerscale=0.5)
    if accuracy:
        accuracy_axis.set(
            xscale="log",
            xlabel=f"best-path images/s, batch {largest}",
            ylabel="macro F1 (%)",
            title="accuracy at equal training budget",
        )
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")  # 0.3, not 3x10^-1, on log axes
    # Minor ticks labelled at 2, 3 and 5 only: labels at every one of them overlap between 0.6 and 0.9.
    sparse = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "235" else "")
    for axis in {speed_axis, accuracy_axis}:
        axis.grid(True, which="both", alpha=0.3)
        for ticks in (axis.xaxis, axis.yaxis):
            ticks.set_major_formatter(plain)
            ticks.set_minor_formatter(sparse)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())
