"""Ensemble vs its best single member: NLL and ECE on held-out HH-RLHF harmless pairs, spread in- vs out-of-distribution.

Setup (one run, same machine, model, data and settings for every contender):
- Data: ../shared/data/hh-rlhf-harmless/pairs.jsonl.gz split by prompt hash (``--val-fraction``) into train and
  held-out; the held-out prompts split again by hash into a calibration half and a test half. OOD:
  ../shared/data/hh-rlhf-helpful/helpful-online.jsonl.gz (first ``--ood-limit`` pairs), never trained on.
- Members: ``--members`` MiniLM ``arch=concat`` models that differ only in ``train.seed`` (the seeds recipe of
  ``raw_rm.train.ensemble``: ``member_configs`` + ``train_member``, the same loop as ``raw-rm train``), trained one
  after another here; ``--bootstrap`` uses bootstrap resamples instead. The ensemble folder is written with
  ``save_ensemble`` and its scores checked against ``load_model(ensemble)`` on a few texts.
- Fairness: every contender (each member, and the ensemble mean of the members' z-scored rewards, which the
  library's ensemble folder serves) fits its own temperature on the SAME calibration half; NLL / ECE (15
  equal-width and 15 equal-mass bins) / Brier / accuracy are then measured on the test half and on OOD with that
  temperature. ``ens_prob_avg`` (members' probabilities at their own temperatures, averaged) is shown for
  comparison. Two "best single members": the one with the lowest test NLL (picked with hindsight, which favours
  the single model: with K members and ~250 test pairs the minimum of K noisy NLLs) and the one a user would ship,
  lowest NLL on the calibration half (validation). Ensemble − best member: paired bootstrap 95% interval over
  pairs (``raw_rm.metrics.compare_calibration``); a verdict says "better"/"WORSE" only when it excludes 0.
- Spread, on the test half vs OOD: the per-response std over members of the z-scored rewards (what the server
  returns as ``std``), the per-pair std of the members' reward differences, and the vote split
  (``raw_rm.uncertainty.vote_split``: share of members ordering a pair against the majority, scale-free); and
  the AUROC of the difference spread for predicting the ensemble's mistakes.

    python benchmarks/ensemble_vs_single.py                          # full run: 5 members, all training pairs, 1 epoch
    python benchmarks/ensemble_vs_single.py --members 3 --train-limit 200 --parallel   # smaller check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from raw_rm import metrics as M
from raw_rm.config import load_config
from raw_rm.data import read_records, split_by_prompt
from raw_rm.eval.gate import calibration_split
from raw_rm.inference import RewardModelInference
from raw_rm.models import load_model
from raw_rm.models.ensemble import save_ensemble
from raw_rm.train.ensemble import member_configs, train_member
from raw_rm.uncertainty import vote_split

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_machine.py
from _machine import machine_facts  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=5, help="ensemble members (5, as in deep ensembles)")
    p.add_argument("--bootstrap", action="store_true")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-len-tokens", type=int, default=256)
    p.add_argument("--val-fraction", type=float, default=0.3)
    p.add_argument("--train-limit", type=int, default=0, help="train on the first N training pairs (0 = all)")
    p.add_argument("--ood-limit", type=int, default=400)
    p.add_argument("--out", default="benchmarks/results/ensemble_vs_single")
    p.add_argument("--calib-limit", type=int, default=0, help="use at most N calibration pairs (0 = all)")
    p.add_argument("--test-limit", type=int, default=0, help="use at most N test pairs (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--n-boot", type=int, default=1000, help="paired bootstrap resamples for the ensemble-vs-member intervals"
    )
    p.add_argument("--parallel", action="store_true", help="train and score each member in its own process at once")
    p.add_argument("--member-index", type=int, default=None, help=argparse.SUPPRESS)  # internal: one member's worker
    return p.parse_args()


def score(model_dir: str, prompts: list[str], texts: list[str], max_len: int) -> np.ndarray:
    rm = RewardModelInference(model_dir, max_len_tokens=max_len, batch_size=32, cache_size=0)
    return rm.batch_predict(prompts, texts)


def pair_eval(
    delta_cal: np.ndarray, delta_test: np.ndarray, delta_ood: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Fit T on the calibration half; metrics and P(chosen ≻ rejected) on test and OOD with that T."""
    t = M.fit_temperature(delta_cal)
    probs = {name: M.pair_probabilities(d, t) for name, d in (("test", delta_test), ("ood", delta_ood))}
    out = {"temperature": t}
    for name, d in (("test", delta_test), ("ood", delta_ood)):
        out.update(summarise(probs[name], name, accuracy=float(np.mean(d > 0))))
    return out, probs


def summarise(probs: np.ndarray, name: str, *, accuracy: float) -> dict[str, float]:
    cal = M.calibration_error(probs)
    return {
        f"{name}_nll": cal["nll"],
        f"{name}_ece": cal["ece"],
        f"{name}_ece_mass": cal["ece_equal_mass"],
        f"{name}_brier": cal["brier"],
        f"{name}_accuracy": accuracy,
    }


def verdict(c: dict[str, float]) -> str:
    """Ensemble (a) vs member (b) from a paired-bootstrap interval of a − b (lower is better)."""
    if c["ci_high"] < 0:
        return "better"
    if c["ci_low"] > 0:
        return "WORSE"
    return f"{'lower' if c['diff'] < 0 else 'NOT lower'}, not significant (interval spans 0)"


def run_member(args, member_cfg, train, calib, prompts, texts, out: Path) -> None:
    """Train one member (the shared loop) and score every evaluation text with it; results go to ``out``."""
    s = time.perf_counter()
    trained = Path(member_cfg.train.output_dir)
    if (trained / "model" / "config.json").exists() and (
        trained / "metrics.json"
    ).exists():  # an interrupted run got this far
        print(f"{trained.name}: reusing the model an earlier run of the same settings trained in {trained}")
        model_dir, metrics = str(trained / "model"), json.loads((trained / "metrics.json").read_text())
    else:
        model_dir, metrics = train_member(member_cfg, records=(train, calib))
    train_s = metrics.get("train_time_s", time.perf_counter() - s)
    s = time.perf_counter()
    i = int(trained.name.split("_")[-1])
    np.save(out / f"member_{i}_scores.npy", score(model_dir, prompts, texts, args.max_len_tokens))
    (out / f"member_{i}.json").write_text(
        json.dumps({"model_dir": model_dir, "metrics": metrics, "train_s": train_s, "score_s": time.perf_counter() - s})
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_before = list(os.getloadavg())
    harmless = SHARED / "hh-rlhf-harmless" / "pairs.jsonl.gz"
    helpful = SHARED / "hh-rlhf-helpful" / "helpful-online.jsonl.gz"
    for f in (harmless, helpful):
        if not f.exists():
            sys.exit(f"missing data file {f}")
    out = Path(args.out).resolve()
    cfg = load_config(
        None,
        [
            f"data.train_path={harmless}",
            f"data.val_fraction={args.val_fraction}",
            f"data.max_len_tokens={args.max_len_tokens}",
            f"train.epochs={args.epochs}",
            f"train.num_threads={args.threads}",
            "train.precision=fp32",
            "train.progress=false",
            f"train.output_dir={out / 'run'}",
            f"ensemble.members={args.members}",
            f"ensemble.bootstrap={str(args.bootstrap).lower()}",
            "mlflow.enabled=false",
            "model.backbone=minilm",
            "model.arch=concat",
            "train.pin_malloc_threshold=false",  # memory is not measured here; the pin only costs time
        ],
    )
    records = read_records(str(harmless)).records
    train, held = split_by_prompt(records, args.val_fraction, cfg.data.split_seed)
    test, calib = calibration_split(held, cfg.eval)  # the pairs the promotion gate would fit T on
    if args.train_limit:
        train = train[: args.train_limit]
    ood = read_records(str(helpful), limit=args.ood_limit).records

    if args.calib_limit:
        calib = calib[: args.calib_limit]
    if args.test_limit:
        test = test[: args.test_limit]
    if args.member_index is None:
        print("machine:", ", ".join(f"{k} {v}" for k, v in machine_facts(threads=args.threads).items()) + ", fp32")
        print(
            f"data: train {len(train)} pairs, calibration {len(calib)}, test {len(test)} (harmless, split by prompt hash); "
            f"OOD {len(ood)} (helpful-online)"
        )
    sets = {"calib": calib, "test": test, "ood": ood}
    prompts = [p.prompt for s in sets.values() for p in s for _ in (0, 1)]
    texts = [t for s in sets.values() for p in s for t in (p.chosen, p.rejected)]
    configs = member_configs(cfg)
    if args.member_index is not None:  # worker: train and score one member, write its results, exit
        run_member(args, configs[args.member_index], train, calib, prompts, texts, out)
        return
    if args.parallel:  # on a shared, oversubscribed machine K processes get K shares of the CPUs
        import subprocess

        procs = [
            subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--member-index", str(i)])
            for i in range(len(configs))
        ]
        if any(p.wait() != 0 for p in procs):
            sys.exit("a member worker failed")
    else:
        for i, mc in enumerate(configs):
            if (out / f"member_{i}.json").exists() and (out / f"member_{i}_scores.npy").exists():
                print(
                    f"member {i}: reusing {out / f'member_{i}.json'} (an earlier run of the same settings into --out)"
                )
                continue
            run_member(args, mc, train, calib, prompts, texts, out)
    done = [json.loads((out / f"member_{i}.json").read_text()) for i in range(len(configs))]
    # the folders the configs name (member_i.json may come from a copy of --out made elsewhere)
    member_dirs, train_s = [str(Path(c.train.output_dir) / "model") for c in configs], [d["train_s"] for d in done]
    for i, d in enumerate(done):
        print(
            f"member {i} (seed {configs[i].train.seed}{', bootstrap' if args.bootstrap else ''}): trained in {d['train_s']:.0f}s, "
            f"{d['metrics'].get('pairs_per_s', float('nan')):.2f} pairs/s, val_accuracy {d['metrics'].get('val_accuracy', float('nan')):.3f}; "
            f"scored {len(texts)} texts in {d['score_s']:.0f}s"
        )
    score_s = sum(d["score_s"] for d in done)
    ens_dir = save_ensemble(
        out / "ensemble", member_dirs, {"members": [{"seed": cfg.train.seed + i} for i in range(len(member_dirs))]}
    )
    raw = np.stack([np.load(out / f"member_{i}_scores.npy") for i in range(len(configs))], axis=1)  # (2N, K)
    metas = [load_model(d)[0].metadata for d in member_dirs]
    z = np.stack(
        [(raw[:, k] - m.reward_mean) / m.reward_std for k, m in enumerate(metas)], axis=1
    )  # as EnsembleRewardModel
    check = RewardModelInference(str(ens_dir), max_len_tokens=args.max_len_tokens).batch_predict_members(
        prompts[:4], texts[:4]
    )
    assert np.allclose(check, z[:4], atol=1e-4), (
        f"ensemble folder scores differ from the members': {np.abs(check - z[:4]).max()}"
    )

    bounds, start = {}, 0
    for name, recs in sets.items():
        bounds[name] = slice(start, start + 2 * len(recs))
        start += 2 * len(recs)

    def deltas(col: np.ndarray) -> dict[str, np.ndarray]:
        return {n: col[b][0::2] - col[b][1::2] for n, b in bounds.items()}

    results, probs = {}, {}
    for k in range(len(member_dirs)):
        d = deltas(raw[:, k])
        results[f"member_{k}"], probs[f"member_{k}"] = pair_eval(d["calib"], d["test"], d["ood"])
    d = deltas(z.mean(1))
    results["ensemble"], probs["ensemble"] = pair_eval(d["calib"], d["test"], d["ood"])  # what the library serves
    # Calibrate-then-pool (for comparison): each member with its own temperature, probabilities averaged.
    probs["ens_prob_avg"] = {
        n: np.mean([probs[f"member_{k}"][n] for k in range(len(member_dirs))], axis=0) for n in ("test", "ood")
    }
    results["ens_prob_avg"] = {
        "temperature": float("nan"),
        **{
            key: v
            for n in ("test", "ood")
            for key, v in summarise(
                probs["ens_prob_avg"][n], n, accuracy=float(np.mean(probs["ens_prob_avg"][n] > 0.5))
            ).items()
        },
    }
    members = [n for n in results if n.startswith("member_")]
    best = min(members, key=lambda n: results[n]["test_nll"])
    for k, n in enumerate(members):  # NLL on the calibration half at its own temperature: what validation shows
        results[n]["calib_nll"] = M.pair_nll(deltas(raw[:, k])["calib"], results[n]["temperature"])
    val_best = min(members, key=lambda n: results[n]["calib_nll"])
    comparison = {
        f"{who}_{n}": M.compare_calibration(probs[who][n], probs[best][n], n_boot=args.n_boot, seed=0)
        for who in ("ensemble", "ens_prob_avg")
        for n in ("test", "ood")
    }
    comparison.update(
        {
            f"ensemble_vs_val_best_{n}": M.compare_calibration(
                probs["ensemble"][n], probs[val_best][n], n_boot=args.n_boot, seed=0
            )
            for n in ("test", "ood")
        }
    )
    spread = {}
    for name in ("test", "ood"):
        za, zb = z[bounds[name]][0::2], z[bounds[name]][1::2]  # (N, K) z-scored member rewards of chosen, rejected
        pair_spread = (za - zb).std(axis=1)
        mistakes = ((za - zb).mean(axis=1) <= 0).astype(np.float64)
        spread[name] = {
            "mean": float(pair_spread.mean()),
            "median": float(np.median(pair_spread)),
            "text_std_mean": float(z[bounds[name]].std(axis=1).mean()),
            "vote_split_mean": float(vote_split(za, zb).mean()),
            "auroc_mistakes": float(M.auroc(pair_spread, mistakes)) if 0 < mistakes.mean() < 1 else float("nan"),
        }

    print(
        f"\nscoring {len(texts)} texts x {len(member_dirs)} members took {score_s:.0f}s; training {sum(train_s):.0f}s"
    )
    report(results, best, val_best, comparison, spread, n_test=len(test), n_ood=len(ood))
    print(
        f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "results": results,
                "best_member": best,
                "val_best_member": val_best,
                "spread": spread,
                "comparison": comparison,
                "train_s": train_s,
                "score_s": score_s,
                "load_before": load_before,
                "load_after": list(os.getloadavg()),
            },
            indent=1,
        )
    )
    print(f"\nwrote {out / 'results.json'} ({time.perf_counter() - t0:.0f}s total)")


def report(results: dict, best: str, val_best: str, comparison: dict, spread: dict, *, n_test: int, n_ood: int) -> None:
    print(
        f"\n{'model':<16} {'T':>6} {'test NLL':>9} {'ECE':>7} {'ECE=m':>7} {'Brier':>7} {'acc':>6} {'OOD NLL':>9} {'ECE':>7} {'ECE=m':>7} {'Brier':>7} {'acc':>6}"
    )
    for name, r in results.items():
        tag = " (best)" if name == best else " (val)" if name == val_best else ""
        print(
            f"{name + tag:<16} {r['temperature']:>6.3f} "
            + " ".join(
                f"{r[f'{n}_nll']:>9.4f} {r[f'{n}_ece']:>7.4f} {r[f'{n}_ece_mass']:>7.4f} {r[f'{n}_brier']:>7.4f} {r[f'{n}_accuracy']:>6.3f}"
                for n in ("test", "ood")
            )
        )
    print(
        "ECE: 15 equal-width bins; ECE=m: 15 equal-mass bins. ensemble = mean of the members' z-scored rewards with one "
        "temperature (the library's EnsembleRewardModel); ens_prob_avg = members' probabilities, each at its own temperature, averaged"
    )
    print(
        f"(best) = lowest test NLL, picked with hindsight; (val) = lowest calibration-half NLL, the member validation would pick"
        f"{' (the same member)' if best == val_best else ''}"
    )
    print(f"\nensemble − member, paired bootstrap 95% interval over pairs (test {n_test}, OOD {n_ood}):")
    rows = [("ensemble", "ensemble", best), ("ens_prob_avg", "ens_prob_avg", best)]
    rows += [("ensemble_vs_val_best", "ensemble", val_best)] if val_best != best else []
    for key_prefix, who, member in rows:
        for n, label in (("test", "held-out"), ("ood", "OOD")):
            c = comparison[f"{key_prefix}_{n}"]
            for key, metric in (("nll", "NLL"), ("ece", "ECE"), ("ece_equal_mass", "ECE equal-mass")):
                m = c[key]
                print(
                    f"  {who:<12} vs {member:<9} {label:<8} {metric:<15} {m['a']:.4f} vs {m['b']:.4f}  diff {m['diff']:+.4f} "
                    f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]  P(lower) {m['p_a_lower']:.2f}: {verdict(m)}"
                )
    picks = [
        ("ensemble", f"best member in hindsight ({best}{', also the validation pick' if val_best == best else ''})")
    ]
    picks += [("ensemble_vs_val_best", f"validation-picked member ({val_best})")] if val_best != best else []
    for key_prefix, who in picks:
        for n, label in (("test", "held-out"), ("ood", "OOD")):
            c = comparison[f"{key_prefix}_{n}"]
            print(
                f"VERDICT {label}, ensemble vs {who}: NLL {verdict(c['nll'])}; ECE {verdict(c['ece'])}; "
                f"ECE equal-mass {verdict(c['ece_equal_mass'])}"
            )
    for key, what in (
        ("text_std_mean", "per-response std over members (the served std)"),
        ("mean", "std over members of the reward differences"),
        ("vote_split_mean", "vote split (members against the majority)"),
    ):
        a, b = spread["test"][key], spread["ood"][key]
        print(
            f"spread, {what}: in-distribution {a:.4f}, OOD {b:.4f} (ratio {b / a:.2f}; {'larger' if b > a else 'NOT larger'} on OOD)"
        )
    print(
        f"AUROC of spread for ensemble mistakes: in-distribution {spread['test']['auroc_mistakes']:.3f}, OOD {spread['ood']['auroc_mistakes']:.3f}"
    )


if __name__ == "__main__":
    main()
