"""``SeparateEncoderRewardModel`` (arch "separate"): prompt and response encoded apart, fused, MLP head.

Cheaper than cross-encoding when one prompt has many responses (the prompt state can be reused), at the
cost of no token-level interaction between the two.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from raw_rm.config import ModelConfig
from raw_rm.models.base import RewardMetadata, RewardOutput, TrunkRewardModel, register_model


@register_model("separate")
class SeparateEncoderRewardModel(TrunkRewardModel):
    """Reward from a fusion of the pooled prompt state p and the pooled response state r.

        ``model_cfg.fusion``: "concat" feeds [p, r] (2H), "product" p * r (H), "difference" r - p (H) to an
        MLP head (H hidden units, GELU). ``model_cfg.shared_encoder=False`` gives the response its own copy
        of the backbone (both start from the same weights). With "difference" and one shared encoder, the
    trunk's final LayerNorm bias cancels out of r - p (its gradient is exactly zero): harmless, and expected.
    """

    input_kind = "split"

    def __init__(self, model_cfg: ModelConfig, backbone: PreTrainedModel, metadata: RewardMetadata | None = None):
        super().__init__(model_cfg, backbone, metadata)
        self.response_trunk = None if model_cfg.shared_encoder else copy.deepcopy(backbone)
        if model_cfg.fusion not in ("concat", "product", "difference"):
            raise ValueError(f'model.fusion: unknown fusion "{model_cfg.fusion}" (known: concat, difference, product)')
        self.fusion = model_cfg.fusion
        fused = 2 * self.width if self.fusion == "concat" else self.width
        self.head = nn.Sequential(
            nn.Dropout(model_cfg.dropout),
            nn.Linear(fused, self.width),
            nn.GELU(),
            nn.Dropout(model_cfg.dropout),
            nn.Linear(self.width, 1),
        )

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
        _, prompt = self.encode(prompt_input_ids, prompt_attention_mask, prompt_token_type_ids)  # (N, H)
        _, response = self.encode(
            response_input_ids, response_attention_mask, response_token_type_ids, trunk=self.response_trunk
        )  # (N, H)
        if self.fusion == "concat":
            fused = torch.cat([prompt, response], dim=-1)
        elif self.fusion == "product":
            fused = prompt * response
        else:
            fused = response - prompt
        return RewardOutput(rewards=self.head(fused)[:, 0])
