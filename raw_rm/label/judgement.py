"""One annotator's answer on one item, its validation, and its comparison values (see ``agreement``).

A submission (the JSON body of ``POST /api/judgements``; response indices are the item's own, not the display
order)::

    {"item_id": 7, "decision": "ranked", "ranks": [1, 0], "strength": "clear",
     "aspects": {"helpfulness": 1, "harmlessness": "tie"}, "note": "A is rude"}

- ``decision``: ``ranked`` (``ranks`` given: 0 = best, equal ranks tie), ``tie`` (all equally good) or ``skip``
  (cannot judge; frees the slot for another annotator and counts in no statistic).
- ``strength``: ``slight`` or ``clear``, for a ranked pair only (optional).
- ``aspects``: per aspect of the session, the index of the better response (of the best, for k > 2) or ``"tie"``.
- ``note``: free text, at most ``MAX_NOTE_CHARS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

MAX_NOTE_CHARS = 2000
DECISIONS = ("ranked", "tie", "skip")
STRENGTHS = ("slight", "clear")


class JudgementError(ValueError):
    """A submission that does not fit its item; ``field`` names the offending field of the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Judgement:
    item_id: int
    decision: Literal["ranked", "tie", "skip"]
    ranks: list[int] | None = None  # per response (item order), 0 = best; None for tie and skip
    strength: Literal["slight", "clear"] | None = None
    aspects: dict[str, int | Literal["tie"]] = field(default_factory=dict)
    note: str = ""


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_judgement(body: Any, *, k: int, aspects: list[str]) -> Judgement:
    """Validate a submission for an item of ``k`` responses in a session with these ``aspects``.

    Raises:
        JudgementError: the first problem, naming the field (``ranks[1]``, ``aspects.helpfulness``, ...).
    """
    if not isinstance(body, dict):
        raise JudgementError("body", f"expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"item_id", "decision", "ranks", "strength", "aspects", "note"})
    if unknown:
        raise JudgementError(unknown[0], "unknown field; expected item_id, decision, ranks, strength, aspects, note")
    item_id = body.get("item_id")
    if not _int(item_id):
        raise JudgementError("item_id", f"expected an integer, got {item_id!r}")
    decision = body.get("decision")
    if decision not in DECISIONS:
        raise JudgementError("decision", f"expected one of {', '.join(DECISIONS)}, got {decision!r}")
    ranks = body.get("ranks")
    if decision == "ranked":
        if not isinstance(ranks, list) or len(ranks) != k:
            raise JudgementError("ranks", f"expected a list of {k} integers (0 = best), got {ranks!r}")
        for i, r in enumerate(ranks):
            if not _int(r) or not 0 <= r < k:
                raise JudgementError(f"ranks[{i}]", f"expected an integer in 0..{k - 1}, got {r!r}")
        if len(set(ranks)) < 2:
            raise JudgementError("ranks", 'all responses ranked equal: send decision "tie" instead')
    elif ranks is not None:
        raise JudgementError("ranks", f'only with decision "ranked", got decision "{decision}"')
    strength = body.get("strength")
    if strength is not None:
        if strength not in STRENGTHS:
            raise JudgementError("strength", f"expected one of {', '.join(STRENGTHS)} or null, got {strength!r}")
        if decision != "ranked" or k != 2:
            raise JudgementError("strength", "only for a ranked pair of two responses")
    return Judgement(
        item_id,
        decision,
        ranks,
        strength,
        _parse_aspects(body.get("aspects"), k, aspects),
        _parse_note(body.get("note")),
    )


def _parse_aspects(value: Any, k: int, aspects: list[str]) -> dict[str, int | str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JudgementError("aspects", f'expected an object {{aspect: response index or "tie"}}, got {value!r}')
    out: dict[str, int | str] = {}
    for name, choice in value.items():
        if name not in aspects:
            known = ", ".join(aspects) or "none in this session"
            raise JudgementError(f"aspects.{name}", f"unknown aspect; known: {known}")
        if choice != "tie" and not (_int(choice) and 0 <= choice < k):
            raise JudgementError(f"aspects.{name}", f'expected a response index in 0..{k - 1} or "tie", got {choice!r}')
        out[name] = choice
    return out


def _parse_note(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise JudgementError("note", f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_NOTE_CHARS:
        raise JudgementError("note", f"{len(value)} characters; at most {MAX_NOTE_CHARS}")
    return value


def comparison_values(judgement: Judgement, k: int) -> dict[tuple[int, int], int]:
    """``{(i, j): value}`` for every comparison i < j of the item, on the ordinal scale of ``agreement`` (+ = i
    better; +-2 clear, +-1 slight or no strength, 0 tie); empty for a skip."""
    if judgement.decision == "skip":
        return {}
    if judgement.decision == "tie":
        return {(i, j): 0 for i in range(k) for j in range(i + 1, k)}
    size = 2 if judgement.strength == "clear" else 1
    ranks = judgement.ranks
    assert ranks is not None and len(ranks) == k, f"ranked judgement with ranks {ranks} for k={k}"
    return {(i, j): size * ((ranks[i] < ranks[j]) - (ranks[i] > ranks[j])) for i in range(k) for j in range(i + 1, k)}


def aspect_values(judgement: Judgement, aspect: str, k: int) -> dict[tuple[int, int], int]:
    """``{(i, j): +1 / 0 / -1}`` for one aspect: every comparison for "tie", else the comparisons of the named better
    (best) response with each other response; empty when the aspect was not answered."""
    choice = judgement.aspects.get(aspect)
    if choice is None:
        return {}
    if choice == "tie":
        return {(i, j): 0 for i in range(k) for j in range(i + 1, k)}
    return {(min(choice, j), max(choice, j)): 1 if choice < j else -1 for j in range(k) if j != choice}
