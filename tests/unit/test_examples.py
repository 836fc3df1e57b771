"""The rollout examples' own logic, with scorers whose answers are known (no server, no trained model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from raw_rm.data import synthetic

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_best_of_n_with_the_true_reward_as_scorer_picks_the_oracle() -> None:
    best_of_n = _load("best_of_n")
    args = best_of_n.parse_args(["--model", "unused", "--prompts", "12", "-n", "4", "--seed", "1"])

    def truth(prompt: str, responses: list[str]) -> list[dict[str, float]]:
        # A perfect, certain scorer: every aggregate equals the latent reward.
        return [
            dict.fromkeys(("mean", "lcb", "min", "mean_minus_lambda_var"), synthetic.latent_reward(prompt, r))
            for r in responses
        ]

    result = best_of_n.run(args, score=truth)
    assert result["best_mean"] == pytest.approx(result["oracle"])
    assert result["best_lcb"] == pytest.approx(result["oracle"])
    assert result["random"] < result["oracle"]


def test_best_of_n_uncertainty_penalty_avoids_an_uncertain_pick() -> None:
    best_of_n = _load("best_of_n")
    args = best_of_n.parse_args(["--model", "unused", "--prompts", "8", "-n", "4"])

    def noisy(prompt: str, responses: list[str]) -> list[dict[str, float]]:
        # The mean prefers the WORST response (+10) but is very unsure of it; lcb = mean - std undoes that.
        rewards = [synthetic.latent_reward(prompt, r) for r in responses]
        worst = min(range(len(rewards)), key=rewards.__getitem__)
        rows = []
        for i, r in enumerate(rewards):
            mean, std = (r + 10.0, 20.0) if i == worst else (r, 0.0)
            rows.append({"mean": mean, "lcb": mean - std, "min": mean - std, "mean_minus_lambda_var": mean - std**2})
        return rows

    result = best_of_n.run(args, score=noisy)
    assert result["best_lcb"] > result["best_mean"]


def test_verl_prompt_extraction() -> None:
    verl = _load("verl_reward_fn")
    assert verl._prompt_of({"prompt": "What is 2 + 2?"}) == "What is 2 + 2?"
    assert verl._prompt_of({"prompt": [{"role": "user", "content": "Hi"}]}) == "user: Hi"
    assert verl._prompt_of(None) == ""
