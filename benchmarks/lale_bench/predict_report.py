"""The prediction benchmark's figures: medians with their [min, max] spread, paired ratios, and markdown tables.

Pixel rates: end to end is scene pixels per second of the whole run. Model alone is the same scene pixels over the
model's time on the scene's tiles, i.e. tiles per second times the scene pixels each tile accounts for
(height x width / tiles; about the grid stride squared, 190.5^2 for 8192^2 at 256-pixel tiles and 64-pixel
overlap, where the stride is 192 and the last tile of each row and column is moved back to the border).
"""

import statistics

from .predict_timing import PairedRun


SENTINEL2_TILE = 10980


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_pairs(run: PairedRun, height: int, width: int) -> dict:
    pixels = height * width
    rounds = run.rounds
    end_to_end = [pixels / sample["end_to_end_s"] / 1e6 for sample in rounds]
    model_alone = [pixels / sample["model_alone_s"] / 1e6 for sample in rounds]
    # Per round: end-to-end rate over model-alone rate, i.e. model-alone seconds over end-to-end seconds.
    ratios = [sample["model_alone_s"] / sample["end_to_end_s"] for sample in rounds]
    inside = [sample["model_in_pipeline_s"] / sample["end_to_end_s"] for sample in rounds]
    median_seconds = statistics.median(sample["end_to_end_s"] for sample in rounds)
    if (height, width) == (SENTINEL2_TILE, SENTINEL2_TILE):
        sentinel2 = {"seconds": median_seconds, "how": "measured (median end-to-end time of this scene)"}
    else:
        rate = statistics.median(end_to_end)
        sentinel2 = {
            "seconds": SENTINEL2_TILE**2 / (rate * 1e6),
            "how": f"extrapolated: 10980^2 px at the median end-to-end rate of the {height}x{width} scene",
        }
    return {
        "backend": run.backend,
        "scene": [height, width],
        "tiles": run.tiles,
        "pixels_per_tile": pixels / run.tiles,
        "batch_sizes": run.batch_sizes,
        "distinct_batches_replayed": run.distinct_batches,
        "end_to_end_mpx_s": spread(end_to_end),
        "model_alone_mpx_s": spread(model_alone),
        "model_alone_tiles_s": spread([run.tiles / sample["model_alone_s"] for sample in rounds]),
        "ratio_end_to_end_over_model": spread(ratios),
        "model_share_inside_pipeline": spread(inside),
        "sentinel2_tile": sentinel2,
        "rounds": rounds,
    }


def summarize_pipeline(run: PairedRun, height: int, width: int) -> dict:
    """The pipeline alone (recorded logits replayed, no model): the end-to-end rate with an infinitely fast model."""
    seconds = [sample["end_to_end_s"] for sample in run.rounds]
    return {
        "what": run.backend,
        "scene": [height, width],
        "mpx_s": spread([height * width / value / 1e6 for value in seconds]),
        "seconds": spread(seconds),
        "rounds": run.rounds,
    }


def _cell(values: dict, digits: int = 2, percent: bool = False) -> str:
    if percent:
        return f"{values['median']:.0%} [{values['min']:.0%}, {values['max']:.0%}]"
    return f"{values['median']:.{digits}f} [{values['min']:.{digits}f}, {values['max']:.{digits}f}]"


def throughput_table(summaries: list[dict], target: float, pipeline: dict | None = None) -> str:
    lines = [
        "| backend | end to end Mpx/s | model alone Mpx/s | end to end / model alone (paired) | target "
        f">= {target:.0%} | model share of end to end | 10980^2 tile |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summaries:
        ratio = row["ratio_end_to_end_over_model"]
        verdict = "met" if ratio["median"] >= target else "not met"
        kind = "measured" if row["sentinel2_tile"]["how"].startswith("measured") else "extrapolated"
        lines.append(
            f"| {row['backend']} | {_cell(row['end_to_end_mpx_s'])} | {_cell(row['model_alone_mpx_s'])} | "
            f"{_cell(ratio, percent=True)} | {verdict} | {_cell(row['model_share_inside_pipeline'], percent=True)} | "
            f"{row['sentinel2_tile']['seconds']:.0f} s ({kind}) |"
        )
    if pipeline is not None:
        lines += [
            "",
            f"Pipeline alone (the recorded logits replayed, no model; the ceiling of end to end): "
            f"{_cell(pipeline['mpx_s'])} Mpx/s, {_cell(pipeline['seconds'])} s per scene.",
        ]
    return "\n".join(lines)


def stage_table(profile: dict) -> str:
    total = profile["total_s"]
    lines = [
        f"Stages of one end-to-end run, {profile['backend']} ({total:.2f} s):",
        "",
        "| stage | seconds | share |",
        "|---|---|---|",
    ]
    for stage, seconds in sorted(profile["stages_s"].items(), key=lambda item: -item[1]):
        lines.append(f"| {stage} | {seconds:.3f} | {seconds / total:.1%} |")
    return "\n".join(lines)


def memory_table(rows: list[dict]) -> str:
    lines = ["| backend | scene | peak RSS MiB | vs smallest scene | seconds |", "|---|---|---|---|---|"]
    for row in rows:
        smallest = min(r["peak_rss_mib"] for r in rows if r["backend"] == row["backend"])
        lines.append(
            f"| {row['backend']} | {row['scene']}x{row['scene']} | {row['peak_rss_mib']:.0f} | "
            f"{row['peak_rss_mib'] / smallest:.3f}x | {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def processes_table(runs: list[dict], pixels: int) -> str:
    base = runs[0]
    lines = [
        "| processes | threads per process | wall s | Mpx/s (scene / wall) | speed vs first row | block loop s (slowest "
        "rank) | merge s (rank 0) | peak RSS per rank MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        rss = ", ".join(f"{rank['peak_rss_mib']:.0f}" for rank in run["ranks"])
        threads = ", ".join(str(count) for count in run["threads_per_process"])
        lines.append(
            f"| {run['processes']} | {threads} | {run['wall_s']:.1f} | {pixels / run['wall_s'] / 1e6:.2f} | "
            f"{base['wall_s'] / run['wall_s']:.2f}x | {run['predict_s']:.1f} | {run['merge_s']:.1f} | {rss} |"
        )
    return "\n".join(lines)


def projection_lines(per_process_mpx_s: float, merge_mpx_s: float, ceiling_mpx_s: float | None, pixels=1e11) -> str:
    """The arithmetic of a continent-sized job from measured rates (Mpx/s)."""
    from .predict_processes import projection

    def hours(seconds):
        return f"{seconds / 3600:.1f} h"

    cpu = projection(pixels, per_process_mpx_s, merge_mpx_s, 64)
    lines = [
        f"- 64 CPU nodes like this one, one process each at the measured {per_process_mpx_s:.2f} Mpx/s per process: "
        f"{pixels:.0e} px / (64 x {per_process_mpx_s:.2f} Mpx/s) = {hours(cpu['predict_s'])}, then the one-COG merge "
        f"on one process at {merge_mpx_s:.1f} Mpx/s: {pixels:.0e} / {merge_mpx_s:.1f} Mpx/s = {hours(cpu['merge_s'])}; "
        f"total {hours(cpu['total_s'])} (`--output_layout tiles` skips the merge's copy).",
    ]
    if ceiling_mpx_s:
        gpu = projection(pixels, ceiling_mpx_s, merge_mpx_s, 8)
        lines.append(
            f"- 8 GPUs: no GPU was measured here. A rank whose model costs nothing runs at the pipeline-alone rate "
            f"measured above, {ceiling_mpx_s:.2f} Mpx/s on these cores, so with such host CPUs: {pixels:.0e} / "
            f"(8 x {ceiling_mpx_s:.2f} Mpx/s) = {hours(gpu['predict_s'])} at best, plus the merge "
            f"{hours(gpu['merge_s'])}; total {hours(gpu['total_s'])}. The host's CPU work, not the GPU, bounds it."
        )
    return "\n".join(lines)
