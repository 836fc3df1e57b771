"""`raw-rm data` prints what training will read (synthetic default: with its Bayes accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raw_rm.cli import main
from raw_rm.data import synthetic


def test_data_command_on_the_synthetic_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "--no-tokens", "data.synthetic.n_prompts=100"]) == 0
    out = capsys.readouterr().out
    bayes = synthetic.generate(synthetic.SyntheticConfig(n_prompts=100)).bayes_accuracy
    assert "format:  synthetic    kind: pairs (read as pairs)" in out
    assert "records: read 100, kept 100" in out
    assert f"all {bayes:.4f}" in out and "Bayes accuracy (best possible" in out
    assert "length-only accuracy" in out


def test_data_command_reports_drops_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b" if i else "a"} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["data", "--no-tokens", "--data", str(path), "data.val_fraction=0"]) == 0
    out = capsys.readouterr().out
    assert "records: read 4, kept 3, train 3, validation 0" in out
    assert f"  chosen_equals_rejected        1   e.g. {path}:1" in out
    path.write_text('{"prompt": "p", "chosen": 1, "rejected": "b"}\n')
    assert main(["data", "--no-tokens", "--data", str(path)]) == 2
    assert capsys.readouterr().err == (
        f'raw-rm data: {path}:1: field "chosen": expected a string or a list of messages, got int\n'
    )
