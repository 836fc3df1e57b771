"""Moving a registry alias and redeploying swaps the served model while requests keep being answered."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import offline_members, post_json, save_tiny, serve_http  # noqa: F401 - fixtures

from raw_rm.config import Config, ServeConfig, apply_overrides

pytestmark = pytest.mark.integration


def _register(cfg: Config, model_dir: Path, name: str) -> str:
    from raw_rm.tracking import registry
    from raw_rm.tracking.runs import tracking

    with tracking(cfg, run_name=model_dir.name) as run:
        run.log_model(model_dir)
    return registry.register_version(run.run_id, "model", name, tracking_uri=cfg.mlflow.tracking_uri)


def test_alias_move_and_redeploy_swaps_model_without_dropping_requests(
    serve_http, mlflow_uri: str, tmp_path: Path
) -> None:
    import aiohttp
    from ray import serve

    from raw_rm.inference import RewardModelInference
    from raw_rm.serve.app import build_app, pin_model_source
    from raw_rm.tracking.runs import client_for

    name = f"rm-swap-{uuid.uuid4().hex[:8]}"  # the replicas' download cache is keyed by name/version
    cfg = apply_overrides(Config(), {"mlflow.tracking_uri": mlflow_uri, "train.output_dir": str(tmp_path / "run")})
    old_dir, new_dir = save_tiny(tmp_path / "old", seed=3), save_tiny(tmp_path / "new", seed=4)
    assert (_register(cfg, old_dir, name), _register(cfg, new_dir, name)) == ("1", "2")
    client = client_for(mlflow_uri)
    client.set_registered_model_alias(name, "champion", "1")
    uri = f"models:/{name}@champion"
    assert pin_model_source(uri, mlflow_uri) == f"models:/{name}/1"

    port = int(serve_http.rsplit(":", 1)[1])
    serve_cfg = ServeConfig(
        models=[uri], tracking_uri=mlflow_uri, port=port, member_num_cpus=0.0, member_retries=8, precision="fp32"
    )  # answers are compared with fp32 scores
    serve.run(build_app(serve_cfg), name="rm_swap", route_prefix="/swap")
    url = f"{serve_http}/swap"
    before = httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]
    assert (before["source"], before["resolved"], before["alias"]) == (uri, f"models:/{name}/1", "champion")
    assert before["version"] == RewardModelInference(str(old_dir)).version

    prompts = [f"swap prompt {i}" for i in range(120)]
    responses = [f"swap response {i} " + "word " * (i % 9) for i in range(120)]
    old = offline_members(old_dir, prompts, responses)[:, 0]
    new = offline_members(new_dir, prompts, responses)[:, 0]
    results: list[tuple[int, int, object]] = []
    redeployed = threading.Event()

    async def traffic() -> None:
        """One client without retries (a dropped request shows as an error) until 20 requests after the redeploy."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
            extra = 0
            while extra < 20:
                i = len(results) % len(prompts)
                status, body = await post_json(
                    session, f"{url}/get_reward", {"query": [prompts[i] + responses[i]], "prompts": [prompts[i]]}
                )
                results.append((i, status, body))
                extra += int(redeployed.is_set())
                await asyncio.sleep(0.02)

    worker = threading.Thread(target=lambda: asyncio.run(traffic()))
    worker.start()
    deadline = time.monotonic() + 120
    while len(results) < 3 and time.monotonic() < deadline:  # the old version is answering before the move
        time.sleep(0.1)
    client.set_registered_model_alias(name, "champion", "2")  # what `raw-rm registry promote` does after its gate
    serve.run(build_app(serve_cfg), name="rm_swap", route_prefix="/swap")  # redeploy the same config
    redeployed.set()
    worker.join(timeout=300)
    after = httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]
    serve.delete("rm_swap")

    failed = [(i, status, body) for i, status, body in results if status != 200]
    assert failed == [], f"{len(failed)} of {len(results)} requests failed during the swap, first: {failed[:3]}"
    index = np.array([i for i, _, _ in results])
    rewards = np.array([body["rewards"][0] for _, _, body in results])
    from_old, from_new = np.abs(rewards - old[index]) < 1e-4, np.abs(rewards - new[index]) < 1e-4
    assert bool(np.all(from_old | from_new)), "an answer came from neither version"
    assert from_old[0] and from_new[-20:].all(), "traffic did not span the swap"
    assert (after["resolved"], after["version"]) == (f"models:/{name}/2", RewardModelInference(str(new_dir)).version)
