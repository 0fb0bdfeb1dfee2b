"""Atomic writes when they fail: a failed rename leaves the old content and no temporary or retired path behind."""

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lale_hf import file_utils
from lale_hf.data import Aras400kError, convert_aras400k
from lale_hf.file_utils import atomic_path, replace_folder, write_atomic


REPO_ROOT = Path(__file__).resolve().parents[1]


class InjectedFailure(OSError):
    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


def fail_rename(monkeypatch, should_fail, error=InjectedFailure):
    """Makes `os.replace`, as `lale_hf.file_utils` calls it, raise `error` on the calls `should_fail(src, dst)` picks;
    the others are real renames. Returns the list of (src, dst, failed) calls."""
    real_replace = os.replace
    calls = []

    def replace(src, dst, *args, **kwargs):
        failed = bool(should_fail(Path(src), Path(dst)))
        calls.append((Path(src), Path(dst), failed))
        if failed:
            raise error("injected rename failure")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(file_utils.os, "replace", replace)
    return calls


def tree_snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders): equal snapshots are equal trees, byte for byte."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


def test_write_atomic_failing_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text('{"old": true}')
    calls = fail_rename(monkeypatch, lambda src, dst: dst == target)
    with pytest.raises(InjectedFailure, match="injected rename failure"):
        write_atomic(target, '{"new": true}')
    assert calls and calls[-1][2], "the rename was never attempted"
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_write_atomic_failing_rename_of_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "nested" / "weights.bin"
    fail_rename(monkeypatch, lambda src, dst: dst == target)
    with pytest.raises(InjectedFailure, match="injected rename failure"):
        write_atomic(target, b"\x00" * 1000)
    assert list((tmp_path / "nested").iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old model")
    with pytest.raises(error, match="writer died"):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half a new mod")
            raise error("writer died")
    assert target.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def make_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


OLD_FILES = {"README.md": b"old card", "data/train-00000-of-00001.parquet": bytes(range(256)) * 40}
NEW_FILES = {"README.md": b"new card", "data/train-00000-of-00002.parquet": b"new shard"}


@pytest.mark.parametrize("error", [InjectedFailure, KeyboardInterrupt])
@pytest.mark.parametrize("failing_rename", ["staging onto destination", "destination to retired"])
def test_replace_folder_failing_rename_keeps_the_old_folder_and_no_retired_copy(
    tmp_path, monkeypatch, failing_rename, error
):
    destination = make_folder(tmp_path / "dataset", OLD_FILES)
    staging = make_folder(tmp_path / ".dataset.tmp-1-abcdef01", NEW_FILES)
    before = tree_snapshot(destination)

    def should_fail(src, dst):
        if failing_rename == "staging onto destination":
            return src == staging and dst == destination
        return src == destination and ".old-" in dst.name

    calls = fail_rename(monkeypatch, should_fail, error)
    with pytest.raises(error, match="injected rename failure"):
        replace_folder(staging, destination)
    assert any(failed for *_, failed in calls), "the failing rename was never attempted"
    assert tree_snapshot(destination) == before
    assert tree_snapshot(staging) == tree_snapshot(make_folder(tmp_path / "expected-new", NEW_FILES))
    # Only the old folder and the caller's staging (its own cleanup removes it) are left: no `.dataset.old-*`.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dataset.tmp-1-abcdef01", "dataset", "expected-new"]


def test_replace_folder_success_leaves_no_retired_copy(tmp_path):
    destination = make_folder(tmp_path / "dataset", OLD_FILES)
    staging = make_folder(tmp_path / ".dataset.tmp-1-abcdef01", NEW_FILES)
    expected = tree_snapshot(staging)
    replace_folder(staging, destination)
    assert tree_snapshot(destination) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


# The converter's --overwrite on real patches: a failed run leaves the old dataset as it was.

SPLIT_SIZES = {"train": 6, "val": 3}


def extract_real_pairs(folder: Path, s2glc: Path, sizes: dict[str, int], offset: int = 0) -> Path:
    for split, count in sizes.items():
        names = sorted(path.stem for path in (s2glc / split / "images").glob("*.png"))[offset : offset + count]
        for name in names:
            for kind in ("images", "masks"):
                (folder / split / kind).mkdir(parents=True, exist_ok=True)
                (folder / split / kind / f"{name}.png").write_bytes((s2glc / split / kind / f"{name}.png").read_bytes())
    return folder


@pytest.fixture
def converted(s2glc_sample, tmp_path) -> Path:
    """A dataset converted from real patches, in a folder of its own (so leftovers beside it are visible)."""
    output = tmp_path / "out" / "dataset"
    convert_aras400k(extract_real_pairs(tmp_path / "first", s2glc_sample, SPLIT_SIZES), output, num_proc=1)
    return output


def fingerprint(folder: Path) -> dict:
    snapshot = tree_snapshot(folder)
    return {name: None if data is None else hashlib.sha256(data).hexdigest() for name, data in snapshot.items()}


def test_overwrite_with_bad_input_leaves_the_old_dataset_byte_for_byte(s2glc_sample, tmp_path, converted):
    before = fingerprint(converted)
    assert any(name.endswith(".parquet") for name in before)
    # Other real patches, one of whose masks holds a colour outside the palette.
    bad = extract_real_pairs(tmp_path / "bad", s2glc_sample, SPLIT_SIZES, offset=10)
    mask_path = sorted((bad / "train" / "masks").glob("*.png"))[3]
    colours = np.asarray(Image.open(mask_path).convert("RGB")).copy()
    colours[100:104, 50:55] = (1, 2, 3)
    Image.fromarray(colours).save(mask_path)

    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "prepare_aras400k.py"),
            "--input_dir",
            str(bad),
            "--output_dir",
            str(converted),
            "--overwrite",
            "--num_proc",
            "2",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"masks/{mask_path.name}" in result.stderr and "(1, 2, 3): 20 px" in result.stderr
    assert fingerprint(converted) == before
    assert sorted(p.name for p in converted.parent.iterdir()) == ["dataset"], "staging or retired folder left"

    # The same run on good input does replace it (the check above is not vacuous).
    good = extract_real_pairs(tmp_path / "good", s2glc_sample, SPLIT_SIZES, offset=10)
    convert_aras400k(good, converted, overwrite=True, num_proc=1)
    assert fingerprint(converted) != before
    assert sorted(p.name for p in converted.parent.iterdir()) == ["dataset"]


def test_overwrite_failing_at_the_final_rename_leaves_the_old_dataset(s2glc_sample, tmp_path, converted, monkeypatch):
    before = fingerprint(converted)
    good = extract_real_pairs(tmp_path / "good", s2glc_sample, SPLIT_SIZES, offset=10)
    calls = fail_rename(monkeypatch, lambda src, dst: dst == converted and src.name.startswith(".dataset.tmp-"))
    with pytest.raises((OSError, Aras400kError), match="injected rename failure"):
        convert_aras400k(good, converted, overwrite=True, num_proc=1)
    assert any(failed for *_, failed in calls), "the final rename was never attempted"
    assert fingerprint(converted) == before
    assert sorted(p.name for p in converted.parent.iterdir()) == ["dataset"], "staging or retired folder left"
