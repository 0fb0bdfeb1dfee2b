"""The deployment paths a model is timed along (eager, channels_last, torch.compile, ONNX Runtime in fp32 and static
int8), and the training step."""

import contextlib
import copy
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lale_hf.inference import LogitsOnly, compile_for_inference


PATHS = ("eager", "channels_last", "compile", "onnxruntime", "onnxruntime-int8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Largest max-abs error, relative to the largest eager fp32 logit, that a path may show before it is timed.
TOLERANCES = {"fp32": 1e-3, "bf16": 5e-2}
# Paths that round weights and activations to int8: their logits move by far more than any tolerance, so what they
# must keep is the class map. The least share of logit pixels whose argmax equals eager fp32's before the path is
# timed. The zoo's random weights give near-uniform logits that flip under any rounding (96-97% agree here),
# so the bar is lower than for trained weights, which agree on 99.7% of pixels (benchmarks/benchmark_quantization.py, docs/quantization.md).
CLASS_MAP_AGREEMENT = {"onnxruntime-int8": 0.9}
# Calibration inputs of the int8 path: drawn like the benchmark's own inputs (standard normal pixel values).
CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 4, 4


class PathUnavailable(RuntimeError):
    """A deployment path that does not apply to this setting (e.g. ONNX Runtime in bf16)."""


def autocast_context(dtype: str, device: torch.device):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def class_map_agreement(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of pixels whose arg-max class is the same in two logit tensors (B, classes, H, W)."""
    if output.shape != reference.shape:
        raise ValueError(f"Cannot compare logits of shape {tuple(output.shape)} with {tuple(reference.shape)}.")
    return float((output.float().argmax(1) == reference.float().argmax(1)).float().mean())


def calibration_batches(image_size: tuple[int, int], seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    shape = (CALIBRATION_BATCH_SIZE, 3, *image_size)
    return [torch.randn(*shape, generator=generator).numpy() for _ in range(CALIBRATION_BATCHES)]


def onnx_session(
    model: nn.Module,
    folder: str,
    threads: int,
    device: torch.device,
    image_size: tuple[int, int],
    quantize: bool = False,
):
    """Exports `model` as the project ships it (`lale_hf.export_onnx`; with `quantize`, then
    `quantize_onnx_on_batches` with its default settings) and opens an ONNX Runtime session on it."""
    import onnxruntime

    from lale_hf import export_onnx

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise PathUnavailable(f"onnxruntime has no {provider}")
    path = Path(tempfile.mkdtemp(dir=folder)) / "model.onnx"
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress to stdout
        export_onnx(copy.deepcopy(model).cpu(), path, example_size=image_size)
    if quantize:
        from lale_hf.inference.quantization import quantize_onnx_on_batches

        source = {"calibration": f"{CALIBRATION_BATCHES} x {CALIBRATION_BATCH_SIZE} standard normal inputs"}
        path = quantize_onnx_on_batches(
            path, path.with_name("model-int8.onnx"), calibration_batches(image_size), source=source
        )
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
    elif path in ("onnxruntime", "onnxruntime-int8"):
        quantize = path == "onnxruntime-int8"
        if dtype != "fp32":
            raise PathUnavailable(f"the {path} path is benchmarked in fp32 only")
        if quantize and device.type != "cpu":
            raise PathUnavailable("the int8 ONNX Runtime path is benchmarked on the CPU only")
        sessions = []  # exported on the first call, with dynamic batch, height and width

        def run_onnxruntime(pixel_values: torch.Tensor) -> torch.Tensor:
            if not sessions:
                size = tuple(pixel_values.shape[2:])
                sessions.append(onnx_session(model, folder, threads, device, size, quantize=quantize))
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
        tensors = [t for t in state if isinstance(t, torch.Tensor)]
        return [*model.parameters(), *model.buffers(), *tensors, pixel_values, labels]

    return step, resident
