"""`raw-rm train`: train a reward model in this process, or with Ray Train (`--ray`)."""

from __future__ import annotations

import argparse
import sys

from raw_rm.cli.common import add_config_args, config_from_args
from raw_rm.data.formats import DataError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples:\n"
        "  raw-rm train                                   # synthetic default data, packaged MiniLM\n"
        "  raw-rm train --data pairs.jsonl.gz --epochs 1 train.precision=fp32\n"
        "  raw-rm train --ray --workers 2                 # Ray Train, same config\n"
        "  raw-rm train --resume --output runs/a          # continue from the latest checkpoint"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_args(parser)
    parser.add_argument(
        "--ray", action="store_true", help="train with Ray Train (ray.* settings) instead of in this process"
    )
    parser.add_argument(
        "--resume", action="store_true", help="shorthand for train.resume=true (latest checkpoint in the output dir)"
    )


def run(args: argparse.Namespace) -> int:
    if args.resume:
        args.overrides = list(args.overrides or []) + ["train.resume=true"]
    cfg = config_from_args(args)
    try:
        if args.ray:
            # torch, Ray and MLflow (and the raw_rm modules that import them) are imported inside run(): `raw-rm train
            # --help` loads this module
            from raw_rm.train.ray_train import train_ray as train_fn
        else:
            from raw_rm.train.local import train_local as train_fn
        if cfg.mlflow.enabled:  # one MLflow run: params, step metrics, eval report, model, registry version
            from raw_rm.tracking.registry import tracked_training

            result = tracked_training(cfg, train_fn)
        else:
            result = train_fn(cfg)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"raw-rm train: error: {exc}", file=sys.stderr)
        return 2
    m = result.metrics
    print(f"model: {result.model_dir}")
    if getattr(result, "mlflow_run_id", None):
        version = (
            f"; registered {cfg.mlflow.registered_model} v{result.model_version} (alias candidate)"
            if result.model_version
            else ""
        )
        print(f"mlflow: run {result.mlflow_run_id} in {cfg.mlflow.tracking_uri}{version}")
    if result.data_report:
        print(f"data: {result.data_report}")
    shown = [k for k in ("val_accuracy", "val_loss", "val_nll", "val_ece") if k in m]
    print("validation: " + ", ".join(f"{k}={m[k]:.4f}" for k in shown))
    if "bayes_accuracy_val" in m and "val_accuracy" in m:
        bayes = m["bayes_accuracy_val"]
        print(
            f"synthetic Bayes accuracy (validation): {bayes:.4f}; reached {100 * m['val_accuracy'] / bayes:.1f}% of it"
        )
    if "pairs_per_s" in m:
        print(
            f"throughput: {m['pairs_per_s']:.1f} pairs/s, {m.get('tokens_per_s', 0):.0f} tokens/s over "
            f"{m.get('train_time_s', 0):.1f}s; {int(m.get('n_truncated', 0))} truncated sequences "
            f"(max_len_tokens={cfg.data.max_len_tokens}); {int(m.get('steps', 0))} steps"
        )
    return 0
