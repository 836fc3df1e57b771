"""One saved reward model per directory, loadable without network or the original backbone.

``save_single_model`` / ``load_single_model`` handle one model; ``raw_rm.models.io.save_model`` / ``load_model``
(what callers use) add ensemble folders (``raw_rm.models.ensemble``) on top. Two layouts, told apart on loading:

- Hugging Face layout (``RewardModel`` with the Hugging Face pooling): exactly what
  ``AutoModelForSequenceClassification.save_pretrained`` writes (``config.json``, ``model.safetensors``)
  plus the tokenizer files. raw_rm's ModelConfig and RewardMetadata live in ``config.json`` under the key
  ``"raw_rm"``, which transformers carries along untouched. ``AutoModelForSequenceClassification`` and
  ``AutoTokenizer`` load the directory and score ``tokenizer(prompt, response)`` as raw_rm does.
- raw_rm layout (every other model): ``raw_rm_model.json`` (arch, ModelConfig, RewardMetadata),
  ``raw_rm_model.safetensors`` (the whole module's state dict), ``backbone/config.json`` (the trunk's
  transformers config) and the tokenizer files. There is deliberately no top-level ``config.json``:
  transformers would otherwise load a model that pools differently and give different scores.

``RewardMetadata.reference`` must hold JSON values (lists, not arrays). A training-only length head
(``model.length_head``) is not saved: the saved ModelConfig says ``length_head: false`` and the weights hold the
reward model alone, which scores without it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from raw_rm.config import ModelConfig, config_from_dict
from raw_rm.models.backbones import ensure_pad_token, is_decoder, load_saved_tokenizer, trunk_from_config
from raw_rm.models.base import RewardMetadata, RewardModelBase, model_class
from raw_rm.models.concat import RewardModel
from raw_rm.models.levers import lora_layers, merged_state_dict

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
RAW_RM_KEY = "raw_rm"  # key of raw_rm's record inside a Hugging Face config.json
RAW_RM_FILE = "raw_rm_model.json"
RAW_RM_WEIGHTS = "raw_rm_model.safetensors"
BACKBONE_DIR = "backbone"
_HF_FILES = ("config.json", "model.safetensors")


def save_single_model(model: RewardModelBase, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` to ``directory`` (created if needed) and return its path.

    Files of the other layout left by an earlier save into the same directory are removed, so the
    directory never holds two models.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    record = {
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "model_cfg": dataclasses.asdict(dataclasses.replace(model.model_cfg, length_head=False)),
        "metadata": model.metadata.to_dict(),
    }
    json.dumps(record)  # fail before writing anything if metadata holds non-JSON values
    if isinstance(model, RewardModel) and model.hf is not None:
        _remove(path, [RAW_RM_FILE, RAW_RM_WEIGHTS, BACKBONE_DIR])
        config = model.hf.config
        setattr(config, RAW_RM_KEY, record)
        try:
            # LoRA adapters are folded into plain Linear weights: the folder is an ordinary SeqCls model.
            state = merged_state_dict(model.hf) if lora_layers(model.hf) else None
            model.hf.save_pretrained(path, state_dict=state)
        finally:
            delattr(config, RAW_RM_KEY)  # keep the in-memory config free of a stale copy
    else:
        _remove(path, list(_HF_FILES))
        model.backbone_config.save_pretrained(path / BACKBONE_DIR)
        length_head = getattr(model, "length_head", None)
        if length_head is not None:
            model.length_head = None  # left out of the saved weights (dropped at inference); put back below
        try:
            if lora_layers(model):  # adapters merged into the base weights: a plain model on disk
                safetensors.torch.save_file(merged_state_dict(model), str(path / RAW_RM_WEIGHTS))
            else:
                safetensors.torch.save_model(model, str(path / RAW_RM_WEIGHTS))
        finally:
            if length_head is not None:
                model.length_head = length_head
        (path / RAW_RM_FILE).write_text(json.dumps(record, indent=2) + "\n")
    tokenizer.save_pretrained(path)
    logger.info("saved %s model to %s", model.arch, path)
    return path


def load_single_model(directory: str | Path) -> tuple[RewardModelBase, PreTrainedTokenizerBase]:
    """Load a directory written by :func:`save_single_model` (or any Hugging Face sequence-classification
    directory with one label) in evaluation mode, with its tokenizer. No network, no original backbone.

    Raises:
        FileNotFoundError: the directory holds neither ``raw_rm_model.json`` nor ``config.json``.
        ValueError: the saved record is malformed (the message names the file and key).
    """
    path = Path(directory)
    if (path / RAW_RM_FILE).is_file():
        model, tokenizer = _load_raw(path)
    elif (path / "config.json").is_file():
        model, tokenizer = _load_hf(path)
    else:
        raise FileNotFoundError(f"{path}: not a saved reward model (expected {RAW_RM_FILE} or config.json)")
    model.eval()
    return model, tokenizer


def _load_hf(path: Path) -> tuple[RewardModelBase, PreTrainedTokenizerBase]:
    config = AutoConfig.from_pretrained(path)
    record = getattr(config, RAW_RM_KEY, None)
    source = f"{path / 'config.json'}: {RAW_RM_KEY}"
    if record is None:  # a plain Hugging Face reward model: Hugging Face pooling, default metadata
        model_cfg = ModelConfig(arch="concat", backbone=str(path))
        metadata = RewardMetadata(base_model=str(path))
    else:
        _check_record(record, source)
        delattr(config, RAW_RM_KEY)
        model_cfg = config_from_dict(record["model_cfg"], root=ModelConfig, source=f"{source}.model_cfg")
        metadata = RewardMetadata.from_dict(record["metadata"], source=f"{source}.metadata")
    if config.num_labels != 1:
        raise ValueError(f"{path / 'config.json'}: a reward model has num_labels=1, got {config.num_labels}")
    hf = AutoModelForSequenceClassification.from_pretrained(path, config=config)
    tokenizer = load_saved_tokenizer(path)
    if is_decoder(config):
        ensure_pad_token(hf, tokenizer)
    return RewardModel(model_cfg, hf, metadata), tokenizer


def _load_raw(path: Path) -> tuple[RewardModelBase, PreTrainedTokenizerBase]:
    source = str(path / RAW_RM_FILE)
    try:
        record = json.loads((path / RAW_RM_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from exc
    _check_record(record, source)
    model_cfg = config_from_dict(record["model_cfg"], root=ModelConfig, source=f"{source}: model_cfg")
    metadata = RewardMetadata.from_dict(record["metadata"], source=f"{source}: metadata")
    cls = model_class(record["arch"])
    config = AutoConfig.from_pretrained(path / BACKBONE_DIR)
    with torch.random.fork_rng(devices=[]):  # fresh heads are overwritten: leave the caller's RNG alone
        model = cls(model_cfg, trunk_from_config(config), metadata)
    safetensors.torch.load_model(model, str(path / RAW_RM_WEIGHTS), strict=True)
    tokenizer = load_saved_tokenizer(path)
    return model, tokenizer


def _check_record(record: Any, source: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a mapping, got {type(record).__name__}")
    missing = [key for key in ("format_version", "arch", "model_cfg", "metadata") if key not in record]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}")
    if record["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{source}: format_version {record['format_version']!r} is not supported "
            f"(this raw_rm reads {FORMAT_VERSION})"
        )


def _remove(path: Path, names: list[str]) -> None:
    for name in names:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
