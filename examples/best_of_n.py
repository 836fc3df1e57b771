"""A minimal rollout loop on CPU: a small generator proposes n responses per prompt, raw_rm scores them with
uncertainty, and best-of-n keeps the one with the best uncertainty-penalised reward.

The generator samples replies to the synthetic default's prompts (raw_rm.data.synthetic), whose true reward is
known, so the loop can show what reward-model selection buys over a random pick, in true reward:

    python examples/best_of_n.py --model runs/quickstart/ensemble           # in-process scoring
    python examples/best_of_n.py --url http://127.0.0.1:8000                # through a running raw-rm serve
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys

from raw_rm.config import SyntheticConfig
from raw_rm.data import synthetic


def make_scorer(args: argparse.Namespace):
    """(prompt, [responses]) -> list of {aggregate name: value} from a server or an in-process model."""
    if args.url:
        from raw_rm.serve.client import RewardClient

        client = RewardClient(args.url)
        return lambda prompt, responses: client.score([(prompt, r) for r in responses])

    import torch

    from raw_rm.inference import RewardModelInference
    from raw_rm.uncertainty import aggregate

    resolver = None
    if args.model.startswith(("models:/", "runs:/")):
        from raw_rm.tracking.registry import uri_resolver

        resolver = uri_resolver()  # the store of $MLFLOW_TRACKING_URI, else mlflow.tracking_uri's default
    inference = RewardModelInference(args.model, resolver=resolver)

    def score(prompt: str, responses: list[str]) -> list[dict[str, float]]:
        members = torch.as_tensor(
            inference.batch_predict_members([prompt] * len(responses), responses, normalized=True)
        )
        agg = aggregate(members.reshape(len(responses), -1), lam=args.lam, k=args.k)
        return [{name: float(values[i]) for name, values in agg.items()} for i in range(len(responses))]

    return score


def run(args: argparse.Namespace, score=None) -> dict[str, float]:
    """Mean true reward of the response each policy picks: random, best by mean, best by the penalised aggregate."""
    rng = random.Random(args.seed)
    prompts = [p.prompt for p in synthetic.generate(SyntheticConfig(n_prompts=args.prompts, seed=args.seed + 1)).pairs]
    score = score or make_scorer(args)
    picked: dict[str, list[float]] = {"random": [], "best_mean": [], f"best_{args.aggregate}": [], "oracle": []}
    for prompt in prompts:
        candidates = [synthetic.sample_response(prompt, rng) for _ in range(args.n)]
        truth = [synthetic.latent_reward(prompt, c) for c in candidates]
        scores = score(prompt, candidates)
        picked["random"].append(truth[rng.randrange(args.n)])
        picked["best_mean"].append(truth[max(range(args.n), key=lambda i: scores[i]["mean"])])
        picked[f"best_{args.aggregate}"].append(truth[max(range(args.n), key=lambda i: scores[i][args.aggregate])])
        picked["oracle"].append(max(truth))
    return {name: statistics.fmean(values) for name, values in picked.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model or ensemble directory (or models:/ URI) scored in-process")
    source.add_argument("--url", help="base URL of a running raw-rm serve endpoint")
    parser.add_argument("--prompts", type=int, default=40, help="rollout prompts")
    parser.add_argument("-n", type=int, default=4, help="candidates per prompt")
    parser.add_argument(
        "--aggregate",
        default="lcb",
        choices=["lcb", "min", "mean_minus_lambda_var"],
        help="uncertainty-penalised reward",
    )
    parser.add_argument("--lam", type=float, default=1.0, help="lambda of mean - lambda * var (in-process only)")
    parser.add_argument("--k", type=float, default=1.0, help="k of mean - k * std (in-process only)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(f"best-of-{args.n} over {args.prompts} prompts: mean TRUE reward of the pick")
    for name, value in result.items():
        print(f"  {name:<28} {value:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
