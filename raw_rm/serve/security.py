"""Who may call the reward server (pure: no Ray, no HTTP framework; the ASGI edge lives in ``app.py``).

Policy:

- Default: bind ``127.0.0.1`` and need no key (only processes on this machine can connect).
- Any other bind address needs an API key, read from the environment variable ``ServeConfig.api_key_env``
  (``RAW_RM_API_KEY``) or the file ``ServeConfig.api_key_file``. Without one the server refuses to start
  (:func:`check_bind_security` raises), unless ``allow_unauthenticated_network: true`` says the network
  is trusted and private; that opt-out is logged as a warning at every start.
- When a key is configured it is required on every endpoint except ``GET /healthz``, whatever the bind
  address. A client presents it as ``Authorization: Bearer KEY``, ``X-API-Key: KEY``, or, for clients
  that cannot send headers (OpenRLHF's ``--remote_rm_url``), as a leading path segment:
  ``http://host:8000/k/KEY/get_reward``. Keys are compared with :func:`hmac.compare_digest`.
  A key in a URL can end up in proxy and access logs: prefer the header where the client allows it,
  and rotate the key as you would any secret.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from raw_rm.config import ServeConfig

log = logging.getLogger(__name__)

KEY_PATH_PREFIX = "/k/"
OPEN_PATHS = frozenset({"/healthz"})


class ServeSecurityError(RuntimeError):
    """The server must not start with this bind address and key setup."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (``127.0.0.0/8``, ``::1``); False for ``0.0.0.0`` and names."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_api_key(cfg: ServeConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The configured key: the environment variable first, then the key file's first line; None if neither.

    Raises:
        ServeSecurityError: ``api_key_file`` is set but cannot be read or is empty.
    """
    env = os.environ if environ is None else environ
    value = env.get(cfg.api_key_env, "").strip()
    if value:
        return value
    if cfg.api_key_file is None:
        return None
    path = Path(cfg.api_key_file).expanduser()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ServeSecurityError(f"api_key_file: cannot read {path} ({exc.strerror})") from exc
    key = lines[0].strip() if lines else ""
    if not key:
        raise ServeSecurityError(f"api_key_file: {path} is empty; put the key on its first line")
    return key


def check_bind_security(host: str, api_key: str | None, *, allow_unauthenticated_network: bool) -> str:
    """Decide whether the server may bind ``host``; returns the mode: "loopback", "key" or "unauthenticated".

    Raises:
        ServeSecurityError: a non-loopback ``host`` with no key and no explicit opt-out.
    """
    if api_key:
        return "key"
    if is_loopback(host):
        return "loopback"
    if allow_unauthenticated_network:
        log.warning(
            "SERVING WITHOUT AUTHENTICATION on %s: allow_unauthenticated_network is true, so anyone who can reach "
            "this address can score texts. Use it only on a trusted private network.",
            host,
        )
        return "unauthenticated"
    raise ServeSecurityError(
        f"host {host!r} is not a loopback address and no API key is configured: set the environment variable "
        "RAW_RM_API_KEY (or api_key_env / api_key_file in the serve config), bind 127.0.0.1, or, on a trusted "
        "private network only, set allow_unauthenticated_network: true"
    )


def key_matches(supplied: str | None, key: str) -> bool:
    """Constant-time comparison of a presented key with the configured one (False when none is presented)."""
    if not supplied:
        return False
    return hmac.compare_digest(supplied.encode("utf-8"), key.encode("utf-8"))


def split_path_key(path: str) -> tuple[str | None, str]:
    """``"/k/KEY/get_reward"`` -> ``("KEY", "/get_reward")``; any other path -> ``(None, path)``."""
    if not path.startswith(KEY_PATH_PREFIX):
        return None, path
    key, _, rest = path[len(KEY_PATH_PREFIX) :].partition("/")
    return key, "/" + rest


def header_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key`` (header names lower-cased), else None."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None
