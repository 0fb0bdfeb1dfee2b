"""Training's failure paths (the adversarial pass): class names, inexact resume, Hub outages, bad numbers."""

import json
import shutil
import subprocess

import pytest
import torch
from test_train import SMALL_RUN, check, launch, run_script

from lale_hf import LaleConfig, LaleForSemanticSegmentation
from lale_hf.training import TrainingError, align_classes_by_name


NAMES = ["Tree", "Shrub", "Grass", "Crop", "Built-up", "Barren", "Water"]


def test_same_names_in_another_order_reorder_the_head():
    shuffled = [NAMES[i] for i in (3, 0, 6, 1, 5, 2, 4)]
    torch.manual_seed(0)
    model = LaleForSemanticSegmentation(LaleConfig(id2label=dict(enumerate(shuffled)))).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(pixel_values).logits
    done = align_classes_by_name(model, dict(enumerate(NAMES)), "ckpt")
    assert "reordered" in done
    with torch.no_grad():
        after = model(pixel_values).logits
    for index, name in enumerate(NAMES):  # each class keeps its logits under its own name
        torch.testing.assert_close(after[:, index], before[:, shuffled.index(name)], rtol=0, atol=1e-6)
    assert model.config.id2label == dict(enumerate(NAMES))


def test_other_names_are_refused_unless_told():
    other = dict(enumerate(["a", "b", "c", "d", "e", "f", "g"]))
    model = LaleForSemanticSegmentation(LaleConfig(id2label=other))
    with pytest.raises(TrainingError, match=r"ckpt names its classes \['a', .*--ignore_label_names"):
        align_classes_by_name(model, dict(enumerate(NAMES)), "ckpt")
    assert "replaced" in align_classes_by_name(model, dict(enumerate(NAMES)), "ckpt", ignore_label_names=True)
    assert model.config.id2label[0] == "Tree"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max_train_steps", "0"], "--max_train_steps: expected a positive integer, got 0"),
        (["--max_train_steps=-3"], "--max_train_steps: expected a positive integer, got -3"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps: expected 'epoch' or a positive number of steps"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size: expected a positive integer"),
        (["--learning_rate=-1e-3"], "--learning_rate: expected a positive number, got -1e-3"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps: expected a positive integer"),
        (["--ema_decay", "1"], "--ema_decay: expected a number in [0, 1), got 1"),
        (["--class_weights", "1", "x"], "--class_weights takes 'auto', 'none' or numbers >= 0"),
    ],
)
def test_bad_numbers_fail_at_parse_time(args, message, tmp_path, clean_env):
    result = run_script(
        "train.py",
        ["--dataset_name", str(tmp_path), "--preset", "lale-tiny", "--output_dir", str(tmp_path / "o"), *args],
        clean_env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_resume_without_rng_state_is_refused_unless_allowed(s2glc_dataset, tmp_path, clean_env):
    common = [
        "--dataset_name",
        str(s2glc_dataset),
        "--max_train_samples",
        "8",
        "--max_eval_samples",
        "2",
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        *SMALL_RUN,
        "--eval_steps",
        "100",
    ]
    output = tmp_path / "run"
    check(launch([*common, "--output_dir", str(output)], clean_env))
    shutil.rmtree(output / "step_4")
    (output / "step_2" / "random_states_0.pkl").unlink()
    refused = launch([*common, "--output_dir", str(output), "--resume_from_checkpoint", "latest"], clean_env)
    assert refused.returncode != 0
    assert "lacks random_states_0.pkl" in refused.stderr and "--allow_inexact_resume" in refused.stderr
    allowed = check(
        launch(
            [*common, "--output_dir", str(output), "--resume_from_checkpoint", "latest", "--allow_inexact_resume"],
            clean_env,
        )
    )
    assert "will not reproduce exactly" in allowed.stderr
    assert json.loads((output / "all_results.json").read_text())["train_steps"] == 4


@pytest.mark.slow
def test_a_hub_outage_neither_aborts_training_nor_loses_the_model(s2glc_dataset, tmp_path, clean_env):
    import socket

    with socket.socket() as probe:  # a port nobody listens on: every push fails at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **clean_env,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "hf_unused",
    }
    output = tmp_path / "run"
    result = launch(
        [
            "--dataset_name",
            str(s2glc_dataset),
            "--max_train_samples",
            "8",
            "--max_eval_samples",
            "2",
            "--max_train_steps",
            "4",
            "--eval_steps",
            "2",
            *SMALL_RUN,
            "--output_dir",
            str(output),
            "--push_to_hub",
            "--push_checkpoints",
            "--hub_model_id",
            "org/outage",
        ],
        env,
    )
    assert result.returncode != 0, result.stderr[-3000:]  # train.py exits 2; accelerate launch reports 1
    assert "Checkpoint push at step 2 failed after retries" in result.stderr  # reported, training went on
    assert "everything is saved in" in result.stderr and "the push to org/outage failed" in result.stderr
    results = json.loads((output / "all_results.json").read_text())
    assert results["train_steps"] == 4  # trained to the end despite the failing checkpoint pushes
    assert (output / "model.safetensors").stat().st_mode & 0o044 == 0o044  # readable by all, as other outputs


def run_evaluate(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return run_script("evaluate.py", args, env)


def test_evaluate_fails_before_evaluating_when_it_cannot_write(
    s2glc_dataset,
    lale_tiny_checkpoint,
    tmp_path,
    clean_env,
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_evaluate(
        [
            "--model_name_or_path",
            str(lale_tiny_checkpoint),
            "--dataset_name",
            str(s2glc_dataset),
            "--output_dir",
            str(blocker / "results"),
            "--max_eval_samples",
            "2",
        ],
        clean_env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"--output_dir {blocker / 'results'}: {blocker} is not a writable folder" in result.stderr
    assert "evaluation:" not in result.stderr  # refused before any sample was evaluated


def test_evaluate_refuses_a_checkpoint_with_other_class_names(s2glc_dataset, tmp_path, clean_env):
    shuffled = [NAMES[i] for i in (3, 0, 6, 1, 5, 2, 4)]
    LaleForSemanticSegmentation(LaleConfig(id2label=dict(enumerate(shuffled)))).save_pretrained(tmp_path / "ckpt")
    common = [
        "--model_name_or_path",
        str(tmp_path / "ckpt"),
        "--dataset_name",
        str(s2glc_dataset),
        "--max_eval_samples",
        "2",
        "--image_size",
        "64",
    ]
    refused = run_evaluate([*common, "--output_dir", str(tmp_path / "o")], clean_env)
    assert refused.returncode == 2
    assert "names its classes ['Crop', 'Tree'" in refused.stderr and "--ignore_label_names" in refused.stderr
    check(run_evaluate([*common, "--output_dir", str(tmp_path / "o"), "--ignore_label_names"], clean_env))
    assert json.loads((tmp_path / "o" / "eval_results.json").read_text())["num_samples"] == 2


@pytest.mark.slow
def test_a_label_outside_the_classes_stops_training_naming_the_example(s2glc_dataset, tmp_path, clean_env):
    """Dice once clamped a label 9 of a 7-class dataset to class 6 and trained on."""
    import numpy as np
    from datasets import load_dataset
    from PIL import Image

    splits = load_dataset(str(s2glc_dataset))
    bad = tmp_path / "bad-labels"
    (bad / "data").mkdir(parents=True)
    shutil.copy(s2glc_dataset / "id2label.json", bad / "id2label.json")
    train = splits["train"].select(range(8))
    name = train[5]["name"]

    def plant_nine(example):
        if example["name"] == name:
            label = np.array(example["label"])
            label[:3, :3] = 9
            example["label"] = Image.fromarray(label)
        return example

    train.map(plant_nine).to_parquet(bad / "data" / "train-00000-of-00001.parquet")
    splits["validation"].select(range(2)).to_parquet(bad / "data" / "validation-00000-of-00001.parquet")
    for loss in ("dice", "ce"):
        result = run_script(
            "train.py",
            [
                "--dataset_name",
                str(bad),
                "--output_dir",
                str(tmp_path / loss),
                *SMALL_RUN,
                "--loss",
                loss,
                "--max_train_steps",
                "2",
            ],
            clean_env,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"split 'train', example {name}: label value 9 is outside the 7 classes" in result.stderr
        assert not (tmp_path / loss / "model.safetensors").exists()
