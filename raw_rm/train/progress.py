"""What a training run shows while it runs: the step log line, rates, and the progress bar.

Rates are per step from the step's own counts (``n_items``, ``n_tokens``, ``n_padded``) and its wall time; a log
line is the mean over the steps since the last one. The bar is tqdm's, on rank 0 only and only where stderr is a
terminal (a log file or a CI job gets the log lines instead).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

__all__ = ["postfix", "progress_bar", "step_line", "step_rates", "window_mean"]


def step_rates(metrics: dict[str, float], dt: float) -> dict[str, float]:
    """pairs/s (training items of any kind), real tokens/s and the padding share of one step of ``dt`` seconds."""
    positions = metrics["n_tokens"] + metrics["n_padded"]
    return {
        "pairs_per_s": metrics["n_items"] / dt if dt > 0 else float("nan"),
        "tokens_per_s": metrics["n_tokens"] / dt if dt > 0 else float("nan"),
        "padding_fraction": metrics["n_padded"] / positions if positions else 0.0,
    }


def window_mean(window: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each step metric over ``window`` (NaN-aware); truncations summed, the last learning rate."""
    mean = {}
    for key in window[0]:
        values = [m[key] for m in window]
        mean[key] = float("nan") if all(math.isnan(v) for v in values) else float(np.nanmean(values))
    mean["n_truncated"] = float(sum(m["n_truncated"] for m in window))
    mean["lr"] = window[-1]["lr"]
    return mean


def step_line(step: int, total_steps: int, mean: dict[str, float]) -> str:
    """``step 40/120: loss 0.6012 acc 0.688 grad_norm 1.204 lr 4.1e-05 | 9.8 pairs/s 2631 tokens/s padding 7.5%``."""
    return (
        f"step {step}/{total_steps}: loss {mean['loss']:.4f} acc {mean['accuracy']:.3f} "
        f"grad_norm {mean['grad_norm']:.3f} lr {mean['lr']:.2e} | {mean['pairs_per_s']:.1f} pairs/s "
        f"{mean['tokens_per_s']:.0f} tokens/s padding {100 * mean['padding_fraction']:.1f}%"
    )


def postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The progress bar's right-hand side for one step."""
    return {
        "pairs/s": f"{metrics['pairs_per_s']:.1f}",
        "tok/s": f"{metrics['tokens_per_s']:.0f}",
        "loss": f"{metrics['loss']:.3f}",
        "acc": f"{metrics['accuracy']:.2f}",
    }


def progress_bar(total_steps: int, initial: int, *, enabled: bool) -> Any:
    """A tqdm bar over optimiser steps, or None when disabled or stderr is not a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm  # tqdm.auto picks the notebook widget where one runs

    return tqdm(total=total_steps, initial=initial, desc="train", unit="step", dynamic_ncols=True)
