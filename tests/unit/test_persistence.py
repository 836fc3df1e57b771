"""save_model / load_model round trips, the Hugging Face layout and its parity with transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_features import PROMPTS, RESPONSES, encode_features
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Model

from raw_rm.config import ModelConfig
from raw_rm.models import RewardMetadata, RewardModel, build_model, load_model, predict_reward, save_model
from raw_rm.models.backbones import backbone_config, load_tokenizer

ARCHS = ["concat", "separate", "cross_attention", "multi_objective", "hierarchical", "multihead"]
VARIANTS = [{"arch": a} for a in ARCHS] + [
    {"arch": "separate", "shared_encoder": False, "fusion": "product"},
    {"arch": "multi_objective", "learned_gate": True},
    {"arch": "concat", "pooling": "mean"},
]
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}


def make(backbone: str = "tiny-bert", **fields):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=backbone, **fields))


def rewards(model, features) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**features).rewards


def sharpen_head(model: RewardModel) -> None:
    """Scale the Hugging Face head so rewards are O(1): a 1e-5 tolerance then means something."""
    head = model.hf.score if model.decoder else model.hf.classifier
    with torch.no_grad():
        head.weight.mul_(50.0)


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-gpt2"])
@pytest.mark.parametrize("fields", VARIANTS, ids=lambda f: "-".join(f"{v}" for v in f.values()))
def test_round_trip_scores_identically(fields: dict, backbone: str, tmp_path: Path) -> None:
    model, tokenizer = make(backbone, **fields)
    features = encode_features(tokenizer, PROMPTS, RESPONSES, model.input_kind)
    expected = rewards(model, features)
    save_model(model, tokenizer, tmp_path / "m")
    loaded, loaded_tokenizer = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.model_cfg == model.model_cfg
    assert loaded.metadata == model.metadata
    assert encode_features(loaded_tokenizer, PROMPTS, RESPONSES, loaded.input_kind).keys() == features.keys()
    reloaded_features = encode_features(loaded_tokenizer, PROMPTS, RESPONSES, loaded.input_kind)
    assert all(torch.equal(reloaded_features[k], features[k]) for k in features)
    torch.testing.assert_close(rewards(loaded, features), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fields", VARIANTS, ids=lambda f: "-".join(f"{v}" for v in f.values()))
def test_layout_on_disk(fields: dict, tmp_path: Path) -> None:
    model, tokenizer = make(**fields)
    save_model(model, tokenizer, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert TOKENIZER_FILES <= files
    hf_native = fields == {"arch": "concat"}
    if hf_native:
        assert {"config.json", "model.safetensors"} <= files
        assert not {"raw_rm_model.json", "raw_rm_model.safetensors", "backbone"} & files
        record = json.loads((tmp_path / "config.json").read_text())["raw_rm"]
        assert record["arch"] == "concat" and record["format_version"] == 1
    else:
        assert {"raw_rm_model.json", "raw_rm_model.safetensors", "backbone"} <= files
        assert not {"config.json", "model.safetensors"} & files
        assert (tmp_path / "backbone" / "config.json").is_file()
        record = json.loads((tmp_path / "raw_rm_model.json").read_text())
        assert record["arch"] == fields["arch"]
    assert record["model_cfg"]["backbone"] == "tiny-bert"
    assert record["metadata"]["base_model"] == "tiny-bert"


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-gpt2"])
def test_transformers_loads_the_directory_and_scores_the_same(backbone: str, tmp_path: Path) -> None:
    model, tokenizer = make(backbone)
    sharpen_head(model)
    save_model(model, tokenizer, tmp_path)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    encoded = hf_tokenizer(PROMPTS, RESPONSES, padding=True, return_tensors="pt")
    assert encoded["attention_mask"][1, -1] == 0, "row 1 must be padded"
    with torch.no_grad():
        hf_scores = hf(**encoded).logits[:, 0]
    ours = rewards(model, dict(encoded))
    assert hf_scores.abs().max() > 0.1, hf_scores  # O(1) rewards: the tolerance below is meaningful
    torch.testing.assert_close(hf_scores, ours, atol=1e-5, rtol=0)
    loaded, _ = load_model(tmp_path)
    torch.testing.assert_close(rewards(loaded, dict(encoded)), hf_scores, atol=1e-5, rtol=0)
    # End to end: raw_rm's own encoding (raw_rm.data.batching) inside predict_reward gives the same numbers.
    ours_one_by_one = [predict_reward(loaded, tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert ours_one_by_one == pytest.approx(hf_scores.tolist(), abs=1e-5)


def test_decoder_with_pad_equal_to_eos_gets_a_distinct_pad(tmp_path: Path) -> None:
    """A GPT-2 checkpoint whose tokenizer pads with EOS: texts ending in EOS still pool at that EOS,
    under either padding side, in raw_rm and in transformers alike."""
    source = tmp_path / "gpt2-pad-is-eos"
    tok = load_tokenizer("tiny-gpt2")
    tok.pad_token = tok.eos_token
    config = backbone_config("tiny-gpt2", tok)
    assert config.pad_token_id == config.eos_token_id == tok.convert_tokens_to_ids("[SEP]")
    torch.manual_seed(0)
    GPT2Model(config).save_pretrained(source)
    tok.save_pretrained(source)

    model, tokenizer = make(str(source))
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == 30522
    assert tokenizer.eos_token_id == 102 and model.hf.config.pad_token_id == 30522
    assert model.hf.get_input_embeddings().num_embeddings == 30523
    sharpen_head(model)
    save_model(model, tokenizer, tmp_path / "rm")
    shutil.rmtree(source)  # the saved model must not need its original backbone

    right = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    left = encode_features(tokenizer, PROMPTS, RESPONSES, "concat", padding_side="left")
    assert right["input_ids"][0, -1] == 102, "row 0 must end with EOS"
    assert right["input_ids"][1, -1] == 30522, "row 1 must be padded with the new pad token"
    alone = torch.cat(
        [rewards(model, encode_features(tokenizer, [p], [r], "concat")) for p, r in zip(PROMPTS, RESPONSES)]
    )
    torch.testing.assert_close(rewards(model, right), alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(rewards(model, left), alone, atol=1e-5, rtol=0)

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    encoded = hf_tokenizer(PROMPTS, RESPONSES, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(hf(**encoded).logits[:, 0], alone, atol=1e-5, rtol=0)
    loaded, _ = load_model(tmp_path / "rm")
    torch.testing.assert_close(rewards(loaded, right), alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["concat", "multihead"])
def test_metadata_round_trips(arch: str, tmp_path: Path) -> None:
    model, tokenizer = make(arch=arch)
    model.metadata = RewardMetadata(
        reward_mean=0.25,
        reward_std=1.75,
        temperature=1.3,
        aspects=["helpfulness"],
        aspect_weights=[1.0],
        data_fingerprint="sha256:0123abcd",
        base_model="tiny-bert",
        raw_rm_version="0.1.0",
        reference={"reward_hist": {"edges": [-1.0, 0.0, 1.0], "counts": [3, 4]}, "length_hist": {}},
        version="v7",
    )
    save_model(model, tokenizer, tmp_path)
    loaded, _ = load_model(tmp_path)
    assert loaded.metadata == model.metadata


def test_non_json_metadata_fails_before_writing(tmp_path: Path) -> None:
    model, tokenizer = make()
    model.metadata.reference = {"counts": torch.tensor([1, 2])}
    with pytest.raises(TypeError):
        save_model(model, tokenizer, tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []


def test_multi_objective_weights_set_at_inference_survive_saving(tmp_path: Path) -> None:
    model, tokenizer = make(arch="multi_objective")
    model.set_aspect_weights([0.2, 0.3, 0.5])
    features = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    expected = rewards(model, features)
    save_model(model, tokenizer, tmp_path)
    loaded, _ = load_model(tmp_path)
    assert loaded.metadata.aspect_weights == [0.2, 0.3, 0.5]
    assert loaded.model_cfg.aspect_weights == [0.2, 0.3, 0.5]
    assert loaded.aspect_weights.tolist() == pytest.approx([0.2, 0.3, 0.5])
    torch.testing.assert_close(rewards(loaded, features), expected, atol=1e-6, rtol=0)


def test_plain_hugging_face_reward_model_loads(tmp_path: Path) -> None:
    model, tokenizer = make()
    model.hf.save_pretrained(tmp_path)  # no raw_rm record in config.json
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_model(tmp_path)
    assert isinstance(loaded, RewardModel)
    assert loaded.model_cfg == ModelConfig(arch="concat", backbone=str(tmp_path))
    assert loaded.metadata == RewardMetadata(base_model=str(tmp_path))
    features = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    torch.testing.assert_close(rewards(loaded, features), rewards(model, features), atol=1e-6, rtol=0)


def test_saving_another_layout_into_the_same_directory_removes_the_old_one(tmp_path: Path) -> None:
    concat, tokenizer = make()
    save_model(concat, tokenizer, tmp_path)
    heads, tokenizer = make(arch="multihead")
    save_model(heads, tokenizer, tmp_path)
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert type(load_model(tmp_path)[0]).__name__ == "MultiHeadRewardModel"
    save_model(concat, tokenizer, tmp_path)
    assert not (tmp_path / "raw_rm_model.json").exists() and not (tmp_path / "backbone").exists()
    assert isinstance(load_model(tmp_path)[0], RewardModel)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_model(tmp_path)
    assert str(err.value) == f"{tmp_path}: not a saved reward model (expected raw_rm_model.json or config.json)"


def test_unsupported_format_version_is_named(tmp_path: Path) -> None:
    model, tokenizer = make(arch="multihead")
    save_model(model, tokenizer, tmp_path)
    record = json.loads((tmp_path / "raw_rm_model.json").read_text())
    record["format_version"] = 99
    (tmp_path / "raw_rm_model.json").write_text(json.dumps(record))
    with pytest.raises(ValueError) as err:
        load_model(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'raw_rm_model.json'}: format_version 99 is not supported (this raw_rm reads 1)"
    )


def test_init_from_continues_a_saved_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, tokenizer = make(arch="multihead", num_heads=3)
    save_model(model, tokenizer, tmp_path)
    features = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    resumed, _ = build_model(ModelConfig(arch="multihead", backbone="tiny-bert", num_heads=3, init_from=str(tmp_path)))
    assert resumed.training
    assert resumed.model_cfg.init_from == str(tmp_path)
    torch.testing.assert_close(rewards(resumed, features), rewards(model, features), atol=1e-6, rtol=0)
    with caplog.at_level("WARNING"):
        build_model(ModelConfig(arch="multihead", backbone="tiny-bert", num_heads=5, init_from=str(tmp_path)))
    assert "keeping the saved model's num_heads=3 (the config asks for num_heads=5)" in caplog.text
    with pytest.raises(ValueError) as err:
        build_model(ModelConfig(arch="concat", backbone="tiny-bert", init_from=str(tmp_path)))
    assert str(err.value) == f"model.init_from: {tmp_path} holds arch 'multihead' but model.arch is 'concat'"


def test_init_from_takes_train_layers_from_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, tokenizer = make(arch="multihead", num_heads=3)
    save_model(model, tokenizer, tmp_path)
    with caplog.at_level("WARNING"):
        resumed, _ = build_model(
            ModelConfig(arch="multihead", backbone="tiny-bert", num_heads=3, train_layers=1, init_from=str(tmp_path))
        )
    assert "train_layers" not in caplog.text  # a training choice, not a difference from the saved model
    assert resumed.model_cfg.train_layers == 1
    assert not resumed.trunk.embeddings.word_embeddings.weight.requires_grad
    assert [any(p.requires_grad for p in layer.parameters()) for layer in resumed.trunk.encoder.layer] == [False, True]
