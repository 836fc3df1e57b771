"""`ray job submit` end to end: jobs/train.py on a throwaway `ray start --head`, tracked and registered in MLflow.

The head runs in its own temp dir (so `ray.init()` elsewhere on this machine never discovers it) on free ports,
with auth disabled (a local head otherwise wants the token Ray writes), and is stopped by killing the process group this test started: never `ray stop`,
which would stop every Ray on the machine, including the session's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture()
def ray_head():
    """A separate single-node Ray cluster with a job server; yields (dashboard URL, env for the CLI)."""
    gcs, dash, agent, agent_grpc, runtime_env, metrics, client = _free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={client}",
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as resp:
                    json.load(resp)
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    out = head.stdout.read().decode(errors="replace") if head.poll() is not None else ""
                    pytest.fail(f"ray start --head did not serve {url} (exit {head.poll()}):\n{out[-3000:]}")
                time.sleep(1)
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: the ray start process stops the node it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_tracks_and_registers(ray_session, ray_head, tmp_path: Path) -> None:
    # ray_session: the in-process session Ray is alive too; the job must still reach its own cluster.
    url, env = ray_head
    out_dir, db = tmp_path / "job", tmp_path / "mlflow.db"
    job = [
        sys.executable,
        "jobs/train.py",
        "model.backbone=tiny-bert",
        "ray.num_workers=1",
        "train.max_steps=3",
        "train.log_every_steps=1",
        "train.batch_size=4",
        "data.synthetic.n_prompts=64",
        "data.max_len_tokens=48",
        "train.progress=false",
        "train.num_threads=1",
        "train.precision=fp32",
        f"train.output_dir={out_dir}",
        f"mlflow.tracking_uri=sqlite:///{db}",
        "mlflow.registered_model=job-rm",
        "mlflow.experiment=jobs",
    ]
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", url, "--working-dir", str(REPO), "--", *job],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log[-4000:]
    assert "succeeded" in log, log[-4000:]
    assert f"model: {out_dir / 'model'}" in log
    assert "registered: job-rm v1 (alias candidate)" in log
    assert (out_dir / "model").is_dir() and json.loads((out_dir / "metrics.json").read_text())["steps"] == 3.0

    from raw_rm.tracking import registry
    from raw_rm.tracking.runs import client_for

    (version,) = registry.list_versions("job-rm", tracking_uri=f"sqlite:///{db}")
    assert (version.version, version.aliases, version.base_model) == ("1", ["candidate"], "tiny-bert")
    client = client_for(f"sqlite:///{db}")
    run = client.get_run(version.run_id)
    assert run.data.params["train.max_steps"] == "3" and run.data.params["ray.num_workers"] == "1"
    assert {"loss", "val_accuracy", "eval.accuracy", "eval.ece", "summary.pairs_per_s"} <= set(run.data.metrics)
    assert run.data.metrics["summary.global_batch_size"] == 4.0  # 1 worker x batch 4 x accumulation 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]  # per step, rank 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "eval_report", "config.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval_report")} >= {
        "eval_report/metrics.json",
        "eval_report/index.html",
        "eval_report/reliability.png",
    }
