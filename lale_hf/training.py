"""Training building blocks for `scripts/train.py`: overhead-imagery augmentation, losses, atomic checkpoints."""

import dataclasses
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset
from tqdm.auto import tqdm

from .file_utils import write_atomic


logger = logging.getLogger(__name__)


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class OverheadAugmentation:
    """Augmentation for nadir imagery, deterministic for a (seed, epoch, index) triple.

    The eight flips/90-degree rotations (the dihedral group: overhead scenes have no "up"), a random scale and crop
    back to `crop_size` (labels resized with nearest, padding with `ignore_index`), and brightness/contrast jitter.
    """

    def __init__(
        self,
        crop_size: int = 256,
        scale_range: tuple[float, float] = (0.75, 1.5),
        brightness: float = 0.2,
        contrast: float = 0.2,
        ignore_index: int = 255,
    ):
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"`scale_range` must be (low, high) with 0 < low <= high, got {scale_range}.")
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.brightness = brightness
        self.contrast = contrast
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scale = rng.uniform(*self.scale_range) * self.crop_size / max(image.shape[:2])
        height, width = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
        image, label = self._crop_or_pad(image, label, rng)

        rotations, flip = int(rng.integers(4)), bool(rng.integers(2))
        image, label = np.rot90(image, rotations), np.rot90(label, rotations)
        if flip:
            image, label = image[:, ::-1], label[:, ::-1]

        image = image.astype(np.float32)
        contrast = 1.0 + rng.uniform(-self.contrast, self.contrast)
        brightness = 1.0 + rng.uniform(-self.brightness, self.brightness)
        mean = image.mean(axis=(0, 1), keepdims=True)
        image = np.clip(((image - mean) * contrast + mean) * brightness, 0, 255)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def _crop_or_pad(self, image, label, rng):
        size = self.crop_size
        pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        top = int(rng.integers(image.shape[0] - size + 1))
        left = int(rng.integers(image.shape[1] - size + 1))
        return image[top : top + size, left : left + size], label[top : top + size, left : left + size]


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(H, W, 3) values in [0, 255] to a normalised (3, H, W) float tensor."""
    image = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class SegmentationDataset(Dataset):
    """A `datasets` split with `image` and `label` columns as tensors.

    Training samples are augmented with a generator seeded by (seed, epoch, index), so the stream is the same
    across runs, data-loader workers, processes and resumptions; call `set_epoch` at the start of every epoch.
    """

    def __init__(self, split, image_size: int, augmentation: OverheadAugmentation | None = None, seed: int = 0,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.split = split
        self.image_size = image_size
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        return self.prepare(self.split[index], (self.seed, self.epoch, index))

    def prepare(self, example: dict, rng_key: tuple) -> dict:
        """One example as normalised tensors, augmented with a generator seeded by `rng_key` when training."""
        image = np.asarray(example["image"].convert("RGB"))
        label = np.asarray(example["label"])
        if label.ndim != 2:
            raise ValueError(
                f"Sample {example.get('name', rng_key[-1])}: `label` must be a single-band class-index image, "
                f"got shape {label.shape}."
            )
        if self.augmentation is not None:
            image, label = self.augmentation(image, label, np.random.default_rng(rng_key))
        elif image.shape[:2] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
        return {"pixel_values": normalize(image, self.mean, self.std), "labels": torch.from_numpy(label.astype(np.int64))}


class StreamingSegmentationDataset(IterableDataset):
    """A streamed (`datasets.IterableDataset`) split, shuffled with a buffer and sharded per process.

    For data that does not fit on disk or in memory: nothing is downloaded or decoded ahead of use. The order is a
    function of (seed, epoch), and each example's augmentation of (seed, epoch, position), so a resumed run that
    skips the batches it had already seen replays the stream exactly.
    """

    def __init__(self, stream, image_size: int, augmentation: OverheadAugmentation | None, seed: int = 0,
                 shuffle_buffer_size: int = 1000, process_index: int = 0, num_processes: int = 1):
        from datasets.distributed import split_dataset_by_node

        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.stream = split_dataset_by_node(stream, rank=process_index, world_size=num_processes)
        self.examples = SegmentationDataset(None, image_size, augmentation, seed=seed)
        self.process_index = process_index

    def set_epoch(self, epoch: int):
        self.examples.set_epoch(epoch)
        self.stream.set_epoch(epoch)

    def __iter__(self):
        seed, epoch = self.examples.seed, self.examples.epoch
        for position, example in enumerate(self.stream):
            yield self.examples.prepare(example, (seed, epoch, self.process_index, position))


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss over the pixels that are not ignored (the ARAS400k authors' loss)."""
    valid = labels != ignore_index
    probabilities = logits.float().softmax(dim=1) * valid[:, None]
    one_hot = torch.nn.functional.one_hot(labels.clamp(0, logits.shape[1] - 1) * valid, logits.shape[1])
    one_hot = one_hot.permute(0, 3, 1, 2).float() * valid[:, None]
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    cardinality = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * intersection + eps) / (cardinality + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_type: str = "ce",
    class_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy (optionally class-weighted), Dice, or their sum, on logits upsampled to the label size."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if loss_type not in ("ce", "dice", "ce+dice"):
        raise ValueError(f"Unknown loss {loss_type!r}; expected 'ce', 'dice' or 'ce+dice'.")
    loss = logits.new_zeros((), dtype=torch.float32)
    if "ce" in loss_type.split("+"):
        weight = class_weights.to(logits.device, torch.float32) if class_weights is not None else None
        loss = loss + torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index)
    if "dice" in loss_type.split("+"):
        loss = loss + dice_loss(logits, labels, ignore_index)
    return loss


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Finished `step_N` checkpoint folders, oldest first."""
    folders = [p for p in Path(output_dir).glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[5:]))


@dataclasses.dataclass
class TrainingState:
    """What a checkpoint needs beyond accelerate's state to resume exactly: the position in the data."""

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0
    best_macro_f1: float = -1.0
    loss_history: list = dataclasses.field(default_factory=list)
    last_eval: dict | None = None

    def save(self, folder: str | os.PathLike):
        (Path(folder) / "training_state.json").write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "TrainingState":
        path = Path(folder) / "training_state.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a checkpoint of scripts/train.py: {path.name} is missing.")
        return cls(**json.loads(path.read_text()))


def _read_id2label(dataset_name: str) -> dict[int, str] | None:
    """The class names a converted dataset carries in `id2label.json` (local folder or Hub repo)."""
    local = Path(dataset_name) / "id2label.json"
    if local.is_file():
        text = local.read_text()
    elif not Path(dataset_name).exists():
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            text = Path(hf_hub_download(dataset_name, "id2label.json", repo_type="dataset")).read_text()
        except EntryNotFoundError:
            return None
    else:
        return None
    return {int(k): v for k, v in json.loads(text).items()}


def load_segmentation_splits(
    dataset_name: str, splits: list[str], streaming: bool = False
) -> tuple[dict, dict[int, str]]:
    """Loads and checks the named splits of a dataset (streamed if asked); returns them with its id2label.

    Errors name what is missing: a split, the `image`/`label` columns, or the class names (`id2label.json`).
    """
    from datasets import load_dataset

    dataset = load_dataset(dataset_name, streaming=streaming)
    for split in splits:
        if split not in dataset:
            raise SystemExit(f"error: {dataset_name} has no split {split!r}; it has {sorted(dataset)}")
        missing = {"image", "label"} - set(dataset[split].column_names)
        if missing:
            raise SystemExit(
                f"error: split {split!r} of {dataset_name} lacks the column(s) {sorted(missing)}; "
                f"it has {dataset[split].column_names}"
            )
    id2label = _read_id2label(dataset_name)
    if not id2label:
        raise SystemExit(
            f"error: {dataset_name} carries no class names (id2label.json); convert it with "
            "scripts/prepare_aras400k.py or add an id2label.json mapping class index to name"
        )
    return {split: dataset[split] for split in splits}, id2label


def json_ready(results: dict) -> dict:
    """Results with NaN (a score undefined for a class absent from the data) as null, for strict JSON."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in results.items()}


def first_samples(split, max_samples: int | None):
    """The first `max_samples` rows of a split (all of them when None)."""
    return split if max_samples is None else split.select(range(min(max_samples, len(split))))


def save_confusion_matrix_plot(confusion_matrix, id2label: dict[int, str], path: str | os.PathLike):
    """Row-normalised confusion matrix (rows: reference, columns: prediction) as a PNG, written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'lale-hf[train]'): no confusion-matrix plot.")
        return
    counts = np.asarray(confusion_matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    names = [id2label[i] for i in range(len(id2label))]
    # metrics.py keeps one extra column for predictions outside the label set.
    columns = names + ["outside"] * (counts.shape[1] - len(names))
    figure, axes = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.75 + 0.7 * len(names)), dpi=120)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), share in np.ndenumerate(shares):
        if rows[row, 0] > 0:
            axes.text(column, row, f"{share:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if share > 0.5 else "black")
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), [f"{n} ({int(r)} px)" for n, r in zip(names, rows[:, 0])])
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    axes.set_title("Confusion matrix (rows sum to 1)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


@torch.no_grad()
def evaluate(model, dataloader, accelerator, id2label: dict[int, str], ignore_index: int = 255) -> dict:
    """Macro F1, mIoU, accuracies and per-class scores over the whole split, each sample counted exactly once.

    Each sample's confusion matrix is gathered with `gather_for_metrics`, which drops the samples that the last,
    uneven batch repeats across processes; the sum is the matrix of one process seeing the whole split.
    """
    from .metrics import confusion_matrix_per_sample, metrics_from_confusion_matrix

    model.eval()
    num_labels = len(id2label)
    total = torch.zeros(num_labels, num_labels, dtype=torch.int64, device=accelerator.device)
    num_samples = 0
    for batch in tqdm(dataloader, desc="evaluation", leave=False, disable=not accelerator.is_local_main_process):
        logits = model(pixel_values=batch["pixel_values"]).logits
        if logits.shape[-2:] != batch["labels"].shape[-2:]:
            logits = torch.nn.functional.interpolate(
                logits, size=batch["labels"].shape[-2:], mode="bilinear", align_corners=False
            )
        per_sample = confusion_matrix_per_sample(logits.argmax(dim=1), batch["labels"], num_labels, ignore_index)
        per_sample = accelerator.gather_for_metrics(per_sample)
        total += per_sample.sum(dim=0)
        num_samples += per_sample.shape[0]
    results = {f"eval_{k}": v for k, v in metrics_from_confusion_matrix(total.cpu(), id2label).items()}
    return {**results, "num_samples": num_samples, "confusion_matrix": total.cpu().tolist()}
