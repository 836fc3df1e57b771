"""``predict_reward``: one prompt and response in, one float out (for notebooks, examples and checks)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from raw_rm.data.batching import encode
from raw_rm.models.base import RewardModelBase


def predict_reward(
    model: RewardModelBase,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    *,
    max_len_tokens: int = 512,
) -> float:
    """The raw reward (``RewardOutput.rewards``, before normalisation) of ``response`` to ``prompt``.

    Encodes with ``raw_rm.data.batching.encode`` for the model's ``input_kind`` (the same encoding training
    uses), runs without gradients in evaluation mode, and restores the model's previous mode.
    """
    encoded = encode(tokenizer, [prompt], [response], max_len_tokens=max_len_tokens, input_kind=model.input_kind)
    device = model.device
    features = {name: tensor.to(device) for name, tensor in encoded.features.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(model(**features).rewards[0])
    finally:
        model.train(was_training)
