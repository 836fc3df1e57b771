"""Annotator agreement: raw agreement, Cohen's kappa, Krippendorff's alpha, agreement with the majority and with a
reward model, flags for annotators far below the rest, and bootstrap intervals over items.

The unit of agreement is one *comparison*: a pair of responses (i, j), i < j, of one item. A k-wise item holds
k(k-1)/2 of them, a pairwise item one. A judgement gives each comparison a value on the ordinal scale

    +2  i clearly better    +1  i slightly better    0  tie    -1  j slightly better    -2  j clearly better

(a judgement without a strength, and every comparison of a k-wise ranking, is +-1). Nominal statistics (raw
agreement, kappa, nominal alpha, majorities) use the direction only (``direction(v)``: +1, 0, -1); ordinal alpha
uses the five levels, so "slightly" against "clearly" the same way counts as a small disagreement.

A ``Table`` maps a comparison (``(item_id, i, j)``) to ``{annotator: value}``. Every statistic here is a pure
function of a table; bootstrap intervals resample *items* (all comparisons of an item together), because the
comparisons of one item and the judgements of one annotator on it are not independent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import numpy as np

Unit = tuple[int, int, int]  # (item_id, i, j) with i < j: a comparison of responses i and j of one item
Table = Mapping[Unit, Mapping[str, int]]  # comparison -> {annotator: ordinal value in -2..2}
Level = Literal["nominal", "ordinal", "interval"]

MIN_UNITS_TO_FLAG = 5  # an annotator needs this many comparisons with a majority of others before a flag means much


def direction(value: float) -> int:
    """+1 (first better), 0 (tie), -1 (second better)."""
    return (value > 0) - (value < 0)


# ------------------------------------------------------------------------------------------------ kappa
def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels on the same units: (p_o - p_e) / (1 - p_e).

    ``p_o`` is the observed share of equal labels, ``p_e`` the agreement expected by chance from each rater's own
    label frequencies. NaN when ``p_e`` is 1 (both raters used one and the same label throughout: kappa is undefined).

    Raises:
        ValueError: different lengths or no units.
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: the raters labelled {len(a)} and {len(b)} units; expected the same units")
    n = len(a)
    if n == 0:
        raise ValueError("cohen_kappa: no units")
    p_o = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    p_e = sum(count_a[c] * count_b[c] for c in count_a) / (n * n)
    if p_e == 1.0:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


# ---------------------------------------------------------------------------------------- Krippendorff
def krippendorff_alpha(units: Sequence[Sequence[float]], *, level: Level = "nominal") -> float:
    """Krippendorff's alpha, 1 - D_o / D_e, from the values each unit received (missing values simply absent).

    Units with fewer than two values are unpairable and left out (Krippendorff 2011, "Computing Krippendorff's
    alpha-reliability"). ``o[c][k]`` is the coincidence matrix (each ordered pair of values in a unit with ``m``
    values adds ``1/(m-1)``), ``n_c`` its margins, ``n`` their sum; ``D_o = sum o[c][k] d(c,k) / n`` and
    ``D_e = sum n_c n_k d(c,k) / (n (n - 1))`` with the squared distance ``d`` of the level:
    nominal ``[c != k]``, interval ``(c - k)^2``, ordinal ``(sum_{g from c to k} n_g - (n_c + n_k) / 2)^2``.
    NaN when there is no variation at all (``D_e == 0``: alpha is undefined).

    Raises:
        ValueError: an unknown level, or no pairable unit.
    """
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f'level "{level}": unknown; known: nominal, ordinal, interval')
    pairable = [list(u) for u in units if len(u) >= 2]
    if not pairable:
        raise ValueError("krippendorff_alpha: no unit has two or more values")
    values = sorted({v for u in pairable for v in u})
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for u in pairable:
        m = len(u)
        for x in range(m):
            for y in range(m):
                if x != y:
                    o[index[u[x]], index[u[y]]] += 1.0 / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    delta = _distance(np.asarray(values, dtype=float), n_c, level)
    d_o = float((o * delta).sum() / n)
    d_e = float((np.outer(n_c, n_c) * delta).sum() / (n * (n - 1)))
    return math.nan if d_e == 0 else 1.0 - d_o / d_e


def _distance(values: np.ndarray, n_c: np.ndarray, level: Level) -> np.ndarray:
    """The squared distance matrix between the (sorted) values for ``level``."""
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    cum = np.concatenate([[0.0], np.cumsum(n_c)])  # cum[i] = n_0 + ... + n_{i-1}
    lo = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
    hi = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
    between = cum[hi + 1] - cum[lo]  # sum of n_g for g from the lower to the higher value, both included
    return (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2


# ------------------------------------------------------------------------------------- raw agreement
def unit_agreement(values: Sequence[int]) -> float | None:
    """Share of the pairs of annotators on one comparison who agree on its direction; None with < 2 values."""
    dirs = [direction(v) for v in values]
    pairs = list(combinations(dirs, 2))
    if not pairs:
        return None
    return sum(x == y for x, y in pairs) / len(pairs)


def raw_agreement(table: Table) -> tuple[float, int]:
    """(share of agreeing annotator pairs pooled over every comparison with >= 2 values, number of such pairs)."""
    agree = total = 0
    for ratings in table.values():
        dirs = [direction(v) for v in ratings.values()]
        for x, y in combinations(dirs, 2):
            agree += x == y
            total += 1
    return (agree / total if total else math.nan), total


def _shared_directions(table: Table) -> dict[tuple[str, str], tuple[list[int], list[int]]]:
    """``{(a, b): (a's directions, b's directions)}`` on the comparisons both judged (a < b by name)."""
    shared: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for ratings in table.values():
        for a, b in combinations(sorted(ratings), 2):
            la, lb = shared.setdefault((a, b), ([], []))
            la.append(direction(ratings[a]))
            lb.append(direction(ratings[b]))
    return dict(sorted(shared.items()))


def pairwise_kappas(table: Table) -> dict[tuple[str, str], tuple[float, int]]:
    """Cohen's kappa on the directions for every pair of annotators: ``{(a, b): (kappa, shared comparisons)}``
    (a < b by name; pairs that share no comparison are absent)."""
    return {pair: (cohen_kappa(la, lb), len(la)) for pair, (la, lb) in _shared_directions(table).items()}


def pair_agreement(table: Table) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(a, b): (comparisons where a and b give the same direction, comparisons both judged)}``."""
    shared = _shared_directions(table)
    return {pair: (sum(x == y for x, y in zip(la, lb)), len(la)) for pair, (la, lb) in shared.items()}


def table_alpha(table: Table, *, level: Level = "nominal") -> float:
    """Krippendorff's alpha of a table: directions for nominal, the five-level values for ordinal/interval."""
    if level == "nominal":
        units = [[direction(v) for v in r.values()] for r in table.values()]
    else:
        units = [list(r.values()) for r in table.values()]
    if not any(len(u) >= 2 for u in units):
        return math.nan
    return krippendorff_alpha(units, level=level)


# ------------------------------------------------------------------------------------------ majority
def majority(values: Sequence[int]) -> int | None:
    """The direction most values share (+1, 0 or -1), or None when two directions tie for the most votes."""
    if not values:
        return None
    counts = Counter(direction(v) for v in values).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def agreement_with_majority(table: Table) -> dict[str, tuple[int, int]]:
    """Per annotator ``(agreeing, compared)``: on every comparison where the *other* annotators have a strict
    majority direction (leave-one-out, so nobody is compared with a majority they are part of), whether the
    annotator's direction equals it. With two annotators this is their raw agreement."""
    out: dict[str, list[int]] = {}
    for ratings in table.values():
        for name, value in ratings.items():
            others = majority([v for a, v in ratings.items() if a != name])
            if others is None:
                continue
            counts = out.setdefault(name, [0, 0])
            counts[0] += direction(value) == others
            counts[1] += 1
    return {name: (k, n) for name, (k, n) in sorted(out.items())}


def wilson_interval(k: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% for z = 1.96); (nan, nan) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def flag_annotators(
    pairs: Mapping[tuple[str, str], tuple[int, int]], *, min_units: int = MIN_UNITS_TO_FLAG
) -> dict[str, str]:
    """Annotators far below the rest: ``{name: reason}``, from ``pair_agreement``'s counts.

    An annotator's agreement is pooled over every other annotator they share comparisons with; the rest's is
    pooled over the pairs of *other* annotators. An annotator with at least ``min_units`` shared comparisons is
    flagged when the upper end of the 95% Wilson interval of their agreement (treating shared comparisons as
    independent) lies below the rest's: below the others by more than their own sampling noise explains, so a few
    unlucky items flag nobody. Pairwise rather than against the majority: with three annotators and one of them
    careless, the two careful ones have no majority of others to agree with, yet agree with each other. With two
    annotators nobody is flagged (nothing says which of them is off).
    """
    names = sorted({name for pair in pairs for name in pair})
    flags = {}
    for name in names:
        k = sum(c[0] for pair, c in pairs.items() if name in pair)
        n = sum(c[1] for pair, c in pairs.items() if name in pair)
        rest_k = sum(c[0] for pair, c in pairs.items() if name not in pair)
        rest_n = sum(c[1] for pair, c in pairs.items() if name not in pair)
        if n < min_units or rest_n == 0:
            continue
        rest = rest_k / rest_n
        upper = wilson_interval(k, n)[1]
        if upper < rest:
            flags[name] = (
                f"agrees with the others on {k}/{n} = {k / n:.0%} of shared comparisons (95% upper bound "
                f"{upper:.0%}) vs {rest:.0%} among the other annotators"
            )
    return flags


# --------------------------------------------------------------------------------------------- model
def model_agreement(table: Table, model: Mapping[Unit, float]) -> dict[str, tuple[int, int]]:
    """How often the reward model orders a comparison as people do: ``{"majority": (agreeing, compared),
    annotator: (agreeing, compared), ...}``. ``model[unit]`` is r_i - r_j; a comparison counts only where the
    people's direction (the majority's, or that annotator's) is not a tie, since the model never ties."""
    out: dict[str, list[int]] = {"majority": [0, 0]}
    for unit, ratings in table.items():
        if unit not in model:
            continue
        m = direction(model[unit])
        maj = majority(list(ratings.values()))
        if maj is not None and maj != 0:
            out["majority"][0] += m == maj
            out["majority"][1] += 1
        for name, value in ratings.items():
            if direction(value) != 0:
                counts = out.setdefault(name, [0, 0])
                counts[0] += m == direction(value)
                counts[1] += 1
    return {name: (k, n) for name, (k, n) in out.items()}


def human_ceiling(table: Table) -> tuple[int, int]:
    """People's agreement with the majority of the *others* on the comparisons the model is scored on (majority
    not a tie, the annotator's own value not a tie): the level a model that judges like a typical annotator reaches.
    Summed over annotators: ``(agreeing, compared)``."""
    agree = total = 0
    for ratings in table.values():
        for name, value in ratings.items():
            others = majority([v for a, v in ratings.items() if a != name])
            if others is None or others == 0 or direction(value) == 0:
                continue
            agree += direction(value) == others
            total += 1
    return agree, total


# ----------------------------------------------------------------------------------------- bootstrap
Statistic = Callable[[Table, Mapping[Unit, float]], float]  # (table, model reward differences) -> value


def bootstrap_interval(
    table: Table,
    statistic: Statistic,
    *,
    model: Mapping[Unit, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(sample, sample_model)`` over ``n_boot`` resamples of the table's *items*
    (with replacement). An item drawn twice counts twice: each draw gets its own item id in the sample, and
    ``sample_model`` carries the model's values under the same ids. Resamples where the statistic is NaN are left
    out; (nan, nan) if all are."""
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level}")
    model = model or {}
    by_item: dict[int, list[Unit]] = {}
    for unit in table:
        by_item.setdefault(unit[0], []).append(unit)
    items = sorted(by_item)
    if not items:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        sample: dict[Unit, Mapping[str, int]] = {}
        sample_model: dict[Unit, float] = {}
        for draw, pick in enumerate(rng.integers(0, len(items), size=len(items))):
            for unit in by_item[items[pick]]:
                key = (draw, unit[1], unit[2])
                sample[key] = table[unit]
                if unit in model:
                    sample_model[key] = model[unit]
        value = statistic(sample, sample_model)
        if not math.isnan(value):
            stats.append(value)
    if not stats:
        return math.nan, math.nan
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def share(counts: tuple[int, int]) -> float:
    """k / n of an ``(agreeing, compared)`` count; NaN for n = 0."""
    k, n = counts
    return k / n if n else math.nan


@dataclass
class AgreementSummary:
    """Everything the admin page and ``raw-rm label report`` show; ``to_dict()`` is its JSON form."""

    n_items: int  # items with at least one comparison judged by two or more annotators
    n_comparisons: int  # comparisons judged by two or more annotators
    raw_agreement: float
    raw_agreement_ci: tuple[float, float]
    alpha_nominal: float
    alpha_nominal_ci: tuple[float, float]
    alpha_ordinal: float
    kappas: dict[tuple[str, str], tuple[float, int]]
    pair_agreement: dict[tuple[str, str], tuple[int, int]]  # (same direction, shared comparisons) per annotator pair
    with_majority: dict[str, tuple[int, int]]
    flags: dict[str, str]
    per_item: dict[int, float]  # item -> mean unit agreement over its comparisons with >= 2 values
    model: dict[str, tuple[int, int]] | None  # model_agreement, None without model rewards
    model_ci: tuple[float, float] | None  # bootstrap interval of the model's agreement with the majority
    ceiling: tuple[int, int] | None  # human_ceiling on the same comparisons
    ceiling_ci: tuple[float, float] | None

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["kappas"] = [
            {"a": a, "b": b, "kappa": k, "n": n, "agree": self.pair_agreement[(a, b)][0]}
            for (a, b), (k, n) in self.kappas.items()
        ]
        out.pop("pair_agreement")
        out["with_majority"] = {
            a: {"agree": k, "n": n, "share": share((k, n)), "ci": wilson_interval(k, n)}
            for a, (k, n) in self.with_majority.items()
        }
        if self.model is not None:
            out["model"] = {a: {"agree": k, "n": n, "share": share((k, n))} for a, (k, n) in self.model.items()}
        if self.ceiling is not None:
            out["ceiling"] = {"agree": self.ceiling[0], "n": self.ceiling[1], "share": share(self.ceiling)}
        return _nan_to_none(out)


def _nan_to_none(value):
    """JSON has no NaN: undefined statistics become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def summarise(
    table: Table, model: Mapping[Unit, float] | None = None, *, n_boot: int = 1000, seed: int = 0
) -> AgreementSummary:
    """All statistics of a table (and of a model's reward differences on its comparisons, when given)."""
    multi = {u: r for u, r in table.items() if len(r) >= 2}
    per_item: dict[int, list[float]] = {}
    for unit, ratings in multi.items():
        per_item.setdefault(unit[0], []).append(unit_agreement(list(ratings.values())))
    with_majority = agreement_with_majority(table)
    summary = AgreementSummary(
        n_items=len(per_item),
        n_comparisons=len(multi),
        raw_agreement=raw_agreement(multi)[0],
        raw_agreement_ci=bootstrap_interval(multi, lambda t, m: raw_agreement(t)[0], n_boot=n_boot, seed=seed),
        alpha_nominal=table_alpha(multi),
        alpha_nominal_ci=bootstrap_interval(multi, lambda t, m: table_alpha(t), n_boot=n_boot, seed=seed),
        alpha_ordinal=table_alpha(multi, level="ordinal"),
        kappas=pairwise_kappas(multi),
        pair_agreement=pair_agreement(multi),
        with_majority=with_majority,
        flags=flag_annotators(pair_agreement(multi)),
        per_item={item: float(np.mean(v)) for item, v in sorted(per_item.items())},
        model=None,
        model_ci=None,
        ceiling=None,
        ceiling_ci=None,
    )
    if model:
        # Per annotator on everything they judged; the majority only where two or more people judged, as the ceiling.
        summary.model = {**model_agreement(table, model), "majority": model_agreement(multi, model)["majority"]}
        summary.model_ci = bootstrap_interval(
            multi, lambda t, m: share(model_agreement(t, m)["majority"]), model=model, n_boot=n_boot, seed=seed
        )
        summary.ceiling = human_ceiling(multi)
        summary.ceiling_ci = bootstrap_interval(multi, lambda t, m: share(human_ceiling(t)), n_boot=n_boot, seed=seed)
    return summary
