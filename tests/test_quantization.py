"""int8 ONNX (static QDQ, calibrated on real patches) and half-precision weights, on a checkpoint trained on real
patches (`real_trained_checkpoint`): random weights give near-uniform logits whose argmax flips under any rounding,
so they would prove nothing about accuracy."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from lale_hf.inference import (
    OnnxPredictor,
    QuantizationError,
    QuantizationSettings,
    TorchPredictor,
    WeightConversionError,
    export_onnx,
    is_quantized,
    load_predictor,
    predict_image,
    quantization_record,
    quantize_onnx,
    relative_error,
    save_half_precision,
)


REPO_ROOT = Path(__file__).resolve().parents[1]
# Fewer calibration images than the default keeps each quantisation of the determinism test to seconds.
FAST = QuantizationSettings(calibration_samples=16)


def run(script: str, *args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / script), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def fp32_model(real_trained_checkpoint):
    return AutoModelForSemanticSegmentation.from_pretrained(real_trained_checkpoint, use_safetensors=True).eval()


@pytest.fixture(scope="module")
def fp32_onnx(real_trained_checkpoint, fp32_model, tmp_path_factory) -> Path:
    processor = AutoImageProcessor.from_pretrained(real_trained_checkpoint)
    return export_onnx(fp32_model, tmp_path_factory.mktemp("fp32") / "model.onnx", image_processor=processor)


@pytest.fixture(scope="module")
def random_onnx(lale_tiny_checkpoint, tmp_path_factory) -> Path:
    """A random lale-tiny exported: enough for determinism and input errors, which do not depend on the weights."""
    model = AutoModelForSemanticSegmentation.from_pretrained(lale_tiny_checkpoint, use_safetensors=True).eval()
    return export_onnx(model, tmp_path_factory.mktemp("random") / "model.onnx")


@pytest.fixture(scope="module")
def int8_export(real_trained_checkpoint, s2glc_dataset, tmp_path_factory) -> tuple[Path, str]:
    """scripts/export_onnx.py --quantize int8 with its defaults (64 train patches, MinMax); the file and stdout."""
    path = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    # conftest's clean_env, which is function-scoped
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONNOUSERSITE": "1"}
    result = run(
        "export_onnx.py",
        "--model",
        real_trained_checkpoint,
        "--output",
        path,
        "--quantize",
        "int8",
        "--calibration_dataset",
        s2glc_dataset,
        env=clean_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return path, result.stdout


@pytest.fixture(scope="module")
def validation_images(s2glc_sample) -> np.ndarray:
    """The 60 real validation patches (uint8, N x 256 x 256 x 3); calibration draws from train/ only."""
    paths = sorted((s2glc_sample / "val" / "images").glob("*.png"))
    return np.stack([np.array(Image.open(path).convert("RGB")) for path in paths])


def class_maps(predictor, images: np.ndarray) -> np.ndarray:
    """Full-resolution class maps: logits upsampled bilinearly to the patch size, then argmax (as evaluation does)."""
    maps = []
    for start in range(0, len(images), 20):
        logits = predictor(predictor.normalize(images[start : start + 20]))
        logits = torch.nn.functional.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
        maps.append(logits.argmax(1).numpy())
    return np.concatenate(maps)


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.slow  # trains real_trained_checkpoint (about 2 minutes on 2 idle cores) if no test did yet
def test_int8_class_maps_agree_with_fp32_on_real_validation_patches(int8_export, fp32_onnx, validation_images):
    fp32_maps = class_maps(OnnxPredictor(fp32_onnx), validation_images)
    int8_maps = class_maps(OnnxPredictor(int8_export[0]), validation_images)
    # A map of one class would agree trivially: this checkpoint splits the patches mainly into Tree and Crop.
    shares = np.sort(np.bincount(fp32_maps.ravel())) / fp32_maps.size
    assert shares[-2] > 0.1, shares
    agreement = float((fp32_maps == int8_maps).mean())
    assert agreement >= 0.98, f"int8 and fp32 class maps agree on {agreement:.2%} of validation pixels"
    # The check the script printed is the same measure, on its calibration images.
    assert "calibration images" in int8_export[1] and "pixels agree" in int8_export[1]


@pytest.mark.slow  # trains real_trained_checkpoint (about 2 minutes on 2 idle cores) if no test did yet
def test_int8_file_is_small_quantised_and_keeps_the_metadata(int8_export, fp32_onnx):
    path = int8_export[0]
    assert path.stat().st_size <= 0.30 * fp32_onnx.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no calibration or temporary leftovers
    model, reference = onnx.load(path), onnx.load(fp32_onnx)
    assert is_quantized(model) and not is_quantized(reference)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    expected = {prop.key: prop.value for prop in reference.metadata_props}
    for key in ("id2label", "label_names", "preprocessing", "output_stride", "model_type"):
        assert metadata[key] == expected[key]
    record = quantization_record(path)
    assert record["calibration_method"] == "minmax" and record["calibration_images"] == 64
    assert record["format"] == "QDQ" and record["weights"] == "int8 per channel" and record["seed"] == 0
    assert quantization_record(fp32_onnx) is None
    # Per-channel weights: one scale per output channel of a quantised Conv.
    scales = {init.name: init for init in model.graph.initializer if init.name.endswith("weight_scale")}
    assert any(len(init.dims) == 1 and init.dims[0] > 1 for init in scales.values())


@pytest.mark.slow  # trains real_trained_checkpoint (about 2 minutes on 2 idle cores) if no test did yet
def test_predict_script_runs_the_int8_file(int8_export, s2glc_sample, tmp_path, clean_env):
    patch = s2glc_sample / "val" / "images" / "s2glc_00275.png"
    result = run(
        "predict.py", "--model", int8_export[0], "--output_dir", tmp_path, "--no_progress", patch, env=clean_env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((tmp_path / "s2glc_00275_stats.json").read_text())
    assert stats["prediction"]["backend"] == "onnxruntime"
    written = np.array(Image.open(tmp_path / "s2glc_00275_classes.png"))
    in_process = predict_image(Image.open(patch), load_predictor(int8_export[0]))
    assert (written == in_process).mean() > 0.999


def test_calibration_is_deterministic_for_a_seed(random_onnx, s2glc_dataset, tmp_path):
    first = quantize_onnx(random_onnx, tmp_path / "a.onnx", s2glc_dataset, FAST)
    second = quantize_onnx(random_onnx, tmp_path / "b.onnx", s2glc_dataset, FAST)
    assert first.read_bytes() == second.read_bytes()
    other_seed = QuantizationSettings(calibration_samples=FAST.calibration_samples, seed=1)
    third = quantize_onnx(random_onnx, tmp_path / "c.onnx", s2glc_dataset, other_seed)
    assert third.read_bytes() != first.read_bytes()  # another draw of images gives other ranges


def test_an_image_folder_calibrates_too(random_onnx, s2glc_sample, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((s2glc_sample / "train" / "images").glob("*.png"))[:8]:
        shutil.copy(path, folder / path.name)
    output = quantize_onnx(random_onnx, tmp_path / "folder.onnx", folder, FAST)
    assert quantization_record(output)["calibration_images"] == 8


def rgba_folder(folder: Path, s2glc_sample: Path) -> Path:
    folder.mkdir()
    rgb = Image.open(next((s2glc_sample / "train" / "images").glob("*.png"))).convert("RGB")
    rgb.save(folder / "good.png")
    rgb.convert("RGBA").save(folder / "with_alpha.png")
    return folder


def raw_tif_folder(folder: Path, s2glc_sample: Path) -> Path:
    folder.mkdir()
    shutil.copy(next((s2glc_sample / "raw-tif").glob("*.tif")), folder / "scene.tif")
    return folder


@pytest.mark.parametrize(
    "make_folder, message",
    [
        (lambda folder, sample: folder.mkdir() or folder, r"no calibration images"),
        (rgba_folder, r"with_alpha\.png: 4 band\(s\) of uint8; calibration needs 8-bit RGB"),
        (raw_tif_folder, r"scene\.tif: 4 band\(s\) of uint16; calibration needs 8-bit RGB"),
    ],
    ids=["empty-folder", "rgba-png", "4-band-uint16-geotiff"],
)
def test_bad_calibration_folders_are_clear_errors_and_write_nothing(
    random_onnx, s2glc_sample, tmp_path, make_folder, message
):
    folder = make_folder(tmp_path / "calibration", s2glc_sample)
    output_folder = tmp_path / "out"
    output_folder.mkdir()
    with pytest.raises(QuantizationError, match=message):
        quantize_onnx(random_onnx, output_folder / "model.onnx", folder, FAST)
    assert leftovers(output_folder) == []


def test_quantising_a_quantised_file_is_refused(random_onnx, s2glc_dataset, tmp_path):
    once = quantize_onnx(random_onnx, tmp_path / "once.onnx", s2glc_dataset, FAST)
    with pytest.raises(QuantizationError, match=r"once\.onnx: the model is already quantised"):
        quantize_onnx(once, tmp_path / "twice.onnx", s2glc_dataset, FAST)
    # A QDQ file stripped of its record is still recognised by its operators.
    stripped = onnx.load(once)
    stripped.metadata_props.remove(next(p for p in stripped.metadata_props if p.key == "quantization"))
    onnx.save(stripped, tmp_path / "stripped.onnx")
    with pytest.raises(QuantizationError, match=r"already quantised"):
        quantize_onnx(tmp_path / "stripped.onnx", tmp_path / "twice.onnx", s2glc_dataset, FAST)
    assert leftovers(tmp_path) == ["once.onnx", "stripped.onnx"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--quantize", "int4"], r"argument --quantize: invalid choice: 'int4'"),
        (["--quantize", "int8"], r"--quantize int8 needs --calibration_dataset"),
        (["--quantize", "int8", "--calibration_dataset", "EMPTY"], r"no calibration images"),
        (["--quantize", "int8", "--calibration_dataset", "DATASET", "--calibration_split", "test"], r"no split 'test'"),
    ],
    ids=["unknown-quantize", "no-calibration", "empty-calibration-folder", "missing-split"],
)
def test_export_script_refuses_bad_quantisation_input(
    lale_tiny_checkpoint, s2glc_dataset, tmp_path, clean_env, extra, message
):
    (tmp_path / "empty").mkdir()
    replacements = {"EMPTY": tmp_path / "empty", "DATASET": s2glc_dataset}
    output_folder = tmp_path / "out"
    output_folder.mkdir()
    extra = [replacements.get(arg, arg) for arg in extra]
    result = run(
        "export_onnx.py",
        "--model",
        lale_tiny_checkpoint,
        "--output",
        output_folder / "x.onnx",
        *extra,
        env=clean_env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert leftovers(output_folder) == []


@pytest.mark.slow  # trains real_trained_checkpoint (about 2 minutes on 2 idle cores) if no test did yet
def test_fp16_weights_are_half_the_size_and_load_back_to_fp32(
    real_trained_checkpoint, fp32_model, validation_images, tmp_path, clean_env
):
    output = tmp_path / "fp16"
    result = run(
        "convert_weights.py",
        "--model",
        real_trained_checkpoint,
        "--output_dir",
        output,
        "--dtype",
        "fp16",
        env=clean_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max relative logit difference" in result.stdout
    fp32_bytes = (real_trained_checkpoint / "model.safetensors").stat().st_size
    ratio = (output / "model.safetensors").stat().st_size / fp32_bytes
    assert 0.49 < ratio < 0.51, ratio
    assert json.loads((output / "config.json").read_text())["dtype"] == "float16"
    with safe_open(output / "model.safetensors", framework="pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}
    assert (output / "preprocessor_config.json").is_file()

    half = load_predictor(output)
    assert next(half.model.parameters()).dtype == torch.float32  # computed in fp32 on the CPU
    full = TorchPredictor(fp32_model)
    pixel_values = full.normalize(validation_images[:8])
    assert relative_error(half(pixel_values), full(pixel_values)) < 1e-2
    assert (class_maps(half, validation_images[:8]) == class_maps(full, validation_images[:8])).mean() > 0.99


@pytest.mark.slow  # trains real_trained_checkpoint (about 2 minutes on 2 idle cores) if no test did yet
def test_bf16_weights_round_trip(fp32_model, validation_images, tmp_path):
    output = save_half_precision(fp32_model, tmp_path / "bf16", "bf16")
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
    half = load_predictor(output)
    assert next(half.model.parameters()).dtype == torch.float32
    full = TorchPredictor(fp32_model)
    pixel_values = half.normalize(validation_images[:8])
    # bf16 keeps 8 bits of mantissa against fp16's 11: its logits move about ten times as far (here up to 0.1 of the
    # largest logit), so the class map is what must hold.
    assert relative_error(half(pixel_values), full(pixel_values)) < 0.2
    assert (class_maps(half, validation_images[:8]) == class_maps(full, validation_images[:8])).mean() > 0.98


def test_half_precision_errors(tiny_model, tmp_path, clean_env, lale_tiny_checkpoint):
    with pytest.raises(WeightConversionError, match=r"--dtype 'fp8': expected one of fp16, bf16"):
        save_half_precision(tiny_model, tmp_path / "x", "fp8")
    huge = type(tiny_model)(tiny_model.config)
    with torch.no_grad():
        huge.decode_head.classifier.weight[0, 0] = 1e6
    with pytest.raises(WeightConversionError, match=r"decode_head\.classifier\.weight: largest \|value\| 1e\+06"):
        save_half_precision(huge, tmp_path / "huge", "fp16")
    assert leftovers(tmp_path) == []
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = run(
        "convert_weights.py", "--model", lale_tiny_checkpoint, "--output_dir", tmp_path / "taken", env=clean_env
    )
    assert result.returncode == 2 and "exists and is not empty (pass --overwrite)" in result.stderr
    assert leftovers(tmp_path / "taken") == ["keep.txt"]


def benchmark_settings(paths):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the benchmark library sits beside its entry points
    from lale_bench import BenchmarkSettings

    return BenchmarkSettings(
        models=("lale-tiny",),
        paths=paths,
        image_size=64,
        inference_batch_sizes=(2,),
        train_batch_size=2,
        rounds=1,
        warmup_calls=0,
        min_seconds=0,
        matmul_sizes=(32,),
    )


@pytest.mark.slow  # exports and quantises a lale-tiny (about 20 s)
def test_benchmark_int8_path_is_checked_by_class_map_agreement(tmp_path):
    settings = benchmark_settings(("eager", "onnxruntime-int8"))
    from lale_bench import run_benchmark
    from lale_bench.paths import CLASS_MAP_AGREEMENT

    run = run_benchmark(settings, log=lambda message: None)
    (record,) = [r for r in run["measurements"] if r["path"] == "onnxruntime-int8"]
    assert record["status"] == "ok" and "samples" in record
    assert record["class_map_agreement"] >= CLASS_MAP_AGREEMENT["onnxruntime-int8"]
    # Far beyond the fp32 tolerance: the logit check would have refused it.
    assert record["max_relative_error"] > 1e-3


def test_benchmark_int8_path_with_another_class_map_is_not_timed(monkeypatch):
    settings = benchmark_settings(("eager", "onnxruntime-int8"))
    import lale_bench.run

    original = lale_bench.run.prepare_path

    def rolled(path, *args):
        runner = original("eager", *args)
        if path == "onnxruntime-int8":
            return lambda x: runner(x).roll(1, dims=1)  # every pixel's class moves to the next index
        return runner

    monkeypatch.setattr(lale_bench.run, "prepare_path", rolled)
    run = lale_bench.run.run_benchmark(settings, log=lambda message: None)
    (record,) = [r for r in run["measurements"] if r["path"] == "onnxruntime-int8"]
    assert record["status"] == "mismatch" and "class maps agree under 90%" in record["detail"]
    assert "samples" not in record


@pytest.mark.slow  # two accelerate processes start, each loading ONNX Runtime
def test_int8_file_predicts_the_same_in_one_and_two_processes(int8_export, s2glc_sample, tmp_path, clean_env):
    from test_train import ACCELERATE, free_port

    images = tmp_path / "patches"
    images.mkdir()
    for name in ("s2glc_00260", "s2glc_00261", "s2glc_00262", "s2glc_00263"):
        shutil.copy(s2glc_sample / "val" / "images" / f"{name}.png", images)
    arguments = [str(REPO_ROOT / "scripts" / "predict.py"), "--model", str(int8_export[0]), "--no_progress"]
    one = subprocess.run(
        [sys.executable, *arguments, "--output_dir", str(tmp_path / "one"), str(images)],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [*ACCELERATE, "--num_processes", "2", "--num_machines", "1", "--multi_gpu"]
    launcher += ["--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]
    two = subprocess.run(
        [*launcher, *arguments, "--output_dir", str(tmp_path / "two"), str(images)],
        env={**clean_env, "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    written = sorted(path.name for path in (tmp_path / "one").glob("*_classes.png"))
    assert len(written) == 4
    for name in written:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
