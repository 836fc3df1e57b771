"""Preference pairs: a pairwise loss (``loss.name``) on chosen vs rejected rewards, one forward for both sides.

The multi-head ensemble (``model.arch=multihead``) trains every head on its own loss, each on its own Poisson(1)
bootstrap resample when ``model.bootstrap``, optionally with pairs weighted by head agreement
(``loss.uncertainty_weighting``). Pairs that name an ``aspect`` train that head of a multi-objective model; the
others train its combined reward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from raw_rm.config import Config, ConfigError
from raw_rm.data.batching import PairCollator
from raw_rm.data.records import PreferencePair
from raw_rm.losses import build_loss, build_pair_terms, example_weights, reward_regularisers
from raw_rm.train.objectives.base import (
    Batch,
    Parts,
    PreferenceObjective,
    head_weight,
    per_head_loss,
)

logger = logging.getLogger(__name__)


class PairsObjective(PreferenceObjective):
    """``PairCollator`` batches (chosen rows 0..B-1, rejected rows B..2B-1) under ``build_loss(cfg.loss)``."""

    kind = "pairs"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer: Any, train_records: Sequence[PreferencePair]) -> None:
        # Only multi-objective models fill metadata.aspects (their head order); others have none.
        self.aspects = list(getattr(getattr(model, "metadata", None), "aspects", None) or [])
        asked = {r.aspect for r in train_records if r.aspect is not None}
        unknown = sorted(asked - set(self.aspects)) if self.aspects else []
        if unknown:
            raise ConfigError(
                f"pairs name aspects {unknown} that are not in model.aspects {self.aspects}: add them to "
                "model.aspects or drop the aspect field"
            )
        super().__init__(cfg, model, tokenizer, train_records)
        self.loss_fn = build_loss(cfg.loss)
        length_head = bool(getattr(getattr(model, "model_cfg", None), "length_head", False))
        self.terms = build_pair_terms(cfg.loss, length_head=length_head)
        if self.n_heads > 1 and (self.terms.active or self.terms.temperature is not None):
            raise ConfigError(
                "calibration and length terms (loss.*_coef, loss.learned_temperature) act on one reward; "
                f"model.arch=multihead trains {self.n_heads} heads each on its own loss: use model.arch=concat"
            )
        if self.terms.temperature is not None:
            self.terms.temperature.to(next(model.parameters()).device)

    def build_collator(self, tokenizer: Any, *, max_len_tokens: int, input_kind: str) -> Any:
        # With a learned temperature, a hash-chosen share of the prompts is held out to fit it (batch["calibration"]).
        held_out = self.cfg.loss.calibration_fraction if self.cfg.loss.learned_temperature else 0.0
        return PairCollator(
            tokenizer, max_len_tokens=max_len_tokens, input_kind=input_kind, calibration_fraction=held_out
        )

    @property
    def supports_uncertainty_weighting(self) -> bool:
        return self.n_heads >= 2

    def collate(self, records: Sequence[PreferencePair], indices: Sequence[int]) -> Batch:
        """``PairCollator``'s batch plus ``index`` and, for a multi-objective model, ``aspect_index`` (B,) long
        (the head of each pair's aspect, -1 for the combined reward)."""
        batch = super().collate(records, indices)
        if self.aspects:
            aspect_index = [
                self.aspects.index(records[i].aspect) if records[i].aspect is not None else -1 for i in indices
            ]
            batch["aspect_index"] = torch.as_tensor(aspect_index, dtype=torch.long)
        return batch

    def loss(self, output: Any, batch: Batch, *, training: bool) -> tuple[torch.Tensor, Parts]:
        device = output.rewards.device
        b = int(batch["n_pairs"])
        rewards = _aspect_rewards(output.rewards, output.aspects, batch).float()  # (2B,): chosen rows, then rejected
        chosen, rejected = rewards[:b], rewards[b:]
        margin = batch.get("margin")
        if margin is not None:
            margin = margin.to(device, dtype=torch.float32)
        data_weight = batch["weight"].to(device, dtype=torch.float32) if "weight" in batch else None
        members = output.members
        if members is not None and self.n_heads > 1:
            members = members.float()
            weight = example_weights(self.cfg.loss, data_weight, members[:b], members[b:])
            counts = self.bootstrap if training else None
            loss = per_head_loss(
                members,
                lambda k, col: self.loss_fn(
                    col[:b], col[b:], margin=margin, weight=head_weight(counts, weight, batch, k, device)
                ),
            )
        else:
            length_rewards = output.length_rewards
            ortho = self.model.head_orthogonality() if self.cfg.loss.orthogonal_coef > 0 else None
            loss, _ = self.terms(
                self.loss_fn,
                chosen,
                rejected,
                margin=margin,
                weight=example_weights(self.cfg.loss, data_weight),
                lengths=batch["response_tokens"].to(device) if self.terms.needs_lengths else None,
                length_rewards=None if length_rewards is None else length_rewards.float(),
                heldout=batch["calibration"].to(device) if "calibration" in batch else None,
                orthogonality=ortho,
            )
        loss = loss + reward_regularisers(self.cfg.loss, chosen, rejected)
        return loss, {"chosen": chosen.detach(), "rejected": rejected.detach()}

    def param_groups(self) -> list[dict[str, Any]]:
        """The learned temperature's log T, at ``loss.temperature_lr`` without weight decay (when on)."""
        if self.terms.temperature is None:
            return []
        return [{"params": [self.terms.temperature.log_t], "lr": self.cfg.loss.temperature_lr, "weight_decay": 0.0}]

    def finish(self, model: nn.Module) -> None:
        """Store the learned temperature as the model's calibration temperature."""
        if self.terms.temperature is not None:
            model.metadata.temperature = self.terms.temperature.value()
            logger.info(
                "learned temperature T = %.4f (fitted on the held-out calibration pairs)", model.metadata.temperature
            )

    def n_items(self, batch: Batch) -> int:
        return int(batch["n_pairs"])

    def share(self, batch: Batch) -> float:
        if self.cfg.loss.use_weights and "weight" in batch:
            return float(batch["weight"].sum())
        return float(self.n_items(batch))

    def record_texts(self, record: PreferencePair) -> list[tuple[str, str]]:
        return [(record.prompt, record.chosen), (record.prompt, record.rejected)]

    def predict(self, output: Any, batch: Batch) -> Parts:
        """Adds ``member_delta`` (B, K): each ensemble member's chosen - rejected reward, when the model has members."""
        parts = super().predict(output, batch)
        if output.members is not None:
            b = int(batch["n_pairs"])
            parts["member_delta"] = (output.members[:b] - output.members[b:]).detach().float()
        return parts

    def val_metrics(self, parts: list[Parts], records: Sequence[Any]) -> dict[str, float]:
        result = super().val_metrics(parts, records)
        if "member_delta" in parts[0]:
            member_delta = torch.cat([p["member_delta"] for p in parts]).cpu()
            result["val_member_accuracy_mean"] = float((member_delta > 0).float().mean())
        return result


def _aspect_rewards(rewards: torch.Tensor, aspects: torch.Tensor | None, batch: Batch) -> torch.Tensor:
    """Pairs judged on one aspect train that aspect's head; the others train the combined reward."""
    index = batch.get("aspect_index")
    if index is None or aspects is None or bool((index < 0).all()):
        return rewards
    index = index.to(rewards.device).repeat(2)  # (2B,): the same aspect for chosen and rejected rows
    picked = aspects.gather(1, index.clamp_min(0)[:, None]).squeeze(1)
    return torch.where(index >= 0, picked, rewards)
