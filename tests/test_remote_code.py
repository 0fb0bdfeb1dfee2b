"""Checkpoints load without the package (remote code), from the literal Hub id, and through the pipeline."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, pipeline

from lale_hf import ARAS400K_LABELS, LaleForSemanticSegmentation, LaleImageProcessor


CLIENT = Path(__file__).with_name("remote_code_client.py")


def val_image(sample: Path, index: int = 0) -> Path:
    return sorted((sample / "val" / "images").iterdir())[index]


def run_client(model_id: str, image: Path, workdir: Path, env: dict) -> tuple[dict, dict]:
    pixel_values = torch.randn(2, 3, 160, 192, generator=torch.Generator().manual_seed(0))
    save_file({"pixel_values": pixel_values}, workdir / "inputs.safetensors")
    result = subprocess.run(
        [sys.executable, str(CLIENT), model_id, "inputs.safetensors", "outputs.safetensors", str(image)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report, {"pixel_values": pixel_values, **load_file(workdir / "outputs.safetensors")}


def expected_outputs(model_id: str, tensors: dict, image: Path) -> dict:
    model = LaleForSemanticSegmentation.from_pretrained(model_id).eval()
    processor = LaleImageProcessor.from_pretrained(model_id)
    with torch.no_grad():
        return {
            "logits": model(tensors["pixel_values"]).logits,
            "processed_logits": model(**processor(Image.open(image), return_tensors="pt")).logits,
            "encoder_output": model.lale(tensors["pixel_values"]).last_hidden_state,
        }


def test_remote_code_without_the_package_matches_the_package(lale_tiny_checkpoint, s2glc_sample, tmp_path, clean_env):
    image = val_image(s2glc_sample)
    report, tensors = run_client(str(lale_tiny_checkpoint), image, tmp_path, clean_env)
    assert report["lale_hf_imported"] is False
    assert report["model_module"].startswith("transformers_modules.")
    assert report["config_class"] == "LaleConfig" and report["processor_class"] == "LaleImageProcessor"
    expected = expected_outputs(str(lale_tiny_checkpoint), tensors, image)
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    assert report["segments"] and all(s["size"] == [256, 256] for s in report["segments"])


def test_literal_hub_id_loads_offline_from_the_cache(
    cached_lale_tiny, lale_tiny_checkpoint, s2glc_sample, tmp_path, clean_env
):
    model = LaleForSemanticSegmentation.from_pretrained("org/lale-tiny").eval()
    reference = LaleForSemanticSegmentation.from_pretrained(lale_tiny_checkpoint).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, reference(pixel_values).logits)
    assert isinstance(AutoImageProcessor.from_pretrained("org/lale-tiny"), LaleImageProcessor)
    # The same Hub id through remote code in a process without the package.
    report, tensors = run_client("org/lale-tiny", val_image(s2glc_sample), tmp_path, clean_env)
    assert report["lale_hf_imported"] is False
    assert torch.equal(tensors["logits"], expected_outputs("org/lale-tiny", tensors, val_image(s2glc_sample))["logits"])


def test_pipeline_on_a_real_patch(cached_lale_tiny, s2glc_sample):
    segmenter = pipeline("image-segmentation", model="org/lale-tiny", trust_remote_code=True)
    image = Image.open(val_image(s2glc_sample, 3))
    segments = segmenter(image)
    model = LaleForSemanticSegmentation.from_pretrained("org/lale-tiny").eval()
    processor = LaleImageProcessor.from_pretrained("org/lale-tiny")
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    prediction = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
    predicted = [ARAS400K_LABELS[i] for i in prediction.unique().tolist()]
    assert sorted(s["label"] for s in segments) == sorted(predicted)
    for segment in segments:
        assert segment["mask"].size == image.size and segment["mask"].mode == "L"
        class_index = ARAS400K_LABELS.index(segment["label"])
        mask = torch.from_numpy(np.asarray(segment["mask"]) > 0)
        assert torch.equal(mask, prediction == class_index)
