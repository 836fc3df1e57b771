"""Metrics against hand-computed values and simulated (mis)calibrated predictors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit

from raw_rm.metrics import (
    accuracy_coverage,
    auroc,
    calibration_error,
    compare_calibration,
    ece_noise_floor,
    fit_temperature,
    pair_nll,
    pair_probabilities,
    preference_accuracy,
    ranking_correlation,
    reliability_bins,
    spread_error_correlation,
)


# ------------------------------------------------------------------------------------------- accuracy
def test_preference_accuracy_counts_ties_as_wrong() -> None:
    out = preference_accuracy([1.0, 2.0, 3.0, 0.0], torch.tensor([0.0, 0.0, 3.0, 1.0]))
    assert (out["accuracy"], out["tie_rate"], out["n"]) == (0.5, 0.25, 4)
    assert out["ci_low"] <= 0.5 <= out["ci_high"]


def test_preference_accuracy_bootstrap_is_seeded_and_degenerate_when_all_right() -> None:
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=400) + 0.5, rng.normal(size=400)
    a = preference_accuracy(chosen, rejected, seed=3)
    assert a == preference_accuracy(chosen, rejected, seed=3)
    # Normal approximation: ±1.96·sqrt(p(1−p)/n) ≈ ±0.045 around p ≈ 0.64.
    half_width = 1.96 * math.sqrt(a["accuracy"] * (1 - a["accuracy"]) / 400)
    assert a["ci_low"] == pytest.approx(a["accuracy"] - half_width, abs=0.01)
    assert a["ci_high"] == pytest.approx(a["accuracy"] + half_width, abs=0.01)
    perfect = preference_accuracy([1.0, 2.0], [0.0, 0.0])
    assert (perfect["ci_low"], perfect["ci_high"]) == (1.0, 1.0)


def test_preference_accuracy_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="expected arrays of one length, got chosen: 2, rejected: 1"):
        preference_accuracy([1.0, 2.0], [0.0])
    with pytest.raises(ValueError, match="chosen: 1 values are NaN"):
        preference_accuracy([1.0, math.nan], [0.0, 0.0])


def test_pair_probabilities_and_nll() -> None:
    np.testing.assert_allclose(pair_probabilities([0.0, math.log(3.0)]), [0.5, 0.75], rtol=1e-12)
    np.testing.assert_allclose(pair_probabilities([2 * math.log(3.0)], temperature=2.0), [0.75], rtol=1e-12)
    assert pair_nll([0.0, 1.0]) == pytest.approx((0.6931471805599453 + 0.31326168751822286) / 2, abs=1e-12)
    assert pair_nll([-1000.0]) == pytest.approx(1000.0)  # stable: no overflow


# ---------------------------------------------------------------------------------------- calibration
def test_calibration_error_hand_values() -> None:
    # Symmetrised set: (0.8, 1), (0.6, 0), (0.2, 0), (0.4, 1). Two bins: [0, 0.5) conf 0.3 freq 0.5,
    # [0.5, 1] conf 0.7 freq 0.5: both gaps 0.2.
    out = calibration_error([0.8, 0.6], [1, 0], n_bins=2)
    assert out["ece"] == pytest.approx(0.2, abs=1e-12)
    assert out["ece_equal_mass"] == pytest.approx(0.2, abs=1e-12)
    assert out["mce"] == pytest.approx(0.2, abs=1e-12)
    assert out["brier"] == pytest.approx((0.04 + 0.36) / 2, abs=1e-12)
    assert out["nll"] == pytest.approx(0.5697171415941824, abs=1e-12)  # −(ln 0.8 + ln 0.4) / 2


def test_calibration_with_all_labels_one_is_the_confidence_ece() -> None:
    # Every pair gets P(chosen ≻ rejected) = 0.75 and is right: confident 0.75, correct 100% -> gap 0.25.
    out = calibration_error([0.75, 0.75, 0.75], n_bins=4)
    assert out["ece"] == pytest.approx(0.25, abs=1e-12)
    assert out["brier"] == pytest.approx(0.0625, abs=1e-12)
    assert out["nll"] == pytest.approx(0.2876820724517809, abs=1e-12)  # −ln 0.75


def _simulated_pairs(n: int = 20000, seed: int = 0) -> np.ndarray:
    """Reward differences oriented chosen − rejected, labels drawn from Bradley-Terry with the true Δ."""
    rng = np.random.default_rng(seed)
    true_delta = rng.normal(0.5, 2.0, size=n)
    first_wins = rng.uniform(size=n) < expit(true_delta)
    return np.where(first_wins, true_delta, -true_delta)


def test_ece_of_calibrated_predictor_is_near_zero_and_overconfident_is_not() -> None:
    delta = _simulated_pairs()
    calibrated = calibration_error(pair_probabilities(delta))
    over = calibration_error(pair_probabilities(3.0 * delta))
    assert calibrated["ece"] < 0.015 and calibrated["ece_equal_mass"] < 0.015
    assert over["ece"] > 0.08 and over["ece_equal_mass"] > 0.08
    assert over["nll"] > calibrated["nll"] and over["brier"] > calibrated["brier"]


def test_temperature_scaling_fixes_overconfidence_and_keeps_accuracy() -> None:
    delta = 3.0 * _simulated_pairs(seed=1)  # over-confident by a factor 3
    temperature = fit_temperature(delta)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert pair_nll(delta, temperature) < pair_nll(delta) - 0.1
    before = calibration_error(pair_probabilities(delta))
    after = calibration_error(pair_probabilities(delta, temperature))
    assert after["ece"] < 0.02 < before["ece"]
    zeros = np.zeros_like(delta)
    assert preference_accuracy(delta / temperature, zeros)["accuracy"] == preference_accuracy(delta, zeros)["accuracy"]


def test_fit_temperature_edge_cases() -> None:
    assert fit_temperature([0.0, 0.0]) == 1.0
    assert fit_temperature([1.0, 2.0, 3.0], bounds=(0.05, 10.0)) == pytest.approx(0.05, rel=1e-3)  # separable
    with pytest.raises(ValueError, match=r"bounds: expected 0 < low < 1 < high, got \(2.0, 3.0\)"):
        fit_temperature([1.0], bounds=(2.0, 3.0))


def test_reliability_bins() -> None:
    bins = reliability_bins([0.8, 0.6], [1, 0], n_bins=2)
    np.testing.assert_allclose(bins["confidence"], [0.3, 0.7])
    np.testing.assert_allclose(bins["accuracy"], [0.5, 0.5])
    np.testing.assert_array_equal(bins["count"], [2, 2])
    empty = reliability_bins([0.9], n_bins=5)  # points 0.9 and 0.1: middle bins empty
    assert np.isnan(empty["accuracy"][2]) and empty["count"].tolist() == [1, 0, 0, 0, 1]
    mass = reliability_bins([0.9, 0.7, 0.6], n_bins=3, strategy="mass")
    np.testing.assert_allclose(mass["confidence"], [0.2, 0.5, 0.8])
    with pytest.raises(ValueError, match=r"probs: expected values in \[0, 1\]"):
        reliability_bins([1.5])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=40), st.integers(1, 20))
def test_calibration_metrics_are_bounded(points: list, n_bins: int) -> None:
    out = calibration_error([p for p, _ in points], [float(y) for _, y in points], n_bins=n_bins)
    assert 0.0 <= out["ece"] <= out["mce"] + 1e-12 <= 1.0 + 1e-12
    assert 0.0 <= out["ece_equal_mass"] <= 1.0 and 0.0 <= out["brier"] <= 1.0 and out["nll"] >= 0.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=1, max_size=60), st.integers(0, 9))
def test_accuracy_interval_contains_the_accuracy(pairs: list, seed: int) -> None:
    out = preference_accuracy([c for c, _ in pairs], [r for _, r in pairs], n_boot=200, seed=seed)
    assert out["ci_low"] <= out["accuracy"] <= out["ci_high"]
    assert 0.0 <= out["tie_rate"] <= 1.0 - out["accuracy"] + 1e-12


# -------------------------------------------------------------------------------------------- rankings
def test_ranking_correlation_hand_values_with_ties() -> None:
    # x ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): ρ = 4.5 / sqrt(4.5 · 5); τ-b = 5 / sqrt(5 · 6).
    out = ranking_correlation([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert out["spearman"] == pytest.approx(0.9486832980505138, abs=1e-12)
    assert out["kendall"] == pytest.approx(0.9128709291752769, abs=1e-12)
    assert out["spearman_pooled"] == pytest.approx(0.9486832980505138, abs=1e-12)


def test_ranking_correlation_per_group_and_ranks() -> None:
    predicted = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 5.0, 5.0]
    human_ranks = [2, 1, 0, 0, 1, 2, 0, 1]  # group a agrees, group b is reversed, group c: constant predictions
    out = ranking_correlation(predicted, human_ranks, ["a", "a", "a", "b", "b", "b", "c", "c"], target_kind="rank")
    assert out["spearman"] == pytest.approx(0.0, abs=1e-12)  # mean of +1 and −1
    assert out["kendall"] == pytest.approx(0.0, abs=1e-12)
    assert (out["n_groups"], out["n_skipped"]) == (2, 1)
    single = ranking_correlation([3.0, 2.0, 1.0], [0, 1, 2], target_kind="rank")
    assert (single["spearman"], single["kendall"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert math.isnan(ranking_correlation([1.0, 1.0], [1.0, 2.0])["spearman"])


# ----------------------------------------------------------------------------------------- uncertainty
def test_auroc_hand_values() -> None:
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered right.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1.0, 1.0], [0, 1]) == pytest.approx(0.5)  # a tie counts half
    assert auroc([0.0, 1.0, 2.0], [0, 1, 1]) == pytest.approx(1.0)
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-100, 100), st.booleans()), min_size=2, max_size=40))
def test_auroc_of_negated_scores_is_the_complement(points: list) -> None:
    labels = [float(y) for _, y in points]
    if len(set(labels)) < 2:
        return
    scores = np.array([s for s, _ in points])
    assert auroc(scores, labels) + auroc(-scores, labels) == pytest.approx(1.0, abs=1e-12)


def test_accuracy_coverage_hand_values() -> None:
    out = accuracy_coverage([0.3, 0.1, 0.2, 0.4], [0, 1, 1, 0])  # most certain first: right, right, wrong, wrong
    np.testing.assert_allclose(out["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(out["accuracy"], [1.0, 1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(out["threshold"], [0.1, 0.2, 0.3, 0.4])
    assert out["area"] == pytest.approx(0.7916666666666666)


def test_spread_error_correlation_hand_value() -> None:
    # ranks (1, 2, 3, 4) vs (1.5, 1.5, 3.5, 3.5): ρ = 4 / sqrt(5 · 4)
    assert spread_error_correlation([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1]) == pytest.approx(0.8944271909999159)
    assert math.isnan(spread_error_correlation([1.0, 2.0], [0, 0]))


def test_compare_calibration_is_paired_and_antisymmetric() -> None:
    rng = np.random.default_rng(0)
    delta = rng.normal(0.0, 2.0, 400)
    labels = (rng.random(400) < expit(delta)).astype(float)  # drawn from the calibrated model itself
    same = compare_calibration(expit(delta), expit(delta), labels, n_boot=50)
    assert all(v["diff"] == 0.0 and v["ci_low"] == 0.0 == v["ci_high"] and v["p_a_lower"] == 0.0 for v in same.values())
    ab = compare_calibration(expit(delta), expit(3 * delta), labels, n_boot=200, seed=1)
    ba = compare_calibration(expit(3 * delta), expit(delta), labels, n_boot=200, seed=1)  # same resamples
    for key in ("nll", "brier", "ece", "ece_equal_mass"):
        assert ab[key]["a"] == pytest.approx(calibration_error(expit(delta), labels)[key])
        assert ab[key]["diff"] == pytest.approx(-ba[key]["diff"])
        assert ab[key]["ci_low"] == pytest.approx(-ba[key]["ci_high"])
    # The true model against a 3x over-confident one on 400 pairs: clearly better NLL, interval excludes 0.
    assert ab["nll"]["ci_high"] < 0 and ab["nll"]["p_a_lower"] == 1.0


def test_compare_calibration_errors() -> None:
    with pytest.raises(ValueError, match="expected arrays of one length, got probs_a: 2, probs_b: 3"):
        compare_calibration([0.5, 0.6], [0.5, 0.6, 0.7])
    with pytest.raises(ValueError, match="n_boot: expected >= 1, got 0"):
        compare_calibration([0.5], [0.5], n_boot=0)


def test_equal_mass_ece_keeps_tied_probabilities_in_one_bin() -> None:
    # A constant prediction that is right as often as it says is calibrated under both binnings (it was 0.39 and
    # 0.5 for equal-mass bins that split the ties by input order).
    assert calibration_error([0.7] * 10, [1] * 7 + [0] * 3)["ece_equal_mass"] == pytest.approx(0.0, abs=1e-12)
    assert calibration_error([0.5] * 10)["ece_equal_mass"] == pytest.approx(0.0, abs=1e-12)
    bins = reliability_bins([0.7] * 10, [1] * 7 + [0] * 3, n_bins=4, strategy="mass")
    assert bins["count"].tolist() == [10, 10] and bins["accuracy"].tolist() == pytest.approx([0.3, 0.7])


def test_ece_noise_floor_shrinks_with_more_pairs_and_bounds_a_calibrated_model():
    rng = np.random.default_rng(1)
    few, many = rng.uniform(0.3, 0.9, 100), rng.uniform(0.3, 0.9, 5000)
    floor_few, floor_many = ece_noise_floor(few, seed=0), ece_noise_floor(many, seed=0)
    assert floor_few["mean"] > 3 * floor_many["mean"] > 0 and floor_few["n_sim"] == 200
    # a model whose probabilities are right: its measured ECE lies within the floor's spread
    labels = rng.random(few.size) < few
    measured = calibration_error(np.where(labels, few, 1 - few))["ece"]
    assert abs(measured - floor_few["mean"]) < 3 * floor_few["std"]
    assert ece_noise_floor(np.full(50, 0.5))["mean"] == 0.0  # p = 0.5 is calibrated whatever happens
    with pytest.raises(ValueError, match="n_sim"):
        ece_noise_floor(few, n_sim=1)
