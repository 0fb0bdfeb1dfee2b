"""ONNX export: dynamic batch/height/width, labels in the metadata, logits equal to PyTorch's on real patches, and
scripts/predict.py running the .onnx file through ONNX Runtime with the same pre- and post-processing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from lale_hf import ARAS400K_LABELS
from lale_hf.inference import (
    OnnxPredictor,
    TorchPredictor,
    compare_with_onnx,
    export_onnx,
    load_predictor,
    predict_image,
)
from lale_hf.preprocessing import Preprocessing


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def exported(tiny_checkpoint, tmp_path_factory) -> tuple[Path, str]:
    """The checkpoint exported by scripts/export_onnx.py (its own ORT check included); returns the file and stdout."""
    path = tmp_path_factory.mktemp("onnx") / "lale-tiny.onnx"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "export_onnx.py"),
            "--model",
            str(tiny_checkpoint),
            "--output",
            str(path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return path, result.stdout


# PyTorch and ONNX Runtime logits differ by ~1e-6, so a pixel may change class only where the top two fp32 logits are
# that close: a genuine tie.
TIE_TOLERANCE = 1e-5


def torch_near_ties(image, model, **options) -> np.ndarray:
    """Where the fp32 PyTorch logits `predict_image` takes the argmax of have their top two within TIE_TOLERANCE.

    `predict_image` runs again with its argmax replaced by that test, so the map lines up with the labels pixel for
    pixel, blending and upsampling included.
    """
    from lale_hf.inference import tiling

    def near_tie(logits: torch.Tensor) -> np.ndarray:
        top_two = np.sort(logits.numpy(), axis=0)[-2:]
        return (top_two[1] - top_two[0] <= TIE_TOLERANCE).astype(np.uint8)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiling, "_argmax", near_tie)
        return predict_image(image, model, **options).astype(bool)


def assert_differences_are_ties(onnx_labels: np.ndarray, torch_labels: np.ndarray, ties: np.ndarray):
    assert onnx_labels.shape == torch_labels.shape == ties.shape
    assert len(np.unique(torch_labels)) > 1  # a map of one class would agree trivially
    assert ties.mean() < 0.01, "most pixels tie: the tie map is not what predict_image takes the argmax of"
    differing = onnx_labels != torch_labels
    not_ties = np.argwhere(differing & ~ties)
    assert not_ties.size == 0, (
        f"{len(not_ties)} of {int(differing.sum())} differing pixels are not ties (top two PyTorch logits more than "
        f"{TIE_TOLERANCE} apart), first at {not_ties[:5].tolist()}"
    )


def real_patches(s2glc_sample: Path, names) -> list[np.ndarray]:
    return [np.array(Image.open(s2glc_sample / "val" / "images" / f"{name}.png").convert("RGB")) for name in names]


def test_export_is_one_file_with_dynamic_axes_and_labels(exported, tiny_model):
    path, stdout = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["lale-tiny.onnx"]  # no external data, no leftovers
    model = onnx.load(path)
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "pixel_values" and dims == ["batch", 3, "height", "width"]
    assert model.graph.output[0].name == "logits"
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(metadata["label_names"]) == list(ARAS400K_LABELS)
    assert json.loads(metadata["id2label"]) == {str(i): label for i, label in enumerate(ARAS400K_LABELS)}
    preprocessing = json.loads(metadata["preprocessing"])
    assert preprocessing["image_std"] == [0.229, 0.224, 0.225] and preprocessing["do_flip_channel_order"] is False
    assert Preprocessing.from_dict(preprocessing) == TorchPredictor(tiny_model).preprocessing
    assert metadata["output_stride"] == "4" and metadata["model_type"] == "lale"
    # The script compared ONNX Runtime with PyTorch on two input sizes itself.
    assert stdout.count("max relative logit difference") == 2


@pytest.mark.parametrize(
    "names, crop", [(("s2glc_00241", "s2glc_00245", "s2glc_00290"), None), (("s2glc_00250",), (192, 160))]
)
def test_onnx_runtime_logits_match_pytorch_on_real_patches(s2glc_sample, tiny_model, exported, names, crop):
    images = real_patches(s2glc_sample, names)
    if crop:
        images = [image[: crop[0], : crop[1]] for image in images]
    predictor = TorchPredictor(tiny_model)
    pixel_values = torch.from_numpy(np.stack([predictor.normalize(image) for image in images]))
    assert compare_with_onnx(tiny_model, exported[0], pixel_values) < 1e-4


def test_onnx_logits_match_on_a_real_mosaic_of_another_size(s2glc_sample, tiny_model, exported):
    left, right = real_patches(s2glc_sample, ("s2glc_00255", "s2glc_00256"))
    mosaic = np.concatenate([left, right], axis=1)[:, :448]  # 256 x 448
    pixel_values = torch.from_numpy(TorchPredictor(tiny_model).normalize(mosaic)[None])
    assert compare_with_onnx(tiny_model, exported[0], pixel_values) < 1e-4


def test_predict_script_runs_the_onnx_file(s2glc_sample, tiny_model, exported, tmp_path, clean_env):
    patch = s2glc_sample / "val" / "images" / "s2glc_00275.png"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "predict.py"),
            "--model",
            str(exported[0]),
            "--output_dir",
            str(tmp_path),
            "--no_progress",
            str(patch),
        ],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "s2glc_00275_stats.json").read_text())
    assert stats["prediction"]["backend"] == "onnxruntime"
    assert stats["prediction"]["preprocessing"] == TorchPredictor(tiny_model).preprocessing.to_dict()
    onnx_labels = np.array(Image.open(tmp_path / "s2glc_00275_classes.png"))
    torch_labels = predict_image(Image.open(patch), tiny_model)
    assert_differences_are_ties(onnx_labels, torch_labels, torch_near_ties(Image.open(patch), tiny_model))


def test_onnx_and_pytorch_agree_on_a_tiled_scene(s2glc_sample, tiny_model, exported):
    patches = real_patches(s2glc_sample, ("s2glc_00260", "s2glc_00261", "s2glc_00262", "s2glc_00263"))
    scene = np.concatenate([np.concatenate(patches[:2], axis=1), np.concatenate(patches[2:], axis=1)], axis=0)[
        :500, :460
    ]
    onnx_labels = predict_image(scene, load_predictor(exported[0]), batch_size=4)
    torch_labels = predict_image(scene, tiny_model, batch_size=4)
    assert_differences_are_ties(onnx_labels, torch_labels, torch_near_ties(scene, tiny_model, batch_size=4))


def test_bad_onnx_files_are_clear_errors(exported, tmp_path, tiny_model):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf" * 20)
    with pytest.raises(ValueError, match=r"garbage\.onnx: not a readable ONNX model"):
        OnnxPredictor(garbage)

    bare = onnx.load(exported[0])
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match=r"bare\.onnx: the ONNX file carries no label names"):
        OnnxPredictor(tmp_path / "bare.onnx")

    with pytest.raises(ValueError, match=r"expected a file name ending in \.onnx"):
        export_onnx(tiny_model, tmp_path / "model.bin")
    assert not (tmp_path / "model.bin").exists()
