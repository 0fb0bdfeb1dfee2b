"""The efficiency benchmark's code: zoo, counting, memory, paths against eager, interleaving, pairing, report, script.

Correctness only, on tiny settings: no timing is asserted (the machine is shared and noisy).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSemanticSegmentation

from lale_hf import LaleConfig, LaleForSemanticSegmentation
from lale_hf.allocator import detect_allocator
from lale_hf.file_utils import write_atomic
from lale_hf.inference import relative_error


REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
# The benchmark library sits beside its entry points, outside the package: import it as they do.
sys.path.insert(0, str(BENCHMARKS))

import lale_bench.run  # noqa: E402
from lale_bench import (  # noqa: E402
    TARGETS,
    ZOO,
    BenchmarkSettings,
    PathUnavailable,
    PeakTensorMemory,
    Target,
    Task,
    build_model,
    build_report,
    count_flops,
    count_parameters,
    equal_budget_commands,
    evaluate_targets,
    flop_counter,
    paired_ratio,
    prepare_path,
    read_accuracy,
    render_markdown,
    run_benchmark,
    run_lockstep,
    run_rounds,
    summarize,
)


# Tiny settings for the script: correctness, not timing.
TINY_RUN = (
    "--image_size 32 --inference_batch_sizes 1 2 --train_batch_size 2 --rounds 2 --warmup_calls 1 --min_seconds 0 "
    "--matmul_sizes 32 64 --threads 1"
).split()


def run_script(arguments: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python benchmarks/benchmark.py ARGUMENTS` from the repository root, as the README runs it."""
    command = [sys.executable, str(BENCHMARKS / "benchmark.py"), *arguments]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def small_lale() -> LaleForSemanticSegmentation:
    torch.manual_seed(0)
    config = LaleConfig(
        stem_hidden_size=8,
        hidden_sizes=(8, 8, 16, 16),
        depths=(1, 1, 1, 1),
        num_attention_heads=(1, 1, 1, 1),
        decoder_hidden_size=8,
    )
    return LaleForSemanticSegmentation(config).eval()


def test_zoo_sizes_match_the_models_they_name():
    params = {name: count_parameters(build_model(name)) / 1e6 for name in ZOO}
    assert 1.52 <= params["lale-tiny"] <= 1.68
    assert params["segformer-b0"] == pytest.approx(3.72, abs=0.01)
    assert params["segformer-b1"] == pytest.approx(13.68, abs=0.01)
    assert params["upernet-convnext-7m"] == pytest.approx(7.14, abs=0.01)
    assert params["mobilevit-xxs-deeplabv3"] == pytest.approx(1.85, abs=0.01)
    assert count_flops(build_model("lale-tiny"), 256) / 2e9 <= 0.6


def test_mobilevit_random_init_gives_normal_floats():
    # transformers' own init makes these logits denormal (~1e-44), which is slow arithmetic on x86.
    with torch.no_grad():
        logits = build_model("mobilevit-xxs-deeplabv3")(pixel_values=torch.randn(2, 3, 64, 64)).logits
    assert logits.abs().max() > 1e-6


def test_flops_are_per_image_and_training_counts_backward():
    model = small_lale()
    forward = count_flops(model, 64)
    assert forward > 0
    # Convolutions and projections grow with the pixels, attention with their square (a small share here).
    assert 4 * forward < count_flops(model, 128) < 4.2 * forward
    # Backward costs two forwards (input and weight gradients), less the first conv's unneeded input gradient.
    assert 2.5 * forward < count_flops(model, 64, train=True) <= 3 * forward
    assert model.training is False and all(p.grad is None for p in model.parameters())


def test_sdpa_attention_counts_as_many_flops_as_eager_attention():
    # torch's counter knows the CUDA attention kernels, not the CPU flash kernel SDPA runs here.
    counts = {}
    for implementation in ("eager", "sdpa"):
        model = small_lale()
        model.set_attn_implementation(implementation)
        counts[implementation] = (count_flops(model, 64), count_flops(model, 64, train=True))
    assert counts["sdpa"][0] == counts["eager"][0]
    # The flash backward also recomputes the attention scores: one matmul more than eager's backward.
    assert counts["eager"][1] < counts["sdpa"][1] < 1.01 * counts["eager"][1]


@pytest.mark.parametrize("groups", [1, 64])
def test_flop_counter_counts_grouped_convolution_backward(groups):
    # torch's own formula ignores groups: 65x too many backward FLOPs for this depthwise convolution.
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=groups)
    pixel_values = torch.randn(1, 64, 32, 32, requires_grad=True)
    with flop_counter() as counter:
        conv(pixel_values).sum().backward()
    forward = 2 * 64 * (64 // groups) * 9 * 32 * 32
    assert counter.get_total_flops() == 3 * forward


def test_peak_tensor_memory_counts_live_storage():
    existing = torch.empty(250_000)  # 1 MB, counted from the start
    with PeakTensorMemory([existing]) as tracker:
        a = torch.empty(500_000)  # 2 MB
        b = a + 1  # 2 MB more: 5 MB live
        del a
        c = b * 2  # a freed first: still 5 MB
        d = c.view(-1)  # a view allocates nothing
        existing.add_(1)  # in place on a counted tensor: nothing new
    assert tracker.peak == 5_000_000
    assert tracker.current == 5_000_000
    del b, c, d
    assert tracker.current == 1_000_000


def test_peak_tensor_memory_sees_backward_and_optimizer():
    model = torch.nn.Linear(500, 500)  # 1 MB of weights
    optimizer = torch.optim.AdamW(model.parameters())
    with PeakTensorMemory([*model.parameters()]) as tracker:
        model(torch.randn(4, 500)).sum().backward()
        optimizer.step()
    # weights + gradients + two AdamW moments, at least
    assert tracker.peak >= 4 * 1_002_000


@pytest.mark.parametrize("path", ["eager", "channels_last", "onnxruntime"])
def test_paths_match_eager_on_fresh_inputs(path, tmp_path):
    model, device = small_lale(), torch.device("cpu")
    eager = prepare_path("eager", model, "fp32", device, str(tmp_path), 1)
    runner = prepare_path(path, model, "fp32", device, str(tmp_path), 1)
    for batch_size in (1, 3):  # the ONNX file has a dynamic batch axis
        pixel_values = torch.randn(batch_size, 3, 64, 64)
        output = runner(pixel_values)
        assert output.shape == (batch_size, 7, 16, 16)
        assert relative_error(output, eager(pixel_values)) < 1e-5


@pytest.mark.slow  # inductor's first compile takes about half a minute on two cores
def test_compile_path_matches_eager(tmp_path):
    model, device = small_lale(), torch.device("cpu")
    eager = prepare_path("eager", model, "fp32", device, str(tmp_path), 1)
    compiled = prepare_path("compile", model, "fp32", device, str(tmp_path), 1)
    pixel_values = torch.randn(2, 3, 64, 64)
    first = compiled(pixel_values)
    assert relative_error(first, eager(pixel_values)) < 1e-4
    # Frozen: the weights became constants of the graph, so changing them afterwards changes eager only.
    with torch.no_grad():
        model.decode_head.classifier.bias.add_(1.0)
    assert torch.equal(compiled(pixel_values), first)
    assert relative_error(compiled(pixel_values), eager(pixel_values)) > 1e-2
    from torch._inductor import config as inductor_config

    assert not inductor_config.freezing  # patched for the compile path's calls only


def test_bf16_autocast_path_is_close_and_onnx_is_fp32_only(tmp_path):
    model, device = small_lale(), torch.device("cpu")
    pixel_values = torch.randn(2, 3, 64, 64)
    reference = prepare_path("eager", model, "fp32", device, str(tmp_path), 1)(pixel_values)
    output = prepare_path("eager", model, "bf16", device, str(tmp_path), 1)(pixel_values)
    assert output.dtype == torch.bfloat16
    assert 0 < relative_error(output, reference) < 5e-2
    with pytest.raises(PathUnavailable, match="fp32 only"):
        prepare_path("onnxruntime", model, "bf16", device, str(tmp_path), 1)
    with pytest.raises(ValueError, match="Unknown deployment path"):
        prepare_path("tensorrt", model, "fp32", device, str(tmp_path), 1)


def test_rounds_interleave_rotate_and_sample_every_task():
    order = []
    tasks = [
        Task(group, lambda name=name: order.append(name), units=2, record={})
        for group, name in [("g1", "a"), ("g1", "b"), ("g1", "c"), ("g2", "x")]
    ]
    run_rounds(tasks, rounds=3, synchronize=lambda: None)
    assert order == ["a", "b", "c", "x", "b", "c", "a", "x", "c", "a", "b", "x"]
    assert all(len(task.samples) == 3 and min(task.samples) > 0 for task in tasks)


def test_paired_ratio_pairs_round_by_round():
    ratio = paired_ratio([10.0, 20.0, 40.0], [5.0, 20.0, 10.0])
    assert ratio["samples"] == [2.0, 1.0, 4.0]
    assert (ratio["median"], ratio["min"], ratio["max"]) == (2.0, 1.0, 4.0)
    with pytest.raises(ValueError, match="same non-zero length, got 1 and 2"):
        paired_ratio([1.0], [1.0, 2.0])


def synthetic_run() -> dict:
    """A run with known samples: lale-tiny is 2x segformer-b0 eager, 4x with its best path."""

    def record(model, mode, path, batch, samples):
        return {
            "model": model,
            "dtype": "fp32",
            "mode": mode,
            "path": path,
            "batch_size": batch,
            "status": "ok",
            "detail": "",
            "max_relative_error": 0.0,
            "first_call_seconds": 0.1,
            "samples": samples,
            "median": sorted(samples)[1],
            "calls_per_sample": 1,
        }

    measurements = [
        record("lale-tiny", "inference", "eager", 16, [100.0, 50.0, 80.0]),
        record("lale-tiny", "inference", "onnxruntime", 16, [300.0, 150.0, 200.0]),
        record("lale-tiny", "train", "eager", 8, [40.0, 20.0, 30.0]),
        record("segformer-b0", "inference", "eager", 16, [50.0, 25.0, 40.0]),
        record("segformer-b0", "inference", "compile", 16, [75.0, 37.5, 60.0]),
        record("segformer-b0", "train", "eager", 8, [10.0, 10.0, 10.0]),
        {
            k: v
            for k, v in record("segformer-b0", "inference", "onnxruntime", 16, [0.0] * 3).items()
            if k not in ("samples", "median")
        }
        | {"status": "mismatch", "detail": "error over 0.001", "max_relative_error": 0.5},
    ]
    models = {
        "lale-tiny": {
            "params": 1_632_000,
            "gmacs": 0.3,
            "train_gflops_per_image": 1.8,
            "safetensors_bytes": 6_540_000,
            "peak_memory_mb": {"fp32/inference_b16": 100.0, "fp32/train_b8": 400.0},
        },
        "segformer-b0": {
            "params": 3_716_000,
            "gmacs": 1.69,
            "train_gflops_per_image": 10.0,
            "safetensors_bytes": 14_900_000,
            "peak_memory_mb": {"fp32/inference_b16": 300.0, "fp32/train_b8": 900.0},
        },
    }
    peak = {"dtype": "fp32", "size": 2048, "samples": [200.0, 100.0, 150.0], "median": 150.0}
    settings = {
        "models": ["lale-tiny", "segformer-b0"],
        "dtypes": ["fp32"],
        "inference_batch_sizes": [16],
        "train_batch_size": 8,
        "image_size": 256,
        "rounds": 3,
    }
    environment = {
        "device": "cpu",
        "threads": 2,
        "allocator": "glibc",
        "date": "2026-01-01T00:00:00",
        "torch": "t",
        "transformers": "t",
        "onnxruntime": "o",
        "logical_cpus": 2,
    }
    return {
        "environment": environment,
        "settings": settings,
        "models": models,
        "measurements": measurements,
        "matmul": [peak],
        "matmul_peak": {"fp32": peak},
        "setup_seconds": 1.0,
        "wall_seconds": 2.0,
        "load_average": {"before_timing": 1.5, "after_timing": 2.5},
    }


def test_summary_ratios_fractions_and_targets_from_known_samples():
    run = synthetic_run()
    summary = summarize(run)
    assert summary["best_paths"] == {"lale-tiny|fp32|b16": "onnxruntime", "segformer-b0|fp32|b16": "compile"}
    ratios = {(r["measure"], r["denominator"]): r["median"] for r in summary["ratios"]}
    assert ratios == {
        ("inference/eager", "segformer-b0"): 2.0,
        ("inference/best", "segformer-b0"): 4.0,
        ("train/eager", "segformer-b0"): 3.0,
    }
    fraction = next(
        f for f in summary["peak_fractions"] if f["model"] == "lale-tiny" and f["measure"] == "inference/best"
    )
    assert fraction["samples"] == pytest.approx([0.6 * 300 / 200, 0.6 * 150 / 100, 0.6 * 200 / 150])
    speedup = next(s for s in summary["path_speedups"] if s["model"] == "segformer-b0")
    assert (speedup["path"], speedup["median"]) == ("compile", 1.5)
    targets = {t["name"]: (t["value"], t["met"]) for t in summary["targets"]}
    assert targets["eager inference b16: lale-tiny / segformer-b0"] == (2.0, True)
    assert targets["best path b16: lale-tiny / segformer-b0"] == (4.0, True)
    assert targets["training b8: lale-tiny / segformer-b0"] == (3.0, True)
    assert targets["lale-tiny GMACs at 256x256"] == (0.3, True)
    assert not any("upernet" in name for name in targets)  # not run, not judged
    failing = evaluate_targets(run, summary, [Target("ratio", "lale-tiny", "inference/eager", "segformer-b0", min=2.5)])
    assert failing[0]["met"] is False
    assert {t.model for t in TARGETS} == {"lale-tiny"}


def test_report_renders_every_section_and_compares_allocators():
    glibc, tcmalloc = synthetic_run(), synthetic_run()
    tcmalloc["environment"]["allocator"] = "tcmalloc"
    for record in tcmalloc["measurements"]:
        if "samples" in record:
            record["samples"] = [2 * s for s in record["samples"]]
    report = build_report([glibc, tcmalloc], {"lale-tiny": {"eval_macro_f1": 0.7, "eval_mean_iou": 0.55}}, command="x")
    comparison = report["allocator_comparison"]
    assert (comparison["numerator"], comparison["denominator"]) == ("tcmalloc", "glibc")
    assert {r["median"] for r in comparison["ratios"]} == {2.0}
    markdown = render_markdown(report)
    for text in (
        "allocator glibc",
        "allocator tcmalloc",
        "| lale-tiny | 1.632 | 6.54 | 0.300 |",
        "4.00x [",
        "mismatch",
        "### Targets (fp32)",
        "load average 1.5 before timing, 2.5 after on 2",
        "## Allocator: tcmalloc over glibc",
        "70.00",
        "55.00",
    ):
        assert text in markdown, text
    json.dumps(report)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"models": ("segformer-b9",)}, "`models` must be distinct values from"),
        ({"models": ("lale-tiny",) * 2}, "`models` must be distinct values from"),
        ({"paths": ("compile",)}, "must include 'eager'"),
        ({"dtypes": ("fp8",)}, "`dtypes` must be distinct values from"),
        ({"image_size": 100}, "multiple of 32"),
        ({"inference_batch_sizes": ()}, "`inference_batch_sizes` must be distinct positive integers"),
        ({"matmul_sizes": (0,)}, "`matmul_sizes` must be distinct positive integers"),
        ({"rounds": 0}, "`rounds` must be at least 1"),
    ],
)
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkSettings(**kwargs)


def test_run_benchmark_marks_mismatching_and_failing_paths(monkeypatch):
    original = lale_bench.run.prepare_path

    def faulty(path, *args):
        runner = original("eager", *args)
        if path == "channels_last":
            return lambda x: runner(x) + 1.0  # wrong answers must not be timed
        if path == "compile":
            return lambda x: (_ for _ in ()).throw(RuntimeError("no compiler"))
        if path == "onnxruntime":
            return lambda x: runner(x)[:, :3]  # logits of the wrong shape are a wrong answer too
        return runner

    monkeypatch.setattr(lale_bench.run, "prepare_path", faulty)
    settings = BenchmarkSettings(
        models=("lale-tiny",),
        paths=("eager", "channels_last", "compile", "onnxruntime"),
        image_size=32,
        inference_batch_sizes=(1,),
        train_batch_size=2,
        rounds=2,
        warmup_calls=0,
        min_seconds=0,
        matmul_sizes=(32,),
    )
    run = run_benchmark(settings, log=lambda message: None)
    status = {r["path"]: r["status"] for r in run["measurements"] if r["mode"] == "inference"}
    assert status == {"eager": "ok", "channels_last": "mismatch", "compile": "failed", "onnxruntime": "mismatch"}
    onnxruntime = next(r for r in run["measurements"] if r["path"] == "onnxruntime")
    assert "Cannot compare logits of shape (1, 3, 8, 8)" in onnxruntime["detail"]
    assert [("samples" in r) for r in run["measurements"]] == [True, False, False, False, True]
    assert run["environment"]["allocator"] == detect_allocator()
    assert (
        run["models"]["lale-tiny"]["peak_memory_mb"]["fp32/train_b2"] > run["models"]["lale-tiny"]["params"] * 4 / 2**20
    )


def test_read_accuracy_validates(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"eval_macro_f1": 0.71, "eval_mean_iou": 0.58, "train_samples_per_second": 9.5}))
    accuracy = read_accuracy([f"lale-tiny={good}"])
    assert accuracy["lale-tiny"]["eval_macro_f1"] == 0.71 and accuracy["lale-tiny"]["source"] == str(good)
    percent = tmp_path / "percent.json"
    percent.write_text(json.dumps({"eval_macro_f1": 71.0, "eval_mean_iou": 58.0}))
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"eval_loss": 1.0}))
    for spec, error, message in (
        (f"lale-tiny{good}", ValueError, "Expected NAME=PATH"),
        (f"x={tmp_path}/none.json", FileNotFoundError, "No all_results.json at"),
        (f"x={percent}", ValueError, "eval_macro_f1 = 71.0 is not a fraction"),
        (f"x={missing}", ValueError, "lacks \\['eval_macro_f1', 'eval_mean_iou'\\]"),
    ):
        with pytest.raises(error, match=message):
            read_accuracy([spec])


def test_equal_budget_commands_start_from_the_timed_weights(tmp_path):
    commands = equal_budget_commands(
        ["lale-tiny", "mobilevit-xxs-deeplabv3"], "data/s2glc", tmp_path, 30, 42, extra_args=["--loss", "dice"]
    )
    name, command, results = commands[1]
    assert name == "mobilevit-xxs-deeplabv3" and results == tmp_path / name / "run" / "all_results.json"
    assert command[:4] == [sys.executable, "-m", "accelerate.commands.launch", "scripts/train.py"]
    assert command[-2:] == ["--loss", "dice"]
    flags = dict(zip(command[4:-2:2], command[5:-2:2], strict=True))
    assert flags == {
        "--model_name_or_path": str(tmp_path / name / "init"),
        "--dataset_name": "data/s2glc",
        "--output_dir": str(tmp_path / name / "run"),
        "--seed": "42",
        "--max_train_minutes": "30",
        "--num_train_epochs": "100000",
        "--lr_scheduler_type": "constant_with_warmup",
    }
    # The saved starting point is the benchmark's model, batch norms included (not MobileViT's degenerate init).
    loaded = AutoModelForSemanticSegmentation.from_pretrained(flags["--model_name_or_path"])
    expected = build_model(name, 42).state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    assert AutoConfig.from_pretrained(tmp_path / "lale-tiny" / "init").model_type == "lale"
    with pytest.raises(ValueError, match="must be positive, got 0 minutes"):
        equal_budget_commands(["lale-tiny"], "d", tmp_path, 0, 42)
    # The flags the recipe relies on exist in scripts/train.py.
    train_help = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--help"], capture_output=True, text=True
    )
    for flag in flags:
        assert flag in train_help.stdout


# A worker that marks entering and leaving each turn in one shared log. O_APPEND makes each marker one atomic write,
# so the log is the true order of events across both processes; the pause makes any overlap of turns show in it.
LOCKSTEP_WORKER = """
import os, sys, time
from lale_bench import LockstepTurn
log_path, name, turns = sys.argv[1], sys.argv[2], int(sys.argv[3])
go, done = (int(fd) for fd in sys.argv[sys.argv.index("--lockstep_fds") + 1].split(","))
turn = LockstepTurn(go, done)
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for index in range(turns):
    with turn():
        os.write(log, f"enter {name} {index}\\n".encode())
        time.sleep(0.05)
        os.write(log, f"leave {name} {index}\\n".encode())
"""


def test_lockstep_workers_never_run_at_the_same_time(tmp_path):
    worker, log = tmp_path / "worker.py", tmp_path / "turns.log"
    worker.write_text(LOCKSTEP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS)}
    run_lockstep(
        [([sys.executable, str(worker), str(log), name, str(turns)], env) for name, turns in (("a", 3), ("b", 5))]
    )
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 2 * (3 + 5)
    # Mutual exclusion: every "enter" is followed by the same worker's "leave", before anyone else enters.
    for entered, left in zip(events[::2], events[1::2], strict=True):
        assert entered[0] == "enter" and left == ["leave", *entered[1:]], events
    # Strict alternation while both run, then the longer worker alone; each worker's turns in order.
    turns = [(name, int(index)) for _, name, index in events[::2]]
    assert turns == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("b", 3), ("b", 4)]


def test_write_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    umask = os.umask(0o022)
    try:
        write_atomic(target, "{}")
    finally:
        os.umask(umask)
    assert target.read_text() == "{}" and os.listdir(target.parent) == ["out.json"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_script_writes_json_markdown_and_png_then_rerenders_with_accuracy(tmp_path, clean_env):
    models = "--models lale-tiny segformer-b0 --paths eager channels_last".split()
    done = run_script([*models, *TINY_RUN, "--output_dir", str(tmp_path / "out")], clean_env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    (run,) = report["runs"]
    assert run["environment"]["allocator"] in ("glibc", "tcmalloc", "jemalloc", "mimalloc")
    assert set(run["models"]) == {"lale-tiny", "segformer-b0"}
    timed = [r for r in run["measurements"] if "samples" in r]
    assert len(timed) == 2 * (2 * 2 + 1) and all(len(r["samples"]) == 2 for r in timed)
    assert {m["size"] for m in run["matmul"]} == {32, 64} and run["matmul_peak"]["fp32"]["median"] > 0
    markdown = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| segformer-b0 |" in markdown and "macro F1" not in markdown and markdown in done.stdout
    assert (tmp_path / "out" / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["benchmark.json", "benchmark.md", "benchmark.png"]

    results = tmp_path / "all_results.json"
    results.write_text(json.dumps({"eval_macro_f1": 0.7, "eval_mean_iou": 0.5}))
    rerender = ["--from_json", str(tmp_path / "out" / "benchmark.json"), "--results", f"lale-tiny={results}"]
    done = run_script([*rerender, "--output_dir", str(tmp_path / "again")], clean_env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "benchmark.json").read_text())
    assert again["runs"][0]["measurements"] == run["measurements"] and again["command"] == report["command"]
    assert again["accuracy"]["lale-tiny"]["eval_macro_f1"] == 0.7
    assert "| lale-tiny | 1.632 |" in (tmp_path / "again" / "benchmark.md").read_text()
    assert "70.00 | 50.00 |" in (tmp_path / "again" / "benchmark.md").read_text()


def test_script_output_is_free_of_third_party_noise(tmp_path, clean_env):
    # Exporting to ONNX logs four torchvision warnings and torch raises a pytree FutureWarning: the benchmark's stderr
    # must hold its own progress lines only, and stdout the report.
    settings = (
        "--models lale-tiny --paths eager onnxruntime --image_size 64 --inference_batch_sizes 1 --train_batch_size 2 "
        "--rounds 1 --warmup_calls 0 --min_seconds 0 --matmul_sizes 32 --threads 1"
    ).split()
    done = run_script([*settings, "--output_dir", str(tmp_path)], clean_env)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = json.loads((tmp_path / "benchmark.json").read_text())["runs"]
    assert {r["path"]: r["status"] for r in run["measurements"] if r["mode"] == "inference"} == {
        "eager": "ok",
        "onnxruntime": "ok",
    }
    assert [line for line in done.stderr.splitlines() if not line.startswith("[")] == []
    assert done.stdout.startswith("# LALE efficiency benchmark")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--models", "segformer-b9"], "invalid choice"),
        (["--train_budget_minutes", "5"], "needs --dataset_name"),
        (["--paths", "compile"], "must include 'eager'"),
        (["--image_size", "100"], "multiple of 32"),
        (["--results", "lale-tiny"], "Expected NAME=PATH"),
    ],
)
def test_script_rejects_bad_arguments(arguments, message, clean_env):
    done = run_script(arguments, clean_env, timeout=120)
    assert done.returncode == 2 and message in done.stderr


def test_script_dry_run_prints_the_equal_budget_recipe(tmp_path, clean_env):
    recipe = "--models lale-tiny segformer-b0 --train_budget_minutes 10 --dataset_name data/s2glc --dry_run".split()
    done = run_script([*recipe, "--output_dir", str(tmp_path)], clean_env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("-m accelerate.commands.launch") == 2 and "--max_train_minutes 10" in done.stderr
    assert not (tmp_path / "benchmark.json").exists()
