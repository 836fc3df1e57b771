"""``RewardModel`` (arch "concat"): prompt and response as one sequence, a scalar head on one pooled state.

With the Hugging Face pooling (``pooling="auto"``, i.e. CLS for encoders and the last real token for
decoders) the model *is* an ``AutoModelForSequenceClassification`` with ``num_labels=1``: its weights, head
and config are Hugging Face's, so a saved directory loads unchanged in transformers and scores the same
(within 1e-5) when fed the tokenizer's own encoding, ``tokenizer(prompt, response)``. Encoders run the Hugging
Face forward itself; decoders run its trunk and apply its ``score`` head at the last real token found from
``attention_mask`` (positions counted over real tokens), which is what transformers computes for right
padding with a distinct pad token, and stays right for left padding.

Any other pooling (``"mean"``, or ``"cls"``/``"last"`` against the family's convention) uses a bare trunk and
a raw_rm head; those models round-trip through ``load_model`` only, since transformers would pool differently.

``model.length_head`` (ODIN, Chen et al. 2024) adds a second linear head on the same input as the reward head,
returned as ``RewardOutput.length_rewards``. Training adds it to the reward and pushes length into it
(``raw_rm.losses.length_corr_term``); saving drops it, so a saved model scores with the reward head alone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from raw_rm.config import ModelConfig
from raw_rm.models.backbones import (
    check_packable,
    hidden_size,
    is_decoder,
    packed_pooled,
    pooled_hidden,
    resolve_pooling,
)
from raw_rm.models.base import RewardMetadata, RewardModelBase, RewardOutput, register_model


@register_model("concat")
class RewardModel(RewardModelBase):
    """Scalar reward on the concatenated prompt + response.

    Args:
        model_cfg: ``arch="concat"``; ``pooling`` and ``dropout`` are read.
        backbone: an ``AutoModelForSequenceClassification`` (num_labels=1) when :meth:`wants_hf_head`,
            else a bare ``AutoModel`` trunk.
    """

    input_kind = "concat"

    def __init__(self, model_cfg: ModelConfig, backbone: PreTrainedModel, metadata: RewardMetadata | None = None):
        super().__init__(model_cfg, metadata)
        self.decoder = is_decoder(backbone.config)
        self.pooling = resolve_pooling(model_cfg.pooling, decoder=self.decoder)
        self.dropout = nn.Dropout(model_cfg.dropout)
        has_head = backbone.base_model is not backbone
        if has_head != self.wants_hf_head(model_cfg, decoder=self.decoder):
            raise ValueError(
                f"RewardModel with pooling={model_cfg.pooling!r} on a {'decoder' if self.decoder else 'encoder'} "
                f"needs {'an AutoModelForSequenceClassification' if not has_head else 'a bare AutoModel trunk'}, "
                f"got {type(backbone).__name__}"
            )
        if has_head:
            if backbone.config.num_labels != 1:
                raise ValueError(f"RewardModel needs num_labels=1, got {backbone.config.num_labels}")
            if self.decoder and not isinstance(getattr(backbone, "score", None), nn.Linear):
                raise ValueError(f"{type(backbone).__name__} has no `score` head to apply at the last token")
            self.hf = backbone
            self.trunk = None
            self.head = None
        else:
            self.hf = None
            self.trunk = backbone
            self.head = nn.Linear(hidden_size(backbone.config), 1)
        self.length_head = None
        if model_cfg.length_head:
            width = hidden_size(backbone.config)
            head = self.reward_head()
            if not isinstance(head, nn.Linear) or head.in_features != width:
                raise ValueError(
                    f"model.length_head needs a linear reward head on the pooled state ({width} inputs); "
                    f"{type(backbone).__name__} has {type(head).__name__}"
                )
            self.length_head = nn.Linear(width, 1)

    def reward_head(self) -> nn.Module:
        """The module that maps the pooled state to the reward (Hugging Face's classifier/score or raw_rm's)."""
        if self.hf is None:
            return self.head
        return self.hf.score if self.decoder else self.hf.classifier

    @classmethod
    def wants_hf_head(cls, model_cfg: ModelConfig, *, decoder: bool) -> bool:
        return resolve_pooling(model_cfg.pooling, decoder=decoder) == ("last" if decoder else "cls")

    @property
    def backbone_config(self):
        return (self.hf if self.hf is not None else self.trunk).config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pack_index: torch.Tensor | None = None,
    ) -> RewardOutput:
        """(N, T) concatenated prompt + response ids -> rewards (N,) (+ ``length_rewards`` with a length head).

        Packed rows (``raw_rm.data.packing.pack_sequences``: ``input_ids`` and ``position_ids`` (R, L),
        ``pack_index`` (N, 2), no ``attention_mask``) give the same N rewards without computing pad tokens.
        """
        if pack_index is not None:
            check_packable(self.backbone_config, self.pooling)
            if self.length_head is not None:
                raise ValueError("train.packing: not with model.length_head (its length reward is read on padded rows)")
            trunk = self.hf.base_model if self.hf is not None else self.trunk
            pooled = self.dropout(packed_pooled(trunk, input_ids, position_ids, pack_index))  # (N, H)
            head = self.hf.score if self.hf is not None else self.head
            return RewardOutput(rewards=head(pooled)[:, 0])
        if self.hf is not None and not self.decoder:
            # Hugging Face's own forward: pooler/CLS, classifier dropout, classifier. The length head reads the
            # classifier's input, caught by a hook for this call only.
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            seen: list[torch.Tensor] = []
            hook = None
            if self.length_head is not None:
                hook = self.hf.classifier.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            try:
                logits = self.hf(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits  # (N, 1)
            finally:
                if hook is not None:
                    hook.remove()
            length = self.length_head(seen[0])[:, 0] if seen else None
            return RewardOutput(rewards=logits[:, 0], length_rewards=length)
        trunk = self.hf.base_model if self.hf is not None else self.trunk
        _, pooled = pooled_hidden(
            trunk, input_ids, attention_mask, token_type_ids, decoder=self.decoder, pooling=self.pooling
        )  # (N, H)
        pooled = self.dropout(pooled)
        length = self.length_head(pooled)[:, 0] if self.length_head is not None else None
        return RewardOutput(rewards=self.reward_head()(pooled)[:, 0], length_rewards=length)

    def head_orthogonality(self) -> torch.Tensor:
        """|cos| between the reward head's and the length head's weight vectors (ODIN's orthogonality loss)."""
        if self.length_head is None:
            raise ValueError("head_orthogonality: the model has no length head (model.length_head=false)")
        w_q, w_l = self.reward_head().weight[0], self.length_head.weight[0]
        return torch.nn.functional.cosine_similarity(w_q, w_l, dim=0).abs()
