"""How good, how calibrated and how robust a reward model is, on any mix of evaluation sets.

    rm = RewardModelInference("runs/latest/model")
    ev = RewardModelEvaluator(rm, n_boot=1000, progress=True)
    report = ev.run(test_pairs, val_pairs=val_pairs, ood={"helpful": helpful_pairs})
    report.write("runs/latest/eval")        # metrics.json, PNGs, index.html, summary.md

Every distinct (prompt, response) text of a run (clean pairs, validation, OOD sets, probed pairs, groups,
ratings) is collected first and scored once, in chunks through ``inference.batch_predict`` (one progress bar);
everything else reads the evaluator's reward table.

``inference`` is a :class:`raw_rm.inference.RewardModelInference` or any object with
``batch_predict(prompts, responses) -> (N,)`` (tests inject a fake); ``batch_predict_members(prompts,
responses) -> (N, K)`` adds uncertainty metrics when K > 1, and ``metadata.temperature`` is the stored
calibration. All rewards are raw model outputs (not normalised): the temperature divides raw differences,
as in ``RewardModelInference.pair_probability``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from raw_rm import metrics as M
from raw_rm.data.batching import encode
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.eval.probes import PROBE_NAMES, apply_probes
from raw_rm.eval.report import EvalReport
from raw_rm.models import load_model, save_model
from raw_rm.uncertainty import vote_split

logger = logging.getLogger(__name__)
Key = tuple[str, str]  # (prompt, response)


class RewardModelEvaluator:
    """Evaluate one reward model (see the module docstring).

    Args:
        inference: the scorer (``batch_predict``; optionally ``batch_predict_members``, ``metadata``).
        n_boot: bootstrap resamples for accuracy confidence intervals.
        progress: show a tqdm bar while scoring (only on a TTY).
        seed: seeds the bootstrap and the probes.
        n_bins: equal-width bins of calibration error and the reliability diagram.
        n_length_bins, n_margin_bins: equal-count bins of accuracy by length / predicted margin.
        chunk_size: texts per ``batch_predict`` call (progress granularity).
        probe_names: the probes :meth:`probes` runs.
    """

    def __init__(
        self,
        inference: Any,
        *,
        n_boot: int = 1000,
        progress: bool = False,
        seed: int = 0,
        n_bins: int = 15,
        n_length_bins: int = 5,
        n_margin_bins: int = 5,
        chunk_size: int = 256,
        probe_names: Sequence[str] = PROBE_NAMES,
    ) -> None:
        if not callable(getattr(inference, "batch_predict", None)):
            raise TypeError(
                f"inference: expected an object with batch_predict(prompts, responses), got {type(inference).__name__}"
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        self.inference = inference
        self.n_boot = n_boot
        self.progress = progress
        self.seed = seed
        self.n_bins = n_bins
        self.n_length_bins = n_length_bins
        self.n_margin_bins = n_margin_bins
        self.chunk_size = chunk_size
        self.probe_names = tuple(probe_names)
        metadata = getattr(inference, "metadata", None)
        self.temperature = float(getattr(metadata, "temperature", 1.0) or 1.0)  # used for "after" calibration
        self.temperature_source = "model metadata" if self.temperature != 1.0 else "none (T = 1)"
        self.calibration_fit: dict[str, Any] | None = None  # fit_calibration's cross-fit figures
        self.results: dict[str, dict[str, Any]] = {}  # evaluate_pairs results by set name
        self.arrays: dict[str, dict[str, np.ndarray]] = {}  # per set: what the plots need
        self._rewards: dict[Key, float] = {}
        self._members: dict[Key, np.ndarray] = {}
        self._aspects: dict[Key, np.ndarray] = {}
        self._has_members: bool | None = None if callable(getattr(inference, "batch_predict_members", None)) else False
        self.n_scored = 0  # distinct texts sent to the model

    # ------------------------------------------------------------------------------------ scoring
    def prefetch(self, keys: Iterable[Key]) -> None:
        """Score every (prompt, response) not scored yet, once, in chunks; shows progress and logs the rate."""
        missing = list(dict.fromkeys(k for k in keys if k not in self._rewards))
        if not missing:
            return
        # Length-sorted chunks: batch_predict sorts within a call, so sorting all texts first keeps every
        # batch of similar length (little padding) across chunk boundaries too.
        missing.sort(key=lambda k: len(k[0]) + len(k[1]))
        bar = None
        if self.progress and sys.stderr.isatty():
            bar = tqdm(total=len(missing), desc="scoring", unit="text", dynamic_ncols=True)
        start = last_log = time.perf_counter()
        for lo in range(0, len(missing), self.chunk_size):
            chunk = missing[lo : lo + self.chunk_size]
            self._score_chunk(chunk)
            if bar is not None:
                bar.update(len(chunk))
            elif time.perf_counter() - last_log > 30 and lo + len(chunk) < len(missing):
                last_log = time.perf_counter()  # without a TTY: a log line every 30 s instead of a bar
                done = lo + len(chunk)
                logger.info("scored %d / %d texts (%.1f texts/s)", done, len(missing), done / (last_log - start))
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        self.n_scored += len(missing)
        logger.info(
            "scored %d distinct texts in %.1f s (%.1f texts/s)",
            len(missing),
            seconds,
            len(missing) / max(seconds, 1e-9),
        )

    def _score_chunk(self, chunk: list[Key]) -> None:
        prompts, responses = [k[0] for k in chunk], [k[1] for k in chunk]
        rewards = np.asarray(self.inference.batch_predict(prompts, responses), dtype=np.float64).reshape(-1)
        assert rewards.shape == (len(chunk),), f"batch_predict returned {rewards.shape} for {len(chunk)} texts"
        if self._has_members is not False:
            # RewardModelInference caches what batch_predict just scored, so this is a lookup, not a 2nd forward.
            members = np.asarray(self.inference.batch_predict_members(prompts, responses), dtype=np.float64)
            members = members.reshape(len(chunk), -1)
            if self._has_members is None:
                self._has_members = members.shape[1] > 1
            if self._has_members:
                self._members.update(zip(chunk, members))
        self._rewards.update(zip(chunk, rewards.tolist()))

    @property
    def has_members(self) -> bool:
        """Whether the model gives several rewards per text (ensemble / multi-head); known after scoring."""
        return bool(self._has_members)

    def rewards(self, keys: Sequence[Key]) -> np.ndarray:
        """Rewards (N,) of ``keys`` (scoring those not seen yet)."""
        self.prefetch(keys)
        return np.array([self._rewards[k] for k in keys], dtype=np.float64)

    def pair_rewards(self, pairs: Sequence[PreferencePair]) -> tuple[np.ndarray, np.ndarray]:
        """(chosen rewards (N,), rejected rewards (N,))."""
        keys = _pair_keys(pairs)
        r = self.rewards(keys)
        return r[0::2], r[1::2]

    @property
    def aspect_names(self) -> list[str]:
        """The model's named aspects (multi-objective models), else []."""
        return list(getattr(getattr(self.inference, "metadata", None), "aspects", None) or [])

    def aspect_rewards(self, keys: Sequence[Key]) -> np.ndarray:
        """Per-aspect rewards (N, A) of a multi-objective model, in ``aspect_names`` order.

        ``RewardModelInference`` returns only the combined reward, so this runs the model's forward on the
        distinct texts not seen yet (only groups and ratings use it, a small share of an evaluation).

        Raises:
            ValueError: the model has no aspects, or the inference object exposes no model/tokenizer.
        """
        names = self.aspect_names
        model, tokenizer = getattr(self.inference, "model", None), getattr(self.inference, "tokenizer", None)
        if not names or model is None or tokenizer is None:
            raise ValueError("aspect_rewards: the model has no named aspects (only multi_objective models do)")
        missing = list(dict.fromkeys(k for k in keys if k not in self._aspects))
        if missing:
            batch = int(getattr(self.inference, "batch_size", 32))
            max_len = int(getattr(self.inference, "max_len_tokens", 512))
            with torch.no_grad():
                for lo in range(0, len(missing), batch):
                    chunk = missing[lo : lo + batch]
                    enc = encode(
                        tokenizer,
                        [k[0] for k in chunk],
                        [k[1] for k in chunk],
                        max_len_tokens=max_len,
                        input_kind=model.input_kind,
                    )
                    out = model(**{k: v.to(model.device) for k, v in enc.features.items()})
                    assert out.aspects is not None, f"{type(model).__name__} has aspects {names} but returned none"
                    self._aspects.update(zip(chunk, out.aspects.float().cpu().numpy().astype(np.float64)))
        return np.stack([self._aspects[k] for k in keys])

    # ----------------------------------------------------------------------------------- calibration
    def fit_calibration(self, val_pairs: Sequence[PreferencePair], *, save: bool = False) -> float:
        """Fit the temperature T on ``val_pairs`` by minimising the NLL of σ(Δ / T), and use it only if it helps.

        A T fitted on few pairs can make held-out NLL worse. T is therefore cross-fitted
        (:func:`raw_rm.metrics.cross_fit_temperature`: each fold scored at the T fitted on the others) and
        adopted only when that held-out NLL is lower than the NLL at the current temperature (the stored one, or
        1); otherwise the current T stays, and with ``save`` nothing is written, which is logged. With ``save``
        an adopted T goes into the model's metadata (``inference.metadata.temperature``) and, for a model opened
        from a local directory, into that directory's saved metadata. ``self.calibration_fit`` keeps the
        cross-fit's figures (T, its bootstrap interval, both NLLs, ``improves``, ``stored``).

        Raises:
            ValueError: no validation pairs.
        """
        if not val_pairs:
            raise ValueError("fit_calibration: no validation pairs (give --calibrate-on FILE or --val-fraction > 0)")
        chosen, rejected = self.pair_rewards(val_pairs)
        delta = chosen - rejected
        current = self.temperature
        if len(val_pairs) < 2:
            logger.warning(
                "fit_calibration: 1 calibration pair cannot show whether a temperature helps; keeping T = %.4g", current
            )
            self.calibration_fit = {"n": 1, "current": current, "improves": False, "stored": False}
            return self.temperature
        fit = M.cross_fit_temperature(delta, current=current, folds=min(5, len(val_pairs)), seed=self.seed)
        fitted = fit["temperature"]
        if not 0.0101 < fitted < 99.0:
            logger.warning(
                "temperature %.4g is at the bound of its search range (0.01, 100): the validation "
                "pairs are (nearly) separable or the rewards carry no signal",
                fitted,
            )
        if fit["improves"]:
            self.temperature = fitted
            self.temperature_source = f"{len(val_pairs)} validation pairs, cross-fitted"
            logger.info(
                "fitted temperature T = %.4f [%.3f, %.3f] on %d validation pairs: cross-fitted NLL %.4f "
                "< %.4f at T = %.4g",
                fitted,
                fit["ci_low"],
                fit["ci_high"],
                len(val_pairs),
                fit["nll_cross_fitted"],
                fit["nll_current"],
                current,
            )
        else:
            self.temperature_source += (
                f"; T = {fitted:.3f} fitted on {len(val_pairs)} pairs rejected (held-out "
                f"NLL {fit['nll_cross_fitted']:.4f} >= {fit['nll_current']:.4f})"
            )
            logger.warning(
                "temperature T = %.4f [%.3f, %.3f] fitted on %d validation pairs does not improve "
                "held-out NLL (cross-fitted %.4f >= %.4f at T = %.4g): keeping T = %.4g%s",
                fitted,
                fit["ci_low"],
                fit["ci_high"],
                len(val_pairs),
                fit["nll_cross_fitted"],
                fit["nll_current"],
                current,
                current,
                " and not storing it" if save else "",
            )
        fit["stored"] = bool(save and fit["improves"])
        self.calibration_fit = fit
        if fit["stored"]:
            save_temperature(self.inference, self.temperature)
        return self.temperature

    # ----------------------------------------------------------------------------------- pairs
    def evaluate_pairs(self, pairs: Sequence[PreferencePair], name: str) -> dict[str, Any]:
        """Accuracy (+ bootstrap CI, tie rate), calibration before/after T, accuracy by length and margin bins,
        reward statistics and the reward-length correlation of one set of pairs. Stored in ``results[name]``.

        Raises:
            ValueError: an empty set.
        """
        if not pairs:
            raise ValueError(f"evaluate_pairs('{name}'): no pairs")
        chosen, rejected = self.pair_rewards(pairs)
        delta = chosen - rejected
        acc = M.preference_accuracy(chosen, rejected, n_boot=self.n_boot, seed=self.seed)
        length = np.array([(len(p.chosen) + len(p.rejected)) / 2 for p in pairs], dtype=np.float64)
        correct = delta > 0
        result: dict[str, Any] = {
            "n_pairs": len(pairs),
            **{k: acc[k] for k in ("accuracy", "ci_low", "ci_high", "tie_rate")},
            "calibration": self._calibration(delta),
            "by_length": _accuracy_bins(length, correct, self.n_length_bins),
            "by_length_difference": _accuracy_by_length_difference(pairs, correct),
            "by_margin": _accuracy_bins(np.abs(delta), correct, self.n_margin_bins),
            "rewards": {
                "chosen": _stats(chosen),
                "rejected": _stats(rejected),
                "margin_mean": float(delta.mean()),
                "margin_std": float(delta.std()),
            },
            "length_correlation": self.length_correlation(pairs),
            "length_bias": M.length_bias(
                chosen,
                rejected,
                [len(p.chosen) for p in pairs],
                [len(p.rejected) for p in pairs],
                n_boot=self.n_boot,
                seed=self.seed,
            ),
        }
        self.results[name] = result
        self.arrays[name] = {"chosen": chosen, "rejected": rejected, "length": length}
        return result

    def _calibration(self, delta: np.ndarray) -> dict[str, Any]:
        before = M.calibration_error(M.pair_probabilities(delta, 1.0), n_bins=self.n_bins)
        after = M.calibration_error(M.pair_probabilities(delta, self.temperature), n_bins=self.n_bins)
        return {
            "temperature": self.temperature,
            "temperature_source": self.temperature_source,
            "n_bins": self.n_bins,
            "before": before,
            "after": after,
        }

    def length_correlation(self, pairs: Sequence[PreferencePair]) -> float:
        """Spearman ρ of reward and response length (characters) over the distinct responses of ``pairs``."""
        keys = list(dict.fromkeys(_pair_keys(pairs)))
        rewards = self.rewards(keys)
        lengths = np.array([len(r) for _, r in keys], dtype=np.float64)
        return float(M.ranking_correlation(rewards, lengths)["spearman_pooled"])

    # ----------------------------------------------------------------------------------- groups, ratings
    def evaluate_groups(self, groups: Sequence[RankedGroup]) -> dict[str, Any]:
        """Spearman / Kendall between rewards and human ranks, per group (mean) and pooled; for a multi-objective
        model also per aspect head (``aspects``)."""
        if not groups:
            raise ValueError("evaluate_groups: no groups")
        keys = [(g.prompt, r) for g in groups for r in g.responses]
        rewards = self.rewards(keys)
        ranks = np.array([rk for g in groups for rk in g.ranks], dtype=np.float64)
        ids = np.array([i for i, g in enumerate(groups) for _ in g.responses])
        corr = M.ranking_correlation(rewards, ranks, ids, target_kind="rank")
        top1 = [int(np.argmax(rewards[ids == i])) for i in range(len(groups))]
        out: dict[str, Any] = {
            "n_groups": len(groups),
            "n_responses": len(keys),
            "spearman_mean": corr["spearman"],
            "kendall_mean": corr["kendall"],
            "spearman_pooled": corr["spearman_pooled"],
            "kendall_pooled": corr["kendall_pooled"],
            "n_groups_used": corr["n_groups"],
            "n_groups_skipped": corr["n_skipped"],
            "top1_accuracy": float(np.mean([g.ranks[t] == min(g.ranks) for g, t in zip(groups, top1)])),
        }
        if self.aspect_names:
            per_aspect = self.aspect_rewards(keys)
            out["aspects"] = {}
            for j, aspect in enumerate(self.aspect_names):
                c = M.ranking_correlation(per_aspect[:, j], ranks, ids, target_kind="rank")
                out["aspects"][aspect] = {
                    "spearman_mean": c["spearman"],
                    "kendall_mean": c["kendall"],
                    "spearman_pooled": c["spearman_pooled"],
                }
        return out

    def evaluate_ratings(self, ratings: Sequence[RatedResponse]) -> dict[str, Any]:
        """Spearman ρ between the reward and each human-rated aspect (over the responses rated on it); where a
        multi-objective model has a head of that name, also that head's ρ (``spearman_aspect_head``)."""
        if not ratings:
            raise ValueError("evaluate_ratings: no rated responses")
        rewards = self.rewards([(r.prompt, r.response) for r in ratings])
        aspects = sorted({a for r in ratings for a in r.ratings})
        out: dict[str, Any] = {"n_responses": len(ratings), "aspects": {}}
        for aspect in aspects:
            idx = [i for i, r in enumerate(ratings) if aspect in r.ratings]
            human = np.array([ratings[i].ratings[aspect] for i in idx], dtype=np.float64)
            corr = M.ranking_correlation(rewards[idx], human)
            out["aspects"][aspect] = {
                "spearman": corr["spearman_pooled"],
                "kendall": corr["kendall_pooled"],
                "n": len(idx),
            }
            if aspect in self.aspect_names:  # the model's own head for this aspect
                head = self.aspect_rewards([(ratings[i].prompt, ratings[i].response) for i in idx])
                out["aspects"][aspect]["spearman_aspect_head"] = M.ranking_correlation(
                    head[:, self.aspect_names.index(aspect)], human
                )["spearman_pooled"]
        return out

    # ----------------------------------------------------------------------------------- robustness
    def robustness(
        self,
        in_dist_pairs: Sequence[PreferencePair],
        ood: dict[str, Sequence[PreferencePair]],
        *,
        in_dist_name: str = "in_distribution",
    ) -> dict[str, Any]:
        """Accuracy on each OOD set and its robustness gap: in-distribution accuracy minus OOD accuracy.

        For a model with several members each set also gets ``spread`` (:meth:`member_spread`), so that the
        ensemble's disagreement in and out of distribution can be compared.
        """
        base = self.results.get(in_dist_name) or self.evaluate_pairs(in_dist_pairs, in_dist_name)
        out: dict[str, Any] = {"in_distribution": {"name": in_dist_name, "accuracy": base["accuracy"]}, "ood": {}}
        spread = self.member_spread(in_dist_pairs)
        if spread is not None:
            out["in_distribution"]["spread"] = spread
        for name, pairs in ood.items():
            res = self.results.get(name) or self.evaluate_pairs(pairs, name)
            out["ood"][name] = {
                "accuracy": res["accuracy"],
                "ci_low": res["ci_low"],
                "ci_high": res["ci_high"],
                "n_pairs": res["n_pairs"],
                "gap": base["accuracy"] - res["accuracy"],
            }
            spread = self.member_spread(pairs)
            if spread is not None:
                out["ood"][name]["spread"] = spread
        return out

    def member_spread(self, pairs: Sequence[PreferencePair]) -> dict[str, float] | None:
        """Mean spreads of the members over ``pairs`` (None for a one-member model).

        ``response_std``: std over members of each response's reward (what the server returns as ``std``);
        ``delta_std``: std over members of r_chosen − r_rejected; ``vote_split``: share of members ordering a pair
        against the majority (:func:`raw_rm.uncertainty.vote_split`). The first two shrink with the reward
        differences themselves (members that agree an unfamiliar pair differs little); the vote split does not.
        """

        members = self._pair_member_rewards(pairs)
        if members is None:
            return None
        chosen, rejected = members[0::2], members[1::2]
        return {
            "response_std": float(members.std(axis=1).mean()),
            "delta_std": float((chosen - rejected).std(axis=1).mean()),
            "vote_split": float(vote_split(chosen, rejected).mean()),
        }

    def _pair_member_rewards(self, pairs: Sequence[PreferencePair]) -> np.ndarray | None:
        """Member rewards (2N, K) of ``pairs``, chosen and rejected interleaved; None for a one-member model or no pairs."""
        keys = _pair_keys(pairs)
        self.prefetch(keys)
        if not self.has_members or not keys:
            return None
        return np.stack([self._members[k] for k in keys])

    def probes(self, pairs: Sequence[PreferencePair]) -> dict[str, Any]:
        """Accuracy change of every probe (see :mod:`raw_rm.eval.probes`) against the clean pairs.

        Per probe: ``accuracy`` on the probed pairs (human label unchanged; for ``swap`` it travels with the
        text), ``delta`` = that minus the clean accuracy, ``flip_rate`` = share of clean-correct pairs that
        became wrong. ``swap`` adds ``consistency``: the share of pairs whose predicted preference flips
        exactly (strict preference before, the strict opposite after). ``ci_low``/``ci_high`` bound ``delta``
        (paired bootstrap over the pairs) and ``significant`` is 1.0 when that interval excludes 0.

        A robust model moves by about 0 under every probe, so a probe is judged by the SIZE of its change in
        either direction. The verbosity probe pads the rejected side: a model that rewards length loses
        accuracy, and one that penalises length (HH harmless rewards short refusals) gains it; both are a
        length bias. ``worst`` names the largest |delta|.
        """
        if not pairs:
            raise ValueError("probes: no pairs")
        c, r = self.pair_rewards(pairs)
        clean_correct = c > r
        clean_acc = float(clean_correct.mean())
        probed = apply_probes(list(pairs), names=self.probe_names, seed=self.seed)
        self.prefetch(k for ps in probed.values() for k in _pair_keys(ps))
        out: dict[str, Any] = {"clean_accuracy": clean_acc, "n_pairs": len(pairs), "seed": self.seed, "probes": {}}
        for name, ps in probed.items():
            pc, pr = self.pair_rewards(ps)
            correct = pr > pc if name == "swap" else pc > pr
            change = M.paired_accuracy_change(clean_correct, correct, n_boot=self.n_boot, seed=self.seed)
            res = {
                "accuracy": float(correct.mean()),
                "delta": float(correct.mean()) - clean_acc,
                "ci_low": change["ci_low"],
                "ci_high": change["ci_high"],
                "significant": change["significant"],
                "flip_rate": float(np.mean(~correct[clean_correct])) if clean_correct.any() else math.nan,
            }
            if name == "swap":
                before, after = np.sign(c - r), np.sign(pc - pr)
                res["consistency"] = float(np.mean((before != 0) & (after == -before)))
            out["probes"][name] = res
        out["worst"] = max(out["probes"], key=lambda n: abs(out["probes"][n]["delta"])) if out["probes"] else None
        out["length_correlation"] = self.length_correlation(pairs)
        return out

    # ----------------------------------------------------------------------------------- uncertainty
    def uncertainty_quality(self, pairs: Sequence[PreferencePair]) -> dict[str, Any] | None:
        """For models with several members: is the member spread a good signal of mistakes?

        Spread of a pair = standard deviation over members of r_chosen − r_rejected; a mistake = the mean
        reward does not prefer chosen. Returns the Spearman correlation of spread and mistakes, the AUROC of
        spread for predicting mistakes, and accuracy at coverages 10%..100% (most certain first). None for a
        model with one member.
        """
        members = self._pair_member_rewards(pairs)
        if members is None:
            return None
        member_delta = members[0::2] - members[1::2]  # (N, K)
        c, r = self.pair_rewards(pairs)
        correct = c > r
        spread = member_delta.std(axis=1)
        error = (~correct).astype(np.float64)
        curve = M.accuracy_coverage(spread, correct.astype(np.float64))
        n = len(pairs)
        points = []
        for frac in np.linspace(0.1, 1.0, 10):
            k = max(1, int(round(frac * n)))
            points.append(
                {
                    "coverage": k / n,
                    "accuracy": float(curve["accuracy"][k - 1]),
                    "max_spread": float(curve["threshold"][k - 1]),
                }
            )
        return {
            "n_pairs": n,
            "n_members": int(members.shape[1]),
            "spread_mean": float(spread.mean()),
            "spread_error_spearman": M.spread_error_correlation(spread, error),
            "auroc": M.auroc(spread, error),
            "coverage_area": curve["area"],
            "member_accuracy": [float(np.mean(member_delta[:, j] > 0)) for j in range(member_delta.shape[1])],
            "accuracy_coverage": points,
        }

    def ensemble_vs_members(
        self, fit_pairs: Sequence[PreferencePair], sets: dict[str, Sequence[PreferencePair]]
    ) -> dict[str, Any] | None:
        """For models with several members: the ensemble against each member on every set of ``sets``.

        Every contender (each member, and the mean of the members' rewards that the ensemble serves) fits its own
        temperature on ``fit_pairs`` and is measured at it on each set (:func:`raw_rm.metrics.compare_members`:
        NLL, ECE, accuracy, the best member in hindsight and the member the fit pairs would pick). Each set also
        gets ``ece_floor``: the mean ECE the ensemble would show if its probabilities were exactly right (labels
        drawn from them), i.e. how much of an ECE is the noise of a finite set. None for a one-member model or
        without fit pairs.
        """
        if not fit_pairs:
            return None
        fit = self._pair_member_rewards(fit_pairs)
        if fit is None:
            return None
        fit_delta = fit[0::2] - fit[1::2]  # (N_fit, K), the same for every set
        out: dict[str, Any] = {}
        for name, pairs in sets.items():
            members = self._pair_member_rewards(pairs)
            if members is None:
                continue
            delta = members[0::2] - members[1::2]
            res = M.compare_members(fit_delta, delta, n_bins=self.n_bins)
            probs = M.pair_probabilities(delta.mean(axis=1), res["ensemble"]["temperature"])
            res["ece_floor"] = M.ece_noise_floor(probs, n_bins=self.n_bins, seed=self.seed)
            out[name] = res
        return out

    # ----------------------------------------------------------------------------------- everything
    def run(
        self,
        pairs: Sequence[PreferencePair],
        *,
        name: str = "test",
        val_pairs: Sequence[PreferencePair] | None = None,
        ood: dict[str, Sequence[PreferencePair]] | None = None,
        groups: Sequence[RankedGroup] | None = None,
        ratings: Sequence[RatedResponse] | None = None,
        run_probes: bool = True,
        save_temperature: bool = False,
        model_info: dict[str, Any] | None = None,
    ) -> EvalReport:
        """Score everything once, fit T on ``val_pairs`` (if given), then evaluate, probe and report.

        Raises:
            ValueError: an OOD set named like the main set, or an empty input.
        """
        ood = dict(ood or {})
        if name in ood:
            raise ValueError(f"OOD set name '{name}' is the main set's name; choose another")
        keys: list[Key] = _pair_keys(pairs) + _pair_keys(val_pairs or [])
        for ps in ood.values():
            keys += _pair_keys(ps)
        if run_probes:
            for ps in apply_probes(list(pairs), names=self.probe_names, seed=self.seed).values():
                keys += _pair_keys(ps)
        keys += [(g.prompt, r) for g in groups or [] for r in g.responses]
        keys += [(r.prompt, r.response) for r in ratings or []]
        self.prefetch(keys)

        if val_pairs:
            self.fit_calibration(val_pairs, save=save_temperature)
        self.results.clear()  # results depend on the temperature
        self.evaluate_pairs(pairs, name)
        metrics: dict[str, Any] = {"model": dict(model_info or {}), "main": name, "sets": {}}
        metrics["robustness"] = self.robustness(pairs, ood, in_dist_name=name)
        metrics["sets"].update({n: self.results[n] for n in [name, *ood]})
        if run_probes:
            metrics["probes"] = self.probes(pairs)
        uq = self.uncertainty_quality(pairs)
        if uq is not None:
            metrics["uncertainty"] = uq
        versus = self.ensemble_vs_members(val_pairs or [], {name: pairs, **ood})
        if versus:
            metrics["ensemble_vs_members"] = versus
        if groups:
            metrics["groups"] = self.evaluate_groups(groups)
        if ratings:
            metrics["ratings"] = self.evaluate_ratings(ratings)
        if self.calibration_fit is not None:
            metrics["model"]["calibration_fit"] = dict(self.calibration_fit)
        metrics["model"].update(
            {
                "temperature": self.temperature,
                "temperature_source": self.temperature_source,
                "texts_scored": self.n_scored,
                "n_members": self._n_members(),
            }
        )
        arrays = {n: dict(self.arrays[n]) for n in metrics["sets"]}
        return EvalReport(metrics=metrics, arrays=arrays)

    def _n_members(self) -> int:
        return int(next(iter(self._members.values())).shape[0]) if self._members else 1


# --------------------------------------------------------------------------------------------- helpers
def _pair_keys(pairs: Iterable[PreferencePair]) -> list[Key]:
    """[(prompt, chosen), (prompt, rejected), ...] interleaved: chosen at even, rejected at odd indices."""
    return [k for p in pairs for k in ((p.prompt, p.chosen), (p.prompt, p.rejected))]


def _stats(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}


def _accuracy_bins(values: np.ndarray, correct: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """Accuracy in ``n_bins`` equal-count bins of ``values`` (ascending); equal values never straddle two bins.

    Items are sorted by value and cut into ``n_bins`` nearly equal chunks; a cut that would separate equal
    values moves up to the end of that run of equal values (so there may be fewer bins).
    """
    order = np.argsort(values, kind="stable")
    v, c = values[order], correct[order]
    cuts = [int(round(i * len(v) / n_bins)) for i in range(1, n_bins)]
    bounds, last = [0], 0
    for cut in cuts:
        cut = max(cut, last)
        while 0 < cut < len(v) and v[cut] == v[cut - 1]:
            cut += 1
        if last < cut < len(v):
            bounds.append(cut)
            last = cut
    bounds.append(len(v))
    return [
        {"lo": float(v[a]), "hi": float(v[b - 1]), "n": int(b - a), "accuracy": float(c[a:b].mean())}
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ]


def _accuracy_by_length_difference(pairs: Sequence[PreferencePair], correct: np.ndarray) -> dict[str, Any]:
    """Accuracy where chosen is longer / shorter / as long as rejected (characters): a verbosity-bias check."""
    diff = np.array([len(p.chosen) - len(p.rejected) for p in pairs])
    out = {}
    for label, mask in (("chosen_longer", diff > 0), ("chosen_shorter", diff < 0), ("same_length", diff == 0)):
        out[label] = {"n": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else None}
    return out


def save_temperature(inference: Any, temperature: float) -> Path | None:
    """Store ``temperature`` in the model's metadata and, for a model opened from a local folder, on disk.

    The folder is re-read and re-saved whole (``raw_rm.models`` has no metadata-only writer), from disk rather
    than from memory so that a model quantised for inference is never written over its float weights.
    Returns the folder written, or None when the model has no local folder (an in-memory model).
    """
    metadata = getattr(inference, "metadata", None)
    if metadata is None:
        raise ValueError("save_temperature: the inference object has no metadata to store the temperature in")
    metadata.temperature = float(temperature)
    source = str(getattr(inference, "source", ""))
    if not source or "://" in source or source.startswith(("models:/", "runs:/")) or not Path(source).is_dir():
        logger.warning("temperature %.4f set in memory only: %r is not a local model folder", temperature, source)
        return None

    model, tokenizer = load_model(source)
    model.metadata.temperature = float(temperature)
    save_model(model, tokenizer, source)
    logger.info("saved temperature %.4f into the metadata of %s", temperature, source)
    return Path(source)
