"""Land-cover segmentation metrics as an `evaluate` module, computed by `lale_hf.metrics.SegmentationMetrics`.

Load it offline from the installed package:

    import evaluate
    from lale_hf.metrics import land_cover_metrics_path
    metric = evaluate.load(land_cover_metrics_path())
"""

import datasets
import evaluate
import numpy as np
from lale_hf.metrics import SegmentationMetrics
from lale_hf.metrics import scores_from_confusion_matrix


_DESCRIPTION = """
Pixel-level land-cover segmentation metrics from one confusion matrix: per-class and macro F1, precision, recall and
IoU, mean accuracy (macro recall) and overall accuracy. Pixels whose reference is `ignore_index` are skipped;
predictions outside [0, num_labels) count as misses of the reference class. Classes whose score is undefined (0/0)
are NaN and left out of the macro means. `mean_iou`, `mean_accuracy` and `overall_accuracy` equal those of
evaluate's `mean_iou` metric.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted class-index maps, each of shape (height, width).
    references (`List[ndarray]`): reference class-index maps of the same shapes.
    num_labels (`int`, defaults to 7): number of classes (ARAS400k has 7).
    ignore_index (`int`, defaults to 255): reference value to skip.

Returns:
    `Dict[str, float | ndarray]`: mean_iou, mean_accuracy, overall_accuracy, macro_f1, macro_precision,
    macro_recall (floats) and per_category_iou, per_category_accuracy, per_category_f1, per_category_precision,
    per_category_recall (arrays of shape (num_labels,)).

Examples:
    >>> metric = evaluate.load(land_cover_metrics_path())
    >>> results = metric.compute(predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [0, 255]])],
    ...                          num_labels=2, ignore_index=255)
    >>> round(results["macro_f1"], 4)
    0.6667
"""

_CITATION = """\
@misc{lale_hf_land_cover_metrics,
  title  = {Land-cover segmentation metrics from a streamed confusion matrix},
  author = {{lale-hf developers}},
  year   = {2026}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LandCoverMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(self, predictions, references, num_labels: int = 7, ignore_index: int = 255):
        metrics = SegmentationMetrics(num_labels=num_labels, ignore_index=ignore_index)
        for prediction, reference in zip(predictions, references):
            metrics.update(np.asarray(prediction, dtype=np.int64), np.asarray(reference, dtype=np.int64))
        return scores_from_confusion_matrix(metrics.confusion_matrix)
