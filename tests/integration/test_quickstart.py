"""The README's first command, scaled down to a tiny model: the whole product end to end, then the examples
(veRL reward function, best-of-n over HTTP) against the endpoint it leaves up with --keep-serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_quickstart_end_to_end_then_examples_over_http(tmp_path: Path) -> None:
    from serve_support import free_port

    port = free_port()
    db = tmp_path / "mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "raw_rm.cli",
        "quickstart",
        "--model",
        "tiny-bert",
        "--trials",
        "2",
        "--members",
        "2",
        "--port",
        str(port),
        "--output",
        str(tmp_path / "run"),
        "--keep-serving",
        "data.synthetic.n_prompts=120",
        "train.epochs=1",
        "train.eval_every_steps=3",
        f"mlflow.tracking_uri=sqlite:///{db}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving at "):
                break
        out = "".join(lines)
        assert any(line.startswith("serving at ") for line in lines), out[-4000:]
        for stage in range(1, 8):
            assert f"[{stage}/7]" in out
        assert "raw_rm quickstart finished in" in out
        assert 'POST /get_reward (OpenRLHF) -> {"rewards": [' in out
        assert (tmp_path / "run" / "ensemble" / "ensemble.json").exists()
        report = next((tmp_path / "run" / "report").rglob("index.html"))
        assert report.stat().st_size > 1000

        url = f"http://127.0.0.1:{port}"
        verl = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.path.insert(0, 'examples'); import verl_reward_fn as v; "
                "print(v.compute_score('synthetic', 'The answer is 5.', None, {'prompt': 'What is 2 + 3?'}))",
            ],
            cwd=REPO,
            env={**env, "RAW_RM_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verl.returncode == 0, verl.stderr
        float(verl.stdout.strip().splitlines()[-1])  # one float, as veRL expects

        bon = subprocess.run(
            [sys.executable, "examples/best_of_n.py", "--url", url, "--prompts", "5", "-n", "3"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert bon.returncode == 0, bon.stderr
        picks = {line.split()[0]: float(line.split()[1]) for line in bon.stdout.splitlines()[1:]}
        assert set(picks) == {"random", "best_mean", "best_lcb", "oracle"}
        assert max(picks.values()) == picks["oracle"]  # no policy beats picking the true best

        from raw_rm.tracking.registry import list_versions

        versions = list_versions("raw_rm-quickstart", tracking_uri=f"sqlite:///{db}")
        assert any("candidate" in v.aliases for v in versions), [json.dumps(v.__dict__, default=str) for v in versions]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
