#!/usr/bin/env python
"""Reduced precision on trained checkpoints: accuracy, class-map agreement, file sizes, speed and peak memory.

For each checkpoint (trained by scripts/train.py on real patches): export to fp32 ONNX, quantise to int8 with the
project's defaults (calibrated on the dataset's train split), save fp16 and bf16 weights, and score every path on the
validation split: macro F1 and mIoU against the labels, and pixel agreement of the class map with eager fp32. The
paths are eager fp32, fp32 ONNX Runtime, int8 ONNX Runtime, fp16 and bf16 weights loaded to fp32, and PyTorch's
dynamic int8 for the transformer stages' linear layers. Sizes are compared with the 7 M UPerNet's fp32 weights (the
benchmark zoo's `upernet-convnext-7m`, the paper's storage comparison).

On the first checkpoint only: the calibration variants that chose the defaults (--variants), the speed of every
path at each batch size in interleaved rounds with paired ratios, and the peak RSS of one `scripts/predict.py`
process per path over the validation images. Writes quantization.json and quantization.md to --output_dir.

Example:
  python benchmarks/benchmark_quantization.py --dataset_name outputs/s2glc --output_dir outputs/quantization \\
      --checkpoints outputs/accuracy/lale-tiny/seed-{0,1,2}/steps-600
"""

import argparse
import copy
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

from lale_bench import Task, build_model, paired_ratio, run_rounds, safetensors_bytes, silence_third_party_noise
from lale_bench.predict_memory import PREDICT, peak_rss_of
from lale_hf.file_utils import write_atomic
from lale_hf.inference import (
    OnnxPredictor,
    QuantizationSettings,
    TorchPredictor,
    compile_for_inference,
    export_onnx,
    load_predictor,
    quantize_onnx,
    save_half_precision,
)
from lale_hf.metrics import SegmentationMetrics


REPO_ROOT = Path(__file__).resolve().parents[1]
TIME = "/usr/bin/time"  # GNU time
DEFAULT_CHECKPOINTS = [REPO_ROOT / f"outputs/accuracy/lale-tiny/seed-{seed}/steps-600" for seed in (0, 1, 2)]
# Calibration variants measured on the first checkpoint; "default" is QuantizationSettings().
ALL_OPS = ("Conv", "MatMul", "Add", "Mul", "Relu", "Resize", "Concat", "Softmax", "Transpose", "Reshape")
VARIANTS = {
    "default (MinMax, Conv+MatMul, stem and classifier float)": {},
    "classifier float only": {"keep_float": ("classifier",)},
    "nothing float": {"keep_float": ()},
    "+ attention float": {"keep_float": ("stem", "classifier", "attention")},
    "Entropy": {"calibration_method": "entropy"},
    "Percentile (99.999)": {"calibration_method": "percentile"},
    "16 calibration images": {"calibration_samples": 16},
    "240 calibration images": {"calibration_samples": 240},
    "+ Add, Mul quantised": {"op_types": ("Conv", "MatMul", "Add", "Mul")},
    "every supported op quantised": {"op_types": ALL_OPS},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", default=[str(path) for path in DEFAULT_CHECKPOINTS])
    parser.add_argument("--dataset_name", default=str(REPO_ROOT / "outputs" / "s2glc"), help="Dataset folder.")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "outputs" / "quantization"))
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min_seconds", type=float, default=1.0, help="Shortest time one timing sample takes.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no_variants", action="store_true")
    parser.add_argument("--no_speed", action="store_true")
    parser.add_argument("--no_memory", action="store_true")
    return parser.parse_args(argv)


def read_split(dataset: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as parquet

    images, labels = [], []
    for shard in sorted((dataset / "data").glob(f"{split}-*.parquet")):
        table = parquet.read_table(shard, columns=["image", "label"])
        for image, label in zip(table.column("image").to_pylist(), table.column("label").to_pylist(), strict=True):
            images.append(np.array(Image.open(io.BytesIO(image["bytes"])).convert("RGB")))
            labels.append(np.array(Image.open(io.BytesIO(label["bytes"]))))
    if not images:
        raise SystemExit(f"{dataset}: no {split} split (data/{split}-*.parquet)")
    return np.stack(images), np.stack(labels)


def class_maps(run, normalize, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Full-resolution class maps: logits upsampled bilinearly to the label size, then argmax (as evaluation does)."""
    maps = []
    for start in range(0, len(images), batch_size):
        logits = run(normalize(images[start : start + batch_size])).float()
        logits = torch.nn.functional.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
        maps.append(logits.argmax(1).numpy())
    return np.concatenate(maps)


def scores(maps: np.ndarray, labels: np.ndarray, reference: np.ndarray, num_labels: int) -> dict:
    metrics = SegmentationMetrics(num_labels).update(torch.from_numpy(maps).long(), torch.from_numpy(labels).long())
    result = metrics.compute()
    return {
        "macro_f1": 100 * result["macro_f1"],
        "mean_iou": 100 * result["mean_iou"],
        "agreement": 100 * float((maps == reference).mean()),
    }


def dynamic_int8(model):
    """PyTorch dynamic int8 for the linear layers (the transformer stages' qkv, proj and MLP); convs stay fp32."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def torch_runner(model):
    def run(pixel_values: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return model(pixel_values=torch.from_numpy(pixel_values)).logits

    return run


def prepare_checkpoint(checkpoint: Path, dataset: Path, work: Path) -> dict:
    """Loads the fp32 model, writes its fp32 and int8 ONNX files and fp16/bf16 copies; returns them."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(checkpoint, use_safetensors=True, dtype=torch.float32)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    work.mkdir(parents=True, exist_ok=True)
    files = {"fp32_onnx": export_onnx(model.eval(), work / "model.onnx", image_processor=processor)}
    files["int8_onnx"] = quantize_onnx(files["fp32_onnx"], work / "model-int8.onnx", dataset)
    for dtype in ("fp16", "bf16"):
        files[dtype] = save_half_precision(model, work / dtype, dtype, processor, overwrite=True)
    return {"model": model.eval(), "processor": processor, "files": files}


def file_sizes(checkpoint: Path, files: dict) -> dict:
    upernet = safetensors_bytes(build_model("upernet-convnext-7m"))
    sizes = {
        "fp32 safetensors": (checkpoint / "model.safetensors").stat().st_size,
        "fp16 safetensors": (files["fp16"] / "model.safetensors").stat().st_size,
        "bf16 safetensors": (files["bf16"] / "model.safetensors").stat().st_size,
        "fp32 ONNX": files["fp32_onnx"].stat().st_size,
        "int8 ONNX": files["int8_onnx"].stat().st_size,
    }
    return {
        "upernet_convnext_7m_fp32_bytes": upernet,
        "files": {name: {"bytes": size, "upernet_over_this": upernet / size} for name, size in sizes.items()},
    }


def accuracy_paths(prepared: dict) -> dict:
    """name -> (run, normalize) for every path scored on the validation split."""
    model, files = prepared["model"], prepared["files"]
    normalize = TorchPredictor(model, prepared["processor"]).normalize
    paths = {"eager fp32": (torch_runner(model), normalize)}
    for name, key in (("ONNX Runtime fp32", "fp32_onnx"), ("ONNX Runtime int8", "int8_onnx")):
        predictor = OnnxPredictor(files[key])
        paths[name] = (predictor, predictor.normalize)
    for dtype in ("fp16", "bf16"):
        predictor = load_predictor(files[dtype])
        paths[f"{dtype} weights (fp32 compute)"] = (predictor, predictor.normalize)
    paths["PyTorch dynamic int8 (linear layers)"] = (torch_runner(dynamic_int8(model)), normalize)
    return paths


def measure_accuracy(prepared: dict, images: np.ndarray, labels: np.ndarray) -> dict:
    num_labels = prepared["model"].config.num_labels
    paths = accuracy_paths(prepared)
    reference = class_maps(*paths["eager fp32"], images)
    return {
        name: scores(class_maps(run, norm, images), labels, reference, num_labels)
        for name, (run, norm) in paths.items()
    }


def measure_variants(prepared: dict, dataset: Path, images, labels, work: Path) -> dict:
    predictor = OnnxPredictor(prepared["files"]["fp32_onnx"])
    reference = class_maps(predictor, predictor.normalize, images)
    num_labels = prepared["model"].config.num_labels
    results = {}
    for name, overrides in VARIANTS.items():
        path = quantize_onnx(
            prepared["files"]["fp32_onnx"], work / "variant.onnx", dataset, QuantizationSettings(**overrides)
        )
        int8 = OnnxPredictor(path)
        results[name] = {**scores(class_maps(int8, int8.normalize, images), labels, reference, num_labels)}
        results[name]["bytes"] = path.stat().st_size
        print(f"  variant {name}: {results[name]}", flush=True)
    return results


def measure_speed(prepared: dict, images: np.ndarray, args) -> dict:
    """Images/s of each path per batch size, interleaved round by round; ratios paired within a round."""

    model, files = prepared["model"], prepared["files"]
    normalize = TorchPredictor(model, prepared["processor"]).normalize

    def session(path):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    sessions = {name: session(files[key]) for name, key in (("ort-fp32", "fp32_onnx"), ("ort-int8", "int8_onnx"))}
    compiled = compile_for_inference(copy.deepcopy(model))
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    dynamic = dynamic_int8(model)

    def runners(pixel_values: np.ndarray) -> dict:
        tensor = torch.from_numpy(pixel_values)
        last = tensor.contiguous(memory_format=torch.channels_last)

        def torch_call(module, x):
            def call():
                with torch.inference_mode():
                    return module(pixel_values=x).logits

            return call

        return {
            "ort-fp32": lambda: sessions["ort-fp32"].run(None, {"pixel_values": pixel_values}),
            "ort-int8": lambda: sessions["ort-int8"].run(None, {"pixel_values": pixel_values}),
            "compiled-fp32": torch_call(compiled, tensor),
            "channels-last-fp32": torch_call(channels_last, last),
            "eager-fp32": torch_call(model, tensor),
            "dynamic-int8-eager": torch_call(dynamic, tensor),
        }

    tasks = []
    for batch_size in args.batch_sizes:
        pixel_values = normalize(images[np.arange(batch_size) % len(images)])
        for name, call in runners(pixel_values).items():
            record = {"path": name, "batch_size": batch_size}
            tasks.append(Task(f"b{batch_size}", call, batch_size, record))
    for task in tasks:  # warm-up (compiles), then enough calls per sample for --min_seconds
        for _ in range(2):
            task.run()
        start = time.perf_counter()
        task.run()
        task.calls = max(1, int(args.min_seconds / max(time.perf_counter() - start, 1e-6)) + 1)
    load_before = os.getloadavg()[0]
    run_rounds(tasks, args.rounds, lambda: None)
    results = []
    by_key = {(t.record["path"], t.record["batch_size"]): t for t in tasks}
    for task in tasks:
        batch = task.record["batch_size"]
        row = {**task.record, "median": statistics.median(task.samples), "samples": task.samples}
        for other in ("ort-fp32", "compiled-fp32", "eager-fp32"):
            row[f"over_{other}"] = paired_ratio(task.samples, by_key[(other, batch)].samples)
        results.append(row)
    return {"rows": results, "load_average": [load_before, os.getloadavg()[0]]}


def peak_rss(command: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time of `command`, measured by GNU time from a small parent: a child forked from this
    process (gigabytes of models and sessions by now) counts the parent's pages in its ru_maxrss until it execs."""
    if not Path(TIME).is_file():
        return peak_rss_of(command)
    start = time.perf_counter()
    result = subprocess.run([TIME, "-f", "MAXRSS_KB %M", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    kilobytes = int(result.stderr.strip().splitlines()[-1].split()[-1])
    return kilobytes / 1024, seconds


def measure_memory(prepared: dict, checkpoint: Path, image_folder: Path, work: Path) -> list[dict]:
    """Peak RSS and wall time of one scripts/predict.py process per path over the validation images."""
    files = prepared["files"]
    models = {
        "PyTorch fp32 (channels-last)": [str(checkpoint)],
        "PyTorch fp32, --torch_compile": [str(checkpoint), "--torch_compile"],
        "fp16 weights": [str(files["fp16"])],
        "ONNX Runtime fp32": [str(files["fp32_onnx"])],
        "ONNX Runtime int8": [str(files["int8_onnx"])],
    }
    rows = []
    for name, model in models.items():
        output = work / f"predict-{len(rows)}"
        command = [sys.executable, str(PREDICT), str(image_folder), "--model", *model, "--output_dir", str(output)]
        rss, seconds = peak_rss([*command, "--overwrite", "--no_progress"])
        rows.append({"path": name, "peak_rss_mib": rss, "seconds": seconds})
        print(f"  memory {name}: {rss:.0f} MiB, {seconds:.1f} s", flush=True)
    return rows


def render(report: dict) -> str:
    lines = [f"# Reduced precision: {report['environment']['date']}", "", f"`{report['command']}`", ""]
    lines += [f"Environment: {json.dumps(report['environment'])}", ""]
    for checkpoint, result in report["checkpoints"].items():
        lines += [
            f"## {checkpoint}",
            "",
            "| path | macro F1 | mIoU | agreement with eager fp32 (%) |",
            "|---|---|---|---|",
        ]
        for name, row in result["accuracy"].items():
            lines.append(f"| {name} | {row['macro_f1']:.2f} | {row['mean_iou']:.2f} | {row['agreement']:.2f} |")
        sizes = result["sizes"]
        lines += ["", f"UPerNet-7M fp32: {sizes['upernet_convnext_7m_fp32_bytes'] / 1e6:.2f} MB", ""]
        lines += ["| file | MB | UPerNet-7M fp32 / this |", "|---|---|---|"]
        for name, row in sizes["files"].items():
            lines.append(f"| {name} | {row['bytes'] / 1e6:.2f} | {row['upernet_over_this']:.1f}x |")
        lines.append("")
    if report.get("variants"):
        lines += ["## Calibration variants (first checkpoint; agreement with fp32 ONNX Runtime)", ""]
        lines += ["| variant | agreement (%) | macro F1 | mIoU | MB |", "|---|---|---|---|---|"]
        for name, row in report["variants"].items():
            lines.append(
                f"| {name} | {row['agreement']:.2f} | {row['macro_f1']:.2f} | {row['mean_iou']:.2f} | "
                f"{row['bytes'] / 1e6:.2f} |"
            )
        lines.append("")
    if report.get("speed"):
        lines += ["## Speed (first checkpoint; images/s, paired ratios [min, max])", ""]
        lines += [
            "| path | batch | images/s | / ORT fp32 | / compiled fp32 | / eager fp32 |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["speed"]["rows"]:
            cells = [
                f"{r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]"
                for r in (row["over_ort-fp32"], row["over_compiled-fp32"], row["over_eager-fp32"])
            ]
            lines.append(f"| {row['path']} | {row['batch_size']} | {row['median']:.1f} | {' | '.join(cells)} |")
        lines.append(f"\nLoad average before/after timing: {report['speed']['load_average']}\n")
    if report.get("memory"):
        lines += ["## Peak RSS of a prediction process (first checkpoint)", ""]
        lines += ["| path | peak RSS (MiB) | wall (s) |", "|---|---|---|"]
        lines += [f"| {r['path']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.1f} |" for r in report["memory"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    silence_third_party_noise()
    torch.set_num_threads(args.threads)
    dataset, output_dir = Path(args.dataset_name), Path(args.output_dir)
    images, labels = read_split(dataset, "validation")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    report = {
        "command": " ".join(["python", "benchmarks/benchmark_quantization.py", *(argv or sys.argv[1:])]),
        "environment": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu or platform.processor(),
            "threads": args.threads,
            "ld_preload": os.environ.get("LD_PRELOAD", ""),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "validation_patches": len(images),
        },
        "checkpoints": {},
    }

    def save():  # after every stage, so a long run that fails late keeps what it measured
        write_atomic(output_dir / "quantization.json", json.dumps(report, indent=1))
        write_atomic(output_dir / "quantization.md", render(report))

    with tempfile.TemporaryDirectory(dir=output_dir.parent if output_dir.parent.exists() else None) as scratch:
        work = Path(scratch)
        for index, checkpoint in enumerate(map(Path, args.checkpoints)):
            print(f"[{checkpoint}]", flush=True)
            prepared = prepare_checkpoint(checkpoint, dataset, work / f"checkpoint-{index}")
            result = {"accuracy": measure_accuracy(prepared, images, labels)}
            result["sizes"] = file_sizes(checkpoint, prepared["files"])
            print(json.dumps(result, indent=1), flush=True)
            report["checkpoints"][str(checkpoint)] = result
            save()
            if index:
                continue
            if not args.no_variants:
                report["variants"] = measure_variants(prepared, dataset, images, labels, work)
                save()
            if not args.no_memory:
                image_folder = work / "validation-images"
                image_folder.mkdir()
                for number, image in enumerate(images):
                    Image.fromarray(image).save(image_folder / f"patch_{number:03d}.png")
                report["memory"] = measure_memory(prepared, checkpoint, image_folder, work)
                save()
            if not args.no_speed:
                report["speed"] = measure_speed(prepared, images, args)
                save()
    print(render(report))


if __name__ == "__main__":
    main()
