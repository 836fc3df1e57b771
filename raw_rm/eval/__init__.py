"""Evaluation: accuracy, calibration with temperature scaling, robustness probes, uncertainty, and the report.

- ``evaluator.py``: :class:`RewardModelEvaluator` (score once, then every metric) and :func:`save_temperature`.
- ``probes.py``: the adversarial probes (pure transformations of pairs).
- ``report.py``: :class:`EvalReport` and the report folder (metrics.json, PNGs, index.html, summary.md).

:func:`evaluate_model_dir` is the call the training pipeline and the MLflow edge make after training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.eval.evaluator import RewardModelEvaluator, save_temperature
from raw_rm.eval.probes import PROBE_NAMES, PROBES, apply_probes
from raw_rm.eval.report import EvalReport, write_report

__all__ = [
    "PROBES",
    "PROBE_NAMES",
    "EvalReport",
    "RewardModelEvaluator",
    "apply_probes",
    "as_eval_sets",
    "evaluate_model_dir",
    "model_info",
    "save_temperature",
    "write_report",
]

logger = logging.getLogger(__name__)
CALIBRATION_SALT = ":calibration"  # appended to data.split_seed: the calibration split differs from train/val


def as_eval_sets(records: Sequence[Any]) -> dict[str, list[Any]]:
    """Sort loaded records into ``pairs`` (always), ``groups`` and ``ratings`` (when the data has them).

    Groups become all their strictly ordered pairs; ratings become pairs by the mean rating of each prompt's
    responses (``raw_rm.data.formats``), so preference accuracy is defined for every kind of data.
    """
    from raw_rm.data.formats import group_to_pairs, ratings_to_pairs

    out: dict[str, list[Any]] = {"pairs": [], "groups": [], "ratings": []}
    for record in records:
        if isinstance(record, PreferencePair):
            out["pairs"].append(record)
        elif isinstance(record, RankedGroup):
            out["groups"].append(record)
            out["pairs"].extend(group_to_pairs(record))
        elif isinstance(record, RatedResponse):
            out["ratings"].append(record)
        else:
            raise TypeError(f"expected PreferencePair, RankedGroup or RatedResponse records, got "
                            f"{type(record).__name__}")
    if out["ratings"]:
        out["pairs"].extend(ratings_to_pairs(out["ratings"]))
    return out


def model_info(inference: Any) -> dict[str, Any]:
    """What the report says about the model: source, version, architecture, base model, members."""
    md = getattr(inference, "metadata", None)
    model = getattr(inference, "model", None)
    return {
        "source": str(getattr(inference, "source", "")),
        "version": getattr(inference, "version", None),
        "arch": getattr(model, "arch", None),
        "base_model": getattr(md, "base_model", None),
        "stored_temperature": getattr(md, "temperature", None),
        "max_len_tokens": getattr(inference, "max_len_tokens", None),
    }


def evaluate_model_dir(cfg: Any, model_dir: str | Path, *, progress: bool = False, save: bool = True) -> EvalReport:
    """Evaluate a freshly trained model on its validation data (``cfg.data``), as the promotion gate needs.

    The validation records are split by prompt hash in halves: T is fitted on one half and everything is
    measured on the other (with fewer than 2 pairs on a side, T is fitted on the evaluation pairs themselves,
    which is logged). With ``save`` the fitted T is written into the model folder's metadata, so the model
    that is logged and registered afterwards carries it.
    """
    from raw_rm.compression import load_for_inference
    from raw_rm.data import load_train_val
    from raw_rm.data.splits import split_by_prompt

    inference = load_for_inference(model_dir, max_len_tokens=cfg.data.max_len_tokens)
    _, val_records, _ = load_train_val(cfg, tokenizer=inference.tokenizer)
    test_records, calib_records = split_by_prompt(val_records, 0.5, cfg.data.split_seed + CALIBRATION_SALT)
    sets, calib = as_eval_sets(test_records), as_eval_sets(calib_records)["pairs"]
    if len(sets["pairs"]) < 2 or len(calib) < 2:
        sets = as_eval_sets(val_records)
        logger.warning("validation split too small to hold out calibration pairs (%d pairs): fitting T on the "
                       "evaluation pairs themselves", len(sets["pairs"]))
        calib = sets["pairs"]
    evaluator = RewardModelEvaluator(inference, n_boot=1000, progress=progress, seed=cfg.train.seed)
    return evaluator.run(
        sets["pairs"], name="validation", val_pairs=calib, groups=sets["groups"] or None,
        ratings=sets["ratings"] or None, save_temperature=save, model_info=model_info(inference),
    )
