"""Start Ray and Serve for a ServeConfig and run the raw_rm application (edge).

The HTTP front is decided first (``raw_rm.serve.frontend``): its settings are process-wide Ray settings that Serve
reads when its modules load, so ``ray.serve`` and the application module are imported only after
:func:`~raw_rm.serve.frontend.prepare_ray` has set them.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from raw_rm.serve.frontend import choose_frontend, prepare_ray


class Deployment(NamedTuple):
    url: str  # base URL of the application
    frontend: str  # the HTTP front in effect
    local: bool  # whether this process started the Ray that serves (it ends with this process)
    frontend_reason: str  # why that front (see choose_frontend)


def deploy(cfg: Any, *, address: str | None = None) -> Deployment:
    """Start (or join) Ray, start Serve on ``cfg.host:cfg.port`` and run the raw_rm application.

    Raises ConfigError for a front that cannot be had (see :func:`prepare_ray`).
    """
    import ray

    cluster = address not in (None, "local") or (address is None and bool(os.environ.get("RAY_ADDRESS")))
    where = "cluster" if cluster else ("running" if ray.is_initialized() else "start")
    reason = choose_frontend(cfg.http_frontend, ray=where)[1]
    frontend = prepare_ray(cfg.http_frontend, ray=where)
    from ray import serve  # after prepare_ray: Serve reads the variables when its modules load

    from raw_rm.serve.app import build_app

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    return Deployment(f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}", frontend, not cluster, reason)
