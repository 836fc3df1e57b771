"""Distillation: a student learns a teacher's normalised rewards (MSE) and/or its soft preferences (BCE).

    objective = build_objective(cfg, student, tokenizer, pairs, distillation=Distillation(teacher, alpha=0.5,
                                                                                          distill_temperature=2.0))

The loss is ``alpha · MSE(r_student, r_teacher) + (1 − alpha) · BCE(σ(Δ_student), σ(Δ_teacher / T))`` over both
sides of every pair; the human labels only enter the validation metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from raw_rm.config import Config
from raw_rm.data.records import PreferencePair
from raw_rm.train.objectives.base import Batch, Parts
from raw_rm.train.objectives.pairs import PairsObjective


class Teacher(Protocol):
    """Normalised teacher rewards of (prompt, response) texts (``raw_rm.train.distill.TeacherScores``)."""

    def score(self, items: Sequence[tuple[str, str]]) -> None: ...  # scores (and keeps) texts not yet scored

    def __call__(self, prompt: str, response: str) -> float: ...  # a scored text's reward


@dataclass
class Distillation:
    """What ``build_objective`` needs to distil instead of learning from the labels."""

    teacher: Teacher
    alpha: float  # weight of the reward (MSE) term: 1 = rewards only, 0 = preferences only
    distill_temperature: float  # softens the teacher's preference σ(Δ_teacher / distill_temperature)


class DistillObjective(PairsObjective):
    """Pairs batches plus ``teacher`` (2B,) normalised teacher rewards, rows in the features' order."""

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        tokenizer: Any,
        train_records: Sequence[PreferencePair],
        *,
        distillation: Distillation,
    ) -> None:
        super().__init__(cfg, model, tokenizer, train_records)
        alpha, temperature = distillation.alpha, distillation.distill_temperature
        if not 0.0 <= alpha <= 1.0 or temperature <= 0:
            raise ValueError(
                f"distill: expected 0 <= alpha <= 1 and distill_temperature > 0, got alpha={alpha}, "
                f"distill_temperature={temperature}"
            )
        self.teacher, self.alpha, self.temperature = distillation.teacher, alpha, temperature

    def collate(self, records: Sequence[PreferencePair], indices: Sequence[int]) -> Batch:
        batch = super().collate(records, indices)
        items = [records[i] for i in indices]
        self.teacher.score([t for r in items for t in self.record_texts(r)])
        batch["teacher"] = torch.tensor(
            [self.teacher(r.prompt, r.chosen) for r in items] + [self.teacher(r.prompt, r.rejected) for r in items],
            dtype=torch.float32,
        )  # (2B,): chosen rows, then rejected, like the features
        return batch

    def loss(self, output: Any, batch: Batch, *, training: bool) -> tuple[torch.Tensor, Parts]:
        """The same loss in training and validation: none of its terms is training-only."""
        b = int(batch["n_pairs"])
        student = output.rewards.float()
        teacher = batch["teacher"].to(student.device)
        loss = student.new_zeros(())
        if self.alpha > 0:
            loss = loss + self.alpha * F.mse_loss(student, teacher)
        if self.alpha < 1:
            target = torch.sigmoid((teacher[:b] - teacher[b:]) / self.temperature)
            # BCE on logits Δ_student: the stable form of -(t log σ(Δ) + (1 - t) log σ(-Δ)).
            loss = loss + (1 - self.alpha) * F.binary_cross_entropy_with_logits(student[:b] - student[b:], target)
        return loss, {"chosen": student[:b].detach(), "rejected": student[b:].detach(), "teacher": teacher.detach()}

    def share(self, batch: Batch) -> float:
        # The loss is an unweighted mean over the batch's pairs, so a micro-batch counts by its pairs whatever their
        # weight field says (the pairs objective weighs them by it because its loss is a weighted mean).
        return float(self.n_items(batch))
