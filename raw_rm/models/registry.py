"""``build_model(cfg)``: ModelConfig -> (model, tokenizer), through the arch -> class map ``MODEL_CLASSES``."""

from __future__ import annotations

import dataclasses
import logging

from transformers import PreTrainedTokenizerBase

from raw_rm.config import ModelConfig
from raw_rm.models.backbones import (
    backbone_config,
    freeze_lower_layers,
    is_decoder,
    load_backbone,
    load_tokenizer,
    set_backbone_dropout,
)
from raw_rm.models.base import MODEL_CLASSES, RewardMetadata, RewardModelBase, model_class
from raw_rm.models.io import load_model
from raw_rm.models.levers import apply_levers

logger = logging.getLogger(__name__)

__all__ = ["MODEL_CLASSES", "build_model"]

# ModelConfig fields an init_from run chooses for itself rather than inheriting from the saved model.
RUN_CHOICES = (
    "init_from",
    "train_layers",
    "attn_implementation",
    "gradient_checkpointing",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
)


def build_model(cfg: ModelConfig) -> tuple[RewardModelBase, PreTrainedTokenizerBase]:
    """Build the reward model ``cfg`` describes, in training mode, with its tokenizer.

    ``cfg.init_from`` (a directory written by ``save_model``) loads that model instead of a fresh backbone;
    its saved ModelConfig wins, and fields of ``cfg`` that differ from it are named in a warning, except
    ``train_layers`` and the memory levers (:data:`RUN_CHOICES`): how much of the model to train and how is this
    run's choice (:func:`freeze_lower_layers`, :func:`raw_rm.models.levers.apply_levers`).

    Raises:
        ValueError: unknown ``cfg.arch`` (the message lists the known ones) or an invalid combination.
    """
    cls = model_class(cfg.arch)
    if cfg.init_from is not None:
        model, tokenizer = _build_from_saved(cfg)
        return apply_levers(_freeze(model, cfg.train_layers), model.model_cfg), tokenizer
    tokenizer = load_tokenizer(cfg.backbone)
    config = backbone_config(cfg.backbone, tokenizer)
    if cfg.backbone_dropout is not None:
        set_backbone_dropout(config, cfg.backbone_dropout)
    with_head = cls.wants_hf_head(cfg, decoder=is_decoder(config))
    backbone, tokenizer = load_backbone(
        cfg.backbone, with_head=with_head, dropout=cfg.dropout, tokenizer=tokenizer, config=config
    )
    model = cls(cfg, backbone, RewardMetadata(base_model=cfg.backbone))
    model.train()
    return apply_levers(_freeze(model, cfg.train_layers), cfg), tokenizer


def _freeze(model: RewardModelBase, train_layers: int | None) -> RewardModelBase:
    if train_layers is not None:
        trainable, total = freeze_lower_layers(model, train_layers)
        logger.info(
            "model.train_layers=%d: training %s of %s parameters (the top %d layers and the heads)",
            train_layers,
            f"{trainable:,}",
            f"{total:,}",
            train_layers,
        )
    return model


def _build_from_saved(cfg: ModelConfig) -> tuple[RewardModelBase, PreTrainedTokenizerBase]:
    model, tokenizer = load_model(cfg.init_from)
    saved = model.model_cfg
    if saved.arch != cfg.arch:
        raise ValueError(f"model.init_from: {cfg.init_from} holds arch {saved.arch!r} but model.arch is {cfg.arch!r}")
    differing = [
        f.name
        for f in dataclasses.fields(cfg)
        if f.name not in RUN_CHOICES and getattr(cfg, f.name) != getattr(saved, f.name)
    ]
    if differing:
        logger.warning(
            "model.init_from=%s: keeping the saved model's %s (the config asks for %s)",
            cfg.init_from,
            ", ".join(f"{name}={getattr(saved, name)!r}" for name in differing),
            ", ".join(f"{name}={getattr(cfg, name)!r}" for name in differing),
        )
    model.model_cfg = dataclasses.replace(saved, **{name: getattr(cfg, name) for name in RUN_CHOICES})
    model.train()
    return model, tokenizer
