"""Prompt-hash split and load_train_val (synthetic default, files, eval files, kind conversion)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from raw_rm.config import load_config
from raw_rm.data import DataError, convert_kind, load_train_val
from raw_rm.data.records import PreferencePair, RankedGroup
from raw_rm.data.splits import prompt_bucket, split_by_prompt


def test_prompt_bucket_is_sha256_of_salt_and_prompt() -> None:
    expected = int.from_bytes(hashlib.sha256(b"saltHello").digest()[:8], "big") / 2**64
    assert prompt_bucket("Hello", "salt") == expected


def test_split_is_deterministic_and_never_splits_a_prompt() -> None:
    records = [PreferencePair(f"prompt {i % 50}", f"a{i}", f"b{i}") for i in range(500)]
    train, val = split_by_prompt(records, 0.2, "s")
    assert (train, val) == split_by_prompt(records, 0.2, "s")
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in val})
    assert len(train) + len(val) == 500
    assert {r.prompt for r in val} == {f"prompt {i}" for i in range(50) if prompt_bucket(f"prompt {i}", "s") < 0.2}
    assert split_by_prompt(records, 0.2, "other") != (train, val)
    assert split_by_prompt(records, 0.0, "s") == (records, [])


def test_load_train_val_synthetic_default() -> None:
    cfg = load_config(None, ["data.synthetic.n_prompts=200"])
    train, val, report = load_train_val(cfg)
    assert len(train) + len(val) == 200 and (report.n_train, report.n_val) == (len(train), len(val))
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in val})
    assert set(report.bayes_accuracy) == {"all", "train", "val"}
    assert report.format == "synthetic" and report.kind == "pairs"


def test_load_train_val_groups_and_ratings_kinds() -> None:
    groups, _, _ = load_train_val(
        load_config(None, ["data.synthetic.n_prompts=40", "data.kind=groups", "data.val_fraction=0"])
    )
    assert len(groups) == 40 and isinstance(groups[0], RankedGroup)
    ratings, _, report = load_train_val(
        load_config(None, ["data.synthetic.n_prompts=40", "data.kind=ratings", "data.val_fraction=0"])
    )
    assert len(ratings) == 160 and report.bayes_accuracy == {}


def test_load_train_val_files_with_eval_path_and_conversion(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranks": [0, 1, 1]} for i in range(5)]
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "e.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "x", "rejected": "y"}))
    cfg = load_config(None, [f"data.train_path={tmp_path / 'g.jsonl'}", f"data.eval_path={tmp_path / 'e.jsonl'}"])
    train, val, report = load_train_val(cfg)
    assert len(train) == 10  # 5 groups x 2 strictly ordered pairs (the tie gives none)
    assert val == [PreferencePair("q", "x", "y", source=f"{tmp_path / 'e.jsonl'}:1")]
    assert report.kind == "groups" and report.eval_report.n_kept == 1


def test_convert_kind_refuses_ratings_from_pairs() -> None:
    with pytest.raises(DataError) as err:
        convert_kind([PreferencePair("p", "a", "b")], "pairs", "ratings", source="x.jsonl")
    assert str(err.value) == (
        "x.jsonl: data.kind=ratings: cannot make ratings from pairs (per-aspect ratings need rated data); "
        "use data.kind=pairs or data.kind=groups"
    )
