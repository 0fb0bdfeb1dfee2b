"""The wheel holds the package and only the package: every module of `lale_hf` (its subpackages, the remote-code trio,
the package data), and neither the benchmark harness nor test helpers nor scripts."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
# What a build can read from the tree: packaging metadata and every folder that holds Python code. The build runs on
# a copy, so that it leaves no build/ or egg-info folder in the working tree.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE")
CODE_FOLDERS = ("lale_hf", "benchmarks", "scripts", "tests")
REMOTE_CODE = ("configuration_lale.py", "modeling_lale.py", "image_processing_lale.py")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        if (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in CODE_FOLDERS:
        shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
    output = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(output), "."]
    done = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (wheel,) = output.glob("lale_hf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def package_files(names: set[str]) -> set[str]:
    return {name for name in names if ".dist-info/" not in name}


def test_wheel_holds_every_module_of_the_package(wheel_files):
    sources = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "lale_hf").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert sources - wheel_files == set()
    for name in REMOTE_CODE:  # save_pretrained copies these by file name: they stay flat in the package
        assert f"lale_hf/{name}" in wheel_files
    for subpackage in ("data", "inference"):
        assert f"lale_hf/{subpackage}/__init__.py" in wheel_files


def test_wheel_holds_no_benchmark_code_tests_or_scripts(wheel_files):
    files = package_files(wheel_files)
    assert {name.split("/")[0] for name in files} == {"lale_hf"}
    assert [name for name in files if "bench" in name] == []
    test_helpers = {path.name for path in (REPO_ROOT / "tests").glob("*.py")}
    assert [name for name in files if Path(name).name in test_helpers] == []
