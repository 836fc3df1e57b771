"""Calibration and length loss terms against hand-worked numbers, their gradients, and the impossible combinations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raw_rm.config import ConfigError, LossConfig, ModelConfig
from raw_rm.losses import (
    TERMS,
    brier_term,
    build_loss,
    build_pair_terms,
    confidence_penalty_term,
    describe_loss,
    length_corr_term,
    losses_from_dict,
    pearson,
    soft_ece_term,
)

LOG3 = math.log(3.0)  # σ(log 3) = 0.75


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_terms_are_registered_with_their_coefficients() -> None:
    assert {name: spec.coef for name, spec in TERMS.items()} == {
        "brier": "brier_coef",
        "confidence_penalty": "confidence_penalty_coef",
        "soft_ece": "soft_ece_coef",
        "length_corr": "length_corr_coef",
    }


def test_brier_by_hand() -> None:
    # P = 0.5 and 0.75: (1 - P)^2 = 0.25 and 0.0625, mean 0.15625; weights 3:1 give (0.75 + 0.0625) / 4.
    assert brier_term(t(0.0, LOG3)).item() == pytest.approx(0.15625)
    assert brier_term(t(0.0, LOG3), t(3.0, 1.0)).item() == pytest.approx(0.203125)


def test_confidence_penalty_by_hand() -> None:
    h75 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623351446
    assert confidence_penalty_term(t(0.0)).item() == pytest.approx(-math.log(2.0))
    assert confidence_penalty_term(t(0.0, LOG3)).item() == pytest.approx(-(math.log(2.0) + h75) / 2)
    saturated = confidence_penalty_term(t(200.0, -200.0))
    assert saturated.item() == pytest.approx(0.0, abs=1e-12)  # finite where P = 0 or 1 (no 0 * log 0 NaN)


def test_soft_ece_by_hand() -> None:
    # One pair at P = 0.75 is the points (0.75, 1) and (0.25, 0). With near-hard bins centred at 0.25 and 0.75,
    # each bin holds one point: |1 - 0.75| and |0 - 0.25|, each with weight 1/2: ECE 0.25.
    assert soft_ece_term(t(LOG3), n_bins=2, softness=1e-4).item() == pytest.approx(0.25, abs=1e-9)
    # Very soft bins put half of each point in each bin: conf = acc = 0.5 everywhere, ECE 0.
    assert soft_ece_term(t(LOG3), n_bins=2, softness=1e6).item() == pytest.approx(0.0, abs=1e-6)
    # A pair at P = 0.5 is calibrated whatever the bins.
    assert soft_ece_term(t(0.0), n_bins=4, softness=1e-4).item() == pytest.approx(0.0, abs=1e-9)


def test_soft_ece_pushes_an_overconfident_pair_towards_half() -> None:
    # Two pairs, one right and one wrong, both at |P - 1/2| = 0.25: the calibrated answer is P = 1/2 for both.
    delta = t(LOG3, -LOG3).requires_grad_(True)
    soft_ece_term(delta, n_bins=10, softness=0.01).backward()
    # Gradient descent moves log 3 down and -log 3 up: both towards 0.
    assert delta.grad[0].item() > 0
    assert delta.grad[1].item() < 0


def test_pearson_and_length_corr_by_hand() -> None:
    r, lengths = t(1.0, 2.0, 3.0, 4.0), t(10.0, 20.0, 30.0, 40.0)
    assert pearson(r, lengths).item() == pytest.approx(1.0, abs=1e-6)
    assert pearson(r, t(5.0, 5.0, 5.0, 5.0)).item() == 0.0  # constant side: 0, not NaN
    assert length_corr_term(-r, lengths).item() == pytest.approx(1.0, abs=1e-6)  # |ρ|: either sign is a bias
    # ODIN: |ρ(r_q, L)| - ρ(r_l, L) = 1 - (-1) when the length head is anti-correlated with length.
    assert length_corr_term(r, lengths, length_rewards=-r).item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"pearson: expected two \(N,\) tensors, got \(2,\) and \(3,\)"):
        pearson(t(1.0, 2.0), t(1.0, 2.0, 3.0))


def test_terms_scale_with_their_coefficients_and_read_the_loss_probability() -> None:
    chosen, rejected = t(LOG3, 0.0), t(0.0, 0.0)
    cfg = LossConfig(brier_coef=2.0, confidence_penalty_coef=0.5)
    total, parts = build_pair_terms(cfg)(build_loss(cfg), chosen, rejected)
    assert set(parts) == {"brier", "confidence_penalty"}
    bt = (F.softplus(torch.tensor(-LOG3, dtype=torch.float64)).item() + math.log(2.0)) / 2
    assert total.item() == pytest.approx(bt + 2.0 * 0.15625 + 0.5 * parts["confidence_penalty"].item())
    # contrastive models P = σ(Δ / τ): with τ = 2, Δ = 2 log 3 is P = 0.75 again.
    cfg = LossConfig(name="contrastive", contrastive_tau=2.0, brier_coef=1.0)
    assert build_pair_terms(cfg)(build_loss(cfg), t(2 * LOG3), t(0.0))[1]["brier"].item() == pytest.approx(0.0625)


def test_learned_temperature_trains_only_on_held_out_pairs() -> None:
    cfg = LossConfig(learned_temperature=True)
    terms = build_pair_terms(cfg)
    chosen = t(1.0, 5.0).float().requires_grad_(True)
    rejected = torch.zeros(2)
    heldout = torch.tensor([False, True])
    loss, parts = terms(build_loss(cfg), chosen, rejected, heldout=heldout)
    # pair 0 trains the model at T = 1: softplus(-1); pair 1 only fits T: softplus(-5).
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-1.0)).item() + F.softplus(torch.tensor(-5.0)).item())
    assert parts["temperature_nll"].item() == pytest.approx(F.softplus(torch.tensor(-5.0)).item())
    loss.backward()
    assert chosen.grad[1].item() == 0.0  # the held-out pair never trains the rewards
    assert chosen.grad[0].item() == pytest.approx(-torch.sigmoid(torch.tensor(-1.0)).item())
    # d/dlogT softplus(-Δ e^{-logT}) at logT = 0 is σ(-Δ)·Δ.
    assert terms.temperature.log_t.grad.item() == pytest.approx(5.0 * torch.sigmoid(torch.tensor(-5.0)).item())


def test_learned_temperature_divides_the_trained_difference() -> None:
    cfg = LossConfig(learned_temperature=True)
    terms = build_pair_terms(cfg)
    with torch.no_grad():
        terms.temperature.log_t.fill_(math.log(2.0))
    loss, _ = terms(build_loss(cfg), t(4.0).float(), t(0.0).float(), heldout=torch.tensor([False]))
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-2.0)).item())  # Δ / T = 4 / 2
    assert terms.temperature.value() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="loss.learned_temperature needs the batch's 'calibration' mask"):
        terms(build_loss(cfg), t(4.0).float(), t(0.0).float())


def test_odin_trains_the_sum_and_separates_length() -> None:
    cfg = LossConfig(length_corr_coef=1.0, orthogonal_coef=0.5)
    terms = build_pair_terms(cfg, length_head=True)
    chosen, rejected = t(1.0), t(0.0)
    length_rewards, lengths = t(0.5, -0.5), t(10.0, 5.0)
    loss, parts = terms(
        build_loss(cfg), chosen, rejected, lengths=lengths, length_rewards=length_rewards, orthogonality=t(0.2)[0]
    )
    # BT on (1 + 0.5) - (0 - 0.5) = 2; length loss |ρ(r_q, L)| - ρ(r_l, L) = 1 - 1 = 0; 0.5 * 0.2 orthogonality.
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-2.0, dtype=torch.float64)).item() + 0.1, abs=1e-6)
    assert parts["length_corr"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["orthogonality"].item() == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("cfg", "kwargs", "message"),
    [
        (
            LossConfig(name="triplet", brier_coef=1.0, learned_temperature=True),
            {},
            'loss.brier_coef, loss.learned_temperature: the loss "triplet" (max(0, margin - D)) models no probability '
            "P(chosen > rejected) to calibrate; use one that does (bt, margin, contrastive, focal, label_smoothing) or "
            "set them to 0",
        ),
        (
            LossConfig(name="contrastive", learned_temperature=True),
            {},
            "loss.learned_temperature with loss.name=contrastive: both divide D by a temperature; use loss.name=bt with "
            "a learned temperature, or contrastive with a fixed loss.contrastive_tau",
        ),
        (
            LossConfig(),
            {"length_head": True},
            "model.length_head=true needs loss.length_corr_coef > 0: ODIN's length loss is what makes the extra head "
            "absorb length (e.g. loss.length_corr_coef=1.0)",
        ),
        (
            LossConfig(orthogonal_coef=1.0),
            {},
            "loss.orthogonal_coef > 0 needs model.length_head=true (it keeps the two heads apart)",
        ),
        (
            LossConfig(soft_ece_coef=1.0),
            {"data_kind": "groups"},
            "loss.soft_ece_coef: calibration and length terms train on preference pairs (chosen and rejected "
            "responses), but data.kind=groups; use data.kind=pairs or switch them off",
        ),
        (
            LossConfig(length_corr_coef=1.0),
            {"length_head": True, "data_kind": "ratings"},
            "loss.length_corr_coef, model.length_head: calibration and length terms train on preference pairs (chosen "
            "and rejected responses), but data.kind=ratings; use data.kind=pairs or switch them off",
        ),
        (
            LossConfig(name="plackett_luce", brier_coef=1.0),
            {},
            'loss.brier_coef: calibration and length terms apply to pairs, not to the group loss "plackett_luce"; use '
            "a pairwise loss (bt, margin, contrastive, focal, triplet, label_smoothing) or set them to 0",
        ),
    ],
)
def test_impossible_combinations_are_refused(cfg: LossConfig, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_pair_terms(cfg, **kwargs)
    assert str(err.value) == message


def test_config_checks_and_dict_spec() -> None:
    with pytest.raises(ConfigError, match=r"loss.brier_coef: expected >= 0, got -1.0"):
        LossConfig(brier_coef=-1.0)
    with pytest.raises(ConfigError, match=r"loss.calibration_fraction: expected 0 < value < 1, got 1.0"):
        LossConfig(calibration_fraction=1.0)
    with pytest.raises(ConfigError, match="model.length_head: implemented for arch=concat only, got arch=separate"):
        ModelConfig(arch="separate", length_head=True)
    cfg = losses_from_dict({"name": "focal", "brier_coef": 0.5, "learned_temperature": True})
    assert (cfg.brier_coef, cfg.learned_temperature) == (0.5, True)
    with pytest.raises(ConfigError, match='unknown parameter "brier_coef" for loss kwise_adjacent'):
        losses_from_dict({"name": "kwise_adjacent", "brier_coef": 0.5})
    text = describe_loss(LossConfig(brier_coef=0.5, learned_temperature=True))
    assert text == (
        "bt(): -log sigmoid(D), D = r_chosen - r_rejected - pair margin + 0.5*brier(mean (1 - P)^2); "
        "D divided by a temperature learned on 10% of the prompts held out; examples weighted by data "
        "weights where given"
    )
