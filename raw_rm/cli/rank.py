"""`raw-rm rank`: rank k responses per prompt. Input JSONL rows {"prompt": ..., "responses": [...]}.

Each output row adds "order" (indices of responses, best first), "rewards" (input order) and "best".
"""

from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

from raw_rm.cli._io import InputError, read_jsonl, require_str, show_progress, write_jsonl
from raw_rm.cli.common import local_model_dir


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="model directory, or a registry URI: models:/NAME@alias, models:/NAME/VERSION, runs:/ID/model"
    )
    parser.add_argument("--input", "-i", required=True, help='JSONL with "prompt" and "responses" ("-" = stdin)')
    parser.add_argument("--output", "-o", default="-", help='JSONL to write ("-" = stdout)')
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument(
        "--max-len-tokens",
        type=int,
        default=None,
        help="token budget per text (default: the length the model was trained at, from its metadata; else 512)",
    )


def _read(path: str) -> list[tuple[dict, str, list[str]]]:
    out = []
    for where, row in read_jsonl(path):
        prompt = require_str(row, "prompt", where)
        responses = row.get("responses")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise InputError(f'{where}: field "responses": expected a list of strings, got {type(responses).__name__}')
        if not responses:
            raise InputError(f'{where}: field "responses": empty list, nothing to rank')
        out.append((row, prompt, responses))
    if not out:
        raise InputError(f"{path}: no rows to rank")
    return out


def run(args: argparse.Namespace) -> int:
    try:
        rows = _read(args.input)
        # raw_rm.quantization (torch, transformers) is imported inside run(): `raw-rm rank --help` loads this module
        from raw_rm.quantization import load_for_inference

        rm = load_for_inference(
            local_model_dir(args.model), batch_size=args.batch_size, max_len_tokens=args.max_len_tokens
        )
    except (InputError, ValueError, OSError) as exc:
        print(f"raw-rm rank: error: {exc}", file=sys.stderr)
        return 2
    prompts = [p for _, p, rs in rows for _ in rs]
    responses = [r for _, _, rs in rows for r in rs]
    rm.batch_predict(prompts, responses)  # one length-sorted pass over everything; rank_responses hits the cache
    iterator = rows
    if show_progress():
        iterator = tqdm(rows, desc="rank", unit="prompt")

    def ranked_rows():
        for row, prompt, responses_ in iterator:
            order, rewards = rm.rank_responses(prompt, responses_)
            yield dict(row, order=order, rewards=[float(x) for x in rewards], best=order[0])

    write_jsonl(args.output, ranked_rows())
    print(f"ranked {len(rows)} prompts ({len(responses)} responses) -> {args.output}", file=sys.stderr)
    return 0
