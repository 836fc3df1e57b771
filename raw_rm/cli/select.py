"""`raw-rm select`: the N unlabelled pairs an ensemble is least sure about, as JSONL, for humans to label next.

Pool rows: {"prompt": ..., "response_a": ..., "response_b": ...} (``--a-field``/``--b-field``); rows with
"chosen"/"rejected" instead are read the same way (their labels are ignored). Output rows are the input rows,
most informative first, plus ``selection_score``, ``selection_rank`` (0 = first), ``strategy``, ``prob_a`` (the
ensemble's calibrated P(a ≻ b)) and ``delta_std`` (std over members of r_a − r_b, normalised units).
Strategies (``raw_rm.uncertainty.selection_scores``, on the normalised member rewards; Δ_k = r_a,k − r_b,k):

    std            −|mean_k Δ_k| / std_k Δ_k: pairs whose order the members are least sure of (margin in units of
                   the members' spread); needs >= 2 members
    disagreement   4·Var_k σ(Δ_k): spread of the members' P(a ≻ b); needs >= 2 members
    margin         −|mean_k Δ_k|: pairs the mean reward can barely tell apart
    random         seeded uniform order (``--seed``)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raw_rm.cli._io import InputError, read_jsonl, require_str, write_jsonl
from raw_rm.cli.common import local_model_dir

STRATEGIES = ("std", "disagreement", "margin", "random")
NEEDS_MEMBERS = ("std", "disagreement")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="ensemble or multi-head model folder, or a models:/ URI")
    parser.add_argument("--pool", required=True, help="JSONL (.jsonl or .jsonl.gz) of unlabelled pairs")
    parser.add_argument("--k", type=int, required=True, help="how many pairs to select")
    parser.add_argument("--strategy", choices=STRATEGIES, default="disagreement", help="informativeness score")
    parser.add_argument("--out", default="-", help='JSONL to write ("-" = stdout)')
    parser.add_argument(
        "--a-field", default="response_a", help="pool field of the first response (falls back to chosen)"
    )
    parser.add_argument(
        "--b-field", default="response_b", help="pool field of the second response (falls back to rejected)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument(
        "--max-len-tokens",
        type=int,
        default=None,
        help="token budget per text (default: the length the model was trained at, from its metadata; else 512)",
    )


def read_pool(path: str, a_field: str, b_field: str) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """(rows, [(prompt, a, b)]) of a pool file; a row without ``a_field``/``b_field`` uses chosen/rejected."""

    rows, items = [], []
    for where, row in read_jsonl(path):
        fa, fb = (a_field, b_field) if a_field in row or "chosen" not in row else ("chosen", "rejected")
        items.append((require_str(row, "prompt", where), require_str(row, fa, where), require_str(row, fb, where)))
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no pairs in the pool")
    return rows, items


def select_pairs(
    rm: Any, items: list[tuple[str, str, str]], k: int, strategy: str, *, seed: int = 0
) -> list[dict[str, float]]:
    """Score the pool with ``rm`` (a RewardModelInference) and return the top ``k`` as dicts, best first:
    ``index`` (into ``items``), ``selection_score``, ``prob_a``, ``delta_std``.

    Raises:
        ValueError: an unknown strategy, ``k`` out of range, or std/disagreement with a one-member model.
    """
    # torch and the modules that import it are imported inside run(): `raw-rm select --help` loads this module
    import torch

    from raw_rm.uncertainty import compare_pairs, select_top_k, selection_scores

    if strategy not in STRATEGIES:
        raise ValueError(f'unknown strategy "{strategy}"; valid: {", ".join(STRATEGIES)}')
    prompts = [p for p, _, _ in items]
    members = rm.batch_predict_members(prompts * 2, [a for _, a, _ in items] + [b for _, _, b in items])
    n = len(items)
    if strategy in NEEDS_MEMBERS and members.shape[1] < 2:
        raise ValueError(
            f"strategy {strategy} needs an ensemble (>= 2 members) but {rm.source} gives 1 reward per text; "
            "use margin or random, or an ensemble / multi-head model"
        )
    raw_a, raw_b = torch.as_tensor(members[:n]), torch.as_tensor(members[n:])
    norm_a, norm_b = torch.as_tensor(rm.normalize(members[:n])), torch.as_tensor(rm.normalize(members[n:]))
    scores = selection_scores(strategy, norm_a, norm_b, seed=seed)
    top = select_top_k(scores, k)
    cmp_raw = compare_pairs(raw_a, raw_b, temperature=rm.temperature)  # temperature is fitted on raw rewards
    cmp_norm = compare_pairs(norm_a, norm_b)
    return [
        {
            "index": int(i),
            "selection_score": float(scores[i]),
            "prob_a": float(cmp_raw["prob"][i]),
            "delta_std": float(cmp_norm["delta_std"][i]),
        }
        for i in top.tolist()
    ]


def run(args: argparse.Namespace) -> int:
    try:
        rows, items = read_pool(args.pool, args.a_field, args.b_field)
        if not 1 <= args.k <= len(rows):
            raise InputError(f"--k {args.k}: expected 1 <= k <= {len(rows)} (the pool size)")
        from raw_rm.quantization import load_for_inference

        rm = load_for_inference(
            local_model_dir(args.model), batch_size=args.batch_size, max_len_tokens=args.max_len_tokens
        )
        picked = select_pairs(rm, items, args.k, args.strategy, seed=args.seed)
    except (InputError, ValueError, OSError) as exc:
        print(f"raw-rm select: error: {exc}", file=sys.stderr)
        return 2
    write_jsonl(
        args.out,
        (
            dict(
                rows[item["index"]],
                selection_score=item["selection_score"],
                selection_rank=rank,
                strategy=args.strategy,
                prob_a=item["prob_a"],
                delta_std=item["delta_std"],
            )
            for rank, item in enumerate(picked)
        ),
    )
    print(f"selected {len(picked)} of {len(rows)} pairs by {args.strategy} -> {args.out}", file=sys.stderr)
    return 0
