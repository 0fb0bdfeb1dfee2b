"""Test-time augmentation: flip and D4 logits equal the mean of the model's logits over the transformed copies, each
transformed back (reference computed here with explicit torch.flip/rot90), the averaged model is equivariant, ONNX
models without dynamic axes are refused, and the TTA benchmark runs on real patches."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lale_hf import LaleImageProcessor
from lale_hf.inference import InferenceError, OnnxPredictor, TestTimeAugmentation, TorchPredictor


REPO_ROOT = Path(__file__).resolve().parents[1]

H, W = (-2, -1)


def hflip(x):
    return torch.flip(x, dims=(W,))


def vflip(x):
    return torch.flip(x, dims=(H,))


def transpose(x):
    return x.transpose(H, W)


# (forward on the input, backward on the logits), written out one by one rather than generated.
FLIP_REFERENCE = [
    (lambda x: x, lambda y: y),
    (hflip, hflip),
    (vflip, vflip),
    (lambda x: hflip(vflip(x)), lambda y: vflip(hflip(y))),
]
D4_REFERENCE = FLIP_REFERENCE + [
    (lambda x: torch.rot90(x, 1, dims=(H, W)), lambda y: torch.rot90(y, -1, dims=(H, W))),
    (lambda x: torch.rot90(x, 3, dims=(H, W)), lambda y: torch.rot90(y, 1, dims=(H, W))),
    (transpose, transpose),
    (lambda x: torch.rot90(x, 2, dims=(H, W)).transpose(H, W), lambda y: torch.rot90(y.transpose(H, W), 2, (H, W))),
]


@pytest.fixture(scope="module")
def predictor(tiny_model) -> TorchPredictor:
    return TorchPredictor(tiny_model, LaleImageProcessor())


def model_logits(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(pixel_values=pixels).logits.float()


def asymmetric_input(height: int, width: int, batch: int = 2) -> np.ndarray:
    """Random pixels plus a ramp and a corner block: no flip or rotation maps it onto itself."""
    generator = np.random.default_rng(0)
    pixels = generator.normal(size=(batch, 3, height, width)).astype(np.float32)
    pixels += np.linspace(-2, 2, width, dtype=np.float32)[None, None, None, :]
    pixels[:, :, : height // 3, : width // 5] += 3.0
    return pixels


@pytest.mark.parametrize(
    ("mode", "reference", "size"),
    [("flip", FLIP_REFERENCE, (64, 96)), ("d4", D4_REFERENCE, (64, 64)), ("d4", D4_REFERENCE, (64, 96))],
)
def test_tta_is_the_mean_of_copies_transformed_back(predictor, tiny_model, mode, reference, size):
    pixels = asymmetric_input(*size)
    torch_pixels = torch.from_numpy(pixels)
    backs = [backward(model_logits(tiny_model, forward(torch_pixels).contiguous())) for forward, backward in reference]
    expected = torch.stack(backs).mean(dim=0)
    logits = TestTimeAugmentation(predictor, mode)(pixels)
    assert logits.shape == (2, tiny_model.config.num_labels, size[0] // 4, size[1] // 4)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    # Not vacuous: the model is not equivariant, so each copy brings other logits and the mean differs from one pass.
    plain = backs[0]
    assert all((back - plain).abs().max() > 1e-2 for back in backs[1:])
    assert (logits - plain).abs().max() > 1e-2


def test_d4_tta_is_equivariant_and_chunking_changes_nothing(predictor):
    pixels = asymmetric_input(64, 64)
    tta = TestTimeAugmentation(predictor, "d4")
    logits = tta(pixels)
    rotated = tta(np.ascontiguousarray(np.rot90(pixels, 1, axes=(H, W))))
    torch.testing.assert_close(rotated, torch.rot90(logits, 1, dims=(H, W)), rtol=1e-4, atol=1e-4)
    flipped = TestTimeAugmentation(predictor, "flip")(np.ascontiguousarray(pixels[..., ::-1]))
    torch.testing.assert_close(flipped, hflip(TestTimeAugmentation(predictor, "flip")(pixels)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(TestTimeAugmentation(predictor, "d4", max_batch_size=3)(pixels), logits)
    torch.testing.assert_close(TestTimeAugmentation(predictor, "none")(pixels), predictor(pixels))


def test_bad_settings_are_refused(predictor):
    with pytest.raises(InferenceError, match="--tta 'd8': expected one of none, flip, d4"):
        TestTimeAugmentation(predictor, "d8")
    with pytest.raises(InferenceError, match="max_batch_size"):
        TestTimeAugmentation(predictor, "flip", max_batch_size=0)
    with pytest.raises(InferenceError, match="multiples of 4"):
        TestTimeAugmentation(predictor, "flip")(asymmetric_input(62, 64))


def export_static_onnx(model, path: Path, shape=(1, 3, 64, 64)):
    """The model exported with fixed input axes (no dynamic_shapes), with the metadata OnnxPredictor reads."""
    from lale_hf.inference import LogitsOnly
    from lale_hf.preprocessing import preprocessing_from_processor

    program = torch.onnx.export(
        LogitsOnly(model).eval(),
        (torch.zeros(*shape),),
        dynamo=True,
        input_names=["pixel_values"],
        output_names=["logits"],
        verbose=False,
    )
    proto = program.model_proto
    metadata = {
        "id2label": json.dumps({str(k): v for k, v in model.config.id2label.items()}),
        "preprocessing": json.dumps(preprocessing_from_processor(LaleImageProcessor()).to_dict()),
    }
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    path.write_bytes(proto.SerializeToString())
    return path


def test_onnx_without_dynamic_axes_is_refused(tiny_model, tmp_path):
    path = export_static_onnx(tiny_model, tmp_path / "static.onnx")
    static = OnnxPredictor(path)
    assert static.session.get_inputs()[0].shape == [1, 3, 64, 64]
    for mode in ("flip", "d4"):
        with pytest.raises(InferenceError, match=r"static\.onnx.*fixed axes \(batch=1, height=64, width=64\).*dynamic"):
            TestTimeAugmentation(static, mode)
    # Without TTA the file works as before, on the one shape it takes.
    pixels = asymmetric_input(64, 64, batch=1)
    torch.testing.assert_close(TestTimeAugmentation(static, "none")(pixels), static(pixels))


@pytest.mark.slow
def test_onnx_with_dynamic_axes_gives_the_same_tta_as_pytorch(tiny_model, predictor, tmp_path):
    from lale_hf.inference import export_onnx

    onnx_predictor = OnnxPredictor(export_onnx(tiny_model, tmp_path / "dynamic.onnx"))
    pixels = asymmetric_input(64, 96)
    expected = TestTimeAugmentation(predictor, "d4")(pixels)
    torch.testing.assert_close(TestTimeAugmentation(onnx_predictor, "d4")(pixels), expected, rtol=1e-4, atol=1e-4)


def test_benchmark_runs_on_real_patches(s2glc_sample, lale_tiny_checkpoint, tmp_path, clean_env):
    output = tmp_path / "tta.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "benchmark_tta.py"),
            "--data_dir",
            str(s2glc_sample / "val"),
            "--models",
            str(lale_tiny_checkpoint),
            "--max_patches",
            "2",
            "--rounds",
            "1",
            "--json",
            str(output),
            "--plot",
            str(tmp_path / "reliability.png"),
        ],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["num_patches"] == 2 and report["num_pixels"] == 2 * 256 * 256
    for mode in ("none", "flip", "d4"):
        scores = report["modes"][mode]
        assert 0 <= scores["macro_f1"]["mean"] <= 1 and 0 <= scores["ece_top_probability"]["mean"] <= 1
        assert scores["seconds_per_mpx"]["mean"] > 0
    assert report["modes"]["none"]["time_ratio_vs_none"]["mean"] == 1.0
    assert "| d4 |" in result.stdout
    assert (tmp_path / "reliability.png").stat().st_size > 1000


# Calibration (lale_hf.inference.calibration) on constructed pixels whose ECE is known by hand.


def constructed_pixels():
    """Bin [0.2, 0.3): 100 pixels at 0.25, 25 right (gap 0). Bin [0.9, 1.0]: 100 at 0.95 with 80 right and 50 at 1.0
    all right (mean confidence 0.9667, accuracy 0.8667, gap 0.1). 30 ignored pixels at 0.55, all wrong.
    ECE = 150 / 250 * 0.1 = 0.06; MCE 0.1."""
    confidence = np.concatenate([np.full(100, 0.25), np.full(100, 0.95), np.full(50, 1.0), np.full(30, 0.55)])
    correct = np.concatenate([np.arange(100) < 25, np.arange(100) < 80, np.ones(50, bool), np.zeros(30, bool)])
    references = np.concatenate([np.zeros(250, np.uint8), np.full(30, 255, np.uint8)])
    return confidence.astype(np.float32), correct, references


def test_expected_calibration_error_of_constructed_pixels(tmp_path):
    from lale_hf.inference.calibration import ReliabilityBins, expected_calibration_error, plot_reliability_diagram

    confidence, correct, references = constructed_pixels()
    assert expected_calibration_error(confidence, correct, references) == pytest.approx(0.06, abs=1e-6)
    # Counted, the ignored pixels would sit in bin [0.5, 0.6) with a gap of 0.55.
    assert expected_calibration_error(confidence, correct) == pytest.approx((15 + 30 * 0.55) / 280, abs=1e-6)
    bins = ReliabilityBins().update(confidence, correct, references)
    report = bins.to_dict()
    assert report["pixels"] == 250 and report["mce"] == pytest.approx(0.1, abs=1e-6)
    assert [row["pixels"] for row in report["bins"]] == [0, 0, 100, 0, 0, 0, 0, 0, 0, 150]
    assert report["bins"][9]["accuracy"] == pytest.approx(130 / 150) and report["bins"][0]["accuracy"] is None
    # Additive: two halves merged give the whole.
    halves = ReliabilityBins().update(confidence[::2], correct[::2], references[::2])
    halves.merge(ReliabilityBins().update(confidence[1::2], correct[1::2], references[1::2]))
    assert halves.expected_calibration_error() == pytest.approx(0.06, abs=1e-6)
    # A perfectly calibrated set scores 0.
    assert expected_calibration_error(np.full(10, 0.7), np.arange(10) < 7) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bins.update(np.array([1.2]), np.array([True]))
    path = plot_reliability_diagram({"constructed": bins, "halves": halves}, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*partial"))


def test_top_probability_bins_and_error_detection():
    from lale_hf.inference.calibration import ErrorDetection, ReliabilityBins, confidence_scores

    probabilities = torch.tensor([[0.75, 0.15, 0.1], [0.45, 0.35, 0.2], [1 / 3, 1 / 3, 1 / 3]]).T.reshape(1, 3, 1, 3)
    references = torch.tensor([[[0, 1, 255]]])
    bins = ReliabilityBins().update_from_probabilities(probabilities, references)
    assert bins.pixels[7] == 1 and bins.correct[7] == 1 and bins.pixels[4] == 1 and bins.correct[4] == 0
    assert bins.expected_calibration_error() == pytest.approx((0.25 + 0.45) / 2)
    scores = confidence_scores(probabilities)
    torch.testing.assert_close(scores["margin"][0, 0], torch.tensor([0.6, 0.1, 0.0]))
    assert scores["certainty"][0, 0, 2] == pytest.approx(0, abs=1e-6) and scores["certainty"][0, 0, 0] > 0.1
    score = np.array([0.9, 0.8, 0.3, 0.2])
    assert ErrorDetection().update(score, np.array([1, 1, 0, 0])).auroc() == 1.0
    assert ErrorDetection().update(score, np.array([0, 0, 1, 1])).auroc() == 0.0
    assert ErrorDetection().update(np.full(4, 0.5), np.array([1, 0, 1, 0])).auroc() == 0.5
    assert ErrorDetection().update(score, np.array([1, 0, 1, 0])).auroc() == 0.75
