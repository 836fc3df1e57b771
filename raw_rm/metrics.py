"""Evaluation metrics for reward models: numpy or torch in, floats and dicts of numpy arrays out.

Conventions. ``delta`` is r_chosen − r_rejected for pairs whose ``chosen`` side humans preferred, so the model
is right when delta > 0 (a tie, delta == 0, counts as wrong). The model's probability that chosen wins is
P = σ(delta / T) with the calibration temperature T (:func:`fit_temperature`).

Calibration of pairs. A pair has no natural orientation: P(a ≻ b) = p is the same prediction as P(b ≻ a) = 1 − p.
:func:`calibration_error` and :func:`reliability_bins` therefore score every (p, label) as the two points
(p, label) and (1 − p, 1 − label). Brier score and NLL are unchanged by this; ECE becomes the usual
confidence (top-label) ECE and is meaningful when every label is 1, the normal case of chosen/rejected data
(on p with label 1 alone, every bin's observed frequency would be 1).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
from scipy import optimize, special, stats

logger = logging.getLogger(__name__)
NLL_EPS = 1e-12  # probabilities are clipped to [eps, 1 − eps] in the NLL: a sure wrong answer costs 27.6 nats


def _np(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().double().numpy()
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name}: no values")
    if np.isnan(x).any():
        raise ValueError(f"{name}: {int(np.isnan(x).sum())} values are NaN")
    return x


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {k: v.size for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("expected arrays of one length, got " + ", ".join(f"{k}: {n}" for k, n in lengths.items()))


# ------------------------------------------------------------------------------------------- accuracy
def preference_accuracy(
    chosen: Any, rejected: Any, n_boot: int = 1000, seed: int = 0, *, confidence: float = 0.95
) -> dict[str, float]:
    """Share of pairs with r_chosen > r_rejected (ties are wrong), with a percentile bootstrap interval.

    Resampling n pairs with replacement from n right/wrong outcomes gives Binomial(n, accuracy) right answers,
    so the bootstrap draws those counts directly (exact, O(n_boot) memory).

    Returns:
        ``accuracy``, ``tie_rate``, ``ci_low``, ``ci_high`` (the ``confidence`` interval) and ``n``.
    """
    c, r = _np(chosen, "chosen"), _np(rejected, "rejected")
    _same_length(chosen=c, rejected=r)
    if n_boot < 1:
        raise ValueError(f"n_boot: expected >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected 0 < value < 1, got {confidence}")
    n = c.size
    accuracy = float(np.mean(c > r))
    boot = np.random.default_rng(seed).binomial(n, accuracy, size=n_boot) / n
    alpha = (1.0 - confidence) / 2
    return {
        "accuracy": accuracy,
        "tie_rate": float(np.mean(c == r)),
        "ci_low": float(np.quantile(boot, alpha)),
        "ci_high": float(np.quantile(boot, 1.0 - alpha)),
        "n": n,
    }


def pair_probabilities(delta: Any, temperature: float = 1.0) -> np.ndarray:
    """P(chosen ≻ rejected) = σ(delta / T), elementwise."""
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    return special.expit(_np(delta, "delta") / temperature)


def pair_nll(delta: Any, temperature: float = 1.0) -> float:
    """Mean −log σ(delta / T): the NLL of the human labels under the model (stable for any delta)."""
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    return float(np.mean(np.logaddexp(0.0, -_np(delta, "delta") / temperature)))


# ---------------------------------------------------------------------------------------- calibration
def _symmetrised(probs: Any, labels: Any | None) -> tuple[np.ndarray, np.ndarray]:
    p = _np(probs, "probs")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"probs: expected values in [0, 1], got min {p.min()} and max {p.max()}")
    y = np.ones_like(p) if labels is None else _np(labels, "labels")
    _same_length(probs=p, labels=y)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels: expected 0 or 1 (1 = the first response of the pair is the human's choice)")
    return np.concatenate([p, 1.0 - p]), np.concatenate([y, 1.0 - y])


def _width_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(
    probs: Any, labels: Any | None = None, n_bins: int = 15, *, strategy: Literal["width", "mass"] = "width"
) -> dict[str, np.ndarray]:
    """Per-bin data for a reliability diagram, on the symmetrised set (see the module doc).

    Returns arrays of one entry per bin: ``lower``, ``upper`` (bin range of p), ``confidence`` (mean p),
    ``accuracy`` (observed frequency of label 1) and ``count``; empty equal-width bins have NaN
    confidence and accuracy. ``strategy="mass"`` makes bins of (nearly) equal counts instead; equal probabilities
    always share a bin.
    """
    p, y = _symmetrised(probs, labels)
    return _reliability(p, y, n_bins, strategy)


def _reliability(p: np.ndarray, y: np.ndarray, n_bins: int, strategy: str) -> dict[str, np.ndarray]:
    if n_bins < 1:
        raise ValueError(f"n_bins: expected >= 1, got {n_bins}")
    if strategy == "width":
        idx = _width_bins(p, n_bins)
        count = np.bincount(idx, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.bincount(idx, weights=p, minlength=n_bins) / count
            acc = np.bincount(idx, weights=y, minlength=n_bins) / count
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        return {"lower": edges[:-1], "upper": edges[1:], "confidence": conf, "accuracy": acc, "count": count}
    if strategy == "mass":
        # Equal counts, except that equal probabilities always share a bin: splitting a run of ties by input order
        # (the symmetrised set lists every label-1 point first) gave a constant p = 0.7 that is right 70% of
        # the time an ECE of 0.39 instead of 0.
        order = np.argsort(p, kind="stable")
        first = np.searchsorted(p[order], p[order], side="left")  # sorted position of each value's first tie
        bin_of = first * n_bins // p.size
        chunks = [order[bin_of == b] for b in np.unique(bin_of)]
        return {
            "lower": np.array([p[c].min() for c in chunks]),
            "upper": np.array([p[c].max() for c in chunks]),
            "confidence": np.array([p[c].mean() for c in chunks]),
            "accuracy": np.array([y[c].mean() for c in chunks]),
            "count": np.array([c.size for c in chunks]),
        }
    raise ValueError(f'strategy: expected "width" or "mass", got "{strategy}"')


def calibration_error(probs: Any, labels: Any | None = None, n_bins: int = 15) -> dict[str, float]:
    """Calibration of P(first ≻ second) against human labels (None = all 1: ``probs`` are P(chosen ≻ rejected)).

    Returns:
        ``ece`` (equal-width bins), ``ece_equal_mass``, ``mce`` (largest gap of a non-empty equal-width bin),
        ``brier`` (mean (p − y)²) and ``nll`` (mean −log of the probability given to the human's choice).
        ECE/MCE use the symmetrised set of the module doc.
    """
    p, y = _symmetrised(probs, labels)
    gaps = {}
    for strategy in ("width", "mass"):
        b = _reliability(p, y, n_bins, strategy)
        used = b["count"] > 0
        gap = np.abs(b["accuracy"][used] - b["confidence"][used])
        gaps[strategy] = (float(np.sum(gap * b["count"][used]) / p.size), float(gap.max()))
    p1, y1 = p[: p.size // 2], y[: y.size // 2]
    q = np.clip(np.where(y1 == 1, p1, 1.0 - p1), NLL_EPS, 1.0 - NLL_EPS)
    return {
        "ece": gaps["width"][0],
        "ece_equal_mass": gaps["mass"][0],
        "mce": gaps["width"][1],
        "brier": float(np.mean((p1 - y1) ** 2)),
        "nll": float(-np.mean(np.log(q))),
    }


def ece_noise_floor(probs: Any, n_bins: int = 15, *, n_sim: int = 200, seed: int = 0) -> dict[str, float]:
    """The ECE a model would show on these pairs if ``probs`` (P(chosen ≻ rejected)) were exactly right.

    Draws the human's choice of every pair from its probability ``n_sim`` times and measures the ECE (equal-width
    bins, as :func:`calibration_error`) each time. A binned ECE is biased upwards by the sampling noise of each
    bin's observed frequency: on a few hundred pairs a perfectly calibrated model scores several points, so an
    ECE within ``mean + 2 std`` of this floor shows no miscalibration, and a difference between two models of
    less than about ``std`` is noise. Returns ``mean``, ``std`` and ``n_sim``.
    """
    p = _np(probs, "probs")
    if n_sim < 2:
        raise ValueError(f"n_sim: expected >= 2, got {n_sim}")
    rng = np.random.default_rng(seed)
    eces = []
    for _ in range(n_sim):
        first_wins = rng.random(p.size) < p
        eces.append(calibration_error(np.where(first_wins, p, 1.0 - p), n_bins=n_bins)["ece"])
    return {"mean": float(np.mean(eces)), "std": float(np.std(eces)), "n_sim": n_sim}


CALIBRATION_KEYS = ("nll", "brier", "ece", "ece_equal_mass")


def compare_calibration(
    probs_a: Any,
    probs_b: Any,
    labels: Any | None = None,
    *,
    n_bins: int = 15,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Paired bootstrap of calibration metrics: is model a's calibration better than model b's on these pairs?

    ECE on a few hundred pairs is noisy (and equal-width ECE of probabilities that all sit near 0.5 is decided by
    one or two bins), so a difference of two point estimates says little. Both models' probabilities of the SAME
    resampled pairs are scored, ``n_boot`` times, and the difference a − b summarised.

    Args:
        probs_a, probs_b: (N,) P(first ≻ second) of the same N pairs under each model.
        labels: as in :func:`calibration_error` (None = all 1).

    Returns:
        for each of ``nll``, ``brier``, ``ece``, ``ece_equal_mass``: ``a``, ``b`` (on all pairs), ``diff`` (a − b),
        ``ci_low``, ``ci_high`` (percentile interval of the resampled a − b at ``confidence``) and ``p_a_lower``
        (share of resamples where a's value is lower, i.e. better). A verdict is safe only when the interval
        excludes 0.
    """
    pa, pb = _np(probs_a, "probs_a"), _np(probs_b, "probs_b")
    _same_length(probs_a=pa, probs_b=pb)
    y = np.ones_like(pa) if labels is None else _np(labels, "labels")
    _same_length(probs_a=pa, labels=y)
    if n_boot < 1:
        raise ValueError(f"n_boot: expected >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected 0 < value < 1, got {confidence}")
    full_a, full_b = calibration_error(pa, y, n_bins), calibration_error(pb, y, n_bins)
    rng = np.random.default_rng(seed)
    diffs = np.empty((n_boot, len(CALIBRATION_KEYS)))
    for i in range(n_boot):
        idx = rng.integers(0, pa.size, pa.size)
        ca, cb = calibration_error(pa[idx], y[idx], n_bins), calibration_error(pb[idx], y[idx], n_bins)
        diffs[i] = [ca[k] - cb[k] for k in CALIBRATION_KEYS]
    alpha = (1.0 - confidence) / 2
    return {
        k: {
            "a": full_a[k],
            "b": full_b[k],
            "diff": full_a[k] - full_b[k],
            "ci_low": float(np.quantile(diffs[:, j], alpha)),
            "ci_high": float(np.quantile(diffs[:, j], 1.0 - alpha)),
            "p_a_lower": float(np.mean(diffs[:, j] < 0)),
        }
        for j, k in enumerate(CALIBRATION_KEYS)
    }


def fit_temperature(delta: Any, *, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The T in ``bounds`` minimising the NLL mean −log σ(delta / T) of chosen-minus-rejected differences.

    NLL is convex in 1/T (softplus of a linear function), hence unimodal in log T, so a bounded 1-D search
    on log T finds the global minimum. Separable data (every delta > 0) drives T to the lower bound; all-zero
    deltas carry no information and give T = 1 (logged).
    """
    d = _np(delta, "delta")
    lo, hi = bounds
    if not 0 < lo < 1 < hi:
        raise ValueError(f"bounds: expected 0 < low < 1 < high, got {bounds}")
    if not np.any(d):
        logger.warning("fit_temperature: every reward difference is 0; keeping temperature 1.0")
        return 1.0
    result = optimize.minimize_scalar(
        lambda log_t: np.mean(np.logaddexp(0.0, -d * np.exp(-log_t))),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def cross_fit_temperature(
    delta: Any, *, current: float = 1.0, folds: int = 5, n_boot: int = 200, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Fit T on ``delta`` and say, out of sample, whether it beats the ``current`` temperature.

    A temperature fitted on a few dozen pairs can make held-out NLL worse, and the NLL on the pairs it was
    fitted on cannot show it. The pairs are cut into ``folds`` interleaved folds; each fold is scored at the T
    fitted on the others (cross-fitting), and the mean of those held-out NLLs is compared with the NLL at
    ``current``. The interval of T is a percentile bootstrap over pairs.

    Returns:
        ``temperature`` (fitted on all pairs), ``ci_low``, ``ci_high``, ``n``, ``folds``, ``nll_current`` (NLL at
        ``current``), ``nll_cross_fitted`` and ``improves`` (True when the cross-fitted NLL is lower: only then
        should the fitted T replace ``current``).

    Raises:
        ValueError: fewer pairs than folds, or ``folds`` < 2.
    """
    d = _np(delta, "delta")
    if folds < 2:
        raise ValueError(f"folds: expected >= 2, got {folds}")
    if d.size < folds:
        raise ValueError(f"cross_fit_temperature: {d.size} pairs cannot make {folds} folds")
    if not current > 0:
        raise ValueError(f"current: expected a temperature > 0, got {current}")
    fold = np.arange(d.size) % folds
    held_out = np.empty(d.size)
    for k in range(folds):
        t_k = fit_temperature(d[fold != k])
        held_out[fold == k] = np.logaddexp(0.0, -d[fold == k] / t_k)
    rng = np.random.default_rng(seed)
    boots = [fit_temperature(d[rng.integers(0, d.size, d.size)]) for _ in range(n_boot)]
    alpha = (1.0 - confidence) / 2
    nll_current, nll_cross = pair_nll(d, current), float(held_out.mean())
    return {
        "temperature": fit_temperature(d),
        "ci_low": float(np.quantile(boots, alpha)),
        "ci_high": float(np.quantile(boots, 1.0 - alpha)),
        "n": int(d.size),
        "folds": folds,
        "current": float(current),
        "nll_current": nll_current,
        "nll_cross_fitted": nll_cross,
        "improves": bool(nll_cross < nll_current),
    }


# ---------------------------------------------------------------------------------------------- length
def length_bias(
    chosen: Any,
    rejected: Any,
    len_chosen: Any,
    len_rejected: Any,
    *,
    probed_rejected: Any | None = None,
    match_ratio: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Length-controlled evaluation of pairs: how much of the reward is response length?

    Args:
        chosen, rejected: rewards (N,) of the human-preferred and the other response.
        len_chosen, len_rejected: their lengths (N,) in any unit (tokens, characters).
        probed_rejected: rewards (N,) of the rejected responses padded with neutral filler (the verbosity probe,
            ``raw_rm.eval.probes.verbosity``), or None.
        match_ratio: a pair is length-matched when |len_c - len_r| <= match_ratio * max(len_c, len_r).

    Returns:
        ``reward_length_spearman`` / ``reward_length_pearson`` over the 2N responses; ``delta_length_spearman``
        (reward difference vs length difference within pairs); ``matched_accuracy`` with ``matched_ci_low``,
        ``matched_ci_high`` and ``matched_n`` (NaN when no pair is matched): accuracy where length cannot decide;
        ``chosen_longer_share`` (how often humans chose the longer side); with ``probed_rejected`` also
        ``verbosity_change`` = accuracy(probed) - accuracy(clean) with a paired bootstrap interval
        (``verbosity_ci_low``, ``verbosity_ci_high``): an unbiased model moves by about 0, a length-biased one
        loses accuracy (the padded rejected side wins more often).
    """
    c, r = _np(chosen, "chosen"), _np(rejected, "rejected")
    lc, lr = _np(len_chosen, "len_chosen"), _np(len_rejected, "len_rejected")
    _same_length(chosen=c, rejected=r, len_chosen=lc, len_rejected=lr)
    if not 0 <= match_ratio < 1:
        raise ValueError(f"match_ratio: expected 0 <= value < 1, got {match_ratio}")
    rewards, lengths = np.concatenate([c, r]), np.concatenate([lc, lr])
    pooled = _correlations(rewards, lengths)
    within = _correlations(c - r, lc - lr)
    constant = np.all(rewards == rewards[0]) or np.all(lengths == lengths[0])
    out: dict[str, float] = {
        "reward_length_spearman": pooled[0] if pooled else math.nan,
        "reward_length_pearson": math.nan if constant else float(stats.pearsonr(rewards, lengths).statistic),
        "delta_length_spearman": within[0] if within else math.nan,
        "chosen_longer_share": float(np.mean(lc > lr)),
    }
    matched = np.abs(lc - lr) <= match_ratio * np.maximum(lc, lr)
    out["matched_n"] = int(matched.sum())
    if matched.any():
        acc = preference_accuracy(c[matched], r[matched], n_boot=n_boot, seed=seed, confidence=confidence)
        out.update(matched_accuracy=acc["accuracy"], matched_ci_low=acc["ci_low"], matched_ci_high=acc["ci_high"])
    else:
        out.update(matched_accuracy=math.nan, matched_ci_low=math.nan, matched_ci_high=math.nan)
    if probed_rejected is not None:
        pr = _np(probed_rejected, "probed_rejected")
        _same_length(chosen=c, probed_rejected=pr)
        change = paired_accuracy_change(c > r, c > pr, n_boot=n_boot, seed=seed, confidence=confidence)
        out.update(
            verbosity_change=change["change"], verbosity_ci_low=change["ci_low"], verbosity_ci_high=change["ci_high"]
        )
    return out


def paired_accuracy_change(
    correct_before: Any, correct_after: Any, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Accuracy after minus before on the same N items, with a paired percentile bootstrap interval.

    ``significant`` is 1.0 when the interval excludes 0: the change, in either direction, is more than the
    resampling noise of these items.
    """
    before = _np(correct_before, "correct_before").astype(bool)
    after = _np(correct_after, "correct_after").astype(bool)
    _same_length(correct_before=before, correct_after=after)
    diff = after.astype(np.float64) - before.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, diff.size, size=(n_boot, diff.size))
    boots = diff[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = float(np.quantile(boots, alpha)), float(np.quantile(boots, 1.0 - alpha))
    return {"change": float(diff.mean()), "ci_low": low, "ci_high": high, "significant": float(low > 0 or high < 0)}


# ------------------------------------------------------------------------------------------- rankings
def compare_members(fit_delta: Any, eval_delta: Any, n_bins: int = 15) -> dict[str, Any]:
    """An ensemble against each of its members on held-out pairs, every contender at its own temperature.

    Args:
        fit_delta: (N1, K) chosen-minus-rejected member rewards (z-scored) of the pairs the temperatures are fitted on.
        eval_delta: (N2, K) the same for the pairs measured.

    Each member (a column) and the ensemble (the row mean: the mean of z-scored rewards that an ensemble folder
    serves) fits T on ``fit_delta`` and is scored on ``eval_delta``. Returns ``members`` and ``ensemble`` (each
    ``temperature``, ``nll``, ``ece``, ``accuracy``), ``best_member`` (lowest eval NLL, picked with hindsight),
    ``val_best_member`` (lowest NLL on the fitting pairs: the member validation would pick), and
    ``ensemble_minus_best_nll`` / ``ensemble_minus_best_ece`` (negative = the ensemble is better).
    """
    fit, ev = (_np(d, name).reshape(np.shape(d)) for d, name in ((fit_delta, "fit_delta"), (eval_delta, "eval_delta")))
    if fit.ndim != 2 or ev.ndim != 2 or fit.shape[1] != ev.shape[1]:
        raise ValueError(
            f"fit_delta {fit.shape} and eval_delta {ev.shape}: expected (N1, K) and (N2, K) with the same K"
        )

    def score(f: np.ndarray, e: np.ndarray) -> dict[str, float]:
        t = fit_temperature(f)
        cal = calibration_error(pair_probabilities(e, t), n_bins=n_bins)
        return {
            "temperature": t,
            "nll": cal["nll"],
            "ece": cal["ece"],
            "accuracy": float(np.mean(e > 0)),
            "fit_nll": pair_nll(f, t),
        }

    members = [score(fit[:, k], ev[:, k]) for k in range(fit.shape[1])]
    ensemble = score(fit.mean(axis=1), ev.mean(axis=1))
    best = min(range(len(members)), key=lambda k: members[k]["nll"])
    val_best = min(range(len(members)), key=lambda k: members[k]["fit_nll"])
    return {
        "n_fit": int(fit.shape[0]),
        "n_eval": int(ev.shape[0]),
        "members": members,
        "ensemble": ensemble,
        "best_member": best,
        "val_best_member": val_best,
        "ensemble_minus_best_nll": ensemble["nll"] - members[best]["nll"],
        "ensemble_minus_best_ece": ensemble["ece"] - members[best]["ece"],
    }


def _correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return None  # undefined: fewer than two items or a constant side
    return float(stats.spearmanr(x, y).statistic), float(stats.kendalltau(x, y).statistic)


def ranking_correlation(
    predicted: Any,
    target: Any,
    group_ids: Any | None = None,
    *,
    target_kind: Literal["score", "rank"] = "score",
) -> dict[str, float]:
    """Spearman ρ and Kendall τ-b (tie-corrected) between predicted rewards and human scores or ranks.

    Args:
        predicted: rewards (N,).
        target: human scores (larger = better) or, with ``target_kind="rank"``, ranks (0 = best).
        group_ids: (N,) group of each item (e.g. its prompt); None = one group.

    Returns:
        ``spearman`` and ``kendall``: mean of the per-group values over groups where they are defined (at
        least two items, neither side constant; ``n_groups`` used, ``n_skipped`` not); ``spearman_pooled`` and
        ``kendall_pooled``: over all items at once (meaningful for absolute ratings). NaN where undefined.
    """
    x, t = _np(predicted, "predicted"), _np(target, "target")
    _same_length(predicted=x, target=t)
    if target_kind == "rank":
        t = -t
    elif target_kind != "score":
        raise ValueError(f'target_kind: expected "score" or "rank", got "{target_kind}"')
    groups = np.zeros(x.size, dtype=np.int64) if group_ids is None else np.asarray(group_ids).reshape(-1)
    if groups.size != x.size:
        raise ValueError(f"group_ids: expected {x.size} values, got {groups.size}")
    per_group = []
    for g in np.unique(groups):
        r = _correlations(x[groups == g], t[groups == g])
        if r is not None:
            per_group.append(r)
    pooled = _correlations(x, t) or (math.nan, math.nan)
    mean = np.mean(per_group, axis=0) if per_group else (math.nan, math.nan)
    n_groups = len(np.unique(groups))
    return {
        "spearman": float(mean[0]),
        "kendall": float(mean[1]),
        "spearman_pooled": pooled[0],
        "kendall_pooled": pooled[1],
        "n_groups": len(per_group),
        "n_skipped": n_groups - len(per_group),
    }


# ---------------------------------------------------------------------------------------- uncertainty
def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``labels`` == 1 (e.g. ensemble spread → mistake).

    The Mann-Whitney statistic with average ranks for ties: P(score of a positive > score of a negative) +
    ½·P(equal). NaN when only one class is present.
    """
    s, y = _np(scores, "scores"), _np(labels, "labels")
    _same_length(scores=s, labels=y)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels: expected 0 or 1")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        logger.warning("auroc: only one class among %d labels; AUROC is undefined (NaN)", y.size)
        return math.nan
    ranks = stats.rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy_coverage(uncertainty: Any, correct: Any) -> dict[str, np.ndarray | float]:
    """Accuracy on the most confident share of the data, for every share.

    Items are sorted by ``uncertainty`` (ascending; equal values keep their input order). Returns
    ``coverage`` (k/N for k = 1..N), ``accuracy`` (of the k most certain items), ``threshold`` (the k-th
    uncertainty) and ``area`` (mean accuracy over all coverages; 1 is best, the plain accuracy is what a
    useless uncertainty gives on average).
    """
    u, c = _np(uncertainty, "uncertainty"), _np(correct, "correct")
    _same_length(uncertainty=u, correct=c)
    order = np.argsort(u, kind="stable")
    k = np.arange(1, u.size + 1)
    accuracy = np.cumsum(c[order]) / k
    return {"coverage": k / u.size, "accuracy": accuracy, "threshold": u[order], "area": float(accuracy.mean())}


def spread_error_correlation(spread: Any, error: Any) -> float:
    """Spearman ρ between ensemble spread and error (a 0/1 mistake or a magnitude); NaN if either is constant."""
    s, e = _np(spread, "spread"), _np(error, "error")
    _same_length(spread=s, error=e)
    r = _correlations(s, e)
    return math.nan if r is None else r[0]
