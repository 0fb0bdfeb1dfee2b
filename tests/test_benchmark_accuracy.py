"""The multi-seed accuracy comparison: its statistics against known numbers, its plan, and its report."""

import math

import pytest

from lale_bench.multiseed import TrainingRun, plan_runs, summarize_comparison
from lale_bench.multiseed_report import render_markdown
from lale_bench.seed_statistics import paired_comparison, seed_summary


def test_seed_summary_matches_hand_computed_t_interval():
    summary = seed_summary([0.30, 0.32, 0.34])
    assert summary["mean"] == pytest.approx(0.32)
    assert summary["std"] == pytest.approx(0.02)  # sample std (n - 1)
    # t(0.975, df=2) = 4.302652729911275 (statistical tables); half width = t * s / sqrt(n)
    half_width = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert summary["ci_low"] == pytest.approx(0.32 - half_width, abs=1e-9)
    assert summary["ci_high"] == pytest.approx(0.32 + half_width, abs=1e-9)
    five = seed_summary([1.0, 2.0, 3.0, 4.0, 5.0], confidence=0.9)
    # t(0.95, df=4) = 2.131846786326649; s = sqrt(2.5)
    assert five["ci_high"] - five["mean"] == pytest.approx(2.131846786326649 * math.sqrt(2.5) / math.sqrt(5))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_summary([0.5])


def test_paired_comparison_uses_differences_per_seed():
    # Large seed-to-seed noise shared by both models, a constant 0.02 gap: the pairing sees the gap exactly.
    first = {0: 0.52, 1: 0.42, 2: 0.62}
    second = {0: 0.50, 1: 0.40, 2: 0.60, 3: 0.9}  # seed 3 has no partner and is left out
    comparison = paired_comparison(first, second)
    assert comparison["seeds"] == [0, 1, 2]
    assert comparison["mean"] == pytest.approx(0.02)
    assert comparison["std"] == pytest.approx(0.0, abs=1e-12) and comparison["excludes_zero"]
    noisy = paired_comparison({0: 0.51, 1: 0.40, 2: 0.65}, {0: 0.50, 1: 0.41, 2: 0.60})
    differences = [0.01, -0.01, 0.05]
    mean = sum(differences) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    t_statistic = mean / (std / math.sqrt(3))
    # Two-sided p of a t(2) statistic: 1 - t / sqrt(2 + t^2) (closed form for 2 degrees of freedom).
    assert noisy["p_value"] == pytest.approx(1 - t_statistic / math.sqrt(2 + t_statistic**2))
    assert not noisy["excludes_zero"]


def test_equal_compute_gives_each_model_the_steps_of_its_own_speed_and_shares_identical_runs():
    speeds = {"a": 40.0, "b": 10.0}
    runs = plan_runs(
        ["a", "b"],
        [0, 1],
        ["equal-compute", "equal-steps"],
        batch_size=8,
        speeds=speeds,
        budget_seconds=100.0,
        equal_steps=125,
    )
    compute = {(r.model, r.seed): r.steps for r in runs if r.mode == "equal-compute"}
    assert compute == {("a", 0): 500, ("b", 0): 125, ("a", 1): 500, ("b", 1): 125}
    assert [r.model for r in runs[:2]] == ["a", "b"]  # seed by seed
    # b's equal-compute run is also its equal-steps run: one folder, trained once.
    assert TrainingRun("equal-compute", "b", 0, steps=125).name == TrainingRun("equal-steps", "b", 0, steps=125).name
    with pytest.raises(ValueError, match="needs the measured speeds"):
        plan_runs(["a"], [0], ["equal-compute"], 8)


def test_summary_and_markdown_of_a_comparison():
    records = [
        {
            "mode": "equal-steps",
            "model": model,
            "seed": seed,
            "steps": 10,
            "minutes": None,
            "train_steps": 10,
            "eval_macro_f1": f1,
            "eval_mean_iou": f1 - 0.1,
            "eval_macro_f1_spread_last5": 0.01,
            "train_runtime_seconds": 1.0,
            "eval_history": [],
        }
        for model, scores in (("a", (0.5, 0.6, 0.7)), ("b", (0.4, 0.5, 0.6)))
        for seed, f1 in enumerate(scores)
    ]
    costs = {m: {"parameters": 1e6, "train_gflops_per_image": 2.0, "inference_gmacs": 0.5} for m in "ab"}
    summary = summarize_comparison(records, costs, batch_size=4)
    block = summary["equal-steps"]
    assert block["models"]["a"]["eval_macro_f1"]["mean"] == pytest.approx(0.6)
    assert block["models"]["a"]["train_tflops"] == [pytest.approx(10 * 4 * 2.0 / 1e3)] * 3
    assert block["pairs"]["a vs b"]["eval_macro_f1"]["mean"] == pytest.approx(0.1)
    report = {
        "created": "now",
        "command": "x",
        "machine": "y",
        "settings": {"batch_size": 4},
        "speeds": None,
        "summary": summary,
    }
    markdown = render_markdown(report)
    assert "| a vs b | 10.0 ± 0.0" in markdown and "| a | 1.000 | 0.500 | 10 |" in markdown
