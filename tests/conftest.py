"""Shared fixtures. The Hub is never reached: offline mode and a private HF_HOME are set before any import."""

import os
import sys
import tempfile
from pathlib import Path

import pytest


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


@pytest.fixture
def clean_env() -> dict:
    """Environment for subprocesses: offline, the session's HF_HOME, no way to import lale_hf by accident."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def python_executable() -> str:
    return sys.executable
