"""veRL custom reward function that asks a raw_rm endpoint for the reward.

veRL config (PPO/GRPO trainer):
    custom_reward_function.path=examples/verl_reward_fn.py
    custom_reward_function.name=compute_score
and in the environment of the reward workers:
    RAW_RM_URL=http://<head-node>:8000   RAW_RM_API_KEY=...   (the key only when the server is not on loopback)
    RAW_RM_REWARD=reward                 (or lcb / min / mean: which aggregate the policy optimises)

veRL passes the decoded response as ``solution_str``; the prompt is taken from ``extra_info["prompt"]`` when the
data set stores it there (recommended: a reward model judges the response *to a prompt*), else it is empty.
"""

from __future__ import annotations

import os
from typing import Any

from raw_rm.serve.client import RewardClient

_CLIENT: RewardClient | None = None


def _client() -> RewardClient:
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = RewardClient(
            os.environ.get("RAW_RM_URL", "http://127.0.0.1:8000"), api_key=os.environ.get("RAW_RM_API_KEY")
        )
    return _CLIENT


def _prompt_of(extra_info: Any) -> str:
    if isinstance(extra_info, dict):
        prompt = extra_info.get("prompt", "")
        if isinstance(prompt, list):  # chat messages: keep the text of the turns
            return "\n\n".join(
                f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt if isinstance(m, dict)
            )
        return str(prompt or "")
    return ""


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> float:
    """veRL's reward-function signature: one response in, one float out (``ground_truth`` is not needed)."""
    result = _client().score([(_prompt_of(extra_info), solution_str)])[0]
    return float(result[os.environ.get("RAW_RM_REWARD", "reward")])


def compute_score_batch(
    data_sources: list[str], solution_strs: list[str], ground_truths: list[Any], extra_infos: list[Any], **kwargs: Any
) -> list[float]:
    """veRL's batched reward manager signature: one HTTP request for the whole batch."""
    results = _client().score([(_prompt_of(e), s) for e, s in zip(extra_infos, solution_strs)])
    key = os.environ.get("RAW_RM_REWARD", "reward")
    return [float(r[key]) for r in results]
