"""`raw-rm select`: each strategy picks the expected pairs of a constructed pool (injected member rewards)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from raw_rm.cli import select

# Member rewards (K = 2) of response a and b for 4 pairs, chosen so that every strategy ranks them differently:
#   pair  a          b        delta        std -|mean Δ|/std Δ    disagreement 4 Var σ(Δ_k)        margin -|mean Δ|
#   0     [.1, .1]   [0, 0]   [.1, .1]     -.1 / 1e-12 (floor)    0                                -0.1
#   1     [2, -2]    [0, 0]   [2, -2]      -0 / 2 = 0             (σ(2) - σ(-2))^2 = 0.5800        0
#   2     [3, 3]     [0, 0]   [3, 3]       -3 / 1e-12 (floor)     0                                -3
#   3     [1.5, 0]   [0, 1]   [1.5, -1]    -.25 / 1.25 = -0.2     (σ(1.5) - σ(-1))^2 = 0.3011      -0.25
A = [[0.1, 0.1], [2.0, -2.0], [3.0, 3.0], [1.5, 0.0]]
B = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class FakeInference:
    """Stands in for RewardModelInference: member rewards looked up by response text."""

    source = "fake-ensemble"
    temperature = 1.0

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def batch_predict_members(self, prompts, responses):
        return np.array([self.table[r] for r in responses], dtype=np.float64)

    def normalize(self, x):
        return np.asarray(x, dtype=np.float64)


@pytest.fixture()
def pool(tmp_path: Path) -> tuple[Path, FakeInference]:
    rows, table = [], {}
    for i, (a, b) in enumerate(zip(A, B)):
        rows.append({"id": i, "prompt": f"p{i}", "response_a": f"a{i}", "response_b": f"b{i}"})
        table[f"a{i}"], table[f"b{i}"] = a, b
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, FakeInference(table)


def run_cli(monkeypatch, pool_path: Path, rm: FakeInference, out: Path, strategy: str, k: int) -> int:
    import raw_rm.quantization

    monkeypatch.setattr(raw_rm.quantization, "load_for_inference", lambda model, **kw: rm)
    args = argparse.Namespace(
        model="fake",
        pool=str(pool_path),
        k=k,
        strategy=strategy,
        out=str(out),
        a_field="response_a",
        b_field="response_b",
        seed=0,
        batch_size=8,
        max_len_tokens=None,
    )
    return select.run(args)


@pytest.mark.parametrize(
    ("strategy", "ids", "scores"),
    [
        ("std", [1, 3], [0.0, -0.2]),
        ("disagreement", [1, 3], [(sigmoid(2) - sigmoid(-2)) ** 2, (sigmoid(1.5) - sigmoid(-1)) ** 2]),
        ("margin", [1, 0], [0.0, -0.1]),
    ],
)
def test_strategies_pick_the_expected_pairs(
    monkeypatch, tmp_path: Path, pool, strategy: str, ids: list[int], scores: list[float]
) -> None:
    pool_path, rm = pool
    out = tmp_path / "picked.jsonl"
    assert run_cli(monkeypatch, pool_path, rm, out, strategy, k=2) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ids
    assert [r["selection_rank"] for r in rows] == [0, 1]
    assert all(r["strategy"] == strategy for r in rows)
    np.testing.assert_allclose([r["selection_score"] for r in rows], scores, atol=1e-6)
    # pair 1: members' deltas are +2 and -2: mean 0 -> P(a > b) = 0.5, spread 2
    by_id = {r["id"]: r for r in rows}
    if 1 in by_id:
        assert by_id[1]["prob_a"] == pytest.approx(0.5) and by_id[1]["delta_std"] == pytest.approx(2.0)


def test_random_strategy_is_seeded_uniform(monkeypatch, tmp_path: Path, pool) -> None:
    pool_path, rm = pool
    out = tmp_path / "picked.jsonl"
    assert run_cli(monkeypatch, pool_path, rm, out, "random", k=4) == 0
    draws = np.random.default_rng(0).random(4)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == list(np.argsort(-draws, kind="stable"))


def test_single_reward_model_cannot_use_spread(pool, capsys) -> None:
    _, rm = pool
    single = FakeInference({k: v[:1] for k, v in rm.table.items()})
    items = [(f"p{i}", f"a{i}", f"b{i}") for i in range(4)]
    with pytest.raises(
        ValueError, match=r"strategy std needs an ensemble \(>= 2 members\) but fake-ensemble gives 1 reward per text"
    ):
        select.select_pairs(single, items, 2, "std")
    assert [p["index"] for p in select.select_pairs(single, items, 2, "margin")] == [
        0,
        3,
    ]  # |0.1|, |1.5 - 0|... smallest first


def test_k_larger_than_pool_is_an_input_error(monkeypatch, tmp_path: Path, pool, capsys) -> None:
    pool_path, rm = pool
    assert run_cli(monkeypatch, pool_path, rm, tmp_path / "o.jsonl", "std", k=5) == 2
    assert "raw-rm select: error: --k 5: expected 1 <= k <= 4 (the pool size)" in capsys.readouterr().err
