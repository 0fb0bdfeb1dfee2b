"""The model zoo: the LALE presets and their transformers peers, built from configs with seeded random weights."""

import torch
from torch import nn
from transformers import (
    AutoModelForSemanticSegmentation,
    ConvNextConfig,
    MobileViTConfig,
    PreTrainedConfig,
    SegformerConfig,
    UperNetConfig,
)

from lale_hf import ARAS400K_LABELS, LALE_PRESETS, LaleConfig


ZOO = {
    "lale-tiny": "LALE preset lale-tiny",
    "lale-small": "LALE preset lale-small",
    "lale-base": "LALE preset lale-base",
    "segformer-b0": "SegFormer-B0 (SegformerConfig defaults)",
    "segformer-b1": "SegFormer-B1 (widths 64/128/320/512)",
    "upernet-convnext-7m": (
        "UPerNet, ConvNeXt backbone widths 48/96/192/384 depths 2/2/6/2, head width 128, no auxiliary head"
    ),
    "mobilevit-xxs-deeplabv3": "MobileViT-XXS + DeepLabV3 (the sizes of apple/deeplabv3-mobilevit-xx-small)",
    # The referee's experiment: lale-tiny with attention from 1/8 on, and with no attention at all (MLP ratios of
    # stages 3-4 raised to 3/4 so that the parameter count stays within 0.4% of lale-tiny's).
    "lale-tiny-attention-1-8": "lale-tiny with transformer stages from 1/8 on (convmixer/transformer x3)",
    "lale-tiny-all-convmixer": "lale-tiny with ConvMixer stages only, MLP ratios 2/2/3/4",
}
# Config overrides of the lale-tiny variants above.
LALE_TINY_VARIANTS = {
    "lale-tiny-attention-1-8": {"block_types": ("convmixer", "transformer", "transformer", "transformer")},
    "lale-tiny-all-convmixer": {"block_types": ("convmixer",) * 4, "mlp_ratios": (2, 2, 3, 4)},
}
# What the efficiency benchmark measures unless told otherwise: the presets and their peers, not the variants.
DEFAULT_MODELS = tuple(name for name in ZOO if name not in LALE_TINY_VARIANTS)


def zoo_config(name: str) -> PreTrainedConfig:
    """The config of a zoo model, seven ARAS400k classes; see `ZOO` for what each name means."""
    labels = dict(enumerate(ARAS400K_LABELS))
    if name in LALE_PRESETS:
        return LaleConfig.from_preset(name)
    if name in LALE_TINY_VARIANTS:
        return LaleConfig.from_preset("lale-tiny", **LALE_TINY_VARIANTS[name])
    if name == "segformer-b0":
        return SegformerConfig(id2label=labels)
    if name == "segformer-b1":
        return SegformerConfig(hidden_sizes=[64, 128, 320, 512], id2label=labels)
    if name == "upernet-convnext-7m":
        # Sized so that the paper's 4.5x parameter ratio against the 1.6 M LALE holds: 7.14 M parameters.
        backbone = ConvNextConfig(
            hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 6, 2], out_features=["stage1", "stage2", "stage3", "stage4"]
        )
        return UperNetConfig(backbone_config=backbone, hidden_size=128, use_auxiliary_head=False, id2label=labels)
    if name == "mobilevit-xxs-deeplabv3":
        return MobileViTConfig(
            hidden_sizes=[64, 80, 96],
            neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
            expand_ratio=2.0,
            id2label=labels,
        )
    raise ValueError(f"Unknown benchmark model {name!r}; expected one of {list(ZOO)}.")


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A zoo model with seeded random weights, in eval mode.

    Batch norms get PyTorch's default init (weight 1, bias 0): transformers' MobileViT draws them from N(0, 0.02),
    which shrinks the activations layer after layer to denormal floats (logits near 1e-44), and denormal arithmetic
    made it twice as slow here. A trained model has no such activations, so that would flatter its competitors.
    """
    torch.manual_seed(seed)
    model = AutoModelForSemanticSegmentation.from_config(zoo_config(name)).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
            module.reset_running_stats()
    return model


def check_logits(logits: torch.Tensor, name: str):
    """Fails on logits a timing must not run on: non-finite, or so small that arithmetic goes denormal."""
    largest = logits.detach().abs().max().item()
    if not torch.isfinite(logits).all() or largest < 1e-20:
        raise RuntimeError(
            f"{name}: degenerate logits at random init (max |logit| = {largest:.3g}); timings would mislead."
        )
