"""Padding-free packing: several tokenised sequences in one row, so no pad tokens are computed.

A padded batch of N rows of T tokens computes N x T positions however short most rows are; packing puts the
sequences end to end in rows of at most ``row_tokens`` tokens (first-fit decreasing), each sequence's
``position_ids`` counting from 0 again. A decoder given ``position_ids`` and no ``attention_mask`` (transformers'
packed format) attends within each sequence only: a block-diagonal causal mask under ``sdpa``/``eager``,
variable-length kernels under ``flash_attention_2``. Each sequence's reward is read at its last token,
``pack_index``.

    packed = pack_sequences(input_ids, attention_mask, pad_id=0, row_tokens=8)
    # input_ids (N=3, T=5) with lengths 5, 2, 3 ->
    # packed["input_ids"]    (2, 8): [a0 a1 a2 a3 a4 c0 c1 c2], [b0 b1 pad pad pad pad pad pad]
    # packed["position_ids"] (2, 8): [0 1 2 3 4 0 1 2],         [0 1 0 1 2 3 4 5]
    # packed["pack_index"]   (3, 2): [[0, 4], [1, 1], [0, 7]]   (row, column) of each sequence's last token

The pad tail of a row gets positions of its own (a sequence nobody reads), so it never joins the sequence before it.
"""

from __future__ import annotations

import torch


def pack_order(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: the sequence indices of each row, no row over ``row_tokens`` tokens.

    Raises:
        ValueError: a sequence longer than ``row_tokens``.
    """
    too_long = [n for n, length in enumerate(lengths) if length > row_tokens]
    if too_long:
        raise ValueError(
            f"packing: sequence {too_long[0]} has {lengths[too_long[0]]} tokens, over row_tokens={row_tokens}"
        )
    rows: list[list[int]] = []
    free: list[int] = []
    for n in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, space in enumerate(free) if space >= lengths[n]), None)
        if row is None:
            rows.append([])
            free.append(row_tokens)
            row = len(rows) - 1
        rows[row].append(n)
        free[row] -= lengths[n]
    return rows


def pack_sequences(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, *, pad_id: int, row_tokens: int | None = None
) -> dict[str, torch.Tensor]:
    """Pack the real tokens of a padded (N, T) batch (either padding side) into rows (module docstring).

    Args:
        row_tokens: the most tokens a row holds (default: the longest sequence, so no sequence is split).

    Returns:
        ``input_ids`` (R, L) and ``position_ids`` (R, L) long, ``pack_index`` (N, 2) long: (row, column) of
        sequence n's last token, in the input's order. L is the fullest row's length.
    """
    mask = attention_mask.bool()
    lengths = mask.sum(1).tolist()
    rows = pack_order(lengths, row_tokens if row_tokens is not None else max(lengths))
    width = max(sum(lengths[n] for n in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=input_ids.dtype)
    positions = torch.empty((len(rows), width), dtype=torch.long)
    index = torch.empty((len(lengths), 2), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for n in row:
            length = lengths[n]
            ids[r, start : start + length] = input_ids[n][mask[n]]
            positions[r, start : start + length] = torch.arange(length)
            index[n] = torch.tensor([r, start + length - 1])
            start += length
        positions[r, start:] = torch.arange(width - start)
    return {
        "input_ids": ids.to(input_ids.device),
        "position_ids": positions.to(input_ids.device),
        "pack_index": index.to(input_ids.device),
    }


def pack_features(features: dict[str, torch.Tensor], *, pad_id: int, row_tokens: int) -> dict[str, torch.Tensor]:
    """A padded concat batch's features (``input_ids``, ``attention_mask``; decoders ignore ``token_type_ids``)
    as packed rows of at most ``row_tokens`` tokens (:func:`pack_sequences`)."""
    return pack_sequences(features["input_ids"], features["attention_mask"], pad_id=pad_id, row_tokens=row_tokens)
