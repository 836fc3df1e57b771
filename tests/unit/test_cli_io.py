"""raw_rm.cli._io.write_jsonl: the one JSONL writer of score, rank and select."""

from __future__ import annotations

import gzip
import json

import pytest

from raw_rm.cli._io import read_jsonl, write_jsonl


def test_write_jsonl_round_trips_and_creates_parent_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "out.jsonl"
    rows = [{"prompt": "p", "reward": 1.5}, {"prompt": "q", "members": [0.25, -1.0]}]
    assert write_jsonl(str(path), iter(rows)) == 2
    assert [row for _, row in read_jsonl(str(path))] == rows
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]


def test_write_jsonl_gz(tmp_path):
    path = tmp_path / "out.jsonl.gz"
    write_jsonl(str(path), [{"x": 1}])
    assert gzip.decompress(path.read_bytes()).decode() == '{"x": 1}\n'


def test_write_jsonl_failure_keeps_the_old_file_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"old": true}\n')

    def rows():
        yield {"new": 1}
        raise RuntimeError("forward pass failed")

    with pytest.raises(RuntimeError, match="forward pass failed"):
        write_jsonl(str(path), rows())
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_write_jsonl_stdout(capsys):
    assert write_jsonl("-", [{"a": 1}, {"b": [2]}]) == 2
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"a": 1}, {"b": [2]}]
