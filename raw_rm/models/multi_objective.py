"""``MultiObjectiveRewardModel`` (arch "multi_objective"): one named head per aspect on a shared trunk.

The reward is ``aspects @ w``: fixed weights (``model_cfg.aspect_weights``, equal 1/A by default) that
:meth:`~MultiObjectiveRewardModel.set_aspect_weights` changes at inference without retraining, or, with
``model_cfg.learned_gate``, per-example softmax weights computed from the pooled state (ArmoRM-style gating).
Per-aspect ratings train ``aspects`` by regression and per-aspect preferences train one column each;
overall preferences train ``rewards``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from raw_rm.config import ModelConfig
from raw_rm.models.base import RewardMetadata, RewardOutput, TrunkRewardModel, register_model


@register_model("multi_objective")
class MultiObjectiveRewardModel(TrunkRewardModel):
    """Rewards (N,) as the weighted combination of aspect rewards (N, A), both returned."""

    input_kind = "concat"

    def __init__(self, model_cfg: ModelConfig, backbone: PreTrainedModel, metadata: RewardMetadata | None = None):
        super().__init__(model_cfg, backbone, metadata)
        aspects = list(model_cfg.aspects)
        if not aspects:
            raise ValueError("model.aspects: expected at least one aspect name")
        if len(set(aspects)) != len(aspects) or any(not a or "." in a for a in aspects):
            raise ValueError(f"model.aspects: names must be unique, non-empty and without '.', got {aspects}")
        if model_cfg.learned_gate and model_cfg.aspect_weights is not None:
            raise ValueError("model.aspect_weights is unused when model.learned_gate is true: set one of them")
        self.aspects = aspects
        self.heads = nn.ModuleDict({name: nn.Linear(self.width, 1) for name in aspects})
        self.gate = nn.Linear(self.width, len(aspects)) if model_cfg.learned_gate else None
        weights = model_cfg.aspect_weights
        if weights is None:
            weights = [1.0 / len(aspects)] * len(aspects)
        self.register_buffer("aspect_weights", torch.tensor(weights, dtype=torch.float32))  # (A,)
        self.metadata.aspects = list(aspects)
        self.metadata.aspect_weights = [] if self.gate is not None else [float(w) for w in weights]

    def set_aspect_weights(self, weights: Sequence[float] | Mapping[str, float]) -> None:
        """Change the combination weights at inference: a list in aspect order or a dict naming every aspect."""
        if self.gate is not None:
            raise ValueError("set_aspect_weights: this model combines aspects with a learned gate (learned_gate=true)")
        if isinstance(weights, Mapping):
            if set(weights) != set(self.aspects):
                raise ValueError(f"set_aspect_weights: expected weights for {self.aspects}, got {sorted(weights)}")
            values = [float(weights[name]) for name in self.aspects]
        else:
            values = [float(w) for w in weights]
            if len(values) != len(self.aspects):
                raise ValueError(f"set_aspect_weights: expected {len(self.aspects)} weights, got {len(values)}")
        self.aspect_weights.copy_(torch.tensor(values))
        self.metadata.aspect_weights = values
        self.model_cfg = dataclasses.replace(self.model_cfg, aspect_weights=values)  # a copy: never edit the caller's

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> RewardOutput:
        """(N, T) concatenated prompt + response ids -> rewards (N,), aspects (N, A)."""
        _, pooled = self.encode(input_ids, attention_mask, token_type_ids)  # (N, H)
        pooled = self.dropout(pooled)
        aspects = torch.cat([head(pooled) for head in self.heads.values()], dim=-1)  # (N, A)
        if self.gate is not None:
            weights = torch.softmax(self.gate(pooled), dim=-1)  # (N, A), per example
            rewards = (weights * aspects).sum(-1)
        else:
            rewards = aspects @ self.aspect_weights.to(aspects.dtype)
        return RewardOutput(rewards=rewards, aspects=aspects)
