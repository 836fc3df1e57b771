"""One training objective per record kind, behind the one interface the loop uses (``Objective``).

    objective = build_objective(cfg, model, tokenizer, train_records, val_records)
    batch = objective.collate(train_records, [0, 1, 2])          # the collator's batch + "index"
    output = model(**batch["features"])
    loss, parts = objective.loss(output, batch, training=True)    # parts: detached tensors for the metrics
    objective.step_metrics([parts])                               # accuracy, margin_mean, reward_mean, reward_std

Kinds: ``pairs`` (``PairsObjective``: pairwise losses, multi-head ensembles, aspect pairs), ``groups``
(``GroupsObjective``: k-wise ranking losses), ``ratings`` (``RatingsObjective``: per-aspect MSE) and distillation
(``DistillObjective``: a teacher's rewards and preferences, on pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from raw_rm.config import Config, ConfigError
from raw_rm.train.objectives.base import Objective, PreferenceObjective, record_kind
from raw_rm.train.objectives.distill import Distillation, DistillObjective, Teacher
from raw_rm.train.objectives.groups import GroupsObjective
from raw_rm.train.objectives.pairs import PairsObjective
from raw_rm.train.objectives.ratings import RatingsObjective

__all__ = [
    "DistillObjective",
    "Distillation",
    "GroupsObjective",
    "Objective",
    "PairsObjective",
    "PreferenceObjective",
    "RatingsObjective",
    "Teacher",
    "build_objective",
    "record_kind",
]

OBJECTIVES: dict[str, type[Objective]] = {
    "pairs": PairsObjective,
    "groups": GroupsObjective,
    "ratings": RatingsObjective,
}


def build_objective(
    cfg: Config,
    model: nn.Module,
    tokenizer: Any,
    train_records: Sequence[Any],
    val_records: Sequence[Any] = (),
    *,
    distillation: Distillation | None = None,
) -> Objective:
    """The objective for the records' kind, or distillation when ``distillation`` is given.

    Raises:
        TypeError: the records mix kinds, or validation records are of another kind than training records.
        ConfigError: the model cannot learn this kind (e.g. ratings without aspect heads), distillation on anything
            but pairs, or ``loss.uncertainty_weighting`` without pairs and an ensemble of heads.
    """
    kind = record_kind(train_records)
    if val_records and record_kind(val_records) != kind:
        raise TypeError(f"train records are {kind} but validation records are {record_kind(val_records)}")
    if distillation is not None:
        if kind != "pairs":
            raise ConfigError(
                f"distillation trains on pairs; got {kind} (convert groups with raw_rm.data.formats.group_to_pairs)"
            )
        objective: Objective = DistillObjective(cfg, model, tokenizer, train_records, distillation=distillation)
    else:
        objective = OBJECTIVES[kind](cfg, model, tokenizer, train_records)
    if kind != "pairs" or distillation is not None:
        from raw_rm.losses import build_pair_terms

        # The calibration and length terms train the pairs objective only: refuse them elsewhere, never ignore them.
        length_head = bool(getattr(getattr(model, "model_cfg", None), "length_head", False))
        terms = build_pair_terms(cfg.loss, length_head=length_head, data_kind=kind)
        if terms.active or terms.temperature is not None or length_head:
            raise ConfigError(
                "distillation trains on the teacher's rewards: the calibration and length terms "
                "(loss.*_coef, loss.learned_temperature, model.length_head) do not apply; switch them off"
            )
    if cfg.loss.uncertainty_weighting and not objective.supports_uncertainty_weighting:
        raise ConfigError(
            "loss.uncertainty_weighting=true needs pairs and an ensemble of heads to measure disagreement: use "
            "data.kind=pairs with model.arch=multihead (model.num_heads >= 2), or set loss.uncertainty_weighting=false"
        )
    return objective
