"""Models behind one interface: normalised pixel batches in, logits at 1/4 resolution out (PyTorch or ONNX Runtime)."""

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..image_processing_lale import LaleImageProcessor
from ..preprocessing import Preprocessing, PreprocessingError, preprocessing_from_processor
from .errors import InferenceError
from .extras import import_onnxruntime


class Predictor:
    """A segmentation model that maps normalised pixel batches (B, 3, H, W) to logits (B, classes, H/4, W/4).

    `preprocessing` is the model's own (read from its image processor, or from the ONNX metadata).
    """

    backend = "none"

    def __init__(self, name: str, id2label: dict, preprocessing: Preprocessing):
        if preprocessing.num_channels != 3:
            raise InferenceError(
                f"{name}: the model's image processor expects {preprocessing.num_channels} channels; prediction "
                "feeds three (R, G, B)."
            )
        self.name = name
        self.id2label = {int(key): value for key, value in id2label.items()}
        self.preprocessing = preprocessing

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB to float32 (3, H, W) `pixel_values`, as the model's image processor makes them."""
        return self.preprocessing.to_array(image)

    def __call__(self, pixel_values: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


def compile_for_inference(module: torch.nn.Module):
    """`torch.compile` with inductor's weight freezing: the weights become constants of the graph, prepacked for
    oneDNN, so later changes to them are not seen. The fastest PyTorch path on CPU here (`docs/benchmark.md`); the
    first call of each input shape compiles."""
    from torch._inductor import config as inductor_config

    compiled = torch.compile(module, dynamic=False)

    def run(*args, **kwargs):
        # torch.compile(options=...) does not pass freezing on; patching the config for the call does.
        with inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return run


class TorchPredictor(Predictor):
    """A transformers model (put in eval mode) with the preprocessing of its image processor.

    Without a processor, LALE's defaults apply (resize to 256, 1/255, ImageNet mean and std). `channels_last`
    converts the model's weights in place and feeds it channels-last batches: 1.35x faster for LALE-tiny on CPU
    here, logits equal to 1e-6 relative. `torch_compile` runs it through `compile_for_inference`.
    """

    backend = "pytorch"

    def __init__(
        self,
        model,
        image_processor=None,
        name: str | None = None,
        channels_last: bool = False,
        torch_compile: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ):
        processor = image_processor if image_processor is not None else LaleImageProcessor()
        name = name or getattr(model, "name_or_path", "") or type(model).__name__
        try:
            preprocessing = preprocessing_from_processor(processor)
        except PreprocessingError as error:
            raise InferenceError(f"{name}: {error}") from error
        super().__init__(name, model.config.id2label, preprocessing)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(memory_format=self.memory_format)
        self.device = next(model.parameters()).device
        if autocast_dtype is not None and self.device.type != "cuda":
            raise InferenceError(f"--dtype {_DTYPE_NAMES.get(autocast_dtype)}: needs a CUDA device; this one is CPU.")
        self.autocast_dtype = autocast_dtype
        self.forward = self.model
        if torch_compile:
            # One eager call first: transformers installs its output-capturing hooks on the first forward, and
            # doing that inside the traced graph breaks the graph into pieces.
            with torch.inference_mode():
                self.model(pixel_values=torch.zeros(1, 3, 64, 64, device=self.device))
            self.forward = compile_for_inference(self.model)

    def __call__(self, pixel_values: np.ndarray) -> torch.Tensor:
        pixel_values = torch.from_numpy(pixel_values).to(self.device, memory_format=self.memory_format)
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with torch.inference_mode(), autocast:
            logits = self.forward(pixel_values=pixel_values).logits
        return logits.float().cpu()


class OnnxPredictor(Predictor):
    """An ONNX model written by `lale_hf.inference.export_onnx`, run by ONNX Runtime on the CPU."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        onnxruntime = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--model {path}: no such ONNX file.")
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for malformed files
            raise InferenceError(f"--model {path}: not a readable ONNX model ({error}).") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "id2label" not in metadata or "preprocessing" not in metadata:
            raise InferenceError(
                f"--model {path}: the ONNX file carries no label names or preprocessing in its metadata; export it "
                "with lale_hf.inference.export_onnx."
            )
        try:
            id2label = json.loads(metadata["id2label"])
            preprocessing = Preprocessing.from_dict(json.loads(metadata["preprocessing"]))
        except (json.JSONDecodeError, PreprocessingError) as error:
            raise InferenceError(
                f"--model {path}: unreadable label names or preprocessing metadata ({error})."
            ) from error
        super().__init__(str(path), id2label, preprocessing)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, pixel_values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: pixel_values})[0])


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
PREDICTION_DTYPES = ("fp32", "bf16")


def load_predictor(
    model,
    trust_remote_code: bool = False,
    num_threads: int | None = None,
    torch_compile: bool = False,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
) -> Predictor:
    """A `Predictor` from a model object, a local checkpoint folder, a Hub id (cached or reachable) or an .onnx file.

    Checkpoints go to `device` (default: CUDA when present, else CPU), run channels-last on the CPU, and through
    `compile_for_inference` with `torch_compile`. `dtype="bf16"` runs the model under bf16 autocast, on CUDA only;
    logits are returned in fp32 either way.
    """
    if dtype not in PREDICTION_DTYPES:
        raise InferenceError(f"--dtype {dtype!r}: expected one of {', '.join(PREDICTION_DTYPES)}.")
    autocast_dtype = torch.bfloat16 if dtype == "bf16" else None
    if isinstance(model, Predictor):
        if autocast_dtype is not None:
            raise InferenceError("--dtype bf16 applies to checkpoints loaded by name, not to a ready Predictor.")
        return model
    if hasattr(model, "config") and callable(model):
        if device is not None:
            model = model.to(device)
        return TorchPredictor(model, torch_compile=torch_compile, autocast_dtype=autocast_dtype)
    reference = str(model)
    path = Path(reference)
    if path.suffix.lower() == ".onnx":
        if torch_compile or autocast_dtype is not None:
            option = "--torch_compile" if torch_compile else "--dtype bf16"
            raise InferenceError(f"{option} applies to PyTorch checkpoints, not to the ONNX file {reference}.")
        return OnnxPredictor(path, num_threads=num_threads)
    if path.is_file():
        raise InferenceError(
            f"--model {reference}: a file that is not an .onnx model; expected a checkpoint folder, a Hub id or an "
            ".onnx file."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise InferenceError(f"--model {reference}: the folder holds no config.json; expected a saved checkpoint.")
    looks_like_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", reference) is not None and not reference.startswith(".")
    if not path.is_dir() and not looks_like_hub_id:
        raise FileNotFoundError(f"--model {reference}: no such folder or .onnx file (and not a Hub id).")
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    try:
        loaded = AutoModelForSemanticSegmentation.from_pretrained(
            # fp32 whatever dtype the weights are stored in (fp16/bf16 checkpoints: docs/quantization.md)
            reference,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            dtype=torch.float32,
        )
    except (OSError, ValueError) as error:
        where = "the local folder" if path.is_dir() else "no such local folder or .onnx file, and the Hub id"
        raise InferenceError(f"--model {reference}: {where} gives no segmentation model ({error}).") from error
    try:
        processor = AutoImageProcessor.from_pretrained(reference, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        processor = None  # no preprocessor_config.json: LALE's defaults (ImageNet mean and std)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = loaded.to(device)
    return TorchPredictor(
        loaded,
        processor,
        name=reference,
        channels_last=loaded.device.type == "cpu",
        torch_compile=torch_compile,
        autocast_dtype=autocast_dtype,
    )


def model_fingerprint(predictor: Predictor) -> str:
    """SHA-256 of the model's weights (PyTorch) or file (ONNX): a resumed run must use the same model."""
    import hashlib

    while hasattr(predictor, "predictor"):  # a wrapper such as TestTimeAugmentation: the model is inside
        predictor = predictor.predictor
    digest = hashlib.sha256()
    if isinstance(predictor, OnnxPredictor):
        with open(predictor.name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    elif isinstance(predictor, TorchPredictor):
        for name, tensor in sorted(predictor.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        digest.update(f"{type(predictor).__qualname__}:{predictor.name}".encode())
    return digest.hexdigest()


__all__ = [
    "PREDICTION_DTYPES",
    "OnnxPredictor",
    "Predictor",
    "TorchPredictor",
    "compile_for_inference",
    "load_predictor",
    "model_fingerprint",
]
