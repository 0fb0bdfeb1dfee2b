"""Streaming is sharded: the datasets built for rank 0 and rank 1 yield disjoint samples whose union is the split."""

import hashlib

import pytest

from lale_hf.data import convert_aras400k
from lale_hf.training import SegmentationDataset, StreamingSegmentationDataset


NUM_PROCESSES = 2


# One Parquet file (datasets then deals examples out in turn), three (not divisible by the two ranks: also dealt
# out) and four (whole files per rank). The converter writes at least `num_proc` shards.
@pytest.fixture(scope="module", params=[1, 3, 4], ids=lambda n: f"{n}-parquet-files")
def streamed_validation(request, s2glc_sample, tmp_path_factory):
    from datasets import load_dataset

    output = tmp_path_factory.mktemp("streaming") / "dataset"
    convert_aras400k(s2glc_sample, output, splits=["validation"], num_proc=request.param, verify_md5=False)
    assert len(list((output / "data").glob("validation-*.parquet"))) == request.param
    return output, load_dataset(str(output), streaming=True)["validation"]


def content_key(example: dict) -> str:
    return hashlib.sha256(example["pixel_values"].numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def names_by_content(streamed_validation) -> dict[str, str]:
    """Each sample's preprocessed tensor identifies it: the loaded (not streamed) split maps tensors to names."""
    from datasets import load_dataset

    output, _ = streamed_validation
    split = load_dataset(str(output))["validation"]
    examples = SegmentationDataset(split, 256, augmentation=None)
    mapping = {content_key(examples[index]): split[index]["name"] for index in range(len(split))}
    assert len(mapping) == len(split) > 20  # no two samples share a tensor
    return mapping


def yielded_names(dataset: StreamingSegmentationDataset, names_by_content: dict[str, str]) -> list[str]:
    return [names_by_content[content_key(example)] for example in dataset]


def test_ranks_yield_disjoint_samples_whose_union_is_the_split(streamed_validation, names_by_content, monkeypatch):
    import datasets

    # datasets sleeps 5 s after every pass over Parquet shards, to let Arrow's reader threads stop (apache/arrow#45214);
    # a second is plenty for these few small files and keeps the four passes per layout short.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 1)
    _, stream = streamed_validation
    ranks = [
        StreamingSegmentationDataset(
            stream,
            256,
            augmentation=None,
            seed=3,
            shuffle_buffer_size=16,
            process_index=rank,
            num_processes=NUM_PROCESSES,
        )
        for rank in range(NUM_PROCESSES)
    ]
    all_names = set(names_by_content.values())
    orders = {}
    for epoch in (0, 1):
        names = []
        for rank, dataset in enumerate(ranks):
            dataset.set_epoch(epoch)
            names.append(yielded_names(dataset, names_by_content))
            orders[epoch, rank] = names[rank]
        for rank_names in names:
            assert len(rank_names) == len(set(rank_names)), "a rank yields a sample twice"
            assert len(rank_names) >= len(all_names) // 4, "a rank holds almost nothing"
        assert set(names[0]).isdisjoint(names[1]), sorted(set(names[0]) & set(names[1]))
        assert set(names[0]) | set(names[1]) == all_names
    # Each epoch is another shuffle, still within the rank's shard.
    for rank in range(NUM_PROCESSES):
        assert orders[0, rank] != orders[1, rank]
