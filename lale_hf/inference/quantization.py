"""Static int8 quantisation of an exported ONNX model with ONNX Runtime, calibrated on real images.

`quantize_onnx` reads an fp32 file written by `export_onnx`, runs it over calibration images (a dataset folder in
this project's layout or a folder of 8-bit RGB images), and writes a QDQ model: int8 weights per output channel,
int8 activations whose ranges the calibration measured. The file keeps the fp32 file's label and preprocessing
metadata and records how it was quantised, so `OnnxPredictor` and `scripts/predict.py` run it like any export.

The defaults (MinMax calibration, Conv and MatMul quantised, the stem and the classifier kept in float) were chosen from
measurements on real Sentinel-2 patches: `docs/quantization.md`. Calibration is deterministic for a seed: the same
inputs give a byte-identical file.
"""

import ast
import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..file_utils import write_atomic
from ..preprocessing import Preprocessing, PreprocessingError
from .errors import InferenceError
from .extras import import_onnx, import_onnxruntime
from .sources import IMAGE_SUFFIXES, RASTER_SUFFIXES, open_source


QUANTIZE_CHOICES = ("none", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Operators whose presence means a file is already quantised (QDQ or QOperator format, static or dynamic).
QUANTIZED_OP_TYPES = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
    }
)
# Quantised operator types: the weighted layers. Quantising element-wise Add/Mul (residuals, RMSNorm, StarReLU)
# as well cost accuracy and gave no speed here (docs/quantization.md).
DEFAULT_OP_TYPES = ("Conv", "MatMul")
DEFAULT_CALIBRATION_SAMPLES = 64
CALIBRATION_BATCH_SIZE = 8
# The metadata key that records the quantisation (and marks a file as quantised).
METADATA_KEY = "quantization"


class QuantizationError(InferenceError):
    """A model, calibration input or setting that int8 quantisation cannot use; the message names it."""


@dataclass(frozen=True)
class QuantizationSettings:
    """How a model is quantised. `keep_float` names ONNX nodes (or the aliases of `resolve_keep_float`) that stay
    in float: by default LALE's stem and the classifier, chosen from measurements (docs/quantization.md)."""

    calibration_method: str = "minmax"
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    seed: int = 0
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    keep_float: tuple[str, ...] = ("stem", "classifier")
    per_channel: bool = True
    calibration_split: str = "train"

    def __post_init__(self):
        if self.calibration_method not in CALIBRATION_METHODS:
            raise QuantizationError(
                f"--calibration_method {self.calibration_method!r}: expected one of {', '.join(CALIBRATION_METHODS)}."
            )
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise QuantizationError(
                f"--calibration_samples {self.calibration_samples!r}: expected a positive number of images."
            )
        if not self.op_types:
            raise QuantizationError("op_types: expected at least one operator type to quantise.")


def check_quantize_choice(value: str) -> str:
    """The `--quantize` value, or a `QuantizationError` naming the choices."""
    if value not in QUANTIZE_CHOICES:
        raise QuantizationError(f"--quantize {value!r}: expected one of {', '.join(QUANTIZE_CHOICES)}.")
    return value


# --- calibration images -----------------------------------------------------------------------------------------


def _check_rgb(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    bands = array.shape[-1] if array.ndim == 3 else None
    if bands != 3 or array.dtype != np.uint8:
        raise QuantizationError(
            f"calibration image {name}: {bands} band(s) of {array.dtype}; calibration needs 8-bit RGB images (3 "
            "bands of uint8), the imagery the model predicts on. Select and scale the RGB bands first "
            "(lale_hf.scale_to_uint8)."
        )
    return array


def _read_image_file(path: Path) -> np.ndarray:
    source = open_source(path)
    try:
        # Checked before reading: a multi-band scene is refused without loading it.
        _check_rgb(np.zeros((1, 1, source.count), dtype=source.dtype), str(path))
        array = source.read(list(range(1, source.count + 1)), 0, 0, source.height, source.width)
    finally:
        source.close()
    return _check_rgb(np.asarray(array), str(path))


def _dataset_shards(folder: Path, split: str) -> list[Path]:
    return sorted((folder / "data").glob(f"{split}-*.parquet"))


def is_dataset_folder(folder: Path) -> bool:
    """A folder in this project's dataset layout (`data/<split>-*.parquet`, as `convert_aras400k` writes it)."""
    return (folder / "data").is_dir() and any((folder / "data").glob("*.parquet"))


def _list_dataset_images(folder: Path, split: str) -> list[tuple[str, object]]:
    import pyarrow.parquet as parquet

    shards = _dataset_shards(folder, split)
    if not shards:
        splits = sorted({path.name.split("-", 1)[0] for path in (folder / "data").glob("*.parquet")})
        raise QuantizationError(
            f"--calibration_dataset {folder}: no split {split!r} (data/{split}-*.parquet); it has {splits}."
        )
    entries = []
    for shard in shards:
        table = parquet.read_table(shard, columns=["image", "name"])
        for row, (image, name) in enumerate(zip(table.column("image").to_pylist(), table.column("name").to_pylist())):
            entries.append((f"{shard.name}:{name or row}", image["bytes"]))
    return entries


def _decode_png_bytes(data: bytes, name: str) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.array(image)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise QuantizationError(f"calibration image {name}: cannot decode it ({error}).") from error
    return _check_rgb(array, name)


def load_calibration_images(
    source: str | os.PathLike, num_samples: int, seed: int = 0, split: str = "train", crop_size: int = 256
) -> list[tuple[str, np.ndarray]]:
    """`num_samples` images (name, uint8 HxWx3 array) drawn from `source` with `seed`, in a fixed order.

    `source` is a dataset folder in this project's layout (images of `split`) or a folder of image files (PNG, JPEG,
    GeoTIFF...; subfolders are not searched). Images are centre-cropped to at most `crop_size` square, the tile size
    prediction feeds. Every image must be 8-bit RGB: anything else, or a folder with no image, is a
    `QuantizationError` naming it.
    """
    folder = Path(source)
    if not folder.is_dir():
        raise QuantizationError(f"--calibration_dataset {folder}: no such folder (expected a dataset or image folder).")
    if is_dataset_folder(folder):
        entries = _list_dataset_images(folder, split)
        decode = _decode_png_bytes
    else:
        suffixes = IMAGE_SUFFIXES + RASTER_SUFFIXES
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        entries = [(str(path), path) for path in files]

        def decode(path, name):
            return _read_image_file(path)

    if not entries:
        raise QuantizationError(
            f"--calibration_dataset {folder}: no calibration images (expected image files "
            f"{', '.join(IMAGE_SUFFIXES + RASTER_SUFFIXES)} or a dataset folder with data/*.parquet)."
        )
    chosen = sorted(random.Random(seed).sample(range(len(entries)), min(num_samples, len(entries))))
    images = []
    for index in chosen:
        name, payload = entries[index]
        array = decode(payload, name)
        height, width = array.shape[:2]
        top, left = max(0, (height - crop_size) // 2), max(0, (width - crop_size) // 2)
        images.append((name, np.ascontiguousarray(array[top : top + crop_size, left : left + crop_size])))
    return images


def calibration_batches(images: list[tuple[str, np.ndarray]], preprocessing: Preprocessing) -> list[np.ndarray]:
    """Normalised `pixel_values` batches of images of equal size, in the images' order."""
    batches, current = [], []
    for _, image in images:
        if current and (image.shape != current[-1].shape or len(current) == CALIBRATION_BATCH_SIZE):
            batches.append(preprocessing.to_array(np.stack(current)))
            current = []
        current.append(image)
    if current:
        batches.append(preprocessing.to_array(np.stack(current)))
    return batches


def _data_reader(batches: list[np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

        def rewind(self):
            self._batches = iter(batches)

    return BatchReader()


# --- the quantisation --------------------------------------------------------------------------------------------


def is_quantized(proto) -> bool:
    """True for a model holding quantisation operators or this module's metadata record."""
    if any(prop.key == METADATA_KEY for prop in proto.metadata_props):
        return True
    return any(node.op_type in QUANTIZED_OP_TYPES for node in proto.graph.node)


def _last_conv(proto) -> str | None:
    """The node producing the graph output through at most shape-preserving ops: the classifier (a 1x1 Conv)."""
    producers = {output: node for node in proto.graph.node for output in node.output}
    node = producers.get(proto.graph.output[0].name)
    while node is not None and node.op_type != "Conv":
        node = producers.get(node.input[0]) if node.input else None
    return node.name if node is not None else None


def _module_scope(node) -> str:
    """The module a node of a torch.onnx (dynamo) export came from, e.g. `model.lale.stem`; "" when not recorded."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return scopes[-2] if len(scopes) > 1 else ""
    return ""


def resolve_keep_float(proto, keep_float: tuple[str, ...]) -> list[str]:
    """ONNX node names for `keep_float`. Aliases: `classifier` (the last Conv), `stem` (the Convs of LALE's stem,
    which see the image at full detail), `attention` (every Softmax and the MatMuls it feeds); other entries are node
    names and must exist."""
    names = {node.name for node in proto.graph.node}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    resolved = []
    for entry in keep_float:
        if entry == "classifier":
            classifier = _last_conv(proto)
            resolved += [classifier] if classifier else []
        elif entry == "stem":
            resolved += [
                node.name
                for node in proto.graph.node
                if node.op_type == "Conv" and _module_scope(node).split(".")[:3] == ["model", "lale", "stem"]
            ]
        elif entry == "attention":
            for node in proto.graph.node:
                if node.op_type == "Softmax":
                    resolved.append(node.name)
                    resolved += [c.name for c in consumers.get(node.output[0], []) if c.op_type == "MatMul"]
        elif entry in names:
            resolved.append(entry)
        else:
            raise QuantizationError(
                f"keep_float {entry!r}: no such ONNX node (expected 'classifier', 'stem', 'attention' or a node name)."
            )
    return sorted(set(resolved))


def _read_fp32_model(input_path: Path):
    onnx = import_onnx()
    if input_path.suffix.lower() != ".onnx" or not input_path.is_file():
        raise QuantizationError(f"{input_path}: expected an existing .onnx file written by export_onnx.")
    try:
        proto = onnx.load(str(input_path))
    except Exception as error:  # onnx raises protobuf's own errors for malformed files
        raise QuantizationError(f"{input_path}: not a readable ONNX model ({error}).") from error
    if is_quantized(proto):
        raise QuantizationError(
            f"{input_path}: the model is already quantised; quantise the fp32 export (scripts/export_onnx.py "
            "--quantize none) instead."
        )
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    if "preprocessing" not in metadata or "id2label" not in metadata:
        raise QuantizationError(
            f"{input_path}: the ONNX file carries no label names or preprocessing in its metadata; export it with "
            "lale_hf.inference.export_onnx."
        )
    try:
        preprocessing = Preprocessing.from_dict(json.loads(metadata["preprocessing"]))
    except (json.JSONDecodeError, PreprocessingError) as error:
        raise QuantizationError(f"{input_path}: unreadable preprocessing metadata ({error}).") from error
    return proto, metadata, preprocessing


def quantize_onnx(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration_dataset: str | os.PathLike,
    settings: QuantizationSettings | None = None,
) -> Path:
    """Writes the static int8 (QDQ, per-channel weights) version of the fp32 ONNX file `input_path`.

    Activation ranges are calibrated on `settings.calibration_samples` images of `calibration_dataset` (drawn with
    `settings.seed`). Every input is checked before anything is written; the output appears atomically, only when
    complete, and is byte-identical for the same inputs and settings.
    """
    settings = settings or QuantizationSettings()
    input_path, output_path = _check_paths(input_path, output_path)
    _, _, preprocessing = _read_fp32_model(input_path)
    crop = max(preprocessing.size) if preprocessing.size else 256
    images = load_calibration_images(
        calibration_dataset, settings.calibration_samples, settings.seed, settings.calibration_split, crop
    )
    try:
        batches = calibration_batches(images, preprocessing)
    except PreprocessingError as error:
        raise QuantizationError(f"--calibration_dataset {calibration_dataset}: {error}") from error
    source = {"calibration_dataset": Path(calibration_dataset).name, "calibration_images": len(images)}
    return quantize_onnx_on_batches(input_path, output_path, batches, settings, source)


def _check_paths(input_path, output_path) -> tuple[Path, Path]:
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() != ".onnx":
        raise QuantizationError(f"--output {output_path}: expected a file name ending in .onnx.")
    if output_path.resolve() == input_path.resolve():
        raise QuantizationError(f"--output {output_path}: would overwrite the fp32 model it quantises.")
    return input_path, output_path


def quantize_onnx_on_batches(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    batches: list[np.ndarray],
    settings: QuantizationSettings | None = None,
    source: dict | None = None,
) -> Path:
    """`quantize_onnx` calibrated on ready `pixel_values` batches (float32, N x C x H x W) instead of image files;
    `source` describes them in the file's quantisation record. For benchmarks on synthetic inputs."""
    import_onnxruntime()
    onnx = import_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = settings or QuantizationSettings()
    input_path, output_path = _check_paths(input_path, output_path)
    proto, metadata, _ = _read_fp32_model(input_path)
    if not batches:
        raise QuantizationError("calibration: no batches to calibrate on.")
    keep_float = resolve_keep_float(proto, settings.keep_float)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.calibration_method]
    with tempfile.TemporaryDirectory(prefix="lale-quantize-") as scratch:
        quantized_path = Path(scratch) / "model.int8.onnx"
        prepared_path = Path(scratch) / "model.prepared.onnx"
        # Folds the decoder's weight products (computed in the graph) into constants, so they quantise as weights.
        quant_pre_process(str(input_path), str(prepared_path), skip_symbolic_shape=True)
        quantize_static(
            str(prepared_path),
            str(quantized_path),
            _data_reader(batches, proto.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method=method,
        )
        quantized = onnx.load(str(quantized_path))
    record = {
        **asdict(settings),
        "op_types": list(settings.op_types),
        "keep_float": list(settings.keep_float),
        "kept_float_nodes": keep_float,
        "format": "QDQ",
        "weights": "int8 per channel" if settings.per_channel else "int8 per tensor",
        "activations": "int8 per tensor",
        **(source or {"calibration_batches": len(batches)}),
    }
    del quantized.metadata_props[:]
    for key, value in {**metadata, METADATA_KEY: json.dumps(record, sort_keys=True)}.items():
        quantized.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(quantized)
    return write_atomic(output_path, quantized.SerializeToString())


def quantization_record(path: str | os.PathLike) -> dict | None:
    """The quantisation record of an ONNX file written by `quantize_onnx`, None for an unquantised file."""
    onnx = import_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_SAMPLES",
    "QUANTIZE_CHOICES",
    "QuantizationError",
    "QuantizationSettings",
    "calibration_batches",
    "check_quantize_choice",
    "is_quantized",
    "load_calibration_images",
    "quantization_record",
    "quantize_onnx",
    "quantize_onnx_on_batches",
    "resolve_keep_float",
]
