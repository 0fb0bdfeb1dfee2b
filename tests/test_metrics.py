"""Streamed confusion-matrix metrics: evaluate's mean_iou reference values, scikit-learn on random inputs, and the
same matrix whether computed in one pass, in batches, or in two real processes."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from lale_hf.metrics import (
    SegmentationMetrics,
    confusion_matrix_per_sample,
    land_cover_metrics_path,
    metrics_from_confusion_matrix,
    scores_from_confusion_matrix,
)


REPO_ROOT = Path(__file__).resolve().parents[1]

# The example of evaluate's mean_iou docstring (metrics/mean_iou/mean_iou.py in huggingface/evaluate), with the
# output printed there: mean_iou 0.4775, mean_accuracy 0.59167, overall_accuracy 0.52632.
EVALUATE_PREDICTIONS = [
    np.array([[1, 2], [3, 4], [5, 255]]),
    np.array([[2, 7], [9, 2], [3, 6]]),
    np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
]
EVALUATE_REFERENCES = [
    np.array([[0, 3], [5, 4], [6, 255]]),
    np.array([[1, 7], [9, 2], [3, 6]]),
    np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
]
EVALUATE_PER_CATEGORY_IOU = [0.0, 0.0, 0.375, 0.4, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0]
EVALUATE_PER_CATEGORY_ACCURACY = [0.0, 0.0, 0.75, 2 / 3, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0]


def test_reproduces_evaluate_mean_iou_reference_values():
    metrics = SegmentationMetrics(num_labels=10, ignore_index=255)
    for prediction, reference in zip(EVALUATE_PREDICTIONS, EVALUATE_REFERENCES):
        metrics.update(prediction, reference)
    results = metrics.compute()
    assert results["mean_iou"] == pytest.approx(0.4775, abs=1e-12)
    assert results["mean_accuracy"] == pytest.approx(0.5916666666666666, abs=1e-12)
    assert results["overall_accuracy"] == pytest.approx(0.5263157894736842, abs=1e-12)
    scores = scores_from_confusion_matrix(metrics.confusion_matrix)
    np.testing.assert_allclose(scores["per_category_iou"], EVALUATE_PER_CATEGORY_IOU, atol=1e-12)
    np.testing.assert_allclose(scores["per_category_accuracy"], EVALUATE_PER_CATEGORY_ACCURACY, atol=1e-12)
    assert results["iou_2"] == pytest.approx(0.375)


def test_single_pair_and_the_same_pair_repeated_as_a_batch():
    # The third pair alone; evaluate's mean_iou algorithm gives 0.38 / 0.6667 / 0.5 for it (the docstring's
    # 0.4775 / 0.59167 / 0.52632 need all three pairs). Repeating it doubles the counts and changes no score.
    prediction, reference = EVALUATE_PREDICTIONS[2], EVALUATE_REFERENCES[2]
    single = SegmentationMetrics(10).update(prediction, reference)
    batch = SegmentationMetrics(10).update(np.stack([prediction, prediction]), np.stack([reference, reference]))
    assert torch.equal(batch.confusion_matrix, 2 * single.confusion_matrix)
    for results in (single.compute(), batch.compute()):
        assert results["mean_iou"] == pytest.approx(0.38)
        assert results["mean_accuracy"] == pytest.approx(2 / 3)
        assert results["overall_accuracy"] == pytest.approx(0.5)


def test_evaluate_module_loads_offline_from_the_package():
    import evaluate

    path = Path(land_cover_metrics_path())
    assert path.is_file() and path.parent.parent.parent == REPO_ROOT / "lale_hf"
    metric = evaluate.load(str(path))
    results = metric.compute(
        predictions=EVALUATE_PREDICTIONS, references=EVALUATE_REFERENCES, num_labels=10, ignore_index=255
    )
    assert results["mean_iou"] == pytest.approx(0.4775, abs=1e-12)
    assert results["mean_accuracy"] == pytest.approx(0.5916666666666666, abs=1e-12)
    assert results["overall_accuracy"] == pytest.approx(0.5263157894736842, abs=1e-12)
    assert set(results) >= {"macro_f1", "macro_precision", "macro_recall", "per_category_f1"}


def _random_maps(seed: int, shape=(6, 40, 40), num_labels=7, absent_class=None):
    rng = np.random.default_rng(seed)
    references = rng.integers(0, num_labels, shape)
    # Predictions agree with the reference 60% of the time, so scores are far from both 0 and 1.
    predictions = np.where(rng.random(shape) < 0.6, references, rng.integers(0, num_labels, shape))
    references[rng.random(shape) < 0.1] = 255
    predictions[rng.random(shape) < 0.02] = 200  # outside [0, K): a miss, no class's prediction
    if absent_class is not None:
        references[references == absent_class] = 255
        predictions[predictions == absent_class] = (absent_class + 1) % num_labels
    return predictions, references


@pytest.mark.parametrize("absent_class", [None, 4])
def test_matches_scikit_learn_on_random_inputs_with_an_ignore_index(absent_class):
    predictions, references = _random_maps(seed=7, absent_class=absent_class)
    metrics = SegmentationMetrics(7, ignore_index=255).update(predictions, references)
    results = scores_from_confusion_matrix(metrics.confusion_matrix)

    keep = references != 255
    y_true, y_pred = references[keep], predictions[keep]
    labels = [c for c in range(7) if c != absent_class]
    # zero_division=np.nan leaves undefined classes out of the macro means, as SegmentationMetrics does.
    options = {"labels": labels, "zero_division": np.nan}
    assert results["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", **options))
    assert results["macro_precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro", **options))
    assert results["macro_recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro", **options))
    # (jaccard_score has no zero_division=np.nan; the listed labels all occur, so no score is undefined.)
    assert results["mean_iou"] == pytest.approx(jaccard_score(y_true, y_pred, average="macro", labels=labels))
    assert results["overall_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    np.testing.assert_allclose(
        results["per_category_f1"][labels], f1_score(y_true, y_pred, average=None, **options), rtol=1e-12
    )
    if absent_class is not None:
        assert np.isnan(results["per_category_f1"][absent_class])
        assert np.isnan(results["per_category_iou"][absent_class])


def test_batches_give_the_matrix_of_one_pass():
    predictions, references = _random_maps(seed=3)
    one_pass = SegmentationMetrics(7).update(predictions, references)
    batched = SegmentationMetrics(7)
    for start, stop in [(0, 1), (1, 4), (4, 6)]:
        batched.update(torch.from_numpy(predictions[start:stop]), torch.from_numpy(references[start:stop]))
    assert torch.equal(batched.confusion_matrix, one_pass.confusion_matrix)
    assert int(one_pass.confusion_matrix.sum()) == int((references != 255).sum())
    halves = [SegmentationMetrics(7).update(predictions[s], references[s]) for s in (slice(0, 2), slice(2, 6))]
    merged = halves[0].merge(halves[1])
    assert torch.equal(merged.confusion_matrix, one_pass.confusion_matrix)
    restored = SegmentationMetrics.from_state_dict(one_pass.state_dict())
    assert restored.compute()["macro_f1"] == one_pass.compute()["macro_f1"]


_DISTRIBUTED_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch.distributed as dist
    from lale_hf.metrics import SegmentationMetrics

    rank, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    predictions, references = np.load(f"{folder}/predictions.npy"), np.load(f"{folder}/references.npy")
    part = slice(0, 2) if rank == 0 else slice(2, None)
    metrics = SegmentationMetrics(7).update(predictions[part], references[part])
    reduced = metrics.reduce()
    np.save(f"{folder}/local_{rank}.npy", metrics.confusion_matrix.numpy())
    np.save(f"{folder}/reduced_{rank}.npy", reduced.confusion_matrix.numpy())
    dist.destroy_process_group()
    """
)


def test_two_real_processes_reduce_to_the_matrix_of_one_pass(tmp_path):
    predictions, references = _random_maps(seed=11)
    np.save(tmp_path / "predictions.npy", predictions)
    np.save(tmp_path / "references.npy", references)
    (tmp_path / "worker.py").write_text(_DISTRIBUTED_WORKER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    workers = [
        subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(rank), str(port), str(tmp_path)], env=env)
        for rank in (0, 1)
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]

    expected = SegmentationMetrics(7).update(predictions, references).confusion_matrix.numpy()
    local = [np.load(tmp_path / f"local_{rank}.npy") for rank in (0, 1)]
    assert not np.array_equal(local[0], expected)  # each process saw only part of the data
    np.testing.assert_array_equal(local[0] + local[1], expected)
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"reduced_{rank}.npy"), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_on_the_predictions_device():
    predictions, references = _random_maps(seed=5)
    on_gpu = SegmentationMetrics(7).update(torch.from_numpy(predictions).cuda(), torch.from_numpy(references).cuda())
    assert on_gpu.confusion_matrix.device.type == "cuda"
    on_cpu = SegmentationMetrics(7).update(predictions, references)
    assert torch.equal(on_gpu.confusion_matrix.cpu(), on_cpu.confusion_matrix)


def test_bad_inputs_are_clear_errors():
    metrics = SegmentationMetrics(7)
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but references \(3, 2\)"):
        metrics.update(np.zeros((2, 3), dtype=np.int64), np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="not floats or logits"):
        metrics.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values \[9\] outside \[0, 7\)"):
        metrics.update(np.zeros((2, 2), dtype=np.int64), np.array([[0, 9], [255, 1]]))
    assert int(metrics.confusion_matrix.sum()) == 0


def test_flat_metrics_name_classes_and_mark_undefined_scores_nan():
    metrics = SegmentationMetrics(3, id2label={0: "Tree", 1: "Shrub", 2: "Grass"})
    metrics.update(np.array([[0, 0, 1]]), np.array([[0, 1, 1]]))
    results = metrics.compute()
    assert results["f1_Tree"] == pytest.approx(2 / 3)
    assert results["iou_Shrub"] == pytest.approx(0.5)
    assert np.isnan(results["f1_Grass"])  # absent from references and predictions: undefined, out of the means
    assert results["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert results["overall_accuracy"] == pytest.approx(2 / 3)
    assert all(isinstance(value, float) for value in results.values())


def test_per_sample_matrices_sum_to_the_streamed_matrix():
    predictions, references = _random_maps(seed=2)
    predictions = np.where(predictions == 200, 0, predictions)
    per_sample = confusion_matrix_per_sample(torch.from_numpy(predictions), torch.from_numpy(references), 7)
    assert per_sample.shape == (6, 7, 7)
    streamed = SegmentationMetrics(7).update(predictions, references)
    assert torch.equal(per_sample.sum(dim=0), streamed.confusion_matrix[:, :7])
    assert torch.equal(
        per_sample[1], SegmentationMetrics(7).update(predictions[1], references[1]).confusion_matrix[:, :7]
    )
    assert metrics_from_confusion_matrix(per_sample.sum(dim=0)) == streamed.compute()
    with pytest.raises(ValueError, match=r"class indices in \[0, 7\)"):
        confusion_matrix_per_sample(torch.full((1, 2, 2), 9), torch.zeros(1, 2, 2, dtype=torch.long), 7)
