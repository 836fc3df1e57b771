"""`raw-rm serve`: put reward models behind one HTTP endpoint on Ray Serve (edge).

    raw-rm serve --config serve_configs/ensemble.yaml
    raw-rm serve --model runs/latest/model --model models:/raw_rm-reward@champion --port 8001 --blocking
    RAW_RM_API_KEY=... raw-rm serve --config serve_configs/single.yaml --host 0.0.0.0 --blocking

The config is a Ray Serve config file (the same file works with `serve run` / `serve deploy`) or a plain
ServeConfig YAML; `--model` (repeatable), `--host`, `--port` and `key=value` overrides apply on top.
"""

from __future__ import annotations

import argparse
import sys
import time

from raw_rm.config import ConfigError, ServeConfig, apply_overrides, parse_override
from raw_rm.serve.scoring import load_serve_config
from raw_rm.serve.security import ServeSecurityError, check_bind_security, resolve_api_key


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="Serve config file (serve_configs/*.yaml) or a ServeConfig YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ServeConfig overrides, e.g. reward=lcb k=2")
    parser.add_argument("--model", action="append", default=None, help="model dir or models:/NAME@alias; repeat for an ensemble (replaces models)")
    parser.add_argument("--host", default=None, help="bind address (shorthand for host=...); non-loopback needs RAW_RM_API_KEY")
    parser.add_argument("--port", type=int, default=None, help="port (shorthand for port=...)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray; 'local' always starts one)")
    parser.add_argument("--blocking", action="store_true", help="keep serving until Ctrl-C (always so with a local Ray)")


def resolve_config(args: argparse.Namespace) -> ServeConfig:
    """ServeConfig from --config, then shorthand flags, then explicit overrides (which win)."""
    overrides = list(args.overrides or [])
    for item in overrides:
        parse_override(item)  # fail early, naming a malformed override
    cfg = load_serve_config(args.config) if args.config else ServeConfig()
    short: dict[str, object] = {}
    if args.model:
        short["models"] = list(args.model)
    if args.host is not None:
        short["host"] = args.host
    if args.port is not None:
        short["port"] = args.port
    if short:
        cfg = apply_overrides(cfg, short)
    return apply_overrides(cfg, overrides) if overrides else cfg


def run(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_config(args)
        if not cfg.models:
            raise ConfigError("models: give at least one --model or a config with models")
        check_bind_security(cfg.host, resolve_api_key(cfg), allow_unauthenticated_network=cfg.allow_unauthenticated_network)
    except (ConfigError, ServeSecurityError) as exc:
        print(f"raw-rm serve: {exc}", file=sys.stderr)
        return 2

    from raw_rm.serve.launch import deploy

    try:
        url, frontend, local = deploy(cfg, address=args.address)
    except ConfigError as exc:
        print(f"raw-rm serve: {exc}", file=sys.stderr)
        return 2
    prefix = cfg.route_prefix.rstrip("/")
    print(f"serving {len(cfg.models)} model(s) at {url}  (POST {prefix}/get_reward, /score, /compare, /rank; GET /healthz, /v1/models, /stats; "
          f"HTTP front: {frontend})")
    if not args.blocking and not local:
        print(f"deployed on the cluster; it keeps serving after this command (serve shutdown / serve delete {cfg.app_name} to stop)")
        return 0
    if not args.blocking:
        print("a local Ray ends with this command: serving until Ctrl-C")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
        from ray import serve

        serve.shutdown()
    return 0
