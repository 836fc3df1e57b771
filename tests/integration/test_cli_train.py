"""`raw-rm train` end to end in a subprocess on a tiny synthetic run, then score / rank / export the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def raw_rm(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAW_RM_LOG_LEVEL="WARNING")
    return subprocess.run(
        [sys.executable, "-m", "raw_rm.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = raw_rm(
        "train",
        "--model",
        "tiny-bert",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--output",
        str(out),
        "data.synthetic.n_prompts=64",
        "data.max_len_tokens=64",
        "train.precision=fp32",
        "mlflow.enabled=false",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"model: {out / 'model'}" in proc.stdout
    assert "validation: val_accuracy=" in proc.stdout and "throughput: " in proc.stdout
    return out


def test_train_writes_model_metrics_and_config(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"val_accuracy", "val_loss", "pairs_per_s", "n_truncated", "steps"} <= set(metrics)
    config = (trained / "config.yaml").read_text()
    assert "backbone: tiny-bert" in config and "n_prompts: 64" in config
    meta = json.loads((trained / "model" / "config.json").read_text())["raw_rm"]["metadata"]
    assert meta["reward_std"] > 0 and set(meta["reference"]) == {"reward", "length"}
    assert meta["reference"]["reward"]["n"] == 2 * metrics["n_train"]
    assert [p.name for p in (trained / "checkpoints").iterdir()] == [f"step_{int(metrics['steps'])}"]


def test_score_jsonl_in_jsonl_out(trained, tmp_path):
    rows = [
        {"prompt": "How do I boil an egg?", "response": "Boil it for 8 minutes.", "id": 1},
        {"text": "\n\nHuman: hi there\n\nAssistant: Hello! How can I help?", "id": 2},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    proc = raw_rm("score", str(trained / "model"), "--input", str(src), "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == [1, 2]
    for r in scored:
        assert isinstance(r["reward"], float) and isinstance(r["reward_normalized"], float)
    assert "scored 2 responses" in proc.stderr


def test_score_reports_bad_input_with_file_and_line(trained, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
    proc = raw_rm("score", str(trained / "model"), "--input", str(src), cwd=tmp_path)
    assert proc.returncode == 2
    assert 'raw-rm score: error: bad.jsonl:2: missing field "response" (fields present: prompt)' in proc.stderr


def test_rank_orders_responses(trained, tmp_path):
    src = tmp_path / "groups.jsonl"
    src.write_text(json.dumps({"prompt": "Say hi", "responses": ["hi", "hello there friend", "go away"]}) + "\n")
    proc = raw_rm("rank", str(trained / "model"), "--input", str(src), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip())
    assert sorted(row["order"]) == [0, 1, 2] and row["best"] == row["order"][0]
    assert row["rewards"][row["order"][0]] == max(row["rewards"])


def test_export_int8_with_measurement(trained, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps({"prompt": f"q{i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"}) for i in range(6)
        )
        + "\n"
    )
    proc = raw_rm(
        "export",
        str(trained / "model"),
        "--output",
        str(tmp_path / "q"),
        "--quantize",
        "int8",
        "--data",
        str(pairs),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "q" / "quantization.json").exists()
    assert "accuracy: fp32 " in proc.stdout and "speed: fp32 " in proc.stdout


def test_train_config_error_is_clear(tmp_path):
    proc = raw_rm("train", "train.epoks=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert 'train.epoks: unknown key (did you mean "epochs"?)' in proc.stderr
