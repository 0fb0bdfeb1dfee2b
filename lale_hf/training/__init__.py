"""Training building blocks used by `train.py`: augmentation, datasets, losses, checkpoints, evaluation, recipe."""

from .arguments import parse_training_args
from .augmentation import OverheadAugmentation
from .checkpoints import TrainingState, list_checkpoints
from .errors import TrainingDataError, TrainingError
from .evaluation import evaluate, json_ready, save_confusion_matrix_plot
from .labels import align_classes_by_name
from .losses import LOSSES, dice_loss, focal_loss, segmentation_loss
from .models import build_model
from .processors import training_image_processor
from .recipe import (
    SCHEDULES,
    ExponentialMovingAverage,
    StepSchedule,
    class_pixel_counts,
    class_weights_from_counts,
    learning_rate_factor,
    planned_total_steps,
)
from .segmentation_data import (
    SegmentationDataset,
    StreamingSegmentationDataset,
    first_samples,
    load_segmentation_splits,
)
from .tracking import push_allow_patterns, secret_values, tracked_hyperparameters


__all__ = [
    "build_model",
    "parse_training_args",
    "align_classes_by_name",
    "LOSSES",
    "SCHEDULES",
    "ExponentialMovingAverage",
    "StepSchedule",
    "class_pixel_counts",
    "class_weights_from_counts",
    "focal_loss",
    "learning_rate_factor",
    "planned_total_steps",
    "training_image_processor",
    "OverheadAugmentation",
    "SegmentationDataset",
    "StreamingSegmentationDataset",
    "TrainingDataError",
    "TrainingError",
    "TrainingState",
    "dice_loss",
    "evaluate",
    "first_samples",
    "json_ready",
    "list_checkpoints",
    "load_segmentation_splits",
    "push_allow_patterns",
    "save_confusion_matrix_plot",
    "secret_values",
    "segmentation_loss",
    "tracked_hyperparameters",
]
