"""Ensemble aggregates, selection on a constructed pool, drift statistics."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raw_rm.uncertainty import (
    ReferenceDistribution,
    RollingDriftMonitor,
    aggregate,
    compare_pairs,
    ks_statistic,
    margin_z,
    normalise,
    pair_disagreement,
    psi,
    select_top_k,
    selection_scores,
    vote_split,
)


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------------------- aggregates
def test_aggregate_hand_values() -> None:
    out = aggregate(t([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]]), lam=0.5, k=2.0)
    expected = {
        "mean": [2.0, 2.0, 2.0],
        "std": [1.0, 0.0, 2.0],  # population std
        "min": [1.0, 2.0, 0.0],
        "mean_minus_lambda_var": [1.5, 2.0, 0.0],  # 2 − 0.5·std²
        "lcb": [0.0, 2.0, -2.0],  # 2 − 2·std
    }
    assert set(out) == set(expected)
    for key, values in expected.items():
        torch.testing.assert_close(out[key], t(values), msg=key)


def test_aggregate_one_member_has_zero_spread() -> None:
    out = aggregate(np.array([[0.7], [-1.0]]))
    torch.testing.assert_close(out["std"], t([0.0, 0.0]))
    torch.testing.assert_close(out["lcb"], t([0.7, -1.0]))
    with pytest.raises(
        ValueError, match=r"member_rewards: expected member rewards of shape \(N, K\) with K >= 1, got \(3,\)"
    ):
        aggregate([1.0, 2.0, 3.0])


def test_normalise() -> None:
    torch.testing.assert_close(normalise([1.0, 3.0], mean=1.0, std=2.0), t([0.0, 1.0]))
    with pytest.raises(ValueError, match="normalise: std must be a finite number > 0, got 0.0"):
        normalise([1.0], mean=0.0, std=0.0)


def test_compare_pairs_uses_the_temperature() -> None:
    out = compare_pairs(t([[2 * math.log(3.0), 2 * math.log(3.0)]]), t([[0.0, 0.0]]), temperature=2.0)
    assert out["prob"].item() == pytest.approx(0.75)
    assert out["prob_std"].item() == 0.0 and out["delta_std"].item() == 0.0


# ------------------------------------------------------------------------------------------ selection
# Constructed pool of pairs (a, b) with 3 members each:
#                                                      std score
#                                                      −|mean Δ|/std Δ
#   0: members agree, clear winner   Δ_k = 1, 1, 1        −1e12 (floor)  disagreement 0      |mean Δ| 1
#   1: shaky rewards, agreed order   Δ_k = 1, 1, 1        −1e12 (floor)  disagreement 0      |mean Δ| 1
#   2: members disagree on the order Δ_k = 3, −3, 3       −1/√8          disagreement 0.728  |mean Δ| 1
#   3: members agree, barely apart   Δ_k = .1, .1, .1     −1e11 (floor)  disagreement 0      |mean Δ| 0.1
# Pair 1's responses each vary a lot over members (response std 1.633) by an offset shared by a and b: that says
# nothing about the order, so std must not pick it (a per-response std would pick it first).
POOL_A = t([[1.0, 1.0, 1.0], [0.0, 2.0, 4.0], [1.5, -1.5, 1.5], [0.1, 0.1, 0.1]])
POOL_B = t([[0.0, 0.0, 0.0], [-1.0, 1.0, 3.0], [-1.5, 1.5, -1.5], [0.0, 0.0, 0.0]])


def test_selection_strategies_pick_the_expected_pairs() -> None:
    assert select_top_k(selection_scores("std", POOL_A, POOL_B), 2).tolist() == [2, 3]
    assert select_top_k(selection_scores("disagreement", POOL_A, POOL_B), 1).tolist() == [2]
    assert select_top_k(selection_scores("margin", POOL_A, POOL_B), 1).tolist() == [3]
    # 4·Var(σ(3), σ(−3), σ(3)), worked out by hand.
    assert pair_disagreement(POOL_A, POOL_B)[2].item() == pytest.approx(0.7282607654012017, abs=1e-12)
    assert selection_scores("std", POOL_A, POOL_B)[2].item() == pytest.approx(-1 / math.sqrt(8), abs=1e-12)
    assert margin_z(POOL_A, POOL_B)[0].item() == pytest.approx(1e12)  # zero spread: the floor, finite


def test_vote_split_counts_members_against_the_majority_and_ignores_scale() -> None:
    a = t([[1.0, 2.0, -1.0, 3.0], [1.0, 1.0, 1.0, 1.0], [0.5, -0.5, 0.5, -0.5], [0.0, 0.0, 0.0, 2.0]])
    b = torch.zeros_like(a)
    assert vote_split(a, b).tolist() == [0.25, 0.0, 0.5, 0.0]  # last row: ties vote for neither side
    # the spread of Δ shrinks with Δ's size; the vote split does not
    assert torch.equal(vote_split(0.01 * a + 7.0, b + 7.0), vote_split(a, b))
    with pytest.raises(ValueError, match="shape"):
        vote_split(a, b[:, :2])


def test_pair_scores_ignore_offsets_shared_by_both_responses() -> None:
    # Bradley-Terry rewards are identified only up to a shift per prompt (and member): adding the same arbitrary
    # offset to a and b, different per pair and member, must not change any pair score.
    offset = torch.randn(POOL_A.shape, generator=torch.Generator().manual_seed(0), dtype=POOL_A.dtype) * 10
    for strategy in ("std", "disagreement", "margin"):
        torch.testing.assert_close(
            selection_scores(strategy, POOL_A + offset, POOL_B + offset), selection_scores(strategy, POOL_A, POOL_B)
        )


def test_std_score_ignores_a_common_scale() -> None:
    torch.testing.assert_close(
        selection_scores("std", 3 * POOL_A, 3 * POOL_B)[2:3], selection_scores("std", POOL_A, POOL_B)[2:3]
    )


def test_random_selection_is_seeded() -> None:
    first = select_top_k(selection_scores("random", POOL_A, POOL_B, seed=7), 4).tolist()
    assert first == select_top_k(selection_scores("random", POOL_A, POOL_B, seed=7), 4).tolist()
    assert sorted(first) == [0, 1, 2, 3]
    orders = {tuple(select_top_k(selection_scores("random", POOL_A, POOL_B, seed=s), 4).tolist()) for s in range(10)}
    assert len(orders) > 1


def test_selection_errors_and_ties() -> None:
    with pytest.raises(
        ValueError, match='unknown selection strategy "entropy"; valid: std, disagreement, margin, random'
    ):
        selection_scores("entropy", POOL_A, POOL_B)
    with pytest.raises(ValueError, match="k=5 but the pool has 4 pairs"):
        select_top_k([0.0, 1.0, 2.0, 3.0], 5)
    assert select_top_k([1.0, 2.0, 2.0, 0.0], 3).tolist() == [1, 2, 0]  # equal scores keep pool order


# ---------------------------------------------------------------------------------------------- drift
def test_psi_and_ks_hand_values() -> None:
    ref = ReferenceDistribution(edges=[0.0], proportions=[0.5, 0.5], n=4, mean=0.0, std=1.0)
    # New shares 1/4, 3/4: (0.25 − 0.5)·ln(0.5) + (0.75 − 0.5)·ln(1.5)
    assert psi(ref, [-1.0, 1.0, 2.0, 3.0]) == pytest.approx(0.2746530721670274, abs=1e-12)
    assert ks_statistic(ref, [-1.0, 1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert ks_statistic([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]) == pytest.approx(0.5)


def test_drift_near_zero_for_same_distribution_and_large_for_shifted() -> None:
    rng = np.random.default_rng(0)
    reference, same, shifted = rng.normal(size=5000), rng.normal(size=5000), rng.normal(1.0, 1.0, size=5000)
    summary = ReferenceDistribution.from_sample(reference)
    for ref in (reference, summary):
        assert psi(ref, same) < 0.02 and ks_statistic(ref, same) < 0.05
        assert psi(ref, shifted) > 0.5 and ks_statistic(ref, shifted) > 0.3


def test_reference_distribution_round_trips_through_json() -> None:
    ref = ReferenceDistribution.from_sample(np.arange(100.0), bins=4)
    assert ref.edges == [24.75, 49.5, 74.25]
    assert ref.proportions == [0.25, 0.25, 0.25, 0.25]
    again = ReferenceDistribution.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again == ref
    with pytest.raises(
        ValueError, match=r"expected keys \['edges', 'mean', 'n', 'proportions', 'std'\], got \['edges'\]"
    ):
        ReferenceDistribution.from_dict({"edges": []})
    with pytest.raises(ValueError, match="2 proportions for 2 edges; expected len"):
        ReferenceDistribution(edges=[0.0, 1.0], proportions=[0.5, 0.5], n=2, mean=0.0, std=1.0)
    # Repeated values (e.g. input lengths): fewer, distinct edges.
    assert ReferenceDistribution.from_sample([5, 5, 5, 5, 9], bins=4).edges == [5.0]


def test_rolling_monitor_window_and_nonfinite_values() -> None:
    ref = ReferenceDistribution(edges=[0.0], proportions=[0.5, 0.5], n=4, mean=0.0, std=1.0)
    monitor = RollingDriftMonitor(ref, window=4)
    assert math.isnan(monitor.stats()["psi"]) and monitor.stats()["n"] == 0
    monitor.update([-1.0, -1.0, -1.0, -1.0, math.nan])
    stats = monitor.stats()
    # Shares (1, 0 -> floored at 1e-4): 0.5·ln 2 + (1e-4 − 0.5)·ln(1e-4 / 0.5)
    assert stats["psi"] == pytest.approx(4.60431846666895, abs=1e-12)
    assert (stats["ks"], stats["n"], stats["n_nonfinite"]) == (0.5, 4, 1)
    monitor.update([1.0, 1.0])  # the two oldest fall out: shares 1/2, 1/2
    stats = monitor.stats()
    assert (stats["psi"], stats["ks"], stats["n"]) == (0.0, 0.0, 4)


def test_rolling_monitor_matches_batch_statistics_under_threads() -> None:
    rng = np.random.default_rng(1)
    ref = ReferenceDistribution.from_sample(rng.normal(size=2000))
    monitor = RollingDriftMonitor(ref, window=500)
    values = rng.normal(0.5, 1.0, size=(4, 300))
    threads = [
        threading.Thread(target=lambda v=v: [monitor.update(v[i : i + 10]) for i in range(0, 300, 10)]) for v in values
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = monitor.stats()
    assert stats["n"] == 500
    assert stats["psi"] > 0.1
    single = RollingDriftMonitor(ref, window=300)
    single.update(values[0])
    assert single.stats()["psi"] == pytest.approx(psi(ref, values[0]), abs=1e-12)
    assert single.stats()["ks"] == pytest.approx(ks_statistic(ref, values[0]), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=50),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50),
)
def test_drift_statistics_are_bounded(reference: list, new: list) -> None:
    assert psi(reference, new) >= 0.0
    assert 0.0 <= ks_statistic(reference, new) <= 1.0
    assert ks_statistic(reference, reference) == 0.0
