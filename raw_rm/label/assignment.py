"""Which item an annotator sees next (pure: the store gathers the counts inside one write transaction).

Rules, in order:

1. An annotator who holds an unexpired lease on an item they have not answered gets that item again (a reload or
   a server restart shows the same item instead of a new one).
2. Never an item the annotator has answered (judged or skipped): nobody sees an item twice.
3. Only items with a free slot: fewer than ``per_item`` judgements plus unexpired leases of other annotators
   (a skip frees the slot for someone else).
4. Among those, the item closest to complete first (most judgements, then most leases), then pool order: items
   reach ``per_item`` annotators early, so agreement can be measured from the first hour, rather than every
   item being seen once before any is seen twice.

Display order: each annotator sees an item's responses in their own seeded shuffle (``display_order``), so that a
preference for the left or first answer does not line up with the pool's order (``raw-rm select`` and chosen/
rejected files put the same kind of response first).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass


@dataclass(frozen=True)
class Slots:
    """What the store knows about one item when an annotator asks for work."""

    item_id: int
    judged: int  # non-skip judgements by anyone
    leased_by_others: int  # unexpired leases of other annotators who have not answered yet


def pick_item(
    slots: Sequence[Slots], *, answered: AbstractSet[int], own_lease: int | None, per_item: int
) -> int | None:
    """The item the annotator should see next, or None when there is nothing left for them.

    Args:
        slots: every item, in pool order.
        answered: items this annotator judged or skipped.
        own_lease: the item this annotator holds an unexpired lease on (None: none).
        per_item: how many annotators should judge each item.
    """
    if per_item < 1:
        raise ValueError(f"per_item: expected >= 1, got {per_item}")
    if own_lease is not None and own_lease not in answered:
        return own_lease
    best: tuple[int, int, int] | None = None
    best_id = None
    for position, s in enumerate(slots):
        if s.item_id in answered or s.judged + s.leased_by_others >= per_item:
            continue
        key = (-s.judged, -s.leased_by_others, position)
        if best is None or key < best:
            best, best_id = key, s.item_id
    return best_id


def display_order(item_id: int, annotator: str, k: int) -> list[int]:
    """The order (response indices) in which ``annotator`` sees the ``k`` responses of ``item_id``: a shuffle seeded
    by both, the same on every request (a reload does not reorder the page)."""
    digest = hashlib.sha256(f"{item_id}/{annotator}".encode()).digest()
    order = list(range(k))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def remaining_for(slots: Sequence[Slots], *, answered: AbstractSet[int], per_item: int) -> int:
    """Items this annotator could still be given (ignoring leases, which expire): the progress bar's denominator."""
    return sum(1 for s in slots if s.item_id not in answered and s.judged < per_item)
