"""From judgements to agreement tables and to training data in raw_rm's formats.

Pairs (``as_pairs``): one row per comparison (a pair of responses of an item; a k-wise item gives k(k-1)/2) that
``min_judgements`` or more annotators judged, in the standard pair format ``raw-rm train --data`` reads::

    {"prompt": ..., "chosen": ..., "rejected": ..., "weight": 0.6667, "item_id": 3, "n_judgements": 3,
     "source": "pool.jsonl:12"}

``chosen`` is the response the majority preferred; ``weight`` is the share of the annotators who judged the
comparison that agree with it (ties count against), the annotator agreement that confidence-aware training
(``loss.use_weights``) weighs each pair's loss by. A comparison whose majority is a tie, or without a strict
majority (1 vs 1), carries no direction to learn: it is counted and not written. ``aspect=NAME`` writes that
aspect's answers instead (with ``"aspect": NAME``), for per-aspect data.

Groups (``as_groups``): one k-wise row per item in the ranked format, ranks from the annotators' mean rank (a tie
judgement ranks every response equal); ``agreement`` is the mean pairwise agreement over the item's comparisons.
The group losses take no per-group weight, so it is there to filter on, not used by training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raw_rm.data.formats import ranks_from_scores
from raw_rm.label.agreement import Table, Unit, direction, majority, unit_agreement
from raw_rm.label.judgement import aspect_values, comparison_values
from raw_rm.label.store import Item, JudgementRow

logger = logging.getLogger(__name__)

Judgements = Mapping[int, Sequence[JudgementRow]]
KINDS = ("pairs", "groups")


class ExportError(ValueError):
    """Export options that do not fit the session; ``field`` names the option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def comparison_table(items: Sequence[Item], judgements: Judgements, *, aspect: str | None = None) -> Table:
    """``{(item_id, i, j): {annotator: value}}`` over every answered comparison (skips left out)."""
    table: dict[Unit, dict[str, int]] = {}
    for item in items:
        k = len(item.responses)
        for row in judgements.get(item.id, ()):
            values = comparison_values(row.judgement, k) if aspect is None else aspect_values(row.judgement, aspect, k)
            for (i, j), value in values.items():
                table.setdefault((item.id, i, j), {})[row.annotator] = value
    return table


def model_differences(items: Sequence[Item]) -> dict[Unit, float]:
    """``{(item_id, i, j): r_i - r_j}`` of the reward model's rewards, for the items that carry them."""
    out = {}
    for item in items:
        if item.model_rewards is None:
            continue
        r = item.model_rewards
        for i in range(len(r)):
            for j in range(i + 1, len(r)):
                out[(item.id, i, j)] = float(r[i] - r[j])
    return out


def as_pairs(
    items: Sequence[Item], judgements: Judgements, *, min_judgements: int = 1, aspect: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(pair rows, ``{reason: comparisons not written}``); see the module docstring."""
    if min_judgements < 1:
        raise ValueError(f"min_judgements: expected >= 1, got {min_judgements}")
    by_id = {item.id: item for item in items}
    rows, skipped = [], {"too_few_judgements": 0, "majority_tie": 0, "no_majority": 0}
    for (item_id, i, j), ratings in comparison_table(items, judgements, aspect=aspect).items():
        values = list(ratings.values())
        if len(values) < min_judgements:
            skipped["too_few_judgements"] += 1
            continue
        verdict = majority(values)
        if verdict is None or verdict == 0:
            skipped["no_majority" if verdict is None else "majority_tie"] += 1
            continue
        item = by_id[item_id]
        chosen, rejected = (i, j) if verdict > 0 else (j, i)
        row = {
            "prompt": item.prompt,
            "chosen": item.responses[chosen],
            "rejected": item.responses[rejected],
            "weight": round(sum(direction(v) == verdict for v in values) / len(values), 4),
            "item_id": item_id,
            "n_judgements": len(values),
            "source": item.source,
        }
        if aspect is not None:
            row["aspect"] = aspect
        rows.append(row)
    return rows, {k: v for k, v in skipped.items() if v}


def as_groups(
    items: Sequence[Item], judgements: Judgements, *, min_judgements: int = 1
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(k-wise rows, ``{reason: items not written}``); see the module docstring."""
    if min_judgements < 1:
        raise ValueError(f"min_judgements: expected >= 1, got {min_judgements}")
    rows, skipped = [], {"too_few_judgements": 0, "all_tied": 0}
    for item in items:
        answered = [r.judgement for r in judgements.get(item.id, ()) if r.judgement.decision != "skip"]
        if len(answered) < min_judgements:
            skipped["too_few_judgements"] += 1
            continue
        k = len(item.responses)
        mean_rank = np.mean([j.ranks if j.decision == "ranked" else [0] * k for j in answered], axis=0)
        ranks = ranks_from_scores([-float(r) for r in mean_rank])  # larger score = better, so a lower rank
        if len(set(ranks)) < 2:
            skipped["all_tied"] += 1
            continue
        values_per_unit: dict[tuple[int, int], list[int]] = {}
        for j in answered:
            for unit, value in comparison_values(j, k).items():
                values_per_unit.setdefault(unit, []).append(value)
        shares = [unit_agreement(v) for v in values_per_unit.values()]
        shares = [s for s in shares if s is not None]
        rows.append(
            {
                "prompt": item.prompt,
                "responses": item.responses,
                "ranks": ranks,
                "item_id": item.id,
                "n_judgements": len(answered),
                "agreement": round(float(np.mean(shares)), 4) if shares else None,
                "source": item.source,
            }
        )
    return rows, {k: v for k, v in skipped.items() if v}


def export_rows(
    items: Sequence[Item],
    judgements: Judgements,
    *,
    kind: str = "pairs",
    min_judgements: int = 1,
    aspect: str | None = None,
    session_aspects: Sequence[str] = (),
) -> tuple[list[dict], dict[str, int]]:
    """``as_pairs`` or ``as_groups`` by ``kind``, the options checked against the session.

    Raises:
        ExportError: an unknown kind, ``min_judgements`` < 1, or an aspect the session does not ask (or with groups).
    """
    if kind not in KINDS:
        raise ExportError("as", f"expected pairs or groups, got {kind!r}")
    if min_judgements < 1:
        raise ExportError("min_judgements", f"expected >= 1, got {min_judgements}")
    if aspect is not None and (kind != "pairs" or aspect not in session_aspects):
        raise ExportError(
            "aspect",
            f"{aspect!r}: expected one of the session's aspects ({', '.join(session_aspects) or 'none'}) with pairs",
        )
    if kind == "pairs":
        return as_pairs(items, judgements, min_judgements=min_judgements, aspect=aspect)
    return as_groups(items, judgements, min_judgements=min_judgements)
