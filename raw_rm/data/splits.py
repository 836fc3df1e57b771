"""Deterministic train/validation split keyed by a hash of the prompt: one prompt never lands on both sides."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def prompt_bucket(prompt: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``sha256(salt + prompt)``: the same prompt and salt always give the same value."""
    digest = hashlib.sha256((salt + prompt).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_prompt(records: Sequence[T], val_fraction: float, salt: str) -> tuple[list[T], list[T]]:
    """(train, val): a record goes to validation when its prompt's bucket is below ``val_fraction``.

    Every record with the same ``prompt`` lands on the same side, so no prompt leaks from training into
    validation; the order of records is kept on both sides. The validation share is ``val_fraction`` of
    the distinct prompts in expectation (not exactly).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected 0 <= value < 1, got {val_fraction}")
    train: list[T] = []
    val: list[T] = []
    cache: dict[str, bool] = {}
    for record in records:
        prompt = record.prompt  # type: ignore[attr-defined] - every record type has a prompt
        is_val = cache.get(prompt)
        if is_val is None:
            is_val = cache[prompt] = prompt_bucket(prompt, salt) < val_fraction
        (val if is_val else train).append(record)
    return train, val
