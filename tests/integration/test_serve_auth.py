"""Who may call the reward server: loopback by default, a key for anything else, compared in constant time."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp
import httpx
import pytest
import yaml
from serve_support import API_KEY, serve_http, served  # noqa: F401 - fixtures

from raw_rm.cli import serve as serve_cli
from raw_rm.config import ServeConfig
from raw_rm.serve.scoring import load_serve_config
from raw_rm.serve.security import ServeSecurityError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
QUERY = {"query": ["\n\nHuman: hi\n\nAssistant: hello"], "prompts": ["\n\nHuman: hi\n\nAssistant:"], "labels": [""]}


def test_non_loopback_bind_without_key_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raw_rm.serve.app import build_app

    monkeypatch.delenv("RAW_RM_API_KEY", raising=False)
    with pytest.raises(ServeSecurityError, match=r"^host '0\.0\.0\.0' is not a loopback address and no API key"):
        build_app(ServeConfig(models=[str(tmp_path)], host="0.0.0.0"))
    args = argparse.Namespace(
        config=None, overrides=[], model=[str(tmp_path)], host="0.0.0.0", port=None, address=None, blocking=False
    )
    assert serve_cli.run(args) == 2  # refused before Ray or Serve start


def test_key_required_when_configured(served) -> None:
    url = served["secure"]
    with httpx.Client(timeout=60) as client:
        missing = client.post(f"{url}/get_reward", json=QUERY)
        wrong = client.post(f"{url}/get_reward", json=QUERY, headers={"Authorization": "Bearer wrong-key"})
        wrong_path = client.post(f"{url}/k/wrong-key/get_reward", json=QUERY)
        bearer = client.post(f"{url}/get_reward", json=QUERY, headers={"Authorization": f"Bearer {API_KEY}"})
        header = client.post(f"{url}/score", json={"items": [{"response": "r"}]}, headers={"X-API-Key": API_KEY})
        models = client.get(f"{url}/v1/models")
        health = client.get(f"{url}/healthz")
    assert (missing.status_code, missing.json()) == (
        401,
        {
            "error": "authorization: missing API key (Authorization: Bearer KEY, X-API-Key, or /k/KEY/ in the path)",
            "field": "authorization",
        },
    )
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (wrong.status_code, wrong.json()["error"].startswith("authorization: wrong API key")) == (401, True)
    assert (wrong_path.status_code, wrong_path.json()["field"]) == (401, "authorization")
    assert API_KEY not in wrong.text and "wrong-key" not in wrong.text  # never echo what was sent
    assert (bearer.status_code, len(bearer.json()["rewards"])) == (200, 1)
    assert header.status_code == 200
    assert models.status_code == 401
    assert (health.status_code, health.json()) == (200, {"status": "ok", "models": 1})


def test_key_in_the_url_for_clients_without_headers(served) -> None:
    """OpenRLHF's --remote_rm_url cannot send headers: http://host:port/k/KEY/get_reward works as is."""

    async def call() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{served['secure']}/k/{API_KEY}/get_reward", json=QUERY) as resp:
                return resp.status, await resp.json()

    status, body = asyncio.run(call())
    assert status == 200 and len(body["rewards"]) == 1 and set(body) == {"rewards", "scores", "extra_logs"}


def test_no_cors_headers(served) -> None:
    resp = httpx.options(
        f"{served['main']}/get_reward",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=60,
    )
    assert "access-control-allow-origin" not in {k.lower() for k in resp.headers}


@pytest.mark.parametrize("path", sorted((REPO / "serve_configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_serve_configs_are_valid_serve_and_raw_rm_configs(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)
    cfg = load_serve_config(path)
    assert cfg.host == raw["http_options"]["host"] == "127.0.0.1"
    assert cfg.models, f"{path.name}: no models"
