"""Model cards generated from a training run: every number in them comes from the run's own results."""

import datetime
import os
import platform

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ model_name }} is a {{ architecture }} semantic-segmentation model ({{ num_parameters_m }} M parameters) trained with
the training script of [lale-hf](https://github.com/lale-hf/lale-hf) on `{{ dataset_name }}`. The figures below were
measured by that run on the `{{ validation_split }}` split; nothing in this card is typed by hand.

## Results ({{ validation_split }}, step {{ results.train_steps }})

| metric | value |
|---|---|
{% for name, value in headline %}| {{ name }} | {{ value }} |
{% endfor %}

Per class:

| class | F1 | IoU |
|---|---|---|
{% for name, f1, iou in per_class %}| {{ name }} | {{ f1 }} | {{ iou }} |
{% endfor %}

## Usage

```python
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{{ repo_id }}", trust_remote_code=True)
segments = segmenter("patch.png")  # 8-bit RGB; one mask per predicted class
```

With the `lale_hf` package installed, `LaleForSemanticSegmentation.from_pretrained("{{ repo_id }}")` loads it too.

## Training

| hyperparameter | value |
|---|---|
{% for name, value in hyperparameters %}| {{ name }} | {{ value }} |
{% endfor %}

Hardware: {{ hardware }}. Training took {{ results.train_runtime_seconds }} s for {{ results.train_samples }} samples
({{ results.train_samples_per_second }} samples/s).

## Limitations

Trained on 10 m Sentinel-2 RGB patches scaled per patch by their own maximum (the ARAS400k convention): other
sensors, resolutions or scalings need fine-tuning or the same preprocessing.
"""

HYPERPARAMETERS = (
    "preset",
    "model_name_or_path",
    "config_name",
    "learning_rate",
    "weight_decay",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_train_steps",
    "max_train_minutes",
    "lr_scheduler_type",
    "num_warmup_steps",
    "loss",
    "class_weights",
    "image_size",
    "include_synthetic",
    "mixed_precision",
    "seed",
)


def _format(value):
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"  # a class absent from both references and predictions has no score
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def build_model_card(
    results: dict, args: dict, config, num_parameters: int, num_processes: int, device: str
) -> ModelCard:
    """A ModelCard whose YAML model-index and tables hold `results` exactly as `all_results.json` does."""
    repo_id = args.get("hub_model_id") or os.path.basename(os.path.abspath(args["output_dir"]))
    dataset_name = args["dataset_name"]
    dataset_id = dataset_name if not os.path.exists(dataset_name) else os.path.basename(os.path.abspath(dataset_name))
    metric_names = {
        "eval_macro_f1": ("f1", "Macro F1"),
        "eval_mean_iou": ("mean_iou", "mIoU"),
        "eval_overall_accuracy": ("accuracy", "Overall accuracy"),
        "eval_mean_accuracy": ("mean_accuracy", "Mean accuracy"),
    }
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Semantic segmentation",
            dataset_type=dataset_id,
            dataset_name=dataset_id,
            dataset_split=args.get("validation_split", "validation"),
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=results[key],
        )
        for key, (metric_type, metric_name) in metric_names.items()
        if results.get(key) is not None
    ]
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["remote-sensing", "land-cover", "semantic-segmentation", "sentinel-2", config.model_type, "lale-hf"],
        datasets=[dataset_id],
        model_name=repo_id,
        eval_results=eval_results,
    )
    per_class = [
        (name, _format(results.get(f"eval_f1_{name}")), _format(results.get(f"eval_iou_{name}")))
        for name in config.id2label.values()
    ]
    hardware = (
        f"{num_processes} process(es) on {device}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU threads, torch {torch.__version__}, {datetime.date.today().isoformat()}"
    )
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        model_name=repo_id,
        repo_id=repo_id,
        architecture=type(config).__name__.replace("Config", ""),
        num_parameters_m=f"{num_parameters / 1e6:.3f}",
        dataset_name=dataset_name,
        validation_split=args.get("validation_split", "validation"),
        results=results,
        headline=[
            (name, _format(results[key])) for key, (_, name) in metric_names.items() if results.get(key) is not None
        ],
        per_class=per_class,
        hyperparameters=[(name, _format(args[name])) for name in HYPERPARAMETERS if args.get(name) is not None],
        hardware=hardware,
    )
