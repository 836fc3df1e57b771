"""A small synchronous HTTP client for a raw_rm reward endpoint (standard library only).

    client = RewardClient("http://127.0.0.1:8000")
    client.score([("What is 2 + 2?", "The answer is 4.")])[0]["reward"]

Used by the veRL reward function and the best-of-n example; OpenRLHF needs no client (it posts to /get_reward).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


class RewardServerError(RuntimeError):
    """The server answered with an error status; ``status`` and ``body`` say what it said."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"reward server answered {status}: {body[:500]}")
        self.status = status
        self.body = body


class RewardClient:
    """POST JSON to a raw_rm endpoint; retries connection errors and 5xx (not 4xx: those are the caller's bug)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 60.0, retries: int = 3) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                text = exc.read().decode(errors="replace")
                if exc.code < 500:
                    raise RewardServerError(exc.code, text) from exc
                last = RewardServerError(exc.code, text)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            time.sleep(min(2.0, 0.25 * 2**attempt))
        assert last is not None
        raise last

    def score(self, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every aggregate (reward, mean, std, min, lcb, ...) for each (prompt, response)."""
        body = {"items": [{"prompt": p, "response": r} for p, r in items]}
        return self.post("/score", body)["results"]

    def get_reward(self, queries: list[str], prompts: list[str] | None = None) -> dict[str, Any]:
        """The OpenRLHF contract: full prompt+response texts in, ``rewards``/``scores``/``extra_logs`` out."""
        body: dict[str, Any] = {"query": queries}
        if prompts is not None:
            body["prompts"] = prompts
        return self.post("/get_reward", body)
