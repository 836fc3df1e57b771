"""`raw-rm serve` stops on SIGTERM (systemd, Kubernetes, `ray job stop`) as on Ctrl-C: in-flight requests answered, exit 0.

A real `raw-rm serve --address local` subprocess with its own Ray; the signal goes to that process alone (as
Kubernetes sends it to PID 1), while a slow /score request is being computed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_support import free_port, offline_members, save_tiny, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMPT = "\n\nHuman: How do I keep basil alive?\n\nAssistant:"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_sigterm_answers_the_request_in_flight_then_exits_0(tmp_path: Path) -> None:
    model = save_tiny(tmp_path / "model")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # one text per forward and a long text each: the request takes seconds, so SIGTERM lands while it runs
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
        "http_frontend=proxy",
        "member_num_cpus=0",
        "max_batch_size=1",
        "max_items=4096",
        "cache_size=0",
        "precision=fp32",  # the answer is compared with fp32 scores computed in this process
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "serve.log"
    proc = subprocess.Popen(
        cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or ("HTTP front: " in log_path.read_text() and _healthy(url)),
            timeout_s=300,
            interval_s=1.0,
        )
        assert proc.poll() is None, log_path.read_text()[-4000:]
        responses = [f" Water it {i} times a week." + " really" * (i % 50) for i in range(600)]
        expected = offline_members(model, [PROMPT] * len(responses), responses)[:, 0]
        answer: dict[str, object] = {}

        def slow_request() -> None:
            try:
                resp = httpx.post(
                    f"{url}/score", json={"items": [{"prompt": PROMPT, "response": r} for r in responses]}, timeout=300
                )
                answer["status"], answer["body"] = resp.status_code, resp.json()
            except httpx.HTTPError as exc:
                answer["error"] = repr(exc)

        start = time.monotonic()
        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(1.5)  # the request is in the member by now
        assert client.is_alive(), f"the request finished before SIGTERM ({time.monotonic() - start:.1f} s): {answer}"
        os.kill(proc.pid, signal.SIGTERM)
        client.join(timeout=300)
        rc = proc.wait(timeout=120)
        log_text = log_path.read_text()
        assert answer.get("status") == 200, (answer, log_text[-4000:])
        got = np.array([item["reward"] for item in answer["body"]["results"]])
        np.testing.assert_allclose(got, expected, atol=1e-4)  # mean 0, std 1: the served reward is the raw one
        assert rc == 0, log_text[-4000:]
        assert "SIGTERM: draining in-flight requests, then stopping" in log_text
        assert "Fatal Python error" not in log_text and "Traceback" not in log_text, log_text[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
