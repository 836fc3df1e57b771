"""``HierarchicalRewardModel`` (arch "hierarchical"): sentence rewards aggregated, plus a response head.

Input kind "segments": the concatenated sequence plus ``segment_ids`` (N, T), -1 on prompt, special and pad
tokens and 0..S-1 on the tokens of the response's sentences. Each sentence's state is the mean of its
token states; a segment head scores it. The reward is the mean of the row's sentence rewards plus a
response-level head on the pooled sequence, so sentence rewards can be inspected (``segments``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from raw_rm.config import ModelConfig
from raw_rm.models.base import RewardMetadata, RewardOutput, TrunkRewardModel, register_model


@register_model("hierarchical")
class HierarchicalRewardModel(TrunkRewardModel):
    """rewards = mean_s segment_head(mean of sentence s's tokens) + response_head(pooled sequence)."""

    input_kind = "segments"

    def __init__(self, model_cfg: ModelConfig, backbone: PreTrainedModel, metadata: RewardMetadata | None = None):
        super().__init__(model_cfg, backbone, metadata)
        self.segment_head = nn.Linear(self.width, 1)
        self.response_head = nn.Linear(self.width, 1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> RewardOutput:
        """(N, T) ids and segment ids -> rewards (N,), segments (N, S), segment_mask (N, S)."""
        hidden, pooled = self.encode(input_ids, attention_mask, token_type_ids)  # (N, T, H), (N, H)
        n_segments = int(segment_ids.max().item()) + 1 if segment_ids.numel() else 0  # CPU-GPU sync, once per batch
        n_segments = max(n_segments, 0)
        # Column 0 of the one-hot collects the -1 (no segment) tokens and is dropped.
        member = F.one_hot((segment_ids.long() + 1).clamp(min=0), n_segments + 1)[..., 1:]  # (N, T, S)
        member = member.to(hidden.dtype) * attention_mask.to(hidden.dtype).unsqueeze(-1)
        counts = member.sum(1)  # (N, S) tokens per segment
        segment_mask = counts > 0
        states = member.transpose(1, 2) @ hidden / counts.clamp(min=1.0).unsqueeze(-1)  # (N, S, H)
        segments = self.segment_head(self.dropout(states))[..., 0] * segment_mask  # (N, S), 0 where absent
        segment_mean = segments.sum(1) / segment_mask.sum(1).clamp(min=1)  # rows without sentences add 0
        response = self.response_head(self.dropout(pooled))[:, 0]  # (N,)
        return RewardOutput(rewards=segment_mean + response, segments=segments, segment_mask=segment_mask)
