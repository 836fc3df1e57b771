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

``--frozen`` trains instead a linear reward head (and, for ODIN, a linear length head) on FROZEN MiniLM features
(mean-pooled prompt + response, computed once and cached in ``<out>/features.npz``), full-batch with AdamW, with
the same raw_rm loss and terms (``build_loss``, ``build_pair_terms``, the learned temperature and its held-out
slice): every method costs seconds once the features exist, for machines where several fine-tunings do not fit.

    python benchmarks/calibration.py --methods baseline brier ... --out benchmarks/results/calibration
    python benchmarks/calibration.py --frozen --out benchmarks/results/calibration_frozen
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
    p.add_argument("--frozen", action="store_true", help="linear heads on frozen MiniLM features (see above)")
    p.add_argument("--frozen-steps", type=int, default=400, help="--frozen: full-batch optimiser steps")
    p.add_argument("--frozen-lr", type=float, default=1e-2, help="--frozen: AdamW learning rate of the heads")
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
    cfg = load_config(
        None,
        [
            f"data.train_path={harmless}",
            f"data.max_len_tokens={args.max_len_tokens}",
            "data.split_seed=raw_rm",
            f"train.num_threads={args.threads}",
            f"train.precision={args.precision}",
            "train.progress=false",
            f"train.epochs={args.epochs}",
            f"train.seed={args.seed}",
            "mlflow.enabled=false",
            f"model.backbone={args.backbone}",
            "model.arch=concat",
            f"train.output_dir={work}",
        ],
    )
    cfg = apply_overrides(cfg, METHODS[method])
    t0 = time.perf_counter()
    result = train_local(cfg, records=(train, sets["calib"]))
    t1 = time.perf_counter()
    rm = RewardModelInference(result.model_dir, max_len_tokens=args.max_len_tokens, batch_size=64, cache_size=0)
    prompts, responses = texts_of(sets)
    scores = rm.batch_predict(prompts, responses)
    model, tokenizer = load_model(result.model_dir)
    lengths = [len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    info = {
        "method": method,
        "overrides": METHODS[method],
        "train_s": t1 - t0,
        "score_s": time.perf_counter() - t1,
        "temperature": model.metadata.temperature,
        "n": {k: len(v) for k, v in sets.items()},
        "n_train": len(train),
        "pairs_per_s": result.metrics.get("pairs_per_s"),
        "machine": machine_facts(precision=args.precision),
    }
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / f"scores_{method}.npz",
        scores=np.asarray(scores, dtype=np.float64),
        lengths=np.asarray(lengths, dtype=np.int64),
        info=json.dumps(info),
    )
    print(
        f"[{method}] trained {t1 - t0:.0f}s, scored {info['score_s']:.0f}s, T={model.metadata.temperature:.3f}, "
        f"val_accuracy {result.metrics.get('val_accuracy', float('nan')):.3f}",
        flush=True,
    )
    shutil.rmtree(work, ignore_errors=True)


def frozen_features(args: argparse.Namespace, train: list, sets: dict) -> dict[str, np.ndarray]:
    """Mean-pooled MiniLM features of every text the frozen mode needs, cached in ``<out>/features.npz``."""
    import torch

    from raw_rm.config import ModelConfig
    from raw_rm.data.batching import encode
    from raw_rm.models import build_model
    from raw_rm.models.backbones import pooled_hidden
    from raw_rm.runtime import cpu_supports_bf16

    cache = Path(args.out) / "features.npz"
    if cache.exists():
        return dict(np.load(cache))
    model, tokenizer = build_model(ModelConfig(backbone=args.backbone, pooling="mean"))
    model.eval()
    eval_prompts, eval_responses = texts_of(sets)
    prompts = [p.prompt for p in train] * 2 + eval_prompts
    responses = [p.chosen for p in train] + [p.rejected for p in train] + eval_responses
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    feats = np.zeros((len(prompts), model.trunk.config.hidden_size), dtype=np.float32)
    dtype = torch.bfloat16 if args.precision in ("auto", "bf16") and cpu_supports_bf16() else torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            enc = encode(
                tokenizer,
                [prompts[i] for i in idx],
                [responses[i] for i in idx],
                max_len_tokens=args.max_len_tokens,
                input_kind="concat",
            )
            f = enc.features
            _, pooled = pooled_hidden(
                model.trunk, f["input_ids"], f["attention_mask"], f.get("token_type_ids"), decoder=False, pooling="mean"
            )
            feats[idx] = pooled.float().numpy()
    lengths = np.array([len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, feats=feats, lengths=lengths)
    return {"feats": feats, "lengths": lengths}


def train_frozen(args: argparse.Namespace, method: str) -> None:
    """One method as linear heads on frozen features, with raw_rm's loss and terms; scores saved as in fine-tuning."""
    import torch

    from raw_rm.config import apply_overrides, load_config
    from raw_rm.data.splits import prompt_bucket
    from raw_rm.losses import build_loss, build_pair_terms

    torch.set_num_threads(args.threads)
    _, train, sets = split_data(args)
    data = frozen_features(args, train, sets)
    n = len(train)
    x = torch.from_numpy(data["feats"])
    lengths = torch.from_numpy(data["lengths"]).float()
    cfg = apply_overrides(load_config(None, [f"train.seed={args.seed}"]), METHODS[method])
    torch.manual_seed(args.seed)
    width = x.shape[1]
    head = torch.nn.Linear(width, 1)
    length_head = torch.nn.Linear(width, 1) if cfg.model.length_head else None
    loss_fn = build_loss(cfg.loss)
    terms = build_pair_terms(cfg.loss, length_head=length_head is not None)
    params = list(head.parameters()) + (list(length_head.parameters()) if length_head is not None else [])
    groups = [{"params": params, "lr": args.frozen_lr, "weight_decay": 0.01}]
    if terms.temperature is not None:
        groups.append({"params": [terms.temperature.log_t], "lr": cfg.loss.temperature_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    heldout = (
        torch.tensor([prompt_bucket(p.prompt, "raw_rm-calibration") < cfg.loss.calibration_fraction for p in train])
        if terms.temperature is not None
        else None
    )
    xt, lt = x[: 2 * n], lengths[: 2 * n]
    t0 = time.perf_counter()
    for _ in range(args.frozen_steps):
        r = head(xt)[:, 0]
        lr_ = length_head(xt)[:, 0] if length_head is not None else None
        ortho = None
        if length_head is not None and cfg.loss.orthogonal_coef > 0:
            ortho = torch.nn.functional.cosine_similarity(head.weight[0], length_head.weight[0], dim=0).abs()
        loss, _ = terms(loss_fn, r[:n], r[n:], lengths=lt, length_rewards=lr_, heldout=heldout, orthogonality=ortho)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = head(x[2 * n :])[:, 0].double().numpy()
    temperature = terms.temperature.value() if terms.temperature is not None else 1.0
    out = Path(args.out).resolve()
    info = {
        "method": method,
        "overrides": METHODS[method],
        "train_s": time.perf_counter() - t0,
        "score_s": 0.0,
        "temperature": temperature,
        "n": {k: len(v) for k, v in sets.items()},
        "n_train": n,
        "mode": f"frozen {args.backbone} features, linear heads, {args.frozen_steps} full-batch steps",
        "machine": machine_facts(precision=args.precision),
    }
    np.savez(out / f"scores_{method}.npz", scores=scores, lengths=data["lengths"][2 * n :], info=json.dumps(info))
    print(f"[{method}] frozen heads: {info['train_s']:.1f}s, T={temperature:.3f}", flush=True)


def unpack(path: Path) -> tuple[dict, dict]:
    """{set: {"chosen", "rejected", "probed", "len_chosen", "len_rejected", "len_probed"}} and the run's info."""
    data = np.load(path)
    info = json.loads(str(data["info"]))
    out, start = {}, 0
    for name in SETS:
        n = info["n"][name]
        block = {}
        for j, key in enumerate(("chosen", "rejected", "probed")):
            block[key] = data["scores"][start + j * n : start + (j + 1) * n]
            block["len_" + key] = data["lengths"][start + j * n : start + (j + 1) * n]
        out[name] = block
        start += 3 * n
    return out, info


def paired_nll_diff(
    delta_a: np.ndarray, t_a: float, delta_b: np.ndarray, t_b: float, *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
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
                print(
                    f"| {method} ({label}) | {t:.3f} | {acc['accuracy']:.3f} [{acc['ci_low']:.3f}, "
                    f"{acc['ci_high']:.3f}] | {cal['nll']:.4f} | {cal['ece']:.4f} ({floor['mean']:.4f}) | "
                    f"{cal['brier']:.4f} | {diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}] |"
                )
        print(f"\n## {set_name}: length bias")
        print(
            "| method | corr(reward, tokens) | acc. length-matched pairs (n) [95% CI] | "
            "verbosity probe: acc. change [95% CI] |"
        )
        print("|---|---|---|---|")
        for method, (sets, _) in runs.items():
            s = sets[set_name]
            lb = M.length_bias(
                s["chosen"], s["rejected"], s["len_chosen"], s["len_rejected"], probed_rejected=s["probed"]
            )
            print(
                f"| {method} | {lb['reward_length_spearman']:+.3f} | {lb['matched_accuracy']:.3f} "
                f"({lb['matched_n']}) [{lb['matched_ci_low']:.3f}, {lb['matched_ci_high']:.3f}] | "
                f"{lb['verbosity_change']:+.3f} [{lb['verbosity_ci_low']:+.3f}, {lb['verbosity_ci_high']:+.3f}] |"
            )
    print("\ntraining time: " + ", ".join(f"{m} {info['train_s']:.0f}s" for m, (_, info) in runs.items()))


def main() -> None:
    args = parse_args()
    if args.analyse:
        analyse(Path(args.analyse))
        return
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in machine_facts(precision=args.precision).items()), flush=True)
    for method in args.methods:
        (train_frozen if args.frozen else train_and_score)(args, method)
    analyse(Path(args.out))


if __name__ == "__main__":
    main()
