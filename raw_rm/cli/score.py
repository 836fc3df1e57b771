"""`raw-rm score`: score prompt/response pairs from JSONL into JSONL (reward, normalised reward, members).

Input rows: {"prompt": ..., "response": ...} or HH style {"text": "\\n\\nHuman: ...\\n\\nAssistant: ..."} (split
at the last Assistant turn). Other fields are copied to the output unchanged.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

from raw_rm.cli._io import InputError, read_jsonl, require_str, show_progress, write_jsonl
from raw_rm.cli.common import local_model_dir
from raw_rm.data.formats import split_hh_dialogue


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="model directory, or a registry URI: models:/NAME@alias, models:/NAME/VERSION, runs:/ID/model"
    )
    parser.add_argument(
        "--input", "-i", required=True, help='JSONL (.jsonl or .jsonl.gz; "-" = stdin) with prompt/response or text'
    )
    parser.add_argument("--output", "-o", default="-", help='JSONL to write ("-" = stdout, the default)')
    parser.add_argument("--prompt-field", default="prompt", help="input field holding the prompt")
    parser.add_argument("--response-field", default="response", help="input field holding the response")
    parser.add_argument("--text-field", default="text", help="HH-style field used when the prompt field is absent")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument(
        "--max-len-tokens",
        type=int,
        default=None,
        help="token budget per text (default: the length the model was trained at, from its metadata; else 512)",
    )
    parser.add_argument("--chunk", type=int, default=512, help="rows scored per progress update")


def _prompt_response(row: dict, where: str, args: argparse.Namespace) -> tuple[str, str]:
    if args.prompt_field in row or args.text_field not in row:
        return require_str(row, args.prompt_field, where), require_str(row, args.response_field, where)
    text = require_str(row, args.text_field, where)
    try:
        return split_hh_dialogue(text)
    except ValueError as exc:
        raise InputError(
            f'{where}: field "{args.text_field}": {exc}; give "{args.prompt_field}" and "{args.response_field}" instead'
        ) from exc


def _scored_rows(rm: Any, rows: list[dict], items: list[tuple[str, str]], *, chunk: int, bar: Any) -> Iterator[dict]:
    """The output rows, ``chunk`` rows per forward pass: each input row plus reward, reward_normalized, members."""
    for start in range(0, len(rows), chunk):
        part = items[start : start + chunk]
        prompts, responses = [p for p, _ in part], [r for _, r in part]
        members = rm.batch_predict_members(prompts, responses)
        rewards = rm.batch_predict(prompts, responses)  # cached: no second forward
        normalized = rm.normalize(rewards)
        for j, row in enumerate(rows[start : start + chunk]):
            result = dict(row, reward=float(rewards[j]), reward_normalized=float(normalized[j]))
            if members.shape[1] > 1:
                result["members"] = [float(x) for x in members[j]]
            yield result
        if bar is not None:
            bar.update(len(part))


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        print(f"raw-rm score: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        rows, items = [], []
        for where, row in read_jsonl(args.input):
            items.append(_prompt_response(row, where, args))
            rows.append(row)
        if not rows:
            raise InputError(f"{args.input}: no rows to score")
        # raw_rm.quantization (torch, transformers) is imported inside run(): `raw-rm score --help` loads this module
        from raw_rm.quantization import load_for_inference

        rm = load_for_inference(
            local_model_dir(args.model), batch_size=args.batch_size, max_len_tokens=args.max_len_tokens
        )
    except (InputError, ValueError, OSError) as exc:
        print(f"raw-rm score: error: {exc}", file=sys.stderr)
        return 2
    bar = None
    if show_progress():
        bar = tqdm(total=len(rows), desc="score", unit="text")
    t0 = time.perf_counter()
    try:
        write_jsonl(args.output, _scored_rows(rm, rows, items, chunk=args.chunk, bar=bar))
    finally:
        if bar is not None:
            bar.close()
    dt = time.perf_counter() - t0
    print(f"scored {len(rows)} responses in {dt:.1f}s ({len(rows) / dt:.1f}/s) -> {args.output}", file=sys.stderr)
    return 0
