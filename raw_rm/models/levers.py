"""Memory levers of a reward model, each a ``model.*`` config key: attention kernel, activation checkpointing, LoRA.

    apply_levers(model, cfg)            # after build_model made the model; in place
    state = merged_state_dict(model)    # what save_model writes: LoRA adapters folded into plain Linear weights

- ``attn_implementation``: set on every Hugging Face trunk inside the model (``set_attn_implementation``).
  ``flash_attention_2`` needs the ``flash-attn`` package, which builds for CUDA only.
- ``gradient_checkpointing``: Hugging Face's per-block activation checkpointing, non-reentrant (the variant that
  works with frozen inputs, DDP and FSDP2), so each block's activations are recomputed in backward.
- ``lora_rank > 0``: peft LoRA adapters injected in place (``inject_adapter_in_model``: the modules keep their
  names, no wrapper class) on the trunks' Linear layers named by ``lora_targets``. Everything inside the trunks but
  the adapters is frozen; what lies outside them (the reward head, raw_rm's own layers) trains in full. Saving
  writes :func:`merged_state_dict`, so the artifact is a plain model (``Qwen2ForSequenceClassification`` for a
  Qwen2 concat model) that loads without peft and scores as the adapted model did.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn
from transformers import PreTrainedModel

from raw_rm.config import ModelConfig

logger = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name for a single model's adapters


def hf_trunks(model: nn.Module) -> list[PreTrainedModel]:
    """The bare Hugging Face trunks inside ``model`` (a sequence classifier's ``base_model`` included)."""
    return [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.base_model is m]


def check_attn_implementation(name: str) -> None:
    """Raise a ValueError naming ``model.attn_implementation`` when ``name`` cannot run here."""
    if name not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f'model.attn_implementation: unknown "{name}" (known: sdpa, eager, flash_attention_2)')
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "model.attn_implementation=flash_attention_2: the flash-attn package is not installed (it builds for "
            "CUDA GPUs only: pip install flash-attn --no-build-isolation); use sdpa (the default) or eager"
        )


def apply_levers(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Apply ``cfg``'s attention kernel, activation checkpointing and LoRA to ``model`` in place."""
    trunks = hf_trunks(model)
    check_attn_implementation(cfg.attn_implementation)
    for trunk in trunks:
        if trunk.config._attn_implementation != cfg.attn_implementation:
            try:
                trunk.set_attn_implementation(cfg.attn_implementation)
            except (ValueError, ImportError) as exc:
                raise ValueError(
                    f"model.attn_implementation={cfg.attn_implementation}: {type(trunk).__name__} cannot use it "
                    f"({exc}); use sdpa or eager"
                ) from exc
    if cfg.gradient_checkpointing:
        for trunk in trunks:
            if not trunk.supports_gradient_checkpointing:
                raise ValueError(
                    f"model.gradient_checkpointing=true: {type(trunk).__name__} does not support it; set it to false"
                )
            if hasattr(trunk, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
                trunk.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                trunk.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_rank:
        trainable, total = apply_lora(
            model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets
        )
        logger.info(
            "model.lora_rank=%d on %s: training %s of %s parameters (adapters and reward head)",
            cfg.lora_rank,
            ", ".join(cfg.lora_targets),
            f"{trainable:,}",
            f"{total:,}",
        )
    return model


def lora_target_linears(model: nn.Module, targets: list[str] | tuple[str, ...]) -> dict[str, nn.Linear]:
    """Linear layers of ``model`` whose name is, or ends with ``.`` + , one of ``targets`` (peft's rule).

    Raises:
        ValueError: a target that matches no Linear, naming the Linear names there are.
    """
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unmatched = [t for t in targets if not any(matches(n, t) for n in linears)]
    if unmatched:
        known = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(
            f"model.lora_targets: {unmatched} match no Linear module of {type(model).__name__} "
            f"(its Linear names: {', '.join(known)})"
        )
    return {n: m for n, m in linears.items() if any(matches(n, t) for t in targets)}


def apply_lora(
    model: nn.Module, *, rank: int, alpha: float, dropout: float, targets: list[str] | tuple[str, ...]
) -> tuple[int, int]:
    """Inject LoRA adapters into every trunk's ``targets`` Linear layers and freeze the rest of the trunks.

    Returns (trainable, total) parameter counts.

    Raises:
        ValueError: the model holds no Hugging Face trunk, or a target matches no Linear of a trunk.
    """
    from peft import LoraConfig, inject_adapter_in_model

    trunks = hf_trunks(model)
    if not trunks:
        raise ValueError(f"model.lora_rank={rank}: {type(model).__name__} holds no Hugging Face trunk to adapt")
    for trunk in trunks:
        names = sorted(lora_target_linears(trunk, targets))
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
        inject_adapter_in_model(config, trunk, adapter_name=ADAPTER)
        for name, param in trunk.named_parameters():
            param.requires_grad_(".lora_" in name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers inside ``model`` by qualified name (empty without peft or adapters)."""
    if importlib.util.find_spec("peft") is None:
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def merged_state_dict(model: nn.Module, *, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each LoRA layer folded into a plain Linear: ``x.base_layer.weight`` + the
    adapter's ``B @ A * alpha / rank`` under ``x.weight``, adapter tensors dropped. The model is not changed."""
    state = model.state_dict()
    for name, layer in lora_layers(model).items():
        prefix = f"{name}." if name else ""
        base_prefix = prefix + "base_layer."
        for key in [k for k in state if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            if key.startswith(base_prefix):
                state[prefix + key[len(base_prefix) :]] = state.pop(key)
            elif rest.startswith("lora_"):
                del state[key]
        weight = state[prefix + "weight"]
        with torch.no_grad():
            state[prefix + "weight"] = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return state
