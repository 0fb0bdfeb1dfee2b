"""The training building blocks on their own: augmentation, per-sample seeding, losses, checkpoint state and listing."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lale_hf import ARAS400K_PALETTE, color_mask_to_label_map
from lale_hf.training import (
    OverheadAugmentation,
    SegmentationDataset,
    TrainingState,
    dice_loss,
    focal_loss,
    list_checkpoints,
    segmentation_loss,
)


IGNORE = 255
NUM_CLASSES = len(ARAS400K_PALETTE)
# Ignored pixels are painted black, a colour outside the palette, so they map back to IGNORE.
UNLABELLED_COLOUR = (0, 0, 0)


def blob_label_map(rng: np.random.Generator, height: int, width: int, ignored_fraction: float = 0.05) -> np.ndarray:
    """A land-cover-like class map: Voronoi blobs of all seven classes, plus a few unlabelled blobs."""
    num_blobs = 40
    centres = rng.uniform((0, 0), (height, width), size=(num_blobs, 2))
    classes = np.concatenate([np.arange(NUM_CLASSES), rng.integers(NUM_CLASSES, size=num_blobs - NUM_CLASSES)])
    classes[rng.uniform(size=num_blobs) < ignored_fraction * 4] = IGNORE
    rows, cols = np.mgrid[:height, :width]
    distances = (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
    return classes[distances.argmin(axis=-1)].astype(np.uint8)


def paint(label_map: np.ndarray) -> np.ndarray:
    """The palette image of a class map (ignored pixels black)."""
    colours = np.array([*ARAS400K_PALETTE, *[UNLABELLED_COLOUR] * (256 - NUM_CLASSES)], dtype=np.uint8)
    return colours[label_map]


def colours_back_to_labels(image: np.ndarray) -> np.ndarray:
    return color_mask_to_label_map(image, unknown_to_ignore=True, ignore_index=IGNORE)


def no_jitter(**kwargs) -> OverheadAugmentation:
    return OverheadAugmentation(brightness=0.0, contrast=0.0, **kwargs)


# Shapes and scale ranges for which the resize is the identity (scale = u * crop / max(shape) = 1), so every pixel
# must survive exactly: random crop of a larger image, padding of a smaller one, and the 8 flips/rotations.
EXACT_CASES = {
    "square, no crop": ((256, 256), 256, (1.0, 1.0)),
    "crop from larger": ((320, 320), 256, (1.25, 1.25)),
    "crop from non-square": ((288, 320), 256, (1.25, 1.25)),
    "pad smaller": ((128, 128), 256, (0.5, 0.5)),
    "pad and crop": ((160, 320), 256, (1.25, 1.25)),
}


@pytest.mark.parametrize("case", EXACT_CASES)
def test_augmentation_keeps_every_pixel_aligned_without_resizing(case):
    shape, crop_size, scale_range = EXACT_CASES[case]
    augmentation = no_jitter(crop_size=crop_size, scale_range=scale_range)
    seen_orientations = set()
    for seed in range(24):
        label = blob_label_map(np.random.default_rng(1000 + seed), *shape)
        image = paint(label)
        out_image, out_label = augmentation(image, label, np.random.default_rng(seed))
        assert out_image.shape == (crop_size, crop_size, 3) and out_image.dtype == np.uint8
        assert out_label.shape == (crop_size, crop_size) and out_label.dtype == np.uint8
        # Every pixel: the colour maps back to the label, labelled or not (padding is black and ignored).
        np.testing.assert_array_equal(colours_back_to_labels(out_image), out_label, err_msg=f"seed {seed}")
        assert (out_label != IGNORE).any()
        seen_orientations.add(orientation_of(out_label, label))
    if shape[0] == shape[1] == crop_size:  # without crop the orientation is recoverable: all 8 must occur
        assert len(seen_orientations) == 8, seen_orientations


def orientation_of(out_label: np.ndarray, label: np.ndarray):
    for rotations in range(4):
        for flip in (False, True):
            candidate = np.rot90(label, rotations)
            candidate = candidate[:, ::-1] if flip else candidate
            if candidate.shape == out_label.shape and np.array_equal(candidate, out_label):
                return rotations, flip
    return None


def interior(label: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood holds one label: away from class borders."""
    height, width = label.shape
    padded = np.pad(label.astype(np.int16), radius, constant_values=-1)
    same = np.ones(label.shape, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + height, dx : dx + width] == label
    return same


def test_augmentation_keeps_image_and_mask_aligned_when_scaling():
    # Bilinear resizing blends colours at class borders (and nearest resizing can skip a thin sliver the bilinear
    # image still shows), so exactness is checked away from borders in the input: the same draw (same generator
    # seed, same shapes) applied to the label map with its border pixels ignored says which output pixels those are.
    augmentation = no_jitter(crop_size=256, scale_range=(0.75, 1.5))
    checked = 0
    for seed in range(40):
        label = blob_label_map(np.random.default_rng(2000 + seed), 256, 256)
        image = paint(label)
        out_image, out_label = augmentation(image, label, np.random.default_rng(seed))
        inside_label = np.where(interior(label, radius=2), label, IGNORE).astype(np.uint8)
        same_image, out_inside = augmentation(image, inside_label, np.random.default_rng(seed))
        assert np.array_equal(same_image, out_image)
        inside = out_inside != IGNORE
        assert np.array_equal(out_inside[inside], out_label[inside])
        np.testing.assert_array_equal(colours_back_to_labels(out_image)[inside], out_label[inside], f"seed {seed}")
        checked += inside.sum()
        # Most labelled pixels lie inside a class region: a misaligned image would disagree at nearly all of them.
        labelled = out_label != IGNORE
        agreement = (colours_back_to_labels(out_image)[labelled] == out_label[labelled]).mean()
        assert agreement > 0.85, (seed, agreement)
    assert checked > 40 * 256 * 256 * 0.4


def test_augmented_labels_keep_original_values_or_ignore():
    augmentation = OverheadAugmentation(crop_size=256, scale_range=(0.5, 2.0))  # jitter on: it must not touch labels
    for seed in range(40):
        rng = np.random.default_rng(3000 + seed)
        label = blob_label_map(rng, 256, 256, ignored_fraction=0.0)
        present = rng.choice(NUM_CLASSES, size=3, replace=False)
        label = present[label % 3].astype(np.uint8)  # three classes only, and no ignored pixel in the input
        _, out_label = augmentation(paint(label), label, np.random.default_rng(seed))
        assert set(np.unique(out_label)) <= {*present.tolist(), IGNORE}, (seed, np.unique(out_label), present)


def small_split(num_examples: int = 4) -> list[dict]:
    examples = []
    for index in range(num_examples):
        label = blob_label_map(np.random.default_rng(4000 + index), 96, 96)
        examples.append({"image": Image.fromarray(paint(label)), "label": Image.fromarray(label)})
    return examples


def test_augmentation_is_deterministic_per_seed_epoch_and_index():
    split = small_split()
    first = SegmentationDataset(split, 64, OverheadAugmentation(crop_size=64), seed=5)
    second = SegmentationDataset(split, 64, OverheadAugmentation(crop_size=64), seed=5)  # another worker or process
    for epoch in (0, 3):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        for index in range(len(split)):
            a, b, again = first[index], second[index], first[index]
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
            assert torch.equal(a["pixel_values"], again["pixel_values"]) and torch.equal(a["labels"], again["labels"])

    def draws(dataset, epoch):
        dataset.set_epoch(epoch)
        return [dataset[index] for index in range(len(split))]

    # A new epoch, another seed or another index gives another draw, for every sample.
    epoch_0, epoch_1 = draws(first, 0), draws(first, 1)
    other_seed = draws(SegmentationDataset(split, 64, OverheadAugmentation(crop_size=64), seed=6), 0)
    for index in range(len(split)):
        assert not torch.equal(epoch_0[index]["pixel_values"], epoch_1[index]["pixel_values"]), index
        assert not torch.equal(epoch_0[index]["pixel_values"], other_seed[index]["pixel_values"]), index
    same_example = SegmentationDataset([split[0]] * 2, 64, OverheadAugmentation(crop_size=64), seed=5)
    assert not torch.equal(same_example[0]["pixel_values"], same_example[1]["pixel_values"])


# Losses ---------------------------------------------------------------------------------------------------------


def random_batch(seed: int = 0, num_classes: int = NUM_CLASSES, size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, size, size, generator=generator) * 3
    labels = torch.randint(num_classes, (2, size, size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = IGNORE
    labels[:, :, -3:] = IGNORE  # three whole ignored columns, to compare with a batch without them
    return logits, labels


@pytest.mark.parametrize("loss_type", ["dice", "ce+dice", "ce", "focal+dice"])
def test_ignored_pixels_have_no_effect_on_the_loss(loss_type):
    logits, labels = random_batch()
    loss = segmentation_loss(logits, labels, loss_type)
    changed = logits.clone()
    ignored = (labels == IGNORE)[:, None].expand_as(logits)
    changed[ignored] = torch.randn(int(ignored.sum()), generator=torch.Generator().manual_seed(1)) * 50
    assert torch.allclose(segmentation_loss(changed, labels, loss_type), loss, rtol=0, atol=1e-6)
    # Leaving the ignored columns out entirely gives the same loss.
    cropped = segmentation_loss(logits[..., :-3].contiguous(), labels[..., :-3].contiguous(), loss_type)
    assert torch.allclose(cropped, loss, rtol=0, atol=1e-6)
    # And the loss does depend on the labelled pixels.
    changed[~ignored] += torch.randn(int((~ignored).sum()), generator=torch.Generator().manual_seed(2)) * 5
    assert not torch.allclose(segmentation_loss(changed, labels, loss_type), loss, atol=1e-3)


@pytest.mark.parametrize("loss_type", ["dice", "ce+dice"])
def test_a_perfect_prediction_gives_about_zero(loss_type):
    _, labels = random_batch(seed=3)
    logits = F.one_hot(labels.clamp_max(NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float() * 40.0
    logits[(labels == IGNORE)[:, None].expand_as(logits)] = -40.0  # whatever is predicted at ignored pixels
    assert segmentation_loss(logits, labels, loss_type).item() == pytest.approx(0.0, abs=1e-5)
    wrong = logits.roll(1, dims=1)
    assert segmentation_loss(wrong, labels, loss_type).item() > 0.9


def test_dice_and_ce_plus_dice_match_a_hand_computed_2x2_case():
    # Two classes, softmax probabilities chosen by hand; the bottom-right pixel is ignored.
    probabilities = [[(0.8, 0.2), (0.4, 0.6)], [(0.1, 0.9), (0.5, 0.5)]]
    labels_2x2 = [[0, 1], [1, IGNORE]]
    logits = torch.tensor([[[math.log(p[c]) for p in row] for row in probabilities] for c in range(2)])[None]
    labels = torch.tensor(labels_2x2)[None]

    # Dice with the default smoothing of 1: per class (2 * intersection + 1) / (sum of p + count of labels + 1).
    smoothing = 1.0
    # class 0: intersection 0.8 (pixel (0,0)); sum of p over labelled pixels 0.8 + 0.4 + 0.1 = 1.3; one label.
    dice_class_0 = (2 * 0.8 + smoothing) / (1.3 + 1 + smoothing)
    # class 1: intersection 0.6 + 0.9 = 1.5; sum of p 0.2 + 0.6 + 0.9 = 1.7; two labels.
    dice_class_1 = (2 * 1.5 + smoothing) / (1.7 + 2 + smoothing)
    expected_dice = 1 - (dice_class_0 + dice_class_1) / 2
    cross_entropy = -(math.log(0.8) + math.log(0.6) + math.log(0.9)) / 3

    assert dice_loss(logits, labels).item() == pytest.approx(expected_dice, abs=1e-6)
    assert segmentation_loss(logits, labels, "dice").item() == pytest.approx(expected_dice, abs=1e-6)
    assert segmentation_loss(logits, labels, "ce").item() == pytest.approx(cross_entropy, abs=1e-6)
    assert segmentation_loss(logits, labels, "ce+dice").item() == pytest.approx(cross_entropy + expected_dice, abs=1e-6)


def weighted_cross_entropy_by_hand(logits, labels, weights):
    """sum over labelled pixels of w[y] * -log p_y, divided by the sum of w[y]: what F.cross_entropy documents."""
    log_p = logits.double().log_softmax(dim=1)
    total, weight_sum = 0.0, 0.0
    for n, y, x in (labels != IGNORE).nonzero().tolist():
        target = int(labels[n, y, x])
        total += float(weights[target]) * -float(log_p[n, target, y, x])
        weight_sum += float(weights[target])
    return total / weight_sum


def test_class_weights_act_exactly_as_cross_entropy_weights():
    logits, labels = random_batch(seed=4, size=8)
    weights = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25, 1.5, 3.0])
    by_hand = weighted_cross_entropy_by_hand(logits, labels, weights)
    reference = F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE)
    assert reference.item() == pytest.approx(by_hand, rel=1e-5)
    assert torch.allclose(segmentation_loss(logits, labels, "ce", class_weights=weights), reference, rtol=1e-6)
    combined = segmentation_loss(logits, labels, "ce+dice", class_weights=weights)
    assert torch.allclose(combined, reference + dice_loss(logits, labels), rtol=1e-6)
    # The weights matter: unweighted is another number.
    assert abs(segmentation_loss(logits, labels, "ce").item() - by_hand) > 1e-2


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_loss_with_gamma_zero_is_cross_entropy(weighted):
    logits, labels = random_batch(seed=5, size=8)
    weights = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25, 1.5, 3.0]) if weighted else None
    reference = F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE)
    by_hand = weighted_cross_entropy_by_hand(logits, labels, weights if weighted else torch.ones(NUM_CLASSES))
    focal = focal_loss(logits, labels, gamma=0.0, weight=weights, ignore_index=IGNORE)
    assert focal.item() == pytest.approx(reference.item(), rel=1e-5)
    assert focal.item() == pytest.approx(by_hand, rel=1e-5)
    # gamma > 0 down-weights confident pixels: strictly below cross-entropy.
    assert focal_loss(logits, labels, gamma=2.0, weight=weights).item() < reference.item()


# Checkpoints ----------------------------------------------------------------------------------------------------


def test_training_state_round_trips_every_field(tmp_path):
    state = TrainingState(
        completed_steps=1234,
        epoch=7,
        batches_in_epoch=13,
        samples_seen=98765,
        train_seconds=321.5,
        best_macro_f1=0.4375,
        loss_history=[[1, 2.5], [2, 1.25]],
        last_eval={"macro_f1": 0.4375, "step": 1200},
        eval_history=[{"step": 600, "macro_f1": 0.25}, {"step": 1200, "macro_f1": 0.4375}],
        learning_rate_last=3.0e-4,
        budget_timing_start=12.75,
    )
    defaults = TrainingState()
    assert all(getattr(state, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(TrainingState))
    state.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_state.json"]  # no temporary left
    assert TrainingState.load(tmp_path) == state
    with pytest.raises(FileNotFoundError, match="training_state.json is missing"):
        TrainingState.load(tmp_path / "elsewhere")


def test_list_checkpoints_keeps_finished_numeric_steps_in_numeric_order(tmp_path):
    for name in [
        "step_10",
        "step_9",
        "step_100",
        "step_1",
        ".partial_step_11",
        "step_abc",
        "step_",
        "step_2x",
        "best",
        "step_-3",
        "step_12.tmp",
    ]:
        (tmp_path / name).mkdir()
    (tmp_path / "step_50").write_text("a file, not a checkpoint folder")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_1", "step_9", "step_10", "step_100"]
    assert list_checkpoints(tmp_path / "missing") == []
