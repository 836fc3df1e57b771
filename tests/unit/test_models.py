"""Contract tests over every architecture x {tiny-bert, tiny-gpt2}, plus each architecture's own promise."""

from __future__ import annotations

import time
import typing

import pytest
import torch
from model_features import PROMPTS, RESPONSES, encode_features

from raw_rm.config import ModelConfig
from raw_rm.data.batching import encode
from raw_rm.models import (
    MODEL_CLASSES,
    CrossAttentionRewardModel,
    HierarchicalRewardModel,
    MultiHeadRewardModel,
    MultiObjectiveRewardModel,
    RewardModel,
    SeparateEncoderRewardModel,
    build_model,
    predict_reward,
)
from raw_rm.models.backbones import pool

ARCHS = ["concat", "separate", "cross_attention", "multi_objective", "hierarchical", "multihead"]
BACKBONES = ["tiny-bert", "tiny-gpt2"]
CLASSES = {
    "concat": RewardModel,
    "separate": SeparateEncoderRewardModel,
    "cross_attention": CrossAttentionRewardModel,
    "multi_objective": MultiObjectiveRewardModel,
    "hierarchical": HierarchicalRewardModel,
    "multihead": MultiHeadRewardModel,
}
# Variants beyond the defaults whose parameters only some configurations use.
VARIANTS = [
    {"arch": "separate", "shared_encoder": False, "fusion": "product"},
    {"arch": "separate", "fusion": "difference"},
    {"arch": "multi_objective", "learned_gate": True},
    {"arch": "concat", "pooling": "mean"},
    {"arch": "cross_attention", "cross_attention_layers": 2},
]


def make(backbone: str = "tiny-bert", **fields):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=backbone, **fields))


def features_of(model, tokenizer, **kwargs):
    return encode_features(tokenizer, PROMPTS, RESPONSES, model.input_kind, **kwargs)


def test_registry_holds_every_config_arch() -> None:
    assert MODEL_CLASSES == CLASSES
    assert set(typing.get_args(typing.get_type_hints(ModelConfig)["arch"])) == set(ARCHS)


def test_unknown_arch_lists_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        build_model(ModelConfig(arch="mystery", backbone="tiny-bert"))  # type: ignore[arg-type]
    assert str(err.value) == (
        'model.arch: unknown architecture "mystery" '
        "(known: concat, cross_attention, hierarchical, multi_objective, multihead, separate)"
    )


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes_and_finiteness(arch: str, backbone: str) -> None:
    model, tokenizer = make(backbone, arch=arch)
    assert isinstance(model, CLASSES[arch])
    model.eval()
    out = model(**features_of(model, tokenizer))
    assert out.rewards.shape == (2,)
    assert torch.isfinite(out.rewards).all(), out.rewards
    assert (out.members is None) == (arch != "multihead")
    assert (out.aspects is None) == (arch != "multi_objective")
    assert (out.segments is None) == (arch != "hierarchical")
    if arch == "multihead":
        assert out.members.shape == (2, 5)
        assert torch.allclose(out.rewards, out.members.mean(-1))
    if arch == "multi_objective":
        assert out.aspects.shape == (2, 3)
    if arch == "hierarchical":
        # Row 0's response has three sentences, row 1's one ("No.").
        assert out.segments.shape == (2, 3)
        assert out.segment_mask.tolist() == [[True, True, True], [True, False, False]]
        assert out.segments[1, 1:].tolist() == [0.0, 0.0]
    # Different texts get different rewards (a model ignoring its input would fail here).
    assert abs(out.rewards[0] - out.rewards[1]) > 1e-6


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize(
    "fields", [{"arch": a} for a in ARCHS] + VARIANTS, ids=lambda f: "-".join(f"{v}" for v in f.values())
)
def test_gradient_reaches_every_trainable_parameter(fields: dict, backbone: str) -> None:
    model, tokenizer = make(backbone, **fields)
    out = model(**features_of(model, tokenizer))
    out.rewards.sum().backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    zero = [name for name, p in model.named_parameters() if p.requires_grad and not torch.any(p.grad != 0)]
    if fields.get("fusion") == "difference":
        # r - p with one encoder: the trunk's last LayerNorm bias adds the same vector to both and cancels.
        assert zero == ["trunk.ln_f.bias" if backbone == "tiny-gpt2" else "trunk.encoder.layer.1.output.LayerNorm.bias"]
    else:
        assert zero == []


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_left_and_right_padding_agree_with_unpadded(arch: str) -> None:
    model, tokenizer = make("tiny-gpt2", arch=arch)
    model.eval()
    right = features_of(model, tokenizer, padding_side="right")
    left = features_of(model, tokenizer, padding_side="left")
    mask_name = "response_attention_mask" if model.input_kind == "split" else "attention_mask"
    assert right[mask_name][1, -1] == 0 and left[mask_name][1, 0] == 0, "the batch must contain padding"
    with torch.no_grad():
        r_right = model(**right).rewards
        r_left = model(**left).rewards
        alone = torch.cat(
            [
                model(**encode_features(tokenizer, [p], [r], model.input_kind)).rewards
                for p, r in zip(PROMPTS, RESPONSES)
            ]
        )
    torch.testing.assert_close(r_left, r_right, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_padding_id_never_decides_pooling(backbone: str) -> None:
    """Pooling follows attention_mask: padding with the EOS id (pad == eos) leaves rewards unchanged."""
    model, tokenizer = make(backbone, arch="concat")
    model.eval()
    feats = features_of(model, tokenizer)
    eos_padded = dict(feats)
    eos_padded["input_ids"] = torch.where(feats["attention_mask"] == 1, feats["input_ids"], tokenizer.sep_token_id)
    assert (eos_padded["input_ids"][1] == tokenizer.sep_token_id).sum() > 2, "row 1 must be padded"
    with torch.no_grad():
        torch.testing.assert_close(model(**eos_padded).rewards, model(**feats).rewards, atol=1e-6, rtol=0)


def test_pool_by_hand() -> None:
    # row 0: [0,1],[2,3],[4,5]; row 1: [6,7],[8,9],[10,11]
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right padded, left padded
    assert pool(hidden, mask, "last").tolist() == [[2.0, 3.0], [10.0, 11.0]]
    assert pool(hidden, mask, "cls").tolist() == [[0.0, 1.0], [8.0, 9.0]]
    assert pool(hidden, mask, "mean").tolist() == [[1.0, 2.0], [9.0, 10.0]]


def test_tiny_gpt2_tokenizer_conventions() -> None:
    model, tokenizer = make("tiny-gpt2")
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == ("[PAD]", "[SEP]", "[CLS]")
    assert tokenizer.padding_side == "right"
    assert "token_type_ids" not in tokenizer("a", "b")
    assert model.hf.config.pad_token_id == tokenizer.pad_token_id == 0


def test_tiny_backbones_are_seeded_and_leave_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = build_model(ModelConfig(backbone="tiny-bert"))
    assert torch.equal(torch.rand(3), expected_next)
    torch.manual_seed(7)
    b, _ = build_model(ModelConfig(backbone="tiny-bert"))
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_dropout_comes_from_config() -> None:
    bert, _ = make("tiny-bert", dropout=0.37)
    assert bert.hf.config.classifier_dropout == 0.37
    assert bert.hf.dropout.p == 0.37
    gpt2, _ = make("tiny-gpt2", dropout=0.37)
    assert gpt2.dropout.p == 0.37
    heads, _ = make("tiny-bert", arch="multihead", dropout=0.25)
    assert heads.dropout.p == 0.25


def test_multi_objective_weights_change_at_inference() -> None:
    model, tokenizer = make(arch="multi_objective")
    model.eval()
    feats = features_of(model, tokenizer)
    with torch.no_grad():
        before = model(**feats)
        a = before.aspects
        # Default weights: equal thirds.
        torch.testing.assert_close(before.rewards, (a[:, 0] + a[:, 1] + a[:, 2]) / 3, atol=1e-6, rtol=0)
        model.set_aspect_weights([2.0, -1.0, 0.5])
        after = model(**feats)
        torch.testing.assert_close(after.aspects, a)
        torch.testing.assert_close(after.rewards, 2.0 * a[:, 0] - 1.0 * a[:, 1] + 0.5 * a[:, 2], atol=1e-6, rtol=0)
        model.set_aspect_weights({"honesty": 1.0, "helpfulness": 0.0, "harmlessness": 0.0})
        torch.testing.assert_close(model(**feats).rewards, a[:, 2], atol=1e-6, rtol=0)
    assert model.metadata.aspects == ["helpfulness", "harmlessness", "honesty"]
    assert model.metadata.aspect_weights == [0.0, 0.0, 1.0]
    assert model.model_cfg.aspect_weights == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError) as err:
        model.set_aspect_weights({"helpfulness": 1.0})
    assert str(err.value) == (
        "set_aspect_weights: expected weights for ['helpfulness', 'harmlessness', 'honesty'], got ['helpfulness']"
    )
    with pytest.raises(ValueError) as err:
        model.set_aspect_weights([1.0, 2.0])
    assert str(err.value) == "set_aspect_weights: expected 3 weights, got 2"


def test_multi_objective_learned_gate_is_a_convex_combination() -> None:
    model, tokenizer = make(arch="multi_objective", learned_gate=True)
    model.eval()
    with torch.no_grad():
        out = model(**features_of(model, tokenizer))
    low, high = out.aspects.min(-1).values, out.aspects.max(-1).values
    assert torch.all(out.rewards >= low - 1e-6) and torch.all(out.rewards <= high + 1e-6)
    with pytest.raises(ValueError) as err:
        model.set_aspect_weights([1.0, 1.0, 1.0])
    assert str(err.value) == "set_aspect_weights: this model combines aspects with a learned gate (learned_gate=true)"
    with pytest.raises(ValueError) as err:
        make(arch="multi_objective", learned_gate=True, aspect_weights=[1.0, 1.0, 1.0])
    assert str(err.value) == "model.aspect_weights is unused when model.learned_gate is true: set one of them"


def test_hierarchical_reward_is_mean_segment_reward_plus_response_reward() -> None:
    model, tokenizer = make(arch="hierarchical")
    model.eval()
    with torch.no_grad():  # constant heads make the aggregation checkable by hand
        model.segment_head.weight.zero_()
        model.segment_head.bias.fill_(0.5)
        model.response_head.weight.zero_()
        model.response_head.bias.fill_(-2.0)
    feats = features_of(model, tokenizer)
    feats["segment_ids"][1] = -1  # row 1: no sentence survived (e.g. a truncated response)
    with torch.no_grad():
        out = model(**feats)
    assert out.segments.tolist() == [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]
    assert out.segment_mask.tolist() == [[True, True, True], [False, False, False]]
    assert out.rewards.tolist() == [-1.5, -2.0]


def test_multihead_members_are_independent_and_bootstrap_masks_are_poisson() -> None:
    model, tokenizer = make(arch="multihead", num_heads=4, bootstrap=True)
    weights = [head.weight for head in model.heads]
    assert all(not torch.equal(weights[i], weights[j]) for i in range(4) for j in range(i + 1, 4))
    model.eval()
    with torch.no_grad():
        out = model(**features_of(model, tokenizer))
    assert out.members.shape == (2, 4)
    assert len(set(out.members[0].tolist())) == 4
    assert model.uses_bootstrap is True
    mask = model.bootstrap_mask(20000, torch.Generator().manual_seed(0))
    assert mask.shape == (20000, 4)
    assert torch.equal(mask, mask.round()) and mask.min() == 0
    assert torch.equal(mask, model.bootstrap_mask(20000, torch.Generator().manual_seed(0)))
    # Poisson(1): mean 1, P(0) = e^-1 = 0.3679; 80,000 draws put both within 0.01.
    assert abs(mask.mean().item() - 1.0) < 0.01
    assert abs((mask == 0).float().mean().item() - 0.3679) < 0.01


@pytest.mark.parametrize("arch", ["separate", "cross_attention"])
def test_split_models_read_the_prompt(arch: str) -> None:
    model, tokenizer = make(arch=arch)
    model.eval()
    same_response = [RESPONSES[0], RESPONSES[0]]
    with torch.no_grad():
        out = model(**encode_features(tokenizer, PROMPTS, same_response, "split"))
    assert abs(out.rewards[0] - out.rewards[1]) > 1e-6


def test_separate_encoders_do_not_share_weights_when_asked() -> None:
    model, _ = make(arch="separate", shared_encoder=False)
    assert model.response_trunk is not None
    assert model.response_trunk.embeddings.word_embeddings.weight is not model.trunk.embeddings.word_embeddings.weight
    shared, _ = make(arch="separate")
    assert shared.response_trunk is None


def test_cross_attention_tolerates_an_empty_prompt() -> None:
    model, tokenizer = make("tiny-gpt2", arch="cross_attention")
    model.eval()
    feats = encode_features(tokenizer, PROMPTS, RESPONSES, "split")
    feats["prompt_attention_mask"][1] = 0  # no prompt token at all in row 1
    with torch.no_grad():
        out = model(**feats)
    assert torch.isfinite(out.rewards).all(), out.rewards


def test_packaged_minilm_builds_offline() -> None:
    start = time.perf_counter()
    model, tokenizer = build_model(ModelConfig())
    seconds = time.perf_counter() - start
    assert isinstance(model, RewardModel) and model.training
    assert model.hf.config.hidden_size == 384 and model.hf.config.num_hidden_layers == 6
    assert model.metadata.base_model == "minilm"
    model.eval()
    with torch.no_grad():
        out = model(**features_of(model, tokenizer))
    assert torch.isfinite(out.rewards).all()
    print(f"minilm build_model: {seconds:.2f} s")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_batching_concat_encoding_is_the_tokenizers_pair_encoding(backbone: str) -> None:
    """What makes transformers parity hold through raw_rm's own data path."""
    _, tokenizer = make(backbone)
    ours = encode(tokenizer, PROMPTS, RESPONSES, max_len_tokens=128, input_kind="concat").features
    reference = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


@pytest.mark.parametrize("arch", ARCHS)
def test_predict_reward_scores_one_pair_and_restores_the_mode(arch: str) -> None:
    model, tokenizer = make("tiny-gpt2", arch=arch)
    assert model.training
    value = predict_reward(model, tokenizer, PROMPTS[0], RESPONSES[0])
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = model(**encode_features(tokenizer, PROMPTS[:1], RESPONSES[:1], model.input_kind)).rewards[0]
    assert value == pytest.approx(expected.item(), abs=1e-6)


def test_backbone_dropout_sets_every_dropout_inside_the_backbone() -> None:
    from raw_rm.config import ModelConfig
    from raw_rm.models import build_model

    model, _ = build_model(ModelConfig(backbone="tiny-bert", backbone_dropout=0.0))
    config = model.backbone_config
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.0, 0.0)
    default, _ = build_model(ModelConfig(backbone="tiny-bert"))
    assert default.backbone_config.hidden_dropout_prob == 0.1  # None keeps the backbone's own setting
    gpt2, _ = build_model(ModelConfig(backbone="tiny-gpt2", backbone_dropout=0.0))
    assert (gpt2.backbone_config.resid_pdrop, gpt2.backbone_config.attn_pdrop, gpt2.backbone_config.embd_pdrop) == (
        0.0,
        0.0,
        0.0,
    )


def test_a_bf16_checkpoint_loads_with_fp32_weights_for_training(tmp_path) -> None:
    # transformers 5 loads in the saved dtype: without the cast a bf16 LLM would train with bf16 AdamW updates.
    from transformers import AutoModelForSequenceClassification

    from raw_rm.models.backbones import backbone_config, load_tokenizer

    tok = load_tokenizer("tiny-bert")
    config = backbone_config("tiny-bert", tok)
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).to(torch.bfloat16).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path).dtype == torch.bfloat16  # the trap
    model, _ = build_model(ModelConfig(backbone=str(tmp_path)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_freeze_lower_layers_keeps_the_top_layers_final_norm_and_heads_trainable():
    from raw_rm.models.backbones import freeze_lower_layers, layer_stack

    model, _ = build_model(ModelConfig(backbone="tiny-gpt2", arch="multihead", train_layers=1))
    trunk = model.trunk
    layers = layer_stack(trunk)
    assert len(layers) == trunk.config.num_hidden_layers == 2
    assert all(p.requires_grad for p in layers[1].parameters()) and not any(
        p.requires_grad for p in layers[0].parameters()
    )
    assert trunk.ln_f.weight.requires_grad  # registered after the layers: part of the top
    assert not trunk.wte.weight.requires_grad and not trunk.wpe.weight.requires_grad
    assert all(p.requires_grad for p in model.heads.parameters())
    trainable, total = freeze_lower_layers(model, 0)  # heads on frozen features
    assert (
        trainable
        == sum(p.numel() for p in model.heads.parameters()) + trunk.ln_f.weight.numel() + trunk.ln_f.bias.numel()
    )
    assert total == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="train_layers=3, but GPT2Model has 2 layers"):
        freeze_lower_layers(model, 3)


def test_freeze_lower_layers_reaches_both_encoders_of_a_separate_model():
    model, _ = build_model(ModelConfig(backbone="tiny-bert", arch="separate", shared_encoder=False, train_layers=1))
    trunks = [m for m in model.modules() if type(m).__name__ == "BertModel"]
    assert len(trunks) == 2
    for trunk in trunks:
        assert not trunk.embeddings.word_embeddings.weight.requires_grad
        assert [any(p.requires_grad for p in layer.parameters()) for layer in trunk.encoder.layer] == [False, True]


def test_train_layers_must_not_be_negative():
    from raw_rm.config import ConfigError

    with pytest.raises(ConfigError, match="model.train_layers"):
        ModelConfig(train_layers=-1)
