"""`raw-rm tune`: Ray Tune search over losses, temperatures and training settings (edge)."""

from __future__ import annotations

import argparse
import sys

from raw_rm.cli.common import add_config_args, config_from_args
from raw_rm.config import DEFAULT_CONFIG, ConfigError
from raw_rm.tune.results import format_summary
from raw_rm.tune.space import parse_space

TUNE_DEFAULT = DEFAULT_CONFIG.parent / "tune_default.yaml"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        f"--config defaults to the packaged {TUNE_DEFAULT.name} (MiniLM on the synthetic default).\n\n"
        "examples:\n"
        "  raw-rm tune --config raw_rm/configs/tune_default.yaml            # MiniLM on the synthetic default\n"
        "  raw-rm tune --config raw_rm/configs/tune_default.yaml --data harmless.jsonl.gz\n"
        "  raw-rm tune --config raw_rm/configs/tune_tiny.yaml tune.searcher=optuna tune.metric=val_ece tune.mode=min\n"
        "  raw-rm tune --config raw_rm/configs/tune_default.yaml --name hh1 --resume   # continue an interrupted search"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_args(
        parser, flags=("data", "eval_data", "model", "epochs", "max_steps", "output", "address", "tracking_uri")
    )
    parser.set_defaults(config=str(TUNE_DEFAULT))  # the embedded default has no search space
    parser.add_argument(
        "--name", default=None, help="shorthand for tune.name=... (the experiment folder under tune.storage_path)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="shorthand for tune.resume=true: restore the experiment --name"
    )


def run(args: argparse.Namespace) -> int:
    extra = [f"tune.name={args.name}"] if args.name else []
    extra += ["tune.resume=true"] if args.resume else []
    args.overrides = extra + list(args.overrides or [])
    cfg = config_from_args(args)
    # raw_rm.tune.driver (torch) is imported inside run(), after config_from_args has checked the search space:
    # `raw-rm tune --help` loads this module
    from raw_rm.tune.driver import run_tune

    try:
        outcome = run_tune(cfg)
    except ConfigError as exc:
        print(f"raw-rm tune: config error:\n{exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"raw-rm tune: error: {exc}", file=sys.stderr)
        return 1
    print()
    print(f"experiment: {outcome.experiment_path}")
    print(format_summary(outcome, parse_space(cfg.tune.space, cfg) if not cfg.tune.resume else None))
    return 3 if outcome.interrupted else 0
