"""scripts/demo.py, the README's main job (`make demo`), run whole as a subprocess on a tiny sample with a budget of
seconds; every output it lists is opened and checked."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from lale_hf import ARAS400K_LABELS, ARAS400K_PALETTE, LaleForSemanticSegmentation


REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")]
SIZES = {"train": 16, "validation": 3, "test": 3, "synthetic": 2}
TINY_JOB = [
    "--num_train_samples",
    str(SIZES["train"]),
    "--num_eval_samples",
    str(SIZES["validation"]),
    "--num_synthetic_samples",
    str(SIZES["synthetic"]),
    "--image_size",
    "64",
    "--batch_size",
    "4",
    "--train_minutes",
    "0.05",
    "--eval_steps",
    "3",
    "--num_proc",
    "1",
]
# What the demo lists in demo_outputs.json (and prints), relative to its --output_dir; {stem} is the example's name.
EXPECTED_OUTPUTS = {
    "data": "aras400k-sample",
    "dataset": "dataset",
    "model": "lale-tiny",
    "model_weights": "lale-tiny/model.safetensors",
    "model_card": "lale-tiny/README.md",
    "results": "lale-tiny/all_results.json",
    "confusion_matrix": "lale-tiny/confusion_matrix.png",
    "best_checkpoint": "lale-tiny/best",
    "tensorboard_logs": "lale-tiny/runs",
    "example_image": "{stem}.png",
    "prediction_classes": "prediction/{stem}_classes.png",
    "prediction_color": "prediction/{stem}_color.png",
    "prediction_stats": "prediction/{stem}_stats.json",
    "prediction_stats_csv": "prediction/{stem}_stats.csv",
}


def run_demo(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*DEMO, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny run of the whole job, shared by the checks below."""
    import os

    output = tmp_path_factory.mktemp("demo") / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run_demo(["--output_dir", str(output), *TINY_JOB], env)
    if result.returncode != 0:
        log = f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-8000:]}"
        pytest.fail(f"demo exit {result.returncode}\n{log}", pytrace=False)
    return output, result


def listed_outputs(output: Path) -> dict[str, Path]:
    return {name: Path(path) for name, path in json.loads((output / "demo_outputs.json").read_text()).items()}


@pytest.mark.slow
def test_demo_lists_and_prints_every_output(demo_run):
    output, result = demo_run
    outputs = listed_outputs(output)
    stem = outputs["example_image"].stem
    expected = {name: output.resolve() / path.format(stem=stem) for name, path in EXPECTED_OUTPUTS.items()}
    assert outputs == expected
    missing = [name for name, path in outputs.items() if not path.exists()]
    assert not missing, missing
    # The summary it prints names the same folders.
    summary = result.stdout.split("Everything is under", 1)[1]
    for name in ("data", "dataset", "model", "best_checkpoint", "tensorboard_logs"):
        assert f" {outputs[name]}" in summary, name
    assert str(outputs["prediction_classes"].parent) in summary
    assert "stopped by time budget" in summary


@pytest.mark.slow
def test_demo_sample_and_dataset(demo_run):
    output, _ = demo_run
    outputs = listed_outputs(output)
    sample = outputs["data"]
    md5s = dict(reversed(line.split()) for line in (sample / "md5sums.txt").read_text().splitlines())
    assert sorted(md5s) == ["synth.zip", "test.zip", "train.zip", "val.zip"]
    for name, digest in md5s.items():
        assert hashlib.md5((sample / name).read_bytes()).hexdigest() == digest, name
    dataset = load_dataset(str(outputs["dataset"]))
    assert {split: len(dataset[split]) for split in dataset} == SIZES
    assert json.loads((outputs["dataset"] / "id2label.json").read_text()) == {
        str(i): name for i, name in enumerate(ARAS400K_LABELS)
    }
    # The example written for prediction is the first validation image, unchanged.
    example = dataset["validation"][0]
    assert outputs["example_image"].stem == example["name"]
    np.testing.assert_array_equal(np.asarray(Image.open(outputs["example_image"])), np.asarray(example["image"]))


@pytest.mark.slow
def test_demo_model_folder_loads_and_records_the_run(demo_run):
    output, _ = demo_run
    outputs = listed_outputs(output)
    model_dir = outputs["model"]
    results = json.loads(outputs["results"].read_text())
    for key in ("eval_macro_f1", "eval_mean_iou", "eval_overall_accuracy", "eval_mean_accuracy"):
        assert 0.0 <= results[key] <= 1.0, key
    for name in ARAS400K_LABELS:
        assert results[f"eval_iou_{name}"] is None or 0.0 <= results[f"eval_iou_{name}"] <= 1.0, name
    # 1000 epochs of 4 steps are asked for: only the budget of 3 seconds can have ended the run.
    assert results["stopped_by_time_budget"] is True and results["stop_reason"].startswith("time budget")
    assert results["train_steps"] >= 1 and results["train_samples"] == 4 * results["train_steps"]
    assert len(results["train_loss_history"]) == results["train_steps"]

    weights = load_file(outputs["model_weights"])
    model = LaleForSemanticSegmentation.from_pretrained(model_dir).eval()
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert model.config.id2label == dict(enumerate(ARAS400K_LABELS))
    assert json.loads((model_dir / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 64}
    for code_file in ("configuration_lale.py", "modeling_lale.py", "image_processing_lale.py"):
        assert (model_dir / code_file).is_file(), code_file

    card = ModelCard.load(outputs["model_card"])
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-segmentation"
    card_metrics = {entry.metric_type: entry.metric_value for entry in card.data.eval_results}
    assert card_metrics["f1"] == results["eval_macro_f1"] and card_metrics["mean_iou"] == results["eval_mean_iou"]

    best = outputs["best_checkpoint"]
    best_results = json.loads((best / "eval_results.json").read_text())
    assert 1 <= best_results["step"] <= results["train_steps"]
    assert best_results["eval_macro_f1"] >= results["eval_macro_f1"] - 1e-12
    assert load_file(best / "model.safetensors").keys() == weights.keys()

    plot = Image.open(outputs["confusion_matrix"])
    plot.load()
    assert min(plot.size) >= 200 and len(np.unique(np.asarray(plot.convert("RGB")).reshape(-1, 3), axis=0)) > 10

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # accelerate's TensorBoard tracker logs scalars under runs/<project>; hparams go to a subfolder.
    accumulator = EventAccumulator(str(outputs["tensorboard_logs"] / "lale"))
    accumulator.Reload()
    losses = [event.value for event in accumulator.Scalars("train_loss")]
    np.testing.assert_allclose(losses, results["train_loss_history"], rtol=1e-6)
    assert [event.step for event in accumulator.Scalars("eval_macro_f1")][-1] == results["train_steps"]


@pytest.mark.slow
def test_demo_prediction_map_legend_and_statistics(demo_run):
    output, _ = demo_run
    outputs = listed_outputs(output)
    example = Image.open(outputs["example_image"])
    classes = Image.open(outputs["prediction_classes"])
    assert classes.mode == "L" and classes.size == example.size
    label_map = np.asarray(classes)
    assert set(np.unique(label_map)) <= set(range(len(ARAS400K_LABELS)))

    stats = json.loads(outputs["prediction_stats"].read_text())
    assert stats["total_pixels"] == label_map.size
    counts = np.bincount(label_map.ravel(), minlength=len(ARAS400K_LABELS))
    predicted = {entry["label"]: entry["pixels"] for entry in stats["classes"]}
    assert predicted == dict(zip(ARAS400K_LABELS, counts.tolist(), strict=True))
    csv_lines = outputs["prediction_stats_csv"].read_text().splitlines()
    assert len(csv_lines) == 1 + len(ARAS400K_LABELS)

    # The colourised preview: the map in the ARAS palette on the left, a legend of every class on the right.
    color = np.asarray(Image.open(outputs["prediction_color"]).convert("RGB"))
    height, width = label_map.shape
    assert color.shape[0] >= height and color.shape[1] > width + 50
    palette = np.asarray(ARAS400K_PALETTE, dtype=np.uint8)
    np.testing.assert_array_equal(color[:height, :width], palette[label_map])
    legend = color[:, width:]
    for name, rgb in zip(ARAS400K_LABELS, palette, strict=True):
        swatch_pixels = int((legend == rgb).all(axis=-1).sum())
        assert swatch_pixels >= 100, f"no legend swatch for {name} ({swatch_pixels} pixels of {rgb.tolist()})"


def load_demo_script():
    """scripts/demo.py as a module, so that its argument checks run in this process (no 10 s interpreter start)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_script", REPO_ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_exit(argv: list[str], capsys) -> tuple[int, str]:
    """The exit code and stderr of the demo's argument checks on `argv`."""
    with pytest.raises(SystemExit) as exit_info:
        load_demo_script().main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, stderr = demo_exit(["--output_dir", str(foreign), *TINY_JOB], capsys)
    assert code == 2 and "exists; pass --overwrite" in stderr
    code, stderr = demo_exit(["--output_dir", str(foreign), "--overwrite", *TINY_JOB], capsys)
    assert code == 2 and "replaces only a folder the demo wrote" in stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num_train_samples", "4", "--aras400k_dir", "."], "--num_train_samples size the procedural sample"),
        (["--aras400k_dir", "no-such-folder"], "--aras400k_dir no-such-folder is not a folder"),
        (["--train_minutes", "0"], "expected a positive number, got 0"),
        (["--image_size", "100"], "expected a positive multiple of 32"),
    ],
)
def test_demo_bad_arguments_exit_2(tmp_path, capsys, args, message):
    code, stderr = demo_exit(["--output_dir", str(tmp_path / "out"), *args], capsys)
    assert code == 2 and message in stderr, stderr
    assert not (tmp_path / "out").exists()
