"""The procedural ARAS400k-format sample: deterministic, in the exact distribution format, learnable, and accepted by
the converter (through its MD5 list)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lale_hf.configuration_lale import ARAS400K_PALETTE
from lale_hf.data import SAMPLE_MARKER, parse_patch_name, prepare_embedded_sample, read_md5_list
from lale_hf.data.synthetic_landcover import WATER, generate_patch, generate_sample


REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {"train": 6, "val": 3, "test": 2, "synth": 3}


def test_sample_is_byte_identical_for_a_seed_whatever_the_process_count(tmp_path):
    generate_sample(tmp_path / "a", seed=5, sizes=TINY, num_proc=1)
    generate_sample(tmp_path / "b", seed=5, sizes=TINY, num_proc=2)
    generate_sample(tmp_path / "c", seed=6, sizes=TINY, num_proc=1)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(["train.zip", "val.zip", "test.zip", "synth.zip", "md5sums.txt", SAMPLE_MARKER])
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train.zip").read_bytes() != (tmp_path / "c" / "train.zip").read_bytes()
    assert not list(tmp_path.glob(".*")), "staging folder left behind"


def test_sample_follows_the_aras400k_distribution_format(tmp_path):
    folder = generate_sample(tmp_path / "sample", seed=1, sizes=TINY)
    sums = read_md5_list(folder / "md5sums.txt")
    tiles = {}
    palette = {tuple(color) for color in ARAS400K_PALETTE}
    for split, count in TINY.items():
        zip_path = folder / f"{split}.zip"
        assert sums[zip_path.name] == hashlib.md5(zip_path.read_bytes()).hexdigest()
        with zipfile.ZipFile(zip_path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            images = sorted(n for n in names if n.startswith(f"ARAS400k/{split}/images/"))
            masks = sorted(n for n in names if n.startswith(f"ARAS400k/{split}/masks/"))
            assert len(images) == len(masks) == count and len(names) == 2 * count
            assert [n.split("/")[-1] for n in images] == [n.split("/")[-1] for n in masks]
            for image_name, mask_name in zip(images, masks, strict=True):
                tile, row, col = parse_patch_name(Path(image_name).stem)
                assert tile is not None and 0 <= row < 40 and 0 <= col < 40
                tiles.setdefault(split, set()).add(tile)
                image = Image.open(io.BytesIO(archive.read(image_name)))
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (256, 256))
                assert np.asarray(image).max() == 255  # scaled by its own maximum
                mask = Image.open(io.BytesIO(archive.read(mask_name)))
                assert (mask.mode, mask.size) == ("RGB", (256, 256))
                assert {tuple(c) for c in np.unique(np.asarray(mask).reshape(-1, 3), axis=0)} <= palette
    splits = list(tiles)
    assert all(tiles[a].isdisjoint(tiles[b]) for a in splits for b in splits if a != b)  # spatially apart
    marker = json.loads((folder / SAMPLE_MARKER).read_text())
    assert marker["seed"] == 1 and marker["sizes"] == TINY


def test_patches_cover_every_class_with_class_specific_colour():
    patches = [generate_patch([0, 0, index]) for index in range(40)]
    labels = np.stack([label for _, label in patches])
    images = np.stack([image for image, _ in patches]).astype(np.float64)
    assert set(np.unique(labels)) == set(range(7))
    assert all((label == WATER).mean() <= 0.9 for label in labels)  # ARAS400k dropped >90% water patches
    # Mean brightness-normalised colour per class: classes must not all look alike.
    normalised = images / images.mean(axis=(1, 2, 3), keepdims=True)
    means = np.stack([normalised[labels == c].mean(axis=0) for c in range(7)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(7, 1)]
    assert distances.min() > 0.03, distances.min()
    # Deterministic per seed.
    again = generate_patch([0, 0, 3])
    assert np.array_equal(again[0], patches[3][0]) and np.array_equal(again[1], patches[3][1])


def _pixel_features(image: np.ndarray) -> np.ndarray:
    pixels = image.astype(np.float32) / 255
    local_mean = np.asarray(Image.fromarray(image).filter(ImageFilter.BoxBlur(2))).astype(np.float32) / 255
    relative = pixels / (pixels.mean(axis=(0, 1), keepdims=True) + 1e-3)
    return np.concatenate([pixels, local_mean, np.abs(pixels - local_mean), relative], axis=-1).reshape(-1, 12)


def test_sample_is_learnable_beyond_the_majority_class():
    from sklearn.linear_model import LogisticRegression

    train = [generate_patch([0, 0, index]) for index in range(16)]
    validation = [generate_patch([0, 1, index]) for index in range(6)]
    features = np.concatenate([_pixel_features(image) for image, _ in train])
    targets = np.concatenate([label.ravel() for _, label in train])
    subset = np.random.default_rng(0).choice(len(targets), 8000, replace=False)
    classifier = LogisticRegression(max_iter=500).fit(features[subset], targets[subset])
    truth = np.concatenate([label.ravel() for _, label in validation])
    accuracy = (classifier.predict(np.concatenate([_pixel_features(image) for image, _ in validation])) == truth).mean()
    majority = np.bincount(truth).max() / truth.size
    # A linear per-pixel model on colour and local texture, not a CNN: well above chance is the claim.
    assert accuracy > 0.55 and accuracy > majority + 0.25, (accuracy, majority)


def test_generated_sample_passes_through_the_converter(tmp_path):
    from datasets import load_dataset

    report = prepare_embedded_sample(tmp_path / "dataset", seed=2, sizes=TINY, num_proc=2)
    assert report.procedural_sample
    assert {s: r.num_examples for s, r in report.splits.items()} == {
        "train": 6,
        "validation": 3,
        "test": 2,
        "synthetic": 3,
    }
    assert all(r.md5_checked_against.endswith("md5sums.txt") for r in report.splits.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # temporary zips removed
    card = (tmp_path / "dataset" / "README.md").read_text()
    assert "Procedural sample, not ARAS400k" in card
    dataset = load_dataset(str(tmp_path / "dataset"))
    row = dataset["test"][1]
    assert row["tile"] is not None and row["name"] == f"{row['tile']}_{row['patch_row']:03d}_{row['patch_col']:03d}"
    # Patch 1 of the test split is drawn from the seed (2, split code 2, index 1).
    image, label = generate_patch([2, 2, 1])
    np.testing.assert_array_equal(np.asarray(row["label"]), label)
    np.testing.assert_array_equal(np.asarray(row["image"]), image)


def test_command_line_generates_and_converts_the_sample(tmp_path):
    from datasets import load_dataset

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "prepare_aras400k.py"),
            "--generate_sample",
            "--seed",
            "4",
            "--sample_sizes",
            json.dumps({"train": 4, "val": 2}),
            "--output_dir",
            str(tmp_path / "dataset"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 pairs in" in done.stdout
    assert load_dataset(str(tmp_path / "dataset"), split="validation").num_rows == 2


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="must map some of"):
        generate_sample(tmp_path / "x", sizes={"training": 3})
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_only_an_earlier_sample(tmp_path):
    from lale_hf.data import OutputFolderError

    folder = tmp_path / "sample"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=f"not a folder written by .* no {SAMPLE_MARKER}"):
        generate_sample(folder, sizes={"val": 1}, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"
    generate_sample(folder, sizes={"val": 1}, overwrite=True, overwrite_any=True)
    generate_sample(folder, sizes={"val": 2}, overwrite=True)  # an earlier sample: --overwrite alone
    assert json.loads((folder / SAMPLE_MARKER).read_text())["sizes"] == {"val": 2}
