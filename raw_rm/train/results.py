"""What training returns and how the world outside the loop plugs into it (no torch, no loop).

``FitResult`` is what ``RewardModelTrainer.fit`` returns, ``TrainResult`` what the recipe's callers
(``train_local``, ``train_ray``) return; ``Callback`` is the protocol MLflow, Ray Train and Tune implement;
a callback raises ``StopTraining`` to end a fit cleanly after the current step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Callback", "FitResult", "StopTraining", "TrainResult"]


@dataclass
class FitResult:
    """What ``fit()`` returns; ``final_metrics`` are the validation metrics of the weights left in the model."""

    steps: int  # optimiser steps taken in total (including those before a resume)
    epochs: float  # epochs completed (fractional when max_steps or early stopping cut one short)
    stopped_early: bool
    best_metric: float | None  # best value of cfg.train.early_stopping_metric seen
    best_step: int | None
    final_metrics: dict[str, float]
    history: list[dict[str, float]]  # one entry per evaluation (with "step")
    train_time_s: float  # wall time inside training steps (excludes evaluation and checkpoints)
    pairs_per_s: float  # training items (pairs, groups or rated responses) per second of train_time_s
    tokens_per_s: float  # real (non-pad) tokens per second of train_time_s
    padding_fraction: float  # pad positions / all positions over training batches
    n_truncated: int  # sequences truncated to max_len_tokens over this fit (all epochs)
    last_checkpoint: str | None = None
    resumed_from: str | None = None
    train_cpu_s: float = 0.0  # process CPU time inside training steps (all threads): a contention-robust cost


@dataclass
class TrainResult:
    """What ``train_local`` (and ``train_ray``) return."""

    model_dir: str  # the saved model (``load_model`` / ``RewardModelInference`` open it)
    metrics: dict[str, float]  # final validation metrics plus throughput
    fit: FitResult | None = None
    config: dict[str, Any] = field(default_factory=dict)  # asdict(cfg) of the run
    data_report: str = ""  # the loader's summary (kept / dropped records)


class Callback(Protocol):
    """Everything outside the loop (MLflow, Ray Train, Tune) plugs in here. Methods are optional."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, path: str | None, metrics: dict[str, float]) -> None: ...  # None: rank > 0

    def on_fit_end(self, result: FitResult) -> None: ...


class StopTraining(Exception):
    """A callback may raise this (e.g. a Tune scheduler decision) to end ``fit`` cleanly after the current step."""
