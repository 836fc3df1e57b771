"""Distillation: a student reward model learns from one or more teachers through the ordinary training loop.

The student learns the teachers' normalised rewards (MSE) and/or their soft preferences (binary cross-entropy of
σ(Δ_student) against σ(Δ_teacher / T)); the loop runs with ``raw_rm.train.objectives.DistillObjective``.

    result = distill(["m1/model", "m2/model"], student_cfg, train_pairs, val_records=val_pairs, mode="both")
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raw_rm.config import Config
from raw_rm.data.records import PreferencePair
from raw_rm.inference import RewardModelInference
from raw_rm.models import build_model
from raw_rm.quantization import load_for_inference
from raw_rm.train.loop import RewardModelTrainer
from raw_rm.train.objectives import Distillation, build_objective
from raw_rm.train.results import FitResult

logger = logging.getLogger(__name__)

DistillMode = Literal["reward", "preference", "both"]


@dataclass
class DistillResult:
    model: nn.Module  # the trained student
    tokenizer: Any
    fit: FitResult
    mse_before: float  # student-teacher MSE on the training texts (normalised teacher rewards) before training
    mse_after: float
    teacher_val_accuracy: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class TeacherScores:
    """Normalised teacher rewards of (prompt, response) texts: one model, or the mean over an ensemble's members."""

    def __init__(self, teachers: Sequence[RewardModelInference]) -> None:
        if not teachers:
            raise ValueError("distill: no teacher given")
        self.teachers = list(teachers)
        self.table: dict[tuple[str, str], float] = {}

    def score(self, items: Sequence[tuple[str, str]]) -> None:
        todo = sorted({it for it in items if it not in self.table})
        if not todo:
            return
        prompts, responses = [p for p, _ in todo], [r for _, r in todo]
        rewards = np.mean([t.batch_predict(prompts, responses, normalized=True) for t in self.teachers], axis=0)
        self.table.update(zip(todo, rewards.tolist(), strict=True))

    def __call__(self, prompt: str, response: str) -> float:
        return self.table[(prompt, response)]


def _teachers(teacher: Any, tokenizer: Any, batch_size: int) -> list[RewardModelInference]:
    if isinstance(teacher, RewardModelInference):
        return [teacher]
    if isinstance(teacher, nn.Module):
        return [RewardModelInference(teacher, tokenizer=tokenizer, batch_size=batch_size)]
    if isinstance(teacher, (str, Path)):
        return [load_for_inference(teacher, batch_size=batch_size)]
    if isinstance(teacher, Iterable):
        return [t for item in teacher for t in _teachers(item, tokenizer, batch_size)]
    raise TypeError(f"teacher: expected a model, a model directory or a list of them, got {type(teacher).__name__}")


def student_teacher_mse(trainer: RewardModelTrainer, records: Sequence[PreferencePair]) -> float:
    """Mean squared gap between the student's rewards and the teacher's normalised rewards on ``records``
    (``trainer`` trains with the distillation objective, whose batches carry the teacher's rewards)."""
    parts = trainer.predict_records(records)
    student = torch.cat([torch.cat([p["chosen"], p["rejected"]]) for p in parts])
    teacher = torch.cat([p["teacher"] for p in parts])
    return float(F.mse_loss(student, teacher))


def distill(
    teacher: Any,
    student_cfg: Config,
    records: Sequence[PreferencePair],
    *,
    val_records: Sequence[PreferencePair] = (),
    teacher_tokenizer: Any = None,
    mode: DistillMode = "both",
    distill_temperature: float = 1.0,
    callbacks: Iterable[Any] = (),
) -> DistillResult:
    """Train a student (``raw_rm.models.build_model(student_cfg.model)``) to reproduce a teacher.

    Args:
        teacher: a model (with ``teacher_tokenizer``), a model directory / URI, a ``RewardModelInference``, or a
            list of these (an ensemble: the mean of the members' normalised rewards).
        student_cfg: the student's config (model, train settings; loss.* is replaced by the distillation loss).
        records: training pairs (the teacher scores both sides; the human labels are not used for the loss).
        val_records: pairs for the student's validation metrics (val_accuracy is against the human labels).
        mode: "reward" (MSE on normalised rewards), "preference" (BCE to σ(Δ_teacher / distill_temperature)) or
            "both".
        distill_temperature: softens the teacher's preferences.
    """

    alpha = {"reward": 1.0, "preference": 0.0, "both": 0.5}.get(mode)
    if alpha is None:
        raise ValueError(f"distill: mode must be reward, preference or both, got {mode!r}")
    teachers = TeacherScores(_teachers(teacher, teacher_tokenizer, max(2 * student_cfg.train.batch_size, 8)))
    student, tokenizer = build_model(student_cfg.model)
    records, val_records = list(records), list(val_records)
    objective = build_objective(
        student_cfg,
        student,
        tokenizer,
        records,
        val_records,
        distillation=Distillation(teachers, alpha=alpha, distill_temperature=distill_temperature),
    )
    # every text the fit will see, scored up front in the teachers' own batches rather than a batch at a time
    teachers.score([text for rec in records + val_records for text in objective.record_texts(rec)])
    trainer = RewardModelTrainer(
        student_cfg, student, tokenizer, records, val_records, callbacks=callbacks, objective=objective
    )
    mse_before = student_teacher_mse(trainer, trainer.train_records)
    fit = trainer.fit()
    mse_after = student_teacher_mse(trainer, trainer.train_records)
    teacher_acc = None
    if val_records:
        deltas = [teachers(r.prompt, r.chosen) - teachers(r.prompt, r.rejected) for r in val_records]
        teacher_acc = float(np.mean(np.asarray(deltas) > 0))
    metrics = dict(fit.final_metrics, mse_before=mse_before, mse_after=mse_after)
    if teacher_acc is not None:
        metrics["teacher_val_accuracy"] = teacher_acc
    logger.info(
        "distill (%s, %d teacher(s)): student-teacher MSE %.4f -> %.4f; student val_accuracy %s, teacher %s",
        mode,
        len(teachers.teachers),
        mse_before,
        mse_after,
        fit.final_metrics.get("val_accuracy"),
        teacher_acc,
    )
    return DistillResult(
        model=student,
        tokenizer=tokenizer,
        fit=fit,
        mse_before=mse_before,
        mse_after=mse_after,
        teacher_val_accuracy=teacher_acc,
        metrics=metrics,
    )
