"""Items to label from a pool file: ``raw-rm select`` output, chosen/rejected pairs or k-wise groups.

Accepted rows (JSONL, JSONL.gz or Parquet; one kind per row, kinds may mix):

- ``{"prompt", "response_a", "response_b", ...}``: the pool format ``raw-rm select`` reads and writes (its
  ``selection_score``, ``selection_rank``, ``prob_a`` ... are kept as the item's extra fields).
- ``{"prompt"?, "chosen", "rejected"}`` in any pair format raw_rm reads (standard, conversational, HH dialogues):
  the label is ignored, both responses are shown.
- ``{"prompt" | "messages", "responses": [...]}``: a k-wise item (``ranks``/``scores`` ignored when present).

An item's key is a hash of its prompt and responses, so loading the same pool twice (a restart, or the next round
of ``raw-rm select`` that overlaps this one) adds only the new items.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from raw_rm.data.formats import PARSERS, DataError, Degenerate, detect_format
from raw_rm.data.readers import iter_rows

logger = logging.getLogger(__name__)

POOL_FIELDS = {"prompt", "messages", "response_a", "response_b", "chosen", "rejected", "responses", "ranks", "scores"}


@dataclass
class PoolItem:
    prompt: str
    responses: list[str]
    source: str  # "file:line" of the pool row
    extra: dict[str, Any] = field(default_factory=dict)  # the row's other fields (selection_score, id, ...)

    @property
    def key(self) -> str:
        """Content hash of prompt and responses: the same item in two pools is one item."""
        return hashlib.sha256(json.dumps([self.prompt, self.responses]).encode()).hexdigest()


def _row_item(row: dict[str, Any], where: str, a_field: str, b_field: str) -> PoolItem:
    extra = {k: v for k, v in row.items() if k not in POOL_FIELDS | {a_field, b_field}}
    if "responses" in row:
        # Ranks are what the annotators will give; the k-wise parser needs some to parse the prompt and responses.
        responses = row["responses"]
        ranks = list(range(len(responses))) if isinstance(responses, list) else None  # parse_ranked reports a non-list
        parsed = PARSERS["ranked"]({**row, "ranks": ranks, "scores": None}, where)
        return PoolItem(parsed.prompt, parsed.responses, where, extra)
    if a_field in row or b_field in row:
        for name in (a_field, b_field):
            if name not in row:
                raise DataError(f'{where}: field "{name}": missing; expected the {name} response of the pair')
        row = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
        row["chosen"], row["rejected"] = row.pop(a_field), row.pop(b_field)
    fmt = detect_format(row, where)
    if fmt not in ("standard", "conversational", "hh"):
        raise DataError(
            f"{where}: a {fmt} row; expected a pair (prompt/response_a/response_b or chosen/rejected) "
            "or a k-wise group (prompt/responses)"
        )
    pair = PARSERS[fmt](row, where)
    return PoolItem(pair.prompt, [pair.chosen, pair.rejected], where, extra)


def read_pool(
    source: str | os.PathLike, *, a_field: str = "response_a", b_field: str = "response_b"
) -> tuple[list[PoolItem], dict[str, int]]:
    """(items in file order, ``{drop reason: count}``) of a pool file. Rows with two equal or an empty response
    carry nothing to judge: counted per reason and logged, not loaded. A repeated item is loaded once.

    Raises:
        DataError: an unreadable file or a row that is neither a pair nor a group (naming file:line and field).
    """
    name, rows = iter_rows(source)
    items: list[PoolItem] = []
    seen: set[str] = set()
    dropped: dict[str, int] = {}
    for where, row in rows:
        try:
            item = _row_item(row, where, a_field, b_field)
        except Degenerate as exc:
            dropped[exc.reason] = dropped.get(exc.reason, 0) + 1
            continue
        if item.key in seen:
            dropped["duplicate"] = dropped.get("duplicate", 0) + 1
            continue
        seen.add(item.key)
        items.append(item)
    if not items:
        raise DataError(f"{name}: no items to label (dropped: {dropped or 'none'})")
    if dropped:
        logger.warning("%s: %d items; not loaded: %s", name, len(items), dropped)
    return items, dropped
