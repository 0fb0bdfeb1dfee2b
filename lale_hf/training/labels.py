"""Class names of a checkpoint against a dataset's: compared, never assumed, and the head reordered by name.

A checkpoint with the same number of classes in another order would otherwise be fine-tuned and evaluated with
every per-class score reported under the wrong name.
"""

import torch

from .errors import TrainingError


def class_names(id2label: dict) -> list[str]:
    return [id2label[index] for index in sorted(id2label, key=int)]


def classifier_layer(model: torch.nn.Module, num_labels: int) -> torch.nn.Module:
    """The last convolution or linear layer with one output per class: the classifier of LALE, SegFormer,
    MobileViT-DeepLabV3 and UPerNet alike."""
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
        and (module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features) == num_labels
    ]
    if not candidates:
        raise TrainingError(f"found no layer with {num_labels} outputs to reorder by class name")
    return candidates[-1]


def align_classes_by_name(model, dataset_id2label: dict, source: str, ignore_label_names: bool = False) -> str:
    """Makes `model` predict the dataset's classes in the dataset's order; returns what was done.

    Same names in the same order: nothing. Same names in another order: the classifier's output rows are permuted
    so that each keeps its class. Other names: an error naming both lists, unless `ignore_label_names`, which keeps
    the head as it is and relabels it with the dataset's names.
    """
    model_names = class_names(model.config.id2label)
    dataset_names = class_names(dataset_id2label)
    if model_names == dataset_names:
        return "same classes"
    if sorted(model_names) == sorted(dataset_names):
        order = [model_names.index(name) for name in dataset_names]
        layer = classifier_layer(model, len(order))
        with torch.no_grad():
            layer.weight.copy_(layer.weight[order])
            if layer.bias is not None:
                layer.bias.copy_(layer.bias[order])
        result = f"classifier reordered by class name ({model_names} -> {dataset_names})"
    elif ignore_label_names:
        result = f"class names {model_names} replaced by {dataset_names} (--ignore_label_names)"
    else:
        raise TrainingError(
            f"{source} names its classes {model_names} but the dataset {dataset_names}; pass --ignore_label_names "
            "to fine-tune the head under the dataset's names anyway"
        )
    model.config.id2label = dict(enumerate(dataset_names))
    model.config.label2id = {name: index for index, name in enumerate(dataset_names)}
    return result
