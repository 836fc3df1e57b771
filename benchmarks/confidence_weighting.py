"""Confidence-aware training vs plain training on the same synthetic pairs (annotator-agreement weights).

- Data: the synthetic default with ``annotators=5``: each pair's ``weight`` is the share of 5 simulated annotators
  (Bradley-Terry votes on the known latent reward) that agree with its label, so mislabelled pairs tend to get low
  weights. Labels come from the generator at ``noise`` 1.0 and 2.0 (texts are identical across noise levels).
- Model: as in ``active_learning.py``, a 5-head ensemble of linear heads on the FROZEN packaged MiniLM (mean
  pooling; embeddings cached by that benchmark), trained full-batch with raw_rm's own Bradley-Terry loss
  (``raw_rm.losses.build_loss``) and ``raw_rm.losses.example_weights``:
    plain        loss.use_weights=false
    weighted     loss.use_weights=true (the annotator-agreement weights)
    uncertainty  loss.uncertainty_weighting=true (down-weights pairs the heads disagree on; no data weights)
- Metric: validation accuracy against the latent order, mean ± std over 5 seeds (subsample + init), for 100, 300
  and all training pairs.

    python benchmarks/confidence_weighting.py
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from raw_rm.config import LossConfig, ModelConfig, SyntheticConfig
from raw_rm.data import split_by_prompt
from raw_rm.data.synthetic import generate, latent_reward
from raw_rm.losses import build_loss, example_weights

sys.path.insert(0, str(Path(__file__).parent))
from active_learning import embed  # noqa: E402

METHODS = {
    "plain": LossConfig(use_weights=False),
    "weighted": LossConfig(use_weights=True),
    "uncertainty": LossConfig(use_weights=False, uncertainty_weighting=True),
}


def train(xa, xb, y, w, loss_cfg: LossConfig, *, heads: int, steps: int, seed: int) -> torch.nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(xa.shape[1], heads)
    with torch.no_grad():
        bound = 1 / xa.shape[1] ** 0.5
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.zero_()
    loss_fn = build_loss(loss_cfg)
    # Each head trains on its own Poisson(1) bootstrap resample (as the multihead trainer does): heads on a convex
    # problem would otherwise converge to the same solution and never disagree.
    counts = torch.poisson(torch.ones(len(y), heads), generator=gen)
    first = y.bool()  # a was chosen
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        ra, rb = layer(xa), layer(xb)  # (n, K)
        chosen = torch.where(first[:, None], ra, rb)
        rejected = torch.where(first[:, None], rb, ra)
        weight = example_weights(loss_cfg, w, chosen, rejected)
        loss = (
            sum(
                loss_fn(chosen[:, k], rejected[:, k], weight=counts[:, k] if weight is None else weight * counts[:, k])
                for k in range(heads)
            )
            / heads
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="benchmarks/results/active_learning", help="active_learning.py's output folder")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny full-batch steps: more threads only add contention on a shared 2-core box
    cache = Path(args.cache) / "embeddings_n1200_noise1.0_len128.pt"
    print(
        f"{'noise':>5} {'labels':>6}  "
        + "  ".join(f"{m:>14}" for m in METHODS)
        + "   mean weight (right / wrong labels)"
    )
    for noise in (1.0, 2.0):
        # The texts (a, b) are those of the noise-1.0 pool, as embedded and cached by active_learning.py; only the
        # labels and weights change with the noise level (the generator draws the same texts for every noise).
        ref_pool, _ = split_by_prompt(
            generate(SyntheticConfig(n_prompts=1200, noise=1.0, seed=0)).pairs, 0.25, "active-learning"
        )
        syn = generate(SyntheticConfig(n_prompts=1200, noise=noise, seed=0, annotators=5))
        pool, val = split_by_prompt(syn.pairs, 0.25, "active-learning")
        assert [q.prompt for q in pool] == [q.prompt for q in ref_pool]
        rng = random.Random(0)
        flips = [rng.random() < 0.5 for _ in ref_pool]
        a = [q.rejected if f else q.chosen for q, f in zip(ref_pool, flips)]
        b = [q.chosen if f else q.rejected for q, f in zip(ref_pool, flips)]
        y = torch.tensor([int(x == q.chosen) for x, q in zip(a, pool)])  # 1 = a is this noise level's chosen
        w = torch.tensor([q.weight for q in pool], dtype=torch.float32)
        right = torch.tensor([latent_reward(q.prompt, q.chosen) > latent_reward(q.prompt, q.rejected) for q in pool])
        if cache.exists():
            xa, xb, va, vb = torch.load(cache)
        else:
            from raw_rm.models import build_model

            model, tok = build_model(ModelConfig(arch="multihead", backbone="minilm", pooling="mean"))
            model.eval()
            vc = [
                q.chosen if latent_reward(q.prompt, q.chosen) > latent_reward(q.prompt, q.rejected) else q.rejected
                for q in val
            ]
            vr = [q.rejected if c == q.chosen else q.chosen for q, c in zip(val, vc)]
            xa, xb = (
                embed(model, tok, [q.prompt for q in pool], a, 128),
                embed(model, tok, [q.prompt for q in pool], b, 128),
            )
            va, vb = (
                embed(model, tok, [q.prompt for q in val], vc, 128),
                embed(model, tok, [q.prompt for q in val], vr, 128),
            )
        n = len(pool)
        for budget in (100, 300, n):
            accs = {m: [] for m in METHODS}
            for r in range(args.repeats):
                idx = torch.tensor(random.Random(r).sample(range(n), budget))
                for name, lc in METHODS.items():
                    layer = train(xa[idx], xb[idx], y[idx], w[idx], lc, heads=5, steps=args.steps, seed=r)
                    with torch.no_grad():
                        accs[name].append(float(((layer(va) - layer(vb)).mean(1) > 0).float().mean()))
            cells = "  ".join(f"{np.mean(v):>7.3f}±{np.std(v):.3f}" for v in accs.values())
            print(
                f"{noise:>5} {budget:>6}  {cells}   {w[right].mean():.2f} / {w[~right].mean():.2f} "
                f"({int((~right).sum())} of {n} labels wrong)"
                if budget == n
                else f"{noise:>5} {budget:>6}  {cells}"
            )


if __name__ == "__main__":
    main()
