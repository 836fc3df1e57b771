"""Losses against hand-worked numbers, gradients, invariances and a contract over the registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raw_rm.config import ConfigError, LossConfig
from raw_rm.losses import (
    LOSSES,
    build_loss,
    build_ranking_loss,
    describe_loss,
    example_weights,
    losses_from_dict,
    param_l2,
    preference_loss,
    reward_regularisers,
    uncertainty_weights,
)

PAIR_LOSSES = [n for n, s in LOSSES.items() if s.kind == "pair"]
GROUP_LOSSES = [n for n, s in LOSSES.items() if s.kind == "group"]

# Hand-worked: -log σ(x) = log(1 + e^-x).
LOG2 = 0.6931471805599453  # Δ = 0
BT_1 = 0.31326168751822286  # log(1 + e^-1)
BT_M1 = 1.3132616875182228  # log(1 + e^1)
BT_2 = 0.1269280110429725  # log(1 + e^-2)


def t(*values: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def pair_loss(name: str, **params: float):
    return build_loss(LossConfig(name=name, **params))


# ------------------------------------------------------------------------------------- hand numbers
def test_bt_hand_values() -> None:
    loss = preference_loss(t(0.0, 1.0, -1.0, 2.0), t(0.0, 0.0, 0.0, 0.0))
    assert loss.item() == pytest.approx((LOG2 + BT_1 + BT_M1 + BT_2) / 4, abs=1e-12)
    assert preference_loss(t(0.0), t(0.0)).item() == pytest.approx(LOG2, abs=1e-12)
    assert preference_loss(t(1.0), t(0.0)).item() == pytest.approx(BT_1, abs=1e-12)


def test_per_example_margin_shifts_delta_and_nan_means_none() -> None:
    # Δ = 2 − 0 − 1 = 1 and Δ = 1 − 0 − 0 (NaN margin = no margin).
    loss = preference_loss(t(2.0, 1.0), t(0.0, 0.0), margin=t(1.0, math.nan))
    assert loss.item() == pytest.approx(BT_1, abs=1e-12)


@pytest.mark.parametrize(
    ("name", "params", "chosen", "expected"),
    [
        ("bt", {}, 1.0, BT_1),
        ("margin", {"margin": 1.0}, 1.0, LOG2),  # -log σ(1 − 1)
        ("margin", {"margin": 1.0}, 2.0, BT_1),
        ("contrastive", {"contrastive_tau": 0.5}, 1.0, BT_2),  # -log σ(1 / 0.5)
        ("contrastive", {"contrastive_tau": 2.0}, 1.0, 0.4740769841801067),  # log(1 + e^-0.5)
        ("focal", {"gamma": 2.0}, 0.0, 0.17328679513998632),  # 0.5^2 · log 2
        ("focal", {"gamma": 2.0}, 1.0, 0.02265805750846733),  # σ(-1)^2 · log(1 + e^-1)
        ("focal", {"gamma": 0.5}, -1.0, 1.1228645305602014),  # σ(1)^0.5 · log(1 + e)
        ("triplet", {"margin": 1.0}, 0.25, 0.75),
        ("triplet", {"margin": 1.0}, 2.0, 0.0),
        ("label_smoothing", {"epsilon": 0.1}, 1.0, 0.4132616875182229),  # 0.9·BT(1) + 0.1·BT(-1)
    ],
)
def test_pair_loss_hand_values(name: str, params: dict, chosen: float, expected: float) -> None:
    assert pair_loss(name, **params)(t(chosen), t(0.0)).item() == pytest.approx(expected, abs=1e-12)


def test_group_loss_hand_values() -> None:
    rewards = t(2.0, 1.0, 0.0).unsqueeze(0)
    ranks = torch.tensor([[0, 1, 2]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adjacent = build_ranking_loss(LossConfig(name="kwise_adjacent"))(rewards, ranks, mask)
    all_pairs = build_ranking_loss(LossConfig(name="kwise_all_pairs"))(rewards, ranks, mask)
    pl = build_ranking_loss(LossConfig(name="plackett_luce"))(rewards, ranks, mask)
    assert adjacent.item() == pytest.approx(2 * BT_1, abs=1e-12)  # (0,1) and (1,2)
    assert all_pairs.item() == pytest.approx((2 * BT_1 + BT_2) / 3, abs=1e-12)  # InstructGPT mean over 3 pairs
    # log(e^2 + e + 1) − 2 + log(e + 1) − 1
    assert pl.item() == pytest.approx(0.7208676519626029, abs=1e-12)


def test_adjacent_with_a_tied_level() -> None:
    # ranks 0, 1, 1, 2: adjacent pairs are 0-1, 0-2, 1-3, 2-3; the tied pair 1-2 gives nothing.
    rewards = t(3.0, 2.0, 1.0, 0.0).unsqueeze(0)
    loss = build_ranking_loss(LossConfig(name="kwise_adjacent"))(
        rewards, torch.tensor([[0, 1, 1, 2]]), torch.ones(1, 4, dtype=torch.bool)
    )
    assert loss.item() == pytest.approx(2 * BT_1 + 2 * BT_2, abs=1e-12)


# ---------------------------------------------------------------------------------------- gradients
def test_bt_gradient_is_one_minus_sigma_times_grad_delta() -> None:
    torch.manual_seed(0)
    x_chosen, x_rejected = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    preference_loss(x_chosen @ w, x_rejected @ w).backward()
    delta = ((x_chosen - x_rejected) @ w).detach()
    expected = -((1 - torch.sigmoid(delta)).unsqueeze(1) * (x_chosen - x_rejected)).mean(dim=0)
    torch.testing.assert_close(w.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_gradcheck_pair_losses(name: str) -> None:
    loss = pair_loss(name, gamma=1.5, epsilon=0.2, contrastive_tau=0.7, margin=1.0)
    # Δ values away from the triplet hinge's kink at Δ = margin.
    chosen = t(0.3, -1.2, 2.9, 0.1).requires_grad_()
    rejected = t(0.9, 0.4, -0.5, 1.3).requires_grad_()
    margin, weight = t(0.2, math.nan, 0.0, -0.3), t(1.0, 0.5, 2.0, 0.25)
    assert torch.autograd.gradcheck(lambda c, r: loss(c, r, margin=margin, weight=weight), (chosen, rejected))


@pytest.mark.parametrize("name", GROUP_LOSSES + ["focal"])
def test_gradcheck_group_losses(name: str) -> None:
    loss = build_ranking_loss(LossConfig(name=name))
    torch.manual_seed(1)
    rewards = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ranks = torch.tensor([[0, 1, 2, 3], [1, 0, 0, 2], [0, 1, 0, 0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, False, False]])
    assert torch.autograd.gradcheck(lambda r: loss(r, ranks, mask, t(1.0, 2.0, 0.5)), (rewards,))


# ------------------------------------------------------------------------------------------ identities
@pytest.mark.parametrize(
    ("name", "params"),
    [("contrastive", {"contrastive_tau": 1.0}), ("label_smoothing", {"epsilon": 0.0}), ("focal", {"gamma": 0.0})],
)
def test_special_cases_equal_bt(name: str, params: dict) -> None:
    chosen, rejected = t(0.5, -2.0, 3.0, 0.0, 40.0), t(0.0, 1.0, -1.0, 0.0, -40.0)
    margin = t(0.1, math.nan, 0.0, 0.5, 0.0)
    expected = preference_loss(chosen, rejected, margin=margin)
    assert pair_loss(name, **params)(chosen, rejected, margin=margin).item() == pytest.approx(
        expected.item(), abs=1e-15
    )


@pytest.mark.parametrize("name", GROUP_LOSSES)
def test_group_losses_on_two_items_equal_bt(name: str) -> None:
    rewards = t(0.7, -0.4, 1.5, 2.0).reshape(2, 2)
    ranks = torch.tensor([[0, 1], [1, 0]])  # second group: the second item is the chosen one
    mask = torch.ones(2, 2, dtype=torch.bool)
    expected = preference_loss(t(0.7, 2.0), t(-0.4, 1.5))
    assert build_ranking_loss(LossConfig(name=name))(rewards, ranks, mask).item() == pytest.approx(
        expected.item(), abs=1e-12
    )


@pytest.mark.parametrize("name", GROUP_LOSSES + ["bt"])
def test_padding_does_not_change_group_loss(name: str) -> None:
    loss = build_ranking_loss(LossConfig(name=name))
    rewards = t(1.0, 0.2, -0.5, 0.3, 0.9, 0.0).reshape(2, 3)
    ranks = torch.tensor([[0, 1, 2], [1, 0, 2]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    expected = loss(rewards, ranks, mask)
    padded = torch.cat([rewards, t(math.nan, 1e4, -7.0, math.nan).reshape(2, 2)], dim=1).requires_grad_()
    padded_ranks = torch.cat([ranks, torch.tensor([[0, 0], [5, 0]])], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    got = loss(padded, padded_ranks, padded_mask)
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)
    got.backward()
    assert torch.isfinite(padded.grad).all()
    assert padded.grad[:, 3:].abs().sum().item() == 0.0


@pytest.mark.parametrize("name", ["kwise_adjacent", "kwise_all_pairs"])
def test_ties_give_no_signal_in_pairwise_group_forms(name: str) -> None:
    loss = build_ranking_loss(LossConfig(name=name))
    rewards = t(0.5, -1.0, 2.0, 1.0, 0.0, 3.0).reshape(2, 3).requires_grad_()
    ranks = torch.tensor([[0, 0, 0], [0, 1, 2]])  # first group: all tied
    mask = torch.ones(2, 3, dtype=torch.bool)
    got = loss(rewards, ranks, mask)
    alone = loss(rewards[1:].detach(), ranks[1:], mask[1:])
    assert got.item() == pytest.approx(alone.item(), abs=1e-12)
    got.backward()
    assert rewards.grad[0].abs().sum().item() == 0.0
    # Only tied groups: loss 0 with a zero gradient.
    only_ties = loss(rewards[:1], ranks[:1], mask[:1])
    assert only_ties.item() == 0.0


@pytest.mark.parametrize("name", GROUP_LOSSES)
def test_swapping_tied_rewards_changes_nothing(name: str) -> None:
    loss = build_ranking_loss(LossConfig(name=name))
    ranks, mask = torch.tensor([[0, 1, 1, 2]]), torch.ones(1, 4, dtype=torch.bool)
    a = loss(t(3.0, 2.0, 0.5, 0.0).unsqueeze(0), ranks, mask)
    b = loss(t(3.0, 0.5, 2.0, 0.0).unsqueeze(0), ranks, mask)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=1, max_size=8),
    st.floats(-100, 100),
    st.sampled_from(PAIR_LOSSES),
)
def test_adding_a_constant_changes_nothing(pairs: list, shift: float, name: str) -> None:
    chosen, rejected = t(*[p[0] for p in pairs]), t(*[p[1] for p in pairs])
    loss = pair_loss(name)
    assert loss(chosen + shift, rejected + shift).item() == pytest.approx(
        loss(chosen, rejected).item(), rel=1e-9, abs=1e-9
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=1, max_size=8), st.floats(0.01, 100))
def test_equal_weights_equal_plain_and_bt_identity(deltas: list, w: float) -> None:
    delta = t(*deltas)
    zeros = torch.zeros_like(delta)
    for name in PAIR_LOSSES:
        loss = pair_loss(name)
        plain = loss(delta, zeros)
        weighted = loss(delta, zeros, weight=torch.full_like(delta, w))
        assert weighted.item() == pytest.approx(plain.item(), rel=1e-12, abs=1e-12)
        assert plain.item() >= 0.0
    # BT(Δ) − BT(−Δ) = −Δ, elementwise (log σ(Δ) − log σ(−Δ) = Δ).
    bt = build_loss(LossConfig(name="bt")).per_example(delta, zeros)
    bt_flipped = build_loss(LossConfig(name="bt")).per_example(zeros, delta)
    torch.testing.assert_close(bt - bt_flipped, -delta, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_extreme_rewards_stay_finite_in_float32(name: str) -> None:
    chosen = torch.tensor([1e4, -1e4, 0.0], requires_grad=True)
    loss = pair_loss(name)(chosen, torch.tensor([-1e4, 1e4, 0.0]))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(chosen.grad).all()


def test_weighted_mean_hand_value_and_bad_weights() -> None:
    # (2·BT(0) + 1·BT(1)) / 3
    got = preference_loss(t(0.0, 1.0), t(0.0, 0.0), weight=t(2.0, 1.0))
    assert got.item() == pytest.approx((2 * LOG2 + BT_1) / 3, abs=1e-12)
    assert preference_loss(t(0.0, 1.0), t(0.0, 0.0), weight=t(0.0, 0.0)).item() == 0.0
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0, got \[1.0, -1.0\]"):
        preference_loss(t(0.0, 1.0), t(0.0, 0.0), weight=t(1.0, -1.0))
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(2,\)"):
        preference_loss(t(0.0, 1.0), t(0.0, 0.0), weight=t(1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------- regularisers
def test_reward_regularisers_hand_value() -> None:
    cfg = LossConfig(center_coef=0.5, reward_l2_coef=0.1)
    # center: mean((1+0)^2, (2-1)^2) = 1 -> 0.5; l2: mean(1, 4, 0, 1) = 1.5 -> 0.15
    assert reward_regularisers(cfg, t(1.0, 2.0), t(0.0, -1.0)).item() == pytest.approx(0.65, abs=1e-12)
    assert reward_regularisers(LossConfig(), t(1.0, 2.0), t(0.0, -1.0)).item() == 0.0


def test_param_l2_counts_trainable_parameters_only() -> None:
    frozen = torch.tensor([3.0])
    assert param_l2([t(1.0, 2.0).requires_grad_(), frozen], coef=0.5).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="param_l2: no parameter requires a gradient"):
        param_l2([frozen])


# ------------------------------------------------------------------------------ uncertainty weights
def test_uncertainty_weights_hand_value_and_equal_weights_equal_plain() -> None:
    # Members' Δ_k = 3 and −3: 4·Var(σ(3), σ(−3)) = (σ(3) − σ(−3))^2 = 0.81929...; weight = 1 − that.
    w = uncertainty_weights(t(3.0, -3.0).reshape(1, 2), torch.zeros(1, 2, dtype=torch.float64))
    assert w.item() == pytest.approx(0.18070663892364824, abs=1e-12)
    # Every pair has the same disagreement -> equal weights -> the plain loss.
    members_c, members_r = (
        t(1.0, -1.0, 2.0, 0.0, 0.5, -1.5).reshape(3, 2),
        t(0.0, 0.0, 1.0, 1.0, -0.5, -0.5).reshape(3, 2),
    )
    chosen, rejected = members_c.mean(dim=1), members_r.mean(dim=1)
    cfg = LossConfig(uncertainty_weighting=True)
    weights = example_weights(cfg, None, members_c, members_r)
    assert torch.allclose(weights, weights[0].expand(3))
    loss = build_loss(cfg)
    assert loss(chosen, rejected, weight=weights).item() == pytest.approx(loss(chosen, rejected).item(), abs=1e-12)
    # One member: no disagreement, every weight 1.
    assert torch.equal(uncertainty_weights(t(1.0, 2.0).reshape(2, 1), t(0.0, 5.0).reshape(2, 1)), t(1.0, 1.0))


def test_example_weights_needs_members_when_uncertainty_weighting() -> None:
    with pytest.raises(
        ValueError, match=r"loss.uncertainty_weighting needs per-member rewards \(RewardOutput.members\)"
    ):
        example_weights(LossConfig(uncertainty_weighting=True), t(1.0))
    assert example_weights(LossConfig(use_weights=False), t(0.5)) is None
    assert torch.equal(example_weights(LossConfig(), t(0.5)), t(0.5))


# ------------------------------------------------------------------------------------ config & errors
def test_losses_from_dict_builds_a_config() -> None:
    cfg = losses_from_dict({"name": "focal", "gamma": 3, "regularisers": [{"name": "center", "coef": 0.01}]})
    assert (cfg.name, cfg.gamma, cfg.center_coef) == ("focal", 3.0, 0.01)
    assert pair_loss("focal", gamma=3.0)(t(1.0), t(0.0)).item() == pytest.approx(build_loss(cfg)(t(1.0), t(0.0)).item())


def test_unknown_parameter_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        losses_from_dict({"name": "focal", "gama": 2})
    assert str(err.value) == (
        'unknown parameter "gama" for loss focal (did you mean "gamma"?); valid: gamma; '
        "every loss also takes: regularisers, use_weights, uncertainty_weighting; pairwise losses also take: "
        "brier_coef, soft_ece_coef, soft_ece_bins, soft_ece_softness, confidence_penalty_coef, learned_temperature, "
        "calibration_fraction, temperature_lr, length_corr_coef, orthogonal_coef"
    )
    with pytest.raises(ConfigError, match=r'unknown parameter "gamma" for loss bt; valid: \(none\);'):
        losses_from_dict({"name": "bt", "gamma": 2})
    with pytest.raises(ConfigError, match='unknown regulariser "centre"; valid: center, reward_l2, param_l2'):
        losses_from_dict({"name": "bt", "regularisers": [{"name": "centre", "coef": 1.0}]})
    with pytest.raises(ConfigError, match=r"loss: gamma: expected a number, got 'big'"):
        losses_from_dict({"name": "focal", "gamma": "big"})


def test_unknown_and_misplaced_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_loss(LossConfig(name="focl"))
    assert str(err.value) == (
        'unknown loss "focl" (did you mean "focal"?); valid: bt, margin, contrastive, focal, triplet, '
        "label_smoothing, kwise_adjacent, kwise_all_pairs, plackett_luce"
    )
    with pytest.raises(ConfigError, match='loss "plackett_luce" is a ranking loss for k-wise groups'):
        build_loss(LossConfig(name="plackett_luce"))
    with pytest.raises(ConfigError, match=r"loss.gamma: expected >= 0, got -1.0"):
        build_loss(LossConfig(name="focal", gamma=-1.0))


def test_describe_loss() -> None:
    cfg = LossConfig(name="focal", gamma=2.0, center_coef=0.01, use_weights=False)
    assert describe_loss(cfg) == (
        "focal(gamma=2): -(1 - sigmoid(D))^gamma * log sigmoid(D), D = r_chosen - r_rejected - pair margin"
        " + 0.01*mean((r_c + r_r)^2)"
    )


# --------------------------------------------------------------------------------- registry contract
def _pairwise_accuracy(scores: torch.Tensor, truth: torch.Tensor) -> float:
    better = truth.unsqueeze(1) > truth.unsqueeze(0)
    return ((scores.unsqueeze(1) > scores.unsqueeze(0)) & better).sum().item() / better.sum().item()


@pytest.mark.parametrize("name", list(LOSSES))
def test_contract_training_raises_accuracy(name: str) -> None:
    """Rewards r = x·w; a few Adam steps from a bad start must rank held-in items by the true reward."""
    gen = torch.Generator().manual_seed(0)
    w_true = torch.randn(5, generator=gen)
    w = (-0.5 * w_true + 0.1 * torch.randn(5, generator=gen)).requires_grad_()
    opt = torch.optim.Adam([w], lr=0.1)
    cfg = LossConfig(name=name)
    if LOSSES[name].kind == "pair":
        x = torch.randn(64, 2, 5, generator=gen)
        order = (x @ w_true).argsort(dim=1, descending=True)  # chosen first
        x = torch.gather(x, 1, order.unsqueeze(2).expand_as(x))
        loss_fn = build_loss(cfg)
        step_loss = lambda: loss_fn(x[:, 0] @ w, x[:, 1] @ w)  # noqa: E731
    else:
        x = torch.randn(16, 4, 5, generator=gen)
        ranks = (x @ w_true).argsort(dim=1, descending=True).argsort(dim=1)
        mask = torch.ones(16, 4, dtype=torch.bool)
        mask[::3, 3] = False  # some groups of 3
        loss_fn = build_ranking_loss(cfg)
        step_loss = lambda: loss_fn(x @ w, ranks, mask)  # noqa: E731
    items = x.reshape(-1, 5)
    before = _pairwise_accuracy((items @ w).detach(), items @ w_true)
    for _ in range(30):
        opt.zero_grad()
        loss = step_loss()
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
        opt.step()
    after = _pairwise_accuracy((items @ w).detach(), items @ w_true)
    assert before < 0.3 and after > 0.9, (before, after)
