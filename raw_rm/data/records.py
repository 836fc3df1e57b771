"""Record types for human preference data: plain dataclasses, no framework.

Every record keeps ``source`` ("file:line" or "name[row]") so that any later error or report can point
back at the input that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PreferencePair:
    """One human judgement: ``chosen`` was preferred to ``rejected`` as a reply to ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None  # how much better chosen is (e.g. a rating gap); used by the margin loss
    weight: float | None = None  # annotator agreement / confidence in [0, 1]; used by confidence-aware training
    aspect: str | None = None  # which aspect the judgement is about (helpfulness, harmlessness, ...)
    source: str = ""  # "file:line" of the record it came from


@dataclass
class RankedGroup:
    """k responses to one prompt with human ranks (0 = best; equal ranks are ties)."""

    prompt: str
    responses: list[str]
    ranks: list[int]
    scores: list[float] | None = None  # optional per-response scores (larger = better)
    source: str = ""


@dataclass
class RatedResponse:
    """One response with per-aspect ratings, HelpSteer style (larger = better)."""

    prompt: str
    response: str
    ratings: dict[str, float] = field(default_factory=dict)
    source: str = ""
