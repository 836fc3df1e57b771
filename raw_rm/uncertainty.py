"""Ensemble aggregates, uncertainty-based sample selection and drift statistics (pure torch / numpy).

Aggregates (per item, over the K member rewards of an ensemble, torch in and out):

    mean, std (population: Σ(r_k − mean)²/K, so one member gives 0), min (the worst case),
    mean_minus_lambda_var = mean − λ·std², lcb = mean − k·std (lower confidence bound)

Normalise member rewards first (:func:`normalise`, with the training statistics stored in the model) and then
aggregate, so that std is in normalised units.

Selection (:func:`selection_scores`, larger = more informative to label) for unlabelled pairs (a, b), from the
members' reward differences Δ_k = r_a,k − r_b,k (k = 1..K, normalised rewards):

    std            −|mean_k Δ_k| / std_k Δ_k: the ensemble's mean margin in units of the members' spread (the
                   z-score of "a ≻ b"; ~0 when the members straddle a tie, large when they agree on the order).
                   Pairs whose order the members are least sure of come first. std_k Δ_k is floored at 1e-12,
                   so members that agree exactly rank by margin after every pair they disagree on.
    disagreement   4·Var_k σ(Δ_k): 0 when every member gives the same P(a ≻ b), 1 when half the members are
                   sure a wins and half that b wins (query by committee on the members' probabilities)
    margin         −|mean_k Δ_k|: pairs the ensemble's mean reward can barely tell apart (no spread needed)
    random         uniform scores from a seeded generator (the baseline)

Why not the std of each response's reward: a Bradley-Terry reward is only
identified up to a shift per prompt, so the members' rewards of a and b share a large, arbitrary component (the
prompt, the common content) that cancels in Δ; that std picks pairs whose order every member already agrees on,
and needed more labels than random selection in ``benchmarks/active_learning.py``. The spread of Δ alone is not
enough either: it is largest for pairs with large feature differences, whose large margin the members agree on
in sign; dividing by it turns the margin into "how sure are the members of the order".

Drift: :func:`psi` (population stability index over the reference's quantile bins) and :func:`ks_statistic`
(two-sample Kolmogorov-Smirnov) compare new values with a reference sample or with a
:class:`ReferenceDistribution`, the small histogram stored in the model's metadata; :class:`RollingDriftMonitor`
keeps both statistics over a window of recent serving traffic.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Strategy = Literal["std", "disagreement", "margin", "random"]
STRATEGIES: tuple[str, ...] = ("std", "disagreement", "margin", "random")
STD_FLOOR = 1e-12  # members that agree exactly: a large finite z (JSON-safe), still ordered by the margin
PSI_EPS = 1e-4  # proportions are floored here so that an empty bin gives a large, finite PSI


# ----------------------------------------------------------------------------------------- aggregates
def _members(values: Any, name: str) -> Tensor:
    t = values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values, dtype=np.float64))
    if t.dim() != 2 or t.shape[1] < 1:
        raise ValueError(f"{name}: expected member rewards of shape (N, K) with K >= 1, got {tuple(t.shape)}")
    return t if t.is_floating_point() else t.double()


def aggregate(member_rewards: Any, *, lam: float = 1.0, k: float = 1.0) -> dict[str, Tensor]:
    """Per-item aggregates of ``member_rewards`` (N, K): each value of the dict is (N,).

    Example: members [[1, 3]] give mean 2, std 1, min 1, mean_minus_lambda_var 2 − λ, lcb 2 − k.
    """
    m = _members(member_rewards, "member_rewards")
    mean = m.mean(dim=1)
    std = m.std(dim=1, correction=0)  # population std: K = 1 gives 0, not NaN
    return {
        "mean": mean,
        "std": std,
        "min": m.min(dim=1).values,
        "mean_minus_lambda_var": mean - lam * std.pow(2),
        "lcb": mean - k * std,
    }


def normalise(rewards: Any, mean: float, std: float) -> Tensor:
    """``(rewards − mean) / std`` with the training statistics stored in the model's metadata."""
    if not std > 0 or not math.isfinite(std):
        raise ValueError(f"normalise: std must be a finite number > 0, got {std}")
    r = rewards if isinstance(rewards, Tensor) else torch.as_tensor(np.asarray(rewards, dtype=np.float64))
    return (r - mean) / std


def _pair_members(members_a: Any, members_b: Any) -> tuple[Tensor, Tensor]:
    a, b = _members(members_a, "members_a"), _members(members_b, "members_b")
    if a.shape != b.shape:
        raise ValueError(f"members_a has shape {tuple(a.shape)} but members_b has {tuple(b.shape)}")
    return a, b


def pair_disagreement(members_a: Any, members_b: Any) -> Tensor:
    """4·Var_k σ(r_a,k − r_b,k) per pair (N,), in [0, 1]; see the module doc."""
    a, b = _pair_members(members_a, members_b)
    return 4.0 * torch.sigmoid(a - b).var(dim=1, correction=0)


def vote_split(members_a: Any, members_b: Any) -> Tensor:
    """Share of members (N,) that order each pair against the majority: min(#{Δ_k > 0}, #{Δ_k < 0}) / K, in [0, ½].

    0 when every member picks the same winner, ½ when they split evenly; ties (Δ_k = 0) vote for neither side.
    Invariant to each member's scale and to shifts shared by a and b, so it compares the ensemble's disagreement
    between data sets on which the members' reward differences have different sizes (the spread of Δ and
    :func:`pair_disagreement` shrink with the differences themselves, e.g. on out-of-distribution pairs that the
    members barely tell apart).

    Example: Δ = (1, 2, −1, 3) gives 1/4; Δ = (1, 1, 1) gives 0.
    """
    a, b = _pair_members(members_a, members_b)
    return _vote_split(a - b)


def _vote_split(delta: Tensor) -> Tensor:
    pos, neg = (delta > 0).sum(dim=1), (delta < 0).sum(dim=1)
    return torch.minimum(pos, neg).to(delta.dtype) / delta.shape[1]


def margin_z(members_a: Any, members_b: Any) -> Tensor:
    """mean_k Δ_k / std_k Δ_k per pair (N,), Δ_k = r_a,k − r_b,k: how many member standard deviations (population)
    the ensemble's mean margin lies from a tie; the std is floored at ``STD_FLOOR``.

    Example: Δ = (3, −3, 3) gives 1 / √8 = 0.354 (the members straddle a tie); Δ = (1, 1, 1) gives 1e12.
    Invariant to a common scale of the members' rewards and to any shift shared by a and b.
    """
    a, b = _pair_members(members_a, members_b)
    delta = a - b
    return delta.mean(dim=1) / delta.std(dim=1, correction=0).clamp_min(STD_FLOOR)


def compare_pairs(members_a: Any, members_b: Any, *, temperature: float = 1.0) -> dict[str, Tensor]:
    """P(a ≻ b) for pairs from member rewards (N, K) each, with the calibration temperature.

    Returns (N,) tensors: ``prob`` = σ(mean_k Δ_k / T) (the ensemble's calibrated probability), ``prob_std`` =
    std over members of σ(Δ_k / T), ``delta_mean`` and ``delta_std`` (population) of Δ_k = r_a,k − r_b,k, and
    ``vote_split`` (:func:`vote_split`: the share of members ordering the pair against the majority).
    The temperature applies to rewards in the units it was fitted on (raw, unnormalised rewards).
    """
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    a, b = _pair_members(members_a, members_b)
    delta = a - b
    mean = delta.mean(dim=1)
    return {
        "prob": torch.sigmoid(mean / temperature),
        "prob_std": torch.sigmoid(delta / temperature).std(dim=1, correction=0),
        "delta_mean": mean,
        "delta_std": delta.std(dim=1, correction=0),
        "vote_split": _vote_split(delta),
    }


# ------------------------------------------------------------------------------------------ selection
def selection_scores(strategy: Strategy, members_a: Any, members_b: Any, *, seed: int = 0) -> Tensor:
    """Informativeness (N,) of each unlabelled pair under ``strategy``: larger = label it sooner.

    Args:
        strategy: std | disagreement | margin | random (see the module doc).
        members_a, members_b: member rewards (N, K) of the two responses of each pair.
        seed: seeds the ``random`` strategy.

    Raises:
        ValueError: unknown strategy (listing the valid ones) or mismatched shapes.
    """
    a, b = _pair_members(members_a, members_b)
    if strategy == "std":
        return margin_z(a, b).abs().neg()
    if strategy == "disagreement":
        return pair_disagreement(a, b)
    if strategy == "margin":
        return -(a - b).mean(dim=1).abs()
    if strategy == "random":
        rng = np.random.default_rng(seed)
        return torch.as_tensor(rng.random(a.shape[0]), dtype=a.dtype)
    raise ValueError(f'unknown selection strategy "{strategy}"; valid: {", ".join(STRATEGIES)}')


def select_top_k(scores: Any, k: int) -> Tensor:
    """Indices (k,) of the ``k`` largest scores, largest first; equal scores keep their pool order."""
    s = scores if isinstance(scores, Tensor) else torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if s.dim() != 1:
        raise ValueError(f"scores: expected shape (N,), got {tuple(s.shape)}")
    if not 0 <= k <= s.shape[0]:
        raise ValueError(f"k={k} but the pool has {s.shape[0]} pairs: expected 0 <= k <= {s.shape[0]}")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    return torch.sort(s, descending=True, stable=True).indices[:k]


# ---------------------------------------------------------------------------------------------- drift
def _finite_1d(values: Any, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: {int(np.sum(~np.isfinite(x)))} values are NaN or infinite")
    return x


@dataclass
class ReferenceDistribution:
    """A histogram summary of a reference sample (training rewards, input lengths) for drift statistics.

    Bins are ``(−inf, e_0], (e_0, e_1], ..., (e_last, +inf)`` with ``edges`` the distinct quantiles of the
    sample, so every bin holds about the same share and new values outside the sample's range still count.
    ``to_dict()`` is small (a few dozen numbers) and JSON-safe, for the model's metadata.
    """

    edges: list[float]  # inner bin edges, strictly increasing
    proportions: list[float]  # share of the reference sample per bin: len(edges) + 1 values summing to 1
    n: int  # reference sample size
    mean: float  # reference sample mean (for reports)
    std: float  # reference sample population std (for reports)

    def __post_init__(self) -> None:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError(
                f"ReferenceDistribution: {len(self.proportions)} proportions for {len(self.edges)} edges; "
                f"expected len(edges) + 1"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"ReferenceDistribution: edges must be strictly increasing, got {self.edges}")
        if abs(sum(self.proportions) - 1.0) > 1e-6 or min(self.proportions) < 0:
            raise ValueError(f"ReferenceDistribution: proportions must be >= 0 and sum to 1, got {self.proportions}")

    @classmethod
    def from_sample(cls, values: Any, bins: int = 10) -> ReferenceDistribution:
        """Summarise ``values`` into ``bins`` quantile bins (fewer when the sample has repeated values)."""
        if bins < 1:
            raise ValueError(f"bins: expected >= 1, got {bins}")
        x = _finite_1d(values, "reference sample")
        edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)
        return cls(
            edges=[float(e) for e in edges],
            proportions=[float(c) for c in counts / x.size],
            n=int(x.size),
            mean=float(x.mean()),
            std=float(x.std()),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceDistribution:
        expected = {"edges", "proportions", "n", "mean", "std"}
        if not isinstance(data, dict) or set(data) != expected:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"ReferenceDistribution.from_dict: expected keys {sorted(expected)}, got {got}")
        return cls(
            edges=[float(e) for e in data["edges"]],
            proportions=[float(p) for p in data["proportions"]],
            n=int(data["n"]),
            mean=float(data["mean"]),
            std=float(data["std"]),
        )

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value: 0 for x ≤ e_0, i for e_{i−1} < x ≤ e_i, len(edges) above the last edge."""
        return np.searchsorted(np.asarray(self.edges), values, side="left")

    def cdf_at_edges(self) -> np.ndarray:
        """Reference CDF at each inner edge: the share of the sample ≤ e_i."""
        return np.cumsum(self.proportions)[:-1]


def _psi(p_ref: np.ndarray, p_new: np.ndarray) -> float:
    p = np.maximum(p_ref, PSI_EPS)
    q = np.maximum(p_new, PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def psi(reference: ReferenceDistribution | Sequence[float] | np.ndarray, new: Any, bins: int | None = None) -> float:
    """Population stability index Σ_b (q_b − p_b)·ln(q_b / p_b) of ``new`` against ``reference``.

    ``p`` are the reference shares and ``q`` the new shares per bin, both floored at 1e-4. A reference sample is
    first summarised into ``bins`` quantile bins (default 10); a ReferenceDistribution brings its own bins.
    Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    if isinstance(reference, ReferenceDistribution):
        if bins is not None:
            raise ValueError("bins: a ReferenceDistribution brings its own bins; pass bins only with a sample")
        ref = reference
    else:
        ref = ReferenceDistribution.from_sample(reference, bins=10 if bins is None else bins)
    x = _finite_1d(new, "new")
    q = np.bincount(ref.bin_index(x), minlength=len(ref.proportions)) / x.size
    return _psi(np.asarray(ref.proportions), q)


def ks_statistic(reference: ReferenceDistribution | Sequence[float] | np.ndarray, new: Any) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_ref(x) − F_new(x)|, in [0, 1].

    With a reference sample this is exact. With a ReferenceDistribution only the reference CDF at its bin edges
    is known, so the supremum is taken over those edges (a lower bound of the exact statistic).
    """
    x = np.sort(_finite_1d(new, "new"))
    if isinstance(reference, ReferenceDistribution):
        f_new = np.searchsorted(x, np.asarray(reference.edges), side="right") / x.size
        return float(np.max(np.abs(f_new - reference.cdf_at_edges()), initial=0.0))
    r = np.sort(_finite_1d(reference, "reference"))
    points = np.concatenate([r, x])
    f_ref = np.searchsorted(r, points, side="right") / r.size
    f_new = np.searchsorted(x, points, side="right") / x.size
    return float(np.max(np.abs(f_ref - f_new)))


class RollingDriftMonitor:
    """PSI and KS of the last ``window`` values against a reference, for one serving replica.

    ``update`` and ``stats`` hold a lock, so request threads of one replica may call them concurrently.
    Non-finite values are not binned; they are counted in ``stats()["n_nonfinite"]``.
    """

    def __init__(self, reference: ReferenceDistribution, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window: expected >= 1, got {window}")
        self.reference = reference
        self.window = window
        self._bins: deque[int] = deque()
        self._counts = np.zeros(len(reference.proportions), dtype=np.int64)
        self._n_nonfinite = 0
        self._lock = threading.Lock()

    def update(self, values: Any) -> None:
        """Add values (any shape); the oldest fall out of the window."""
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        finite = np.isfinite(x)
        idx = self.reference.bin_index(x[finite])[-self.window :]
        with self._lock:
            self._n_nonfinite += int(x.size - finite.sum())
            for i in idx.tolist():
                if len(self._bins) == self.window:
                    self._counts[self._bins.popleft()] -= 1
                self._bins.append(i)
                self._counts[i] += 1

    def stats(self) -> dict[str, float | int]:
        """``{"psi", "ks", "n", "n_nonfinite"}``; psi and ks are NaN while the window is empty."""
        with self._lock:
            counts = self._counts.copy()
            n_nonfinite = self._n_nonfinite
        n = int(counts.sum())
        if n == 0:
            return {"psi": math.nan, "ks": math.nan, "n": 0, "n_nonfinite": n_nonfinite}
        q = counts / n
        ks = float(np.max(np.abs(np.cumsum(q)[:-1] - self.reference.cdf_at_edges()), initial=0.0))
        return {"psi": _psi(np.asarray(self.reference.proportions), q), "ks": ks, "n": n, "n_nonfinite": n_nonfinite}
