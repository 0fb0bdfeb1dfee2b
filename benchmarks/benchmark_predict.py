#!/usr/bin/env python
"""Large-scene prediction benchmark: end to end against model alone, paired per round; stages; peak memory.

The scene is a deterministic 16-bit 4-band GeoTIFF mosaic of the real raw patches in s2glc-sample/raw-tif (generated
once into --cache_dir), predicted with --bands 3,2,1 and the default scaling, 256-pixel tiles, 25% overlap. The
model is a randomly initialised LALE-tiny: speed does not depend on the weights. For each backend (eager PyTorch,
compiled PyTorch, ONNX Runtime) every round times the model alone on the exact batches the pipeline feeds it and the
whole pipeline, back to back; ratios are taken within a round, and medians come with their [min, max]. One
end-to-end run per backend is then profiled stage by stage, and `scripts/predict.py` runs in child processes for the
peak RSS of each --memory_sizes scene. See docs/benchmark-predict.md for the method and results.

Examples:
  python benchmarks/benchmark_predict.py                                  # 8192^2, 3 backends, 3 rounds
  python benchmarks/benchmark_predict.py --size 2048 --rounds 1 --memory_sizes
  python benchmarks/benchmark_predict.py --size 10980 --backends compiled  # a full Sentinel-2 tile, measured
  python benchmarks/benchmark_predict.py --model_figures                  # params, GMACs, size of the presets
"""

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

import torch

from lale_bench import model_figures, silence_third_party_noise
from lale_bench.predict_memory import measure_memory
from lale_bench.predict_processes import run_processes
from lale_bench.predict_profile import profile_stages
from lale_bench.predict_report import (
    memory_table,
    processes_table,
    projection_lines,
    stage_table,
    summarize_pairs,
    summarize_pipeline,
    throughput_table,
)
from lale_bench.predict_scene import benchmark_models, cached_scene
from lale_bench.predict_timing import BACKENDS, load_backend, measure_pairs
from lale_hf import LaleConfig, LaleForSemanticSegmentation
from lale_hf.file_utils import write_atomic


REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "s2glc-sample"))
    parser.add_argument("--size", type=int, default=8192, help="Side of the timed scene (2048, 8192, 10980...).")
    parser.add_argument(
        "--memory_sizes", type=int, nargs="*", default=[2048, 8192], help="Scene sides for peak RSS (none: skip)."
    )
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument(
        "--memory_backends", nargs="+", choices=BACKENDS, help="Backends for peak RSS (default: --backends)."
    )
    parser.add_argument(
        "--processes",
        nargs="*",
        default=[],
        help="Process counts for scripts/predict.py, e.g. 1 2; N:T also sets OMP_NUM_THREADS=T (1:1 is one process "
        "on one thread).",
    )
    parser.add_argument("--process_size", type=int, default=2048, help="Scene side for --processes.")
    parser.add_argument("--process_backend", default="eager", choices=BACKENDS, help="Backend for --processes.")
    parser.add_argument("--tile_size", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="Paired rounds per backend.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="Torch and ONNX threads.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the scene's patch placement.")
    parser.add_argument("--record_mib", type=int, default=2048, help="Memory for the recorded batches (replayed).")
    parser.add_argument("--no_profile", action="store_true", help="Skip the per-stage profile.")
    parser.add_argument("--cache_dir", default=str(REPO_ROOT / "outputs" / "benchmark-predict" / "cache"))
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "outputs" / "benchmark-predict"))
    parser.add_argument("--model_figures", action="store_true", help="Only print params, GMACs, size of the presets.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.size < 1 or args.threads < 1:
        parser.error("--rounds, --size and --threads must be positive.")
    return args


def print_model_figures():
    print("| preset | parameters | GMACs (1x3x256x256) | model.safetensors |")
    print("|---|---|---|---|")
    for preset in ("lale-tiny", "lale-small", "lale-base"):
        torch.manual_seed(0)
        figures = model_figures(LaleForSemanticSegmentation(LaleConfig.from_preset(preset)))
        print(
            f"| {preset} | {figures['parameters']:,} | {figures['gmacs']:.3f} | "
            f"{figures['safetensors_bytes'] / 1e6:.2f} MB |"
        )


def environment(args) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "load_average_at_start": os.getloadavg(),
        "allocator": os.environ.get("LD_PRELOAD") or "glibc malloc",
        "torch": torch.__version__,
        "onnxruntime": importlib.metadata.version("onnxruntime") if "onnxruntime" in args.backends else None,
        "rasterio": importlib.metadata.version("rasterio"),
        "python": sys.version.split()[0],
    }


def main(argv=None):
    silence_third_party_noise()
    args = parse_args(argv)
    if args.model_figures:
        print_model_figures()
        return
    torch.set_num_threads(args.threads)
    output_dir, cache_dir = Path(args.output_dir), Path(args.cache_dir)
    raw_dir = Path(args.data) / "raw-tif"
    env = environment(args)
    print(f"environment: {env}", flush=True)
    models = benchmark_models(cache_dir, onnx="onnxruntime" in args.backends + (args.memory_backends or []))
    scene = cached_scene(cache_dir, args.size, raw_dir, args.seed)
    settings = dict(bands="3,2,1", tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size)
    predictors = {backend: load_backend(backend, models, args.threads) for backend in args.backends}

    work = output_dir / "runs"
    runs = measure_pairs(scene, predictors, work, settings, args.rounds, args.record_mib * 2**20)
    *backend_runs, pipeline_run = runs
    summaries = [summarize_pairs(run, args.size, args.size) for run in backend_runs]
    pipeline = summarize_pipeline(pipeline_run, args.size, args.size)
    profiles = []
    for backend, predictor in [] if args.no_profile else predictors.items():
        profiles.append(profile_stages(scene, predictor, work / "profile", settings, backend))
    memory_scenes = {size: cached_scene(cache_dir, size, raw_dir, args.seed) for size in args.memory_sizes}
    memory_backends = args.memory_backends or args.backends
    memory = measure_memory(memory_backends, models, memory_scenes, work, settings) if memory_scenes else []

    processes = []
    if args.processes:
        process_scene = cached_scene(cache_dir, args.process_size, raw_dir, args.seed)
        for spec in args.processes:
            count, _, threads = spec.partition(":")
            print(f"{spec} process(es): scripts/predict.py on {args.process_size}^2", flush=True)
            run = run_processes(
                int(count), args.process_backend, models, process_scene, work, settings, threads=int(threads or 0)
            )
            processes.append(run)

    title = (
        f"LALE-tiny fp32, {args.size}x{args.size} uint16 4-band scene, {args.tile_size}-px tiles, "
        f"{args.overlap:.0%} overlap, batch {args.batch_size}, {args.threads} threads, {args.rounds} paired rounds; "
        f"medians [min, max]"
    )
    sections = [f"## Throughput\n\n{title}\n\n{throughput_table(summaries, TARGET_RATIO, pipeline)}"]
    sections += [f"## Stages\n\n{stage_table(profile)}" for profile in profiles]
    if memory:
        sections.append(f"## Peak RSS of scripts/predict.py (child process, its VmHWM)\n\n{memory_table(memory)}")
    if processes:
        pixels = args.process_size**2
        # The fastest one-process run gives the per-process rate (on a loaded machine, more threads can be slower).
        singles = [run for run in processes if run["processes"] == 1 and run["predict_s"]]
        one = min(singles, key=lambda run: run["predict_s"], default=None)
        text = (
            f"scripts/predict.py, {args.process_backend}, {args.process_size}x{args.process_size} scene, as separate "
            f"runs (1 process: plain python; more: ACCELERATE_USE_CPU=true accelerate launch --multi_gpu)\n\n"
            f"{processes_table(processes, pixels)}"
        )
        if one and one["predict_s"] and one["merge_s"]:
            threads = one["threads_per_process"][0]
            text += f"\n\nProjection for 10^11 pixels (arithmetic from the 1-process run on {threads} thread(s)):\n\n"
            text += projection_lines(
                pixels / one["predict_s"] / 1e6, pixels / one["merge_s"] / 1e6, pipeline["mpx_s"]["median"]
            )
        sections.append(f"## Processes\n\n{text}")
    report = "\n\n".join(sections) + "\n"
    results = {
        "environment": env,
        "settings": {**settings, "size": args.size, "rounds": args.rounds, "seed": args.seed, "scene": str(scene)},
        "throughput": summaries,
        "pipeline_alone": pipeline,
        "stages": profiles,
        "memory": memory,
        "processes": processes,
        "target_ratio": TARGET_RATIO,
    }
    write_atomic(output_dir / "benchmark-predict.md", report)
    write_atomic(output_dir / "benchmark-predict.json", json.dumps(results, indent=2) + "\n")
    print("\n" + report)
    print(f"written: {output_dir / 'benchmark-predict.md'} and .json")


if __name__ == "__main__":
    main()
