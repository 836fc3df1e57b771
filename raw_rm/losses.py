"""Preference losses: pure functions on reward tensors, no model and no I/O.

Every pairwise loss is a function of the reward difference of a pair,

    Δ_i = r_chosen_i − r_rejected_i − m_i

where ``m_i`` is the pair's own margin when the data gives one (the collator's ``margin``; NaN = absent = 0),
as in Llama 2's margin loss (Touvron et al. 2023, eq. 2). Each is 0 ≤ ℓ(Δ) and depends on Δ only, so adding a
constant to every reward changes nothing.

    name             ℓ(Δ)                                          parameter (LossConfig field)
    bt               −log σ(Δ)                                     -
    margin           −log σ(Δ − margin)                            margin
    contrastive      −log σ(Δ / τ)                                  contrastive_tau
    focal            −σ(−Δ)^γ · log σ(Δ)   (= −(1 − p)^γ log p)    gamma
    triplet          max(0, margin − Δ)                            margin
    label_smoothing  −(1 − ε) log σ(Δ) − ε log σ(−Δ)               epsilon

``contrastive`` is the InfoNCE loss of the chosen response against its one negative, −log(e^{r_c/τ} /
(e^{r_c/τ} + e^{r_r/τ})) = −log σ(Δ/τ), so τ = 1 is exactly ``bt``; likewise focal with γ = 0 and
label_smoothing with ε = 0. ``triplet`` is the hinge form with the prompt as anchor and the reward as similarity.

Group (k-wise) losses take ``rewards (G, K)``, ``ranks (G, K)`` (0 = best, equal ranks are ties) and
``mask (G, K)`` (False = padding; padded rewards may hold anything, NaN included):

    kwise_adjacent   Σ over pairs of adjacent rank levels of −log σ(r_i − r_j)      (sum per group)
    kwise_all_pairs  mean over all pairs with rank_i < rank_j of −log σ(r_i − r_j)  (InstructGPT eq. 1)
    plackett_luce    Σ_i [logsumexp_{j: rank_j ≥ rank_i} r_j − r_i]                (ListMLE; ties: Breslow)

Tied items form no pair in the two pairwise forms, so ties give no signal there. Plackett-Luce treats a tie
the Breslow way (each tied item competes against the whole tied block and everything below it), which is
the plain Plackett-Luce likelihood when there are no ties and pulls tied rewards together when there are.
On a group of two items all three equal ``bt``. A pairwise loss name given to ``build_ranking_loss`` is
expanded to all pairs of each group (mean per group, like ``kwise_all_pairs``); a group loss name given to
``build_loss`` is an error, since on pairs it would silently be ``bt``.

Reduction: a weighted mean over pairs (or over groups that hold at least one pair), weights from the data
(annotator agreement) and/or from ensemble disagreement (:func:`uncertainty_weights`).

    loss_fn = build_loss(LossConfig(name="focal", gamma=2.0))
    loss = loss_fn(out.rewards[:B], out.rewards[B:], margin=batch["margin"], weight=batch["weight"])
    loss = loss + reward_regularisers(cfg.loss, out.rewards[:B], out.rewards[B:])
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raw_rm.config import ConfigError, LossConfig, config_from_dict
from raw_rm.uncertainty import pair_disagreement

LossKind = Literal["pair", "group"]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function, whether it takes pairs or groups, and its LossConfig parameters."""

    name: str
    kind: LossKind
    fn: Callable[..., Any]
    params: tuple[str, ...]
    formula: str
    # The logit of P(chosen > rejected) that the loss fits, from (delta, params); None for a loss that is not a
    # likelihood (triplet's hinge), which calibration terms and a learned temperature cannot apply to.
    logit: Callable[..., Tensor] | None = None


LOSSES: dict[str, LossSpec] = {}
_CONFIG_FIELDS = {f.name for f in fields(LossConfig)}
# LossConfig fields that every loss accepts (they are not parameters of one loss).
SHARED_KEYS = ("regularisers", "use_weights", "uncertainty_weighting")
# LossConfig fields of the calibration and length terms (module doc); pairwise losses take them, checked by
# build_pair_terms.
TERM_KEYS = (
    "brier_coef",
    "soft_ece_coef",
    "soft_ece_bins",
    "soft_ece_softness",
    "confidence_penalty_coef",
    "learned_temperature",
    "calibration_fraction",
    "temperature_lr",
    "length_corr_coef",
    "orthogonal_coef",
)
REGULARISERS = {"center": "center_coef", "reward_l2": "reward_l2_coef", "param_l2": "param_l2_coef"}


def _plain_logit(delta: Tensor, **_: float) -> Tensor:
    return delta


def register_loss(
    name: str,
    *,
    kind: LossKind = "pair",
    params: tuple[str, ...] = (),
    formula: str,
    logit: Callable[..., Tensor] | None = _plain_logit,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a loss under ``name``.

    A pairwise loss is ``fn(delta (B,), **params) -> (B,)`` per-pair losses; a group loss is
    ``fn(rewards (G,K), ranks (G,K), mask (G,K)) -> (loss (G,), has_pair (G,) bool)``. ``params`` name
    LossConfig fields, read by :func:`build_loss` and checked by :func:`losses_from_dict`. ``logit(delta,
    **params)`` is the logit of the probability the loss models (Δ for most; None where there is none).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in LOSSES:
            raise ValueError(f'loss "{name}" is already registered')
        unknown = [p for p in params if p not in _CONFIG_FIELDS]
        if unknown:
            raise ValueError(f'loss "{name}": parameters {unknown} are not LossConfig fields; add them there first')
        LOSSES[name] = LossSpec(name=name, kind=kind, fn=fn, params=params, formula=formula, logit=logit)
        return fn

    return decorate


# ------------------------------------------------------------------------------------ pairwise losses
# −log σ(x) = softplus(−x): stable for any x (never log(1 + exp(x))).
@register_loss("bt", formula="-log sigmoid(D)")
def bt_loss(delta: Tensor) -> Tensor:
    return F.softplus(-delta)


@register_loss("margin", params=("margin",), formula="-log sigmoid(D - margin)")
def margin_loss(delta: Tensor, *, margin: float) -> Tensor:
    return F.softplus(margin - delta)


@register_loss(
    "contrastive",
    params=("contrastive_tau",),
    formula="-log sigmoid(D / tau)",
    logit=lambda delta, *, contrastive_tau: delta / contrastive_tau,
)
def contrastive_loss(delta: Tensor, *, contrastive_tau: float) -> Tensor:
    return F.softplus(-delta / contrastive_tau)


@register_loss("focal", params=("gamma",), formula="-(1 - sigmoid(D))^gamma * log sigmoid(D)")
def focal_loss(delta: Tensor, *, gamma: float) -> Tensor:
    # Lin et al. 2017 eq. 4 with p = σ(Δ); (1 − p)^γ = σ(−Δ)^γ = exp(γ·log σ(−Δ)): finite where p → 1.
    return torch.exp(gamma * F.logsigmoid(-delta)) * F.softplus(-delta)


@register_loss("triplet", params=("margin",), formula="max(0, margin - D)", logit=None)
def triplet_loss(delta: Tensor, *, margin: float) -> Tensor:
    return F.relu(margin - delta)


@register_loss(
    "label_smoothing", params=("epsilon",), formula="-(1 - epsilon) log sigmoid(D) - epsilon log sigmoid(-D)"
)
def label_smoothing_loss(delta: Tensor, *, epsilon: float) -> Tensor:
    return (1.0 - epsilon) * F.softplus(-delta) + epsilon * F.softplus(delta)


# --------------------------------------------------------------------------------------- group losses
def _pair_matrices(rewards: Tensor, ranks: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Masked rewards (G,K), ``better`` (G,K,K) bool: i strictly outranks j, both real; ``diff`` r_i − r_j."""
    assert rewards.shape == ranks.shape == mask.shape and rewards.dim() == 2, (
        f"expected rewards, ranks, mask of one shape (G, K); got {tuple(rewards.shape)}, "
        f"{tuple(ranks.shape)}, {tuple(mask.shape)}"
    )
    mask = mask.bool()
    r = torch.where(mask, rewards, torch.zeros_like(rewards))  # padding may hold NaN: keep it out of the graph
    both = mask.unsqueeze(2) & mask.unsqueeze(1)  # (G, K, K)
    better = both & (ranks.unsqueeze(2) < ranks.unsqueeze(1))  # ranks: 0 = best
    diff = r.unsqueeze(2) - r.unsqueeze(1)  # (G, K, K): r_i − r_j
    return r, better, diff


def _all_pairs_mean(rewards: Tensor, ranks: Tensor, mask: Tensor, pair_fn: Callable[[Tensor], Tensor]) -> tuple:
    _, better, diff = _pair_matrices(rewards, ranks, mask)
    n_pairs = better.sum(dim=(1, 2))  # (G,)
    total = (pair_fn(diff) * better).sum(dim=(1, 2))
    return total / n_pairs.clamp_min(1), n_pairs > 0


@register_loss("kwise_adjacent", kind="group", formula="sum over adjacent rank levels of -log sigmoid(r_i - r_j)")
def kwise_adjacent_loss(rewards: Tensor, ranks: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    _, better, diff = _pair_matrices(rewards, ranks, mask)
    # The next rank level below item i: the smallest real rank strictly worse than rank_i.
    rank_j = ranks.long().unsqueeze(1).expand_as(better)  # (G, K, K): rank of item j
    worse = torch.where(better, rank_j, torch.full_like(rank_j, torch.iinfo(torch.long).max))
    next_level = worse.min(dim=2).values  # (G, K)
    adjacent = better & (rank_j == next_level.unsqueeze(2))
    total = (F.softplus(-diff) * adjacent).sum(dim=(1, 2))
    return total, adjacent.any(dim=2).any(dim=1)


@register_loss("kwise_all_pairs", kind="group", formula="mean over ranked pairs of -log sigmoid(r_i - r_j)")
def kwise_all_pairs_loss(rewards: Tensor, ranks: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    return _all_pairs_mean(rewards, ranks, mask, bt_loss)


@register_loss("plackett_luce", kind="group", formula="sum_i logsumexp_{rank_j >= rank_i} r_j - r_i")
def plackett_luce_loss(rewards: Tensor, ranks: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    r, _, _ = _pair_matrices(rewards, ranks, mask)
    mask = mask.bool()
    k = rewards.shape[1]
    # in_set[g, i, j]: j competes for item i's place (Breslow: ties stay in the set). The diagonal is always
    # in, so every row has a finite logsumexp, padding rows included (they are zeroed below).
    eye = torch.eye(k, dtype=torch.bool, device=rewards.device)
    in_set = (mask.unsqueeze(1) & (ranks.unsqueeze(1) >= ranks.unsqueeze(2))) | eye
    logits = torch.where(in_set, r.unsqueeze(1).expand_as(in_set), torch.full_like(in_set, -math.inf, dtype=r.dtype))
    nll = torch.logsumexp(logits, dim=2) - r  # (G, K)
    return (nll * mask).sum(dim=1), mask.sum(dim=1) >= 2


# ------------------------------------------------------------------------------------------ reductions
def weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of ``values`` (B,), weighted by ``weight`` (B,) ≥ 0 when given.

    Equal weights give the plain mean. A batch whose weights are all 0 carries no information: loss 0.

    Raises:
        ValueError: a weight is negative, NaN or infinite, or the shapes differ.
    """
    if weight is None:
        return values.mean()
    weight = torch.as_tensor(weight, dtype=values.dtype, device=values.device)
    if weight.shape != values.shape:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {tuple(values.shape)} (one per example)")
    # One host sync per step: negligible next to a transformer forward, and a bad weight must not train silently.
    if not bool(torch.all(torch.isfinite(weight) & (weight >= 0))):
        raise ValueError(f"weights must be finite and >= 0, got {weight.tolist()}")
    return (weight * values).sum() / weight.sum().clamp_min(torch.finfo(values.dtype).tiny)


def _pair_delta(chosen: Tensor, rejected: Tensor, margin: Tensor | float | None) -> Tensor:
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(
            f"chosen and rejected must both have shape (B,); got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    delta = chosen - rejected
    if margin is None:
        return delta
    margin = torch.as_tensor(margin, dtype=delta.dtype, device=delta.device)
    if margin.dim() > 0 and margin.shape != delta.shape:
        raise ValueError(f"margin has shape {tuple(margin.shape)}, expected {tuple(delta.shape)} or a scalar")
    return delta - torch.nan_to_num(margin, nan=0.0)  # NaN = the pair has no margin


def preference_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | float | None = None, weight: Tensor | None = None
) -> Tensor:
    """Bradley-Terry loss −log σ(r_chosen − r_rejected − margin), (weighted) mean over the batch.

    Args:
        chosen, rejected: rewards (B,).
        margin: per-pair margin (B,) or a scalar; NaN entries mean "no margin" (0).
        weight: per-pair weights (B,) ≥ 0; None = plain mean.

    Example: chosen = [1.0], rejected = [0.0] gives log(1 + e^-1) = 0.31326.
    """
    return weighted_mean(bt_loss(_pair_delta(chosen, rejected, margin)), weight)


@dataclass(frozen=True)
class PairLoss:
    """``loss(chosen (B,), rejected (B,), *, margin=None, weight=None) -> scalar``; see the module doc."""

    name: str
    fn: Callable[..., Tensor]
    params: dict[str, float]

    def per_example(self, chosen: Tensor, rejected: Tensor, *, margin: Tensor | float | None = None) -> Tensor:
        """Unreduced losses (B,)."""
        return self.fn(_pair_delta(chosen, rejected, margin), **self.params)

    def __call__(
        self, chosen: Tensor, rejected: Tensor, *, margin: Tensor | float | None = None, weight: Tensor | None = None
    ) -> Tensor:
        return weighted_mean(self.per_example(chosen, rejected, margin=margin), weight)


@dataclass(frozen=True)
class RankingLoss:
    """``loss(rewards (G,K), ranks (G,K), mask (G,K), weight=None) -> scalar``: weighted mean over groups.

    Groups with no ranked pair (one real item, or all tied for the pairwise forms) are left out of the mean;
    if no group has one, the loss is 0 (with a zero gradient).
    """

    name: str
    fn: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]

    def per_group(self, rewards: Tensor, ranks: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Unreduced losses (G,) and whether each group carries a signal (G,) bool."""
        return self.fn(rewards, ranks, mask)

    def __call__(self, rewards: Tensor, ranks: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        per_group, has_pair = self.per_group(rewards, ranks, mask)
        w = has_pair.to(per_group.dtype)
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=per_group.dtype, device=per_group.device)
            if weight.shape != per_group.shape:
                raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {tuple(per_group.shape)}")
            w = w * weight
        return weighted_mean(per_group, w)


# ---------------------------------------------------------------------------------------------- builders
def _spec(name: str) -> LossSpec:
    if name in LOSSES:
        return LOSSES[name]
    close = difflib.get_close_matches(name, list(LOSSES), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    raise ConfigError(f'unknown loss "{name}"{hint}; valid: {", ".join(LOSSES)}')


def _names(kind: LossKind) -> str:
    return ", ".join(n for n, s in LOSSES.items() if s.kind == kind)


def _params(cfg: LossConfig, spec: LossSpec) -> dict[str, float]:
    params = {p: float(getattr(cfg, p)) for p in spec.params}
    if params.get("gamma", 0.0) < 0:
        raise ConfigError(f"loss.gamma: expected >= 0, got {params['gamma']}")
    if spec.name == "triplet" and params["margin"] <= 0:
        raise ConfigError(f"loss.margin: the triplet loss needs a margin > 0, got {params['margin']}")
    return params


def build_loss(cfg: LossConfig) -> PairLoss:
    """The pairwise loss named by ``cfg.name``, with its parameters from ``cfg``.

    Raises:
        ConfigError: unknown name (listing the valid ones) or a group loss name (which needs k-wise data).
    """
    spec = _spec(cfg.name)
    if spec.kind == "group":
        raise ConfigError(
            f'loss "{cfg.name}" is a ranking loss for k-wise groups (data.kind=groups); on pairs it equals "bt". '
            f"Pairwise losses: {_names('pair')}"
        )
    return PairLoss(name=spec.name, fn=spec.fn, params=_params(cfg, spec))


def build_ranking_loss(cfg: LossConfig) -> RankingLoss:
    """The k-wise loss named by ``cfg.name``; a pairwise name is applied to all ranked pairs of each group.

    Raises:
        ConfigError: unknown name, listing the valid ones.
    """
    spec = _spec(cfg.name)
    if spec.kind == "group":
        return RankingLoss(name=spec.name, fn=spec.fn)
    params = _params(cfg, spec)

    def expanded(rewards: Tensor, ranks: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return _all_pairs_mean(rewards, ranks, mask, lambda d: spec.fn(d, **params))

    return RankingLoss(name=f"{spec.name} (all pairs)", fn=expanded)


def losses_from_dict(spec: dict[str, Any], base: LossConfig | None = None) -> LossConfig:
    """A LossConfig from ``{"name": "focal", "gamma": 2.0, "regularisers": [{"name": "center", "coef": 0.01}]}``.

    Keys: ``name``, the parameters of that loss (see the module table), and for every loss ``regularisers``
    (a list of ``{"name": center | reward_l2 | param_l2, "coef": float}``), ``use_weights`` and
    ``uncertainty_weighting``. Other fields come from ``base`` (default: LossConfig defaults).

    Raises:
        ConfigError: e.g. ``unknown parameter "gama" for loss focal (did you mean "gamma"?); valid: gamma; every
            loss also takes: regularisers, use_weights, uncertainty_weighting``.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"loss: expected a mapping with a name, got {type(spec).__name__}")
    values = dict(vars(base or LossConfig()))
    name = spec.get("name", values["name"])
    loss = _spec(str(name))
    for key, value in spec.items():
        if key == "name":
            continue
        if key == "regularisers":
            values.update(_regulariser_coefs(value))
        elif key in loss.params or key in SHARED_KEYS or (key in TERM_KEYS and loss.kind == "pair"):
            values[key] = value
        else:
            close = difflib.get_close_matches(str(key), list(loss.params) + list(SHARED_KEYS), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            valid = ", ".join(loss.params) or "(none)"
            raise ConfigError(
                f'unknown parameter "{key}" for loss {loss.name}{hint}; valid: {valid}; '
                f"every loss also takes: {', '.join(SHARED_KEYS)}"
                + (f"; pairwise losses also take: {', '.join(TERM_KEYS)}" if loss.kind == "pair" else "")
            )
    values["name"] = loss.name
    # Through the one config loader: type checks and LossConfig's own range checks apply.
    return config_from_dict(values, root=LossConfig, source="loss")


def _regulariser_coefs(items: Any) -> dict[str, float]:
    if not isinstance(items, list):
        raise ConfigError(f"loss.regularisers: expected a list of {{name, coef}}, got {type(items).__name__}")
    out: dict[str, float] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"name", "coef"}:
            raise ConfigError(f'loss.regularisers[{i}]: expected {{"name": ..., "coef": ...}}, got {item!r}')
        if item["name"] not in REGULARISERS:
            raise ConfigError(
                f'loss.regularisers[{i}]: unknown regulariser "{item["name"]}"; valid: {", ".join(REGULARISERS)}'
            )
        out[REGULARISERS[item["name"]]] = item["coef"]
    return out


def describe_loss(cfg: LossConfig) -> str:
    """One line saying what will be optimised, e.g. ``focal(gamma=2.0): -(1 - sigmoid(D))^gamma * ...``."""
    spec = _spec(cfg.name)
    params = ", ".join(f"{p}={getattr(cfg, p):g}" for p in spec.params)
    text = f"{spec.name}({params}): {spec.formula}"
    if spec.kind == "pair":
        text += ", D = r_chosen - r_rejected - pair margin"
    extras = [
        f"{coef:g}*{label}"
        for label, coef in (
            ("mean((r_c + r_r)^2)", cfg.center_coef),
            ("mean(r^2)", cfg.reward_l2_coef),
            ("sum(param^2)", cfg.param_l2_coef),
        )
        if coef
    ]
    extras += [f"{getattr(cfg, t.coef):g}*{t.name}({t.formula})" for t in TERMS.values() if getattr(cfg, t.coef)]
    if extras:
        text += " + " + " + ".join(extras)
    if cfg.learned_temperature:
        text += f"; D divided by a temperature learned on {cfg.calibration_fraction:.0%} of the prompts held out"
    sources = (("data weights where given", cfg.use_weights), ("ensemble agreement", cfg.uncertainty_weighting))
    weighting = [w for w, on in sources if on]
    if weighting:
        text += "; examples weighted by " + " and ".join(weighting)
    return text


# ------------------------------------------------------------------------------------- regularisers
def reward_regularisers(cfg: LossConfig, chosen: Tensor, rejected: Tensor) -> Tensor:
    """``center_coef·mean((r_c + r_r)²) + reward_l2_coef·mean(r²)`` over chosen and rejected rewards (B,).

    Centering (Eisenstein et al. 2023) pins the free offset of Bradley-Terry rewards near 0; the L2 term keeps
    their scale from growing without bound on separable data.
    """
    total = chosen.new_zeros(())
    if cfg.center_coef:
        total = total + cfg.center_coef * (chosen + rejected).pow(2).mean()
    if cfg.reward_l2_coef:
        total = total + cfg.reward_l2_coef * torch.cat([chosen, rejected]).pow(2).mean()
    return total


def param_l2(params: Iterable[Tensor], coef: float = 1.0) -> Tensor:
    """``coef · Σ‖p‖²`` over the parameters that require gradients (e.g. ``model.parameters()``)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("param_l2: no parameter requires a gradient")
    return coef * sum(p.pow(2).sum() for p in trainable)


# ---------------------------------------------------------------------------------- example weights
def uncertainty_weights(members_chosen: Tensor, members_rejected: Tensor, *, min_weight: float = 0.1) -> Tensor:
    """Per-pair weights (B,) from ensemble agreement: ``max(min_weight, 1 − disagreement)``, no gradient.

    ``disagreement`` is :func:`raw_rm.uncertainty.pair_disagreement`, 4·Var_k σ(Δ_k) over the K members'
    reward differences: 0 when every member gives the same P(chosen ≻ rejected), 1 when half the members are
    sure one way and half the other. With K = 1 every weight is 1 and the loss is the plain one. The weights are
    detached: the model must not lower its loss by making its heads disagree.
    """
    if not 0.0 < min_weight <= 1.0:
        raise ValueError(f"min_weight: expected 0 < value <= 1, got {min_weight}")
    return (1.0 - pair_disagreement(members_chosen.detach(), members_rejected.detach())).clamp_min(min_weight)


def example_weights(
    cfg: LossConfig,
    weight: Tensor | None,
    members_chosen: Tensor | None = None,
    members_rejected: Tensor | None = None,
) -> Tensor | None:
    """The weights to pass to a loss: data weights if ``cfg.use_weights``, times :func:`uncertainty_weights`
    if ``cfg.uncertainty_weighting``. None = unweighted.

    Raises:
        ValueError: uncertainty weighting is on but no member rewards were given.
    """
    out = weight if cfg.use_weights else None
    if cfg.uncertainty_weighting:
        if members_chosen is None or members_rejected is None:
            raise ValueError(
                "loss.uncertainty_weighting needs per-member rewards (RewardOutput.members): "
                "use an ensemble such as model.arch=multihead, or set loss.uncertainty_weighting=false"
            )
        u = uncertainty_weights(members_chosen, members_rejected)
        out = u if out is None else out.to(u.dtype) * u
    return out


# ------------------------------------------------------------------------ calibration and length terms
# Terms added to a pairwise loss, each switched on by its LossConfig coefficient (0 = off). Calibration terms
# act on P = σ(logit(Δ)), the probability the pair loss itself models (σ(Δ / contrastive_tau) for contrastive), and
# are computed on the symmetrised pair (P, label 1) and (1 − P, label 0) where a set-level statistic needs
# both labels (soft ECE). Length terms act on every row's reward and its response length in tokens.
#
#     name                 value added to the loss                                    LossConfig coefficient
#     brier                coef · mean (1 − P)²                                       brier_coef
#     soft_ece             coef · Σ_j (n_j / N) |acc_j − conf_j|, soft bins           soft_ece_coef
#     confidence_penalty   −coef · mean H(P), H(P) = −P log P − (1 − P) log(1 − P)    confidence_penalty_coef
#     length_corr          coef · |ρ(r, length)| over the batch's 2B rows             length_corr_coef
#
# With a length head (ODIN, Chen et al. 2024: model.length_head) ``length_corr`` becomes ODIN's length loss
# coef · (|ρ(r_quality, length)| − ρ(r_length, length)) and ``orthogonal_coef`` adds coef · |cos(w_q, w_l)| of
# the two heads' weights. The learned temperature (``learned_temperature``) is stateful: see
# :class:`LearnedTemperature`.
@dataclass(frozen=True)
class TermSpec:
    """A registered loss term: ``fn(...) -> scalar``, switched on by the LossConfig field ``coef``."""

    name: str
    coef: str
    fn: Callable[..., Tensor]
    formula: str
    needs_probability: bool  # needs the pair loss's P(chosen > rejected) (not defined for triplet)


TERMS: dict[str, TermSpec] = {}


def register_term(
    name: str, *, coef: str, formula: str, needs_probability: bool
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register a loss term under ``name``, weighted by the LossConfig field ``coef``."""

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in TERMS:
            raise ValueError(f'loss term "{name}" is already registered')
        if coef not in _CONFIG_FIELDS:
            raise ValueError(f'loss term "{name}": coefficient {coef!r} is not a LossConfig field; add it there first')
        TERMS[name] = TermSpec(name=name, coef=coef, fn=fn, formula=formula, needs_probability=needs_probability)
        return fn

    return decorate


@register_term("brier", coef="brier_coef", formula="mean (1 - P)^2", needs_probability=True)
def brier_term(logit: Tensor, weight: Tensor | None = None) -> Tensor:
    """Brier score of P = σ(logit) against the label "chosen wins": weighted mean of (1 − P)² = σ(−logit)²."""
    return weighted_mean(torch.sigmoid(-logit).pow(2), weight)


@register_term("confidence_penalty", coef="confidence_penalty_coef", formula="-mean H(P)", needs_probability=True)
def confidence_penalty_term(logit: Tensor, weight: Tensor | None = None) -> Tensor:
    """Minus the mean binary entropy of P = σ(logit) (Pereyra et al. 2017): lower for less confident P.

    H(σ(x)) = softplus(x) − x·σ(x), finite for any x (a saturated P gives H = 0, not NaN).
    """
    entropy = F.softplus(logit) - logit * torch.sigmoid(logit)
    return -weighted_mean(entropy, weight)


@register_term("soft_ece", coef="soft_ece_coef", formula="soft-binned ECE of P", needs_probability=True)
def soft_ece_term(logit: Tensor, weight: Tensor | None = None, *, n_bins: int = 10, softness: float = 0.01) -> Tensor:
    """Soft-binned expected calibration error (Karandikar et al. 2021), differentiable in the rewards.

    Each probability belongs to bin j (centre c_j = (j + ½)/M) with weight u_j ∝ exp(−(p − c_j)² / softness),
    normalised over bins; with n_j = Σ u_j, conf_j = Σ u_j p / n_j, acc_j = Σ u_j y / n_j, the term is
    Σ_j (n_j / N) |acc_j − conf_j|. Pairs give the symmetrised set {(P, 1), (1 − P, 0)}, so a pair at P = ½
    is perfectly calibrated and a confident wrong pair is not. As softness → 0 this is the usual binned ECE.
    """
    p = torch.sigmoid(logit)
    probs = torch.cat([p, 1.0 - p])  # (2B,)
    labels = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    w = torch.ones_like(p) if weight is None else torch.as_tensor(weight, dtype=p.dtype, device=p.device)
    w = torch.cat([w, w])
    centres = (torch.arange(n_bins, dtype=p.dtype, device=p.device) + 0.5) / n_bins
    member = torch.softmax(-(probs[:, None] - centres[None, :]).pow(2) / softness, dim=1) * w[:, None]  # (2B, M)
    n = member.sum(dim=0)  # (M,)
    tiny = torch.finfo(p.dtype).tiny
    conf = (member * probs[:, None]).sum(dim=0) / n.clamp_min(tiny)
    acc = (member * labels[:, None]).sum(dim=0) / n.clamp_min(tiny)
    return (n * (acc - conf).abs()).sum() / w.sum().clamp_min(tiny)


def pearson(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of two (N,) tensors, differentiable in both; 0 when either is constant."""
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"pearson: expected two (N,) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / (xc.pow(2).sum().sqrt() * yc.pow(2).sum().sqrt() + eps)


@register_term("length_corr", coef="length_corr_coef", formula="|corr(r, length)|", needs_probability=False)
def length_corr_term(rewards: Tensor, lengths: Tensor, length_rewards: Tensor | None = None) -> Tensor:
    """|ρ(rewards, lengths)| over a batch's rows; with a length head also − ρ(length_rewards, lengths) (ODIN).

    Lengths are cast to the rewards' dtype; the correlation is taken over chosen and rejected rows together.
    """
    lengths = lengths.to(rewards.dtype)
    value = pearson(rewards, lengths).abs()
    if length_rewards is not None:
        value = value - pearson(length_rewards.to(rewards.dtype), lengths)
    return value


class LearnedTemperature(nn.Module):
    """A temperature T = exp(log_T) learned during training on a held-out slice of the training pairs.

    The pair loss of the other pairs is taken on Δ / T with T detached, so the model trains against the
    calibrated probability; the held-out pairs give only the NLL of σ(Δ.detach() / T), so their gradient
    reaches T alone. The pairs objective hands :attr:`log_t` to the loop's optimiser as its own group
    (``loss.temperature_lr``, no weight decay) and stores :meth:`value` as the model's ``metadata.temperature`` when
    training ends. T is not part of the model's weights, so a run resumed from a checkpoint starts T again at 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))

    def value(self) -> float:
        return float(self.log_t.detach().exp())

    def nll(self, logit: Tensor, heldout: Tensor) -> Tensor:
        """Mean −log σ(logit.detach() / T) over the held-out rows (0 with a zero gradient when there are none)."""
        scaled = logit.detach()[heldout] / self.log_t.exp()
        if scaled.numel() == 0:
            return self.log_t * 0.0
        return F.softplus(-scaled).mean()


@dataclass
class PairTerms:
    """The terms :func:`build_pair_terms` switched on for one pair loss; call it once per batch.

    ``temperature`` is the :class:`LearnedTemperature` (None when off).
    """

    cfg: LossConfig
    loss: LossSpec
    active: tuple[TermSpec, ...]
    temperature: LearnedTemperature | None

    @property
    def needs_lengths(self) -> bool:
        return any(t.name == "length_corr" for t in self.active)

    def scale(self) -> Tensor | None:
        """T (detached) to divide the rewards by before the pair loss, or None."""
        return None if self.temperature is None else self.temperature.log_t.detach().exp()

    def train_weight(self, weight: Tensor | None, heldout: Tensor | None) -> Tensor | None:
        """Example weights with the held-out pairs set to 0 (the pair loss must not train on them)."""
        if self.temperature is None:
            return weight
        if heldout is None:
            raise ValueError("loss.learned_temperature needs the batch's 'calibration' mask (PairCollator)")
        keep = (~heldout.bool()).float()
        # A batch that is all held out gets weights all 0: weighted_mean then gives loss 0, no gradient.
        return keep if weight is None else weight * keep.to(weight.dtype)

    def __call__(
        self,
        loss_fn: PairLoss,
        chosen: Tensor,
        rejected: Tensor,
        *,
        margin: Tensor | float | None = None,
        weight: Tensor | None = None,
        lengths: Tensor | None = None,
        length_rewards: Tensor | None = None,
        heldout: Tensor | None = None,
        orthogonality: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The pair loss ``loss_fn`` plus the active terms, for one batch of B pairs.

        The pair loss sees the rewards divided by the learned temperature (when on) and, with a length head,
        the sum of quality and length rewards (ODIN trains r_quality + r_length); held-out calibration pairs
        get weight 0 there. The terms see the quality rewards.

        Args:
            loss_fn: :func:`build_loss`'s pair loss.
            chosen, rejected: rewards (B,) (the quality reward when the model has a length head).
            margin, weight: as for ``loss_fn``.
            lengths: (2B,) response lengths in tokens, chosen rows then rejected (``PairCollator``'s
                ``response_tokens``); needed by ``length_corr``.
            length_rewards: (2B,) the length head's outputs, or None.
            heldout: (B,) bool, pairs held out for the learned temperature (``PairCollator``'s ``calibration``).
            orthogonality: the model's |cos| between its two heads' weights (``loss.orthogonal_coef``).

        Returns:
            (scalar loss, detached value of each term by name).
        """
        b = chosen.shape[0]
        train_chosen, train_rejected, train_margin = chosen, rejected, margin
        if length_rewards is not None:
            length_rewards = length_rewards.to(chosen.dtype)
            train_chosen, train_rejected = chosen + length_rewards[:b], rejected + length_rewards[b:]
        scale = self.scale()
        if scale is not None:
            train_chosen, train_rejected = train_chosen / scale, train_rejected / scale
            if margin is not None:
                train_margin = torch.as_tensor(margin, dtype=chosen.dtype, device=chosen.device) / scale
        weight = self.train_weight(weight, heldout)
        total = loss_fn(train_chosen, train_rejected, margin=train_margin, weight=weight)
        logit = None
        if self.loss.logit is not None:
            logit = self.loss.logit(_pair_delta(chosen, rejected, margin), **_params(self.cfg, self.loss))
        parts: dict[str, Tensor] = {}
        for term in self.active:
            if term.name == "length_corr":
                if lengths is None:
                    raise ValueError("loss.length_corr_coef needs response lengths (PairCollator's response_tokens)")
                value = term.fn(torch.cat([chosen, rejected]), lengths.to(chosen.device), length_rewards)
            elif term.name == "soft_ece":
                value = term.fn(logit, weight, n_bins=self.cfg.soft_ece_bins, softness=self.cfg.soft_ece_softness)
            else:
                value = term.fn(logit, weight)
            total = total + getattr(self.cfg, term.coef) * value
            parts[term.name] = value.detach()
        if self.temperature is not None and heldout is not None:
            nll = self.temperature.nll(logit, heldout.bool().to(logit.device))
            total = total + nll
            parts["temperature_nll"] = nll.detach()
        if self.cfg.orthogonal_coef > 0:
            if orthogonality is None:
                raise ValueError("loss.orthogonal_coef > 0 needs the model's head orthogonality (a length head)")
            total = total + self.cfg.orthogonal_coef * orthogonality
            parts["orthogonality"] = orthogonality.detach()
        return total, parts


def build_pair_terms(cfg: LossConfig, *, length_head: bool = False, data_kind: str = "pairs") -> PairTerms:
    """The calibration and length terms ``cfg`` switches on, checked against the pair loss ``cfg.name``.

    ``data_kind`` is what the trainer consumes (data.kind): the terms and the length head need pairs.

    Raises:
        ConfigError: a term or length head on groups/ratings data; a calibration term or learned temperature
            on a loss that models no probability (triplet);
            a learned temperature with contrastive (both divide Δ by a temperature); a length head without
            ``loss.length_corr_coef`` (nothing would separate length from quality), or ``orthogonal_coef``
            without a length head.
    """
    spec = _spec(cfg.name)
    active = tuple(t for t in TERMS.values() if getattr(cfg, t.coef) > 0)
    if data_kind != "pairs" and (active or cfg.learned_temperature or length_head):
        names = [f"loss.{t.coef}" for t in active] + (["loss.learned_temperature"] if cfg.learned_temperature else [])
        names += ["model.length_head"] if length_head else []
        raise ConfigError(
            f"{', '.join(names)}: calibration and length terms train on preference pairs (chosen and "
            f"rejected responses), but data.kind={data_kind}; use data.kind=pairs or switch them off"
        )
    if spec.kind == "group" and (active or cfg.learned_temperature):
        names = [f"loss.{t.coef}" for t in active] + (["loss.learned_temperature"] if cfg.learned_temperature else [])
        raise ConfigError(
            f"{', '.join(names)}: calibration and length terms apply to pairs, not to the group loss "
            f'"{cfg.name}"; use a pairwise loss ({_names("pair")}) or set them to 0'
        )
    if spec.logit is None:
        bad = [f"loss.{t.coef}" for t in active if t.needs_probability]
        bad += ["loss.learned_temperature"] if cfg.learned_temperature else []
        if bad:
            with_prob = ", ".join(n for n, s in LOSSES.items() if s.kind == "pair" and s.logit is not None)
            raise ConfigError(
                f'{", ".join(bad)}: the loss "{cfg.name}" ({spec.formula}) models no probability P(chosen > '
                f"rejected) to calibrate; use one that does ({with_prob}) or set them to 0"
            )
    if cfg.learned_temperature and spec.name == "contrastive":
        raise ConfigError(
            "loss.learned_temperature with loss.name=contrastive: both divide D by a temperature; use "
            "loss.name=bt with a learned temperature, or contrastive with a fixed loss.contrastive_tau"
        )
    if length_head and cfg.length_corr_coef <= 0:
        raise ConfigError(
            "model.length_head=true needs loss.length_corr_coef > 0: ODIN's length loss is what makes the extra "
            "head absorb length (e.g. loss.length_corr_coef=1.0)"
        )
    if cfg.orthogonal_coef > 0 and not length_head:
        raise ConfigError("loss.orthogonal_coef > 0 needs model.length_head=true (it keeps the two heads apart)")
    return PairTerms(
        cfg=cfg, loss=spec, active=active, temperature=LearnedTemperature() if cfg.learned_temperature else None
    )
