"""Datasets for training: `datasets` splits (map-style or streamed) as normalised tensors, and their loading."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from ..preprocessing import Preprocessing
from .augmentation import OverheadAugmentation
from .errors import TrainingDataError


class SegmentationDataset(Dataset):
    """A `datasets` split with `image` and `label` columns as tensors, preprocessed as the model's image processor
    preprocesses (`Preprocessing`, read from it; LALE's ImageNet statistics by default).

    Training samples are augmented with a generator seeded by (seed, epoch, index), so the stream is the same
    across runs, data-loader workers, processes and resumptions; call `set_epoch` at the start of every epoch.
    """

    def __init__(
        self,
        split,
        image_size: int,
        augmentation: OverheadAugmentation | None = None,
        seed: int = 0,
        preprocessing: Preprocessing | None = None,
        num_labels: int | None = None,
        split_name: str = "train",
        ignore_index: int = 255,
    ):
        self.split = split
        self.image_size = image_size
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self.preprocessing = preprocessing or Preprocessing()
        self.num_labels = num_labels
        self.split_name = split_name
        self.ignore_index = ignore_index

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
        name = example.get("name", rng_key[-1])
        if label.ndim != 2:
            raise TrainingDataError(
                f"split {self.split_name!r}, example {name}: `label` must be a single-band class-index image, "
                f"got shape {label.shape}."
            )
        if self.num_labels is not None:
            outside = np.setdiff1d(np.unique(label), [*range(self.num_labels), self.ignore_index])
            if outside.size:
                raise TrainingDataError(
                    f"split {self.split_name!r}, example {name}: label value {int(outside[0])} is outside the "
                    f"{self.num_labels} classes [0, {self.num_labels - 1}] (and is not the ignore index "
                    f"{self.ignore_index})"
                )
        if self.augmentation is not None:
            image, label = self.augmentation(image, label, np.random.default_rng(rng_key))
        elif image.shape[:2] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
        pixel_values = self.preprocessing.to_tensor(np.ascontiguousarray(image))
        return {"pixel_values": pixel_values, "labels": torch.from_numpy(label.astype(np.int64))}


class StreamingSegmentationDataset(IterableDataset):
    """A streamed (`datasets.IterableDataset`) split, shuffled with a buffer and sharded per process.

    For data that does not fit on disk or in memory: nothing is downloaded or decoded ahead of use. The order is a
    function of (seed, epoch), and each example's augmentation of (seed, epoch, position), so a resumed run that
    skips the batches it had already seen replays the stream exactly.
    """

    def __init__(
        self,
        stream,
        image_size: int,
        augmentation: OverheadAugmentation | None,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        process_index: int = 0,
        num_processes: int = 1,
        preprocessing: Preprocessing | None = None,
        num_labels: int | None = None,
    ):
        from datasets.distributed import split_dataset_by_node

        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.stream = split_dataset_by_node(stream, rank=process_index, world_size=num_processes)
        self.examples = SegmentationDataset(
            None, image_size, augmentation, seed=seed, preprocessing=preprocessing, num_labels=num_labels
        )
        self.process_index = process_index

    def set_epoch(self, epoch: int):
        self.examples.set_epoch(epoch)
        self.stream.set_epoch(epoch)

    def __iter__(self):
        seed, epoch = self.examples.seed, self.examples.epoch
        for position, example in enumerate(self.stream):
            yield self.examples.prepare(example, (seed, epoch, self.process_index, position))


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
            raise TrainingDataError(f"{dataset_name} has no split {split!r}; it has {sorted(dataset)}")
        missing = {"image", "label"} - set(dataset[split].column_names)
        if missing:
            raise TrainingDataError(
                f"split {split!r} of {dataset_name} lacks the column(s) {sorted(missing)}; "
                f"it has {dataset[split].column_names}"
            )
    id2label = _read_id2label(dataset_name)
    if not id2label:
        raise TrainingDataError(
            f"{dataset_name} carries no class names (id2label.json); convert it with lale_hf's ARAS400k converter "
            "or add an id2label.json mapping class index to name"
        )
    return {split: dataset[split] for split in splits}, id2label


def first_samples(split, max_samples: int | None):
    """The first `max_samples` rows of a split (all of them when None)."""
    return split if max_samples is None else split.select(range(min(max_samples, len(split))))
