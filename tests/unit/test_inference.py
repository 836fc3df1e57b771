"""RewardModelInference: input order restored, cache counts, ranking, temperature, normalisation, URI resolvers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from raw_rm.config import ModelConfig
from raw_rm.inference import RewardModelInference, resolve_model_uri
from raw_rm.models import build_model, save_model

PROMPTS = ["short?", "a much longer prompt " * 6, "mid length prompt here", "q"]
RESPONSES = ["yes", "a long long answer " * 8, "no thanks", "an answer of some medium length"]


@pytest.fixture(scope="module")
def model_and_tok():
    torch.manual_seed(0)
    model, tok = build_model(ModelConfig(backbone="tiny-bert"))
    return model.eval(), tok


def one_by_one(model, tok, prompts, responses):
    rm = RewardModelInference(model, tokenizer=tok, batch_size=1, cache_size=0)
    return np.array([rm.predict_reward(p, r) for p, r in zip(prompts, responses, strict=True)])


def test_batch_predict_restores_input_order(model_and_tok):
    model, tok = model_and_tok
    rm = RewardModelInference(model, tokenizer=tok, batch_size=2)
    batched = rm.batch_predict(PROMPTS, RESPONSES)
    assert batched.shape == (4,)
    np.testing.assert_allclose(batched, one_by_one(model, tok, PROMPTS, RESPONSES), atol=1e-5)
    assert len(set(np.round(batched, 6))) == 4  # distinct, so a permutation would be caught


def test_cpu_forwards_run_over_texts_of_similar_length_and_scores_do_not_change(model_and_tok):
    model, tok = model_and_tok
    rm = RewardModelInference(model, tokenizer=tok, batch_size=3, cache_size=0, max_len_tokens=64)
    # characters per item: 10, 12, 13, 14 | 100 (> 1.25 * 10 + 64) | 256 (capped at 4 * 64), 300 -> 256, 400 -> 256
    items = [("", "x" * n) for n in (12, 100, 10, 300, 13, 256, 14, 400)]
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    assert rm._length_runs(order, items) == [[2, 0, 4], [6], [1], [5, 3, 7]]
    prompts, responses = PROMPTS * 4, [r * k for k in (1, 2, 3, 5) for r in RESPONSES]
    batched = RewardModelInference(model, tokenizer=tok, batch_size=64, cache_size=0).batch_predict(prompts, responses)
    np.testing.assert_allclose(batched, one_by_one(model, tok, prompts, responses), atol=1e-5)


def test_cache_counts_hits_and_misses_and_evicts_lru(model_and_tok):
    model, tok = model_and_tok
    rm = RewardModelInference(model, tokenizer=tok, cache_size=3)
    first = rm.batch_predict(PROMPTS[:3], RESPONSES[:3])
    info = rm.cache_info()
    assert (info.hits, info.misses, info.size, info.max_size) == (0, 3, 3, 3)
    again = rm.batch_predict(PROMPTS[:2], RESPONSES[:2])
    assert rm.cache_info().hits == 2 and rm.cache_info().misses == 3
    np.testing.assert_array_equal(again, first[:2])
    rm.predict_reward(PROMPTS[3], RESPONSES[3])  # evicts the least recently used: item 2
    assert rm.cache_info().size == 3
    rm.predict_reward(PROMPTS[2], RESPONSES[2])
    assert (rm.cache_info().hits, rm.cache_info().misses) == (2, 5)


def test_cache_key_includes_model_version(model_and_tok):
    model, tok = model_and_tok
    rm = RewardModelInference(model, tokenizer=tok)
    rm.predict_reward("p", "r")
    rm.version = "other-weights"
    rm.predict_reward("p", "r")
    assert (rm.cache_info().hits, rm.cache_info().misses) == (0, 2)


def test_rank_responses_best_first(model_and_tok):
    model, tok = model_and_tok
    rm = RewardModelInference(model, tokenizer=tok)
    order, rewards = rm.rank_responses("prompt", RESPONSES)
    assert order == sorted(range(4), key=lambda i: -rewards[i])
    np.testing.assert_allclose(rewards, rm.batch_predict(["prompt"] * 4, RESPONSES))
    with pytest.raises(ValueError, match="no responses to rank"):
        rm.rank_responses("prompt", [])


def test_pair_probability_uses_the_stored_temperature(model_and_tok):
    model, tok = model_and_tok
    rm = RewardModelInference(model, tokenizer=tok)
    ra, rb = rm.batch_predict(["p", "p"], [RESPONSES[0], RESPONSES[1]])
    old = model.metadata.temperature
    try:
        model.metadata.temperature = 0.01
        assert rm.pair_probability("p", RESPONSES[0], RESPONSES[1]) == pytest.approx(
            1 / (1 + math.exp(-(ra - rb) / 0.01))
        )
        model.metadata.temperature = 3.0
        assert rm.pair_probability("p", RESPONSES[0], RESPONSES[1]) == pytest.approx(
            1 / (1 + math.exp(-(ra - rb) / 3.0))
        )
        assert rm.pair_probability("p", RESPONSES[1], RESPONSES[0]) == pytest.approx(
            1 - 1 / (1 + math.exp(-(ra - rb) / 3.0))
        )
    finally:
        model.metadata.temperature = old


def test_normalized_rewards_use_training_statistics(model_and_tok):
    model, tok = model_and_tok
    rm = RewardModelInference(model, tokenizer=tok)
    raw = rm.batch_predict(PROMPTS, RESPONSES)
    mean, std = model.metadata.reward_mean, model.metadata.reward_std
    try:
        model.metadata.reward_mean, model.metadata.reward_std = 0.25, 2.0
        np.testing.assert_allclose(rm.batch_predict(PROMPTS, RESPONSES, normalized=True), (raw - 0.25) / 2.0)
    finally:
        model.metadata.reward_mean, model.metadata.reward_std = mean, std


def test_members_of_a_multihead_model(tmp_path):
    torch.manual_seed(0)
    model, tok = build_model(ModelConfig(arch="multihead", backbone="tiny-bert", num_heads=3))
    rm = RewardModelInference(model, tokenizer=tok)
    members = rm.batch_predict_members(PROMPTS, RESPONSES)
    assert members.shape == (4, 3)
    np.testing.assert_allclose(members.mean(axis=1), rm.batch_predict(PROMPTS, RESPONSES), atol=1e-5)


def test_loads_a_saved_directory_and_resolves_uris_with_an_explicit_resolver(model_and_tok, tmp_path):
    model, tok = model_and_tok
    save_model(model, tok, tmp_path / "m")
    direct = RewardModelInference(model, tokenizer=tok).batch_predict(PROMPTS, RESPONSES)
    asked = []

    def resolver(uri):
        asked.append(uri)
        return tmp_path / uri.split("/")[-1]

    rm = RewardModelInference("fake-registry://m", resolver=resolver)
    np.testing.assert_allclose(rm.batch_predict(PROMPTS, RESPONSES), direct, atol=1e-5)
    assert (asked, rm.source) == (["fake-registry://m"], "fake-registry://m")
    local = RewardModelInference(tmp_path / "m", resolver=resolver)  # a local path never asks the resolver
    np.testing.assert_allclose(local.batch_predict(PROMPTS, RESPONSES), direct, atol=1e-5)
    assert asked == ["fake-registry://m"]
    with pytest.raises(ValueError, match=r"^s3://b/m: a URI needs a resolver; or pass a local model directory$"):
        resolve_model_uri("s3://b/m")
    with pytest.raises(
        ValueError, match=r"^models:/rm@champion: a URI needs a resolver \(raw_rm\.tracking\.registry\.uri_resolver"
    ):
        RewardModelInference("models:/rm@champion")
    with pytest.raises(ValueError, match="not a model directory"):
        resolve_model_uri(tmp_path / "absent")


def test_two_resolvers_in_one_process_do_not_interfere(model_and_tok, tmp_path):
    # Two stores (say two MLflow tracking URIs) both have "models:/rm/1": each inference uses the resolver it got.
    model, tok = model_and_tok
    save_model(model, tok, tmp_path / "a" / "rm")
    other = copy.deepcopy(model)
    head = [m for m in other.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias.add_(3.0)  # every reward of store b is 3 higher
    save_model(other, tok, tmp_path / "b" / "rm")
    store_a = RewardModelInference("models:/rm/1", resolver=lambda uri: tmp_path / "a" / "rm")
    store_b = RewardModelInference("models:/rm/1", resolver=lambda uri: tmp_path / "b" / "rm")
    a_again = RewardModelInference("models:/rm/1", resolver=lambda uri: tmp_path / "a" / "rm")
    np.testing.assert_allclose(store_a.batch_predict(PROMPTS, RESPONSES), a_again.batch_predict(PROMPTS, RESPONSES))
    np.testing.assert_allclose(
        store_b.batch_predict(PROMPTS, RESPONSES), store_a.batch_predict(PROMPTS, RESPONSES) + 3.0, atol=1e-5
    )


def test_input_errors(model_and_tok):
    model, tok = model_and_tok
    rm = RewardModelInference(model, tokenizer=tok)
    with pytest.raises(ValueError, match="got 2 prompts but 1 responses"):
        rm.batch_predict(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="item 0: prompt and response must be strings, got str and int"):
        rm.batch_predict(["a"], [3])
    with pytest.raises(ValueError, match="pass tokenizer="):
        RewardModelInference(model)
