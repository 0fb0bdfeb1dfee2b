"""The converging recipe's mechanics: the schedule and its planned length, EMA, class weights, secrets in tracking.

Mechanics, not timings: the subprocess tests check agreement and exactness, never how fast anything ran.
"""

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import SMALL_RUN, check, launch

from lale_hf import ARAS400K_PALETTE
from lale_hf.training import (
    ExponentialMovingAverage,
    StepSchedule,
    TrainingDataError,
    TrainingError,
    class_pixel_counts,
    class_weights_from_counts,
    learning_rate_factor,
    planned_total_steps,
    push_allow_patterns,
    tracked_hyperparameters,
)


def test_cosine_schedule_warms_up_then_reaches_zero_at_the_planned_step():
    factors = [learning_rate_factor(step, 10, 110, "cosine") for step in range(0, 111)]
    assert factors[:11] == pytest.approx([step / 10 for step in range(11)])
    assert factors[60] == pytest.approx(0.5)  # half-way through the decay
    assert factors[110] == 0.0 and all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert learning_rate_factor(60, 10, 110, "linear") == pytest.approx(0.5)
    assert learning_rate_factor(500, 10, None, "cosine") == 1.0  # length not planned yet: stays at the peak
    with pytest.raises(TrainingError, match="unknown learning-rate schedule 'step'"):
        learning_rate_factor(0, 0, 10, "step")


def test_step_schedule_takes_its_length_late_and_keeps_it_in_its_state():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    schedule = StepSchedule(optimizer, warmup_steps=2, schedule="cosine", steps_per_update=2)
    for _ in range(2 * 4):  # four optimizer steps of two processes: warm-up over, length unknown
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(0.1)
    schedule.planned_steps = 6
    state = schedule.state_dict()
    assert state["planned_steps"] == 6 and "optimizer" not in state
    for _ in range(2 * 2):
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)

    restored = StepSchedule(torch.optim.SGD([parameter], lr=0.1), warmup_steps=0, schedule="linear")
    restored.load_state_dict(state)
    assert (restored.planned_steps, restored.schedule, restored.warmup_steps) == (6, "cosine", 2)


def test_planned_total_steps_spends_the_rest_of_the_budget_at_the_measured_rate():
    # 10 steps timed in 5 s (2 steps/s), 20 s of a 60 s budget spent after 15 steps: 40 s more is 80 steps.
    assert planned_total_steps(15, 5.0, 10, 20.0, 60.0) == 95
    assert planned_total_steps(15, 5.0, 10, 70.0, 60.0) == 15  # already past the budget
    with pytest.raises(TrainingError, match="at least one timed step"):
        planned_total_steps(15, 0.0, 0, 1.0, 60.0)


def test_ema_equals_a_hand_computed_average():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ExponentialMovingAverage(model, decay=0.5)
    expected = {k: v.clone().double() for k, v in initial.items() if v.dtype.is_floating_point}
    for update in range(4):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
            model[1].num_batches_tracked += 1
        decay = min(0.5, (1 + update) / (10 + update))  # 0.1, 0.1818, 0.25, 0.3077: warm-up, below 0.5
        for name, tensor in model.state_dict().items():
            if name in expected:
                expected[name] = decay * expected[name] + (1 - decay) * tensor.double()
        ema.update(model)
    for name, value in expected.items():
        torch.testing.assert_close(ema.shadow[name].double(), value, rtol=0, atol=1e-6)
    assert ema.shadow["1.num_batches_tracked"].item() == 4  # integer buffers are copied, not averaged

    trained = {k: v.clone() for k, v in model.state_dict().items()}
    ema.swap(model)
    torch.testing.assert_close(
        model.state_dict()["0.weight"], ema.shadow["0.weight"] * 0 + expected["0.weight"].float()
    )
    ema.swap(model)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    with pytest.raises(TrainingError, match=r"--ema_decay must lie in \(0, 1\)"):
        ExponentialMovingAverage(model, 1.0)


def _palette_counts(mask_path) -> np.ndarray:
    """Class pixels of an ARAS colour mask, counted straight from its colours (independently of the converter)."""
    rgb = np.asarray(Image.open(mask_path).convert("RGB")).reshape(-1, 3)
    return np.array([np.all(rgb == colour, axis=1).sum() for colour in ARAS400K_PALETTE])


def test_class_pixel_counts_match_the_colour_masks(s2glc_sample, s2glc_dataset):
    from datasets import load_dataset

    train = load_dataset(str(s2glc_dataset))["train"]
    counts = class_pixel_counts(train["label"], 7, names=train["name"])
    expected = sum(_palette_counts(s2glc_sample / "train" / "masks" / f"{name}.png") for name in train["name"])
    assert counts.tolist() == expected.tolist()
    assert counts.sum() == len(train) * 256 * 256

    weights = class_weights_from_counts(counts)
    frequencies = counts / counts.sum()
    present = counts > 0
    # Inverse square-root frequency, and a labelled pixel weighs 1 on average.
    ratios = weights[present] * np.sqrt(frequencies[present])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    assert (frequencies * weights).sum() == pytest.approx(1.0)


def test_a_label_outside_the_classes_is_named():
    labels = [np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8), np.array([[0, 9], [1, 2]], np.uint8)]
    with pytest.raises(TrainingDataError, match=r"split 'train', example c: label value 9 is outside the 7 classes"):
        class_pixel_counts(labels, 7, names=["a", "b", "c"])
    assert class_pixel_counts(labels[:2], 7).tolist() == [16, 0, 0, 0, 0, 0, 0]


def test_tracking_never_sees_a_secret(tmp_path):
    arguments = {
        "hub_token": "hf_secret",
        "learning_rate": 1e-3,
        "scale_range": (0.75, 1.5),
        "report_to": "tensorboard",
        "note": "uses hf_secret",
        "wandb_api_key": "k",
    }
    tracked = tracked_hyperparameters(arguments)
    assert tracked == {"learning_rate": 1e-3, "scale_range": "(0.75, 1.5)", "report_to": "tensorboard"}

    (tmp_path / "runs" / "lale" / "1").mkdir(parents=True)
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_lale.py",
        "runs/lale/1/events.out.tfevents.1.x",
        "runs/lale/1/hparams.yml",
        "step_3/model.safetensors",
        "step_3/optimizer.bin",
        "notes.txt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    from lale_hf.hub_utils import files_to_push

    assert files_to_push(tmp_path, push_allow_patterns(tmp_path)) == [
        "config.json",
        "model.safetensors",
        "modeling_lale.py",
        "runs/lale/1/events.out.tfevents.1.x",
    ]


@pytest.mark.slow
def test_time_budget_plans_one_step_count_across_two_processes(s2glc_dataset, tmp_path, clean_env):
    output = tmp_path / "budget"
    result = check(
        launch(
            [
                "--dataset_name",
                str(s2glc_dataset),
                "--max_train_samples",
                "32",
                "--max_eval_samples",
                "4",
                "--output_dir",
                str(output),
                *SMALL_RUN,
                "--max_train_minutes",
                "0.15",
                "--num_warmup_steps",
                "8",
                "--budget_timing_steps",
                "3",
                "--ema_decay",
                "0.9",
            ],
            clean_env,
            num_processes=2,
        )
    )
    planned = re.findall(r"Planned steps of the time budget: (\d+) \(this process estimated (\d+)\)", result.stderr)
    assert len(planned) == 2, result.stderr[-3000:]
    assert planned[0][0] == planned[1][0]
    assert int(planned[0][0]) == min(int(estimate) for _, estimate in planned)
    results = json.loads((output / "all_results.json").read_text())
    assert results["num_processes"] == 2
    if results["stop_reason"] == "time budget (planned steps)":
        assert results["train_steps"] == int(planned[0][0])
        assert results["final_learning_rate"] == 0.0  # the schedule ended exactly on its last step
    else:  # the machine slowed down so much after planning that the safety net stopped it
        assert results["stop_reason"] == "time budget exceeded before the planned steps"
    assert results["stopped_by_time_budget"] is True
    assert math.isfinite(results["eval_macro_f1"])
