"""Evaluation: accuracy, calibration with temperature scaling, robustness probes, uncertainty, and the report.

- ``evaluator.py``: :class:`RewardModelEvaluator` (score once, then every metric) and :func:`save_temperature`.
- ``probes.py``: the adversarial probes (pure transformations of pairs).
- ``report.py``: :class:`EvalReport` and the report folder (metrics.json, PNGs, index.html, summary.md).
- ``gate.py``: the one evaluation that gates promotion (:func:`evaluate_for_gate`), the one calibration split
  (:func:`calibration_split`) and :func:`evaluate_sets`, which `raw-rm eval` and the gate share.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from raw_rm.data.formats import group_to_pairs, ratings_to_pairs
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.eval.evaluator import RewardModelEvaluator, save_temperature
from raw_rm.eval.gate import calibration_split, evaluate_for_gate, evaluate_sets
from raw_rm.eval.probes import PROBE_NAMES, PROBES, apply_probes
from raw_rm.eval.report import EvalReport, write_report

__all__ = [
    "PROBES",
    "PROBE_NAMES",
    "EvalReport",
    "RewardModelEvaluator",
    "apply_probes",
    "as_eval_sets",
    "calibration_split",
    "evaluate_for_gate",
    "evaluate_sets",
    "model_info",
    "save_temperature",
    "write_report",
]

logger = logging.getLogger(__name__)


def as_eval_sets(records: Sequence[Any]) -> dict[str, list[Any]]:
    """Sort loaded records into ``pairs`` (always), ``groups`` and ``ratings`` (when the data has them).

    Groups become all their strictly ordered pairs; ratings become pairs by the mean rating of each prompt's
    responses (``raw_rm.data.formats``), so preference accuracy is defined for every kind of data.
    """

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
            raise TypeError(
                f"expected PreferencePair, RankedGroup or RatedResponse records, got {type(record).__name__}"
            )
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
