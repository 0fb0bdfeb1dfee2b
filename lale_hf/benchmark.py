"""Efficiency benchmark of the LALE presets against transformers baselines, measured in one run on one machine.

The pieces `scripts/benchmark.py` is made of: the model zoo (random weights, built from configs), parameter, size and
MAC counting, peak tensor memory, the deployment paths (eager, channels_last, torch.compile, ONNX Runtime), each
checked against eager before it is timed, interleaved timing with per-round pairing, the matmul peak, the allocator
helpers, and the JSON/markdown/PNG report.
"""

import contextlib
import copy
import io
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count
from torch.utils.weak import WeakIdKeyDictionary
from transformers import (
    AutoModelForSemanticSegmentation,
    ConvNextConfig,
    MobileViTConfig,
    PreTrainedConfig,
    SegformerConfig,
    UperNetConfig,
)

from .allocator import detect_allocator
from .configuration_lale import ARAS400K_LABELS, LALE_PRESETS, LaleConfig
from .file_utils import write_atomic
from .inference import compile_for_inference


# ---------------------------------------------------------------------------------------------------------------------
# Model zoo: every model is built from a config with random weights, seven ARAS400k classes.

ZOO = {
    "lale-tiny": "LALE preset lale-tiny",
    "lale-small": "LALE preset lale-small",
    "lale-base": "LALE preset lale-base",
    "segformer-b0": "SegFormer-B0 (SegformerConfig defaults)",
    "segformer-b1": "SegFormer-B1 (widths 64/128/320/512)",
    "upernet-convnext-7m": "UPerNet, ConvNeXt backbone widths 48/96/192/384 depths 2/2/6/2, head width 128, no auxiliary head",
    "mobilevit-xxs-deeplabv3": "MobileViT-XXS + DeepLabV3 (the sizes of apple/deeplabv3-mobilevit-xx-small)",
}
PATHS = ("eager", "channels_last", "compile", "onnxruntime")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Largest max-abs error, relative to the largest eager fp32 logit, that a path may show before it is timed.
TOLERANCES = {"fp32": 1e-3, "bf16": 5e-2}



@dataclass(frozen=True)
class Target:
    """An acceptance target: a paired ratio, a fraction of the matmul peak, or a static count of `model`."""

    kind: str  # "ratio", "peak_fraction", "params_m" or "gmacs"
    model: str
    measure: str = ""  # "inference/eager", "inference/best" or "train/eager"
    other: str = ""  # the ratio's denominator
    min: float | None = None
    max: float | None = None


# The project's targets on its 2-core CPU machine (issue #6), evaluated on the fp32 figures of a run.
TARGETS = (
    Target("ratio", "lale-tiny", "inference/eager", "segformer-b0", min=1.5),
    Target("ratio", "lale-tiny", "inference/eager", "upernet-convnext-7m", min=2.5),
    Target("ratio", "lale-tiny", "inference/eager", "mobilevit-xxs-deeplabv3", min=1.3),
    Target("ratio", "lale-tiny", "train/eager", "segformer-b0", min=1.8),
    Target("ratio", "lale-tiny", "inference/best", "segformer-b0", min=3.0),
    Target("peak_fraction", "lale-tiny", "inference/best", min=0.5),
    Target("params_m", "lale-tiny", min=1.52, max=1.68),
    Target("gmacs", "lale-tiny", max=0.6),
)


def zoo_config(name: str) -> PreTrainedConfig:
    """The config of a zoo model; see `ZOO` for what each name means."""
    labels = dict(enumerate(ARAS400K_LABELS))
    if name in LALE_PRESETS:
        return LaleConfig.from_preset(name)
    if name == "segformer-b0":
        return SegformerConfig(id2label=labels)
    if name == "segformer-b1":
        return SegformerConfig(hidden_sizes=[64, 128, 320, 512], id2label=labels)
    if name == "upernet-convnext-7m":
        # Sized so that the paper's 4.5x parameter ratio against the 1.6 M LALE holds: 7.14 M parameters.
        backbone = ConvNextConfig(
            hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 6, 2], out_features=["stage1", "stage2", "stage3", "stage4"]
        )
        return UperNetConfig(backbone_config=backbone, hidden_size=128, use_auxiliary_head=False, id2label=labels)
    if name == "mobilevit-xxs-deeplabv3":
        return MobileViTConfig(
            hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0, id2label=labels
        )
    raise ValueError(f"Unknown benchmark model {name!r}; expected one of {list(ZOO)}.")


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A zoo model with seeded random weights, in eval mode.

    Batch norms get PyTorch's default init (weight 1, bias 0): transformers' MobileViT draws them from N(0, 0.02),
    which shrinks the activations layer after layer to denormal floats (logits near 1e-44), and denormal arithmetic
    made it twice as slow here. A trained model has no such activations, so that would flatter its competitors.
    """
    torch.manual_seed(seed)
    model = AutoModelForSemanticSegmentation.from_config(zoo_config(name)).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
            module.reset_running_stats()
    return model


def check_logits(logits: torch.Tensor, name: str):
    """Fails on logits a timing must not run on: non-finite, or so small that arithmetic goes denormal."""
    largest = logits.detach().abs().max().item()
    if not torch.isfinite(logits).all() or largest < 1e-20:
        raise RuntimeError(f"{name}: degenerate logits at random init (max |logit| = {largest:.3g}); timings would mislead.")


# ---------------------------------------------------------------------------------------------------------------------
# Static counts.


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def safetensors_bytes(model: nn.Module) -> int:
    """Size of the fp32 weights as `save_pretrained` writes them."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None) -> int:  # fmt: skip
    """Each requested gradient (input, weight) costs one forward convolution.

    torch's own formula ignores `groups`: it counts a depthwise convolution's backward C times over (65x for 64
    channels), which would make every model with depthwise convolutions look busier in training than it is.
    """
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def _cpu_attention_flop(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, with a convolution backward that respects groups and CPU flash attention counted.

    torch counts the CUDA flash, efficient and cuDNN attention kernels but not `_scaled_dot_product_flash_attention_
    for_cpu`, which SDPA runs on the CPU: without it, a model on SDPA (LALE) would count no attention FLOPs while
    one with matmul attention (SegFormer) counts them all.
    """
    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten.convolution_backward: _conv_backward_flop,
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flop,
    })  # fmt: skip


def count_flops(model: nn.Module, image_size: int, train: bool = False) -> float:
    """FLOPs per image from torch's FlopCounterMode (matmuls, convolutions, attention; elementwise ops are free).

    Inference is counted on one image, the usual convention (per-call work such as LALE's decoder weight product
    counts once). With `train`, a forward with labels plus the backward pass (the optimizer step is elementwise,
    hence uncounted), on two images, since batch norm cannot train on one (MobileViT's pooled ASPP branch).
    """
    device = next(model.parameters()).device
    batch_size = 2 if train else 1
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, device=device)
    with flop_counter() as counter:
        if train:
            labels = torch.randint(0, model.config.num_labels, (2, image_size, image_size), device=device)
            model.train()
            model(pixel_values=pixel_values, labels=labels).loss.backward()
        else:
            with torch.no_grad():
                model(pixel_values=pixel_values)
    model.zero_grad(set_to_none=True)
    model.eval()
    return counter.get_total_flops() / batch_size


def model_figures(model: nn.Module, image_size: int = 256) -> dict:
    """The static columns of the benchmark: parameters, GMACs per image (MACs = FLOPs / 2), fp32 safetensors bytes."""
    return {
        "parameters": count_parameters(model),
        "gmacs": count_flops(model, image_size) / 2e9,
        "safetensors_bytes": safetensors_bytes(model),
        "image_size": image_size,
    }


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage: the `existing` tensors plus every storage an op creates while active.

    A CPU counterpart of `torch.cuda.max_memory_allocated` that counts tensors, not what malloc keeps, so it reads
    the same under every allocator. Scratch space inside libraries (oneDNN workspaces) is not seen.
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._sizes = WeakIdKeyDictionary()
        for tensor in existing:
            self._track(tensor.untyped_storage())

    def _track(self, storage):
        if storage in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, size)

    def _release(self, size: int):
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(output):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf.untyped_storage())
        return output


def peak_memory_bytes(step: Callable[[], object], existing: Iterable[torch.Tensor], device: torch.device) -> int:
    """Peak tensor memory of one call of `step`, the `existing` tensors (weights, inputs, optimizer state) included.

    On CUDA, the caching allocator's peak, less what other models held before the call.
    """
    if device.type != "cuda":
        with PeakTensorMemory(existing) as tracker:
            step()
        return tracker.peak
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in existing}
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before + sum(storages.values())


# ---------------------------------------------------------------------------------------------------------------------
# Deployment paths.


class PathUnavailable(RuntimeError):
    """A deployment path that does not apply to this setting (e.g. ONNX Runtime in bf16)."""


class LogitsOnly(nn.Module):
    """The model as a tensor-to-tensor function: what the compiler, the exporter and a deployment see."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def autocast_context(dtype: str, device: torch.device):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Max absolute difference over the largest reference magnitude."""
    output, reference = output.detach().float().cpu(), reference.detach().float().cpu()
    return ((output - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()


def onnx_session(model: nn.Module, folder: str, threads: int, device: torch.device, image_size: tuple[int, int]):
    """Exports `model` as the project ships it (`lale_hf.onnx_export`) and opens an ONNX Runtime session on it."""
    import onnxruntime

    from .onnx_export import export_onnx

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise PathUnavailable(f"onnxruntime has no {provider}")
    path = Path(tempfile.mkdtemp(dir=folder)) / "model.onnx"
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress to stdout
        export_onnx(copy.deepcopy(model).cpu(), path, example_size=image_size)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The arena keeps every session's peak activations for the session's life: with all zoo models alive at once
    # that held 2.5 GB more for three of them. Without it ONNX Runtime allocates from the process's malloc, as torch.
    options.enable_cpu_mem_arena = False
    return onnxruntime.InferenceSession(str(path), options, providers=[provider])


def prepare_path(
    path: str, model: nn.Module, dtype: str, device: torch.device, folder: str, threads: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from pixel values to logits that runs `model` along a deployment path.

    Compilation and export happen on the first call. torch.compile specialises on each input shape (a graph per
    batch size); the ONNX file has dynamic axes, as `scripts/export_onnx.py` writes it.
    """
    module = LogitsOnly(model).eval()
    if path == "eager":
        target = module
    elif path == "channels_last":
        target = copy.deepcopy(module).to(memory_format=torch.channels_last)
    elif path == "compile":
        target = compile_for_inference(module)  # with frozen weights, as `scripts/predict.py --torch_compile` runs
    elif path == "onnxruntime":
        if dtype != "fp32":
            raise PathUnavailable("the ONNX Runtime path is benchmarked in fp32 only")
        sessions = []  # exported on the first call, with dynamic batch, height and width

        def run_onnxruntime(pixel_values: torch.Tensor) -> torch.Tensor:
            if not sessions:
                sessions.append(onnx_session(model, folder, threads, device, tuple(pixel_values.shape[2:])))
            (logits,) = sessions[0].run(None, {"pixel_values": pixel_values.cpu().numpy()})
            return torch.from_numpy(logits)

        return run_onnxruntime
    else:
        raise ValueError(f"Unknown deployment path {path!r}; expected one of {PATHS}.")

    memory_format = torch.channels_last if path == "channels_last" else torch.contiguous_format

    def run(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_context(dtype, device):
            return target(pixel_values.contiguous(memory_format=memory_format))

    return run


def make_train_step(model: nn.Module, batch_size: int, image_size: int, dtype: str, device: torch.device):
    """One training step (forward with labels, backward, AdamW step) on a fixed random batch.

    Returns the step and the tensors alive between steps (weights, optimizer state, batch) for memory accounting.
    """
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, model.config.num_labels, (batch_size, image_size, image_size), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(dtype, device):
            loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()

    def resident():
        state = [value for per_param in optimizer.state.values() for value in per_param.values()]
        return [*model.parameters(), *model.buffers(), *[t for t in state if isinstance(t, torch.Tensor)], pixel_values, labels]

    return step, resident


# ---------------------------------------------------------------------------------------------------------------------
# Timing: interleaved rounds, medians, pairing.


@dataclass
class Task:
    """One timed workload: each call of `run` processes `units` items (images, or GFLOP for the matmul).

    Tasks of one `group` (the same workload on every model) run back to back; `record` receives the results.
    """

    group: str
    run: Callable[[], object]
    units: float
    record: dict
    calls: int = 1
    samples: list[float] = field(default_factory=list)


def time_calls(task: Task, calls: int, synchronize: Callable[[], None]) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        task.run()
    synchronize()
    return time.perf_counter() - start


def warm_up(task: Task, warmup_calls: int, min_seconds: float, synchronize: Callable[[], None]):
    """Runs `warmup_calls` untimed calls, then sets how many calls one sample takes (at least `min_seconds`)."""
    time_calls(task, warmup_calls, synchronize)
    task.calls = max(1, math.ceil(min_seconds / max(time_calls(task, 1, synchronize), 1e-9)))


def run_rounds(tasks: list[Task], rounds: int, synchronize: Callable[[], None], turn=contextlib.nullcontext):
    """Takes `rounds` samples of every task, interleaved: round after round, group after group.

    Tasks of one group (the same workload on every model) run back to back, so the samples that a ratio pairs were
    taken seconds apart; the order inside a group rotates each round so that no model always goes first. `turn()`
    wraps every group: the lockstep with a second benchmark process (see `LockstepTurn`).
    """
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.group, []).append(task)
    for round_idx in range(rounds):
        for members in groups.values():
            shift = round_idx % len(members)
            with turn():
                for task in members[shift:] + members[:shift]:
                    task.samples.append(task.units * task.calls / time_calls(task, task.calls, synchronize))


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Ratio of two series round by round, and its median: noise shared within a round cancels."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"Paired series must have the same non-zero length, got {len(numerator)} and {len(denominator)}.")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "samples": ratios}


class LockstepTurn:
    """Takes turns with other benchmark processes over two pipe descriptors: wait for "go", run, answer "done".

    Two processes under different allocators then alternate group by group, and never time while the other runs.
    """

    def __init__(self, go_fd: int, done_fd: int):
        self._go = os.fdopen(go_fd, "r")
        self._done = os.fdopen(done_fd, "w")

    @contextlib.contextmanager
    def __call__(self):
        if self._go.readline().strip() != "go":
            raise RuntimeError("Lockstep coordinator closed the pipe before the benchmark finished.")
        try:
            yield
        finally:
            self._done.write("done\n")
            self._done.flush()


def run_lockstep(commands: list[tuple[list[str], dict]]) -> None:
    """Runs benchmark processes that take turns (`LockstepTurn`), one turn each in rotation, until all have exited.

    Each command gets `--lockstep_fds GO,DONE` appended. Raises if any process fails.
    """
    import subprocess

    workers = []
    for command, env in commands:
        go_read, go_write = os.pipe()
        done_read, done_write = os.pipe()
        process = subprocess.Popen(
            [*command, "--lockstep_fds", f"{go_read},{done_write}"], env=env, pass_fds=(go_read, done_write)
        )
        os.close(go_read)
        os.close(done_write)
        workers.append((process, os.fdopen(go_write, "w"), os.fdopen(done_read, "r")))
    active = list(workers)
    while active:
        for worker in list(active):
            _, go, done = worker
            try:
                go.write("go\n")
                go.flush()
                finished = not done.readline()
            except BrokenPipeError:
                finished = True
            if finished:
                active.remove(worker)
    failed = [command for (command, _), (process, _, _) in zip(commands, workers) if process.wait() != 0]
    if failed:
        raise RuntimeError(f"Benchmark worker(s) failed: {failed}")


def matmul_task(size: int, dtype: str, device: torch.device) -> Task:
    """A square `size` x `size` matrix product, in GFLOP/s: the machine's dense-compute ceiling at that size."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, DTYPES[dtype]) for _ in range(2))
    out = torch.empty_like(a)
    record = {"dtype": dtype, "size": size}
    return Task(f"{dtype}|matmul", lambda: torch.mm(a, b, out=out), units=2 * size**3 / 1e9, record=record)


# ---------------------------------------------------------------------------------------------------------------------
# The run.


@dataclass
class BenchmarkSettings:
    models: tuple[str, ...] = tuple(ZOO)
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
            raise ValueError(f"`image_size` must be a positive multiple of 32 (the deepest stride), got {self.image_size}.")
        if self.warmup_calls < 0 or self.min_seconds < 0 or self.threads < 0:
            raise ValueError("`warmup_calls`, `min_seconds` and `threads` must be non-negative.")


def environment(settings: BenchmarkSettings) -> dict:
    """Where and with what the run took place, the allocator included."""
    import onnxruntime
    import transformers

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if settings.device == "cuda" else cpu,
        "allocator": detect_allocator(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        # On CUDA, "fp32" convolutions run in TF32 unless these say otherwise.
        "cuda_float32_matmul_precision": torch.get_float32_matmul_precision() if settings.device == "cuda" else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if settings.device == "cuda" else None,
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
        dtype: max((m for m in run["matmul"] if m["dtype"] == dtype), key=lambda m: m["median"]) for dtype in settings.dtypes
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
        memory = peak_memory_bytes(lambda: eager(pixel_values), existing, device)
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
                record["max_relative_error"] = relative_error(output, expected)
                if not record["max_relative_error"] <= TOLERANCES[dtype]:
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


# ---------------------------------------------------------------------------------------------------------------------
# Summaries: best paths, paired ratios, fractions of the peak, targets.


def _key(record: dict) -> str:
    return f"{record['model']}|{record['dtype']}|{record['mode']}|{record['path']}|b{record['batch_size']}"


def timed_records(run: dict) -> dict[str, dict]:
    """The measurements that were checked and timed, by `model|dtype|mode|path|bN`."""
    return {_key(r): r for r in run["measurements"] if r["status"] == "ok" and "samples" in r}


def best_paths(run: dict) -> dict[str, dict]:
    """For every `model|dtype|bN`: the timed inference record with the highest median throughput."""
    best = {}
    for record in timed_records(run).values():
        if record["mode"] == "inference":
            slot = f"{record['model']}|{record['dtype']}|b{record['batch_size']}"
            if slot not in best or record["median"] > best[slot]["median"]:
                best[slot] = record
    return best


def find_series(run: dict, measure: str, model: str, dtype: str, batch_size: int) -> dict | None:
    """The timed record of `measure` ("inference/eager", "inference/best" or "train/eager") for one model."""
    if measure == "inference/best":
        return best_paths(run).get(f"{model}|{dtype}|b{batch_size}")
    mode, path = measure.split("/")
    return timed_records(run).get(f"{model}|{dtype}|{mode}|{path}|b{batch_size}")


def summarize(run: dict, reference: str = "lale-tiny") -> dict:
    """The reference model's paired ratios against every model, path speed-ups, fractions of the matmul peak."""
    settings = run["settings"]
    measures = [(m, b) for m in ("inference/eager", "inference/best") for b in settings["inference_batch_sizes"]]
    measures.append(("train/eager", settings["train_batch_size"]))
    ratios, fractions, speedups = [], [], []
    for dtype in settings["dtypes"]:
        peak = run["matmul_peak"][dtype]
        for model in settings["models"]:
            info = run["models"][model]
            for measure, batch_size in measures:
                series = find_series(run, measure, model, dtype, batch_size)
                if series is None:
                    continue
                where = {"dtype": dtype, "measure": measure, "batch_size": batch_size}
                other = find_series(run, measure, reference, dtype, batch_size) if model != reference else None
                if other is not None:
                    ratios.append({**where, "numerator": reference, "denominator": model,
                                   **paired_ratio(other["samples"], series["samples"])})  # fmt: skip
                gflop = info["train_gflops_per_image"] if measure.startswith("train") else 2 * info["gmacs"]
                achieved = [gflop * images for images in series["samples"]]
                fractions.append({**where, "model": model, "path": series["path"], **paired_ratio(achieved, peak["samples"])})
                if measure == "inference/eager":
                    for record in timed_records(run).values():
                        if (record["model"], record["dtype"], record["mode"], record["batch_size"]) == (
                            model, dtype, "inference", batch_size
                        ) and record["path"] != "eager":  # fmt: skip
                            speedups.append({**where, "model": model, "path": record["path"],
                                             **paired_ratio(record["samples"], series["samples"])})  # fmt: skip
    summary = {"reference": reference, "ratios": ratios, "peak_fractions": fractions, "path_speedups": speedups}
    summary["best_paths"] = {slot: record["path"] for slot, record in best_paths(run).items()}
    summary["targets"] = evaluate_targets(run, summary) if "fp32" in settings["dtypes"] else []
    return summary


def target_name(target: Target, settings: dict) -> str:
    largest, size = max(settings["inference_batch_sizes"]), settings["image_size"]
    batch = settings["train_batch_size"] if target.measure.startswith("train") else largest
    measure = {"inference/eager": "eager inference", "inference/best": "best path", "train/eager": "training"}
    if target.kind == "ratio":
        return f"{measure[target.measure]} b{batch}: {target.model} / {target.other}"
    if target.kind == "peak_fraction":
        return f"{measure[target.measure]} b{batch}: {target.model}, fraction of the fp32 matmul peak"
    return f"{target.model} {'parameters (M)' if target.kind == 'params_m' else f'GMACs at {size}x{size}'}"


def evaluate_targets(run: dict, summary: dict, targets: Iterable[Target] = TARGETS) -> list[dict]:
    """`targets` on the run's fp32 figures; those whose models were not run are left out."""
    settings = run["settings"]
    results = []
    for target in targets:
        batch = settings["train_batch_size"] if target.measure.startswith("train") else max(settings["inference_batch_sizes"])
        where = {"dtype": "fp32", "measure": target.measure, "batch_size": batch}
        if target.kind == "ratio":
            where.update(numerator=target.model, denominator=target.other)
            found = [r["median"] for r in summary["ratios"] if where.items() <= r.items()]
        elif target.kind == "peak_fraction":
            found = [f["median"] for f in summary["peak_fractions"] if {**where, "model": target.model}.items() <= f.items()]
        elif target.model in run["models"]:
            info = run["models"][target.model]
            found = [info["params"] / 1e6 if target.kind == "params_m" else info["gmacs"]]
        else:
            found = []
        if found:
            value = found[0]
            met = (target.min is None or value >= target.min) and (target.max is None or value <= target.max)
            results.append({"name": target_name(target, settings), "value": value, "min": target.min, "max": target.max, "met": met})
    return results


def compare_runs(numerator_run: dict, denominator_run: dict) -> list[dict]:
    """Paired ratios of every workload timed in both runs (e.g. tcmalloc over glibc, taken in lockstep)."""
    denominator = timed_records(denominator_run)
    comparisons = []
    for key, record in timed_records(numerator_run).items():
        if key in denominator and len(record["samples"]) == len(denominator[key]["samples"]):
            fields = {k: record[k] for k in ("model", "dtype", "mode", "path", "batch_size")}
            comparisons.append({**fields, **paired_ratio(record["samples"], denominator[key]["samples"])})
    return comparisons


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy at equal budget: `scripts/train.py` trains, the benchmark reads its `all_results.json`.

ACCURACY_KEYS = ("eval_macro_f1", "eval_mean_iou")


def read_accuracy(specs: Iterable[str]) -> dict[str, dict]:
    """Reads `NAME=PATH` pairs, PATH an `all_results.json` with `eval_macro_f1` and `eval_mean_iou` in [0, 1]."""
    accuracy = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"Expected NAME=PATH/all_results.json, got {spec!r}.")
        if not Path(path).is_file():
            raise FileNotFoundError(f"No all_results.json at {path!r} (for {name!r}).")
        values = json.loads(Path(path).read_text())
        missing = [key for key in ACCURACY_KEYS if key not in values]
        if missing:
            raise ValueError(f"{path} lacks {missing}; it has {sorted(values)}.")
        for key in ACCURACY_KEYS:
            if not 0.0 <= values[key] <= 1.0:
                raise ValueError(f"{path}: {key} = {values[key]} is not a fraction in [0, 1].")
        keys = (*ACCURACY_KEYS, "train_samples_per_second", "train_steps", "train_runtime_seconds")
        accuracy[name] = {key: values[key] for key in keys if key in values}
        accuracy[name]["source"] = str(path)
    return accuracy


# `accelerate launch` with this interpreter: the environment that runs the benchmark trains, whatever is on PATH.
ACCELERATE_LAUNCH = (sys.executable, "-m", "accelerate.commands.launch")


def equal_budget_commands(
    models: Iterable[str], dataset_name: str, output_dir: str | os.PathLike, minutes: float, seed: int,
    train_script: str = "scripts/train.py", extra_args: Iterable[str] = (),
) -> list[tuple[str, list[str], Path]]:  # fmt: skip
    """One `accelerate launch scripts/train.py` per model (`ACCELERATE_LAUNCH`): same data, seed and wall-clock budget.

    The budget must be what stops training, and the learning rate must not follow a step count that the budget cuts
    short: hence an epoch count no run reaches and a constant schedule (`extra_args` come last and can override).
    Every run starts from the weights the benchmark times (`build_model`, seeded; batch norms at PyTorch's default:
    MobileViT's own init would start it from degenerate activations), saved to `output_dir/NAME/init`. Returns
    (name, command, all_results.json path) per model.
    """
    if not minutes > 0:
        raise ValueError(f"The training budget must be positive, got {minutes} minutes.")
    commands = []
    for name in models:
        init_dir, run_dir = Path(output_dir) / name / "init", Path(output_dir) / name / "run"
        build_model(name, seed).save_pretrained(init_dir)
        command = [
            *ACCELERATE_LAUNCH, train_script, "--model_name_or_path", str(init_dir), "--dataset_name", dataset_name,
            "--output_dir", str(run_dir), "--seed", str(seed), "--max_train_minutes", f"{minutes:g}",
            "--num_train_epochs", "100000", "--lr_scheduler_type", "constant_with_warmup", *extra_args,
        ]  # fmt: skip
        commands.append((name, command, run_dir / "all_results.json"))
    return commands


# ---------------------------------------------------------------------------------------------------------------------
# Report.


def build_report(runs: list[dict], accuracy: dict | None = None, reference: str = "lale-tiny", command: str = "") -> dict:
    """The JSON document: each run with its summary; with two runs (two allocators), their paired ratios."""
    report = {"command": command, "runs": [{**run, "summary": summarize(run, reference)} for run in runs]}
    report["accuracy"] = accuracy or {}
    report["allocator_comparison"] = None
    if len(runs) == 2:
        first, second = (run["environment"]["allocator"] for run in runs)
        report["allocator_comparison"] = {"numerator": second, "denominator": first, "ratios": compare_runs(runs[1], runs[0])}
    return report


def _fmt_load(run: dict) -> str:
    load = run.get("load_average") or {}
    values = [load.get(k) for k in ("before_timing", "after_timing")]
    return "unknown" if None in values else f"{values[0]:.1f} before timing, {values[1]:.1f} after"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows), ""]


def _ratio_cell(ratio: dict | None) -> str:
    return "-" if ratio is None else f"{ratio['median']:.2f}x [{ratio['min']:.2f}, {ratio['max']:.2f}]"


def _results_table(run: dict, dtype: str, accuracy: dict) -> list[str]:
    settings, summary = run["settings"], run["summary"]
    batches, train_batch = settings["inference_batch_sizes"], settings["train_batch_size"]
    largest = max(batches)
    header = ["model", "params (M)", "fp32 safetensors (MB)", "GMACs", *(f"eager b{b}" for b in batches), f"train b{train_batch}",
              f"best path b{largest}", f"% of peak, eager / best b{largest}", f"peak memory, infer b{largest} / train (MB)"]  # fmt: skip
    if accuracy:
        header += ["macro F1 (%)", "mIoU (%)"]
    rows = []
    for model in settings["models"]:
        info = run["models"][model]

        def speed(measure, batch_size):
            series = find_series(run, measure, model, dtype, batch_size)
            return "-" if series is None else f"{series['median']:.1f}"

        best = find_series(run, "inference/best", model, dtype, largest)
        fraction = {f["measure"]: 100 * f["median"] for f in summary["peak_fractions"]
                    if (f["model"], f["dtype"], f["batch_size"]) == (model, dtype, largest)}  # fmt: skip
        memory = info["peak_memory_mb"]
        row = [model, f"{info['params'] / 1e6:.3f}", f"{info['safetensors_bytes'] / 1e6:.2f}", f"{info['gmacs']:.3f}",
               *(speed("inference/eager", b) for b in batches), speed("train/eager", train_batch),
               f"{best['median']:.1f} ({best['path']})" if best else "-",
               " / ".join(f"{fraction[m]:.0f}" if m in fraction else "-" for m in ("inference/eager", "inference/best")),
               f"{memory[f'{dtype}/inference_b{largest}']:.0f} / {memory[f'{dtype}/train_b{train_batch}']:.0f}"]  # fmt: skip
        if accuracy:
            scores = accuracy.get(model)
            row += [f"{100 * scores[k]:.2f}" if scores else "-" for k in ACCURACY_KEYS]
        rows.append(row)
    return _table(header, rows)


def _paths_table(run: dict, dtype: str) -> list[str]:
    batches = run["settings"]["inference_batch_sizes"]
    speedups = {(s["model"], s["path"], s["batch_size"]): s for s in run["summary"]["path_speedups"] if s["dtype"] == dtype}
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
        rows.append([model, path, *cells, f"{max(errors):.1e}" if errors else "-", f"{sum(seconds):.1f}" if seconds else "-"])
    return _table(["model", "path", *(f"b{b}" for b in batches), "max rel. error", "first calls (s)"], rows)


def render_markdown(report: dict) -> str:
    """The report as markdown: per run and dtype the results, the paired ratios and the paths; targets; allocators."""
    lines = ["# LALE efficiency benchmark", ""]
    if report["command"]:
        lines += [f"`{report['command']}`", ""]
    for run in report["runs"]:
        env, settings, summary = run["environment"], run["settings"], run["summary"]
        lines += [
            f"## {env['device']}, {env['threads']} threads, allocator {env['allocator']}, {env['date'][:10]}", "",
            f"torch {env['torch']}, transformers {env['transformers']}, onnxruntime {env['onnxruntime']}. "
            f"Random weights, {settings['image_size']}x{settings['image_size']} inputs, 7 classes; "
            f"{settings['rounds']} interleaved rounds, medians. Throughput in images/s. GMACs = FLOPs / 2 (torch's "
            f"FLOP counter). Run time {run['wall_seconds'] / 60:.1f} min, of which setup {run['setup_seconds'] / 60:.1f}. "
            f"1-minute load average {_fmt_load(run)} on {env['logical_cpus']} logical CPUs (this run included); "
            f"process peak RSS {run.get('peak_rss_mb', math.nan):.0f} MB.",
            "",
        ]  # fmt: skip
        for dtype in settings["dtypes"]:
            peak = run["matmul_peak"][dtype]
            lines += [f"### {dtype}; matmul peak {peak['median']:.0f} GFLOP/s (size {peak['size']}, same run)", ""]
            lines += _results_table(run, dtype, report["accuracy"])
            ratios = [r for r in summary["ratios"] if r["dtype"] == dtype]
            if ratios:
                columns = [(m, b) for m in ("inference/eager", "inference/best", "train/eager")
                           for b in sorted({r["batch_size"] for r in ratios if r["measure"] == m})]  # fmt: skip
                cells = {(r["denominator"], r["measure"], r["batch_size"]): r for r in ratios}
                lines += [f"{summary['reference']} over each model, ratio of paired rounds: median [min, max]", ""]
                lines += _table(
                    ["model", *(f"{m.replace('inference/', '').replace('/eager', '')} b{b}" for m, b in columns)],
                    [[model, *(_ratio_cell(cells.get((model, *c))) for c in columns)]
                     for model in settings["models"] if model != summary["reference"]],
                )  # fmt: skip
            lines += ["Deployment paths: images/s (paired speed-up over eager), max error relative to eager fp32", ""]
            lines += _paths_table(run, dtype)
        if summary["targets"]:
            lines += ["### Targets (fp32)", ""]
            lines += _table(
                ["target", "measured", "required", "met"],
                [[t["name"], f"{t['value']:.3f}",
                  " and ".join(f"{op} {v}" for op, v in ((">=", t["min"]), ("<=", t["max"])) if v is not None),
                  "yes" if t["met"] else "**no**"] for t in summary["targets"]],
            )  # fmt: skip
    comparison = report["allocator_comparison"]
    if comparison:
        lines += [f"## Allocator: {comparison['numerator']} over {comparison['denominator']}", "",
                  "The two processes took turns group by group (lockstep); each ratio pairs the samples of one round.", ""]  # fmt: skip
        lines += _table(
            ["model", "dtype", "workload", "ratio"],
            [[r["model"], r["dtype"], f"{r['mode']} {r['path']} b{r['batch_size']}", _ratio_cell(r)] for r in comparison["ratios"]],
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
        xscale="log", yscale="log", xlabel=f"GMACs per {settings['image_size']}x{settings['image_size']} image (FLOPs / 2)",
        ylabel=f"inference images/s, batch {largest}, {dtype}",
        title=f"filled: eager, ring: best path; area ~ parameters\n{env['device']}, {env['threads']} threads, "
        f"{env['allocator']}, {env['date'][:10]}",
    )  # fmt: skip
    speed_axis.legend(fontsize=8, markerscale=0.5)
    if accuracy:
        accuracy_axis.set(xscale="log", xlabel=f"best-path images/s, batch {largest}", ylabel="macro F1 (%)",
                          title="accuracy at equal training budget")  # fmt: skip
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
