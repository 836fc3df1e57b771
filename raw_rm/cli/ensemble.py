"""`raw-rm ensemble`: train K reward models (seeds, bootstrap resamples or a Tune experiment's top configs) and
register them as ONE model version (see ``raw_rm.train.ensemble``)."""

from __future__ import annotations

import argparse
import sys

from raw_rm.cli.common import add_config_args, config_from_args
from raw_rm.data.formats import DataError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples:\n"
        "  raw-rm ensemble --members 3                        # 3 seeds on the synthetic default\n"
        "  raw-rm ensemble --members 5 --bootstrap --data pairs.jsonl.gz\n"
        "  raw-rm ensemble --from-tune runs/latest/tune/tune-20250101-120000 --members 3\n"
        "  raw-rm ensemble --arch multihead --members 5        # cheap: one shared trunk, 5 heads"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_args(parser)
    parser.add_argument("--members", type=int, default=None, help="shorthand for ensemble.members=K")
    parser.add_argument("--bootstrap", action="store_true", help="shorthand for ensemble.bootstrap=true")
    parser.add_argument("--from-tune", default=None, metavar="DIR", help="shorthand for ensemble.from_tune=DIR")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--ray", action="store_true", help="train members as parallel Ray Tune trials")
    mode.add_argument("--sequential", action="store_true", help="train members one after another in this process")


def run(args: argparse.Namespace) -> int:
    extra = []
    if args.members is not None:
        extra.append(f"ensemble.members={args.members}")
    if args.bootstrap:
        extra.append("ensemble.bootstrap=true")
    if args.from_tune:
        extra.append(f"ensemble.from_tune={args.from_tune}")
    args.overrides = extra + list(args.overrides or [])
    cfg = config_from_args(args)
    parallel = True if args.ray else (False if args.sequential else None)
    # training and MLflow modules are imported inside run(): `raw-rm ensemble --help` loads this module
    from raw_rm.tracking.ensemble import register_ensemble
    from raw_rm.train.ensemble import train_ensemble

    try:
        result = train_ensemble(cfg, parallel=parallel)
        if cfg.mlflow.enabled:
            result = register_ensemble(cfg, result)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"raw-rm ensemble: error: {exc}", file=sys.stderr)
        return 2
    print(f"ensemble: {result.ensemble_dir}")
    for i, m in enumerate(result.members):
        metrics = m.get("metrics") or {}
        shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("val_accuracy", "val_nll", "val_ece") if k in metrics)
        print(
            f"  member {i}: {m['dir']} seed={m.get('seed')} {shown}"
            + (f" run={m['run_id']}" if m.get("run_id") else "")
        )
    cmp = result.validation_comparison
    if cmp is not None:
        ens, best = cmp["ensemble"], cmp["members"][cmp["best_member"]]
        member_nlls = ", ".join(f"{m['nll']:.4f}" for m in cmp["members"])
        print(
            f"validation, ensemble vs members ({cmp['n_eval']} pairs; each at its own T fitted on {cmp['n_fit']} others): "
            f"NLL {ens['nll']:.4f} vs {member_nlls} (best member {cmp['best_member']}); "
            f"ECE {ens['ece']:.4f} vs best member's {best['ece']:.4f}"
        )
    if result.metrics:
        shown = ", ".join(
            f"{k}={result.metrics[k]:.4f}" for k in ("accuracy", "ece", "temperature") if k in result.metrics
        )
        print(f"evaluation: {shown}")
    if result.model_version:
        print(
            f"registered: models:/{cfg.mlflow.registered_model}/{result.model_version} (alias candidate), MLflow run {result.mlflow_run_id}"
        )
    return 0
