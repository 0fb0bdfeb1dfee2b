"""LALE model configuration."""

from huggingface_hub.dataclasses import strict
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig


# ARAS400k classes in the dataset authors' index order, with their mask colours.
ARAS400K_LABELS = ("Tree", "Shrub", "Grass", "Crop", "Built-up", "Barren", "Water")
ARAS400K_PALETTE = (
    (0, 100, 0),
    (255, 182, 193),
    (154, 205, 50),
    (255, 215, 0),
    (139, 69, 19),
    (211, 211, 211),
    (0, 0, 255),
)

BLOCK_TYPES = ("convmixer", "transformer")

# Named presets: `LaleConfig.from_preset(name)` builds them offline. The config defaults equal `lale-tiny`.
LALE_PRESETS = {
    "lale-tiny": {},
    "lale-small": {
        "stem_hidden_size": 24,
        "hidden_sizes": (32, 64, 160, 320),
        "depths": (2, 2, 2, 2),
        "num_attention_heads": (1, 2, 5, 10),
        "decoder_hidden_size": 96,
    },
    "lale-base": {
        "stem_hidden_size": 32,
        "hidden_sizes": (48, 96, 224, 448),
        "depths": (2, 3, 4, 2),
        "num_attention_heads": (1, 3, 7, 14),
        "mlp_ratios": (3, 3, 3, 3),
        "decoder_hidden_size": 128,
        "drop_path_rate": 0.15,
    },
}


@strict
class LaleConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a LALE model: a resolution-bifurcated encoder (ConvMixer stages at high resolution, transformer
    stages on the deep, downsampled maps) with an all-MLP multi-scale decoder, RMSNorm and StarReLU throughout.
    The defaults build `lale-tiny`; `LaleConfig.from_preset("lale-small")` builds the other named presets offline.

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        stem_hidden_size (`int`, *optional*, defaults to 16):
            Width of the first of the two 3x3 stride-2 stem convolutions; the second outputs `hidden_sizes[0]`
            at 1/4 of the input resolution.
        hidden_sizes (`list[int]`, *optional*, defaults to `(24, 48, 128, 256)`):
            Width of each encoder stage. Stage `i` runs at 1/2**(i+2) of the input resolution.
        depths (`list[int]`, *optional*, defaults to `(2, 2, 1, 2)`):
            Number of blocks in each stage.
        block_types (`list[str]`, *optional*, defaults to `("convmixer", "convmixer", "transformer", "transformer")`):
            Block type of each stage, `"convmixer"` or `"transformer"`. Moving attention to a higher resolution
            is a change of this list alone.
        convmixer_kernel_size (`int`, *optional*, defaults to 7):
            Kernel size of the depthwise convolution that mixes tokens in ConvMixer blocks (odd).
        mlp_ratios (`list[int]`, *optional*, defaults to `(2, 2, 2, 2)`):
            Hidden width of each stage's channel MLP, as a multiple of the stage width.
        num_attention_heads (`list[int]`, *optional*, defaults to `(1, 2, 4, 8)`):
            Attention heads of each stage; used by transformer stages, whose width must be divisible by it.
        use_conv_position_embeddings (`bool`, *optional*, defaults to `True`):
            Whether transformer stages start with a 3x3 depthwise convolutional position encoding.
        decoder_hidden_size (`int`, *optional*, defaults to 64):
            Width to which the decoder projects every stage before fusing them at 1/4 resolution. It drives most
            of the compute.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of every RMSNorm.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.1):
            Stochastic depth rate, increasing linearly over the blocks up to this value.
        classifier_dropout_prob (`float`, *optional*, defaults to 0.1):
            Dropout before the decoder's classifier.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialiser of linear and convolution weights.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the segmentation loss.
        out_features (`list[str]`, *optional*):
            For `LaleBackbone`: the stage names to return (`"stem"`, `"stage1"`, ...). Defaults to the last stage.
        out_indices (`list[int]`, *optional*):
            For `LaleBackbone`: the stage indices to return, as an alternative to `out_features`.

    Labels default to the seven ARAS400k classes in the dataset authors' order: Tree, Shrub, Grass, Crop, Built-up,
    Barren, Water.

    Example:

    ```python
    >>> from lale_hf import LaleConfig, LaleForSemanticSegmentation
    >>> config = LaleConfig.from_preset("lale-tiny")
    >>> model = LaleForSemanticSegmentation(config)
    ```"""

    model_type = "lale"
    attribute_map = {"num_hidden_layers": "num_stages"}

    num_channels: int = 3
    stem_hidden_size: int = 16
    hidden_sizes: list[int] | tuple[int, ...] = (24, 48, 128, 256)
    depths: list[int] | tuple[int, ...] = (2, 2, 1, 2)
    block_types: list[str] | tuple[str, ...] = ("convmixer", "convmixer", "transformer", "transformer")
    convmixer_kernel_size: int = 7
    mlp_ratios: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    num_attention_heads: list[int] | tuple[int, ...] = (1, 2, 4, 8)
    use_conv_position_embeddings: bool = True
    decoder_hidden_size: int = 64
    rms_norm_eps: float = 1e-6
    attention_dropout: float | int = 0.0
    drop_path_rate: float | int = 0.1
    classifier_dropout_prob: float | int = 0.1
    initializer_range: float = 0.02
    semantic_loss_ignore_index: int = 255
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(ARAS400K_LABELS))
            self.label2id = {name: index for index, name in self.id2label.items()}
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "LaleConfig":
        """Builds a named preset (`lale-tiny`, `lale-small`, `lale-base`) offline; `kwargs` override its fields."""
        if name not in LALE_PRESETS:
            raise ValueError(f"Unknown LALE preset {name!r}; expected one of {sorted(LALE_PRESETS)}.")
        return cls(**{**LALE_PRESETS[name], **kwargs})

    def validate_stage_lists(self):
        """Every per-stage list has one entry per stage."""
        num_stages = len(self.depths)
        if num_stages < 1:
            raise ValueError("`depths` must name at least one stage.")
        for name in ("hidden_sizes", "block_types", "mlp_ratios", "num_attention_heads"):
            if len(getattr(self, name)) != num_stages:
                raise ValueError(
                    f"`{name}` has {len(getattr(self, name))} entries but `depths` has {num_stages}: "
                    "every per-stage list needs one entry per stage."
                )

    def validate_positive_sizes(self):
        """Widths, depths, ratios, heads and the decoder width are positive."""
        for name in ("hidden_sizes", "depths", "mlp_ratios", "num_attention_heads"):
            if any(value < 1 for value in getattr(self, name)):
                raise ValueError(f"`{name}` must hold positive integers, got {tuple(getattr(self, name))}.")
        for name in ("num_channels", "stem_hidden_size", "decoder_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")

    def validate_block_types(self):
        """Each stage is a ConvMixer or a transformer stage."""
        for idx, block_type in enumerate(self.block_types):
            if block_type not in BLOCK_TYPES:
                raise ValueError(f"`block_types[{idx}]` is {block_type!r}; expected one of {BLOCK_TYPES}.")

    def validate_attention_heads(self):
        """Transformer stage widths divide evenly into heads."""
        for idx, (block_type, width, heads) in enumerate(
            zip(self.block_types, self.hidden_sizes, self.num_attention_heads)
        ):
            if block_type == "transformer" and width % heads != 0:
                raise ValueError(
                    f"Stage {idx} is a transformer stage of width {width}, which is not divisible by its "
                    f"{heads} attention heads (`hidden_sizes[{idx}]` % `num_attention_heads[{idx}]` must be 0)."
                )

    def validate_kernel_size(self):
        """The ConvMixer kernel is odd, so that padding keeps the map size."""
        if self.convmixer_kernel_size < 1 or self.convmixer_kernel_size % 2 == 0:
            raise ValueError(
                f"`convmixer_kernel_size` must be a positive odd integer, got {self.convmixer_kernel_size}."
            )

    def validate_probabilities(self):
        """Dropout and drop-path rates lie in [0, 1)."""
        for name in ("attention_dropout", "drop_path_rate", "classifier_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1), got {getattr(self, name)}.")

    def validate_positive_floats(self):
        """The norm epsilon and the initialiser range are positive."""
        for name in ("rms_norm_eps", "initializer_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")


__all__ = ["ARAS400K_LABELS", "ARAS400K_PALETTE", "LALE_PRESETS", "LaleConfig"]
