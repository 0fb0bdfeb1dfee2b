"""Keeps a benchmark's output to what it measures: known third-party notices that say nothing about a run are off."""

import logging
import warnings

from transformers.utils import logging as transformers_logging


def silence_third_party_noise():
    """Filters, by logger and message, the notices torch prints on every export or copy of a model, and turns off
    transformers' progress bars (`save_pretrained` draws one per model saved)."""
    transformers_logging.disable_progress_bar()
    # torch's ONNX exporter logs one warning per torchvision operator it skips when torchvision is absent (it is not
    # a dependency of this project), four lines for every export.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # A deprecation inside torch's pytree, raised while torch itself copies an exported model.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
