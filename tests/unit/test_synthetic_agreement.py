"""Synthetic annotator agreement (``data.synthetic.annotators``): weights for confidence-aware training."""

from __future__ import annotations

from dataclasses import replace

from raw_rm.config import SyntheticConfig
from raw_rm.data.synthetic import generate, latent_reward


def test_agreement_weights_leave_pairs_unchanged_and_track_label_correctness() -> None:
    plain = generate(SyntheticConfig(n_prompts=300, noise=1.0, seed=3))
    rated = generate(SyntheticConfig(n_prompts=300, noise=1.0, seed=3, annotators=5))
    assert all(p.weight is None for p in plain.pairs)
    assert [replace(p, weight=None) for p in rated.pairs] == plain.pairs  # own RNG: same texts and labels
    assert {p.weight for p in rated.pairs} <= {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}
    right = [p.weight for p in rated.pairs if latent_reward(p.prompt, p.chosen) > latent_reward(p.prompt, p.rejected)]
    wrong = [p.weight for p in rated.pairs if latent_reward(p.prompt, p.chosen) < latent_reward(p.prompt, p.rejected)]
    assert wrong and sum(right) / len(right) > 0.6 > 0.4 > sum(wrong) / len(wrong)


def test_noise_free_labels_get_full_agreement() -> None:
    assert {p.weight for p in generate(SyntheticConfig(n_prompts=40, noise=0.0, annotators=3)).pairs} == {1.0}
