"""PyTorch LALE: a resolution-bifurcated encoder with an all-MLP decoder for land-cover segmentation."""

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutput, SemanticSegmenterOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_lale import LaleConfig


class LaleRMSNorm(nn.Module):
    """RMSNorm over the last dimension, for token sequences (B, N, C)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.eps)


class LaleRMSNorm2d(nn.Module):
    """RMSNorm over the channels of a feature map (B, C, H, W)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        variance = hidden_states.pow(2).mean(dim=1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        return (hidden_states * self.weight[:, None, None]).to(input_dtype)


class LaleStarReLU(nn.Module):
    """StarReLU (MetaFormer): `scale * relu(x) ** 2 + bias` with learnable scalars."""

    # MetaFormer's initial values: for x ~ N(0, 1), relu(x) ** 2 has mean 1/2 and variance 5/4, so these give the
    # output mean 0 and variance 1 (scale = 1 / sqrt(5/4), bias = -(1/2) / sqrt(5/4), rounded to four decimals).
    INITIAL_SCALE = 0.8944
    INITIAL_BIAS = -0.4472

    def __init__(self, scale_value: float = INITIAL_SCALE, bias_value: float = INITIAL_BIAS):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale_value))
        self.bias = nn.Parameter(torch.tensor(bias_value))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.relu(hidden_states).square() + self.bias


class LaleDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class LaleStem(nn.Module):
    """Two 3x3 stride-2 convolutions: the input at 1/4 resolution with `hidden_sizes[0]` channels."""

    def __init__(self, config: LaleConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(config.num_channels, config.stem_hidden_size, 3, stride=2, padding=1)
        self.norm1 = LaleRMSNorm2d(config.stem_hidden_size, config.rms_norm_eps)
        self.act = LaleStarReLU()
        self.conv2 = nn.Conv2d(config.stem_hidden_size, config.hidden_sizes[0], 3, stride=2, padding=1)
        self.norm2 = LaleRMSNorm2d(config.hidden_sizes[0], config.rms_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.act(self.norm1(self.conv1(pixel_values)))
        return self.norm2(self.conv2(hidden_states))


class LaleConvMLP(nn.Module):
    """Channel MLP on feature maps: 1x1 conv, StarReLU, 1x1 conv."""

    def __init__(self, hidden_size: int, mlp_ratio: int):
        super().__init__()
        self.fc1 = nn.Conv2d(hidden_size, hidden_size * mlp_ratio, 1)
        self.act = LaleStarReLU()
        self.fc2 = nn.Conv2d(hidden_size * mlp_ratio, hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class LaleConvMixerLayer(GradientCheckpointingLayer):
    """Pre-norm ConvMixer block: a depthwise convolution mixes space, a channel MLP mixes channels."""

    def __init__(self, config: LaleConfig, hidden_size: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        kernel_size = config.convmixer_kernel_size
        self.norm1 = LaleRMSNorm2d(hidden_size, config.rms_norm_eps)
        self.token_mixer = nn.Conv2d(
            hidden_size, hidden_size, kernel_size, padding=kernel_size // 2, groups=hidden_size
        )
        self.norm2 = LaleRMSNorm2d(hidden_size, config.rms_norm_eps)
        self.mlp = LaleConvMLP(hidden_size, mlp_ratio)
        self.drop_path = LaleDropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        hidden_states = hidden_states + self.drop_path(self.token_mixer(self.norm1(hidden_states)))
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class LaleSelfAttention(nn.Module):
    """Multi-head self-attention over all tokens of a (deep, low-resolution) feature map."""

    def __init__(self, config: LaleConfig, hidden_size: int, num_attention_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, hidden_size = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.proj(attn_output.reshape(batch_size, seq_len, hidden_size))
        return attn_output, attn_weights


class LaleMLP(nn.Module):
    """Channel MLP on tokens: linear, StarReLU, linear."""

    def __init__(self, hidden_size: int, mlp_ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size * mlp_ratio)
        self.act = LaleStarReLU()
        self.fc2 = nn.Linear(hidden_size * mlp_ratio, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class LaleTransformerLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block on tokens (B, N, C)."""

    def __init__(
        self, config: LaleConfig, hidden_size: int, num_attention_heads: int, mlp_ratio: int, drop_path: float
    ):
        super().__init__()
        self.norm1 = LaleRMSNorm(hidden_size, config.rms_norm_eps)
        self.attention = LaleSelfAttention(config, hidden_size, num_attention_heads)
        self.norm2 = LaleRMSNorm(hidden_size, config.rms_norm_eps)
        self.mlp = LaleMLP(hidden_size, mlp_ratio)
        self.drop_path = LaleDropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attn_output, _ = self.attention(self.norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + self.drop_path(attn_output)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


class LaleDownsample(nn.Module):
    """3x3 stride-2 convolution between stages, halving the resolution."""

    def __init__(self, config: LaleConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = LaleRMSNorm2d(out_channels, config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(hidden_states))


class LaleStage(nn.Module):
    """One encoder stage: optional downsampling, then ConvMixer or transformer blocks; maps in, maps out."""

    def __init__(self, config: LaleConfig, stage_idx: int, drop_path_rates: list[float]):
        super().__init__()
        hidden_size = config.hidden_sizes[stage_idx]
        self.is_transformer = config.block_types[stage_idx] == "transformer"
        # The stem already delivers stage 1's width and resolution.
        self.downsample = (
            LaleDownsample(config, config.hidden_sizes[stage_idx - 1], hidden_size) if stage_idx > 0 else nn.Identity()
        )
        # A depthwise conv gives attention the position information it lacks (conditional position encoding).
        self.position_embeddings = (
            nn.Conv2d(hidden_size, hidden_size, 3, padding=1, groups=hidden_size)
            if self.is_transformer and config.use_conv_position_embeddings
            else None
        )
        if self.is_transformer:
            layers = [
                LaleTransformerLayer(
                    config, hidden_size, config.num_attention_heads[stage_idx], config.mlp_ratios[stage_idx], rate
                )
                for rate in drop_path_rates
            ]
        else:
            layers = [
                LaleConvMixerLayer(config, hidden_size, config.mlp_ratios[stage_idx], rate) for rate in drop_path_rates
            ]
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        hidden_states = self.downsample(hidden_states)
        if self.position_embeddings is not None:
            hidden_states = hidden_states + self.position_embeddings(hidden_states)
        if not self.is_transformer:
            for layer in self.layers:
                hidden_states = layer(hidden_states, **kwargs)
            return hidden_states
        batch_size, channels, height, width = hidden_states.shape
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return hidden_states.transpose(1, 2).reshape(batch_size, channels, height, width)


class LalePreTrainedModel(PreTrainedModel):
    config: LaleConfig
    base_model_prefix = "lale"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["LaleStage"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_record_outputs = {
        # The first stage's input is the stem output, so hidden_states line up with `config.stage_names`.
        "hidden_states": OutputRecorder(LaleStage, capture_initial_hidden_state=True),
        "attentions": OutputRecorder(LaleSelfAttention, index=1),
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saves as usual, with every LALE entry point in `auto_map` so remote code can load any of them."""
        self.config.auto_map = {
            "AutoConfig": "configuration_lale.LaleConfig",
            "AutoModel": "modeling_lale.LaleModel",
            "AutoModelForSemanticSegmentation": "modeling_lale.LaleForSemanticSegmentation",
            "AutoBackbone": "modeling_lale.LaleBackbone",
            **(getattr(self.config, "auto_map", None) or {}),
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (LaleRMSNorm, LaleRMSNorm2d)):
            init.ones_(module.weight)
        elif isinstance(module, LaleStarReLU):
            init.constant_(module.scale, module.INITIAL_SCALE)
            init.constant_(module.bias, module.INITIAL_BIAS)


class LaleModel(LalePreTrainedModel):
    """The LALE encoder: stem, then one feature map per stage at 1/4, 1/8, 1/16 and 1/32 resolution."""

    def __init__(self, config: LaleConfig):
        super().__init__(config)
        self.config = config
        self.stem = LaleStem(config)
        total_depth = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total_depth - 1, 1) for i in range(total_depth)]
        self.stages = nn.ModuleList()
        for stage_idx, depth in enumerate(config.depths):
            start = sum(config.depths[:stage_idx])
            self.stages.append(LaleStage(config, stage_idx, rates[start : start + depth]))
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images, e.g. from [`LaleImageProcessor`].
        """
        hidden_states = self.stem(pixel_values)
        for stage in self.stages:
            hidden_states = stage(hidden_states, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class LaleDecodeHead(nn.Module):
    """All-MLP decoder: project every stage to one width, upsample to 1/4, concatenate, fuse, classify."""

    def __init__(self, config: LaleConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.projections = nn.ModuleList([nn.Conv2d(size, width, 1) for size in config.hidden_sizes])
        self.fuse = nn.Conv2d(width * len(config.hidden_sizes), width, 1, bias=False)
        self.norm = LaleRMSNorm2d(width, config.rms_norm_eps)
        self.act = LaleStarReLU()
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(width, config.num_labels, 1)

    def forward(self, stage_outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        size = stage_outputs[0].shape[2:]
        # fuse(concat(upsample(projection(x)))) computed as sum(upsample(conv(x, fuse_i @ projection_i))): 1x1 convs
        # and bilinear upsampling are linear and commute, so each stage maps straight to the decoder width at its own
        # resolution and the wide concatenation at 1/4 resolution is never built (same function and weights, 1.2x
        # faster on CPU). The concatenation order is deepest stage first, as in SegFormer.
        fuse_weights = self.fuse.weight.flatten(1).split(self.fuse.out_channels, dim=1)[::-1]
        hidden_states = None
        for projection, features, fuse_weight in zip(self.projections, stage_outputs, fuse_weights):
            weight = fuse_weight @ projection.weight.flatten(1)
            mapped = nn.functional.conv2d(features, weight[:, :, None, None], fuse_weight @ projection.bias)
            if mapped.shape[2:] != size:
                mapped = nn.functional.interpolate(mapped, size=size, mode="bilinear", align_corners=False)
            hidden_states = mapped if hidden_states is None else hidden_states + mapped
        hidden_states = self.act(self.norm(hidden_states))
        return self.classifier(self.dropout(hidden_states))


class LaleForSemanticSegmentation(LalePreTrainedModel):
    """LALE encoder with the all-MLP decoder; logits at 1/4 of the input resolution."""

    def __init__(self, config: LaleConfig):
        super().__init__(config)
        self.lale = LaleModel(config)
        self.decode_head = LaleDecodeHead(config)
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SemanticSegmenterOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images, e.g. from [`LaleImageProcessor`].
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Class-index maps; `config.semantic_loss_ignore_index` (255) is ignored. Logits are upsampled to this
            size for the cross-entropy loss.

        Example:

        ```python
        >>> from lale_hf import LaleConfig, LaleForSemanticSegmentation
        >>> import torch
        >>> model = LaleForSemanticSegmentation(LaleConfig())
        >>> model(torch.randn(1, 3, 256, 256)).logits.shape
        torch.Size([1, 7, 64, 64])
        ```"""
        outputs = self.lale(pixel_values, **kwargs)
        logits = self.decode_head(outputs.hidden_states[1:])

        loss = None
        if labels is not None:
            upsampled_logits = nn.functional.interpolate(
                logits, size=labels.shape[-2:], mode="bilinear", align_corners=False
            )
            loss = CrossEntropyLoss(ignore_index=self.config.semantic_loss_ignore_index)(upsampled_logits, labels)

        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class LaleBackbone(BackboneMixin, LalePreTrainedModel):
    """LALE encoder as a transformers backbone, e.g. for `UperNetForSemanticSegmentation`."""

    def __init__(self, config: LaleConfig):
        super().__init__(config)
        self.lale = LaleModel(config)
        self.num_features = [config.hidden_sizes[0]] + list(config.hidden_sizes)
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images.
        """
        outputs = self.lale(pixel_values, **kwargs)
        feature_maps = tuple(
            hidden_state
            for stage, hidden_state in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        )
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["LaleBackbone", "LaleForSemanticSegmentation", "LaleModel", "LalePreTrainedModel"]
