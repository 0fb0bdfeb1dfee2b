"""Shared fixtures. The Hub is never reached: offline mode and a private HF_HOME are set before any import."""

import os
import sys
import tempfile
from pathlib import Path

import pytest


# The local Hub server (tests/hub_server.py) for push and download tests.
pytest_plugins = ["hub_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="lale-hf-home-"))
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The real Sentinel-2 sample lives beside the repository; LALE_S2GLC_SAMPLE points elsewhere.
S2GLC_SAMPLE = Path(os.environ.get("LALE_S2GLC_SAMPLE", REPO_ROOT.parent / "shared" / "data" / "s2glc-sample"))


@pytest.fixture(scope="session")
def s2glc_sample() -> Path:
    """The real s2glc-sample folder; missing is a failure under CI and a skip elsewhere."""
    if not (S2GLC_SAMPLE / "train" / "images").is_dir():
        message = f"real data not found at {S2GLC_SAMPLE} (set LALE_S2GLC_SAMPLE)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return S2GLC_SAMPLE


@pytest.fixture(scope="session")
def s2glc_dataset(s2glc_sample, tmp_path_factory) -> Path:
    """The real sample's train/ and val/ folders converted once per session by the project's own converter.

    Tests read it; one that needs to change it copies it first.
    """
    from lale_hf.data import convert_aras400k

    output = tmp_path_factory.mktemp("s2glc") / "dataset"
    convert_aras400k(s2glc_sample, output, verify_md5=False, num_proc=1)
    return output


@pytest.fixture
def clean_env() -> dict:
    """Environment for subprocesses: offline, the session's HF_HOME, no way to import lale_hf by accident."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def python_executable() -> str:
    return sys.executable


def cache_model_in_hf_home(folder: Path, repo_id: str) -> Path:
    """Puts a saved model folder into the HF cache as `repo_id` (the documented layout), as a download would."""
    import hashlib
    import shutil

    from huggingface_hub.constants import HF_HUB_CACHE

    repo_folder = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}:{sorted(p.name for p in folder.iterdir())}".encode()).hexdigest()
    snapshot = repo_folder / "snapshots" / commit
    shutil.rmtree(repo_folder, ignore_errors=True)
    shutil.copytree(folder, snapshot)
    (repo_folder / "refs").mkdir(parents=True)
    (repo_folder / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="session")
def lale_tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised lale-tiny with its image processor, saved with save_pretrained."""
    import torch

    from lale_hf import LaleConfig, LaleForSemanticSegmentation, LaleImageProcessor

    folder = tmp_path_factory.mktemp("lale-tiny")
    torch.manual_seed(0)
    LaleForSemanticSegmentation(LaleConfig.from_preset("lale-tiny")).eval().save_pretrained(folder)
    LaleImageProcessor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def cached_lale_tiny(lale_tiny_checkpoint) -> str:
    """`org/lale-tiny` in the session's HF cache, so the literal Hub id loads offline."""
    cache_model_in_hf_home(lale_tiny_checkpoint, "org/lale-tiny")
    return "org/lale-tiny"


@pytest.fixture(scope="session")
def tiny_model():
    """A random lale-tiny whose predictions vary in space (a larger initialiser than the default), for tiling tests."""
    import torch

    from lale_hf import LaleConfig, LaleForSemanticSegmentation

    torch.manual_seed(0)
    return LaleForSemanticSegmentation(LaleConfig.from_preset("lale-tiny", initializer_range=0.05)).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """`tiny_model` saved with its image processor."""
    from lale_hf import LaleImageProcessor

    folder = tmp_path_factory.mktemp("lale-tiny-spatial")
    tiny_model.save_pretrained(folder)
    LaleImageProcessor().save_pretrained(folder)
    return folder


# A short real training run: the equal-steps recipe of docs/accuracy.md (207 steps of lale-tiny on 128-pixel crops of
# the real train/ patches, cosine decay, EMA; about 50 s of training on 2 idle cores; macro F1 about 0.25 on val/).
# Its logits are confident where the land cover is clear, unlike random weights, whose near-uniform logits flip
# class under any rounding; tests of reduced precision (int8, fp16) need that.
REAL_TRAINING_ARGS = [
    "--preset",
    "lale-tiny",
    "--max_train_steps",
    "207",
    "--image_size",
    "128",
    "--scale_range",
    "1.5",
    "3.0",
    "--eval_image_size",
    "256",
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "16",
    "--learning_rate",
    "1e-3",
    "--ema_decay",
    "0.999",
    "--class_weights",
    "none",
    "--eval_steps",
    "1000",
    "--seed",
    "0",
]


@pytest.fixture(scope="session")
def real_trained_checkpoint(s2glc_dataset, tmp_path_factory) -> Path:
    """lale-tiny trained by scripts/train.py on the real sample's train split (`REAL_TRAINING_ARGS`), saved with its
    image processor; evaluated on the validation split at the end (all_results.json)."""
    import subprocess

    output = tmp_path_factory.mktemp("real-trained") / "lale-tiny"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--dataset_name", str(s2glc_dataset)]
    result = subprocess.run(
        [*command, *REAL_TRAINING_ARGS, "--output_dir", str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        pytest.fail(f"training the real checkpoint failed:\n{result.stderr[-4000:]}", pytrace=False)
    return output
