"""`raw-rm distill`: train a smaller student on a teacher's (or an ensemble's) rewards and preferences.

The student is configured like `raw-rm train` (--config, --model for its backbone, key=value overrides; the
data comes from data.*); the teacher scores the training pairs, the human labels are kept for validation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raw_rm.cli.common import add_config_args, config_from_args, local_model_dir
from raw_rm.data import load_train_val
from raw_rm.data.formats import DataError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  raw-rm distill --teacher runs/big/model --model tiny-bert --output runs/student\n"
        "  raw-rm distill --teacher m1/model --teacher m2/model --mode preference --distill-temperature 2"
    )
    add_config_args(parser, flags=("data", "eval_data", "model", "epochs", "max_steps", "batch_size", "lr", "output"))
    parser.add_argument(
        "--teacher", action="append", required=True, help="teacher model directory or URI; repeat for an ensemble"
    )
    parser.add_argument(
        "--mode",
        choices=["reward", "preference", "both"],
        default="both",
        help="reward: MSE to normalised teacher rewards; preference: BCE to sigmoid(delta_teacher/T); both: half each",
    )
    parser.add_argument(
        "--distill-temperature",
        type=float,
        default=None,
        help="softens the teacher's preferences (mode preference/both; default 1)",
    )
    parser.add_argument("--temperature", type=float, default=None, help=argparse.SUPPRESS)  # the old spelling


def run(args: argparse.Namespace) -> int:
    # torch-backed modules (models, training) are imported inside run(): `raw-rm distill --help` loads this module
    from raw_rm.models import build_model, save_model
    from raw_rm.train.distill import distill
    from raw_rm.train.recipe import summarise_fit, write_run_files

    cfg = config_from_args(args)
    if args.temperature is not None:
        print("raw-rm distill: --temperature is deprecated: use --distill-temperature", file=sys.stderr)
        if args.distill_temperature is None:
            args.distill_temperature = args.temperature
    if args.distill_temperature is None:
        args.distill_temperature = 1.0
    if args.distill_temperature <= 0:
        print(
            f"raw-rm distill: error: --distill-temperature must be > 0, got {args.distill_temperature}", file=sys.stderr
        )
        return 2
    try:
        for teacher in args.teacher:
            if "://" not in teacher and not teacher.startswith("models:/") and not Path(teacher).is_dir():
                raise ValueError(f"--teacher {teacher}: not a model directory")
        _, tokenizer = build_model(cfg.model)
        train, val, report = load_train_val(cfg, tokenizer=tokenizer)
        print(f"data: {report.summary()}", file=sys.stderr)
        teachers = [local_model_dir(teacher) for teacher in args.teacher]
        result = distill(
            teachers, cfg, train, val_records=val, mode=args.mode, distill_temperature=args.distill_temperature
        )
    except (DataError, ValueError, OSError) as exc:
        print(f"raw-rm distill: error: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.train.output_dir)
    save_model(result.model, result.tokenizer, out / "model")
    metrics = dict(summarise_fit(result.fit), **result.metrics)
    write_run_files(out, cfg, metrics)
    print(
        f"student: {out / 'model'} ({cfg.model.backbone}, {sum(p.numel() for p in result.model.parameters()) / 1e6:.1f}M parameters)"
    )
    print(f"student-teacher MSE: {result.mse_before:.4f} -> {result.mse_after:.4f}")
    if "val_accuracy" in result.fit.final_metrics:
        teacher = f", teacher {result.teacher_val_accuracy:.4f}" if result.teacher_val_accuracy is not None else ""
        print(f"validation accuracy: student {result.fit.final_metrics['val_accuracy']:.4f}{teacher}")
    return 0
