"""Calibration losses and length-bias mitigation against plain Bradley-Terry + post-hoc temperature scaling.

Every method trains the packaged MiniLM (arch concat) with the shared loop (``train_local``) on the same training
pairs of HH-RLHF harmless, one epoch, then scores three held-out sets with ``RewardModelInference``:
``calib`` (the temperature-fitting half of the held-out prompts), ``test`` (the other half: in-distribution) and
``ood`` (HH-RLHF helpful-online), plus each set's verbosity probe (``rejected + filler``, raw_rm.eval.probes).
Raw scores go to ``<out>/scores_<method>.npz`` as each training ends, so ``--analyse`` recomputes the table
without retraining.

Methods (overrides on the plain recipe):

    baseline            plain BT; the post-hoc temperature fitted on calib is the baseline every user has
    brier               loss.brier_coef=1
    soft_ece            loss.soft_ece_coef=1
    confidence_penalty  loss.confidence_penalty_coef=0.1
    learned_temperature loss.learned_temperature=true (T learned on 10% of the training prompts, loss on D / T)
    length_corr         loss.length_corr_coef=1 (|corr(reward, response tokens)| in each batch)
    odin                model.length_head=true, loss.length_corr_coef=1, loss.orthogonal_coef=1 (Chen et al. 2024)

``--analyse`` prints, per set, each method at its post-hoc temperature (fitted on calib) and, for the methods
that change calibration in training, also at its own temperature (1, or the learned one): accuracy with a
bootstrap interval, NLL, ECE with its noise floor, Brier, and the paired bootstrap interval of the NLL difference
to the baseline (same pairs); then the length metrics (raw_rm.metrics.length_bias): reward-length correlation,
accuracy within length-matched pairs, and the verbosity-probe accuracy change.

    python benchmarks/calibration.py --methods baseline brier ... --out benchmarks/results/calibration
    python benchmarks/calibration.py --analyse benchmarks/results/calibration
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_facts  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

METHODS: dict[str, dict] = {
    "baseline": {},
    "brier": {"loss.brier_coef": 1.0},
    "soft_ece": {"loss.soft_ece_coef": 1.0},
    "confidence_penalty": {"loss.confidence_penalty_coef": 0.1},
    "learned_temperature": {"loss.learned_temperature": True},
    "length_corr": {"loss.length_corr_coef": 1.0},
    "odin": {"model.length_head": True, "loss.length_corr_coef": 1.0, "loss.orthogonal_coef": 1.0},
}
SETS = ("calib", "test", "ood")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED), help="folder holding hh-rlhf-harmless/ and hh-rlhf-helpful/")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--precision", default="auto", help="train.precision (auto: bf16 where the CPU has it)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.3, help="share of harmless prompts held out")
    p.add_argument("--ood-limit", type=int, default=400)
    p.add_argument("--max-len-tokens", type=int, default=256)
    p.add_argument("--out", default="benchmarks/results/calibration")
    p.add_argument("--analyse", metavar="DIR", help="print the tables from the scores saved in DIR")
    return p.parse_args()


def split_data(args: argparse.Namespace):
    from raw_rm.data import read_records, split_by_prompt

    harmless = Path(args.data) / "hh-rlhf-harmless" / "pairs.jsonl.gz"
    helpful = Path(args.data) / "hh-rlhf-helpful" / "helpful-online.jsonl.gz"
    records = read_records(str(harmless)).records
    train, held = split_by_prompt(records, args.val_fraction, "raw_rm")
    test, calib = split_by_prompt(held, 0.5, "raw_rm/calibration")
    ood = read_records(str(helpful), limit=args.ood_limit).records
    return harmless, train, {"calib": calib, "test": test, "ood": ood}


def texts_of(sets: dict) -> tuple[list[str], list[str]]:
    """Prompts and responses to score, per set: chosen, rejected, then the verbosity-probed rejected."""
    from raw_rm.eval.probes import verbosity

    prompts, responses = [], []
    for name in SETS:
        pairs = sets[name]
        probed = verbosity(pairs)
        prompts += [p.prompt for p in pairs] * 3
        responses += [p.chosen for p in pairs] + [p.rejected for p in pairs] + [p.rejected for p in probed]
    return prompts, responses


def train_and_score(args: argparse.Namespace, method: str) -> None:
    import torch

    from raw_rm.config import apply_overrides, load_config
    from raw_rm.inference import RewardModelInference
    from raw_rm.models import load_model
    from raw_rm.train.local import train_local

    torch.set_num_threads(args.threads)
    harmless, train, sets = split_data(args)
    out = Path(args.out).resolve()
    work = out / "work" / method
    cfg = load_config(None, [
        f"data.train_path={harmless}", f"data.max_len_tokens={args.max_len_tokens}", "data.split_seed=raw_rm",
        f"train.num_threads={args.threads}", f"train.precision={args.precision}", "train.progress=false",
        f"train.epochs={args.epochs}", f"train.seed={args.seed}", "mlflow.enabled=false",
        f"model.backbone={args.backbone}", "model.arch=concat", f"train.output_dir={work}",
    ])
    cfg = apply_overrides(cfg, METHODS[method])
    t0 = time.perf_counter()
    result = train_local(cfg, records=(train, sets["calib"]))
    t1 = time.perf_counter()
    rm = RewardModelInference(result.model_dir, max_len_tokens=args.max_len_tokens, batch_size=64, cache_size=0)
    prompts, responses = texts_of(sets)
    scores = rm.batch_predict(prompts, responses)
    model, tokenizer = load_model(result.model_dir)
    lengths = [len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    info = {"method": method, "overrides": METHODS[method], "train_s": t1 - t0, "score_s": time.perf_counter() - t1,
            "temperature": model.metadata.temperature, "n": {k: len(v) for k, v in sets.items()},
            "n_train": len(train), "pairs_per_s": result.metrics.get("pairs_per_s"),
            "machine": machine_facts(precision=args.precision)}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"scores_{method}.npz", scores=np.asarray(scores, dtype=np.float64),
             lengths=np.asarray(lengths, dtype=np.int64), info=json.dumps(info))
    print(f"[{method}] trained {t1 - t0:.0f}s, scored {info['score_s']:.0f}s, T={model.metadata.temperature:.3f}, "
          f"val_accuracy {result.metrics.get('val_accuracy', float('nan')):.3f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def unpack(path: Path) -> tuple[dict, dict]:
    """{set: {"chosen", "rejected", "probed", "len_chosen", "len_rejected", "len_probed"}} and the run's info."""
    data = np.load(path)
    info = json.loads(str(data["info"]))
    out, start = {}, 0
    for name in SETS:
        n = info["n"][name]
        block = {}
        for j, key in enumerate(("chosen", "rejected", "probed")):
            block[key] = data["scores"][start + j * n: start + (j + 1) * n]
            block["len_" + key] = data["lengths"][start + j * n: start + (j + 1) * n]
        out[name] = block
        start += 3 * n
    return out, info


def paired_nll_diff(delta_a: np.ndarray, t_a: float, delta_b: np.ndarray, t_b: float, *, n_boot: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Mean per-pair NLL of a minus b on the same pairs, with a 95% paired bootstrap interval."""
    from scipy.special import log_expit

    diff = -log_expit(delta_a / t_a) + log_expit(delta_b / t_b)
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def analyse(folder: Path) -> None:
    from raw_rm import metrics as M

    runs = {}
    for method in METHODS:
        path = folder / f"scores_{method}.npz"
        if path.exists():
            runs[method] = unpack(path)
    if "baseline" not in runs:
        raise SystemExit(f"{folder}: no scores_baseline.npz (run the baseline first)")
    info0 = runs["baseline"][1]
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in info0["machine"].items()))
    print(f"pairs: train {info0['n_train']}, " + ", ".join(f"{k} {v}" for k, v in info0["n"].items()))
    base_sets = runs["baseline"][0]
    base_t = M.fit_temperature(base_sets["calib"]["chosen"] - base_sets["calib"]["rejected"])
    for set_name in ("test", "ood"):
        print(f"\n## {set_name}: calibration (post-hoc T fitted on the {info0['n']['calib']} calib pairs)")
        print("| method | T | accuracy [95% CI] | NLL | ECE (noise floor) | Brier | NLL - baseline [95% CI] |")
        print("|---|---|---|---|---|---|---|")
        base_delta = base_sets[set_name]["chosen"] - base_sets[set_name]["rejected"]
        for method, (sets, info) in runs.items():
            delta = sets[set_name]["chosen"] - sets[set_name]["rejected"]
            cal_delta = sets["calib"]["chosen"] - sets["calib"]["rejected"]
            temps = [("post-hoc", M.fit_temperature(cal_delta))]
            if method != "baseline" and method not in ("length_corr", "odin"):
                temps.append(("own", float(info["temperature"])))
            for label, t in temps:
                acc = M.preference_accuracy(sets[set_name]["chosen"], sets[set_name]["rejected"])
                probs = M.pair_probabilities(delta, t)
                cal = M.calibration_error(probs)
                floor = M.ece_noise_floor(probs)
                diff = paired_nll_diff(delta, t, base_delta, base_t)
                print(f"| {method} ({label}) | {t:.3f} | {acc['accuracy']:.3f} [{acc['ci_low']:.3f}, "
                      f"{acc['ci_high']:.3f}] | {cal['nll']:.4f} | {cal['ece']:.4f} ({floor['mean']:.4f}) | "
                      f"{cal['brier']:.4f} | {diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}] |")
        print(f"\n## {set_name}: length bias")
        print("| method | corr(reward, tokens) | acc. length-matched pairs (n) [95% CI] | "
              "verbosity probe: acc. change [95% CI] |")
        print("|---|---|---|---|")
        for method, (sets, _) in runs.items():
            s = sets[set_name]
            lb = M.length_bias(s["chosen"], s["rejected"], s["len_chosen"], s["len_rejected"],
                               probed_rejected=s["probed"])
            print(f"| {method} | {lb['reward_length_spearman']:+.3f} | {lb['matched_accuracy']:.3f} "
                  f"({lb['matched_n']}) [{lb['matched_ci_low']:.3f}, {lb['matched_ci_high']:.3f}] | "
                  f"{lb['verbosity_change']:+.3f} [{lb['verbosity_ci_low']:+.3f}, {lb['verbosity_ci_high']:+.3f}] |")
    print("\ntraining time: " + ", ".join(f"{m} {info['train_s']:.0f}s" for m, (_, info) in runs.items()))


def main() -> None:
    args = parse_args()
    if args.analyse:
        analyse(Path(args.analyse))
        return
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in machine_facts(precision=args.precision).items()), flush=True)
    for method in args.methods:
        train_and_score(args, method)
    analyse(Path(args.out))


if __name__ == "__main__":
    main()
