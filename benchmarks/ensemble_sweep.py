"""Which ensemble recipe beats its best member? Many member recipes x several train/held-out splits, one run.

``ensemble_vs_single.py`` measures one recipe on one split; on ~250 held-out pairs one split's verdict is noise-prone.
This sweep trains ``--members`` members per (split, recipe) with the shared loop (``train_member``, as ``raw-rm
ensemble``), scores the calibration half, test half and OOD pairs with each, and writes every member's z-scored
rewards (as ``EnsembleRewardModel`` combines them) to one ``scores.npz`` (rewritten as each job ends), so that
recipes and combinations can be compared afterwards without retraining (``--analyse``). Jobs (one per split x
recipe) run as ``--workers`` processes at once (a GPU holds several MiniLM trainings side by side).

Per cell it reports, on the test half with temperatures fitted on the calibration half: the mean member, the
member validation would pick (lowest calibration NLL), the best member in hindsight (lowest test NLL) and the
ensemble (NLL, ECE); OOD NLL; the rank correlation of members' calibration and test NLL; and three spreads in- vs
out-of-distribution (per-response std, std of the members' reward differences, ``raw_rm.uncertainty.vote_split``).
Then counts over cells, ``sweep.png`` and ``sweep.json`` beside ``scores.npz``.

Splits: split 0 is the default prompt-hash split (the one ``ensemble_vs_single.py`` uses); split s > 0 salts the
hash with ``/sweep{s}``, so each split holds out different prompts.

    python benchmarks/ensemble_sweep.py --device cuda --backbone DIR --data DIR --splits 0 1 2 --members 8 --workers 8
    python benchmarks/ensemble_sweep.py --analyse benchmarks/results/ensemble_sweep/scores.npz
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# recipe name -> overrides for every member, and optionally per-member overrides cycled over members
RECIPES: dict[str, dict] = {
    "e1": {"all": {}},
    "e3": {"all": {"train.epochs": 3}},
    "e3_lr2e-5": {"all": {"train.epochs": 3, "train.lr": 2e-5}},
    "e3_lr1e-4": {"all": {"train.epochs": 3, "train.lr": 1e-4}},
    "e3_mean": {"all": {"train.epochs": 3, "model.pooling": "mean"}},
    "e3_boot": {"all": {"train.epochs": 3, "ensemble.bootstrap": True}},
    "e3_top2": {"all": {"train.epochs": 3, "train.lr": 1e-4, "model.train_layers": 2}},  # last-layers-only members
    "es8": {
        "all": {
            "train.epochs": 8,
            "train.patience": 2,
            "train.early_stopping_metric": "val_nll",
            "train.early_stopping_mode": "min",
            "train.restore_best": True,
        }
    },
    "diverse": {
        "all": {},
        "cycle": [
            {"train.epochs": 3, "train.lr": 5e-5},
            {"train.epochs": 2, "train.lr": 1e-4},
            {"train.epochs": 4, "train.lr": 3e-5},
            {"train.epochs": 3, "train.lr": 5e-5, "model.pooling": "mean"},
            {"train.epochs": 3, "train.lr": 5e-5, "ensemble.bootstrap": True},
            {"train.epochs": 5, "train.lr": 2e-5},
            {"train.epochs": 2, "train.lr": 1e-4, "model.pooling": "mean"},
            {"train.epochs": 3, "train.lr": 7e-5},
        ],
    },
}


SUBSET_SIZES = (2, 3, 5)  # sub-ensemble sizes whose win rate against their own best member --analyse reports


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED), help="folder holding hh-rlhf-harmless/ and hh-rlhf-helpful/")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32")
    p.add_argument("--splits", type=int, nargs="+", default=[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    p.add_argument("--ood-limit", type=int, default=400)
    p.add_argument("--val-fraction", type=float, default=0.3)
    p.add_argument("--max-len-tokens", type=int, default=256)
    p.add_argument("--out", default="benchmarks/results/ensemble_sweep", help="scores.npz goes here")
    p.add_argument("--work", default=None, help="member folders and per-job files (default <out>/work)")
    p.add_argument("--analyse", default=None, help="only analyse this scores.npz")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: "split:recipe"
    return p.parse_args()


def split_data(args: argparse.Namespace, split: int):
    from raw_rm.config import EvalConfig
    from raw_rm.data import read_records, split_by_prompt
    from raw_rm.eval.gate import calibration_split

    harmless = Path(args.data) / "hh-rlhf-harmless" / "pairs.jsonl.gz"
    helpful = Path(args.data) / "hh-rlhf-helpful" / "helpful-online.jsonl.gz"
    seed = "raw_rm" if split == 0 else f"raw_rm/sweep{split}"  # split 0 = the default data.split_seed
    records = read_records(str(harmless)).records
    train, held = split_by_prompt(records, args.val_fraction, seed)
    # split 0: eval.calibration_salt's default ("raw_rm/calibration"); split s > 0 salts the calibration split too
    test, calib = calibration_split(held, EvalConfig(calibration_salt=seed + "/calibration"))
    ood = read_records(str(helpful), limit=args.ood_limit).records
    return harmless, seed, train, {"calib": calib, "test": test, "ood": ood}


def run_job(args: argparse.Namespace, split: int, recipe: str) -> None:
    """Train and score the members of one (split, recipe); writes job_<split>_<recipe>.npz."""
    import torch

    from raw_rm.config import apply_overrides, load_config
    from raw_rm.inference import RewardModelInference
    from raw_rm.models import load_model
    from raw_rm.train.ensemble import train_member

    torch.set_num_threads(args.threads)
    harmless, seed, train, sets = split_data(args, split)
    work = work_dir(args) / f"{split}_{recipe}"
    base = load_config(
        None,
        [
            f"data.train_path={harmless}",
            f"data.max_len_tokens={args.max_len_tokens}",
            f"data.split_seed={seed}",
            f"train.num_threads={args.threads}",
            f"train.precision={args.precision}",
            "train.progress=false",
            "mlflow.enabled=false",
            f"model.backbone={args.backbone}",
            "model.arch=concat",
            "train.pin_malloc_threshold=false",
        ],
    )
    spec = RECIPES[recipe]
    prompts = [p.prompt for s in sets.values() for p in s for _ in (0, 1)]
    texts = [t for s in sets.values() for p in s for t in (p.chosen, p.rejected)]
    cols, info = [], []
    for k in range(args.members):
        over = {
            **spec["all"],
            **(spec["cycle"][k % len(spec["cycle"])] if "cycle" in spec else {}),
            "train.seed": k,
            "train.output_dir": str(work / f"member_{k}"),
        }
        mc = apply_overrides(base, over)
        t0 = time.perf_counter()
        model_dir, metrics = train_member(mc, records=(train, sets["calib"]))
        t1 = time.perf_counter()
        rm = RewardModelInference(
            model_dir, device=args.device, max_len_tokens=args.max_len_tokens, batch_size=64, cache_size=0
        )
        raw = rm.batch_predict(prompts, texts)
        meta = load_model(model_dir)[0].metadata
        cols.append((raw - meta.reward_mean) / meta.reward_std)
        info.append(
            {
                "overrides": {k2: v for k2, v in over.items() if k2 != "train.output_dir"},
                "train_s": t1 - t0,
                "score_s": time.perf_counter() - t1,
                "val_accuracy": metrics.get("val_accuracy"),
                "val_nll": metrics.get("val_nll"),
                "epochs_run": metrics.get("epochs_completed", metrics.get("epoch")),
            }
        )
        print(
            f"[{split}:{recipe}] member {k}: val_acc {metrics.get('val_accuracy', float('nan')):.3f} "
            f"val_nll {metrics.get('val_nll', float('nan')):.4f} train {t1 - t0:.0f}s",
            flush=True,
        )
        shutil.rmtree(work / f"member_{k}", ignore_errors=True)
    n = {name: len(s) for name, s in sets.items()}
    np.savez(work_dir(args) / f"job_{split}_{recipe}.npz", z=np.stack(cols, 1), n=json.dumps(n), info=json.dumps(info))


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work).resolve() if args.work else Path(args.out).resolve() / "work"


def bundle(args: argparse.Namespace, jobs: list[str]) -> Path:
    """Every finished job's scores in one ``<out>/scores.npz`` (rewritten as jobs finish, so a cut-off run keeps them)."""
    found = {}
    for j in jobs:
        f = work_dir(args) / f"job_{j.replace(':', '_')}.npz"
        if f.exists():
            d = np.load(f)
            found[f"{j}|z"], found[f"{j}|n"], found[f"{j}|info"] = d["z"], d["n"], d["info"]
    path = Path(args.out).resolve() / "scores.npz"
    np.savez(path, **found)
    return path


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    if args.analyse:
        analyse(Path(args.analyse))
        return
    if args.job:
        split, recipe = args.job.split(":")
        run_job(args, int(split), recipe)
        return
    out.mkdir(parents=True, exist_ok=True)
    work_dir(args).mkdir(parents=True, exist_ok=True)
    jobs = [f"{s}:{r}" for s in args.splits for r in args.recipes]
    t0 = time.perf_counter()
    pending, running, failed = list(jobs), [], []
    base_cmd = [sys.executable, __file__, *[a for a in sys.argv[1:]]]
    while pending or running:
        while pending and len(running) < args.workers:
            j = pending.pop(0)
            running.append((j, subprocess.Popen([*base_cmd, "--job", j])))
        time.sleep(1)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode != 0:
                    failed.append(item[0])
                print(f"job {item[0]} done rc={item[1].returncode} at {time.perf_counter() - t0:.0f}s", flush=True)
                bundle(args, jobs)
    print(f"all jobs in {time.perf_counter() - t0:.0f}s; failed: {failed}")
    analyse(bundle(args, jobs))


def cell_summary(z: np.ndarray, n: dict[str, int]) -> dict[str, float]:
    """One (split, recipe): each member and the ensemble (mean of z-scored rewards) with its temperature fitted on
    the calibration half, measured on the test half; spreads on the test half vs OOD."""
    from scipy.stats import spearmanr

    from raw_rm import metrics as M
    from raw_rm.uncertainty import vote_split

    b, st = {}, 0
    for name in ("calib", "test", "ood"):
        b[name] = slice(st, st + 2 * n[name])
        st += 2 * n[name]
    delta = {s: z[b[s]][0::2] - z[b[s]][1::2] for s in b}  # (N, K) per set
    test, ood = (
        M.compare_members(delta["calib"], delta[s]) for s in ("test", "ood")
    )  # T fitted on the calibration half
    mem = test["members"]
    hind, val = mem[test["best_member"]], mem[test["val_best_member"]]
    out = {
        "K": z.shape[1],
        "member_nll_mean": float(np.mean([m["nll"] for m in mem])),
        "val_nll": val["nll"],
        "val_ece": val["ece"],
        "hind_nll": hind["nll"],
        "hind_ece": hind["ece"],
        "ens_nll": test["ensemble"]["nll"],
        "ens_ece": test["ensemble"]["ece"],
        "ens_ood_nll": ood["ensemble"]["nll"],
        "best_ood_nll": ood["members"][ood["best_member"]]["nll"],
        "rank_corr": float(spearmanr([m["fit_nll"] for m in mem], [m["nll"] for m in mem])[0]),
        "member_nlls": [m["nll"] for m in mem],
    }
    # every sub-ensemble of k members against ITS best member in hindsight: how often the ensemble wins
    for k in SUBSET_SIZES:
        wins = [0, 0, 0]
        for sub in itertools.combinations(range(z.shape[1]), k) if k < z.shape[1] else []:
            c = M.compare_members(delta["calib"][:, sub], delta["test"][:, sub])
            below_nll, below_ece = c["ensemble_minus_best_nll"] < 0, c["ensemble_minus_best_ece"] < 0
            wins = [wins[0] + 1, wins[1] + below_nll, wins[2] + (below_nll and below_ece)]
        out[f"subsets_k{k}"] = wins  # [sub-ensembles, NLL below their best member, NLL and ECE both below]
    for s in ("test", "ood"):
        za, zb = z[b[s]][0::2], z[b[s]][1::2]
        out[f"{s}_served_std"] = float(z[b[s]].std(axis=1).mean())
        out[f"{s}_delta_std"] = float((za - zb).std(axis=1).mean())
        out[f"{s}_vote_split"] = float(vote_split(za, zb).mean())
    return out


def analyse(path: Path) -> None:
    d = np.load(path)
    jobs = sorted({k.split("|")[0] for k in d.files}, key=lambda j: (int(j.split(":")[0]), j))
    cells = {j: cell_summary(d[f"{j}|z"], json.loads(str(d[f"{j}|n"]))) for j in jobs}
    print(
        "\ntest-half NLL / ECE at temperatures fitted on the calibration half; hind = best member picked with hindsight on "
        "test NLL, val = member with the lowest calibration NLL; rho = rank correlation of members' calibration and test NLL"
    )
    print(
        f"{'split:recipe':<14} {'K':>2} {'mean':>7} {'val':>7} {'hind':>7} {'ens':>7} | {'ECE val':>7} {'hind':>6} {'ens':>6} | "
        f"{'rho':>5} | {'OOD ens':>7} {'best':>7} | served std id/ood | diff std id/ood | vote split id/ood"
    )
    for j, c in cells.items():
        print(
            f"{j:<14} {c['K']:>2} {c['member_nll_mean']:>7.4f} {c['val_nll']:>7.4f} {c['hind_nll']:>7.4f} {c['ens_nll']:>7.4f} | "
            f"{c['val_ece']:>7.4f} {c['hind_ece']:>6.4f} {c['ens_ece']:>6.4f} | {c['rank_corr']:>+5.2f} | {c['ens_ood_nll']:>7.4f} "
            f"{c['best_ood_nll']:>7.4f} | {c['test_served_std']:.3f} / {c['ood_served_std']:.3f} | "
            f"{c['test_delta_std']:.3f} / {c['ood_delta_std']:.3f} | {c['test_vote_split']:.3f} / {c['ood_vote_split']:.3f}"
        )
    n = len(cells)

    def count(pred) -> str:
        return f"{sum(bool(pred(c)) for c in cells.values())}/{n}"

    print(
        f"\nensemble NLL below: the mean member {count(lambda c: c['ens_nll'] < c['member_nll_mean'])}, the validation-picked "
        f"member {count(lambda c: c['ens_nll'] < c['val_nll'])}, the hindsight-best member {count(lambda c: c['ens_nll'] < c['hind_nll'])}; "
        f"ECE below the validation-picked member {count(lambda c: c['ens_ece'] < c['val_ece'])}, the hindsight-best "
        f"{count(lambda c: c['ens_ece'] < c['hind_ece'])}; OOD NLL below the best member's {count(lambda c: c['ens_ood_nll'] < c['best_ood_nll'])}"
    )
    print(
        f"spread larger on OOD: served std {count(lambda c: c['ood_served_std'] > c['test_served_std'])}, difference std "
        f"{count(lambda c: c['ood_delta_std'] > c['test_delta_std'])}, vote split {count(lambda c: c['ood_vote_split'] > c['test_vote_split'])}"
    )
    for k in SUBSET_SIZES:
        tot = [sum(c[f"subsets_k{k}"][i] for c in cells.values()) for i in range(3)]
        if tot[0]:
            print(
                f"every {k}-member sub-ensemble of every cell ({tot[0]}): NLL below its own best member (hindsight) in "
                f"{tot[1]} ({tot[1] / tot[0]:.0%}), NLL and ECE both in {tot[2]} ({tot[2] / tot[0]:.0%})"
            )
    plot(cells, path.with_name("sweep.png"))
    path.with_name("sweep.json").write_text(json.dumps(cells, indent=1))
    print(f"wrote {path.with_name('sweep.png')} and {path.with_name('sweep.json')}")


def plot(cells: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cells)
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.7 * len(names)), 8), sharex=True)
    for i, c in enumerate(cells.values()):
        ax1.scatter(
            [i] * len(c["member_nlls"]), c["member_nlls"], color="0.6", s=14, label="members" if i == 0 else None
        )
    ax1.scatter(
        x,
        [c["val_nll"] for c in cells.values()],
        marker="s",
        facecolor="none",
        edgecolor="tab:blue",
        s=50,
        label="validation-picked member",
    )
    ax1.scatter(x, [c["ens_nll"] for c in cells.values()], marker="*", color="tab:red", s=90, label="ensemble")
    ax1.set_ylabel("test-half NLL (lower is better)")
    ax1.legend(fontsize=8)
    ax1.set_title("Ensemble vs its members on held-out HH-RLHF harmless pairs (split:recipe)")
    w = 0.38
    ax2.bar(x - w / 2, [c["test_vote_split"] for c in cells.values()], w, label="in-distribution (test half)")
    ax2.bar(x + w / 2, [c["ood_vote_split"] for c in cells.values()], w, label="OOD (helpful-online)")
    ax2.set_ylabel("vote split (members against the majority)")
    ax2.set_xticks(x, names, rotation=45, ha="right")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
