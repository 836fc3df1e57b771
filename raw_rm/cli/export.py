"""`raw-rm export`: copy a model to a directory, optionally int8-quantised; with --data, measure what int8 costs/gives."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from raw_rm.cli.common import local_model_dir
from raw_rm.data.formats import DataError
from raw_rm.data.readers import read_records


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="model directory, or a registry URI: models:/NAME@alias, models:/NAME/VERSION, runs:/ID/model"
    )
    parser.add_argument("--output", "-o", required=True, help="directory to write the exported model to")
    parser.add_argument(
        "--quantize", choices=["int8"], default=None, help="int8: dynamic quantisation of Linear layers (CPU)"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="preference pairs (JSONL/Parquet/...) to compare fp32 and int8 accuracy and speed on",
    )
    parser.add_argument("--limit", type=int, default=500, help="at most this many pairs from --data (default 500)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass when measuring")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")


def run(args: argparse.Namespace) -> int:
    # torch-backed modules (inference, quantization) are imported inside run(): `raw-rm export --help` loads this module
    from raw_rm.inference import resolve_model_uri
    from raw_rm.quantization import compare_quantized, write_quantized

    try:
        src = Path(resolve_model_uri(local_model_dir(args.model)))
        out = Path(args.output)
        if out.exists() and not args.force and out.resolve() != src.resolve():
            raise ValueError(f"{out}: already exists (use --force to overwrite)")
        if args.data and not args.quantize:
            raise ValueError("--data measures the int8 model against fp32: add --quantize int8")
        pairs = []
        if args.data:
            loaded = read_records(args.data, limit=args.limit)
            if loaded.kind != "pairs":
                raise ValueError(f"{args.data}: expected preference pairs, got {loaded.kind}")
            pairs = loaded.records
    except (DataError, ValueError, OSError) as exc:
        print(f"raw-rm export: error: {exc}", file=sys.stderr)
        return 2
    if args.quantize == "int8":
        write_quantized(src, out)
    else:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out)
    print(
        f"exported {args.model} -> {out}" + (" (int8 dynamic quantisation, applied on load)" if args.quantize else "")
    )
    if pairs:
        print(f"measuring fp32 vs int8 on {len(pairs)} pairs from {args.data} ...", file=sys.stderr)
        r = compare_quantized(src, pairs, batch_size=args.batch_size)
        print(
            f"accuracy: fp32 {r['accuracy_fp32']:.4f} -> int8 {r['accuracy_int8']:.4f} "
            f"({100 * r['accuracy_change']:+.2f} points; {100 * r['agreement']:.1f}% of pairs ordered the same)"
        )
        print(
            f"speed: fp32 {r['texts_per_s_fp32']:.1f} texts/s -> int8 {r['texts_per_s_int8']:.1f} texts/s "
            f"(x{r['speedup']:.2f})"
        )
    return 0
