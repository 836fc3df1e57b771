"""What the loop computes on whole record lists outside its optimiser steps: length-sorted prediction, validation
metrics, and the reward statistics a fit leaves in the model's metadata. Kind-specific work is the objective's.

    parts = predict_records(model, objective, tokenizer, val_records, max_len_tokens=256, batch_size=16, device=dev)
    validation_metrics(objective, parts, val_records)   # val_loss, val_accuracy, ..., val_reward_mean/std
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from raw_rm.train.objectives import Objective
from raw_rm.uncertainty import ReferenceDistribution


def record_lengths(tokenizer: Any, objective: Objective, records: Sequence[Any], *, max_len_tokens: int) -> list[int]:
    """Token length per record (longest of its sequences, capped at max_len_tokens) for length grouping."""
    texts = [(p + " " + r, i) for i, rec in enumerate(records) for p, r in objective.record_texts(rec)]
    lengths = [0] * len(records)
    chunk = 2048
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        ids = tokenizer([t for t, _ in part], add_special_tokens=False, truncation=False)["input_ids"]
        for (_, owner), seq in zip(part, ids, strict=True):
            lengths[owner] = max(lengths[owner], min(max_len_tokens, len(seq) + 2))
    return lengths


def batch_features(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The model inputs of a collated batch (``batch["features"]``), on ``device``."""
    features = batch.get("features")
    if features is None:
        raise KeyError(f"batch has no 'features' (keys: {sorted(batch)})")
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}


@torch.no_grad()
def predict_records(
    model: nn.Module,
    objective: Objective,
    tokenizer: Any,
    records: Sequence[Any],
    *,
    max_len_tokens: int,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Run ``model`` (in eval mode) over ``records`` in length-sorted batches; per batch ``objective.predict``'s
    tensors. ``autocast`` makes the context each forward runs in (None: the model's own dtype)."""
    if not records:
        return []
    lengths = record_lengths(tokenizer, objective, records, max_len_tokens=max_len_tokens)
    order = sorted(range(len(records)), key=lambda i: lengths[i])
    model.eval()
    out = []
    for start in range(0, len(order), batch_size):
        batch = objective.collate(records, order[start : start + batch_size])
        with autocast() if autocast is not None else contextlib.nullcontext():
            output = model(**batch_features(batch, device))
        out.append(objective.predict(output, batch))
    return out


def validation_metrics(objective: Objective, parts: list[dict[str, torch.Tensor]], records: Sequence[Any]) -> dict:
    """val_loss (item-weighted over batches), the objective's ``val_metrics``, val_reward_mean, val_reward_std and
    val_n_truncated, from ``predict_records``'s parts of ``records``."""
    n = torch.stack([p["n"] for p in parts]).float()
    # .cpu(): the losses sit on the model's device, the counts on the CPU (a CUDA x CPU product raises)
    result = {"val_loss": float((torch.stack([p["loss"] for p in parts]).cpu() * n).sum() / n.sum())}
    result.update(objective.val_metrics(parts, records))
    rewards = objective.rewards(parts).cpu()
    result["val_reward_mean"] = float(rewards.mean())
    result["val_reward_std"] = float(rewards.std(unbiased=False)) if rewards.numel() > 1 else 0.0
    result["val_n_truncated"] = float(sum(int(p["n_truncated"]) for p in parts))
    return result


def reward_sample(records: Sequence[Any], objective: Objective, *, max_sequences: int, seed: int) -> list[Any]:
    """``records``, or a seeded sample of them holding about ``max_sequences`` sequences when they hold more."""
    if len(records) * 2 <= max_sequences:
        return list(records)
    per_record = max(1, len(objective.record_texts(records[0])))
    return random.Random(seed).sample(list(records), max(1, max_sequences // per_record))


def store_reward_stats(metadata: Any, rewards: torch.Tensor, lengths: Sequence[int]) -> None:
    """Reward normalisation (mean, population std; 1.0 when degenerate) and reference distributions (quantile
    histograms of rewards and input lengths, for drift checks) into ``metadata``."""

    rewards = rewards.cpu().double()
    metadata.reward_mean = float(rewards.mean())
    metadata.reward_std = float(rewards.std(unbiased=False)) if rewards.numel() > 1 else 1.0
    if metadata.reward_std <= 0:
        metadata.reward_std = 1.0
    metadata.reference = {
        "reward": ReferenceDistribution.from_sample(rewards.numpy()).to_dict(),
        "length": ReferenceDistribution.from_sample(np.asarray(lengths, dtype=np.float64)).to_dict(),
    }
