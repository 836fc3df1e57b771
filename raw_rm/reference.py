"""A trained model's reward normalisation and drift references, measured by scoring records with it.

``fit_reference`` sets ``reward_mean``/``reward_std`` and the reward and input-length reference histograms that
``raw-rm drift`` and the server's drift monitor compare new traffic with. Training fills the same fields for a
single model at the end of its fit; this module serves models assembled after training (ensembles).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from raw_rm.data.records import PreferencePair
from raw_rm.inference import RewardModelInference
from raw_rm.models.base import RewardMetadata, RewardModelBase
from raw_rm.uncertainty import ReferenceDistribution

__all__ = ["fit_reference", "record_lengths"]


def record_lengths(tokenizer: Any, records: Sequence[Any], *, max_len_tokens: int) -> np.ndarray:
    """Token length per record as the trainer counts it for its reference: ``len(prompt + " " + text)`` plus 2
    special tokens, capped at ``max_len_tokens``; a pair counts its longer side."""
    out = []
    for rec in records:
        texts = [rec.chosen, rec.rejected] if isinstance(rec, PreferencePair) else [rec.response]
        ids = tokenizer([rec.prompt + " " + t for t in texts], add_special_tokens=False, truncation=False)["input_ids"]
        out.append(max(min(max_len_tokens, len(s) + 2) for s in ids))
    return np.asarray(out, dtype=np.float64)


def fit_reference(
    model: RewardModelBase,
    tokenizer: Any,
    records: Sequence[Any],
    *,
    max_len_tokens: int,
    max_records: int = 2048,
    seed: int = 0,
) -> RewardMetadata:
    """Set ``model.metadata``'s reward normalisation and drift references from (a seeded sample of) ``records``.

    Rewards of every text (chosen and rejected) give reward_mean/std and the reward histogram; per-record token
    lengths the length histogram, as ``RewardModelTrainer.store_reward_stats`` does for single models.
    """
    recs = list(records)
    if len(recs) > max_records:
        recs = random.Random(seed).sample(recs, max_records)
    prompts = [r.prompt for r in recs for _ in (0, 1)]
    responses = [t for r in recs for t in (r.chosen, r.rejected)]
    rm = RewardModelInference(model, tokenizer=tokenizer, max_len_tokens=max_len_tokens, cache_size=0)
    rewards = rm.batch_predict(prompts, responses)
    meta = model.metadata
    meta.reward_mean = float(rewards.mean())
    std = float(rewards.std())
    meta.reward_std = std if std > 0 else 1.0
    lengths = record_lengths(tokenizer, recs, max_len_tokens=max_len_tokens)
    meta.reference = {
        "reward": ReferenceDistribution.from_sample(rewards).to_dict(),
        "length": ReferenceDistribution.from_sample(lengths).to_dict(),
    }
    return meta
