"""Decoder backbones (Qwen2, Llama, Mistral shapes) and the memory levers: each keeps the results right."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_features import PROMPTS, RESPONSES, encode_features
from transformers import (
    AutoModelForSequenceClassification,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    ViTConfig,
)

from raw_rm.config import ConfigError, ModelConfig
from raw_rm.data.packing import pack_order, pack_sequences
from raw_rm.data.readers import read_records
from raw_rm.models import build_model, load_model, save_model
from raw_rm.models.backbones import load_tokenizer
from raw_rm.models.levers import lora_layers

DECODERS = ["tiny-qwen2", "tiny-llama"]
MORE_PROMPTS = PROMPTS + ["x", "What is the capital of France, and why is it there?"]
MORE_RESPONSES = RESPONSES + ["a b c d e f g h", "Paris. Rivers and trade."]


def make(backbone: str, **fields):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=backbone, dropout=0.0, backbone_dropout=0.0, **fields))


def sharpen(model) -> None:
    """Scale the score head so rewards are O(1): a 1e-5 tolerance then means something."""
    with torch.no_grad():
        model.hf.score.weight.mul_(50.0)


def bt_loss(rewards: torch.Tensor) -> torch.Tensor:
    half = rewards.shape[0] // 2
    return -F.logsigmoid(rewards[:half] - rewards[half:]).mean()


@pytest.mark.parametrize(
    "backbone,hf_class",
    [("tiny-qwen2", "Qwen2ForSequenceClassification"), ("tiny-llama", "LlamaForSequenceClassification")],
)
def test_decoder_saves_as_a_transformers_seqcls_model_with_the_same_scores(backbone, hf_class, tmp_path) -> None:
    model, tokenizer = make(backbone)
    sharpen(model)
    model.eval()
    features = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    with torch.no_grad():
        expected = model(**features).rewards
    save_model(model, tokenizer, tmp_path / "m")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert type(hf).__name__ == hf_class
    loaded, loaded_tokenizer = load_model(tmp_path / "m")
    assert torch.equal(
        encode_features(loaded_tokenizer, PROMPTS, RESPONSES, "concat")["input_ids"], features["input_ids"]
    )
    with torch.no_grad():
        torch.testing.assert_close(hf(**features).logits[:, 0], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded(**features).rewards, expected, atol=1e-5, rtol=0)
    assert expected.abs().max() > 0.1  # the tolerance is small against the rewards compared


def test_a_local_causal_lm_checkpoint_is_a_backbone(tmp_path) -> None:
    tokenizer = load_tokenizer("tiny-gpt2")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1)
    lm = Qwen2ForCausalLM(config)
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    model, _ = build_model(ModelConfig(backbone=str(tmp_path / "lm")))
    assert type(model.hf).__name__ == "Qwen2ForSequenceClassification"
    assert model.pooling == "last"
    lm_layer = lm.model.layers[1].mlp.down_proj.weight
    assert torch.equal(model.hf.model.layers[1].mlp.down_proj.weight, lm_layer)


def test_a_backbone_that_is_not_a_sequence_model_is_refused(tmp_path) -> None:
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "vit"
    )
    load_tokenizer("tiny-bert").save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError) as err:
        build_model(ModelConfig(backbone=str(tmp_path / "vit")))
    assert str(err.value) == (
        f"model.backbone={tmp_path / 'vit'}: model_type 'vit' is not a text sequence model (transformers has no "
        "AutoModelForSequenceClassification for it); expected an encoder (BERT, DeBERTa, MiniLM) or a decoder "
        "(GPT-2, Llama, Qwen2, Mistral, Gemma)"
    )


def test_conversations_render_through_the_decoder_chat_template() -> None:
    tokenizer = load_tokenizer("tiny-qwen2")
    row = {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    pair = read_records([row], tokenizer=tokenizer).records[0]
    assert pair.prompt == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert (pair.chosen, pair.rejected) == ("Hello.", "No.")


@pytest.mark.parametrize("backbone", DECODERS)
def test_gradient_checkpointing_gives_the_same_gradients(backbone) -> None:
    grads = []
    for checkpointing in (False, True):
        model, tokenizer = make(backbone, gradient_checkpointing=checkpointing)
        model.train()
        assert model.hf.model.is_activation_checkpointing is checkpointing
        features = encode_features(tokenizer, MORE_PROMPTS, MORE_RESPONSES, "concat")
        bt_loss(model(**features).rewards).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == sum(1 for _ in model.parameters())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_attention_implementations_agree_and_flash_attention_needs_its_package() -> None:
    rewards = []
    for impl in ("sdpa", "eager"):
        model, tokenizer = make("tiny-qwen2", attn_implementation=impl)
        model.eval()
        assert model.hf.config._attn_implementation == impl
        with torch.no_grad():
            rewards.append(model(**encode_features(tokenizer, PROMPTS, RESPONSES, "concat")).rewards)
    torch.testing.assert_close(rewards[1], rewards[0], atol=1e-6, rtol=0)
    if importlib.util.find_spec("flash_attn") is not None:
        return  # flash-attn installed: the missing-package error cannot happen
    with pytest.raises(ValueError) as err:
        make("tiny-qwen2", attn_implementation="flash_attention_2")
    assert str(err.value) == (
        "model.attn_implementation=flash_attention_2: the flash-attn package is not installed (it builds for CUDA "
        "GPUs only: pip install flash-attn --no-build-isolation); use sdpa (the default) or eager"
    )


def test_lora_trains_only_adapters_and_head_and_the_merged_export_scores_the_same(tmp_path) -> None:
    model, tokenizer = make("tiny-qwen2", lora_rank=4, lora_targets=["q_proj", "v_proj", "down_proj"])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(
        [
            f"hf.model.layers.{i}.{m}.lora_{ab}.default.weight"
            for i in range(2)
            for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
            for ab in "AB"
        ]
        + ["hf.score.weight"]
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    features = encode_features(tokenizer, MORE_PROMPTS, MORE_RESPONSES, "concat")
    model.eval()
    with torch.no_grad():
        initial = model(**features).rewards
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        bt_loss(model(**features).rewards).backward()
        optimizer.step()
    changed = sorted(n for n, p in model.named_parameters() if not torch.equal(p, before[n]))
    assert changed == trainable
    model.eval()
    with torch.no_grad():
        expected = model(**features).rewards
    save_model(model, tokenizer, tmp_path / "m")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert type(hf.model.layers[0].self_attn.q_proj) is torch.nn.Linear and not lora_layers(hf)
    loaded, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(hf(**features).logits[:, 0], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded(**features).rewards, expected, atol=1e-5, rtol=0)
    assert (expected - initial).abs().max() > 1e-2  # training moved the scores the export must reproduce
    assert lora_layers(model)  # saving did not merge the training model in place


def test_a_lora_target_that_matches_nothing_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        make("tiny-llama", lora_rank=4, lora_targets=["q_proj", "c_attn"])
    assert str(err.value) == (
        "model.lora_targets: ['c_attn'] match no Linear module of LlamaModel (its Linear names: down_proj, gate_proj, "
        "k_proj, o_proj, q_proj, up_proj, v_proj)"
    )
    with pytest.raises(ConfigError, match=re.escape("model.lora_rank=4 and model.train_layers=1: choose one")):
        ModelConfig(lora_rank=4, train_layers=1)


def test_pack_sequences_worked_example() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [0, 0, 8, 9, 10]])  # right and left padding
    mask = (ids != 0).long()
    packed = pack_sequences(ids, mask, pad_id=0, row_tokens=8)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 8, 9, 10], [6, 7, 0, 0, 0, 0, 0, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert packed["pack_index"].tolist() == [[0, 4], [1, 1], [0, 7]]
    assert pack_order([3, 3, 3], 6) == [[0, 1], [2]]
    with pytest.raises(ValueError, match=re.escape("packing: sequence 0 has 5 tokens, over row_tokens=4")):
        pack_sequences(ids, mask, pad_id=0, row_tokens=4)


def _tiny_mistral(tmp_path: Path) -> str:
    tokenizer = load_tokenizer("tiny-gpt2")
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(2)
    MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    tokenizer.save_pretrained(tmp_path / "mistral")
    return str(tmp_path / "mistral")


@pytest.mark.parametrize("backbone", DECODERS + ["tiny-gpt2", "mistral"])
def test_packing_gives_the_padded_rewards_loss_and_gradients(backbone, tmp_path) -> None:
    model, tokenizer = make(_tiny_mistral(tmp_path) if backbone == "mistral" else backbone)
    sharpen(model)
    model.train()
    padded = encode_features(tokenizer, MORE_PROMPTS, MORE_RESPONSES, "concat")
    padded.pop("token_type_ids", None)
    packed = pack_sequences(
        padded["input_ids"],
        padded["attention_mask"],
        pad_id=tokenizer.pad_token_id,
        row_tokens=2 * padded["input_ids"].shape[1],
    )
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    results = []
    for features in (padded, packed):
        model.zero_grad()
        rewards = model(**features).rewards
        loss = bt_loss(rewards)
        loss.backward()
        results.append((rewards.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=0)
    for packed_grad, padded_grad in zip(results[1][2], results[0][2]):
        torch.testing.assert_close(packed_grad, padded_grad, atol=1e-5, rtol=1e-4)


def test_packing_an_encoder_is_refused() -> None:
    model, tokenizer = make("tiny-bert", pooling="last")
    features = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    packed = pack_sequences(features["input_ids"], features["attention_mask"], pad_id=0)
    with pytest.raises(ValueError) as err:
        model(**packed)
    assert str(err.value) == (
        "packing: backbone model_type 'bert' cannot take packed rows (sequences attending only within themselves "
        "needs a decoder that reads position_ids: gpt2, llama, mistral, qwen2); train it padded"
    )


def test_a_lora_ensemble_stores_one_base_and_scores_like_its_members(tmp_path) -> None:
    from raw_rm.models.lora_ensemble import ADAPTERS_FILE, save_lora_ensemble

    member_dirs, expected = [], []
    features = None
    for k in range(3):
        torch.manual_seed(10 + k)
        model, tokenizer = build_model(
            ModelConfig(backbone="tiny-qwen2", dropout=0.0, lora_rank=2, lora_targets=["q_proj", "v_proj"])
        )
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:  # stands in for training: adapters and head moved away from their start
                    p.normal_(0.0, 0.3)
        model.metadata.reward_mean, model.metadata.reward_std = 0.1 * k, 1.0 + k
        features = encode_features(tokenizer, MORE_PROMPTS, MORE_RESPONSES, "concat")
        save_model(model, tokenizer, tmp_path / f"m{k}")
        member_dirs.append(tmp_path / f"m{k}")
        loaded, _ = load_model(tmp_path / f"m{k}")
        with torch.no_grad():
            expected.append((loaded(**features).rewards - 0.1 * k) / (1.0 + k))
    save_lora_ensemble(tmp_path / "ens", member_dirs, backbone="tiny-qwen2")
    base_bytes = (tmp_path / "ens" / "base" / "model.safetensors").stat().st_size
    adapter_bytes = (tmp_path / "ens" / ADAPTERS_FILE).stat().st_size
    assert adapter_bytes < base_bytes / 3  # three members cost less than one more base
    ensemble, _ = load_model(tmp_path / "ens")
    assert sum(p.numel() for p in ensemble.parameters()) < 1.5 * sum(p.numel() for p in loaded.parameters())
    with torch.no_grad():
        out = ensemble(**features)
    torch.testing.assert_close(out.members, torch.stack(expected, dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.rewards, torch.stack(expected, dim=1).mean(1), atol=1e-5, rtol=0)
    ensemble.metadata.temperature = 2.5  # as a calibration fit would set it; save_model keeps the one base
    save_model(ensemble, tokenizer, tmp_path / "ens")
    save_model(ensemble, tokenizer, tmp_path / "copy")
    for folder in ("ens", "copy"):
        reloaded, _ = load_model(tmp_path / folder)
        assert reloaded.metadata.temperature == 2.5 and reloaded.num_members == 3
    assert not (tmp_path / "copy" / "ensemble.json").exists()
    full, _ = build_model(ModelConfig(backbone="tiny-qwen2", dropout=0.0))
    save_model(full, tokenizer, tmp_path / "full")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'full'}: member 0 is not a LoRA concat decoder")):
        save_lora_ensemble(tmp_path / "bad", [tmp_path / "full"], backbone="tiny-qwen2")
    with pytest.raises(ValueError, match="differs from tiny-llama's and is not a LoRA target"):
        save_lora_ensemble(tmp_path / "bad", member_dirs[:1], backbone="tiny-llama")


def _trainer(tmp_path, backbone: str, packing: bool):
    from raw_rm.config import Config, DataConfig, TrainConfig
    from raw_rm.data.records import PreferencePair
    from raw_rm.train.loop import RewardModelTrainer

    cfg = Config(
        data=DataConfig(max_len_tokens=48),
        model=ModelConfig(backbone=backbone, dropout=0.0, backbone_dropout=0.0),
        train=TrainConfig(
            batch_size=6,
            lr=3e-3,
            warmup_ratio=0.0,
            schedule="constant",
            precision="fp32",
            progress=False,
            output_dir=str(tmp_path / f"run{packing}"),
            packing=packing,
        ),
    )
    records = [
        PreferencePair(
            prompt=f"question {i} " + "word " * (i % 5), chosen="a helpful answer " * (1 + i % 3), rejected="no"
        )
        for i in range(6)
    ]
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg.model)
    return RewardModelTrainer(cfg, model, tokenizer, records, [])


def record_gradients(trainer, into: list) -> None:
    """Make ``trainer``'s optimiser append the gradients to ``into`` before each step."""
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        into.append([p.grad.clone() for p in trainer.model.parameters()])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step


def test_training_with_packing_repeats_the_padded_run(tmp_path) -> None:
    padded, packed = _trainer(tmp_path, "tiny-qwen2", False), _trainer(tmp_path, "tiny-qwen2", True)
    batches = [t.collate(list(range(6))) for t in (padded, packed)]
    assert "position_ids" in batches[1]["features"] and "position_ids" not in batches[0]["features"]
    assert batches[1]["n_padded"] < batches[0]["n_padded"] and batches[1]["n_tokens"] == batches[0]["n_tokens"]
    # The gradients the optimiser sees are compared, not the weights after it: Adam's first step is about
    # lr * sign(g), which turns float noise in near-zero gradients into visible weight differences.
    grads: list[list[torch.Tensor]] = []
    for trainer in (padded, packed):
        record_gradients(trainer, grads)
    for _ in range(3):
        losses = [t.train_step(b)["loss"] for t, b in zip((padded, packed), batches)]
        assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    names = [n for n, _ in padded.model.named_parameters()]
    for name, g, h in zip(names, grads[0], grads[1], strict=True):
        torch.testing.assert_close(h, g, atol=1e-6, rtol=1e-4, msg=name)
    with pytest.raises(ConfigError) as err:
        _trainer(tmp_path, "tiny-bert", True)
    assert str(err.value).startswith("train.packing=true: packing: backbone model_type 'bert' cannot take packed rows")
