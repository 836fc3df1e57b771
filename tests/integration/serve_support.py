"""Shared pieces of the Serve integration tests: tiny models on disk, one Serve HTTP proxy on a free port."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch

from raw_rm.config import ModelConfig
from raw_rm.models import build_model, save_model
from raw_rm.uncertainty import ReferenceDistribution

REFERENCE_TEXTS = [f"reference response {i}: " + "fine " * (i % 11) for i in range(64)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def save_tiny(
    directory: Path,
    *,
    arch: str = "concat",
    num_heads: int = 3,
    seed: int = 0,
    reward_mean: float = 0.0,
    reward_std: float = 1.0,
    temperature: float = 1.0,
) -> Path:
    """A tiny-bert reward model whose rewards spread over about ±3 (weights drawn with std 0.3, no dropout).

    The default initialisation gives nearly equal rewards for every text (spread 1e-4), which would make a
    misrouted response indistinguishable from the right one. The model's metadata carries a reference
    reward distribution of its own rewards on ``REFERENCE_TEXTS`` (what training stores for drift checks).
    """
    torch.manual_seed(seed)
    model, tokenizer = build_model(ModelConfig(backbone="tiny-bert", arch=arch, num_heads=num_heads, dropout=0.0))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3)
    model.eval()
    from raw_rm.inference import RewardModelInference

    rewards = RewardModelInference(model, tokenizer=tokenizer, cache_size=0).batch_predict(
        [""] * len(REFERENCE_TEXTS), REFERENCE_TEXTS
    )
    model.metadata.reference = {"reward": ReferenceDistribution.from_sample(rewards).to_dict()}
    model.metadata.reward_mean, model.metadata.reward_std, model.metadata.temperature = (
        reward_mean,
        reward_std,
        temperature,
    )
    return save_model(model, tokenizer, directory)


def offline_members(model_dir: Path, prompts: list[str], responses: list[str]) -> np.ndarray:
    """(N, K) raw member rewards computed in this process, the way a member replica computes them."""
    from raw_rm.inference import RewardModelInference

    return RewardModelInference(str(model_dir), cache_size=0, batch_size=64).batch_predict_members(prompts, responses)


@pytest.fixture(scope="session")
def serve_http(ray_session) -> str:
    """Serve's HTTP proxy on 127.0.0.1 and a free port (or the one a running Serve already uses): its base URL."""
    from ray import serve
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client()
        port = client.http_config.port
    except Exception:  # noqa: BLE001 - Serve not started yet in this Ray
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


async def post_json(
    session: aiohttp.ClientSession, url: str, payload: Any, *, retries: int = 0, delay_s: float = 1.0
) -> tuple[int, Any]:
    """POST like OpenRLHF's remote reward client (``json=``); retry failures ``retries`` times, ``delay_s`` apart."""
    last: tuple[int, Any] = (0, None)
    for attempt in range(retries + 1):
        try:
            async with session.post(url, json=payload) as resp:
                body = await resp.json()
                last = (resp.status, body)
                if resp.status == 200:
                    return last
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            last = (-1, repr(exc))
        if attempt < retries:
            await asyncio.sleep(delay_s)
    return last


def wait_until(predicate, timeout_s: float = 60.0, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


API_KEY = "test-key-0123456789abcdef"
SINGLE_MEAN, SINGLE_STD, SINGLE_TEMPERATURE = 0.5, 2.0, 1.5  # training stats stored in the single model


_SERVED: dict[str, Any] = {}


@pytest.fixture(scope="session")
def served(serve_http, tmp_path_factory, request) -> dict[str, Any]:
    """Two applications deployed together: ``/rm`` (a single model + a 3-head shared-trunk model, no key) and
    ``/secure`` (the single model, API key from a key file). Small limits so the malformed-input tests are cheap.

    Each test module that imports this fixture gets its own fixture instance, so the deployment is cached
    here and made once per pytest session; the first instance removes it at the end of the session.
    """
    if _SERVED:
        return _SERVED
    from ray import serve
    from ray.serve.api import RunTarget

    from raw_rm.config import ServeConfig
    from raw_rm.serve.app import build_app

    root = tmp_path_factory.mktemp("serve_models")
    single = save_tiny(root / "single", reward_mean=SINGLE_MEAN, reward_std=SINGLE_STD, temperature=SINGLE_TEMPERATURE)
    multi = save_tiny(root / "multi", arch="multihead", num_heads=3, seed=1)
    key_file = root / "api_key"
    key_file.write_text(API_KEY + "\n")
    port = int(serve_http.rsplit(":", 1)[1])
    common = dict(
        host="127.0.0.1",
        port=port,
        member_num_cpus=0.0,
        max_batch_size=32,
        max_items=64,
        max_text_chars=5000,
        max_body_bytes=200_000,
        member_retries=8,
        api_key_env="RAW_RM_TEST_NO_SUCH_VARIABLE",
        precision="fp32",  # answers are compared with fp32 scores computed in this process
    )
    main_cfg = ServeConfig(models=[str(single), str(multi)], app_name="rm", route_prefix="/rm", **common)
    # the secure app also covers the unbatched ingress path (one member call per request)
    secure_cfg = ServeConfig(
        models=[str(single)],
        app_name="rm_secure",
        route_prefix="/secure",
        api_key_file=str(key_file),
        ingress_max_concurrent_batches=0,
        **common,
    )
    serve.run_many(
        [
            RunTarget(build_app(main_cfg), name="rm", route_prefix="/rm"),
            RunTarget(build_app(secure_cfg), name="rm_secure", route_prefix="/secure"),
        ]
    )
    _SERVED.update(main=f"{serve_http}/rm", secure=f"{serve_http}/secure", single=single, multi=multi, cfg=main_cfg)
    request.addfinalizer(lambda: [serve.delete(name) for name in ("rm", "rm_secure")])
    return _SERVED


def expected_raw(served: dict[str, Any], prompts: list[str], responses: list[str]) -> np.ndarray:
    """(N, 4) raw member rewards of the /rm ensemble, computed offline: the single model, then the 3 heads."""
    return np.concatenate(
        [offline_members(served["single"], prompts, responses), offline_members(served["multi"], prompts, responses)],
        axis=1,
    )


def normalised(raw: np.ndarray) -> np.ndarray:
    """The /rm ensemble's members in training units: the single model's stored mean/std; the heads have 0/1."""
    out = raw.copy()
    out[:, 0] = (raw[:, 0] - SINGLE_MEAN) / SINGLE_STD
    return out
