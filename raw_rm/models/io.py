"""``save_model`` / ``load_model`` for any saved model folder: one model or an ensemble of them.

A single model is written by ``raw_rm.models.persistence`` (Hugging Face or raw_rm layout); a folder with an
``ensemble.json`` is an ensemble (``raw_rm.models.ensemble``) and loads as one ``EnsembleRewardModel``, so
everything that takes a model folder takes an ensemble unchanged; so does a folder with a ``lora_ensemble.json``
(K LoRA members over one base, ``raw_rm.models.lora_ensemble``).

    save_model(model, tokenizer, "runs/rm/model")
    model, tokenizer = load_model("runs/rm/model")     # evaluation mode
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from raw_rm.models.base import RewardModelBase
from raw_rm.models.ensemble import EnsembleRewardModel, is_ensemble_dir, load_ensemble, save_ensemble_model
from raw_rm.models.lora_ensemble import (
    is_lora_ensemble,
    is_lora_ensemble_dir,
    load_lora_ensemble,
    save_lora_ensemble_model,
)
from raw_rm.models.persistence import load_single_model, save_single_model

__all__ = ["load_model", "save_model"]


def save_model(model: RewardModelBase, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Write ``model`` (a single model or an ensemble) and its tokenizer to ``directory``; returns its path."""
    if is_lora_ensemble(model):
        return save_lora_ensemble_model(model, directory)
    if isinstance(model, EnsembleRewardModel):
        return save_ensemble_model(model, tokenizer, directory)
    return save_single_model(model, tokenizer, directory)


def load_model(directory: str | Path) -> tuple[RewardModelBase, PreTrainedTokenizerBase]:
    """Load a folder written by :func:`save_model` (or a Hugging Face sequence-classification folder with one label)
    in evaluation mode, with its tokenizer. No network, no original backbone.

    Raises:
        FileNotFoundError: the folder holds no saved model.
        ValueError: a malformed saved record (the message names the file and key).
    """
    if is_lora_ensemble_dir(directory):
        return load_lora_ensemble(directory)
    if is_ensemble_dir(directory):
        return load_ensemble(directory)
    return load_single_model(directory)
