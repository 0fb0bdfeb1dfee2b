"""One benchmark run: its settings, the environment it ran in, and the measurement of every model."""

import contextlib
import copy
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from lale_hf.allocator import detect_allocator
from lale_hf.inference import relative_error

from .counting import count_flops, count_parameters, peak_memory_bytes, safetensors_bytes
from .paths import (
    CLASS_MAP_AGREEMENT,
    DTYPES,
    PATHS,
    TOLERANCES,
    PathUnavailable,
    class_map_agreement,
    make_train_step,
    prepare_path,
)
from .timing import Task, matmul_task, run_rounds, warm_up
from .zoo import DEFAULT_MODELS, ZOO, build_model, check_logits


@dataclass
class BenchmarkSettings:
    models: tuple[str, ...] = DEFAULT_MODELS
    paths: tuple[str, ...] = PATHS
    dtypes: tuple[str, ...] = ("fp32",)
    device: str = "cpu"
    image_size: int = 256
    inference_batch_sizes: tuple[int, ...] = (1, 16)
    train_batch_size: int = 8
    rounds: int = 5
    warmup_calls: int = 2
    min_seconds: float = 0.5
    matmul_sizes: tuple[int, ...] = (512, 1024, 2048)
    threads: int = 0
    seed: int = 0

    def __post_init__(self):
        for name, allowed in (("models", ZOO), ("paths", PATHS), ("dtypes", DTYPES)):
            values = tuple(getattr(self, name))
            if not values or any(v not in allowed for v in values) or len(set(values)) != len(values):
                raise ValueError(f"`{name}` must be distinct values from {list(allowed)}, got {list(values)}.")
            setattr(self, name, values)
        if "eager" not in self.paths:
            raise ValueError("`paths` must include 'eager': every other path is checked and paired against it.")
        if self.device not in ("cpu", "cuda") or (self.device == "cuda" and not torch.cuda.is_available()):
            raise ValueError(f"`device` must be 'cpu' or an available 'cuda', got {self.device!r}.")
        for name in ("inference_batch_sizes", "matmul_sizes"):
            values = tuple(getattr(self, name))
            if not values or min(values) < 1 or len(set(values)) != len(values):
                raise ValueError(f"`{name}` must be distinct positive integers, got {list(values)}.")
            setattr(self, name, values)
        for name in ("train_batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(
                f"`image_size` must be a positive multiple of 32 (the deepest stride), got {self.image_size}."
            )
        if self.warmup_calls < 0 or self.min_seconds < 0 or self.threads < 0:
            raise ValueError("`warmup_calls`, `min_seconds` and `threads` must be non-negative.")


def environment(settings: BenchmarkSettings) -> dict:
    """Where and with what the run took place, the allocator included."""
    import onnxruntime
    import transformers

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    cuda = settings.device == "cuda"
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else cpu,
        "allocator": detect_allocator(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        # On CUDA, "fp32" convolutions run in TF32 unless these say otherwise.
        "cuda_float32_matmul_precision": torch.get_float32_matmul_precision() if cuda else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if cuda else None,
    }


def run_benchmark(settings: BenchmarkSettings, turn=contextlib.nullcontext, log: Callable[[str], None] = print) -> dict:
    """Measures every model of `settings` in one run; returns the raw run (`summarize` derives the rest).

    Setup (building, counting, compiling, exporting, checking, warming up) takes one `turn`, then every group of
    every round takes one.
    """
    started = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    # All models share LogitsOnly.forward's code object: each (model, batch size, dtype) is one more dynamo graph.
    graphs = 2 * len(settings.models) * len(settings.inference_batch_sizes) * len(settings.dtypes)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, graphs)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4 * graphs)
    device = torch.device(settings.device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    run = {"environment": environment(settings), "settings": asdict(settings), "models": {}, "measurements": []}
    matmuls = [matmul_task(size, dtype, device) for dtype in settings.dtypes for size in settings.matmul_sizes]
    tasks = []
    with tempfile.TemporaryDirectory() as folder:
        with turn():
            for name in settings.models:
                log(f"[setup] {name}")
                tasks += _setup_model(name, settings, device, synchronize, folder, run, log)
            tasks += matmuls
            log(f"[warm-up] {len(tasks)} workloads")
            for task in tasks:
                warm_up(task, settings.warmup_calls, settings.min_seconds, synchronize)
        run["setup_seconds"] = time.perf_counter() - started
        log(f"[timing] {settings.rounds} interleaved rounds")
        # Other processes on the machine slow eager code unevenly (threads wait at barriers): record the load.
        run["load_average"] = {"before_timing": _load_average()}
        run_rounds(tasks, settings.rounds, synchronize, turn)
        run["load_average"]["after_timing"] = _load_average()

    for task in tasks:
        task.record.update(median=statistics.median(task.samples), samples=task.samples, calls_per_sample=task.calls)
    run["matmul"] = [task.record for task in matmuls]
    # The peak is the best size's median, and its per-round samples pair with the models' samples.
    run["matmul_peak"] = {
        dtype: max((m for m in run["matmul"] if m["dtype"] == dtype), key=lambda m: m["median"])
        for dtype in settings.dtypes
    }
    run["wall_seconds"] = time.perf_counter() - started
    run["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return run


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _setup_model(name, settings, device, synchronize, folder, run, log) -> list[Task]:
    """Counts one model, measures its memory, checks every path against eager; returns its timed workloads."""
    model = build_model(name, settings.seed).to(device)
    image_size, threads = settings.image_size, torch.get_num_threads()
    info = {
        "description": ZOO[name],
        "params": count_parameters(model),
        "safetensors_bytes": safetensors_bytes(model),
        "gmacs": count_flops(model, image_size) / 2e9,
        "train_gflops_per_image": count_flops(model, image_size, train=True) / 1e9,
        "peak_memory_mb": {},
    }
    run["models"][name] = info
    reference = prepare_path("eager", model, "fp32", device, folder, threads)

    def new_input(batch_size):
        return torch.randn(batch_size, 3, image_size, image_size, device=device)

    def new_record(**fields):
        record = {"model": name, "status": "ok", "detail": "", "max_relative_error": None, "first_call_seconds": None}
        run["measurements"].append({**record, **fields})
        return run["measurements"][-1]

    tasks = []
    for dtype in settings.dtypes:
        largest = max(settings.inference_batch_sizes)
        pixel_values = new_input(largest)
        eager = prepare_path("eager", model, dtype, device, folder, threads)
        existing = [*model.parameters(), *model.buffers(), pixel_values]
        memory = peak_memory_bytes(lambda run_eager=eager, x=pixel_values: run_eager(x), existing, device)
        info["peak_memory_mb"][f"{dtype}/inference_b{largest}"] = memory / 2**20
        for path in settings.paths:
            try:
                runner, unavailable = prepare_path(path, model, dtype, device, folder, threads), ""
            except PathUnavailable as error:
                runner, unavailable = None, str(error)
            for batch_size in settings.inference_batch_sizes:
                record = new_record(dtype=dtype, mode="inference", path=path, batch_size=batch_size)
                if runner is None:
                    record.update(status="unavailable", detail=unavailable)
                    continue
                check_input = new_input(batch_size)  # fresh: a path must compute the function, not one output
                try:
                    start = time.perf_counter()
                    output = runner(check_input)
                    synchronize()
                    record["first_call_seconds"] = time.perf_counter() - start
                except Exception as error:  # a path that fails on a model is a result to report, not a crash
                    record.update(status="failed", detail=f"{type(error).__name__}: {error}"[:300])
                    log(f"  {path} b{batch_size}: failed ({record['detail'][:120]})")
                    continue
                expected = reference(check_input)
                check_logits(expected, name)
                try:
                    record["max_relative_error"] = relative_error(output, expected)
                except ValueError as error:  # logits of another shape: a wrong answer like any other
                    record.update(status="mismatch", detail=str(error))
                    log(f"  {path} b{batch_size}: mismatch, {error}")
                    continue
                if path in CLASS_MAP_AGREEMENT:  # int8: the class map is what must survive, not the logits
                    record["class_map_agreement"] = class_map_agreement(output, expected)
                    if not record["class_map_agreement"] >= CLASS_MAP_AGREEMENT[path]:
                        record.update(
                            status="mismatch", detail=f"class maps agree under {CLASS_MAP_AGREEMENT[path]:.0%}"
                        )
                        log(f"  {path} b{batch_size}: mismatch, agreement {record['class_map_agreement']:.2%}")
                        continue
                elif not record["max_relative_error"] <= TOLERANCES[dtype]:
                    record.update(status="mismatch", detail=f"error over {TOLERANCES[dtype]:g}")
                    log(f"  {path} b{batch_size}: mismatch, error {record['max_relative_error']:.2e}")
                    continue
                timing_input = new_input(batch_size)
                group = f"{dtype}|inference|{path}|b{batch_size}"
                tasks.append(Task(group, lambda run_path=runner, x=timing_input: run_path(x), batch_size, record))

        train_model = copy.deepcopy(model)
        step, resident = make_train_step(train_model, settings.train_batch_size, image_size, dtype, device)
        step()  # AdamW creates its state on the first step; the memory of a steady-state step is wanted
        memory = peak_memory_bytes(step, resident(), device)
        info["peak_memory_mb"][f"{dtype}/train_b{settings.train_batch_size}"] = memory / 2**20
        record = new_record(dtype=dtype, mode="train", path="eager", batch_size=settings.train_batch_size)
        tasks.append(Task(f"{dtype}|train|eager|b{settings.train_batch_size}", step, settings.train_batch_size, record))
    return tasks
