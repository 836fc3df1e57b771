"""The synthetic default: known latent reward, Bayes accuracy, no length shortcut, determinism."""

from __future__ import annotations

import math

import pytest

from raw_rm.config import SyntheticConfig
from raw_rm.data import synthetic as S
from raw_rm.data.formats import group_to_pairs


@pytest.fixture(scope="module")
def data() -> S.SyntheticData:
    return S.generate(SyntheticConfig())


def test_sizes_follow_the_config(data: S.SyntheticData) -> None:
    assert (len(data.pairs), len(data.groups), len(data.ratings)) == (1200, 1200, 4800)
    assert all(len(g.responses) == 4 for g in data.groups)
    small = S.generate(SyntheticConfig(n_prompts=10, group_size=3, seed=1))
    assert (len(small.pairs), len(small.groups), len(small.ratings)) == (10, 10, 30)


def test_deterministic_per_seed(data: S.SyntheticData) -> None:
    again = S.generate(SyntheticConfig())
    assert again.pairs == data.pairs and again.groups == data.groups and again.ratings == data.ratings
    assert S.generate(SyntheticConfig(seed=1)).pairs != data.pairs


def test_latent_reward_is_recomputed_from_text(data: S.SyntheticData) -> None:
    for pair, gap in zip(data.pairs, data.pair_reward_gaps):
        assert S.latent_reward(pair.prompt, pair.chosen) - S.latent_reward(pair.prompt, pair.rejected) == gap
    for item in data.ratings[:200]:
        assert S.aspect_ratings(item.prompt, item.response) == item.ratings


def test_latent_reward_by_hand() -> None:
    # reward = 0.5 * (helpfulness + harmlessness + honesty)
    assert S.latent_reward("What is 7 + 5?", "Great question. The answer is 12.") == 6.0  # correct (4, 4, 4)
    assert S.latent_reward("What is 7 + 5?", "The answer is 13. I hope this helps you today.") == 3.0  # wrong (1, 4, 1)
    assert S.latent_reward("What is 7 + 5?", "Sorry, I have no idea.") == 4.5  # dont_know (1, 4, 4)
    assert S.latent_reward("How can I make a weapon at home?", "No, I will not assist with that request.") == 5.0
    assert (
        S.latent_reward("How can I make a weapon at home?", "Okay, here is how to make a weapon at home step by step.")
        == 3.0
    )
    assert (
        S.latent_reward(
            "I live in Oslo. What should I do this weekend?",
            "But you do not live in Oslo, so that does not apply to you.",
        )
        == 3.0
    )
    with pytest.raises(ValueError, match="not a synthetic response to this prompt"):
        S.latent_reward("What is 7 + 5?", "Twelve, obviously.")
    with pytest.raises(ValueError, match="not a synthetic prompt"):
        S.latent_reward("Tell me a story.", "The answer is 12.")


def test_bayes_accuracy_is_exact_mean_of_max_p(data: S.SyntheticData) -> None:
    by_hand = sum(max(p, 1 - p) for p in (1 / (1 + math.exp(-g)) for g in data.pair_reward_gaps)) / len(data.pairs)
    assert data.bayes_accuracy == pytest.approx(by_hand, abs=1e-12)
    assert S.bayes_accuracy(data.pairs, 1.0) == pytest.approx(data.bayes_accuracy, abs=1e-12)
    assert 0.75 < data.bayes_accuracy < 0.95  # noise=1 leaves room between chance and perfect


def test_bayes_accuracy_matches_monte_carlo(data: S.SyntheticData) -> None:
    # 1200 pairs x 100 draws: the estimate's standard error is below 0.0011; allow 4 of them
    estimate = S.monte_carlo_bayes(data.pairs, 1.0, n_draws=100, seed=7)
    assert estimate == pytest.approx(data.bayes_accuracy, abs=0.0045)


def test_noise_zero_gives_perfect_bayes_and_latent_order() -> None:
    exact = S.generate(SyntheticConfig(n_prompts=200, noise=0.0))
    assert exact.bayes_accuracy == 1.0
    assert all(g > 0 for g in exact.pair_reward_gaps)
    for group in exact.groups:  # ranks follow the reward; equal rewards share a rank
        rewards = [S.latent_reward(group.prompt, r) for r in group.responses]
        for i in range(len(rewards)):
            for j in range(len(rewards)):
                assert (rewards[i] > rewards[j]) == (group.ranks[i] < group.ranks[j])


def test_length_alone_is_near_chance(data: S.SyntheticData) -> None:
    # 1200 pairs: chance has a standard error of 0.0144; 0.05 is about 3.5 of them
    assert abs(S.length_only_accuracy(data.pairs) - 0.5) < 0.05
    assert abs(S.length_only_accuracy(data.pairs, unit="words") - 0.5) < 0.05
    # and the latent reward is uncorrelated with length over all responses
    lengths = [len(r.response) for r in data.ratings]
    rewards = [S.reward_of_ratings(r.ratings) for r in data.ratings]
    n = len(lengths)
    ml, mr = sum(lengths) / n, sum(rewards) / n
    cov = sum((a - ml) * (b - mr) for a, b in zip(lengths, rewards)) / n
    sl = math.sqrt(sum((a - ml) ** 2 for a in lengths) / n)
    sr = math.sqrt(sum((b - mr) ** 2 for b in rewards) / n)
    assert abs(cov / (sl * sr)) < 0.1


def test_groups_expand_to_pairs_and_labels_follow_the_reward_more_often_than_not(data: S.SyntheticData) -> None:
    pairs = [p for g in data.groups[:300] for p in group_to_pairs(g)]
    agree = [
        S.latent_reward(p.prompt, p.chosen) > S.latent_reward(p.prompt, p.rejected)
        for p in pairs
        if S.latent_reward(p.prompt, p.chosen) != S.latent_reward(p.prompt, p.rejected)
    ]
    assert 0.7 < sum(agree) / len(agree) < 0.95


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="expected n_prompts >= 1, group_size >= 2, noise >= 0; got 10, 1, 1.0"):
        S.generate(SyntheticConfig(n_prompts=10, group_size=1))


def test_sample_response_answers_its_prompt_in_every_state() -> None:
    import random

    from raw_rm.data.synthetic import STATES, parse_prompt, parse_response, sample_response

    rng = random.Random(0)
    for pair in S.generate(SyntheticConfig(n_prompts=40, seed=3)).pairs:
        kind, _ = parse_prompt(pair.prompt)
        states = {parse_response(pair.prompt, sample_response(pair.prompt, rng)) for _ in range(30)}
        assert states == set(STATES[kind]), (pair.prompt, states)
