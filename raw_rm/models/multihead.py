"""``MultiHeadRewardModel`` (arch "multihead"): a shared-trunk ensemble of K independently initialised heads.

One forward gives K member rewards; their spread is a cheap epistemic-uncertainty signal (heads share the
trunk, so it underestimates a full ensemble's). With ``model_cfg.bootstrap`` the trainer weights each head's
loss by its own Poisson(1) counts from :meth:`MultiHeadRewardModel.bootstrap_mask` (the online bootstrap of
Osband et al., 2016, "Deep Exploration via Bootstrapped DQN"), so heads see different resamples.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel

from raw_rm.config import ModelConfig
from raw_rm.models.base import RewardMetadata, RewardOutput, TrunkRewardModel, register_model


def seeded_linear(width: int, seed: int) -> nn.Linear:
    """A Linear(width, 1) with PyTorch's default init scale, drawn from its own seed."""
    layer = nn.Linear(width, 1)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(width)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


@register_model("multihead")
class MultiHeadRewardModel(TrunkRewardModel):
    """members (N, K): one reward per head; rewards (N,) = their mean."""

    input_kind = "concat"

    def __init__(self, model_cfg: ModelConfig, backbone: PreTrainedModel, metadata: RewardMetadata | None = None):
        super().__init__(model_cfg, backbone, metadata)
        # Head seeds come from the caller's RNG (seeded by the trainer), then differ per head.
        base_seed = int(torch.randint(0, 2**31 - 1 - model_cfg.num_heads, ()).item())
        self.heads = nn.ModuleList(seeded_linear(self.width, base_seed + k) for k in range(model_cfg.num_heads))
        self.uses_bootstrap = model_cfg.bootstrap

    @property
    def num_members(self) -> int:
        return len(self.heads)

    def bootstrap_mask(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, K) float Poisson(1) counts: how often example i is drawn in head k's bootstrap resample."""
        return torch.poisson(torch.ones(n, self.num_members), generator=generator)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> RewardOutput:
        """(N, T) concatenated prompt + response ids -> rewards (N,), members (N, K)."""
        _, pooled = self.encode(input_ids, attention_mask, token_type_ids)  # (N, H)
        # Each head draws its own dropout mask, one more source of member diversity.
        members = torch.cat([head(self.dropout(pooled)) for head in self.heads], dim=-1)  # (N, K)
        return RewardOutput(rewards=members.mean(-1), members=members)
