import copy

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForSemanticSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from lale_hf import LALE_PRESETS, LaleBackbone, LaleConfig, LaleForSemanticSegmentation, LaleModel
from lale_hf.modeling_lale import LaleStarReLU


def build(config: LaleConfig, seed: int = 0) -> LaleForSemanticSegmentation:
    torch.manual_seed(seed)
    return LaleForSemanticSegmentation(config).eval()


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", sorted(LALE_PRESETS))
def test_preset_forward_shapes_and_hidden_states(preset):
    config = LaleConfig.from_preset(preset)
    model = build(config)
    pixel_values = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
    assert outputs.logits.shape == (2, 7, 24, 32)
    assert [tuple(h.shape[1:]) for h in outputs.hidden_states] == [
        (config.hidden_sizes[0], 24, 32),
        (config.hidden_sizes[0], 24, 32),
        (config.hidden_sizes[1], 12, 16),
        (config.hidden_sizes[2], 6, 8),
        (config.hidden_sizes[3], 3, 4),
    ]
    with torch.no_grad():
        plain = model(pixel_values)
    assert plain.hidden_states is None
    assert torch.equal(plain.logits, outputs.logits)


def test_presets_grow_and_tiny_matches_the_paper():
    sizes = {name: num_parameters(build(LaleConfig.from_preset(name))) for name in LALE_PRESETS}
    assert 1.52e6 <= sizes["lale-tiny"] <= 1.68e6
    assert sizes["lale-tiny"] < sizes["lale-small"] < sizes["lale-base"]
    assert LaleConfig().to_dict() == LaleConfig.from_preset("lale-tiny").to_dict()


def test_default_labels_are_aras400k():
    config = LaleConfig()
    assert config.num_labels == 7
    assert [config.id2label[i] for i in range(7)] == ["Tree", "Shrub", "Grass", "Crop", "Built-up", "Barren", "Water"]
    assert LaleConfig(num_labels=3).num_labels == 3


def test_custom_labels_survive_save_and_load(tmp_path):
    LaleConfig(id2label={0: "forest", 1: "water"}).save_pretrained(tmp_path / "named")
    assert LaleConfig.from_pretrained(tmp_path / "named").id2label == {0: "forest", 1: "water"}
    LaleConfig(num_labels=3).save_pretrained(tmp_path / "three")
    assert AutoConfig.from_pretrained(tmp_path / "three").num_labels == 3


def test_loss_ignores_255_and_matches_segformer_recipe():
    model = build(LaleConfig())
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 7, (2, 64, 64))
    labels[:, :20] = 255
    outputs = model(pixel_values, labels=labels)
    upsampled = torch.nn.functional.interpolate(outputs.logits, size=(64, 64), mode="bilinear", align_corners=False)
    valid = labels != 255
    expected = torch.nn.functional.cross_entropy(upsampled.permute(0, 2, 3, 1)[valid], labels[valid])
    torch.testing.assert_close(outputs.loss, expected)

    # Logits that reach only ignored pixels do not change the loss. Rows 0-19 of the 64x64 labels are ignored; the
    # 1/4-resolution logit rows 0-3 reach output rows 0-17 only through bilinear upsampling, so perturb those.
    def perturb_top_rows(module, inputs, logits):
        logits = logits.clone()
        logits[:, :, :4] += 10 * torch.randn_like(logits[:, :, :4])
        return logits

    labelled_everywhere = labels.clone()
    labelled_everywhere[:, :20] = 3
    with torch.no_grad():
        unperturbed_labelled = model(pixel_values, labels=labelled_everywhere).loss
        handle = model.decode_head.register_forward_hook(perturb_top_rows)
        try:
            perturbed = model(pixel_values, labels=labels)
            perturbed_labelled = model(pixel_values, labels=labelled_everywhere).loss
        finally:
            handle.remove()
    assert not torch.equal(perturbed.logits, outputs.logits)
    assert torch.equal(perturbed.loss, outputs.loss)
    # The same perturbation does change the loss once those pixels carry labels.
    assert not torch.allclose(perturbed_labelled, unperturbed_labelled)


def test_star_relu_starts_with_zero_mean_unit_variance_output():
    model = build(LaleConfig())
    activations = [module for module in model.modules() if isinstance(module, LaleStarReLU)]
    assert len(activations) == 9  # the stem, each of the 7 blocks' channel MLP, the decoder
    for activation in activations:
        assert activation.scale.item() == pytest.approx(0.8944) and activation.bias.item() == pytest.approx(-0.4472)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        output = activations[0](torch.randn(1_000_000, generator=generator))
    assert abs(output.mean().item()) < 0.01 and abs(output.std().item() - 1) < 0.01


def test_return_dict_false_gives_tuple():
    model = build(LaleConfig())
    pixel_values = torch.randn(1, 3, 64, 64)
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    with torch.no_grad():
        as_tuple = model(pixel_values, labels=labels, return_dict=False)
        as_dict = model(pixel_values, labels=labels)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)


def test_save_load_round_trip_is_bit_identical_and_safetensors_only(tmp_path):
    model = build(LaleConfig())
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())
    reloaded = LaleForSemanticSegmentation.from_pretrained(tmp_path).eval()
    auto = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = model(pixel_values).logits
        assert torch.equal(reloaded(pixel_values).logits, expected)
        assert torch.equal(auto(pixel_values).logits, expected)
    config = AutoConfig.from_pretrained(tmp_path)
    assert set(config.auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForSemanticSegmentation", "AutoBackbone"}
    encoder = AutoModel.from_pretrained(tmp_path)
    assert isinstance(encoder, LaleModel)
    torch.testing.assert_close(encoder.stem.conv1.weight, model.lale.stem.conv1.weight, rtol=0, atol=0)


def test_eager_and_sdpa_attention_agree():
    config = LaleConfig()
    torch.manual_seed(0)
    eager = LaleForSemanticSegmentation(copy.deepcopy(config)).eval()
    eager.set_attn_implementation("eager")
    sdpa = LaleForSemanticSegmentation(copy.deepcopy(config)).eval()
    sdpa.load_state_dict(eager.state_dict())
    sdpa.set_attn_implementation("sdpa")
    pixel_values = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(eager(pixel_values).logits, sdpa(pixel_values).logits, rtol=1e-5, atol=1e-5)
        attentions = eager(pixel_values, output_attentions=True).attentions
    # Two transformer stages of the tiny preset: one layer at 1/16 (8x8 tokens) and two at 1/32 (4x4 tokens).
    assert [tuple(a.shape) for a in attentions] == [(2, 4, 64, 64), (2, 8, 16, 16), (2, 8, 16, 16)]


def test_activation_checkpointing_gives_same_gradients():
    config = LaleConfig(drop_path_rate=0.0, classifier_dropout_prob=0.0)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 7, (2, 64, 64))
    gradients = []
    for checkpointing in (False, True):
        model = build(config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        model(pixel_values, labels=labels).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    assert gradients[0].keys() == gradients[1].keys()
    for name in gradients[0]:
        torch.testing.assert_close(gradients[0][name], gradients[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_image_alone_and_in_batch_give_same_logits():
    model = build(LaleConfig())
    batch = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        together = model(batch).logits
        alone = torch.cat([model(image[None]).logits for image in batch])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


def test_folded_decoder_equals_project_upsample_concatenate_fuse():
    # The decoder folds `fuse` into each stage's projection; check it against the textbook order, values and gradients.
    model = build(LaleConfig(classifier_dropout_prob=0.0)).train()
    head = model.decode_head
    with torch.no_grad():  # non-zero biases, so that their folding is checked too
        for projection in head.projections:
            projection.bias.normal_()
    features = [
        f.detach().requires_grad_()
        for f in model.lale(torch.randn(2, 3, 96, 160), output_hidden_states=True).hidden_states[1:]
    ]
    size = features[0].shape[2:]
    upsampled = [
        torch.nn.functional.interpolate(projection(x), size=size, mode="bilinear", align_corners=False)
        for projection, x in zip(head.projections, features, strict=True)
    ]
    reference = head.classifier(head.act(head.norm(head.fuse(torch.cat(upsampled[::-1], dim=1)))))
    reference_grads = torch.autograd.grad(
        reference.square().sum(), [*features, head.fuse.weight, head.projections[2].bias]
    )
    folded = head(features)
    folded_grads = torch.autograd.grad(folded.square().sum(), [*features, head.fuse.weight, head.projections[2].bias])
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)
    for got, expected in zip(folded_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_bf16_forward_agrees_with_fp32():
    model = build(LaleConfig(initializer_range=0.05))  # logits that vary in space, so the range is meaningful
    pixel_values = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(pixel_values).logits
        logits = model.to(torch.bfloat16)(pixel_values.to(torch.bfloat16)).logits
    assert logits.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits (0.4 % per rounding). Through about a dozen layers the largest logit error
    # measured 0.8 % of the fp32 logits' range here, 1.3 % to 1.8 % on real patches (3 seeds). Bound: 3 %.
    error = (logits.float() - reference).abs().max()
    assert error <= 0.03 * (reference.max() - reference.min())
    assert (logits.float().argmax(1) == reference.argmax(1)).float().mean() > 0.95


def test_attention_at_high_resolution_is_a_config_change():
    """The referee's experiment: transformer blocks from stage 2 on."""
    config = LaleConfig(block_types=("convmixer", "transformer", "transformer", "transformer"))
    model = build(config)
    model.set_attn_implementation("eager")  # sdpa returns no attention weights
    assert model.lale.stages[1].is_transformer and not model.lale.stages[0].is_transformer
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64), output_attentions=True)
    assert outputs.logits.shape == (1, 7, 16, 16)
    assert outputs.attentions[0].shape == (1, 2, 64, 64)  # 8x8 tokens at 1/8 resolution of a 64x64 input


def test_drop_path_is_active_in_training_only():
    model = build(LaleConfig(drop_path_rate=0.5, classifier_dropout_prob=0.0))
    pixel_values = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, model(pixel_values).logits)
        model.train()
        torch.manual_seed(1)
        first = model(pixel_values).logits
        torch.manual_seed(2)
        assert not torch.equal(first, model(pixel_values).logits)


def test_backbone_registered_and_feature_maps():
    config = LaleConfig(out_features=["stage1", "stage2", "stage3", "stage4"])
    backbone = AutoBackbone.from_config(config)
    assert isinstance(backbone, LaleBackbone)
    assert backbone.channels == list(config.hidden_sizes)
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 128, 128)).feature_maps
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 32, 32), (48, 16, 16), (128, 8, 8), (256, 4, 4)]


def test_lale_backbone_inside_upernet_trains_and_round_trips(tmp_path):
    backbone_config = LaleConfig(out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(
        backbone_config=backbone_config,
        num_labels=7,
        hidden_size=64,
        auxiliary_in_channels=128,
        use_auxiliary_head=False,
    )
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config)
    assert isinstance(model.backbone, LaleBackbone)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 7, (2, 64, 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.backbone.lale.stem.conv1.weight.detach().clone()
    loss = model(pixel_values, labels=labels).loss
    loss.backward()
    assert model.backbone.lale.stem.conv1.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.backbone.lale.stem.conv1.weight)

    model.eval().save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert reloaded.config.backbone_config.model_type == "lale"
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).logits, model(pixel_values).logits)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_sizes": (24, 48, 128)}, "`hidden_sizes` has 3 entries but `depths` has 4"),
        (
            {"depths": (), "hidden_sizes": (), "block_types": (), "mlp_ratios": (), "num_attention_heads": ()},
            "`depths` must name at least one stage",
        ),
        ({"depths": (2, 0, 1, 2)}, "`depths` must hold positive integers"),
        ({"decoder_hidden_size": 0}, "`decoder_hidden_size` must be a positive integer"),
        (
            {"block_types": ("convmixer", "attention", "transformer", "transformer")},
            "`block_types[1]` is 'attention'; expected one of ('convmixer', 'transformer')",
        ),
        ({"hidden_sizes": (24, 48, 130, 256)}, "Stage 2 is a transformer stage of width 130, which is not divisible"),
        ({"convmixer_kernel_size": 6}, "`convmixer_kernel_size` must be a positive odd integer, got 6"),
        ({"drop_path_rate": 1.0}, "`drop_path_rate` must lie in [0, 1), got 1.0"),
        ({"rms_norm_eps": 0.0}, "`rms_norm_eps` must be positive, got 0.0"),
    ],
)
def test_config_validation_messages(kwargs, message):
    with pytest.raises(StrictDataclassClassValidationError) as error:
        LaleConfig(**kwargs)
    assert message in str(error.value)


def test_config_rejects_wrong_types_and_unknown_presets():
    with pytest.raises(Exception, match="Field 'hidden_sizes' with value '24,48' doesn't match any type"):
        LaleConfig(hidden_sizes="24,48")
    with pytest.raises(ValueError, match="Unknown LALE preset 'lale-huge'"):
        LaleConfig.from_preset("lale-huge")


def test_heads_only_constrain_transformer_stages():
    # Stage 2 (width 48) is a ConvMixer stage, so 5 heads there are irrelevant and allowed.
    LaleConfig(num_attention_heads=(1, 5, 4, 8))
    with pytest.raises(StrictDataclassClassValidationError, match="Stage 1 is a transformer stage of width 48"):
        LaleConfig(
            num_attention_heads=(1, 5, 4, 8), block_types=("convmixer", "transformer", "transformer", "transformer")
        )
