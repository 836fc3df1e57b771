"""``CrossAttentionRewardModel`` (arch "cross_attention"): response tokens attend to prompt tokens.

The backbone encodes prompt and response separately; ``model_cfg.cross_attention_layers`` post-norm
blocks (multi-head attention from response queries to prompt keys/values, residual, LayerNorm, a 4x GELU
feed-forward, residual, LayerNorm) mix in the prompt, then the response is pooled into a linear head.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from raw_rm.config import ModelConfig
from raw_rm.models.backbones import attention_heads
from raw_rm.models.base import RewardMetadata, RewardOutput, TrunkRewardModel, register_model


class CrossAttentionBlock(nn.Module):
    """x <- LN(x + MHA(x, memory)); x <- LN(x + FFN(x))."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_attn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.norm_ffn = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """x (N, Tr, H) attends to memory (N, Tp, H) where memory_mask (N, Tp) is 1."""
        ignore = ~memory_mask.bool()  # (N, Tp) True = not attended
        empty = ignore.all(-1)  # (N,) rows without any prompt token
        # A row whose keys are all masked gives NaN softmax; let it see position 0 and drop the result below.
        ignore = ignore & ~(empty.unsqueeze(-1) & (torch.arange(ignore.shape[1], device=x.device) == 0))
        attended, _ = self.attn(x, memory, memory, key_padding_mask=ignore, need_weights=False)
        attended = attended * (~empty).to(x.dtype)[:, None, None]
        x = self.norm_attn(x + self.drop(attended))
        return self.norm_ffn(x + self.drop(self.ffn(x)))


@register_model("cross_attention")
class CrossAttentionRewardModel(TrunkRewardModel):
    """Reward from the response's states after attending to the prompt's states."""

    input_kind = "split"

    def __init__(self, model_cfg: ModelConfig, backbone: PreTrainedModel, metadata: RewardMetadata | None = None):
        super().__init__(model_cfg, backbone, metadata)
        if model_cfg.cross_attention_layers < 1:
            raise ValueError(f"model.cross_attention_layers: expected >= 1, got {model_cfg.cross_attention_layers}")
        heads = attention_heads(backbone.config, self.width)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(self.width, heads, model_cfg.dropout) for _ in range(model_cfg.cross_attention_layers)
        )
        self.head = nn.Linear(self.width, 1)

    def forward(
        self,
        prompt_input_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        response_input_ids: torch.Tensor,
        response_attention_mask: torch.Tensor,
        prompt_token_type_ids: torch.Tensor | None = None,
        response_token_type_ids: torch.Tensor | None = None,
    ) -> RewardOutput:
        """(N, Tp) prompt ids and (N, Tr) response ids -> rewards (N,)."""
        memory = self.hidden(prompt_input_ids, prompt_attention_mask, prompt_token_type_ids)  # (N, Tp, H)
        x = self.hidden(response_input_ids, response_attention_mask, response_token_type_ids)  # (N, Tr, H)
        for block in self.blocks:
            x = block(x, memory, prompt_attention_mask)
        pooled = self.dropout(self.pooled(x, response_attention_mask))  # (N, H)
        return RewardOutput(rewards=self.head(pooled)[:, 0])
