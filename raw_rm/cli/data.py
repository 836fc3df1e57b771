"""`raw-rm data`: inspect a data set the way training will read it.

    raw-rm data                                                    # the synthetic default (prints Bayes accuracy)
    raw-rm data --data harmless.jsonl.gz
    raw-rm data --data groups.jsonl data.kind=groups

Prints the format, kind, counts, dropped records by reason (with example file:line), the train/validation
split, and length percentiles in characters and in the backbone's tokens.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from raw_rm.cli.common import add_config_args, config_from_args
from raw_rm.data import DataError, load_train_val
from raw_rm.data.records import PreferencePair, RankedGroup
from raw_rm.data.synthetic import length_only_accuracy


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, flags=("data", "eval_data", "model"))
    parser.add_argument("--no-tokens", action="store_true", help="skip token-length percentiles (no tokenizer load)")


def _texts(record) -> list[tuple[str, str]]:
    if isinstance(record, PreferencePair):
        return [(record.prompt, record.chosen), (record.prompt, record.rejected)]
    if isinstance(record, RankedGroup):
        return [(record.prompt, r) for r in record.responses]
    return [(record.prompt, record.response)]


def _percentiles(name: str, values: list[int]) -> str:
    q = np.percentile(np.asarray(values), [50, 90, 99, 100]).round().astype(int)
    return f"  {name:<22} p50 {q[0]:>6}  p90 {q[1]:>6}  p99 {q[2]:>6}  max {q[3]:>6}"


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    tokenizer = None
    if not args.no_tokens:
        # raw_rm.models (torch, transformers) is imported inside run(): `raw-rm data --help` loads this module
        from raw_rm.models.backbones import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.backbone)
    try:
        train, val, report = load_train_val(cfg, tokenizer)
    except DataError as exc:
        print(f"raw-rm data: {exc}", file=sys.stderr)
        return 2
    print(f"source:  {report.source}")
    print(f"format:  {report.format}    kind: {cfg.data.kind} (read as {report.kind or cfg.data.kind})")
    print(f"records: read {report.n_read}, kept {report.n_kept}, train {len(train)}, validation {len(val)}")
    if report.dropped:
        print("dropped:")
        for reason, n in sorted(report.dropped.items()):
            print(f"  {reason:<24} {n:>6}   e.g. {', '.join(report.examples.get(reason, []))}")
    else:
        print("dropped: none")
    for key, n in sorted(report.notes.items()):
        print(f"note:    {key}: {n}")
    if report.eval_report is not None:
        print(f"eval:    {report.eval_report.summary()}")
    rows = [t for rec in train + val for t in _texts(rec)]
    print("lengths (characters):")
    print(_percentiles("prompt", [len(p) for p, _ in rows]))
    print(_percentiles("response", [len(r) for _, r in rows]))
    if tokenizer is not None:
        prompts = list(dict.fromkeys(p for p, _ in rows))
        n_prompt = dict(
            zip(prompts, map(len, tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]))
        )
        n_resp = [len(x) for x in tokenizer([r for _, r in rows], add_special_tokens=False, verbose=False)["input_ids"]]
        totals = [n_prompt[p] + n + 3 for (p, _), n in zip(rows, n_resp)]
        print(f"lengths ({cfg.model.backbone} tokens):")
        print(_percentiles("prompt", [n_prompt[p] for p, _ in rows]))
        print(_percentiles("response", n_resp))
        print(_percentiles("prompt+response+special", totals))
        over = sum(t > cfg.data.max_len_tokens for t in totals)
        print(
            f"  over data.max_len_tokens={cfg.data.max_len_tokens}: {over} of {len(totals)} sequences "
            f"({100 * over / len(totals):.1f}%) will be truncated (prompt from the left, response keeps its end)"
        )
    if report.bayes_accuracy:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in report.bayes_accuracy.items())
        print(f"Bayes accuracy (best possible, labels ~ Bradley-Terry, noise={cfg.data.synthetic.noise}): {parts}")
        print(f"length-only accuracy (longer response chosen): {length_only_accuracy(train + val):.4f}")
    return 0
