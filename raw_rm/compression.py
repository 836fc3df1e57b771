"""Smaller and faster reward models: int8 dynamic quantisation and distillation into a student.

int8: ``quantize_int8(model)`` replaces every ``nn.Linear`` by a dynamically quantised one (int8 weights,
activations quantised per batch) for CPU inference; no extra package (torchao) is needed. A quantised model is
stored as the fp32 model directory plus ``quantization.json``: quantisation is a deterministic function of the
fp32 weights, so :func:`load_for_inference` re-applies it on load instead of pickling quantised modules.

    report = compare_quantized("runs/latest/model", val_pairs)
    report["accuracy_fp32"], report["accuracy_int8"], report["speedup"]

Distillation: a student learns the teacher's normalised rewards (MSE) and/or its soft preferences
(binary cross-entropy of σ(Δ_student) against σ(Δ_teacher / T)), through the ordinary training loop.

    result = distill(["m1/model", "m2/model"], student_cfg, train_pairs, val_records=val_pairs, mode="both")
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
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
from raw_rm.inference import Resolver, RewardModelInference, resolve_model_uri
from raw_rm.train.loop import FitResult, RewardModelTrainer
from raw_rm.train.objectives import Distillation, build_objective

logger = logging.getLogger(__name__)

QUANTIZATION_FILE = "quantization.json"


# -------------------------------------------------------------------------------------------- int8
def quantize_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` with every ``nn.Linear`` dynamically quantised to int8 (the input is untouched).

    ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of the torchao package but still works
    in this torch and needs nothing extra; its deprecation warnings are silenced here, once, on purpose.
    """
    clone = copy.deepcopy(model).to("cpu").eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantiz.*")
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(clone, {nn.Linear}, dtype=torch.qint8)
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    logger.info("int8: quantised %d Linear layers", n_linear)
    return quantized


def write_quantized(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the fp32 model directory to ``out_dir`` and mark it for int8 dynamic quantisation on load."""
    import shutil

    src, out = Path(resolve_model_uri(model_dir)), Path(out_dir)
    if out.resolve() != src.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out)
    (out / QUANTIZATION_FILE).write_text(json.dumps({"method": "dynamic", "dtype": "qint8", "modules": ["Linear"]}, indent=1))
    return out


def load_for_inference(model_dir: str | Path, *, resolver: Resolver | None = None, **kwargs: Any) -> RewardModelInference:
    """``RewardModelInference`` for a directory (or a URI that ``resolver`` resolves to one), quantised when it
    carries ``quantization.json``."""
    from raw_rm.models import load_model

    path = Path(resolve_model_uri(model_dir, resolver))
    if not (path / QUANTIZATION_FILE).exists():
        return RewardModelInference(path, **kwargs)
    model, tokenizer = load_model(path)
    quantized = quantize_int8(model)
    if kwargs.get("precision", "fp32") not in ("fp32", "auto"):
        logger.warning("%s: precision=%s ignored: an int8 model runs its Linear layers in int8", path, kwargs["precision"])
    # int8 Linear layers take fp32 activations: no autocast around them
    inference = RewardModelInference(quantized, tokenizer=tokenizer, **{**kwargs, "device": "cpu", "precision": "fp32"})
    inference.source = str(path)
    inference.precision, inference.precision_reason = "int8", f"the model folder holds {QUANTIZATION_FILE}"
    return inference


def _pair_accuracy_and_speed(rm: RewardModelInference, pairs: Sequence[PreferencePair]) -> tuple[float, float, np.ndarray]:
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    rm.batch_predict(prompts[: min(len(prompts), rm.batch_size)], responses[: rm.batch_size])  # warm-up
    rm.clear_cache()
    t0 = time.perf_counter()
    rewards = rm.batch_predict(prompts, responses)
    dt = time.perf_counter() - t0
    delta = rewards[: len(pairs)] - rewards[len(pairs):]
    return float((delta > 0).mean()), len(responses) / dt, delta


def compare_quantized(
    model: str | Path | nn.Module,
    pairs: Sequence[PreferencePair],
    *,
    tokenizer: Any = None,
    batch_size: int = 32,
    max_len_tokens: int | None = None,
) -> dict[str, float]:
    """Accuracy and CPU scoring speed of the fp32 model and its int8 copy on the same pairs.

    Returns:
        accuracy_fp32, accuracy_int8, accuracy_change (int8 - fp32), texts_per_s_fp32, texts_per_s_int8,
        speedup (int8 / fp32 texts/s), agreement (share of pairs both order the same way), n_pairs.
    """
    if not pairs:
        raise ValueError("compare_quantized: no evaluation pairs")
    if not isinstance(model, nn.Module):
        from raw_rm.models import load_model

        model, tokenizer = load_model(resolve_model_uri(model))
    elif tokenizer is None:
        raise ValueError("compare_quantized(model): pass tokenizer= with a model object")
    kwargs = {"tokenizer": tokenizer, "batch_size": batch_size, "max_len_tokens": max_len_tokens, "cache_size": 0}
    fp32 = RewardModelInference(model.to("cpu"), **kwargs)
    int8 = RewardModelInference(quantize_int8(model), **kwargs)
    acc32, speed32, delta32 = _pair_accuracy_and_speed(fp32, pairs)
    acc8, speed8, delta8 = _pair_accuracy_and_speed(int8, pairs)
    return {
        "accuracy_fp32": acc32, "accuracy_int8": acc8, "accuracy_change": acc8 - acc32,
        "texts_per_s_fp32": speed32, "texts_per_s_int8": speed8, "speedup": speed8 / speed32,
        "agreement": float(((delta32 > 0) == (delta8 > 0)).mean()), "n_pairs": float(len(pairs)),
    }


# ------------------------------------------------------------------------------------ distillation
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
    temperature: float = 1.0,
    callbacks: Iterable[Any] = (),
) -> DistillResult:
    """Train a student (``raw_rm.models.build_model(student_cfg.model)``) to reproduce a teacher.

    Args:
        teacher: a model (with ``teacher_tokenizer``), a model directory / URI, a ``RewardModelInference``, or a
            list of these (an ensemble: the mean of the members' normalised rewards).
        student_cfg: the student's config (model, train settings; loss.* is replaced by the distillation loss).
        records: training pairs (the teacher scores both sides; the human labels are not used for the loss).
        val_records: pairs for the student's validation metrics (val_accuracy is against the human labels).
        mode: "reward" (MSE on normalised rewards), "preference" (BCE to σ(Δ_teacher / temperature)) or "both".
        temperature: softens the teacher's preferences.
    """
    from raw_rm.models import build_model

    alpha = {"reward": 1.0, "preference": 0.0, "both": 0.5}.get(mode)
    if alpha is None:
        raise ValueError(f"distill: mode must be reward, preference or both, got {mode!r}")
    teachers = TeacherScores(_teachers(teacher, teacher_tokenizer, max(2 * student_cfg.train.batch_size, 8)))
    student, tokenizer = build_model(student_cfg.model)
    records, val_records = list(records), list(val_records)
    objective = build_objective(
        student_cfg, student, tokenizer, records, val_records,
        distillation=Distillation(teachers, alpha=alpha, temperature=temperature),
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
        mode, len(teachers.teachers), mse_before, mse_after, fit.final_metrics.get("val_accuracy"), teacher_acc,
    )
    return DistillResult(
        model=student, tokenizer=tokenizer, fit=fit, mse_before=mse_before, mse_after=mse_after,
        teacher_val_accuracy=teacher_acc, metrics=metrics,
    )
