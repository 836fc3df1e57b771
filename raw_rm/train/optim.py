"""What the loop optimises and how fast: AdamW over the trainable weights, and the learning-rate schedule.

optimizer = build_optimizer(model, lr=5e-5, weight_decay=0.01)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup_steps, "cosine"))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from raw_rm.config import ConfigError


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimiser step ``s``: linear warm-up, then cosine / linear decay to 0, or
    constant."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"train.schedule: expected cosine, linear or constant, got {schedule!r}")
    total_steps = max(1, total_steps)

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only: biases and norm weights (1-D tensors) are not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "norm" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
