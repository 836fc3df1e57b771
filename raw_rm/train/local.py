"""Train one reward model in this process: ``raw_rm.train.recipe.run_recipe`` as it is.

    result = train_local(load_config(None, ["train.epochs=1"]))
    result.model_dir        # <output_dir>/model: load_model / RewardModelInference open it
    result.metrics["val_accuracy"]

``<output_dir>`` then holds ``model/`` (weights, tokenizer, metadata with reward normalisation and reference
distributions), ``metrics.json`` (final validation metrics, throughput, truncation counts), ``config.yaml`` (the
resolved config) and ``checkpoints/`` (resumable, see ``raw_rm.train.checkpoint``); with ``evaluate`` also
``eval_report/`` (the gate evaluation, ``raw_rm.eval.gate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from raw_rm.config import Config
from raw_rm.train.recipe import ModelFactory, run_recipe
from raw_rm.train.results import TrainResult

__all__ = ["TrainResult", "train_local"]


def train_local(
    cfg: Config,
    *,
    callbacks: Iterable[Any] = (),
    records: tuple[Sequence[Any], Sequence[Any]] | None = None,
    resume_from: str | None = None,
    model_factory: ModelFactory | None = None,
    evaluate: bool = False,
) -> TrainResult:
    """Train on ``cfg`` in this process and save ``<cfg.train.output_dir>/model`` (arguments: ``run_recipe``'s)."""
    run = run_recipe(
        cfg,
        callbacks=callbacks,
        records=records,
        resume_from=resume_from,
        model_factory=model_factory,
        evaluate=evaluate,
    )
    return TrainResult(
        model_dir=str(run.model_dir), metrics=run.metrics, fit=run.fit, config=asdict(cfg), data_report=run.data_report
    )
