#!/usr/bin/env python
"""Large-scene prediction benchmark: throughput of the PyTorch and ONNX Runtime paths, peak memory against scene size.

Scenes are georeferenced 16-bit 4-band (B, G, R, NIR) GeoTIFF mosaics of the real raw patches in
s2glc-sample/raw-tif (each placed with a random flip/rotation), predicted with --bands 3,2,1 and the default scaling
(a first streaming pass, then tiles of 256 with 25% overlap). The model is a randomly initialised LALE-tiny: speed does
not depend on the weights. Throughput runs in this process, one backend after the other on the same scene; peak
memory is the max RSS of `scripts/predict.py` run as a child process per scene size.

Examples:
  python benchmarks/benchmark_predict.py                   # throughput on 4096x4096, memory at 2048 and 8192
  python benchmarks/benchmark_predict.py --throughput_size 10980 --memory_sizes
  python benchmarks/benchmark_predict.py --model_figures   # params, GMACs, safetensors size of the presets
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lale_bench import model_figures, silence_third_party_noise
from lale_hf import LaleConfig, LaleForSemanticSegmentation, LaleImageProcessor
from lale_hf.file_utils import write_atomic
from lale_hf.inference import export_onnx, load_predictor, predict_file


REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "s2glc-sample"))
    parser.add_argument("--throughput_size", type=int, default=4096, help="Side of the throughput scene (0: skip).")
    parser.add_argument("--memory_sizes", type=int, nargs="*", default=[2048, 8192], help="Scene sides for peak RSS.")
    parser.add_argument("--backends", nargs="+", default=["pytorch", "onnxruntime"], choices=["pytorch", "onnxruntime"])
    parser.add_argument("--tile_size", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Throughput rounds (backends take turns).")
    parser.add_argument("--work_dir", help="Where scenes and models go (default: a temporary folder, removed).")
    parser.add_argument("--json", help="Also write the results here.")
    parser.add_argument("--model_figures", action="store_true", help="Only print params, GMACs, size of the presets.")
    return parser.parse_args()


def write_mosaic(path: Path, size: int, raw_dir: Path, seed: int = 0):
    """A size x size uint16 4-band GeoTIFF (UTM 33N, 10 m) of real raw patches, written block row by block row."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    patches = []
    for tif in sorted(raw_dir.glob("*.tif")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # the raw patches have no CRS
            with rasterio.open(tif) as dataset:
                patches.append(dataset.read())
    rng = np.random.default_rng(seed)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000.0, 5200000.0, 10.0, 10.0),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dataset:
        for row in tqdm(range(0, size, 256), desc=f"mosaic {size}", unit="row"):
            height = min(256, size - row)
            strip = np.empty((4, height, size), dtype=np.uint16)
            for col in range(0, size, 256):
                patch = np.rot90(patches[rng.integers(len(patches))], k=int(rng.integers(4)), axes=(1, 2))
                width = min(256, size - col)
                strip[:, :, col : col + width] = patch[:, :height, :width]
            dataset.write(strip, window=Window(0, row, size, height))


def peak_rss_of(command: list[str]) -> tuple[float, float]:
    """Runs `command`; returns its peak RSS in MiB (from wait4) and its wall time."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, wall


def main():
    silence_third_party_noise()
    args = parse_args()

    if args.model_figures:
        print("| preset | parameters | GMACs (1x3x256x256) | model.safetensors |")
        print("|---|---|---|---|")
        for preset in ("lale-tiny", "lale-small", "lale-base"):
            torch.manual_seed(0)
            figures = model_figures(LaleForSemanticSegmentation(LaleConfig.from_preset(preset)))
            print(
                f"| {preset} | {figures['parameters']:,} | {figures['gmacs']:.3f} | "
                f"{figures['safetensors_bytes'] / 1e6:.2f} MB |"
            )
        return

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="lale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    raw_dir = Path(args.data) / "raw-tif"
    environment = {
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": importlib.metadata.version("onnxruntime") if "onnxruntime" in args.backends else None,
        "cpu_count": os.cpu_count(),
        "allocator": os.environ.get("LD_PRELOAD") or "glibc malloc",
        "torch": torch.__version__,
    }
    print(f"environment: {environment}")

    # One randomly initialised LALE-tiny, as a checkpoint folder and as ONNX.
    torch.manual_seed(0)
    model = LaleForSemanticSegmentation(LaleConfig.from_preset("lale-tiny")).eval()
    checkpoint = work / "lale-tiny"
    model.save_pretrained(checkpoint)
    LaleImageProcessor().save_pretrained(checkpoint)
    onnx_path = work / "lale-tiny.onnx"
    if "onnxruntime" in args.backends and not onnx_path.exists():
        export_onnx(model, onnx_path)
    models = {"pytorch": str(checkpoint), "onnxruntime": str(onnx_path)}
    settings = dict(bands="3,2,1", tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size)

    results = {"environment": environment, "settings": settings, "throughput": [], "memory": []}
    scenes = {}
    for size in sorted({args.throughput_size, *args.memory_sizes} - {0}):
        scenes[size] = work / f"mosaic_{size}.tif"
        if not scenes[size].exists():
            write_mosaic(scenes[size], size, raw_dir)

    # Throughput: end to end (scaling pass, tiles, blending, GeoTIFF/preview/statistics writing). Backends take
    # turns round by round, so a busy moment on a shared machine hits both; each round also times the model alone
    # on as many tiles, which shows what the rest of the pipeline adds.
    if args.throughput_size:
        size = args.throughput_size
        warmup = work / "mosaic_512.tif"
        if not warmup.exists():
            write_mosaic(warmup, 512, raw_dir)
        predictors = {backend: load_predictor(models[backend]) for backend in args.backends}
        batch = np.random.default_rng(0).standard_normal((args.batch_size, 3, args.tile_size, args.tile_size))
        batch = batch.astype(np.float32)
        runs = {backend: [] for backend in args.backends}
        for predictor in predictors.values():
            predict_file(warmup, predictor, work / "out-warmup", overwrite=True, progress=False, **settings)
        for _ in range(args.repeats):
            for backend, predictor in predictors.items():
                load = os.getloadavg()[0]
                start = time.perf_counter()
                output = work / f"out-{backend}"
                stats = predict_file(scenes[size], predictor, output, overwrite=True, progress=False, **settings)
                seconds = time.perf_counter() - start
                tiles = stats["prediction"]["num_tiles"]
                start = time.perf_counter()
                for done in range(0, tiles, args.batch_size):
                    predictor(batch[: min(args.batch_size, tiles - done)])
                model_only = time.perf_counter() - start
                runs[backend].append({"seconds": seconds, "model_only_seconds": model_only, "load": load})
        first = args.backends[0]
        for backend, backend_runs in runs.items():
            seconds = np.array([run["seconds"] for run in backend_runs])
            paired = np.array([run["seconds"] for run in runs[first]]) / seconds
            results["throughput"].append(
                {
                    "backend": backend,
                    "scene": f"{size}x{size}",
                    "tiles": tiles,
                    "runs": backend_runs,
                    "median_mpx_per_s": size * size / float(np.median(seconds)) / 1e6,
                    "best_mpx_per_s": size * size / float(seconds.min()) / 1e6,
                    "paired_speedup_vs_first": float(np.median(paired)),
                    "model_share": float(
                        np.median([run["model_only_seconds"] / run["seconds"] for run in backend_runs])
                    ),
                }
            )
        print(
            f"\nThroughput, LALE-tiny fp32, {args.tile_size} tiles, {args.overlap:.0%} overlap, "
            f"batch {args.batch_size}, {size}x{size} scene ({tiles} tiles), {args.repeats} rounds"
        )
        print(
            "| backend | median Mpx/s | best Mpx/s | vs first (paired) | model alone / end to end "
            "| 10980x10980 at best |"
        )
        print("|---|---|---|---|---|---|")
        for row in results["throughput"]:
            print(
                f"| {row['backend']} | {row['median_mpx_per_s']:.2f} | {row['best_mpx_per_s']:.2f} | "
                f"{row['paired_speedup_vs_first']:.2f}x | {row['model_share']:.0%} | "
                f"{10980 * 10980 / row['best_mpx_per_s'] / 1e6:.0f} s |"
            )
        print(
            f"load average during the runs: {min(r['load'] for v in runs.values() for r in v):.1f}-"
            f"{max(r['load'] for v in runs.values() for r in v):.1f}"
        )

    # Peak memory: a fresh `predict.py` process per backend and scene size.
    for backend in args.backends if args.memory_sizes else []:
        for size in sorted(args.memory_sizes):
            command = [sys.executable, str(REPO_ROOT / "scripts" / "predict.py"), "--model", models[backend]]
            command += ["--output_dir", str(work / f"mem-{backend}-{size}"), "--bands", "3,2,1", "--overwrite"]
            command += ["--no_progress", "--tile_size", str(args.tile_size), "--overlap", str(args.overlap)]
            command += ["--batch_size", str(args.batch_size), str(scenes[size])]
            rss, seconds = peak_rss_of(command)
            results["memory"].append({"backend": backend, "scene": size, "peak_rss_mib": rss, "seconds": seconds})
    if results["memory"]:
        # What grows with the scene width: the 1/4-resolution blend buffer (7 classes + weight, one tile high),
        # the kept logit rows and one output strip. Nothing grows with the scene area.
        print("\nPeak RSS of scripts/predict.py (child process, wait4 ru_maxrss)")
        print("| backend | scene | peak RSS MiB | vs smallest | seconds |")
        print("|---|---|---|---|---|")
        for row in results["memory"]:
            smallest = min(r["peak_rss_mib"] for r in results["memory"] if r["backend"] == row["backend"])
            print(
                f"| {row['backend']} | {row['scene']}x{row['scene']} | {row['peak_rss_mib']:.0f} | "
                f"{row['peak_rss_mib'] / smallest:.3f}x | {row['seconds']:.1f} |"
            )

    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    if not args.work_dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
