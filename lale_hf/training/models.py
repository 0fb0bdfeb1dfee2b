"""The model a training run starts from: a LALE preset, any config from scratch, or a checkpoint to fine-tune."""

import logging

from transformers import AutoConfig, AutoModelForSemanticSegmentation

from ..configuration_lale import LaleConfig
from ..modeling_lale import LaleForSemanticSegmentation
from .errors import TrainingError
from .labels import align_classes_by_name


logger = logging.getLogger(__name__)


def build_model(args, id2label: dict[int, str]):
    """From `--preset`, `--config_name` or `--model_name_or_path` (exactly one is set), labelled as the dataset.

    A checkpoint with another number of classes needs `--ignore_mismatched_sizes`; one with the same classes in
    another order has its head reordered by name (`align_classes_by_name`).
    """
    label2id = {name: index for index, name in id2label.items()}
    if args.preset:
        return LaleForSemanticSegmentation(LaleConfig.from_preset(args.preset, id2label=id2label, label2id=label2id))
    if args.config_name:
        config = AutoConfig.from_pretrained(args.config_name, trust_remote_code=args.trust_remote_code)
        config.id2label, config.label2id = id2label, label2id
        return AutoModelForSemanticSegmentation.from_config(config, trust_remote_code=args.trust_remote_code)
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    if config.num_labels != len(id2label) and not args.ignore_mismatched_sizes:
        raise TrainingError(
            f"{args.model_name_or_path} predicts {config.num_labels} classes but the dataset has "
            f"{len(id2label)} ({', '.join(id2label.values())}); pass --ignore_mismatched_sizes to re-initialise the head."
        )
    if config.num_labels != len(id2label):  # --ignore_mismatched_sizes: a new head, named by the dataset
        return AutoModelForSemanticSegmentation.from_pretrained(
            args.model_name_or_path,
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
            trust_remote_code=args.trust_remote_code,
            use_safetensors=True,
        )
    # Weights are read as safetensors only: a pickled checkpoint is refused, never unpickled.
    model = AutoModelForSemanticSegmentation.from_pretrained(
        args.model_name_or_path, trust_remote_code=args.trust_remote_code, use_safetensors=True
    )
    logger.info(
        f"  Classes: {align_classes_by_name(model, id2label, args.model_name_or_path, args.ignore_label_names)}"
    )
    return model
