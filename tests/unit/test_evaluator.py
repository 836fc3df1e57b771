"""RewardModelEvaluator against hand-checked values, with a fake scorer injected (and one tiny-bert model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.eval.evaluator import RewardModelEvaluator, _accuracy_bins
from raw_rm.eval.probes import INJECTION_TEXT, VERBOSITY_FILLER


class FakeInference:
    """batch_predict through ``fn(prompt, response)``; records every text it is asked to score."""

    def __init__(self, fn, members_fn=None, temperature=1.0):
        self.fn = fn
        self.members_fn = members_fn
        self.calls: list[list[tuple[str, str]]] = []
        self.metadata = type("Meta", (), {"temperature": temperature})()

    def batch_predict(self, prompts, responses):
        self.calls.append(list(zip(prompts, responses)))
        return np.array([self.fn(p, r) for p, r in zip(prompts, responses)])

    def batch_predict_members(self, prompts, responses):
        if self.members_fn is None:
            return np.array([[self.fn(p, r)] for p, r in zip(prompts, responses)])
        return np.array([self.members_fn(p, r) for p, r in zip(prompts, responses)])


def table_pairs(values):
    """Pairs whose responses are named texts; returns (pairs, reward table)."""
    table, pairs = {}, []
    for i, (c, r) in enumerate(values):
        pairs.append(PreferencePair(prompt=f"p{i}", chosen=f"c{i}" + "x" * i, rejected=f"r{i}"))
        table[(f"p{i}", f"c{i}" + "x" * i)] = c
        table[(f"p{i}", f"r{i}")] = r
    return pairs, table


# rewards (chosen, rejected): right, tie, wrong, right, right
VALUES = [(2.0, 1.0), (1.0, 1.0), (0.0, 3.0), (5.0, 4.0), (1.0, 0.5)]


def test_accuracy_ties_bins_and_rewards_hand_checked():
    pairs, table = table_pairs(VALUES)
    ev = RewardModelEvaluator(FakeInference(lambda p, r: table[(p, r)]), n_boot=200, n_margin_bins=3, n_length_bins=2)
    res = ev.evaluate_pairs(pairs, "test")
    assert res["n_pairs"] == 5
    assert res["accuracy"] == pytest.approx(0.6)
    assert res["tie_rate"] == pytest.approx(0.2)
    assert res["ci_low"] <= 0.6 <= res["ci_high"]
    # |delta| = 1, 0, 3, 1, 0.5 -> sorted 0 (tie), 0.5 (right), 1 (right), 1 (right), 3 (wrong); the cut at 3
    # would split the two 1s, so it moves past them.
    assert res["by_margin"] == [
        {"lo": 0.0, "hi": 0.5, "n": 2, "accuracy": 0.5},
        {"lo": 1.0, "hi": 1.0, "n": 2, "accuracy": 1.0},
        {"lo": 3.0, "hi": 3.0, "n": 1, "accuracy": 0.0},
    ]
    # mean response length (chars): pair i has chosen len 2+i, rejected len 2 -> 2, 2.5, 3, 3.5, 4
    assert res["by_length"] == [
        {"lo": 2.0, "hi": 2.5, "n": 2, "accuracy": 0.5},
        {"lo": 3.0, "hi": 4.0, "n": 3, "accuracy": 2 / 3},
    ]
    assert res["by_length_difference"] == {
        "chosen_longer": {"n": 4, "accuracy": 0.5},
        "chosen_shorter": {"n": 0, "accuracy": None},
        "same_length": {"n": 1, "accuracy": 1.0},
    }
    assert res["rewards"]["chosen"] == {
        "mean": 1.8,
        "std": pytest.approx(np.std([2, 1, 0, 5, 1])),
        "min": 0.0,
        "max": 5.0,
    }
    assert res["rewards"]["margin_mean"] == pytest.approx(-0.1)  # (1 + 0 - 3 + 1 + 0.5) / 5
    # T = 1 and no fitted temperature: before == after, NLL = mean softplus(-delta)
    cal = res["calibration"]
    nll = np.mean([math.log1p(math.exp(-d)) for d in (1, 0, -3, 1, 0.5)])
    assert cal["before"]["nll"] == pytest.approx(nll) and cal["after"] == cal["before"]
    assert cal["temperature_source"] == "none (T = 1)"


def test_accuracy_bins_keep_equal_values_together():
    values = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 3.0])
    correct = np.array([1, 0, 1, 0, 1, 1], dtype=bool)
    assert _accuracy_bins(values, correct, 3) == [
        {"lo": 1.0, "hi": 1.0, "n": 4, "accuracy": 0.5},
        {"lo": 2.0, "hi": 3.0, "n": 2, "accuracy": 1.0},
    ]


def test_temperature_scaling_lowers_nll_and_keeps_accuracy():
    rng = np.random.default_rng(0)

    def simulated(n, offset):  # true P(chosen wins) = sigmoid(z / 4); the model reports sigmoid(z): overconfident
        z = rng.normal(0, 6, size=n)
        human_prefers_first = rng.random(n) < 1 / (1 + np.exp(-z / 4))
        pairs, table = [], {}
        for i in range(n):
            a, b = (z[i], 0.0) if human_prefers_first[i] else (0.0, z[i])
            pairs.append(PreferencePair(prompt=f"q{offset + i}", chosen="A", rejected="B"))
            table[(f"q{offset + i}", "A")], table[(f"q{offset + i}", "B")] = a, b
        return pairs, table

    val, t1 = simulated(2000, 0)
    test, t2 = simulated(2000, 10_000)
    table = {**t1, **t2}
    ev = RewardModelEvaluator(FakeInference(lambda p, r: table[(p, r)]), n_boot=100)
    temperature = ev.fit_calibration(val)
    assert 3.0 < temperature < 5.3, temperature
    res = ev.evaluate_pairs(test, "test")
    before, after = res["calibration"]["before"], res["calibration"]["after"]
    assert after["nll"] < before["nll"] - 0.1
    assert after["ece"] < 0.05 < before["ece"]
    assert after["brier"] < before["brier"]
    assert res["calibration"]["temperature"] == temperature
    assert res["calibration"]["temperature_source"] == "2000 validation pairs, cross-fitted"
    fit = ev.calibration_fit
    assert fit["improves"] and not fit["stored"] and fit["nll_cross_fitted"] < fit["nll_current"]
    assert fit["ci_low"] < temperature < fit["ci_high"]
    # accuracy does not depend on T: the same number as scoring the rewards directly
    c = np.array([table[(p.prompt, "A")] for p in test])
    r = np.array([table[(p.prompt, "B")] for p in test])
    assert res["accuracy"] == pytest.approx(np.mean(c > r))


def test_fit_calibration_without_pairs_says_what_to_give():
    ev = RewardModelEvaluator(FakeInference(lambda p, r: 0.0))
    with pytest.raises(
        ValueError,
        match=r"^fit_calibration: no validation pairs \(give --calibrate-on FILE or "
        r"--val-fraction > 0\)$",
    ):
        ev.fit_calibration([])


def length_reward(prompt, response):
    """A verbosity-biased scorer: reward = number of characters / 100; ties impossible for distinct lengths."""
    return len(response) / 100


def test_probes_on_a_length_biased_scorer():
    pairs = [PreferencePair(prompt=f"p{i}", chosen="a" * (60 + i), rejected="b" * (20 + i)) for i in range(4)]
    pairs.append(PreferencePair(prompt="p4", chosen="short", rejected="much longer rejected"))  # clean: wrong
    ev = RewardModelEvaluator(FakeInference(length_reward), n_boot=50)
    res = ev.probes(pairs)
    assert res["clean_accuracy"] == pytest.approx(0.8)
    p = res["probes"]
    # filler (+2 + len(FILLER) chars) makes every rejected longer than every chosen
    assert len(VERBOSITY_FILLER) > 100
    assert p["verbosity"]["accuracy"] == 0.0 and p["verbosity"]["delta"] == pytest.approx(-0.8)
    assert p["verbosity"]["flip_rate"] == 1.0
    assert len(INJECTION_TEXT) + 22 > 64  # injection also pushes every rejected past every chosen
    assert p["injection"]["delta"] == pytest.approx(-0.8)
    assert p["typos"]["delta"] == 0.0  # transpositions keep the length
    swap = {k: p["swap"][k] for k in ("accuracy", "delta", "flip_rate", "consistency", "significant")}
    assert swap == {"accuracy": 0.8, "delta": 0.0, "flip_rate": 0.0, "consistency": 1.0, "significant": 0.0}
    assert p["verbosity"]["ci_high"] < 0 and p["verbosity"]["significant"] == 1.0
    assert res["worst"] == "verbosity"  # first of the equally worst, in probe order
    assert res["length_correlation"] == pytest.approx(1.0)


def test_swap_consistency_counts_ties_as_not_flipped():
    pairs, table = table_pairs(VALUES)
    ev = RewardModelEvaluator(FakeInference(lambda p, r: table.get((p, r), 0.0)), n_boot=10, probe_names=["swap"])
    res = ev.probes(pairs)
    assert res["probes"]["swap"]["consistency"] == pytest.approx(0.8)  # 1 of 5 pairs is a tie


def test_robustness_gap_per_ood_set():
    pairs, table = table_pairs(VALUES)  # accuracy 0.6
    ood1, t1 = table_pairs([(1.0, 0.0)] * 4)  # accuracy 1.0; prompts renamed below so the texts are new
    ood1 = [PreferencePair(prompt="o" + p.prompt, chosen=p.chosen, rejected=p.rejected) for p in ood1]
    scores = {**table, **{("o" + k[0], k[1]): v for k, v in t1.items()}}
    ood2 = [PreferencePair(prompt="z", chosen="c", rejected="r")] * 1
    scores[("z", "c")], scores[("z", "r")] = 0.0, 1.0  # accuracy 0
    ev = RewardModelEvaluator(FakeInference(lambda p, r: scores[(p, r)]), n_boot=10)
    ev.evaluate_pairs(pairs, "test")
    res = ev.robustness(pairs, {"easy": ood1, "hard": ood2}, in_dist_name="test")
    assert res["in_distribution"] == {"name": "test", "accuracy": pytest.approx(0.6)}
    assert res["ood"]["easy"]["gap"] == pytest.approx(-0.4)
    assert res["ood"]["hard"]["gap"] == pytest.approx(0.6)
    assert res["ood"]["hard"]["n_pairs"] == 1


def test_run_scores_every_distinct_text_once():
    pairs, table = table_pairs(VALUES)
    ood = [PreferencePair(prompt="p0", chosen="c0", rejected="new")]  # (p0, c0) is shared with the main set
    fake = FakeInference(lambda p, r: table.get((p, r), len(r) / 100))
    ev = RewardModelEvaluator(fake, n_boot=20, chunk_size=7)
    report = ev.run(pairs, val_pairs=pairs[:3], ood={"other": ood})
    scored = [k for call in fake.calls for k in call]
    assert len(scored) == len(set(scored))  # nothing scored twice
    # clean (10 texts), validation (a subset of them), OOD (1 new text) and every probed text: each once
    assert ev.n_scored == len(scored) == report.metrics["model"]["texts_scored"]
    assert all(len(call) <= 7 for call in fake.calls)
    assert set(report.metrics["sets"]) == {"test", "other"}
    assert report.metrics["robustness"]["ood"]["other"]["gap"] == pytest.approx(0.6 - 1.0)
    assert "uncertainty" not in report.metrics


def test_run_rejects_ood_named_like_main_set():
    pairs, table = table_pairs(VALUES)
    ev = RewardModelEvaluator(FakeInference(lambda p, r: table[(p, r)]))
    with pytest.raises(ValueError, match="^OOD set name 'test' is the main set's name; choose another$"):
        ev.run(pairs, ood={"test": pairs})


def test_uncertainty_quality_spread_predicts_mistakes():
    # members disagree (spread 2) exactly on the pairs the mean gets wrong
    right = {"c": [1.0, 1.0, 1.0], "r": [0.0, 0.0, 0.0]}
    wrong = {"c": [-2.0, 0.0, 2.0], "r": [0.5, 0.5, 0.5]}
    pairs = [PreferencePair(prompt=f"{'w' if i % 3 == 0 else 'k'}{i}", chosen="c", rejected="r") for i in range(9)]

    def members(p, r):
        return (wrong if p.startswith("w") else right)[r]

    fake = FakeInference(lambda p, r: float(np.mean(members(p, r))), members_fn=members)
    ev = RewardModelEvaluator(fake, n_boot=10)
    res = ev.uncertainty_quality(pairs)
    assert res["n_members"] == 3
    assert res["auroc"] == 1.0
    assert res["spread_error_spearman"] == pytest.approx(1.0)
    points = {round(p["coverage"], 4): p["accuracy"] for p in res["accuracy_coverage"]}
    assert points[round(6 / 9, 4)] == 1.0 and points[1.0] == pytest.approx(6 / 9)
    assert res["member_accuracy"] == [pytest.approx(6 / 9), pytest.approx(6 / 9), 1.0]


def test_member_spread_in_and_out_of_distribution_and_its_report_row():
    from raw_rm.eval.report import headline_rows

    # in-distribution: the members agree on the order, with large differences; OOD: small differences, split votes
    sure = {"c": [2.0, 3.0, 4.0], "r": [0.0, 0.0, 0.0]}
    unsure = {"c": [0.1, -0.1, 0.1], "r": [0.0, 0.0, 0.0]}
    ind = [PreferencePair(prompt=f"i{i}", chosen="c", rejected="r") for i in range(4)]
    ood = [PreferencePair(prompt=f"o{i}", chosen="c", rejected="r") for i in range(4)]

    def members(p, r):
        return (sure if p.startswith("i") else unsure)[r]

    ev = RewardModelEvaluator(FakeInference(lambda p, r: float(np.mean(members(p, r))), members_fn=members), n_boot=10)
    rob = ev.robustness(ind, {"shifted": ood}, in_dist_name="test")
    inside, outside = rob["in_distribution"]["spread"], rob["ood"]["shifted"]["spread"]
    assert inside["vote_split"] == 0.0 and outside["vote_split"] == pytest.approx(1 / 3)
    assert inside["delta_std"] == pytest.approx(
        np.std([2.0, 3.0, 4.0])
    )  # the absolute spread is larger in-distribution
    assert outside["delta_std"] < inside["delta_std"]
    assert inside["response_std"] == pytest.approx(np.std([2.0, 3.0, 4.0]) / 2)  # chosen std 0.816, rejected 0
    report = ev.run(ind, name="test", ood={"shifted": ood}, run_probes=False)
    rows = dict(headline_rows(report.metrics))
    assert rows["uncertainty: vote split, in-distribution vs OOD 'shifted'"].startswith("0.000 vs 0.333 (larger OOD")
    single = RewardModelEvaluator(FakeInference(lambda p, r: 1.0 if r == "c" else 0.0), n_boot=10)
    assert (
        single.member_spread(ind) is None and "spread" not in single.robustness(ind, {"shifted": ood})["ood"]["shifted"]
    )


def test_single_member_model_has_no_uncertainty_section():
    pairs, table = table_pairs(VALUES)
    ev = RewardModelEvaluator(FakeInference(lambda p, r: table[(p, r)]))
    assert ev.uncertainty_quality(pairs) is None


def test_groups_and_ratings_correlations():
    groups = [
        RankedGroup(prompt="g1", responses=["a", "bb", "ccc"], ranks=[2, 1, 0]),  # longer = better
        RankedGroup(prompt="g2", responses=["a", "bb", "ccc"], ranks=[0, 1, 2]),
    ]  # shorter = better
    ev = RewardModelEvaluator(FakeInference(lambda p, r: float(len(r))))
    res = ev.evaluate_groups(groups)
    assert res["spearman_mean"] == pytest.approx(0.0)  # +1 and -1
    assert res["kendall_mean"] == pytest.approx(0.0)
    assert res["top1_accuracy"] == 0.5
    assert res["n_groups_used"] == 2
    ratings = [
        RatedResponse(prompt="q", response="x" * n, ratings={"helpfulness": n, "honesty": -n}) for n in (1, 2, 3, 4)
    ]
    ratings.append(RatedResponse(prompt="q", response="yy", ratings={"helpfulness": 2.0}))
    res = ev.evaluate_ratings(ratings)
    assert res["aspects"]["helpfulness"]["spearman"] == pytest.approx(1.0)
    assert res["aspects"]["helpfulness"]["n"] == 5
    assert res["aspects"]["honesty"] == {"spearman": pytest.approx(-1.0), "kendall": pytest.approx(-1.0), "n": 4}


def test_flat_metrics_carry_the_gate_keys():
    pairs, table = table_pairs(VALUES)
    fake = FakeInference(lambda p, r: table.get((p, r), len(r) / 100), temperature=2.0)
    report = RewardModelEvaluator(fake, n_boot=20).run(pairs)
    flat = report.flat_metrics()
    assert flat["accuracy"] == pytest.approx(0.6)
    assert flat["temperature"] == 2.0  # the model's stored T is the "after" temperature when none is fitted
    assert flat["ece"] == report.metrics["sets"]["test"]["calibration"]["after"]["ece"]
    assert flat["ece_before"] == report.metrics["sets"]["test"]["calibration"]["before"]["ece"]
    assert flat["probe.verbosity"] == report.metrics["probes"]["probes"]["verbosity"]["delta"]
    assert flat["sets.test.tie_rate"] == pytest.approx(0.2)
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())


def test_tiny_bert_model_end_to_end_and_saved_temperature(tmp_path):
    from raw_rm.config import ModelConfig
    from raw_rm.inference import RewardModelInference
    from raw_rm.models import build_model, load_model, save_model

    model, tokenizer = build_model(ModelConfig(backbone="tiny-bert"))
    save_model(model, tokenizer, tmp_path / "m")
    rm = RewardModelInference(tmp_path / "m", max_len_tokens=32)
    pairs = [
        PreferencePair(prompt=f"Question {i}?", chosen=f"Answer number {i}.", rejected=f"No {i}.") for i in range(6)
    ]
    ev = RewardModelEvaluator(rm, n_boot=20)
    report = ev.run(pairs[:4], val_pairs=pairs[4:], save_temperature=True)
    c = rm.batch_predict([p.prompt for p in pairs[:4]], [p.chosen for p in pairs[:4]])
    r = rm.batch_predict([p.prompt for p in pairs[:4]], [p.rejected for p in pairs[:4]])
    assert report.metrics["sets"]["test"]["accuracy"] == pytest.approx(np.mean(c > r))
    assert np.allclose(report.arrays["test"]["chosen"], c)
    temperature = report.metrics["model"]["temperature"]
    reloaded, _ = load_model(tmp_path / "m")
    assert reloaded.metadata.temperature == pytest.approx(temperature)
    assert rm.temperature == pytest.approx(temperature)


def test_multi_objective_aspects_combine_to_the_reward():
    from raw_rm.config import ModelConfig
    from raw_rm.inference import RewardModelInference
    from raw_rm.models import build_model

    cfg = ModelConfig(
        backbone="tiny-bert", arch="multi_objective", aspects=["help", "harm"], aspect_weights=[0.25, 0.75]
    )
    model, tokenizer = build_model(cfg)
    rm = RewardModelInference(model, tokenizer=tokenizer, max_len_tokens=32)
    ev = RewardModelEvaluator(rm, n_boot=10)
    groups = [
        RankedGroup(prompt=f"Q{i}", responses=["one.", "two words.", "three more words."], ranks=[0, 1, 2])
        for i in range(3)
    ]
    keys = [(g.prompt, r) for g in groups for r in g.responses]
    per_aspect = ev.aspect_rewards(keys)
    assert ev.aspect_names == ["help", "harm"] and per_aspect.shape == (9, 2)
    np.testing.assert_allclose(per_aspect @ np.array([0.25, 0.75]), ev.rewards(keys), atol=1e-5)
    res = ev.evaluate_groups(groups)
    assert set(res["aspects"]) == {"help", "harm"}
    ratings = [
        RatedResponse(prompt="Q0", response=r, ratings={"help": float(i)}) for i, r in enumerate(groups[0].responses)
    ]
    out = ev.evaluate_ratings(ratings)["aspects"]["help"]
    from scipy.stats import spearmanr

    assert out["n"] == 3
    assert out["spearman_aspect_head"] == pytest.approx(spearmanr(per_aspect[:3, 0], [0.0, 1.0, 2.0]).statistic)


def test_evaluate_for_gate_feeds_the_gate_and_stores_temperature(tmp_path):
    from raw_rm.config import Config, ModelConfig, apply_overrides
    from raw_rm.eval import evaluate_for_gate
    from raw_rm.models import build_model, load_model, save_model

    model, tokenizer = build_model(ModelConfig(backbone="tiny-bert"))
    save_model(model, tokenizer, tmp_path / "m")
    cfg = apply_overrides(
        Config(), {"data.synthetic.n_prompts": 80, "data.val_fraction": 0.25, "data.max_len_tokens": 32}
    )
    report = evaluate_for_gate(cfg, tmp_path / "m", report_dir=tmp_path / "report")
    written = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert written["sets"]["validation"]["accuracy"] == report.metrics["sets"]["validation"]["accuracy"]
    flat = report.flat_metrics()
    n = report.metrics["sets"]["validation"]["n_pairs"]
    assert flat["accuracy"] == report.metrics["sets"]["validation"]["accuracy"]
    assert flat["ece"] == report.metrics["sets"]["validation"]["calibration"]["after"]["ece"]
    source = report.metrics["sets"]["validation"]["calibration"]["temperature_source"]
    fit = report.metrics["model"]["calibration_fit"]
    assert n >= 2 and fit["n"] >= 2
    # The fitted T is used and stored exactly when its cross-fitted NLL beats T = 1; the report says which.
    assert fit["improves"] == (fit["nll_cross_fitted"] < fit["nll_current"]) and fit["current"] == 1.0
    stored = load_model(tmp_path / "m")[0].metadata.temperature
    if fit["improves"]:
        assert (
            fit["stored"]
            and flat["temperature"] == pytest.approx(fit["temperature"])
            and source.endswith("validation pairs, cross-fitted")
        )
        assert stored == pytest.approx(fit["temperature"])
    else:
        assert not fit["stored"] and flat["temperature"] == 1.0 and stored == 1.0
        assert f"fitted on {fit['n']} pairs rejected (held-out NLL" in source


def test_ensemble_vs_members_on_each_set_with_temperatures_from_the_calibration_pairs():
    from raw_rm.eval.report import headline_rows

    # members = a shared signal + each member's own noise: averaging removes the noise, so the ensemble's NLL is lower
    rng = np.random.default_rng(0)
    signal, noise = {}, {}

    def make(prefix: str, n: int) -> list[PreferencePair]:
        pairs = [PreferencePair(prompt=f"{prefix}{i}", chosen="c", rejected="r") for i in range(n)]
        for p in pairs:
            signal[p.prompt] = rng.normal(1.0, 1.0)
            noise[p.prompt] = rng.normal(0.0, 1.5, size=4)
        return pairs

    def members(p, r):
        return signal[p] + noise[p] if r == "c" else np.zeros(4)

    test, val, ood = make("t", 400), make("v", 300), make("o", 200)
    ev = RewardModelEvaluator(FakeInference(lambda p, r: float(np.mean(members(p, r))), members_fn=members), n_boot=10)
    report = ev.run(test, name="test", val_pairs=val, ood={"shifted": ood}, run_probes=False)
    versus = report.metrics["ensemble_vs_members"]
    assert set(versus) == {"test", "shifted"}
    for c in versus.values():
        assert c["n_fit"] == 300 and len(c["members"]) == 4
        assert c["ensemble"]["nll"] < min(m["nll"] for m in c["members"])
        assert 0 < c["ece_floor"]["mean"] < 0.2 and c["ece_floor"]["std"] > 0
    assert versus["test"]["n_eval"] == 400 and versus["shifted"]["n_eval"] == 200
    rows = dict(headline_rows(report.metrics))
    best = versus["test"]["best_member"]
    assert rows[f"ensemble vs best member on 'test' (member {best}, each at its own T)"].startswith(
        f"NLL {versus['test']['ensemble']['nll']:.4f} vs "
    )
    assert "(lower)" in rows[f"ensemble vs best member on 'test' (member {best}, each at its own T)"]
    assert report.flat_metrics()["ensemble_vs_members.test.ensemble.nll"] == pytest.approx(
        versus["test"]["ensemble"]["nll"]
    )
    without_fit = RewardModelEvaluator(
        FakeInference(lambda p, r: float(np.mean(members(p, r))), members_fn=members), n_boot=10
    )
    assert "ensemble_vs_members" not in without_fit.run(test, name="test", run_probes=False).metrics
    pairs, table = table_pairs(VALUES)
    single = RewardModelEvaluator(FakeInference(lambda p, r: table[(p, r)]), n_boot=10)
    assert single.ensemble_vs_members(pairs, {"test": pairs}) is None


def test_probes_are_judged_by_the_size_of_the_change_either_way():
    # A scorer that PENALISES length: padding the rejected side makes it lose more often, so accuracy rises
    # under the verbosity probe. That gain is a length bias as large as a loss would be, so it is the worst probe.
    pairs = [PreferencePair(prompt=f"p{i}", chosen="a" * (60 + i), rejected="b" * (20 + i)) for i in range(8)]
    pairs += [PreferencePair(prompt=f"q{i}", chosen="a" * (20 + i), rejected="b" * (60 + i)) for i in range(2)]
    ev = RewardModelEvaluator(FakeInference(lambda p, r: -len(r) / 100), n_boot=200, probe_names=["verbosity", "typos"])
    res = ev.probes(pairs)
    assert res["clean_accuracy"] == pytest.approx(0.2)
    assert res["probes"]["verbosity"]["delta"] == pytest.approx(0.8)
    assert res["probes"]["verbosity"]["significant"] == 1.0
    assert res["probes"]["typos"]["delta"] == 0.0 and res["probes"]["typos"]["significant"] == 0.0
    assert res["worst"] == "verbosity"


def test_a_temperature_that_does_not_improve_held_out_nll_is_not_adopted_or_stored(caplog):
    # The model is already calibrated at its stored T = 1 (labels drawn from sigmoid(z)); on 12 pairs a fitted T
    # chases noise and its cross-fitted NLL is worse, so T stays 1 and nothing is saved.
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.0, size=12)
    first = rng.random(12) < 1 / (1 + np.exp(-z))
    table, pairs = {}, []
    for i in range(12):
        a, b = (z[i], 0.0) if first[i] else (0.0, z[i])
        pairs.append(PreferencePair(prompt=f"t{i}", chosen="A", rejected="B"))
        table[(f"t{i}", "A")], table[(f"t{i}", "B")] = a, b
    fake = FakeInference(lambda p, r: table[(p, r)])
    ev = RewardModelEvaluator(fake, n_boot=10)
    with caplog.at_level("WARNING"):
        temperature = ev.fit_calibration(pairs, save=True)
    fit = ev.calibration_fit
    delta = np.array([table[(p.prompt, "A")] - table[(p.prompt, "B")] for p in pairs])
    assert fit["nll_current"] == pytest.approx(float(np.mean(np.logaddexp(0, -delta))))
    assert not fit["improves"] and not fit["stored"], fit
    assert temperature == 1.0 and fake.metadata.temperature == 1.0
    assert "does not improve held-out NLL" in caplog.text and "and not storing it" in caplog.text
    assert ev.temperature_source.startswith("none (T = 1); T = ")
