"""Agreement statistics against values computed by hand on textbook examples."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raw_rm.label.agreement import (
    agreement_with_majority,
    bootstrap_interval,
    cohen_kappa,
    flag_annotators,
    human_ceiling,
    krippendorff_alpha,
    majority,
    model_agreement,
    pair_agreement,
    pairwise_kappas,
    raw_agreement,
    summarise,
    table_alpha,
    unit_agreement,
    wilson_interval,
)


def _labels(counts: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    a, b = [], []
    for (x, y), n in counts.items():
        a += [x] * n
        b += [y] * n
    return a, b


def test_cohen_kappa_wikipedia_example() -> None:
    # Wikipedia "Cohen's kappa", simple example: 50 grant proposals, A and B both say yes on 20, A yes / B no on 5,
    # A no / B yes on 10, both no on 15. p_o = (20 + 15) / 50 = 0.7. A says yes 25/50 = 0.5, B says yes 30/50 = 0.6,
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5. kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    a, b = _labels({("y", "y"): 20, ("y", "n"): 5, ("n", "y"): 10, ("n", "n"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_same_observed_agreement_different_marginals() -> None:
    # Wikipedia "Cohen's kappa", same percentages but different numbers, case 1 of 100 items: 45 yes/yes, 15
    # yes/no, 25 no/yes, 15 no/no. p_o = 0.60; A yes 0.60, B yes 0.70: p_e = 0.6*0.7 + 0.4*0.3 = 0.54;
    # kappa = 0.06 / 0.46 = 0.1304.
    a, b = _labels({("y", "y"): 45, ("y", "n"): 15, ("n", "y"): 25, ("n", "n"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.06 / 0.46)


def test_cohen_kappa_undefined_and_errors() -> None:
    assert math.isnan(cohen_kappa(["y"] * 4, ["y"] * 4))  # p_e = 1: no chance-corrected agreement exists
    assert cohen_kappa(["y", "n"], ["n", "y"]) == pytest.approx(-1.0)  # p_o 0, p_e 0.5
    with pytest.raises(ValueError, match=r"^cohen_kappa: the raters labelled 2 and 1 units; expected the same units$"):
        cohen_kappa(["y", "n"], ["y"])


# Krippendorff (2011) "Computing Krippendorff's alpha-reliability", example C: four observers, twelve units,
# values 1..5, missing values absent.
#   unit:  1  2  3  4  5  6  7  8  9 10 11 12
#   A:     1  2  3  3  2  1  4  1  2  .  .  .
#   B:     1  2  3  3  2  2  4  1  2  5  .  3
#   C:     .  3  3  3  2  3  4  2  2  5  1  .
#   D:     1  2  3  3  2  4  4  1  2  5  1  .
KRIPPENDORFF_C = [
    [1, 1, 1],
    [2, 2, 3, 2],
    [3, 3, 3, 3],
    [3, 3, 3, 3],
    [2, 2, 2, 2],
    [1, 2, 3, 4],
    [4, 4, 4, 4],
    [1, 1, 2, 1],
    [2, 2, 2, 2],
    [5, 5, 5],
    [1, 1],
    [3],
]


def test_krippendorff_alpha_nominal_by_hand() -> None:
    # Unit 12 has one value: unpairable, left out; n = 3 + 8*4 + 3 + 2 = 40 pairable values.
    # Observed disagreement: each unit adds (ordered pairs of different values) / (m_u - 1):
    #   unit 2 {2,2,2,3}: 2*3*1/3 = 2; unit 6 {1,2,3,4}: 4*3/3 = 4; unit 8 {1,1,1,2}: 2*3*1/3 = 2; others 0.
    #   D_o = 8 / 40 = 0.2.
    # Value totals n_c: 1 -> 9, 2 -> 13, 3 -> 10, 4 -> 5, 5 -> 3 (sum 40).
    #   D_e = (n^2 - sum n_c^2) / (n (n - 1)) = (1600 - 384) / 1560 = 0.779487...
    # alpha = 1 - 0.2 / 0.779487 = 0.743421 (the paper: 0.743).
    assert krippendorff_alpha(KRIPPENDORFF_C, level="nominal") == pytest.approx(1 - 0.2 / (1216 / 1560))
    assert round(krippendorff_alpha(KRIPPENDORFF_C, level="nominal"), 3) == 0.743


def test_krippendorff_alpha_ordinal_and_interval_match_the_paper() -> None:
    # The same example's published values: ordinal 0.815, interval 0.849.
    assert round(krippendorff_alpha(KRIPPENDORFF_C, level="ordinal"), 3) == 0.815
    assert round(krippendorff_alpha(KRIPPENDORFF_C, level="interval"), 3) == 0.849


def test_krippendorff_alpha_two_unit_example_by_hand() -> None:
    # Units {1,1} and {1,2}: coincidences o11 = 2, o12 = o21 = 1; n_1 = 3, n_2 = 1, n = 4.
    # interval: d(1,2) = 1: D_o = (1 + 1) / 4 = 0.5; D_e = (3*1 + 1*3) / (4*3) = 0.5 -> alpha = 0.
    # ordinal: d(1,2) = (n_1 + n_2 - (n_1 + n_2)/2)^2 = 4: D_o = 8/4 = 2; D_e = 6*4/12 = 2 -> alpha = 0.
    # Agreement in both units: {1,1}, {2,2}: D_o = 0 -> alpha = 1.
    for level in ("nominal", "ordinal", "interval"):
        assert krippendorff_alpha([[1, 1], [1, 2]], level=level) == pytest.approx(0.0)
        assert krippendorff_alpha([[1, 1], [2, 2]], level=level) == pytest.approx(1.0)


def test_krippendorff_alpha_undefined_and_errors() -> None:
    assert math.isnan(krippendorff_alpha([[1, 1], [1, 1, 1]]))  # no variation: D_e = 0
    with pytest.raises(ValueError, match=r"^krippendorff_alpha: no unit has two or more values$"):
        krippendorff_alpha([[1], [2]])
    with pytest.raises(ValueError, match=r'^level "ratio": unknown; known: nominal, ordinal, interval$'):
        krippendorff_alpha([[1, 2]], level="ratio")


# A small session: comparisons (item, i, j) -> {annotator: value on -2..2}.
TABLE = {
    (1, 0, 1): {"ann": 2, "bob": 1, "cat": 1},  # all say 0 better
    (2, 0, 1): {"ann": -1, "bob": -2, "cat": 1},  # 2 vs 1: majority -1
    (3, 0, 1): {"ann": 1, "bob": 0},  # 1 vs tie: no majority
    (4, 0, 1): {"ann": 0, "bob": 0, "cat": -1},  # majority tie
}


def test_raw_agreement_and_unit_agreement_by_hand() -> None:
    # Annotator pairs per comparison (directions): item 1: 3 of 3 agree; item 2: ann/bob agree, cat with neither: 1
    # of 3; item 3: 0 of 1; item 4: ann/bob agree: 1 of 3. Pooled 5 / 10.
    assert raw_agreement(TABLE) == (0.5, 10)
    assert unit_agreement([2, 1, 1]) == 1.0 and unit_agreement([-1, -2, 1]) == pytest.approx(1 / 3)
    assert unit_agreement([1]) is None


def test_majority_and_leave_one_out_agreement() -> None:
    assert majority([2, 1, -1]) == 1 and majority([1, -1]) is None and majority([0, 0, 1]) == 0
    # Leave-one-out majorities. ann: item 1 others {+,+} -> + (agree); item 2 others {-,+} none; item 3 others {0}
    # -> 0 vs + (disagree); item 4 others {0,-} none. ann 1/2. bob: item 1 agree; item 2 others {-,+} none; item 3
    # others {+} vs 0 disagree; item 4 others {0,-} none -> 1/2. cat: item 1 agree; item 2 others {-,-} vs +
    # disagree; item 4 others {0,0} vs - disagree -> 1/3.
    assert agreement_with_majority(TABLE) == {"ann": (1, 2), "bob": (1, 2), "cat": (1, 3)}


def test_pairwise_kappas_on_directions() -> None:
    # ann vs bob on 4 comparisons: directions ann [+,-,+,0], bob [+,-,0,0]. p_o = 3/4. ann: + 2/4, - 1/4, 0 1/4;
    # bob: + 1/4, - 1/4, 0 2/4. p_e = (2*1 + 1*1 + 1*2) / 16 = 5/16. kappa = (12/16 - 5/16) / (11/16) = 7/11.
    kappas = pairwise_kappas(TABLE)
    assert kappas[("ann", "bob")] == (pytest.approx(7 / 11), 4)
    assert set(kappas) == {("ann", "bob"), ("ann", "cat"), ("bob", "cat")} and kappas[("ann", "cat")][1] == 3


def test_table_alpha_uses_directions_for_nominal_and_levels_for_ordinal() -> None:
    same_direction = {(1, 0, 1): {"a": 2, "b": 1}, (2, 0, 1): {"a": -1, "b": -2}}
    assert table_alpha(same_direction) == pytest.approx(1.0)  # directions agree everywhere
    assert table_alpha(same_direction, level="ordinal") < 1.0  # slight vs clear is a small disagreement
    assert math.isnan(table_alpha({(1, 0, 1): {"a": 1}}))  # nobody else judged it


def test_wilson_interval_by_hand() -> None:
    # 8 of 10, z = 1.96: centre (0.8 + 3.8416/20) / (1 + 3.8416/10) = 0.99208 / 1.38416 = 0.716738; half width
    # 1.96 * sqrt(0.016 + 3.8416/400) / 1.38416 = 1.96 * 0.160012 / 1.38416 = 0.226581 -> (0.490157, 0.943319).
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490157, abs=1e-6) and hi == pytest.approx(0.943319, abs=1e-6)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_flag_annotators_far_below_the_rest() -> None:
    # dan agrees with ann on 2/20 and with bob on 2/20: 4/40 = 10%, Wilson upper bound
    # (0.1 + 0.048) / 1.096 + 1.96 * sqrt(0.1 * 0.9 / 40 + 3.8416 / 6400) / 1.096 = 0.1350 + 0.0955 = 0.2305 (23%),
    # below ann and bob's 18/20 = 90%: flagged. ann: 20/40 = 50% (upper 65%) vs bob/dan 2/20 = 10%: not flagged.
    pairs = {("ann", "bob"): (18, 20), ("ann", "dan"): (2, 20), ("bob", "dan"): (2, 20)}
    assert flag_annotators(pairs) == {
        "dan": "agrees with the others on 4/40 = 10% of shared comparisons (95% upper "
        "bound 23%) vs 90% among the other annotators"
    }
    # eve at 34/40 = 85% (upper 93%) is below 90% too, but within her own noise: not flagged; fay shares only 3
    # comparisons (fewer than 5): never flagged. Two annotators: nothing says which one is off.
    assert flag_annotators({("ann", "bob"): (18, 20), ("ann", "eve"): (17, 20), ("bob", "eve"): (17, 20)}) == {}
    assert flag_annotators({("ann", "bob"): (18, 20), ("ann", "fay"): (0, 3)}) == {}
    assert flag_annotators({("ann", "bob"): (0, 50)}) == {}


def test_pair_agreement_counts() -> None:
    # Directions: ann/bob agree on items 1, 2 and 4 (not 3: + vs tie) -> 3/4; ann/cat agree on item 1 only of
    # 1, 2, 4 -> 1/3; bob/cat likewise 1/3.
    assert pair_agreement(TABLE) == {("ann", "bob"): (3, 4), ("ann", "cat"): (1, 3), ("bob", "cat"): (1, 3)}


def test_model_agreement_and_human_ceiling() -> None:
    # Model differences r_0 - r_1: item 1 +, item 2 +, item 3 -, item 4 -.
    model = {(1, 0, 1): 0.5, (2, 0, 1): 0.3, (3, 0, 1): -1.0, (4, 0, 1): -0.2}
    out = model_agreement(TABLE, model)
    # Majority (non-tie) exists on items 1 (+) and 2 (-): the model agrees on item 1 only.
    assert out["majority"] == (1, 2)
    # Per annotator on their non-tie values: ann + - + (items 1-3): model + + - -> 1/3; bob + - (1, 2): 1/2;
    # cat + + - (1, 2, 4): agrees on 1, 2, 4 -> 3/3.
    assert out["ann"] == (1, 3) and out["bob"] == (1, 2) and out["cat"] == (3, 3)
    # Ceiling: each non-tie value vs the non-tie majority of the others: item 1 all three agree (3/3); item 2 ann
    # others {-,+} none, bob none, cat others {-,-} vs + disagree (0/1); item 3 ann others {0} is a tie: not
    # counted; item 4 cat others {0,0} tie: not counted. 3/4.
    assert human_ceiling(TABLE) == (3, 4)


def test_bootstrap_interval_resamples_items() -> None:
    # Every item has the same agreement (1.0): every resample gives 1.0.
    table = {(i, 0, 1): {"a": 1, "b": 2} for i in range(5)}
    assert bootstrap_interval(table, lambda t, m: raw_agreement(t)[0], n_boot=50) == (1.0, 1.0)
    # Half the items agree, half not: the interval is inside [0, 1], contains 0.5 and is reproducible by seed.
    mixed = {(i, 0, 1): {"a": 1, "b": 1 if i % 2 else -1} for i in range(40)}
    lo, hi = bootstrap_interval(mixed, lambda t, m: raw_agreement(t)[0], n_boot=300, seed=3)
    assert 0.0 < lo < 0.5 < hi < 1.0
    assert (lo, hi) == bootstrap_interval(mixed, lambda t, m: raw_agreement(t)[0], n_boot=300, seed=3)
    # An item drawn twice counts twice: the sample keeps one comparison per draw.
    sizes = []
    bootstrap_interval(
        {(i, 0, 1): {"a": 1, "b": 1} for i in range(3)}, lambda t, m: sizes.append(len(t)) or 0.0, n_boot=20
    )
    assert set(sizes) == {3}


def test_summarise_reports_model_next_to_ceiling() -> None:
    model = {(1, 0, 1): 0.5, (2, 0, 1): 0.3, (3, 0, 1): -1.0, (4, 0, 1): -0.2}
    out = summarise(TABLE, model, n_boot=100).to_dict()
    assert out["raw_agreement"] == 0.5 and out["n_comparisons"] == 4 and out["n_items"] == 4
    assert out["model"]["majority"] == {"agree": 1, "n": 2, "share": 0.5}
    assert out["ceiling"] == {"agree": 3, "n": 4, "share": 0.75}
    assert out["with_majority"]["cat"]["agree"] == 1 and out["with_majority"]["cat"]["n"] == 3
    lo, hi = out["model_ci"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


# ------------------------------------------------------------------------------------------- properties
values = st.integers(min_value=-2, max_value=2)
tables = st.dictionaries(
    st.tuples(st.integers(1, 6), st.just(0), st.just(1)),
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values, min_size=1, max_size=4),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 4), min_size=2, max_size=4), min_size=1, max_size=10),
    st.permutations([1, 2, 3, 4]),
)
def test_nominal_alpha_ignores_the_names_of_the_values(units: list[list[int]], perm: list[int]) -> None:
    relabelled = [[perm[v - 1] for v in u] for u in units]
    a, b = krippendorff_alpha(units), krippendorff_alpha(relabelled)
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from("xyz"), min_size=1, max_size=30).flatmap(
        lambda a: st.tuples(st.just(a), st.lists(st.sampled_from("xyz"), min_size=len(a), max_size=len(a)))
    )
)
def test_cohen_kappa_is_symmetric_and_at_most_one(pair: tuple[list[str], list[str]]) -> None:
    a, b = pair
    k_ab, k_ba = cohen_kappa(a, b), cohen_kappa(b, a)
    assert (math.isnan(k_ab) and math.isnan(k_ba)) or (k_ab == pytest.approx(k_ba) and k_ab <= 1 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(tables)
def test_summary_of_any_table_is_bounded_and_json_ready(table) -> None:
    model = {unit: float(i % 3 - 1) for i, unit in enumerate(table)}
    out = summarise(table, model, n_boot=20)
    share, n = raw_agreement(table)
    assert n == 0 or 0.0 <= share <= 1.0
    assert all(0 <= k <= m for k, m in out.with_majority.values())
    json.dumps(out.to_dict(), allow_nan=False)  # NaN (undefined statistics) became null
