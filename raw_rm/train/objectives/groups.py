"""K-wise ranked groups: a ranking loss (``build_ranking_loss(cfg.loss)``) over each group's responses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from raw_rm.config import Config
from raw_rm.data.batching import GroupCollator
from raw_rm.data.records import RankedGroup
from raw_rm.losses import build_ranking_loss
from raw_rm.train.objectives.base import (
    Batch,
    Parts,
    PreferenceObjective,
    head_weight,
    per_head_loss,
)


class GroupsObjective(PreferenceObjective):
    """``GroupCollator`` batches (every response one row); metrics over all within-group pairs of different rank."""

    kind = "groups"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer: Any, train_records: Sequence[RankedGroup]) -> None:
        super().__init__(cfg, model, tokenizer, train_records)
        self.loss_fn = build_ranking_loss(cfg.loss)

    def build_collator(self, tokenizer: Any, *, max_len_tokens: int, input_kind: str) -> Any:
        return GroupCollator(tokenizer, max_len_tokens=max_len_tokens, input_kind=input_kind)

    def loss(self, output: Any, batch: Batch, *, training: bool) -> tuple[torch.Tensor, Parts]:
        device = output.rewards.device
        index = batch["group_rewards_index"].to(device)  # (G, Kmax) rows of the flattened responses
        ranks = batch["ranks"].to(device)
        mask = batch["mask"].to(device)
        rewards = output.rewards.float()
        grouped = rewards[index]  # (G, Kmax); padded slots hold some row's reward, masked out by the loss
        if output.members is not None and self.n_heads > 1:
            counts = self.bootstrap if training else None
            loss = per_head_loss(
                output.members,
                lambda k, col: self.loss_fn(
                    col[index], ranks, mask, weight=head_weight(counts, None, batch, k, device)
                ),
            )
        else:
            loss = self.loss_fn(grouped, ranks, mask)
        chosen, rejected = group_pairs(grouped.detach(), ranks, mask)
        return loss, {"chosen": chosen, "rejected": rejected, "rewards": rewards.detach()}

    def n_items(self, batch: Batch) -> int:
        return int(batch["group_rewards_index"].shape[0])

    def record_texts(self, record: RankedGroup) -> list[tuple[str, str]]:
        return [(record.prompt, r) for r in record.responses]


def group_pairs(grouped: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All within-group pairs with different ranks: (better rewards, worse rewards); rank 0 is best."""
    better = (ranks[:, :, None] < ranks[:, None, :]) & mask[:, :, None] & mask[:, None, :]  # (G, K, K)
    g, i, j = better.nonzero(as_tuple=True)
    return grouped[g, i], grouped[g, j]
