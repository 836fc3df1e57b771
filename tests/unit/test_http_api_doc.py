"""docs/http_api.md: its request examples are valid requests and its response examples carry exactly the server's keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from raw_rm.config import ServeConfig
from raw_rm.serve import scoring

DOC = Path(__file__).resolve().parents[2] / "docs" / "http_api.md"


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    return [json.loads(block) for block in blocks]


def _example(examples: list[dict], key: str) -> dict:
    found = [e for e in examples if key in e]
    assert found, f"no JSON example in {DOC.name} with key {key!r}"
    return found[0]


def _keys(obj: object) -> object:
    """The key structure of a JSON value: dicts by key, lists by their first element."""
    if isinstance(obj, dict):
        return {k: _keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_keys(obj[0])] if obj else []
    return None


CFG = ServeConfig(models=["m"], reward="lcb")
MEMBERS = torch.tensor([[0.5, -0.5, 1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)  # (N=2, K=3)


def test_request_examples_are_valid(examples) -> None:
    assert len(scoring.parse_get_reward(_example(examples, "query"), CFG)) == 2
    assert len(scoring.parse_score(_example(examples, "items"), CFG)) == 1
    side_a, side_b = scoring.parse_compare(_example(examples, "pairs"), CFG)
    assert (len(side_a), len(side_b)) == (1, 1)
    assert len(scoring.parse_rank(_example(examples, "responses"), CFG)) == 3


def test_response_examples_have_the_server_keys(examples) -> None:
    agg = scoring.aggregate_scores(MEMBERS, CFG)
    items = scoring.ScoreItems(["p", "p"], ["a", "b"], clipped=[False, False])
    assert _keys(_example(examples, "extra_logs")) == _keys(scoring.get_reward_response(agg, items))
    score = [e for e in examples if "results" in e and "raw_members" in e["results"][0]]
    assert len(score) == 1 and _keys(score[0]) == _keys(scoring.score_response(agg, MEMBERS, MEMBERS, CFG))
    probs = scoring.pair_probabilities(MEMBERS, MEMBERS.flip(0), [scoring.MemberInfo("m", 3)])
    compare = [e for e in examples if "results" in e and "prob_a" in e["results"][0]]
    assert len(compare) == 1 and _keys(compare[0]) == _keys(scoring.compare_response(agg, agg, probs))
    assert _keys(_example(examples, "order")) == _keys(scoring.rank_response(agg, CFG))


def test_error_example_is_what_the_server_answers(examples) -> None:
    with pytest.raises(scoring.RequestError) as err:
        scoring.parse_get_reward({"query": ["a"], "prompts": ["a", "b"]}, CFG)
    assert _example(examples, "field") == err.value.to_json()
