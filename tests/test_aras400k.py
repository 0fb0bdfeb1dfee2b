"""The ARAS400k converter on ARAS-format zips rebuilt from the real Sentinel-2 sample: round trips through
`load_dataset` (normal and streaming) compared byte- and pixel-exact with the sources, and one test per bad input."""

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lale_hf.configuration_lale import ARAS400K_LABELS, ARAS400K_PALETTE
from lale_hf.data import (
    DATASET_MARKER,
    PUBLISHED_MD5,
    Aras400kError,
    OutputFolderError,
    convert_aras400k,
    parse_patch_name,
    write_md5_list,
    write_split_zip,
)
from lale_hf.data.zip_members import iter_zip_members


REPO_ROOT = Path(__file__).resolve().parents[1]
ROUND_TRIP_SIZES = {"train": 20, "val": 8}
OUTPUT_SPLITS = {"train": "train", "val": "validation"}


def real_pairs(s2glc: Path, split: str, count: int) -> list[tuple[str, bytes, bytes]]:
    """The first `count` (name, image PNG, colour mask PNG) pairs of a split of the real sample."""
    names = sorted(path.stem for path in (s2glc / split / "images").glob("*.png"))[:count]
    return [
        (
            name,
            (s2glc / split / "images" / f"{name}.png").read_bytes(),
            (s2glc / split / "masks" / f"{name}.png").read_bytes(),
        )
        for name in names
    ]


def build_zips(folder: Path, s2glc: Path, prefix: str, compression=zipfile.ZIP_DEFLATED) -> Path:
    """ARAS-format zips of the round-trip subset, members under `prefix` (with `{split}`), plus md5sums.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in ROUND_TRIP_SIZES.items():
        write_split_zip(
            folder / f"{split}.zip", real_pairs(s2glc, split, count), prefix.format(split=split), compression
        )
    write_md5_list(folder, [f"{split}.zip" for split in ROUND_TRIP_SIZES])
    return folder


def expected_label(mask_png: bytes) -> np.ndarray:
    """Class indices of a colour mask, by direct comparison with each palette colour."""
    colors = np.asarray(Image.open(io.BytesIO(mask_png)).convert("RGB"))
    label = np.full(colors.shape[:2], 255, dtype=np.uint8)
    for index, color in enumerate(ARAS400K_PALETTE):
        label[(colors == color).all(axis=-1)] = index
    assert (label != 255).all()
    return label


def assert_dataset_matches_source(dataset_dir: Path, s2glc: Path, streaming: bool):
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    dataset = load_dataset(str(dataset_dir), streaming=streaming)
    assert set(dataset) == {OUTPUT_SPLITS[split] for split in ROUND_TRIP_SIZES}
    for split, count in ROUND_TRIP_SIZES.items():
        sources = {name: (image, mask) for name, image, mask in real_pairs(s2glc, split, count)}
        rows = dataset[OUTPUT_SPLITS[split]].cast_column("image", ImageFeature(decode=False))
        seen = []
        for row in rows:
            image_png, mask_png = sources[row["name"]]
            assert row["image"]["bytes"] == image_png, row["name"]  # kept as published, no re-encoding
            label = row["label"]
            assert label.mode == "L" and label.size == (256, 256)
            np.testing.assert_array_equal(np.asarray(label), expected_label(mask_png), err_msg=row["name"])
            assert (row["tile"], row["patch_row"], row["patch_col"]) == (None, None, None)  # s2glc names
            seen.append(row["name"])
        assert seen == sorted(sources)


@pytest.mark.parametrize(
    ("prefix", "num_proc", "compression"),
    [("ARAS400k/{split}/", 2, zipfile.ZIP_DEFLATED), ("export v2/{split} patches/", 1, zipfile.ZIP_STORED)],
)
def test_real_zips_round_trip_through_load_dataset(s2glc_sample, tmp_path, prefix, num_proc, compression):
    zips = build_zips(tmp_path / "zips", s2glc_sample, prefix, compression)
    output = tmp_path / "dataset"
    report = convert_aras400k(zips, output, num_proc=num_proc)

    assert {name: s.num_examples for name, s in report.splits.items()} == {"train": 20, "validation": 8}
    assert report.splits["train"].md5_checked_against.endswith("md5sums.txt")
    assert report.splits["validation"].member_prefix == prefix.format(split="val").rstrip("/")
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "data", "id2label.json", DATASET_MARKER]
    assert not list(tmp_path.glob(".*")), "staging folder left behind"
    assert_dataset_matches_source(output, s2glc_sample, streaming=False)
    assert_dataset_matches_source(output, s2glc_sample, streaming=True)


def test_dataset_card_and_class_names(s2glc_sample, tmp_path):
    from datasets import load_dataset

    zips = build_zips(tmp_path / "zips", s2glc_sample, "ARAS400k/{split}/")
    output = tmp_path / "dataset"
    convert_aras400k(zips, output)
    card = (output / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["license"] == "cc-by-4.0"
    assert metadata["task_categories"] == ["image-segmentation"]
    assert metadata["size_categories"] == ["n<1K"]
    assert metadata["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "validation", "path": "data/validation-*.parquet"},
    ]
    assert [s["num_examples"] for s in metadata["dataset_info"]["splits"]] == [20, 8]
    assert "Grounding Synthetic Data Generation" in card and "2603.09625" in card
    for name, color in zip(ARAS400K_LABELS, ARAS400K_PALETTE, strict=True):
        assert f"| {name} | ({color[0]}, {color[1]}, {color[2]}) |" in card
    assert json.loads((output / "id2label.json").read_text()) == {str(i): n for i, n in enumerate(ARAS400K_LABELS)}
    info = load_dataset(str(output), split="validation").info
    assert all(name in info.description for name in ARAS400K_LABELS)
    assert info.license == "cc-by-4.0" and "caglar" in info.citation.lower()


def test_extracted_folders_convert_like_zips(s2glc_sample, tmp_path):
    from datasets import load_dataset

    extracted = tmp_path / "extracted" / "ARAS400k"
    for split, count in ROUND_TRIP_SIZES.items():
        for name, image_png, mask_png in real_pairs(s2glc_sample, split, count):
            for kind, data in (("images", image_png), ("masks", mask_png)):
                (extracted / split / kind).mkdir(parents=True, exist_ok=True)
                (extracted / split / kind / f"{name}.png").write_bytes(data)
    (extracted / "train" / "images" / ".DS_Store").write_bytes(b"\0")  # hidden files are never data
    report = convert_aras400k(extracted.parent, tmp_path / "from-folders")
    assert report.splits["train"].md5_checked_against == "no checksum (extracted folder)"
    convert_aras400k(build_zips(tmp_path / "zips", s2glc_sample, ""), tmp_path / "from-zips")
    for split in ("train", "validation"):
        from_folders = load_dataset(str(tmp_path / "from-folders"), split=split).with_format("arrow")[:]
        from_zips = load_dataset(str(tmp_path / "from-zips"), split=split).with_format("arrow")[:]
        assert from_folders.equals(from_zips)


def test_real_sample_folder_converts_as_is(s2glc_sample, tmp_path):
    # The sample's own layout (train/, val/ beside raw-tif/ and PROVENANCE.md) is an extracted ARAS400k.
    report = convert_aras400k(s2glc_sample, tmp_path / "dataset", splits=["validation"])
    assert report.splits["validation"].num_examples == 60


def test_parse_patch_name():
    assert parse_patch_name("N45E010_003_004") == ("N45E010", 3, 4)
    assert parse_patch_name("S05W120_140_000") == ("S05W120", 140, 0)
    assert parse_patch_name("s2glc_00001") == (None, None, None)
    assert parse_patch_name("N45E010_003") == (None, None, None)


def test_published_checksums_are_the_authors():
    assert PUBLISHED_MD5 == {
        "train.zip": "95cd5caea68c813fd86888f9cd95b627",
        "val.zip": "76e61fd7557d65ba0596e44c0f92b43f",
        "test.zip": "01679231ee8e38701f5d3ab7de0b5719",
        "synth.zip": "0dc95bfdda44a816ade0d7ea747e4f9c",
    }


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one test each; every failure names the file and leaves neither the output nor a staging folder.


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def val_pairs(s2glc_sample):
    """Three real pairs to build broken zips from."""
    return real_pairs(s2glc_sample, "val", 3)


def write_members(path: Path, members: list[tuple[str, bytes]]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)


def pair_members(pairs, prefix="ARAS400k/val/") -> list[tuple[str, bytes]]:
    members = []
    for name, image_png, mask_png in pairs:
        members += [(f"{prefix}images/{name}.png", image_png), (f"{prefix}masks/{name}.png", mask_png)]
    return members


def assert_fails_cleanly(tmp_path: Path, match: str, members=None, zip_name="val.zip", md5_list=True, **options):
    inputs = tmp_path / "inputs"
    inputs.mkdir(exist_ok=True)
    if members is not None:
        write_members(inputs / zip_name, members)
    if md5_list:
        write_md5_list(inputs, [p.name for p in inputs.glob("*.zip")])
    output = tmp_path / "out" / "dataset"
    output.parent.mkdir(exist_ok=True)
    with pytest.raises(Aras400kError, match=match) as error:
        convert_aras400k(inputs, output, **options)
    assert not output.exists()
    assert list(output.parent.iterdir()) == [], "staging folder left behind"
    return str(error.value)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_truncated_png(tmp_path, val_pairs, num_proc):
    name, image_png, mask_png = val_pairs[2]
    broken = val_pairs[:2] + [(name, image_png[: len(image_png) // 2], mask_png)]
    message = assert_fails_cleanly(tmp_path, "truncated or corrupt PNG", pair_members(broken), num_proc=num_proc)
    assert f"val.zip:ARAS400k/val/images/{name}.png" in message


def test_image_mask_size_mismatch(tmp_path, val_pairs):
    name, image_png, mask_png = val_pairs[0]
    small_mask = png_bytes(np.asarray(Image.open(io.BytesIO(mask_png)).convert("RGB"))[::2, ::2])
    message = assert_fails_cleanly(
        tmp_path, "is 128x128 but its image is 256x256", pair_members([(name, image_png, small_mask)] + val_pairs[1:])
    )
    assert f"masks/{name}.png" in message


def unknown_colour_pairs(val_pairs):
    name, image_png, mask_png = val_pairs[1]
    colors = np.asarray(Image.open(io.BytesIO(mask_png)).convert("RGB")).copy()
    colors[10:15, 20:25] = (1, 2, 3)
    return [val_pairs[0], (name, image_png, png_bytes(colors)), val_pairs[2]], name


def test_unknown_mask_colour(tmp_path, val_pairs):
    pairs, name = unknown_colour_pairs(val_pairs)
    message = assert_fails_cleanly(tmp_path, r"\(1, 2, 3\): 25 px", pair_members(pairs))
    assert f"masks/{name}.png" in message and "--unknown_to_ignore" in message


def test_unknown_mask_colour_mapped_to_ignore_with_the_flag(tmp_path, val_pairs):
    from datasets import load_dataset

    pairs, name = unknown_colour_pairs(val_pairs)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_members(inputs / "val.zip", pair_members(pairs))
    report = convert_aras400k(inputs, tmp_path / "dataset", verify_md5=False, unknown_to_ignore=True)
    assert report.splits["validation"].unknown_pixels == 25
    row = next(r for r in load_dataset(str(tmp_path / "dataset"), split="validation") if r["name"] == name)
    label = np.asarray(row["label"])
    assert (label[10:15, 20:25] == 255).all() and (label == 255).sum() == 25


def test_missing_pair(tmp_path, val_pairs):
    members = [m for m in pair_members(val_pairs) if m[0] != f"ARAS400k/val/masks/{val_pairs[1][0]}.png"]
    message = assert_fails_cleanly(tmp_path, "1 image\\(s\\) without a mask", members)
    assert repr(val_pairs[1][0]) in message and "--skip_unpaired" in message


def test_masks_folder_missing(tmp_path, val_pairs):
    members = [m for m in pair_members(val_pairs) if "/images/" in m[0]]
    assert_fails_cleanly(tmp_path, r"found images/ under \['ARAS400k/val/'\] but no masks/ folder", members)


def test_duplicate_stem(tmp_path, val_pairs):
    name, image_png, _ = val_pairs[0]
    members = pair_members(val_pairs) + [(f"ARAS400k/val/images/extra/{name}.png", image_png)]
    message = assert_fails_cleanly(tmp_path, "1 stem\\(s\\) present more than once", members)
    assert repr(name) in message


def test_unpaired_and_duplicated_stems_skipped_with_the_flag(tmp_path, val_pairs):
    name, image_png, _ = val_pairs[0]
    members = [m for m in pair_members(val_pairs) if m[0] != f"ARAS400k/val/masks/{val_pairs[1][0]}.png"]
    members.append((f"ARAS400k/val/images/extra/{name}.png", image_png))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_members(inputs / "val.zip", members)
    report = convert_aras400k(inputs, tmp_path / "dataset", verify_md5=False, skip_unpaired=True)
    summary = report.splits["validation"]
    assert (summary.num_examples, summary.skipped_unpaired, summary.skipped_duplicates) == (1, 1, 1)


def test_non_png_member(tmp_path, val_pairs):
    members = pair_members(val_pairs) + [("ARAS400k/val/images/notes.txt", b"not an image")]
    assert_fails_cleanly(
        tmp_path, r"val.zip: 1 file\(s\) in images/ or masks/ are not PNG: 'ARAS400k/val/images/notes.txt'", members
    )


def test_jpeg_bytes_named_png(tmp_path, val_pairs):
    name, image_png, mask_png = val_pairs[0]
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(image_png)).save(jpeg, format="JPEG")
    message = assert_fails_cleanly(tmp_path, "is not a PNG file", pair_members([(name, jpeg.getvalue(), mask_png)]))
    assert f"images/{name}.png" in message


def test_md5_mismatch(tmp_path, val_pairs):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_members(inputs / "val.zip", pair_members(val_pairs))
    (inputs / "md5sums.txt").write_text("0123456789abcdef0123456789abcdef  val.zip\n")
    message = assert_fails_cleanly(tmp_path, "MD5 mismatch", md5_list=False)
    assert "expected 0123456789abcdef0123456789abcdef" in message and str(inputs / "val.zip") in message
    assert f"the file has {hashlib.md5((inputs / 'val.zip').read_bytes()).hexdigest()}" in message


def test_published_checksum_applies_without_an_md5_list(tmp_path, val_pairs):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_members(inputs / "val.zip", pair_members(val_pairs))
    message = assert_fails_cleanly(tmp_path, "MD5 mismatch", md5_list=False)
    assert f"expected {PUBLISHED_MD5['val.zip']} (from the published ARAS400k checksums)" in message


@pytest.mark.parametrize("damage", ["truncated", "bit flip"])
def test_corrupt_zip(tmp_path, val_pairs, damage):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_members(inputs / "val.zip", pair_members(val_pairs))
    data = bytearray((inputs / "val.zip").read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 200]
        match = "no end-of-central-directory record"
    else:
        data[len(data) // 3] ^= 0xFF  # inside a member's compressed bytes
        match = "(does not inflate|fails its size/CRC-32 check)"
    (inputs / "val.zip").write_bytes(bytes(data))
    message = assert_fails_cleanly(tmp_path, match, md5_list=False, verify_md5=False)
    assert "val.zip" in message and "corrupt" in message


@pytest.mark.parametrize("bad_name", ["ARAS400k/val/images/../../../evil.png", "/etc/images/evil.png"])
def test_unsafe_member_path(tmp_path, val_pairs, bad_name):
    members = pair_members(val_pairs) + [(bad_name, val_pairs[0][1])]
    message = assert_fails_cleanly(tmp_path, "absolute or contain '..'", members)
    assert repr(bad_name) in message


def test_absurd_declared_size(tmp_path, val_pairs):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_members(inputs / "val.zip", pair_members(val_pairs))
    data = bytearray((inputs / "val.zip").read_bytes())
    target = f"ARAS400k/val/masks/{val_pairs[0][0]}.png".encode()
    entry = data.rindex(target) - 46  # the central-directory entry naming it
    assert data[entry : entry + 4] == b"PK\x01\x02"
    struct.pack_into("<L", data, entry + 24, 3_000_000_000)  # uncompressed size
    (inputs / "val.zip").write_bytes(bytes(data))
    message = assert_fails_cleanly(tmp_path, "declare an absurd size", md5_list=False, verify_md5=False)
    assert "3000000000 bytes" in message


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_image_not_rgb(tmp_path, val_pairs, mode):
    name, image_png, mask_png = val_pairs[0]
    converted = png_bytes(np.asarray(Image.open(io.BytesIO(image_png))), mode)
    kind = {"RGBA": "RGBA", "L": "grayscale"}[mode]
    message = assert_fails_cleanly(
        tmp_path,
        rf"is a {kind} PNG \(8 bits per channel\); ARAS400k images must be 8-bit RGB",
        pair_members([(name, converted, mask_png)]),
    )
    assert f"images/{name}.png" in message


def test_oversized_png_is_refused_from_its_header(tmp_path, val_pairs):
    # 4096x4096 of one palette colour: a few hundred KB of PNG that decodes to 48 MB (an 8000x8000 one, to 192 MB).
    big = 4096
    image_png = png_bytes(np.full((big, big, 3), 90, dtype=np.uint8))
    mask_png = png_bytes(np.broadcast_to(np.asarray(ARAS400K_PALETTE[2], dtype=np.uint8), (big, big, 3)).copy())
    assert len(image_png) + len(mask_png) < 1_000_000
    pairs = [("huge", image_png, mask_png), *val_pairs[1:]]
    message = assert_fails_cleanly(
        tmp_path, f"declares {big}x{big} pixels, more than the limit of 1048576", pair_members(pairs)
    )
    assert "val.zip:ARAS400k/val/images/huge.png" in message and "--max_image_pixels" in message
    report = convert_aras400k(tmp_path / "inputs", tmp_path / "dataset", max_image_pixels=big * big)
    assert report.splits["validation"].num_examples == 3


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_non_utf8_file_name_is_refused_by_name(tmp_path, val_pairs, container):
    inputs = tmp_path / "inputs"
    name, image_png, mask_png = val_pairs[0]
    raw = b"caf\xe9_" + name.encode()  # Latin-1 bytes, not UTF-8
    if container == "folder":
        for kind, data in (("images", image_png), ("masks", mask_png)):
            folder = inputs / "val" / kind
            folder.mkdir(parents=True)
            Path(os.fsdecode(os.fsencode(folder) + b"/" + raw + b".png")).write_bytes(data)
    else:
        inputs.mkdir()
        placeholder = "caf\u00e9" + name  # as many UTF-8 bytes as `raw`; zipfile flags the names as UTF-8
        with zipfile.ZipFile(inputs / "val.zip", "w") as archive:
            for kind, data in (("images", image_png), ("masks", mask_png)):
                archive.writestr(f"ARAS400k/val/{kind}/{placeholder}.png", data)
        data = (inputs / "val.zip").read_bytes().replace(placeholder.encode(), raw)
        (inputs / "val.zip").write_bytes(data)
    message = assert_fails_cleanly(
        tmp_path, "file name\\(s\\) in images/ or masks/ are not valid UTF-8", verify_md5=False
    )
    assert "2 file name(s)" in message and f"images/caf\\xe9_{name}.png'" in message


def test_empty_split(tmp_path, val_pairs):
    members = pair_members(val_pairs) + [("ARAS400k/test/images/", b""), ("ARAS400k/test/masks/", b"")]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_members(inputs / "val.zip", pair_members(val_pairs))
    write_members(inputs / "test.zip", members[-2:])
    assert_fails_cleanly(tmp_path, "test.zip: empty split")


def test_killed_worker_is_an_error_not_a_hang(s2glc_sample, tmp_path, monkeypatch):
    from lale_hf.data import shard_workers

    def killed(task):
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would

    zips = build_zips(tmp_path / "zips", s2glc_sample, "ARAS400k/{split}/")
    monkeypatch.setattr(shard_workers, "convert_shard", killed)  # forked workers inherit it
    with pytest.raises(RuntimeError, match="died with exit code -9"):
        convert_aras400k(zips, tmp_path / "out" / "dataset", num_proc=2)
    assert list((tmp_path / "out").iterdir()) == []


SLOW_SHARDS = """
import os, sys, time
from pathlib import Path
from lale_hf.data import convert_aras400k, shard_workers

convert_shard = shard_workers.convert_shard

def slow_shard(task):  # a long shard: the worker is mid-conversion when its parent is killed
    (Path(sys.argv[3]) / str(os.getpid())).write_text("")
    time.sleep(120)
    return convert_shard(task)

shard_workers.convert_shard = slow_shard
convert_aras400k(sys.argv[1], sys.argv[2], num_proc=2)
"""


def process_gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting for an init that may not reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see which workers are alive")
def test_workers_die_with_a_killed_parent_and_the_next_run_sweeps_its_staging(s2glc_sample, tmp_path):
    zips = build_zips(tmp_path / "zips", s2glc_sample, "ARAS400k/{split}/")
    output, started = tmp_path / "out" / "dataset", tmp_path / "started"
    started.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", SLOW_SHARDS, str(zips), str(output), str(started)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert parent.poll() is None, parent.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
            workers = [int(path.name) for path in started.iterdir()]
        staging = [path for path in output.parent.iterdir() if path.name.startswith(".dataset.tmp-")]
        assert len(staging) == 2 and any(path.is_dir() for path in staging)  # the folder and its lock file
        parent.kill()  # SIGKILL: no cleanup runs in the parent
        parent.wait(timeout=30)
        deadline = time.monotonic() + 5  # grace period
        while not all(process_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in workers if not process_gone(pid)] == [], "workers outlived their parent"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.stderr.close()
    assert all(path.exists() for path in staging)  # the killed run's leftovers
    convert_aras400k(zips, output, splits=["validation"])
    assert sorted(path.name for path in output.parent.iterdir()) == ["dataset"]  # swept by the next run


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`: what must not change."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def extract_real_pairs(folder: Path, s2glc: Path) -> Path:
    """The round-trip subset as extracted split folders `folder/{split}/images|masks/NAME.png`."""
    for split, count in ROUND_TRIP_SIZES.items():
        for name, image_png, mask_png in real_pairs(s2glc, split, count):
            for kind, data in (("images", image_png), ("masks", mask_png)):
                (folder / split / kind).mkdir(parents=True, exist_ok=True)
                (folder / split / kind / f"{name}.png").write_bytes(data)
    return folder


@pytest.mark.parametrize(
    ("layout", "output_name", "relation"),
    [
        ("folders", "train", "is the input"),  # once deleted the train split's images and masks
        ("zips", "train.zip", "is the input"),  # once renamed the zip away
        ("zips", "converted", "is inside the input"),
        ("zips", "..", "contains the input"),
    ],
)
def test_output_over_or_inside_an_input_is_refused(s2glc_sample, tmp_path, layout, output_name, relation):
    inputs = tmp_path / "data" / "inputs"
    if layout == "zips":
        build_zips(inputs, s2glc_sample, "ARAS400k/{split}/")
    else:
        extract_real_pairs(inputs, s2glc_sample)
    before = tree_digest(tmp_path)
    with pytest.raises(OutputFolderError, match=relation) as error:
        convert_aras400k(inputs, inputs / output_name, overwrite=True, overwrite_any=True)
    assert "Choose an --output_dir outside every input" in str(error.value)
    assert tree_digest(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["inputs"]  # no staging folder either


def test_overwrite_replaces_only_a_folder_this_tool_wrote(s2glc_sample, tmp_path):
    zips = build_zips(tmp_path / "zips", s2glc_sample, "ARAS400k/{split}/")
    output = tmp_path / "dataset"
    output.mkdir()
    (output / "thesis.tex").write_text("not a dataset")
    with pytest.raises(OutputFolderError, match="already exists; pass --overwrite"):
        convert_aras400k(zips, output, splits=["validation"])
    with pytest.raises(OutputFolderError, match=f"not a folder written by .* no {DATASET_MARKER}.*--overwrite_any"):
        convert_aras400k(zips, output, splits=["validation"], overwrite=True)
    assert (output / "thesis.tex").read_text() == "not a dataset"
    convert_aras400k(zips, output, splits=["validation"], overwrite=True, overwrite_any=True)
    assert not (output / "thesis.tex").exists() and (output / DATASET_MARKER).is_file()
    # A folder this tool wrote is replaced with --overwrite alone.
    report = convert_aras400k(zips, output, overwrite=True)
    assert set(report.splits) == {"train", "validation"}
    assert json.loads((output / DATASET_MARKER).read_text())["splits"] == ["train", "validation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "zips"]


def test_zip64_central_directory_is_read(tmp_path, val_pairs, monkeypatch):
    # A tiny ZIP64 limit makes zipfile write ZIP64 extra fields and end records, as for the multi-GB ARAS zips.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1024)
    write_split_zip(tmp_path / "zips" / "val.zip", val_pairs, "ARAS400k/val/")
    monkeypatch.undo()
    with zipfile.ZipFile(tmp_path / "zips" / "val.zip") as archive:
        assert any(info.header_offset > 1024 for info in archive.infolist())
        expected = [(info.filename, info.file_size) for info in archive.infolist()]
    assert [(name, size) for name, size, _ in iter_zip_members(tmp_path / "zips" / "val.zip")] == expected
    report = convert_aras400k(tmp_path / "zips", tmp_path / "dataset", verify_md5=False)
    assert report.splits["validation"].num_examples == 3


def rows_by_name(dataset_dir: Path, split: str) -> dict[str, tuple[bytes, bytes]]:
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    rows = load_dataset(str(dataset_dir), split=split)
    rows = rows.cast_column("image", ImageFeature(decode=False)).cast_column("label", ImageFeature(decode=False))
    return {row["name"]: (row["image"]["bytes"], row["label"]["bytes"]) for row in rows}


@pytest.mark.parametrize("link", ["file", "images folder", "split folder"])
def test_symlink_leaving_the_input_folder_is_refused(s2glc_sample, tmp_path, link):
    inputs = extract_real_pairs(tmp_path / "inputs", s2glc_sample)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    name = real_pairs(s2glc_sample, "val", 1)[0][0]
    if link == "file":  # e.g. a link to a private file, whose bytes would go into the dataset and to the Hub
        linked = inputs / "val" / "images" / f"{name}.png"
        (outside / "private.png").write_bytes(linked.read_bytes())
        linked.unlink()
        linked.symlink_to(outside / "private.png")
    elif link == "images folder":
        linked = inputs / "val" / "images"
        linked.rename(outside / "images")
        linked.symlink_to(outside / "images", target_is_directory=True)
    else:
        linked = inputs / "val"
        linked.rename(outside / "val")
        linked.symlink_to(outside / "val", target_is_directory=True)
    message = assert_fails_cleanly(tmp_path, "outside the input folder", verify_md5=False, md5_list=False)
    assert f"{linked} is a symbolic link to {outside}" in message


def test_symlinks_inside_the_input_folder_are_followed(s2glc_sample, tmp_path):
    inputs = extract_real_pairs(tmp_path / "inputs", s2glc_sample)
    convert_aras400k(inputs, tmp_path / "plain", splits=["validation"])
    # masks/ is a link to a folder elsewhere in the input tree; one image is a link to a file there.
    store = inputs / "store"
    store.mkdir()
    (inputs / "val" / "masks").rename(store / "val-masks")
    (inputs / "val" / "masks").symlink_to(store / "val-masks", target_is_directory=True)
    name = real_pairs(s2glc_sample, "val", 1)[0][0]
    image = inputs / "val" / "images" / f"{name}.png"
    image.rename(store / f"{name}.png")
    image.symlink_to(store / f"{name}.png")
    report = convert_aras400k(inputs, tmp_path / "linked", splits=["validation"])
    assert report.splits["validation"].num_examples == ROUND_TRIP_SIZES["val"]
    assert rows_by_name(tmp_path / "linked", "validation") == rows_by_name(tmp_path / "plain", "validation")


def test_symlink_loop_is_refused(s2glc_sample, tmp_path):
    inputs = extract_real_pairs(tmp_path / "inputs", s2glc_sample)
    (inputs / "val" / "images" / "again").symlink_to(inputs / "val", target_is_directory=True)
    assert_fails_cleanly(tmp_path, "a folder already listed through another path", verify_md5=False, md5_list=False)


def test_same_stem_in_training_and_validation_is_refused_or_counted(s2glc_sample, tmp_path):
    train = real_pairs(s2glc_sample, "train", 6)
    leaked = train[:2]
    inputs = tmp_path / "inputs"
    write_split_zip(inputs / "train.zip", train, "ARAS400k/train/")
    write_split_zip(inputs / "val.zip", real_pairs(s2glc_sample, "val", 3) + leaked, "ARAS400k/val/")
    write_split_zip(inputs / "synth.zip", train[-1:], "ARAS400k/synth/")  # training splits may share stems
    write_md5_list(inputs, ["train.zip", "val.zip", "synth.zip"])
    message = assert_fails_cleanly(tmp_path, "train and validation share 2 stem\\(s\\)")
    assert all(repr(name) in message for name, _, _ in leaked) and "--allow_split_overlap" in message
    report = convert_aras400k(inputs, tmp_path / "dataset", allow_split_overlap=True)
    counts = {split: summary.stems_in_other_splits for split, summary in report.splits.items()}
    assert counts == {"train": 2, "validation": 2, "synthetic": 0}
    assert report.splits["validation"].num_examples == 5
    assert "stems shared between splits" in report.format_table()


def run_on_own_mount(mount_point: Path, options: str, command: str) -> subprocess.CompletedProcess:
    """Runs `command` in a private mount namespace where `mount_point` is a fresh tmpfs (`options`: size=..., ro),
    as an unprivileged user may through a user namespace; skips where the kernel does not allow that."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) to mount a small or read-only tmpfs")
    mount_point.mkdir(parents=True, exist_ok=True)
    script = f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(mount_point))} && {command}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_full_disk_is_a_clear_error(s2glc_sample, tmp_path, num_proc):
    zips = build_zips(tmp_path / "zips", s2glc_sample, "ARAS400k/{split}/")
    disk = tmp_path / "small-disk"  # 512 KB: room for the pair index, not for the shards (about 2.5 MB)
    command = (
        f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} {shlex.quote(sys.executable)} "
        f"{shlex.quote(str(REPO_ROOT / 'scripts' / 'prepare_aras400k.py'))} --input_dir {shlex.quote(str(zips))} "
        f"--output_dir {shlex.quote(str(disk / 'dataset'))} --num_proc {num_proc}; "
        f"echo exit=$?; ls -A {shlex.quote(str(disk))}"
    )
    done = run_on_own_mount(disk, "size=512k", command)
    assert done.stdout.strip().splitlines()[-1] == "exit=2", done.stdout + done.stderr[-3000:]  # and nothing left
    assert "error: Cannot write" in done.stderr and "the disk is full: free some space" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_unwritable_output_is_refused_before_any_work(s2glc_sample, tmp_path):
    zips = build_zips(tmp_path / "zips", s2glc_sample, "ARAS400k/{split}/")
    (zips / "md5sums.txt").write_text("0123456789abcdef0123456789abcdef  val.zip\n")  # would fail later, if reached
    read_only = tmp_path / "read-only"
    command = (
        f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} {shlex.quote(sys.executable)} "
        f"{shlex.quote(str(REPO_ROOT / 'scripts' / 'prepare_aras400k.py'))} --input_dir {shlex.quote(str(zips))} "
        f"--output_dir {shlex.quote(str(read_only / 'dataset'))}; echo exit=$?"
    )
    done = run_on_own_mount(read_only, "ro", command)
    assert done.stdout.strip().splitlines()[-1] == "exit=2", done.stdout + done.stderr[-3000:]
    assert f"error: Cannot write {read_only}/.dataset.tmp-" in done.stderr, done.stderr
    assert "Read-only file system; the folder is not writable: choose a writable --output_dir" in done.stderr
    assert "MD5" not in done.stderr and "Traceback" not in done.stderr


def test_command_line_reports_bad_input_and_converts(s2glc_sample, tmp_path):
    zips = build_zips(tmp_path / "zips", s2glc_sample, "ARAS400k/{split}/")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    script = [sys.executable, str(REPO_ROOT / "scripts" / "prepare_aras400k.py")]
    failed = subprocess.run(
        [*script, "--input_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 2 and "error: --input_dir" in failed.stderr and "is not a folder" in failed.stderr
    done = subprocess.run(
        [
            *script,
            "--input_dir",
            str(zips),
            "--output_dir",
            str(tmp_path / "out"),
            "--num_proc",
            "2",
            "--report_json",
            str(tmp_path / "report.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "28 pairs in" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["splits"]["validation"]["num_examples"] == 8
    zip_bytes = (zips / "val.zip").read_bytes()
    refused = subprocess.run(
        [*script, "--input_dir", str(zips), "--output_dir", str(zips / "val.zip"), "--overwrite", "--overwrite_any"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and f"error: --output_dir {zips / 'val.zip'} is the input" in refused.stderr
    assert (zips / "val.zip").read_bytes() == zip_bytes


def test_push_folder_needs_an_allow_list_that_matches(tmp_path):
    from lale_hf.hub_utils import HubPushError, files_to_push, push_folder

    (tmp_path / "data").mkdir()
    for name in ("README.md", "data/train-0.parquet", "runs/events.out", "token.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert files_to_push(tmp_path, ["README.md", "data/*.parquet"]) == ["README.md", "data/train-0.parquet"]
    with pytest.raises(HubPushError, match="without an allow-list"):
        push_folder(tmp_path, "org/repo", "dataset", "msg", allow_patterns=[])
    with pytest.raises(HubPushError, match=r"No file in .* matches \['\*.bin'\]"):
        push_folder(tmp_path, "org/repo", "dataset", "msg", allow_patterns=["*.bin"])


PULL_CONVERTED = """
import hashlib, json, sys
import datasets
from huggingface_hub import HfApi, hf_hub_download

repo = sys.argv[1]
loaded = datasets.load_dataset(repo)
streamed = datasets.load_dataset(repo, streaming=True)
def digest(rows):
    return {row["name"]: hashlib.sha256(row["label"].tobytes()).hexdigest() for row in rows}
print(json.dumps({
    "loaded": {split: digest(loaded[split]) for split in loaded},
    "streamed": {split: digest(streamed[split]) for split in streamed},
    "id2label": json.load(open(hf_hub_download(repo, "id2label.json", repo_type="dataset"))),
    "description": loaded["train"].info.description,
    "files": sorted(HfApi().list_repo_files(repo, repo_type="dataset")),
}))
"""


@pytest.mark.slow
def test_push_to_hub_publishes_the_same_dataset(s2glc_sample, tmp_path, hub_server):
    from datasets import load_dataset

    zips = build_zips(tmp_path / "zips", s2glc_sample, "ARAS400k/{split}/")
    env = hub_server.env({"PYTHONPATH": str(REPO_ROOT)})
    pushed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "prepare_aras400k.py"),
            "--input_dir",
            str(zips),
            "--output_dir",
            str(tmp_path / "dataset"),
            "--num_proc",
            "1",
            "--push_to_hub",
            "hubtest/aras400k-real",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pushed.returncode == 0, f"{pushed.stderr[-3000:]}\n--- server log ---\n{hub_server.log_tail()}"
    pulled = subprocess.run(
        [sys.executable, "-c", PULL_CONVERTED, "hubtest/aras400k-real"],
        env=hub_server.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pulled.returncode == 0, f"{pulled.stderr[-3000:]}\n--- server log ---\n{hub_server.log_tail()}"
    remote = json.loads(pulled.stdout.strip().splitlines()[-1])

    local = load_dataset(str(tmp_path / "dataset"))
    expected = {
        split: {row["name"]: hashlib.sha256(row["label"].tobytes()).hexdigest() for row in local[split]}
        for split in local
    }
    assert remote["loaded"] == expected and remote["streamed"] == expected
    assert remote["id2label"] == json.loads((tmp_path / "dataset" / "id2label.json").read_text())
    assert "Built-up" in remote["description"]
    # The allow-list: the card, the class names and the shards; not the marker file beside them.
    local_files = sorted(p.relative_to(tmp_path / "dataset").as_posix() for p in (tmp_path / "dataset").rglob("*.*"))
    assert DATASET_MARKER in local_files
    shards = [name for name in local_files if name.startswith("data/")]
    assert [f for f in remote["files"] if f != ".gitattributes"] == ["README.md", *shards, "id2label.json"]


# ----------------------------------------------------------------------------------------------------------------
# Package structure


def test_data_modules_import_no_cycle_and_the_package_imports_light(clean_env):
    import ast

    package = REPO_ROOT / "lale_hf" / "data"
    modules = sorted(path.stem for path in package.glob("*.py") if path.stem != "__init__")
    imports = {}
    for name in modules:
        tree = ast.parse((package / f"{name}.py").read_text())
        # Module-level relative imports only: imports inside functions run late and cannot form a cycle at import.
        imports[name] = {
            node.module.split(".")[0]
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
    visiting, done = set(), set()

    def visit(name, path):
        assert name not in visiting, f"import cycle: {' -> '.join(path + [name])}"
        if name in done:
            return
        visiting.add(name)
        for imported in imports[name]:
            visit(imported, path + [name])
        visiting.discard(name)
        done.add(name)

    for name in modules:
        visit(name, [])

    check = (
        "import sys, lale_hf.data\n"
        "loaded = sorted(m for m in sys.modules if m in ('pyarrow', 'sqlite3') or m.startswith('lale_hf.data.'))\n"
        "print(loaded)\n"
    )
    env = {**clean_env, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
