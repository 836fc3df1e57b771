"""Shared CLI plumbing: --config FILE plus key.sub=value overrides; everyday flags are shorthands for overrides."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from raw_rm.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from raw_rm.tune.space import check_space

# flag -> dotted config key; each is only a shorthand for an override, never a second config system.
SHORTHANDS = {
    "data": "data.train_path",
    "eval_data": "data.eval_path",
    "model": "model.backbone",
    "arch": "model.arch",
    "loss": "loss.name",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "output": "train.output_dir",
    "workers": "ray.num_workers",
    "address": "ray.address",
    "tracking_uri": "mlflow.tracking_uri",
}


def add_config_args(parser: argparse.ArgumentParser, *, flags: tuple[str, ...] = tuple(SHORTHANDS)) -> None:
    """Add ``--config``, positional ``key.sub=value`` overrides and the chosen shorthand flags."""
    parser.add_argument("--config", default=None, help=f"YAML config (default: the packaged {DEFAULT_CONFIG.name})")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. loss.contrastive_tau=0.5"
    )
    for flag in flags:
        parser.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, default=None, help=f"shorthand for {SHORTHANDS[flag]}=..."
        )
    if "workers" in flags:
        parser.add_argument("--gpu", action="store_true", help="shorthand for ray.use_gpu=true")


def local_model_dir(model: str, *, tracking_uri: str | None = None) -> str:
    """A command's model argument as a local folder: ``models:/NAME@alias``, ``models:/NAME/VERSION`` and
    ``runs:/ID/model`` are downloaded (cached) from the MLflow store ``tracking_uri`` (None: $MLFLOW_TRACKING_URI,
    else ``mlflow.tracking_uri``'s default); anything else is returned unchanged. Imports MLflow only for a URI.
    """
    if not model.startswith(("models:/", "runs:/")):
        return model
    # raw_rm.tracking.registry (MLflow) is imported inside the function: every subcommand module imports this one
    from raw_rm.tracking.registry import RegistryError, uri_resolver

    try:
        return uri_resolver(tracking_uri)(model)
    except RegistryError as exc:  # an unknown name, version or alias is the user's input: no traceback
        print(f"raw-rm: {model}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve the config of a command: file, then shorthand flags, then explicit overrides (which win)."""
    overrides = [
        f"{key}={getattr(args, flag)}" for flag, key in SHORTHANDS.items() if getattr(args, flag, None) is not None
    ]
    if getattr(args, "gpu", False):
        overrides.append("ray.use_gpu=true")
    overrides += list(args.overrides or [])
    path = args.config or DEFAULT_CONFIG
    try:
        return load_config(path, overrides, checks=[check_space])
    except ConfigError as exc:
        print(f"raw-rm: config error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def explicitly_set(args: argparse.Namespace, key: str) -> bool:
    """Whether the user set dotted ``key`` (``data.max_len_tokens``): a ``key=value`` override or the ``--config`` file.

    For settings whose unset value defers to the model (the scoring length: the model's metadata decides).
    """
    if any(str(item).split("=", 1)[0].strip() == key for item in (args.overrides or [])):
        return True
    if not getattr(args, "config", None):
        return False

    node: Any = yaml.safe_load(Path(args.config).read_text()) or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
