"""Model inputs built straight from a tokenizer, independent of raw_rm.data.batching (tests only)."""

from __future__ import annotations

import torch

PROMPTS = ["How do I boil an egg?", "Tell me a joke about cats and their owners, please."]
RESPONSES = ["Put it in boiling water. Wait nine minutes. Cool it.", "No."]


def encode_features(
    tokenizer, prompts: list[str], responses: list[str], input_kind: str, *, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Features for ``input_kind`` ("concat", "split", "segments") with the tokenizer's pair encoding.

    Segments: the response's tokens (token type 1, not special), numbered by sentence: a sentence ends
    after each "." token.
    """
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        if input_kind == "split":
            features = {}
            for part, texts in (("prompt", prompts), ("response", responses)):
                enc = tokenizer(texts, padding=True, return_tensors="pt")
                features.update({f"{part}_{name}": value for name, value in enc.items()})
            return features
        enc = tokenizer(
            prompts,
            responses,
            padding=True,
            return_tensors="pt",
            return_token_type_ids=True,
            return_special_tokens_mask=True,
        )
    finally:
        tokenizer.padding_side = saved_side
    features = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in tokenizer.model_input_names:
        features["token_type_ids"] = enc["token_type_ids"]
    if input_kind == "segments":
        features["segment_ids"] = sentence_ids(tokenizer, enc)
    return features


def sentence_ids(tokenizer, enc) -> torch.Tensor:
    in_response = (enc["token_type_ids"] == 1) & (enc["special_tokens_mask"] == 0) & (enc["attention_mask"] == 1)
    period = tokenizer.convert_tokens_to_ids(".")
    ids = torch.full_like(enc["input_ids"], -1)
    for row in range(ids.shape[0]):
        sentence = 0
        for col in range(ids.shape[1]):
            if in_response[row, col]:
                ids[row, col] = sentence
                if enc["input_ids"][row, col] == period:
                    sentence += 1
    return ids
