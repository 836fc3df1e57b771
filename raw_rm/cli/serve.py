"""`raw-rm serve`: put reward models behind one HTTP endpoint on Ray Serve (edge).

    raw-rm serve --config serve_configs/ensemble.yaml
    raw-rm serve --model runs/latest/model --model models:/raw_rm-reward@champion --port 8001 --blocking
    RAW_RM_API_KEY=... raw-rm serve --config serve_configs/single.yaml --host 0.0.0.0 --blocking

The config is a Ray Serve config file (the same file works with `serve run` / `serve deploy`) or a plain
ServeConfig YAML; `--model` (repeatable), `--host`, `--port` and `key=value` overrides apply on top.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import urllib.request

from raw_rm.config import ConfigError, ServeConfig, apply_overrides, parse_override
from raw_rm.serve.frontend import describe_member
from raw_rm.serve.launch import deploy
from raw_rm.serve.scoring import load_serve_config
from raw_rm.serve.security import ServeSecurityError, check_bind_security, resolve_api_key


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="Serve config file (serve_configs/*.yaml) or a ServeConfig YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ServeConfig overrides, e.g. reward=lcb k=2")
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="model dir or models:/NAME@alias; repeat for an ensemble (replaces models)",
    )
    parser.add_argument(
        "--host", default=None, help="bind address (shorthand for host=...); non-loopback needs RAW_RM_API_KEY"
    )
    parser.add_argument("--port", type=int, default=None, help="port (shorthand for port=...)")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS or a local Ray; 'local' always starts one)",
    )
    parser.add_argument(
        "--blocking", action="store_true", help="keep serving until Ctrl-C (always so with a local Ray)"
    )


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
        check_bind_security(
            cfg.host, resolve_api_key(cfg), allow_unauthenticated_network=cfg.allow_unauthenticated_network
        )
    except (ConfigError, ServeSecurityError) as exc:
        print(f"raw-rm serve: {exc}", file=sys.stderr)
        return 2

    try:
        url, frontend, local, frontend_reason = deploy(cfg, address=args.address)
    except ConfigError as exc:
        print(f"raw-rm serve: {exc}", file=sys.stderr)
        return 2
    prefix = cfg.route_prefix.rstrip("/")
    print(
        f"serving {len(cfg.models)} model(s) at {url}  (POST {prefix}/get_reward, /score, /compare, /rank; GET /healthz, /v1/models, /stats; "
        f"HTTP front: {frontend})"
    )
    print(f"HTTP front {frontend}: {frontend_reason}; {cfg.ingress_replicas} ingress replica(s)")
    print_choices(url, cfg)
    if not args.blocking and not local:
        print(
            f"deployed on the cluster; it keeps serving after this command (serve shutdown / serve delete {cfg.app_name} to stop)"
        )
        return 0
    if not args.blocking:
        print("a local Ray ends with this command: serving until Ctrl-C or SIGTERM")
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    # SIGTERM (systemd, Kubernetes, `ray job stop`) stops like Ctrl-C; a handler that only sets an event keeps the
    # Python default (KeyboardInterrupt mid-call) out of Ray's shutdown, and the event wakes the wait at once
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not stop.wait(3600):
        pass
    print(f"{received[0]}: draining in-flight requests, then stopping", flush=True)
    # Ray is imported inside functions: `raw-rm serve --help` loads this module
    from ray import serve

    # deleting the application first lets its replicas finish the requests they hold (Serve's graceful shutdown:
    # graceful_shutdown_timeout_s) while the HTTP front still stands to carry the answers back; serve.shutdown()
    # alone stops the front at once and cuts the open connections
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the line above says it all; not Serve's "Deleting app"
    serve.delete(cfg.app_name)
    serve.shutdown()
    return 0


def print_choices(url: str, cfg: ServeConfig) -> None:
    """Print what each member runs with and why (threads, precision, max length, replicas), from ``/v1/models``."""

    headers = {}
    key = resolve_api_key(cfg)
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    request = urllib.request.Request(f"{url}/v1/models", headers=headers)
    try:
        with opener.open(request, timeout=120) as resp:
            models = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        print(f"could not read {url}/v1/models for the members' settings: {exc}", file=sys.stderr)
        return
    for entry in models["data"]:
        print(f"{entry['id']} ({entry['source']}):")
        for line in describe_member(entry):
            print(f"  {line}")
