"""Scoring defaults: the training max length from the model's metadata, and precision auto within a tolerance."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import torch

import raw_rm.inference as inference
from raw_rm.cli.common import explicitly_set
from raw_rm.config import Config, DataConfig, ModelConfig, TrainConfig
from raw_rm.data.records import PreferencePair
from raw_rm.inference import PRECISION_PROBES, RewardModelInference
from raw_rm.models import build_model, load_model, save_model
from raw_rm.models.base import RewardMetadata, effective_max_len
from raw_rm.models.ensemble import EnsembleRewardModel

LONG_PROMPT = "\n\nHuman: " + "tell me about the weather in spring " * 20 + "\n\nAssistant:"
LONG_RESPONSE = " it rains a lot and then the sun comes out " * 20


def _model(seed: int = 0, max_len: int | None = None, side: str | None = None):
    torch.manual_seed(seed)
    model, tok = build_model(ModelConfig(backbone="tiny-bert", dropout=0.0))
    with torch.no_grad():  # spread the rewards (default init gives nearly equal rewards for every text)
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3)
    model.metadata.max_len_tokens, model.metadata.truncation_side = max_len, side
    return model.eval(), tok


# ----------------------------------------------------------------------------------------- max length
def test_precedence_explicit_then_metadata_then_default() -> None:
    model, tok = _model(max_len=64, side="left")
    assert effective_max_len(model, tok) == (64, "the model's training length (metadata.max_len_tokens)")
    assert effective_max_len(model, tok, 32) == (32, "set explicitly; the model was trained at 64")
    old, _ = _model()  # a model saved before the field existed
    assert effective_max_len(old, tok) == (
        512,
        "default: the model does not record its training length (metadata.max_len_tokens not set)",
    )
    assert effective_max_len(old, tok, 1000) == (512, "set explicitly; capped at the tokenizer's limit 512")


def test_inference_scores_at_the_training_length() -> None:
    model, tok = _model(max_len=48, side="left")
    rm = RewardModelInference(model, tokenizer=tok, cache_size=0)
    assert rm.max_len_tokens == 48
    at_48 = rm.predict_reward(LONG_PROMPT, LONG_RESPONSE)
    model.metadata.max_len_tokens = None
    at_default = RewardModelInference(model, tokenizer=tok, cache_size=0)
    assert at_default.max_len_tokens == 512
    explicit_48 = RewardModelInference(model, tokenizer=tok, cache_size=0, max_len_tokens=48)
    assert explicit_48.predict_reward(LONG_PROMPT, LONG_RESPONSE) == pytest.approx(at_48, abs=1e-6)
    assert abs(at_default.predict_reward(LONG_PROMPT, LONG_RESPONSE) - at_48) > 1e-3  # the length matters


def test_metadata_round_trips_and_old_metadata_loads(tmp_path) -> None:
    model, tok = _model(max_len=96, side="left")
    loaded, _ = load_model(save_model(model, tok, tmp_path / "m"))
    assert (loaded.metadata.max_len_tokens, loaded.metadata.truncation_side) == (96, "left")
    old = {k: v for k, v in RewardMetadata().to_dict().items() if k not in ("max_len_tokens", "truncation_side")}
    meta = RewardMetadata.from_dict(old)
    assert (meta.max_len_tokens, meta.truncation_side) == (None, None)


def test_unknown_truncation_side_is_refused() -> None:
    model, tok = _model(max_len=64, side="right")
    with pytest.raises(ValueError) as info:
        effective_max_len(model, tok)
    assert str(info.value) == (
        "metadata.truncation_side: 'right'; this raw_rm truncates 'left' only (the prompt loses its oldest tokens, "
        "the response keeps its end): scores would not match training"
    )


def test_ensemble_without_its_own_length_takes_its_members_longest() -> None:
    (a, tok), (b, _) = _model(0, max_len=48, side="left"), _model(1, max_len=64, side="left")
    ens = EnsembleRewardModel([a, b])
    assert effective_max_len(ens, tok) == (
        64,
        "the model's training length (longest of the members' metadata.max_len_tokens [48, 64])",
    )
    ens.metadata.max_len_tokens = 40
    assert effective_max_len(ens, tok)[0] == 40


def test_trainer_records_the_training_length_and_side() -> None:
    from raw_rm.train.loop import RewardModelTrainer

    model, tok = _model()
    pairs = [PreferencePair(prompt=f"p{i}", chosen="good answer", rejected="bad") for i in range(4)]
    cfg = Config(
        data=DataConfig(max_len_tokens=40),
        model=ModelConfig(backbone="tiny-bert"),
        train=TrainConfig(progress=False, precision="fp32"),
    )
    RewardModelTrainer(cfg, model, tok, pairs, [])
    assert (model.metadata.max_len_tokens, model.metadata.truncation_side) == (40, "left")


def test_explicitly_set_reads_overrides_and_the_config_file(tmp_path) -> None:
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text("data:\n  max_len_tokens: 128\n")
    assert explicitly_set(argparse.Namespace(overrides=["data.max_len_tokens=64"], config=None), "data.max_len_tokens")
    assert explicitly_set(argparse.Namespace(overrides=[], config=str(cfg_file)), "data.max_len_tokens")
    assert not explicitly_set(argparse.Namespace(overrides=["data.limit=5"], config=None), "data.max_len_tokens")
    cfg_file.write_text("data:\n  limit: 5\n")
    assert not explicitly_set(argparse.Namespace(overrides=[], config=str(cfg_file)), "data.max_len_tokens")


# ------------------------------------------------------------------------------------------ precision
@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the device runs bf16 natively, so the tolerance check is what decides (whatever this CPU is)."""
    monkeypatch.setattr(
        inference, "resolve_precision", lambda precision, device: "bf16" if precision != "fp32" else "fp32"
    )


def _probe_drift(model, tok) -> float:
    """max |bf16 - fp32| reward over the probe texts, computed with two separately configured scorers."""
    prompts, responses = [p for p, _ in PRECISION_PROBES], [r for _, r in PRECISION_PROBES]
    fp32 = RewardModelInference(model, tokenizer=tok, cache_size=0).batch_predict(prompts, responses)
    bf16 = RewardModelInference(
        model, tokenizer=tok, cache_size=0, precision="bf16", precision_tolerance=float("inf")
    ).batch_predict(prompts, responses)
    return float(np.max(np.abs(bf16 - fp32)))


def test_auto_keeps_bf16_within_the_tolerance(native_bf16) -> None:
    model, tok = _model()
    drift = _probe_drift(model, tok)
    assert drift > 0  # bf16 does change the rewards: the check has something to measure
    rm = RewardModelInference(model, tokenizer=tok, precision="auto", precision_tolerance=2 * drift)
    assert rm.precision == "bf16" and rm.autocast_dtype == torch.bfloat16
    assert rm.precision_reason == (
        f"auto: native bf16; bf16 rewards within {drift:.4f} reward_std of fp32 on the "
        f"probe texts (tolerance {2 * drift:g})"
    )


def test_auto_falls_back_to_fp32_beyond_the_tolerance_with_a_warning(native_bf16, caplog) -> None:
    model, tok = _model()
    drift = _probe_drift(model, tok)
    with caplog.at_level(logging.WARNING, logger="raw_rm.inference"):
        rm = RewardModelInference(model, tokenizer=tok, precision="auto", precision_tolerance=drift / 2)
    assert rm.precision == "fp32" and rm.autocast_dtype is None
    beyond = f"bf16 rewards {drift:.4f} reward_std from fp32 on the probe texts, beyond the tolerance {drift / 2:g}"
    assert rm.precision_reason == "auto: " + beyond
    assert f"precision auto falls back to fp32: {beyond}" in caplog.text
    # scores are then exactly the fp32 ones
    fp32 = RewardModelInference(model, tokenizer=tok, cache_size=0)
    assert rm.predict_reward("q", "an answer") == fp32.predict_reward("q", "an answer")


def test_explicit_bf16_beyond_the_tolerance_is_kept_with_a_warning(native_bf16, caplog) -> None:
    model, tok = _model()
    with caplog.at_level(logging.WARNING, logger="raw_rm.inference"):
        rm = RewardModelInference(model, tokenizer=tok, precision="bf16", precision_tolerance=0.0)
    assert rm.precision == "bf16"
    assert "precision bf16 as asked, but bf16 rewards" in caplog.text


def test_drift_is_measured_in_reward_std(native_bf16) -> None:
    model, tok = _model()
    drift = _probe_drift(model, tok)
    model.metadata.reward_std = 4.0
    rm = RewardModelInference(model, tokenizer=tok, precision="fp32")
    assert rm.precision_drift(torch.bfloat16) == pytest.approx(drift / 4.0, rel=1e-6)


def test_auto_without_native_bf16_is_fp32_without_a_check(monkeypatch) -> None:
    monkeypatch.setattr(inference, "resolve_precision", lambda precision, device: "fp32")
    model, tok = _model()
    monkeypatch.setattr(RewardModelInference, "precision_drift", lambda *a, **k: pytest.fail("no check without bf16"))
    rm = RewardModelInference(model, tokenizer=tok, precision="auto")
    assert (rm.precision, rm.precision_reason) == ("fp32", "auto: cpu without native bf16")
