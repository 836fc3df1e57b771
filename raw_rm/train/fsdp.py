"""FSDP2 for the training loop: shard a reward model, clip its gradients, gather and load full states.

Under ``ray.strategy=fsdp`` each Ray Train worker shards the model with torch's FSDP2
(``torch.distributed.fsdp.fully_shard``): every transformer block is its own unit, the root holds the rest
(embeddings, pooler, reward head). Parameters become ``DTensor`` shards, so the loop's plain-module calls
(``state_dict()``, ``load_state_dict()``, ``clip_grad_norm_``) would save shards, load shards and clip by a
local norm. The loop calls the hooks below instead; for an unsharded module (local or DDP) each hook does
exactly what the loop did before, so those paths are unchanged.

    model = shard_model(model, mp_dtype=torch.bfloat16)    # in place; same class API, DTensor parameters
    norm = clip_grad_norm(params, 1.0)                       # the norm of the full gradient, on every rank
    state = model_state_dict(model)                          # collective; the full state on rank 0, {} elsewhere

Full states use torch.distributed.checkpoint's ``get_model_state_dict`` / ``get_optimizer_state_dict``
(``full_state_dict=True, cpu_offload=True``): the saved ``model.pt`` has the same keys and shapes as an
unsharded model's. The optimizer state is keyed by parameter name (its ``state_dict()`` uses integer ids), so an
FSDP checkpoint resumes under FSDP. Every function that gathers or scatters is a collective: all ranks call it.
Measured on torch 2.13.0+cpu: ``fully_shard`` with gloo on CPU works (the tests train 2 CPU workers).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def is_sharded(model: nn.Module) -> bool:
    """True when ``model``'s parameters are FSDP2 ``DTensor`` shards."""
    if not torch.distributed.is_available():
        return False
    # torch.distributed.* is imported inside functions: a torch build may lack it (is_available() is False) and the
    # local, unsharded path never loads it
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks to shard one by one.

    Hugging Face models name their block classes in ``_no_split_modules`` (``BertLayer``, ``GPT2Block``, ...),
    the unit accelerate's FSDP auto-wrap uses too. Without that, the children of the longest ``nn.ModuleList``.
    """
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard_model(model: nn.Module, *, mp_dtype: torch.dtype | None = None, cpu_offload: bool = False) -> nn.Module:
    """Shard ``model`` in place with ``fully_shard``: each block, then the root. Needs an initialised process group.

    Args:
        model: on its training device already (FSDP shards what is there).
        mp_dtype: compute dtype of the blocks (``torch.bfloat16`` on GPU): ``MixedPrecisionPolicy`` all-gathers
            and computes them in it, reduces gradients in fp32, and returns fp32 activations; the root (embeddings,
            reward head) keeps fp32, so rewards are not rounded to bf16. None = fp32 everywhere (the loop's
            autocast still applies).
        cpu_offload: keep the shards, their gradients and so AdamW's state in host memory (``CPUOffloadPolicy``);
            each unit's parameters are copied to the device for its forward and backward only.

    Returns:
        the same module object, now sharded.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    blocks = block_modules(model)
    if not blocks:
        logger.warning(
            "FSDP: no transformer blocks found in %s: sharding the whole model as one unit", type(model).__name__
        )
    policy = (
        MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32, output_dtype=torch.float32)
        if mp_dtype
        else MixedPrecisionPolicy()
    )
    if cpu_offload and not torch.accelerator.is_available():
        raise ValueError(
            "ray.cpu_offload=true: FSDP2 offloads shards from a GPU to host memory, and this worker has "
            "no GPU (ray.use_gpu=true); without one the shards are in host memory already"
        )
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for block in blocks:
        fully_shard(block, mp_policy=policy, offload_policy=offload)
    fully_shard(model, offload_policy=offload)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "FSDP: sharded %d blocks (%s) + root, %.1fM parameters, block compute dtype %s%s",
        len(blocks),
        type(blocks[0]).__name__ if blocks else "-",
        n_params / 1e6,
        mp_dtype or torch.float32,
        ", shards offloaded to CPU" if cpu_offload else "",
    )
    return model


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip gradients by their global norm and return that norm (before clipping) as a plain tensor.

    Unsharded: ``torch.nn.utils.clip_grad_norm_``. Sharded: the norm of ``DTensor`` gradients is a partial
    result per rank; ``full_tensor()`` reduces it to the norm of the full gradient (the same on every rank, and the
    same as DDP's), which then scales every shard (torchtitan does the same).
    """
    if not params or not torch.distributed.is_available():
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients without reducing them: DDP's ``no_sync()``, FSDP2's ``set_requires_gradient_sync``."""
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
        return
    if not hasattr(model, "set_requires_gradient_sync"):
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()``; sharded: the full state on CPU on rank 0 and ``{}`` on the others (collective)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def cpu_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's full state (the best weights so far); sharded: on rank 0, ``{}`` elsewhere."""
    if not is_sharded(model) or torch.distributed.get_world_size() == 1:
        # One rank on CPU: the "gathered" full state is the live parameters themselves (measured on torch 2.13:
        # the next optimiser step changed it), so a snapshot must be copied.
        return {k: v.detach().to("cpu", copy=True) for k, v in model_state_dict(model).items()}
    return model_state_dict(model)


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()``; sharded: the full state keyed by parameter name, on rank 0 (collective)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, device: torch.device) -> None:
    """Load a full state; sharded: rank 0's ``state`` is scattered to every rank's shards (collective)."""
    if not is_sharded(model):
        model.load_state_dict({k: v.to(device) for k, v in state.items()})
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(broadcast_from_rank0=True))


def load_model_file(model: nn.Module, path: Path, *, device: torch.device) -> None:
    """Load ``model.pt`` (a full state dict); sharded: only rank 0 reads the file."""
    if not is_sharded(model):
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return
    state = torch.load(path, map_location="cpu", weights_only=True) if _rank() == 0 else {}
    load_model_state_dict(model, state, device=device)


def load_optimizer_file(
    model: nn.Module, optimizer: torch.optim.Optimizer, path: Path, *, device: torch.device
) -> None:
    """Load ``optimizer.pt``; sharded: rank 0 reads the name-keyed full state and every rank takes its shard."""
    if not is_sharded(model):
        optimizer.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = torch.load(path, map_location="cpu", weights_only=True) if _rank() == 0 else {}
    set_optimizer_state_dict(model, optimizer, state, options=_options(broadcast_from_rank0=True))


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | Path) -> None:
    """Write a distributed checkpoint (``torch.distributed.checkpoint``): every rank writes its own shards of the
    weights and the AdamW state, nothing is gathered, so a 70B model saves at the speed of all ranks' disks
    (collective). :func:`load_sharded` reads it back under any worker count."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | Path) -> None:
    """Load a :func:`save_sharded` checkpoint into this run's shards; the run may have another number of workers
    than the one that wrote it (DCP reads each rank's slices of the saved tensors) (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)  # the layout to fill (AdamW state initialised)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def unsharded_copy(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
    """An unsharded CPU copy of ``model`` for export (``save_model``): rank 0 gets it, the others None (collective).

    ``build`` makes a fresh module of the same architecture (e.g. ``build_model(cfg.model)[0]``); it runs on
    rank 0 only, takes the gathered weights strictly and ``model``'s metadata. Unsharded ``model``: returned as is.
    """
    if not is_sharded(model):
        return model
    state = model_state_dict(model)
    if _rank() != 0:
        return None
    plain = build()
    plain.load_state_dict(state)
    if hasattr(model, "metadata"):
        plain.metadata = model.metadata
    return plain.eval()


def _rank() -> int:
    return (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )
