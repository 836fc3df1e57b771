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
from torch import Tensor

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


LOSSES: dict[str, LossSpec] = {}
_CONFIG_FIELDS = {f.name for f in fields(LossConfig)}
# LossConfig fields that every loss accepts (they are not parameters of one loss).
SHARED_KEYS = ("regularisers", "use_weights", "uncertainty_weighting")
REGULARISERS = {"center": "center_coef", "reward_l2": "reward_l2_coef", "param_l2": "param_l2_coef"}


def register_loss(
    name: str, *, kind: LossKind = "pair", params: tuple[str, ...] = (), formula: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a loss under ``name``.

    A pairwise loss is ``fn(delta (B,), **params) -> (B,)`` per-pair losses; a group loss is
    ``fn(rewards (G,K), ranks (G,K), mask (G,K)) -> (loss (G,), has_pair (G,) bool)``. ``params`` name
    LossConfig fields, read by :func:`build_loss` and checked by :func:`losses_from_dict`.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in LOSSES:
            raise ValueError(f'loss "{name}" is already registered')
        unknown = [p for p in params if p not in _CONFIG_FIELDS]
        if unknown:
            raise ValueError(f'loss "{name}": parameters {unknown} are not LossConfig fields; add them there first')
        LOSSES[name] = LossSpec(name=name, kind=kind, fn=fn, params=params, formula=formula)
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


@register_loss("contrastive", params=("contrastive_tau",), formula="-log sigmoid(D / tau)")
def contrastive_loss(delta: Tensor, *, contrastive_tau: float) -> Tensor:
    return F.softplus(-delta / contrastive_tau)


@register_loss("focal", params=("gamma",), formula="-(1 - sigmoid(D))^gamma * log sigmoid(D)")
def focal_loss(delta: Tensor, *, gamma: float) -> Tensor:
    # Lin et al. 2017 eq. 4 with p = σ(Δ); (1 − p)^γ = σ(−Δ)^γ = exp(γ·log σ(−Δ)): finite where p → 1.
    return torch.exp(gamma * F.logsigmoid(-delta)) * F.softplus(-delta)


@register_loss("triplet", params=("margin",), formula="max(0, margin - D)")
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
        elif key in loss.params or key in SHARED_KEYS:
            values[key] = value
        else:
            close = difflib.get_close_matches(str(key), list(loss.params) + list(SHARED_KEYS), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            valid = ", ".join(loss.params) or "(none)"
            raise ConfigError(
                f'unknown parameter "{key}" for loss {loss.name}{hint}; valid: {valid}; '
                f"every loss also takes: {', '.join(SHARED_KEYS)}"
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
    extras = [f"{coef:g}*{label}" for label, coef in (
        ("mean((r_c + r_r)^2)", cfg.center_coef),
        ("mean(r^2)", cfg.reward_l2_coef),
        ("sum(param^2)", cfg.param_l2_coef),
    ) if coef]
    if extras:
        text += " + " + " + ".join(extras)
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
