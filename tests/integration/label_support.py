"""Shared pieces of the labelling integration tests: a pool file, `raw-rm label` as a real server process, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from serve_support import free_port

# Six arithmetic pairs (the correct answer is response_a on even i, response_b on odd i) and one k-wise item.
POOL_ROWS = [
    {
        "prompt": f"What is {i} + {i}?",
        "response_a": f"It is {2 * i if i % 2 == 0 else 2 * i + 1}.",
        "response_b": f"It is {2 * i + 1 if i % 2 == 0 else 2 * i}.",
        "selection_score": -0.1 * i,
        "selection_rank": i,
    }
    for i in range(6)
] + [{"prompt": "Name a prime number.", "responses": ["7", "9", "12"]}]


def write_pool(directory: Path) -> Path:
    path = directory / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in POOL_ROWS))
    return path


def correct_index(prompt: str, texts: list[str]) -> int | None:
    """The index of the right answer among two responses ("What is i + i?"); None for other prompts."""
    match = re.match(r"What is (\d+) \+ \d+\?", prompt)
    if match is None:
        return None
    return texts.index(f"It is {2 * int(match.group(1))}.")


def raw_rm(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, RAW_RM_LOG_LEVEL="WARNING", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "raw_rm.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def train_tiny(data: Path, out: Path, *, cwd: Path) -> subprocess.CompletedProcess:
    """`raw-rm train` for two steps of a tiny random BERT on ``data`` (also the validation set: it is small)."""
    return raw_rm(
        "train",
        "--data",
        str(data),
        "--eval-data",
        str(data),
        "--model",
        "tiny-bert",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--output",
        str(out),
        "mlflow.enabled=false",
        "train.precision=fp32",
        "data.max_len_tokens=32",
        cwd=cwd,
    )


class LabelServer:
    """`raw-rm label ...` in a subprocess on a free loopback port; ``kill()`` is a SIGKILL (a crash)."""

    def __init__(self, db: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"server-{self.port}.log"
        full_env = dict(os.environ, RAW_RM_LOG_LEVEL="WARNING", **(env or {}))
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "raw_rm.cli",
                    "label",
                    "--db",
                    f"sqlite:///{db}",
                    "--port",
                    str(self.port),
                    *args,
                ],
                cwd=cwd,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"raw-rm label exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"raw-rm label did not answer in 120 s:\n{self.log.read_text()}")

    def links(self) -> dict[str, str]:
        """{annotator: token} printed at start-up."""
        return dict(re.findall(r"^  (\S+): http://\S+/annotate#token=(\S+)$", self.log.read_text(), re.MULTILINE))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
