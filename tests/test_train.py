"""scripts/train.py end to end through real `accelerate launch` subprocesses on a slice of the real sample."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from lale_hf import LaleForSemanticSegmentation


REPO_ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
SMALL_RUN = [
    "--preset",
    "lale-tiny",
    "--image_size",
    "64",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "4",
    "--learning_rate",
    "3e-3",
    "--seed",
    "7",
]


def launch(args: list[str], env: dict, num_processes: int = 1, script: str = "scripts/train.py", **kwargs):
    # accelerate 1.15's `--cpu` always starts one process; several CPU processes (gloo) take the multi-process
    # launcher with ACCELERATE_USE_CPU set.
    device = ["--cpu"] if num_processes == 1 else ["--multi_gpu", "--main_process_port", str(free_port())]
    env = env if num_processes == 1 else {**env, "ACCELERATE_USE_CPU": "true"}
    command = [
        *ACCELERATE,
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        *device,
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO_ROOT / script),
        *args,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def run_script(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """`python scripts/<script> ARGS` in one process, output captured (for argument and input errors)."""
    return subprocess.run(
        [sys.executable, f"scripts/{script}", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def free_port() -> int:
    """A port nobody listens on, so that a rendezvous never meets a previous run's socket (29500 by default)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check(result):
    if result.returncode != 0:  # the whole log, not pytest's shortened repr of it
        pytest.fail(
            f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n"
            f"{result.stderr[-8000:]}",
            pytrace=False,
        )
    return result


def test_end_to_end_training_learns_saves_and_pushes(s2glc_dataset, tmp_path, hub_server):
    output = tmp_path / "run"
    env = hub_server.env()
    check(
        launch(
            [
                "--dataset_name",
                str(s2glc_dataset),
                "--max_train_samples",
                "32",
                "--max_eval_samples",
                "12",
                "--max_train_steps",
                "24",
                "--eval_steps",
                "12",
                "--output_dir",
                str(output),
                *SMALL_RUN,
                "--with_tracking",
                "--report_to",
                "tensorboard",
                "--push_to_hub",
                "--hub_model_id",
                "org/lale-tiny",
                "--hub_token",
                "hf_test_token",
            ],
            env,
        )
    )
    results = json.loads((output / "all_results.json").read_text())
    history = results["train_loss_history"]
    assert len(history) == 24
    assert sum(history[-6:]) / 6 < 0.8 * sum(history[:6]) / 6, history
    for key in ("eval_macro_f1", "eval_mean_iou", "eval_overall_accuracy", "eval_f1_Tree", "eval_iou_Crop"):
        assert 0.0 <= results[key] <= 1.0, key
    best = json.loads((output / "best" / "eval_results.json").read_text())
    assert best["step"] in (12, 24) and best["eval_macro_f1"] >= results["eval_macro_f1"] - 1e-12
    assert (output / "confusion_matrix.png").stat().st_size > 1000
    assert list((output / "runs").rglob("events.out.tfevents.*")), "no tensorboard events"
    assert (output / "model.safetensors").is_file() and not list(output.glob("*.bin"))
    for code_file in ("configuration_lale.py", "modeling_lale.py", "image_processing_lale.py"):
        assert (output / code_file).is_file()

    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-segmentation"
    card_metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert card_metrics["f1"] == results["eval_macro_f1"] and card_metrics["mean_iou"] == results["eval_mean_iou"]

    model = LaleForSemanticSegmentation.from_pretrained(output).eval()
    assert model.config.id2label[0] == "Tree"
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(pixel_values).logits
    save_file({"pixel_values": pixel_values}, tmp_path / "inputs.safetensors")
    # The saved folder, then the pushed repository over HTTP, each in a process where lale_hf cannot be imported.
    for source, client_env in ((str(output), env), ("org/lale-tiny", hub_server.env())):
        remote = subprocess.run(
            [sys.executable, "-c", REMOTE_CLIENT, source],
            cwd=tmp_path,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert remote.returncode == 0, (remote.stderr[-3000:], hub_server.log_tail())
        torch.testing.assert_close(load_file(tmp_path / "outputs.safetensors")["logits"], logits, rtol=0, atol=0)
    pushed_card = json.loads((tmp_path / "card.json").read_text())
    assert pushed_card["f1"] == results["eval_macro_f1"]
    assert pushed_card["mean_iou"] == results["eval_mean_iou"]
    assert pushed_card["accuracy"] == results["eval_overall_accuracy"]

    # The token was given on the command line with tracking on: no pushed file of any commit, and no local output,
    # may hold it (it once leaked through the tracked hyperparameters into runs/*/hparams.yml and the event file).
    repo = hub_server.repo_path("org/lale-tiny")
    pushed = pushed_contents(repo)
    assert "README.md" in pushed and "model.safetensors" in pushed
    assert any(name.startswith("runs/") for name in pushed), "the TensorBoard logs are part of the push"
    assert not [name for name, data in pushed.items() if b"hf_test_token" in data]
    assert not [p for p in output.rglob("*") if p.is_file() and b"hf_test_token" in p.read_bytes()]
    assert all(allowed_in_push(name) for name in pushed), sorted(pushed)


PUSH_ALLOWED_EXACT = {
    ".gitattributes",
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "configuration_lale.py",
    "modeling_lale.py",
    "image_processing_lale.py",
    "all_results.json",
    "eval_results.json",
    "confusion_matrix.png",
}


def allowed_in_push(name: str) -> bool:
    """The files a training push may upload: the model folder's own files and TensorBoard event files."""
    return name in PUSH_ALLOWED_EXACT or (name.startswith("runs/") and ".tfevents." in name)


def pushed_contents(repo: Path) -> dict[str, bytes]:
    """Every file of every commit of a test-server repository, LFS files resolved to their content."""

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout

    contents = {}
    for commit in git("rev-list", "--all").decode().split():
        for line in git("ls-tree", "-r", commit).decode().splitlines():
            meta, name = line.split("\t", 1)
            data = git("cat-file", "blob", meta.split()[2])
            if data.startswith(b"version https://git-lfs"):
                oid = next(x.split(":")[1] for x in data.decode().split() if x.startswith("sha256:"))
                data = next((repo / ".git" / "lfs" / "objects").rglob(oid)).read_bytes()
            contents[name] = contents.get(name, b"") + data
    return contents


# Loads a model through remote code where lale_hf cannot be imported; writes its logits and card metrics.
REMOTE_CLIENT = """
import importlib.machinery, json, os, sys
sys.path = [p for p in sys.path if importlib.machinery.PathFinder.find_spec("lale_hf", [p or "."]) is None]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSemanticSegmentation
model = AutoModelForSemanticSegmentation.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert "lale_hf" not in sys.modules
with torch.no_grad():
    logits = model(load_file("inputs.safetensors")["pixel_values"]).logits
save_file({"logits": logits.contiguous()}, "outputs.safetensors")
card = ModelCard.load(os.path.join(sys.argv[1], "README.md") if os.path.isdir(sys.argv[1]) else sys.argv[1])
with open("card.json", "w") as f:
    json.dump({r.metric_type: r.metric_value for r in card.data.eval_results}, f)
"""


def kill_while_writing(command: list[str], env: dict, partial: Path, deadline_s: float = 300) -> bool:
    """Starts `command` and SIGKILLs its process group as soon as the checkpoint folder `partial` appears.

    Returns whether the kill landed inside the write (the partial folder still exists and was not yet renamed).
    """
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + deadline_s
    while not partial.exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return partial.exists()


def test_sigkill_inside_a_mid_epoch_checkpoint_write_resumes_exactly(s2glc_dataset, tmp_path, clean_env):
    """24 samples at batch 4 are 6 steps an epoch; checkpoints every 4 steps land mid-epoch (step 4: epoch 0,
    batch 4; step 8: epoch 1, batch 2). The run is killed while step 8 is being written, so the resume must ignore
    the partial folder, start from step 4 in the middle of epoch 0 (skip_first_batches) and end, EMA and cosine
    schedule included, on exactly the weights of an uninterrupted run."""
    # One thread: a bit-exact comparison must not depend on how a loaded machine schedules parallel reductions.
    clean_env = {**clean_env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    common = [
        "--dataset_name",
        str(s2glc_dataset),
        "--max_train_samples",
        "24",
        "--max_eval_samples",
        "4",
        "--max_train_steps",
        "14",
        *SMALL_RUN,
        "--eval_steps",
        "100",
        "--ema_decay",
        "0.8",
        "--lr_scheduler_type",
        "cosine",
        "--num_warmup_steps",
        "3",
    ]
    # The uninterrupted run writes no checkpoint (and creates its output folder itself).
    check(launch([*common, "--output_dir", str(tmp_path / "straight")], clean_env))
    common += ["--checkpointing_steps", "4", "--checkpoints_total_limit", "2"]

    for attempt in range(3):  # the write takes a fraction of a second: a loaded machine can miss it
        interrupted = tmp_path / f"interrupted-{attempt}"
        command = [
            *ACCELERATE,
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--cpu",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(REPO_ROOT / "scripts/train.py"),
            *common,
            "--output_dir",
            str(interrupted),
        ]
        if kill_while_writing(command, clean_env, interrupted / ".partial_step_8"):
            break
    else:
        pytest.fail("three kills all missed the checkpoint write of step 8")
    assert not (interrupted / "model.safetensors").exists()
    assert not (interrupted / "step_8").exists()
    from lale_hf.training import TrainingState, list_checkpoints

    latest = list_checkpoints(interrupted)[-1]
    assert latest.name == "step_4"
    position = TrainingState.load(latest)
    assert (position.epoch, position.batches_in_epoch) == (0, 4)  # the middle of an epoch
    # What the killed write left must never be reused: it once ended up published inside the next step_8.
    (interrupted / ".partial_step_8" / "left-by-the-kill.txt").write_text("junk")

    result = check(launch([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint", "latest"], clean_env))
    assert not (interrupted / "step_8" / "left-by-the-kill.txt").exists()
    assert "Resumed from checkpoint" in result.stdout + result.stderr and "step_4" in result.stdout + result.stderr
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(interrupted / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert sorted(p.name for p in interrupted.glob("step_*")) == ["step_12", "step_8"]  # --checkpoints_total_limit
    assert not list(interrupted.glob(".partial_step_*"))
    results = json.loads((interrupted / "all_results.json").read_text())
    assert results["final_learning_rate"] == 0.0


def test_one_and_two_processes_give_the_same_confusion_matrix(s2glc_dataset, lale_tiny_checkpoint, tmp_path, clean_env):
    matrices = []
    for num_processes in (1, 2):
        output = tmp_path / f"eval-{num_processes}"
        check(
            launch(
                [
                    "--model_name_or_path",
                    str(lale_tiny_checkpoint),
                    "--dataset_name",
                    str(s2glc_dataset),
                    "--split",
                    "validation",
                    "--max_eval_samples",
                    "13",
                    "--per_device_eval_batch_size",
                    "3",
                    "--image_size",
                    "64",
                    "--output_dir",
                    str(output),
                ],
                clean_env,
                num_processes=num_processes,
                script="scripts/evaluate.py",
            )
        )
        results = json.loads((output / "eval_results.json").read_text())
        assert results["num_samples"] == 13 and results["num_processes"] == num_processes
        matrices.append(results["confusion_matrix"])
    assert sum(map(sum, matrices[0])) == 13 * 64 * 64
    assert matrices[0] == matrices[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "lale-huge"], "invalid choice: 'lale-huge'"),
        (["--preset", "lale-tiny", "--validation_split", "dev"], "has no split 'dev'"),
        (["--preset", "lale-tiny", "--class_weights", "1", "2"], "--class_weights has 2 values for 7 classes"),
        (["--preset", "lale-tiny", "--model_name_or_path", "x"], "exactly one of --preset"),
    ],
)
def test_bad_arguments_fail_before_training(s2glc_dataset, tmp_path, clean_env, args, message):
    result = run_script(
        "train.py", ["--dataset_name", str(s2glc_dataset), "--output_dir", str(tmp_path / "o"), *args], clean_env
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_dataset_without_class_names_is_refused(s2glc_dataset, tmp_path, clean_env):
    import shutil

    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(s2glc_dataset, unlabelled)
    (unlabelled / "id2label.json").unlink()
    result = run_script(
        "train.py",
        ["--dataset_name", str(unlabelled), "--preset", "lale-tiny", "--output_dir", str(tmp_path / "o")],
        clean_env,
    )
    assert result.returncode != 0 and "carries no class names (id2label.json)" in result.stderr


def test_checkpoint_with_other_num_labels_is_refused(s2glc_dataset, tmp_path, clean_env):
    from lale_hf import LaleConfig

    LaleForSemanticSegmentation(LaleConfig(num_labels=3)).save_pretrained(tmp_path / "three")
    result = run_script(
        "train.py",
        [
            "--dataset_name",
            str(s2glc_dataset),
            "--model_name_or_path",
            str(tmp_path / "three"),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        clean_env,
    )
    assert result.returncode != 0
    assert "predicts 3 classes but the dataset has 7" in result.stderr and "--ignore_mismatched_sizes" in result.stderr


def test_streaming_two_processes_resume_exactly(s2glc_dataset, tmp_path, clean_env):
    """--streaming shards the stream per process; resuming from a checkpoint replays it to the same weights."""
    common = [
        "--dataset_name",
        str(s2glc_dataset),
        "--streaming",
        "--shuffle_buffer_size",
        "16",
        "--max_train_steps",
        "6",
        "--max_eval_samples",
        "4",
        "--eval_steps",
        "100",
        "--checkpointing_steps",
        "3",
        *SMALL_RUN,
    ]
    straight = tmp_path / "straight"
    check(launch([*common, "--output_dir", str(straight)], clean_env, num_processes=2))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(straight / "step_3", resumed / "step_3")
    check(
        launch(
            [*common, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"], clean_env, num_processes=2
        )
    )
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    results = json.loads((straight / "all_results.json").read_text())
    assert results["train_samples"] == 6 * 4 * 2
