"""Simulated active learning on the synthetic default: does uncertainty selection need fewer labels than random?

Setup (all seeded; one run prints everything):
- Data: ``raw_rm.data.synthetic.generate`` (the embedded default, ``--n-prompts`` prompts); prompts split by hash
  into an unlabelled pool and a validation set. Each pool pair is shown as (a, b) in a random order, as an
  annotator would see it; "labelling" a pair reveals the generator's label, which was drawn from the KNOWN latent
  reward (Bradley-Terry, noise ``--noise``; ``--oracle latent`` reveals the noise-free order instead).
- Model: the cheap ensemble, ``arch=multihead`` on the packaged MiniLM with the trunk FROZEN: every text is
  embedded once (mean pooling), then only the K heads train, each on its own Poisson(1) bootstrap resample of
  the labelled pairs (``MultiHeadRewardModel.bootstrap_mask``), with a Bradley-Terry loss.
- Loop: start from ``--seed-labels`` random labels; each round score the pool with the current ensemble
  (member rewards normalised with the training statistics, as ``raw-rm select`` does),
  ``raw_rm.uncertainty.selection_scores`` + ``select_top_k`` pick ``--k`` pairs by the strategy, reveal their
  labels, retrain the heads from a fresh init. Validation accuracy = share of validation pairs ordered like
  the latent reward.
- Output: accuracy vs #labels per strategy (mean over ``--repeats`` seeds) as a table and a PNG; labels needed by
  each strategy to reach the target accuracy (``--target``, default: the accuracy of the ensemble trained on the
  whole pool minus ``--target-gap``) and how many fewer than random; what the picked pairs looked like to the
  ensemble (share where every member gives the same order, mean |margin|, member spread of the margin).

    python benchmarks/active_learning.py                   # ~4 minutes on a busy 2-core box once embeddings are cached
    python benchmarks/active_learning.py --oracle latent --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from raw_rm.config import ModelConfig, SyntheticConfig
from raw_rm.data import split_by_prompt
from raw_rm.data.batching import encode
from raw_rm.data.synthetic import generate, latent_reward
from raw_rm.models import build_model
from raw_rm.uncertainty import STRATEGIES, select_top_k, selection_scores

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_machine.py
from _machine import machine_facts  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-prompts", type=int, default=1200)
    p.add_argument("--noise", type=float, default=1.0, help="Bradley-Terry label noise of the generator")
    p.add_argument(
        "--oracle",
        choices=["sampled", "latent"],
        default="sampled",
        help="labels: the generator's sampled label, or the latent order",
    )
    p.add_argument("--heads", type=int, default=5, help="ensemble members (heads)")
    p.add_argument("--seed-labels", type=int, default=10)
    p.add_argument("--k", type=int, default=20, help="pairs labelled per round")
    p.add_argument("--max-labels", type=int, default=310)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=150, help="full-batch Adam steps per retraining")
    p.add_argument("--target", type=float, default=None)
    p.add_argument("--target-gap", type=float, default=0.02)
    p.add_argument("--max-len-tokens", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results/active_learning")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (tiny full-batch steps: 1 avoids thread contention)"
    )
    return p.parse_args()


@torch.no_grad()
def embed(model, tokenizer, prompts: list[str], responses: list[str], max_len: int, batch: int = 64) -> torch.Tensor:
    """(N, H) frozen-trunk pooled features, computed once."""
    out = []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        enc = encode(
            tokenizer,
            [prompts[i] for i in idx],
            [responses[i] for i in idx],
            max_len_tokens=max_len,
            input_kind="concat",
        )
        f = enc.features
        h = model.hidden(f["input_ids"], f["attention_mask"], f.get("token_type_ids"))
        out.append((torch.tensor(idx), model.pooled(h, f["attention_mask"])))
    feats = torch.zeros(len(prompts), out[0][1].shape[1])
    for idx, v in out:
        feats[idx] = v
    return feats


def train_heads(
    xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor, heads: int, steps: int, seed: int
) -> torch.nn.Linear:
    """K linear heads (one Linear(H, K)) on frozen features; head k weights pair i by its Poisson(1) count."""
    gen = torch.Generator().manual_seed(seed)
    width = xa.shape[1]
    layer = torch.nn.Linear(width, heads)
    with torch.no_grad():
        bound = 1 / width**0.5
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.zero_()
    counts = torch.poisson(torch.ones(len(y), heads), generator=gen)  # (n, K) bootstrap resample per head
    sign = (2 * y - 1).float()[:, None]  # +1: a preferred
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        delta = (layer(xa) - layer(xb)) * sign  # (n, K)
        loss = (counts * -F.logsigmoid(delta)).sum() / counts.sum().clamp_min(1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


def run_strategy(strategy, data, args, repeat: int, picks: list[dict] | None = None) -> list[tuple[int, float]]:
    """Accuracy per round of one active-learning run; ``picks`` (if given) collects per round what the picked
    pairs looked like to the ensemble: share where every member gives the same order, mean |mean Δ|, mean std Δ."""
    xa, xb, y, va, vb = data["xa"], data["xb"], data["y"], data["va"], data["vb"]
    n = len(y)
    rng = random.Random(1000 + repeat)
    labelled = rng.sample(range(n), args.seed_labels)  # the same seed set for every strategy of this repeat
    curve = []
    while True:
        idx = torch.tensor(labelled)
        heads = train_heads(xa[idx], xb[idx], y[idx], args.heads, args.steps, seed=repeat * 7919 + len(labelled))
        with torch.no_grad():
            acc = float(((heads(va) - heads(vb)).mean(1) > 0).float().mean())
        curve.append((len(labelled), acc))
        if len(labelled) >= args.max_labels:
            return curve
        rest = torch.tensor(sorted(set(range(n)) - set(labelled)))
        with torch.no_grad():
            # As `raw-rm select` does: member rewards normalised with the model's training statistics (the trainer
            # stores mean/std of the mean reward over the training texts; one scale for all heads of a multihead).
            train_rewards = torch.cat([heads(xa[idx]), heads(xb[idx])]).mean(1)
            mean, std = float(train_rewards.mean()), float(train_rewards.std(correction=0)) or 1.0
            ra, rb = (heads(xa[rest]) - mean) / std, (heads(xb[rest]) - mean) / std  # (n_rest, K)
            scores = selection_scores(strategy, ra, rb, seed=repeat * 31 + len(labelled))
        pick = select_top_k(scores, min(args.k, len(rest)))
        if picks is not None:
            d = (ra - rb)[pick]  # (k, K) member reward differences of the picked pairs
            picks.append(
                {
                    "unanimous": float(((d > 0).all(1) | (d < 0).all(1)).float().mean()),
                    "abs_margin": float(d.mean(1).abs().mean()),
                    "delta_std": float(d.std(1, correction=0).mean()),
                }
            )
        labelled += rest[pick].tolist()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    syn = generate(SyntheticConfig(n_prompts=args.n_prompts, noise=args.noise, seed=0))
    pool, val = split_by_prompt(syn.pairs, 0.25, "active-learning")
    rng = random.Random(0)
    flips = [rng.random() < 0.5 for _ in pool]  # show each pool pair in a random order
    a = [p.rejected if f else p.chosen for p, f in zip(pool, flips)]
    b = [p.chosen if f else p.rejected for p, f in zip(pool, flips)]
    if args.oracle == "sampled":
        y = torch.tensor([0 if f else 1 for f in flips])  # 1 = a was the generator's chosen
    else:
        y = torch.tensor([int(latent_reward(p.prompt, x) > latent_reward(p.prompt, z)) for p, x, z in zip(pool, a, b)])
    torch.manual_seed(0)
    model, tokenizer = build_model(
        ModelConfig(arch="multihead", backbone="minilm", pooling="mean", num_heads=args.heads)
    )
    model.eval()
    prompts = [p.prompt for p in pool]
    # Validation pairs oriented by the latent reward: accuracy = agreement with the truth.
    vc, vr = [], []
    for p in val:
        better = latent_reward(p.prompt, p.chosen) > latent_reward(p.prompt, p.rejected)
        vc.append(p.chosen if better else p.rejected)
        vr.append(p.rejected if better else p.chosen)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = (
        out / f"embeddings_n{args.n_prompts}_noise{args.noise}_len{args.max_len_tokens}.pt"
    )  # frozen trunk: reusable
    if cache.exists():
        xa, xb, va, vb = torch.load(cache)
    else:
        xa = embed(model, tokenizer, prompts, a, args.max_len_tokens)
        xb = embed(model, tokenizer, prompts, b, args.max_len_tokens)
        va = embed(model, tokenizer, [p.prompt for p in val], vc, args.max_len_tokens)
        vb = embed(model, tokenizer, [p.prompt for p in val], vr, args.max_len_tokens)
        torch.save((xa, xb, va, vb), cache)
    t_embed = time.perf_counter() - t0
    data = {"xa": xa, "xb": xb, "y": y, "va": va, "vb": vb}
    label_noise = float(
        (
            y
            != torch.tensor(
                [int(latent_reward(p.prompt, x) > latent_reward(p.prompt, z)) for p, x, z in zip(pool, a, b)]
            )
        )
        .float()
        .mean()
    )

    full = np.mean(
        [
            float(((h(va) - h(vb)).mean(1) > 0).float().mean())
            for h in (train_heads(xa, xb, y, args.heads, args.steps, seed=r) for r in range(args.repeats))
        ]
    )
    target = args.target if args.target is not None else full - args.target_gap
    picks = {s: [] for s in STRATEGIES}
    curves = {s: [run_strategy(s, data, args, r, picks[s]) for r in range(args.repeats)] for s in STRATEGIES}
    labels = [n for n, _ in curves["random"][0]]
    mean = {s: np.array([[acc for _, acc in c] for c in cs]).mean(0) for s, cs in curves.items()}
    std = {s: np.array([[acc for _, acc in c] for c in cs]).std(0) for s, cs in curves.items()}

    def needed(s: str) -> int | None:
        hit = np.nonzero(mean[s] >= target)[0]
        return labels[hit[0]] if hit.size else None

    print("machine:", ", ".join(f"{k} {v}" for k, v in machine_facts().items()) + ", fp32")
    print(
        f"data: synthetic n_prompts={args.n_prompts} noise={args.noise}: pool {len(pool)} pairs, validation {len(val)}; "
        f"oracle={args.oracle} (revealed labels disagree with the latent order on {label_noise:.1%}); bayes accuracy {syn.bayes_accuracy:.3f}"
    )
    print(
        f"model: multihead MiniLM, frozen trunk (mean pooling), {args.heads} bootstrap heads; embedding took {t_embed:.0f}s"
    )
    print(f"whole pool labelled ({len(pool)} labels): val accuracy {full:.3f}; target {target:.3f}")
    print(f"\nvalidation accuracy (vs latent order), mean of {args.repeats} repeats:")
    print("labels  " + "  ".join(f"{s:>12}" for s in STRATEGIES))
    for i, n in enumerate(labels):
        print(f"{n:>6}  " + "  ".join(f"{mean[s][i]:>6.3f}±{std[s][i]:.3f}" for s in STRATEGIES))
    base = needed("random")
    print(f"\nlabels needed to reach {target:.3f}:")
    summary = {}
    for s in STRATEGIES:
        n = needed(s)
        if n is None:
            note = f"not reached within {args.max_labels}"
        elif base is None:
            note = f"random did not reach it within {args.max_labels}: at least {args.max_labels + args.k - n} fewer"
        else:
            note = f"{base - n:+d} vs random ({(base - n) / base:.0%} fewer)" if s != "random" else "baseline"
        summary[s] = {"labels_needed": n, "note": note}
        print(f"  {s:>12}: {n if n is not None else '-':>5}   {note}")
    area = {s: float(mean[s].mean()) for s in STRATEGIES}
    print("mean accuracy over the curve: " + ", ".join(f"{s} {v:.3f}" for s, v in area.items()))
    pick_stats = {s: {k: float(np.mean([p[k] for p in picks[s]])) for k in picks[s][0]} for s in STRATEGIES}
    print(
        "\npicked pairs as the ensemble saw them (mean over rounds and repeats; normalised member rewards, Δ = r_a − r_b):"
    )
    print(f"  {'strategy':>12}  {'every member same order':>23}  {'|mean Δ|':>8}  {'std Δ':>6}")
    for s, v in pick_stats.items():
        print(f"  {s:>12}  {v['unanimous']:>23.2f}  {v['abs_margin']:>8.3f}  {v['delta_std']:>6.3f}")

    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "labels": labels,
                "mean": {s: m.tolist() for s, m in mean.items()},
                "std": {s: v.tolist() for s, v in std.items()},
                "full_pool_accuracy": full,
                "target": target,
                "summary": summary,
                "curve_mean_accuracy": area,
                "picked_pairs": pick_stats,
            },
            indent=1,
        )
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in STRATEGIES:
        ax.plot(labels, mean[s], marker="o", ms=3, label=s)
        ax.fill_between(labels, mean[s] - std[s], mean[s] + std[s], alpha=0.12)
    ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("labelled pairs")
    ax.set_ylabel("validation accuracy (latent order)")
    ax.set_title(f"Active learning on synthetic data ({args.heads}-head frozen MiniLM, oracle={args.oracle})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_labels.png", dpi=120)
    print(
        f"\nwrote {out / 'accuracy_vs_labels.png'} and {out / 'results.json'} ({time.perf_counter() - t0:.0f}s total)"
    )


if __name__ == "__main__":
    main()
