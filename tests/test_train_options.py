"""scripts/train.py options, each checked by what it does to a run on real data (slices of the real s2glc sample
converted by the project's converter), through real `accelerate launch` subprocesses."""

import ast
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import SMALL_RUN, check, launch

from lale_hf import LaleConfig
from lale_hf.data import convert_aras400k


def copy_real_pairs(sample: Path, destination: Path, split_folder: str, count: int, first: int = 0):
    """Copies `count` image/mask pairs of a split folder of the real sample (ARAS layout) to `destination`."""
    names = sorted(p.name for p in (sample / split_folder / "images").iterdir())[first : first + count]
    for kind in ("images", "masks"):
        (destination / split_folder / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(sample / split_folder / kind / name, destination / split_folder / kind / name)


def convert(source: Path, output: Path, splits=None) -> Path:
    convert_aras400k(source, output, splits=splits, verify_md5=False, num_proc=1)
    return output


@pytest.fixture(scope="module")
def real_dataset(s2glc_sample, tmp_path_factory) -> Path:
    """24 real training and 8 real validation patches (256x256, no ignored pixel) as a `datasets` folder."""
    source = tmp_path_factory.mktemp("s2glc-slice")
    copy_real_pairs(s2glc_sample, source, "train", 24)
    copy_real_pairs(s2glc_sample, source, "val", 8)
    return convert(source, source.parent / f"{source.name}-dataset")


def subprocess_env() -> dict:
    """`clean_env` for module-scoped fixtures (that one is per test)."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONNOUSERSITE": "1"}


def results_of(output: Path) -> dict:
    return json.loads((output / "all_results.json").read_text())


def relative_difference(first: dict, second: dict) -> float:
    """||first - second|| / ||second|| over all floating-point tensors of two state dicts."""
    difference = sum(float(((first[k].double() - second[k].double()) ** 2).sum()) for k in second)
    norm = sum(float((second[k].double() ** 2).sum()) for k in second)
    return (difference / norm) ** 0.5


@pytest.fixture(scope="module")
def deterministic_lale_config(tmp_path_factory) -> Path:
    """lale-tiny without drop-path and dropout (their random draws depend on the batch layout). It has no
    batch-dependent layer (RMSNorm, no batch norm), so a sum of micro-batch gradients equals the whole batch's."""
    folder = tmp_path_factory.mktemp("lale-tiny-deterministic")
    LaleConfig.from_preset("lale-tiny", drop_path_rate=0.0, classifier_dropout_prob=0.0).save_pretrained(folder)
    return folder


# --gradient_accumulation_steps

ACCUMULATION_LAYOUTS = {"batch4": ("4", "1"), "batch2x2": ("2", "2"), "batch2": ("2", "1")}


@pytest.fixture(scope="module")
def accumulation_runs(real_dataset, deterministic_lale_config, tmp_path_factory) -> dict:
    """Three 3-step runs: batch 4; batch 2 x 2 accumulated micro-batches; batch 2 alone (the control).

    Batch 2 x 2 must take the optimizer steps of batch 4: the same samples in the same order (seeded shuffle, no
    augmentation), and the mean of two micro-batch losses is the 4-batch loss because every patch has 64x64
    labelled pixels (the real sample has no ignored pixel)."""
    env = subprocess_env()
    common = [
        "--dataset_name",
        str(real_dataset),
        "--config_name",
        str(deterministic_lale_config),
        "--image_size",
        "64",
        "--max_train_samples",
        "16",
        "--max_eval_samples",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--no_augmentation",
        "--max_train_steps",
        "3",
        "--learning_rate",
        "1e-3",
        "--lr_scheduler_type",
        "constant",
        "--num_warmup_steps",
        "0",
        "--eval_steps",
        "100",
        "--seed",
        "3",
        # A class-weighted mean is normalised by each micro-batch's own weight sum: only the unweighted loss of two
        # micro-batches averages to the doubled batch's.
        "--class_weights",
        "none",
    ]
    runs = {}
    for name, (batch, accumulation) in ACCUMULATION_LAYOUTS.items():
        output = tmp_path_factory.mktemp(name)
        check(
            launch(
                [
                    *common,
                    "--per_device_train_batch_size",
                    batch,
                    "--gradient_accumulation_steps",
                    accumulation,
                    "--output_dir",
                    str(output),
                ],
                env,
            )
        )
        runs[name] = {"weights": load_file(output / "model.safetensors"), "results": results_of(output)}
    return runs


@pytest.mark.slow
def test_gradient_accumulation_trains_as_a_doubled_batch(accumulation_runs):
    batch4, accumulated, control = (accumulation_runs[name] for name in ACCUMULATION_LAYOUTS)
    assert batch4["results"]["train_steps"] == accumulated["results"]["train_steps"] == 3
    assert batch4["results"]["train_samples"] == accumulated["results"]["train_samples"] == 12
    # Three AdamW steps of 1e-3 move the weights by about 1% of their norm. The layouts differ only by float
    # rounding in the gradient sums: measured 1.5e-7 of the weight norm (largest element 7e-6), against 2.7e-2 for
    # the control; the bound is 1e-5.
    difference = relative_difference(accumulated["weights"], batch4["weights"])
    control_difference = relative_difference(control["weights"], batch4["weights"])
    assert control_difference > 1e-3, control_difference
    assert difference < 1e-5, (difference, control_difference)
    for key in ("eval_overall_accuracy", "eval_macro_f1"):
        assert accumulated["results"][key] == pytest.approx(batch4["results"][key], abs=1e-4), key


@pytest.mark.slow
def test_gradient_accumulation_records_the_loss_of_the_whole_step(accumulation_runs):
    batch4, accumulated = accumulation_runs["batch4"]["results"], accumulation_runs["batch2x2"]["results"]
    np.testing.assert_allclose(accumulated["train_loss_history"], batch4["train_loss_history"], rtol=1e-5)
    assert accumulated["train_loss_last"] == pytest.approx(batch4["train_loss_last"], rel=1e-5)


# --max_train_minutes


@pytest.mark.slow
def test_time_budget_spent_before_planning_stops_and_records_why(real_dataset, tmp_path, clean_env):
    """A budget of 0.6 ms is spent by the first step, long before the run could plan its step count: it stops
    there, evaluates and saves, and says why. 50 epochs were asked for."""
    output = tmp_path / "run"
    result = check(
        launch(
            [
                "--dataset_name",
                str(real_dataset),
                "--max_train_samples",
                "8",
                "--max_eval_samples",
                "4",
                *SMALL_RUN,
                "--max_train_minutes",
                "1e-5",
                "--num_train_epochs",
                "50",
                "--eval_steps",
                "100",
                "--output_dir",
                str(output),
            ],
            clean_env,
        )
    )
    results = results_of(output)
    assert results["stop_reason"] == "time budget exceeded before the planned steps"
    assert results["stopped_by_time_budget"] is True
    assert results["train_steps"] == 1 and len(results["train_loss_history"]) == 1
    assert [entry["step"] for entry in results["eval_history"]] == [1]
    assert "Time budget of" not in result.stdout  # no plan was made
    assert (output / "model.safetensors").is_file() and (output / "README.md").is_file()


@pytest.mark.slow
def test_time_budget_run_ends_on_its_planned_steps_with_the_learning_rate_at_zero(real_dataset, tmp_path, clean_env):
    """A budget run follows the step count in its schedule to the end, where the cosine schedule reaches 0, and
    records that the plan stopped it. The plan is made deterministic by resuming a checkpoint whose schedule
    holds 8 planned steps (the checkpoint of an 8-step run): a time-measured plan would depend on the machine."""
    common = [
        "--dataset_name",
        str(real_dataset),
        "--max_train_samples",
        "16",
        "--max_eval_samples",
        "4",
        *SMALL_RUN,
        "--lr_scheduler_type",
        "cosine",
        "--num_warmup_steps",
        "2",
        "--eval_steps",
        "100",
        "--max_train_minutes",
        "60",
    ]
    by_steps = tmp_path / "by-steps"
    check(
        launch(
            [*common, "--max_train_steps", "8", "--checkpointing_steps", "6", "--output_dir", str(by_steps)], clean_env
        )
    )
    results = results_of(by_steps)
    assert (results["stop_reason"], results["stopped_by_time_budget"]) == ("max_train_steps", False)
    assert results["train_steps"] == 8 and results["final_learning_rate"] == 0.0

    budgeted = tmp_path / "budgeted"
    budgeted.mkdir()
    shutil.copytree(by_steps / "step_6", budgeted / "step_6")
    check(launch([*common, "--resume_from_checkpoint", "latest", "--output_dir", str(budgeted)], clean_env))
    results = results_of(budgeted)
    assert (results["stop_reason"], results["stopped_by_time_budget"]) == ("time budget (planned steps)", True)
    assert results["train_steps"] == 8 and results["final_learning_rate"] == 0.0
    expected, actual = load_file(by_steps / "model.safetensors"), load_file(budgeted / "model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


# --checkpointing_steps epoch


@pytest.fixture(scope="module")
def epoch_checkpoint_run(real_dataset, tmp_path_factory) -> Path:
    """14 samples at batch 2 are 7 micro-batches an epoch; with 2 of them per optimizer step an epoch is 4 steps
    (the last step takes the odd micro-batch). Two epochs, a checkpoint at the end of each."""
    output = tmp_path_factory.mktemp("epoch-checkpoints") / "run"
    check(
        launch(
            [
                "--dataset_name",
                str(real_dataset),
                "--max_train_samples",
                "14",
                "--max_eval_samples",
                "4",
                *SMALL_RUN,
                "--per_device_train_batch_size",
                "2",
                "--gradient_accumulation_steps",
                "2",
                "--num_train_epochs",
                "2",
                "--checkpointing_steps",
                "epoch",
                "--output_dir",
                str(output),
            ],
            subprocess_env(),
        )
    )
    return output


@pytest.mark.slow
def test_epoch_checkpoints_are_named_by_optimizer_steps(epoch_checkpoint_run):
    from lale_hf.training import TrainingState, list_checkpoints

    output = epoch_checkpoint_run
    checkpoints = list_checkpoints(output)
    # Named by optimizer steps (4 an epoch), not micro-batches (7) or samples (14).
    assert checkpoints and checkpoints[0].name == "step_4"
    assert {p.name for p in checkpoints} <= {"step_4", "step_8"}
    assert not list(output.glob(".partial*"))
    for checkpoint in checkpoints:
        state = TrainingState.load(checkpoint)
        epoch = state.completed_steps // 4
        # Saved at the end of its epoch: resuming starts the next epoch at its first batch.
        assert (state.completed_steps, state.epoch, state.batches_in_epoch) == (4 * epoch, epoch, 0)
        assert state.samples_seen == 14 * epoch
        assert (checkpoint / "model.safetensors").is_file()
    results = results_of(output)
    assert results["train_steps"] == 8 and results["train_samples"] == 28
    assert [entry["step"] for entry in results["eval_history"]] == [4, 8]  # one evaluation per epoch


@pytest.mark.slow
def test_epoch_checkpoints_one_per_epoch_including_the_last(epoch_checkpoint_run):
    from lale_hf.training import list_checkpoints

    assert [p.name for p in list_checkpoints(epoch_checkpoint_run)] == ["step_4", "step_8"]


# --config_name


@pytest.mark.slow
def test_config_name_trains_and_saves_a_segformer(real_dataset, tmp_path, clean_env):
    from transformers import (
        AutoImageProcessor,
        AutoModelForSemanticSegmentation,
        SegformerConfig,
        SegformerForSemanticSegmentation,
    )

    config_dir = tmp_path / "segformer-config"
    SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], decoder_hidden_size=64).save_pretrained(
        config_dir
    )
    assert sorted(p.name for p in config_dir.iterdir()) == ["config.json"]  # no processor: the model type's default
    output = tmp_path / "run"
    check(
        launch(
            [
                "--dataset_name",
                str(real_dataset),
                "--config_name",
                str(config_dir),
                "--image_size",
                "64",
                "--max_train_samples",
                "8",
                "--max_eval_samples",
                "4",
                "--per_device_train_batch_size",
                "4",
                "--max_train_steps",
                "2",
                "--eval_steps",
                "100",
                "--output_dir",
                str(output),
            ],
            clean_env,
        )
    )
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "segformer" and config["architectures"] == ["SegformerForSemanticSegmentation"]
    assert config["hidden_sizes"] == [16, 32, 64, 128]
    assert not list(output.glob("*lale*.py"))  # no LALE code files beside a SegFormer
    processor_config = json.loads((output / "preprocessor_config.json").read_text())
    assert processor_config["image_processor_type"].startswith("SegformerImageProcessor")
    assert processor_config["size"] == {"height": 64, "width": 64}
    model = AutoModelForSemanticSegmentation.from_pretrained(output)
    assert isinstance(model, SegformerForSemanticSegmentation)
    dataset_labels = json.loads((real_dataset / "id2label.json").read_text())
    assert model.config.id2label == {int(index): name for index, name in dataset_labels.items()}
    assert type(AutoImageProcessor.from_pretrained(output)).__name__.startswith("SegformerImageProcessor")
    assert 0.0 <= results_of(output)["eval_macro_f1"] <= 1.0


# --include_synthetic


@pytest.fixture(scope="module")
def dataset_with_synthetic(s2glc_sample, tmp_path_factory) -> Path:
    """8 real training and 4 real validation patches, and a synthetic split of 4 procedural patches."""
    from lale_hf.data.synthetic_landcover import encode_pair, generate_patch

    source = tmp_path_factory.mktemp("with-synthetic")
    copy_real_pairs(s2glc_sample, source, "train", 8)
    copy_real_pairs(s2glc_sample, source, "val", 4)
    for kind in ("images", "masks"):
        (source / "synth" / kind).mkdir(parents=True)
    for index in range(4):
        image_png, mask_png = encode_pair(*generate_patch([11, index]))
        (source / "synth" / "images" / f"N50E010_000_{index:03d}.png").write_bytes(image_png)
        (source / "synth" / "masks" / f"N50E010_000_{index:03d}.png").write_bytes(mask_png)
    return convert(source, source.parent / f"{source.name}-dataset")


def training_pixel_counts(log: str) -> dict[str, int]:
    """The per-class pixel counts of the training splits that train.py logs before training."""
    line = next(line for line in log.splitlines() if "Training pixels per class:" in line)
    return ast.literal_eval(line.split("Training pixels per class:", 1)[1].strip())


@pytest.mark.slow
def test_include_synthetic_trains_on_train_and_synthetic(dataset_with_synthetic, tmp_path, clean_env):
    from datasets import load_dataset

    common = [
        "--dataset_name",
        str(dataset_with_synthetic),
        "--max_eval_samples",
        "4",
        *SMALL_RUN,
        "--num_train_epochs",
        "1",
        "--eval_steps",
        "100",
    ]
    runs = {}
    for name, extra in (("train", []), ("train+synthetic", ["--include_synthetic"])):
        output = tmp_path / name
        result = check(launch([*common, *extra, "--output_dir", str(output)], clean_env))
        runs[name] = (results_of(output), training_pixel_counts(result.stdout + result.stderr))
    (train_only, train_counts), (both, both_counts) = runs["train"], runs["train+synthetic"]
    # One epoch over 8 + 4 samples at batch 4, against 8 alone.
    assert (train_only["train_samples"], train_only["train_steps"]) == (8, 2)
    assert (both["train_samples"], both["train_steps"]) == (12, 3)
    # The pixels it counted are those of both splits: the real train split has no Shrub, the procedural one has.
    synthetic = load_dataset(str(dataset_with_synthetic), split="synthetic")
    synthetic_counts = np.bincount(np.concatenate([np.asarray(x).ravel() for x in synthetic["label"]]), minlength=7)
    names = list(train_counts)
    assert train_counts["Shrub"] == 0 and synthetic_counts[names.index("Shrub")] > 0
    assert both_counts == {name: train_counts[name] + int(synthetic_counts[i]) for i, name in enumerate(names)}


# Fine-tuning another model family: its own image processor in, the same processor out (issue 10)

ARAS_LABELS = ("Tree", "Shrub", "Grass", "Crop", "Built-up", "Barren", "Water")
PROCESSOR_TYPES = {"mobilevit": "MobileViTImageProcessor", "segformer": "SegformerImageProcessor"}


def save_random_checkpoint(family: str, folder: Path) -> Path:
    """A randomly initialised checkpoint with its own image processor at 64x64, as save_pretrained writes them:
    MobileViT-XXS DeepLabV3 (apple/deeplabv3-mobilevit-xx-small's sizes) or a small SegFormer."""
    from transformers import (
        MobileViTConfig,
        MobileViTForSemanticSegmentation,
        MobileViTImageProcessorPil,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessorPil,
    )

    id2label = dict(enumerate(ARAS_LABELS))
    torch.manual_seed(0)
    if family == "mobilevit":
        config = MobileViTConfig(
            hidden_sizes=[64, 80, 96],
            neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
            expand_ratio=2.0,
            id2label=id2label,
        )
        model = MobileViTForSemanticSegmentation(config)
        # transformers draws batch-norm weights from N(0, 0.02), which shrinks activations to denormals.
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
        processor = MobileViTImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    else:
        config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], id2label=id2label)
        model = SegformerForSemanticSegmentation(config)
        # Statistics of its own training data rather than ImageNet's (LALE's default), so a mix-up would show.
        processor = SegformerImageProcessorPil(
            size={"height": 64, "width": 64}, image_mean=[0.28, 0.33, 0.24], image_std=[0.12, 0.1, 0.09]
        )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def real_patch(s2glc_sample: Path, size: int = 64):
    """The top-left `size` x `size` crop of a real patch and of its class-index mask (PIL images)."""
    from PIL import Image

    from lale_hf import color_mask_to_label_map

    image = Image.open(s2glc_sample / "train" / "images" / "s2glc_00003.png").convert("RGB").crop((0, 0, size, size))
    mask = np.asarray(Image.open(s2glc_sample / "train" / "masks" / "s2glc_00003.png").convert("RGB"))[:size, :size]
    return image, Image.fromarray(np.asarray(color_mask_to_label_map(mask), dtype=np.uint8))


@pytest.mark.parametrize("family", ["mobilevit", "segformer"])
def test_training_feeds_exactly_what_the_checkpoints_own_processor_produces(family, s2glc_sample, tmp_path):
    """The library path train.py takes: the checkpoint's processor (MobileViT: BGR, rescaled, not normalised;
    this SegFormer: its own mean and std), read once into `Preprocessing`, applied by `SegmentationDataset` to an
    un-augmented real patch at the processor's size, gives the processor's own pixel values bit for bit."""
    from datasets import Dataset, Features, Image

    from lale_hf.preprocessing import preprocessing_from_processor
    from lale_hf.training import SegmentationDataset, training_image_processor

    checkpoint = save_random_checkpoint(family, tmp_path / family)
    processor = training_image_processor(str(checkpoint), family, 64)
    assert type(processor).__name__.startswith(PROCESSOR_TYPES[family])
    image, label = real_patch(s2glc_sample)
    features = Features({"image": Image(), "label": Image()})
    split = Dataset.from_dict({"image": [image], "label": [label]}, features=features)
    fed = SegmentationDataset(split, 64, preprocessing=preprocessing_from_processor(processor), num_labels=7)[0]
    expected = processor(image, return_tensors="pt")["pixel_values"][0]
    assert fed["pixel_values"].shape == expected.shape == (3, 64, 64)
    assert torch.equal(fed["pixel_values"], expected)  # bit-identical
    np.testing.assert_array_equal(fed["labels"].numpy(), np.asarray(label))
    if family == "mobilevit":  # BGR in [0, 1]: channel 0 is the blue band
        np.testing.assert_allclose(fed["pixel_values"][0].numpy(), np.asarray(image)[..., 2] / 255, atol=1e-6)
    # LALE's ImageNet default, which train.py once applied to every model, is far from it.
    default = SegmentationDataset(split, 64, num_labels=7)[0]["pixel_values"]
    assert (default - expected).abs().max() > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mobilevit", "segformer"])
def test_fine_tuned_checkpoint_keeps_its_processor_and_runs_in_a_pipeline(
    family, real_dataset, s2glc_sample, tmp_path, clean_env
):
    from PIL import Image
    from transformers import pipeline

    checkpoint = save_random_checkpoint(family, tmp_path / "checkpoint")
    output = tmp_path / "fine-tuned"
    check(
        launch(
            [
                "--dataset_name",
                str(real_dataset),
                "--model_name_or_path",
                str(checkpoint),
                "--image_size",
                "64",
                "--max_train_samples",
                "8",
                "--max_eval_samples",
                "4",
                "--per_device_train_batch_size",
                "4",
                "--per_device_eval_batch_size",
                "4",
                "--max_train_steps",
                "2",
                "--eval_steps",
                "100",
                "--output_dir",
                str(output),
            ],
            clean_env,
        )
    )
    # The saved processor is the checkpoint's own, unchanged (same size, statistics and channel order).
    saved = json.loads((output / "preprocessor_config.json").read_text())
    original = json.loads((checkpoint / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == PROCESSOR_TYPES[family]
    assert saved == original
    assert json.loads((output / "config.json").read_text())["model_type"] == family
    before, after = load_file(checkpoint / "model.safetensors"), load_file(output / "model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    image = Image.open(s2glc_sample / "val" / "images" / "s2glc_00241.png").convert("RGB")
    segmenter = pipeline("image-segmentation", model=str(output))
    assert type(segmenter.image_processor).__name__.startswith(PROCESSOR_TYPES[family])
    segments = segmenter(image)
    assert segments and {segment["label"] for segment in segments} <= set(ARAS_LABELS)
    masks = [np.asarray(segment["mask"]) > 0 for segment in segments]
    assert all(mask.shape == (image.height, image.width) for mask in masks)
    assert (np.sum(masks, axis=0) == 1).all()  # one class per pixel


# A dataset without the validation split (issue 10)


@pytest.fixture(scope="module")
def dataset_without_validation(s2glc_sample, tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("train-only")
    copy_real_pairs(s2glc_sample, source, "train", 4)
    return convert(source, source.parent / f"{source.name}-dataset", splits=["train"])


MISSING_VALIDATION = "has no split 'validation'; it has ['train']"


def test_missing_validation_split_is_a_typed_library_error(dataset_without_validation):
    import re

    from lale_hf.training import TrainingDataError, load_segmentation_splits

    with pytest.raises(TrainingDataError, match=re.escape(f"{dataset_without_validation} {MISSING_VALIDATION}")):
        load_segmentation_splits(str(dataset_without_validation), ["train", "validation"])
    splits, id2label = load_segmentation_splits(str(dataset_without_validation), ["train"])
    assert len(splits["train"]) == 4 and id2label[0] == "Tree"


def test_train_exits_2_naming_the_missing_validation_split(dataset_without_validation, tmp_path, clean_env):
    import subprocess
    import sys

    from test_train import REPO_ROOT

    output = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            "--dataset_name",
            str(dataset_without_validation),
            "--preset",
            "lale-tiny",
            "--output_dir",
            str(output),
        ],
        cwd=REPO_ROOT,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"error: {dataset_without_validation} {MISSING_VALIDATION}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists() or not list(output.iterdir())
