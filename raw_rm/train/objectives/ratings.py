"""Per-aspect ratings: MSE of a multi-objective model's aspect heads against the ratings each response carries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from raw_rm.config import Config, ConfigError
from raw_rm.data.records import RatedResponse
from raw_rm.train.objectives.base import Batch, Objective, Parts, reward_stats


class RatingsObjective(Objective):
    """``RatingCollator`` batches over ``model.metadata.aspects``; validation accuracy orders same-prompt responses."""

    kind = "ratings"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer: Any, train_records: Sequence[RatedResponse]) -> None:
        # Only multi-objective models fill metadata.aspects (their head order); others have none.
        self.aspects = list(getattr(getattr(model, "metadata", None), "aspects", None) or [])
        if not self.aspects:
            raise ConfigError(
                "data.kind=ratings trains per-aspect heads with MSE: use model.arch=multi_objective "
                "(or give pairs with an aspect field for a single-reward model)"
            )
        seen = {a for r in train_records for a in r.ratings}
        if not seen & set(self.aspects):
            raise ConfigError(
                f"none of the ratings' aspects {sorted(seen)} is one of model.aspects {self.aspects}: "
                "set model.aspects to the aspects in the data"
            )
        super().__init__(cfg, model, tokenizer)

    def build_collator(self, tokenizer: Any, *, max_len_tokens: int, input_kind: str) -> Any:
        from raw_rm.data.batching import RatingCollator

        return RatingCollator(tokenizer, aspects=self.aspects, max_len_tokens=max_len_tokens, input_kind=input_kind)

    def loss(self, output: Any, batch: Batch, *, training: bool) -> tuple[torch.Tensor, Parts]:
        """The same loss in training and validation: none of its terms is training-only."""
        if output.aspects is None:
            raise ConfigError("data.kind=ratings needs a model with per-aspect heads (model.arch=multi_objective)")
        target = batch["ratings"].to(output.aspects.device, dtype=torch.float32)  # (N, A)
        mask = batch["ratings_mask"].to(output.aspects.device)
        pred = output.aspects.float()
        sq = (pred - target).pow(2) * mask
        # MSE per aspect over the rows that rate it, then the mean over aspects that appear in the batch.
        per_aspect = sq.sum(0) / mask.sum(0).clamp_min(1)
        present = mask.any(0)
        loss = per_aspect[present].mean() if bool(present.any()) else pred.sum() * 0.0
        return loss, {"rewards": output.rewards.detach().float(), "pred": pred.detach(), "target": target, "mask": mask}

    def n_items(self, batch: Batch) -> int:
        return int(batch["ratings"].shape[0])

    def record_texts(self, record: RatedResponse) -> list[tuple[str, str]]:
        return [(record.prompt, record.response)]

    def step_metrics(self, parts: list[Parts]) -> dict[str, float]:
        return {"accuracy": float("nan"), "margin_mean": float("nan"), **reward_stats(self.rewards(parts))}

    def val_metrics(self, parts: list[Parts], records: Sequence[Any]) -> dict[str, float]:
        """``val_mse_<aspect>`` for every aspect rated in ``records``, and ``val_accuracy``: the share of same-prompt
        response pairs whose combined rating order the combined reward reproduces."""
        pred = torch.cat([p["pred"] for p in parts]).cpu()
        target = torch.cat([p["target"] for p in parts]).cpu()
        mask = torch.cat([p["mask"] for p in parts]).cpu()
        result = {}
        for a, name in enumerate(self.aspects):
            m = mask[:, a]
            if bool(m.any()):
                result[f"val_mse_{name}"] = float((pred[m, a] - target[m, a]).pow(2).mean())
        order = torch.cat([p["index"] for p in parts]).tolist()  # predict's row order of the records
        weights = getattr(getattr(self.model, "metadata", None), "aspect_weights", None)
        weights = list(weights) if weights else [1.0 / len(self.aspects)] * len(self.aspects)
        rewards = self.rewards(parts).cpu()
        result["val_accuracy"] = _ratings_pair_accuracy([records[i] for i in order], rewards, self.aspects, weights)
        return result


def _ratings_pair_accuracy(
    records: list[RatedResponse], rewards: torch.Tensor, aspects: list[str], weights: list[float]
) -> float:
    """Share of same-prompt response pairs whose combined rating order the combined reward reproduces."""
    by_prompt: dict[str, list[tuple[float, float]]] = {}
    for rec, r in zip(records, rewards.tolist(), strict=True):
        rated = [(w, rec.ratings[a]) for a, w in zip(aspects, weights, strict=True) if a in rec.ratings]
        if not rated:
            continue
        score = sum(w * v for w, v in rated) / sum(w for w, _ in rated)
        by_prompt.setdefault(rec.prompt, []).append((score, r))
    right = total = 0
    for items in by_prompt.values():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                if items[i][0] == items[j][0]:
                    continue
                total += 1
                right += (items[i][0] > items[j][0]) == (items[i][1] > items[j][1])
    return right / total if total else float("nan")
