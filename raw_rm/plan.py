"""Per-GPU memory plan of a reward-model training run, from the backbone's config alone (no weights).

    shape = model_shape("qwen2.5-7b")                     # or a local folder holding config.json
    plans = plan_memory(shape, gpus=8, max_len_tokens=2048, batch_size=4)
    print(format_plan(plans, gpu_mem_gib=80))

Parameters are counted exactly by building the trunk on PyTorch's ``meta`` device (shapes, no storage), so any
architecture transformers knows is counted right (grouped-query attention, biases, tied embeddings). The
language-model head is not counted: a reward model replaces it by a one-output ``score`` head.

What each combination holds per GPU, in bytes (``P`` = trunk + head parameters, ``W`` = world size):

- full fine-tuning: fp32 master weights (4 P), fp32 gradients (4 P), AdamW's two fp32 moments (8 P);
  with bf16 autocast a bf16 copy of every weight lives through forward and backward (2 P).
- LoRA: the frozen base stays in fp32 (4 P, and the 2 P bf16 autocast copy under DDP), with no gradients or
  optimiser state; adapters and the reward head train as above (16 bytes each). The adapters on the chosen modules
  are ``rank * (in + out)`` parameters a Linear.
- DDP: everything above on every GPU. FSDP2: weights, gradients and optimiser state divided by ``W``, plus the
  working set of unsharded bf16 parameters: the root (embeddings, final norm, head) and two transformer blocks
  (the one computing and the one prefetched), and a bf16 gradient block before its reduce-scatter.
  FSDP2 + CPU offload: sharded weights, gradients and optimiser state live in host memory; the GPU holds the
  working set only.
- Activations (bf16) per token and transformer layer, for a Llama-style block with SDPA/flash attention (which
  keeps no T x T score matrix): the inputs of both norms and their outputs (4 H), the rotated query and the key and
  value (q + 2 kv), the attention output (q), and the MLP's gate, up, activation and product (4 I). ``eager``
  attention also keeps the scores and probabilities (2 heads T). With activation checkpointing a layer keeps only
  its input (H) and one layer at a time is recomputed with all of its activations. A batch of ``batch_size`` pairs
  is ``2 * batch_size`` rows of ``max_len_tokens`` (the padded worst case; packing lowers it to the real tokens).
- ``reserve_gib`` covers what no formula gives: the CUDA context, cuBLAS/NCCL workspaces and allocator
  fragmentation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config

from raw_rm.models.backbones import layer_stack
from raw_rm.models.levers import lora_target_linears

logger = logging.getLogger(__name__)

GIB = 1024**3
Strategy = Literal["ddp", "fsdp", "fsdp_offload"]
Tuning = Literal["full", "lora"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp", "fsdp_offload")
TUNINGS: tuple[Tuning, ...] = ("full", "lora")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Published shapes of well-known decoders (from their config.json on the Hugging Face Hub), so that a plan needs
# no download. Keys are what ``raw-rm plan --model`` accepts besides a local folder.
KNOWN_SHAPES: dict[str, PretrainedConfig] = {
    "qwen2.5-0.5b": Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
    ),
    "qwen2.5-72b": Qwen2Config(
        vocab_size=152064,
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=32768,
    ),
    "llama-3-8b": LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
    ),
    "llama-3-70b": LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=8192,
    ),
    "mistral-7b": MistralConfig(
        vocab_size=32768,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
    ),
}


# Hub ids of the same models (and their instruct variants), so that a training config's model.backbone plans as is.
HUB_IDS = {
    "qwen/qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen/qwen2.5-0.5b-instruct": "qwen2.5-0.5b",
    "qwen/qwen2.5-1.5b": "qwen2.5-1.5b",
    "qwen/qwen2.5-1.5b-instruct": "qwen2.5-1.5b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "qwen/qwen2.5-7b-instruct": "qwen2.5-7b",
    "qwen/qwen2.5-72b": "qwen2.5-72b",
    "qwen/qwen2.5-72b-instruct": "qwen2.5-72b",
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/meta-llama-3-8b-instruct": "llama-3-8b",
    "meta-llama/llama-3.1-8b": "llama-3-8b",
    "meta-llama/llama-3.1-8b-instruct": "llama-3-8b",
    "meta-llama/meta-llama-3-70b": "llama-3-70b",
    "meta-llama/meta-llama-3-70b-instruct": "llama-3-70b",
    "meta-llama/llama-3.1-70b": "llama-3-70b",
    "meta-llama/llama-3.1-70b-instruct": "llama-3-70b",
    "mistralai/mistral-7b-v0.3": "mistral-7b",
    "mistralai/mistral-7b-instruct-v0.3": "mistral-7b",
}


class PlanError(ValueError):
    """A plan that cannot be made or does not fit; the message names the key and what would fit."""


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a backbone, read from its config and a meta-device trunk."""

    name: str
    params: int  # trunk + one-output reward head
    root_params: int  # parameters outside the transformer blocks (embeddings, final norm, head): FSDP's root unit
    block_params: int  # parameters of the largest transformer block
    lora_params_per_rank: int  # adapter parameters at LoRA rank 1 on the chosen target modules
    lora_targets: tuple[str, ...]
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    q_dim: int  # query width (heads * head_dim)
    kv_dim: int  # key (= value) width (key-value heads * head_dim)
    max_position_embeddings: int | None


def model_config(name_or_path: str) -> PretrainedConfig:
    """A transformers config: a local folder (or its ``config.json``), else a name in :data:`KNOWN_SHAPES` or
    :data:`HUB_IDS`."""
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".json":
        path = path.parent
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    key = HUB_IDS.get(name_or_path.lower(), name_or_path.lower())
    if key in KNOWN_SHAPES:
        return KNOWN_SHAPES[key]
    raise PlanError(
        f"model.backbone={name_or_path}: neither a folder with config.json nor a known shape "
        f"({', '.join(KNOWN_SHAPES)}, or their Hub ids)"
    )


def model_shape(name_or_config: str | PretrainedConfig, *, lora_targets=DEFAULT_LORA_TARGETS) -> ModelShape:
    """Count ``name_or_config``'s parameters on the meta device (exact, no memory) and read its widths.

    Raises:
        PlanError: not a decoder/encoder trunk transformers can build, or a LoRA target that matches no module.
    """
    config = model_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    name = name_or_config if isinstance(name_or_config, str) else config.model_type
    try:
        with torch.device("meta"):
            trunk = AutoModel.from_config(config)
    except ValueError as exc:
        raise PlanError(f"--model {name}: transformers builds no sequence model from it ({exc})") from exc
    blocks = layer_stack(trunk)
    hidden = int(config.hidden_size)
    params = sum(p.numel() for p in trunk.parameters()) + hidden  # + score head (H -> 1, no bias)
    block_params = max(sum(p.numel() for p in block.parameters()) for block in blocks)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return ModelShape(
        name=name,
        params=params,
        root_params=params - sum(p.numel() for p in blocks.parameters()),
        block_params=block_params,
        lora_params_per_rank=lora_rank_one_params(trunk, lora_targets),
        lora_targets=tuple(lora_targets),
        hidden_size=hidden,
        intermediate_size=int(
            getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        ),
        num_layers=len(blocks),
        num_heads=heads,
        q_dim=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        max_position_embeddings=getattr(config, "max_position_embeddings", None),
    )


def lora_rank_one_params(model: nn.Module, targets) -> int:
    """Adapter parameters at rank 1: A (r x in) + B (out x r) per targeted Linear."""
    try:
        linears = lora_target_linears(model, targets)
    except ValueError as exc:
        raise PlanError(str(exc)) from exc
    return sum(m.in_features + m.out_features for m in linears.values())


@dataclass(frozen=True)
class MemoryPlan:
    """One combination's bytes per GPU; ``host_bytes`` is what CPU offload moves to host memory per GPU."""

    strategy: Strategy
    tuning: Tuning
    checkpointing: bool
    trainable_params: int
    weights: int
    grads: int
    optimizer: int
    working: int  # bf16 copies: autocast's weight casts (DDP) or FSDP's unsharded blocks
    activations: int
    reserve: int
    host_bytes: int
    lora_rank: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.working + self.activations + self.reserve

    def fits(self, gpu_mem_gib: float) -> bool:
        return self.total <= gpu_mem_gib * GIB

    def keys(self) -> str:
        """The config keys that choose this combination."""
        strategy = {
            "ddp": "ray.strategy=ddp",
            "fsdp": "ray.strategy=fsdp",
            "fsdp_offload": "ray.strategy=fsdp ray.cpu_offload=true",
        }[self.strategy]
        lora = f"model.lora_rank={self.lora_rank if self.tuning == 'lora' else 0}"
        return f"{strategy} {lora} model.gradient_checkpointing={str(self.checkpointing).lower()}"


def activation_bytes(
    shape: ModelShape,
    *,
    tokens: int,
    seq_len: int,
    checkpointing: bool,
    attn_implementation: str = "sdpa",
    bytes_per_value: int = 2,
) -> int:
    """Saved activations of one micro-batch of ``tokens`` tokens in rows of ``seq_len`` (module docstring)."""
    per_token_layer = 4 * shape.hidden_size + 2 * shape.q_dim + 2 * shape.kv_dim + 4 * shape.intermediate_size
    if attn_implementation == "eager":
        per_token_layer += 2 * shape.num_heads * seq_len
    if checkpointing:
        per_token = shape.num_layers * shape.hidden_size + per_token_layer
    else:
        per_token = shape.num_layers * per_token_layer
    per_token += 2 * shape.hidden_size  # embedding output and final norm
    return tokens * per_token * bytes_per_value


def plan_one(
    shape: ModelShape,
    *,
    strategy: Strategy,
    tuning: Tuning,
    checkpointing: bool,
    gpus: int,
    max_len_tokens: int,
    batch_size: int,
    lora_rank: int = 16,
    attn_implementation: str = "sdpa",
    reserve_gib: float = 2.0,
) -> MemoryPlan:
    """The memory of one combination per GPU (module docstring)."""
    if tuning == "lora":
        adapters = lora_rank * shape.lora_params_per_rank
        trainable = adapters + shape.hidden_size  # adapters + score head
        weights = 4 * (shape.params + adapters)
    else:
        trainable = shape.params
        weights = 4 * shape.params
    autocast_copy = 2 * shape.params
    grads, optimizer = 4 * trainable, 8 * trainable
    if strategy == "ddp":
        working = autocast_copy
    else:
        weights, grads, optimizer = (-(-x // gpus) for x in (weights, grads, optimizer))
        working = 2 * shape.root_params + 3 * 2 * shape.block_params
    host = 0
    if strategy == "fsdp_offload":
        host = weights + grads + optimizer
        weights = grads = optimizer = 0
    rows = 2 * batch_size
    acts = activation_bytes(
        shape,
        tokens=rows * max_len_tokens,
        seq_len=max_len_tokens,
        checkpointing=checkpointing,
        attn_implementation=attn_implementation,
    )
    return MemoryPlan(
        strategy,
        tuning,
        checkpointing,
        trainable,
        weights,
        grads,
        optimizer,
        working,
        acts,
        int(reserve_gib * GIB),
        host,
        lora_rank,
    )


def plan_memory(
    shape: ModelShape,
    *,
    gpus: int,
    max_len_tokens: int,
    batch_size: int,
    lora_rank: int = 16,
    attn_implementation: str = "sdpa",
    reserve_gib: float = 2.0,
) -> list[MemoryPlan]:
    """Every strategy x tuning x checkpointing combination (DDP on one GPU is plain single-GPU training)."""
    if gpus < 1:
        raise PlanError(f"--gpus: expected >= 1, got {gpus}")
    if shape.max_position_embeddings and max_len_tokens > shape.max_position_embeddings:
        raise PlanError(
            f"data.max_len_tokens={max_len_tokens}: {shape.name} takes at most {shape.max_position_embeddings} "
            "positions (max_position_embeddings)"
        )
    return [
        plan_one(
            shape,
            strategy=s,
            tuning=t,
            checkpointing=c,
            gpus=gpus,
            max_len_tokens=max_len_tokens,
            batch_size=batch_size,
            lora_rank=lora_rank,
            attn_implementation=attn_implementation,
            reserve_gib=reserve_gib,
        )
        for s in STRATEGIES
        for t in TUNINGS
        for c in (False, True)
    ]


def require_fit(plans: list[MemoryPlan], chosen: MemoryPlan, *, gpu_mem_gib: float) -> None:
    """Raise :class:`PlanError` when ``chosen`` does not fit, naming its keys and the combinations that would."""
    if chosen.fits(gpu_mem_gib):
        return
    fitting = sorted((p for p in plans if p.fits(gpu_mem_gib)), key=lambda p: p.total)
    alternatives = "; ".join(f"{p.keys()} ({p.total / GIB:.1f} GiB)" for p in fitting[:4])
    raise PlanError(
        f"{chosen.keys()}: needs {chosen.total / GIB:.1f} GiB per GPU, more than the {gpu_mem_gib:g} GiB given; "
        + (
            f"these fit: {alternatives}"
            if fitting
            else "no combination fits: add GPUs, or lower train.batch_size or data.max_len_tokens"
        )
    )


def format_plan(plans: list[MemoryPlan], *, gpu_mem_gib: float) -> str:
    """A table in GiB per GPU, one row per combination."""
    head = (
        f"{'strategy':<13} {'tuning':<5} {'ckpt':<4} {'trainable':>14} {'weights':>8} {'grads':>8} "
        f"{'optim':>8} {'working':>8} {'activ':>8} {'total':>8} {'host':>8}  fits {gpu_mem_gib:g} GiB"
    )
    rows = [head]
    for p in plans:
        cells = [p.weights, p.grads, p.optimizer, p.working, p.activations, p.total, p.host_bytes]
        rows.append(
            f"{p.strategy:<13} {p.tuning:<5} {'on' if p.checkpointing else 'off':<4} {p.trainable_params:>14,} "
            + " ".join(f"{c / GIB:>8.2f}" for c in cells)
            + f"  {'yes' if p.fits(gpu_mem_gib) else 'NO'}"
        )
    return "\n".join(rows)


def plan_as_json(shape: ModelShape, plans: list[MemoryPlan], *, gpu_mem_gib: float) -> str:
    return json.dumps(
        {
            "model": dataclasses.asdict(shape),
            "gpu_mem_gib": gpu_mem_gib,
            "plans": [dict(dataclasses.asdict(p), total=p.total, fits=p.fits(gpu_mem_gib)) for p in plans],
        },
        indent=2,
    )


def plan_for_config(
    cfg, *, gpu_mem_gib: float, gpus: int | None = None, reserve_gib: float = 2.0
) -> tuple[ModelShape, list[MemoryPlan], MemoryPlan]:
    """The plan of a training ``Config`` (backbone, workers, batch, length, LoRA, checkpointing, strategy) and
    the combination it chose; ``gpus`` defaults to ``ray.num_workers``."""
    model = cfg.model
    targets = tuple(model.lora_targets) if model.lora_rank else DEFAULT_LORA_TARGETS
    shape = model_shape(model.backbone, lora_targets=targets)
    world = gpus if gpus is not None else cfg.ray.num_workers
    plans = plan_memory(
        shape,
        gpus=world,
        max_len_tokens=cfg.data.max_len_tokens,
        batch_size=cfg.train.batch_size,
        lora_rank=model.lora_rank or 16,
        attn_implementation=model.attn_implementation,
        reserve_gib=reserve_gib,
    )
    strategy = "ddp" if cfg.ray.strategy == "ddp" else ("fsdp_offload" if cfg.ray.cpu_offload else "fsdp")
    tuning = "lora" if model.lora_rank else "full"
    chosen = next(
        p for p in plans if (p.strategy, p.tuning, p.checkpointing) == (strategy, tuning, model.gradient_checkpointing)
    )
    return shape, plans, chosen
