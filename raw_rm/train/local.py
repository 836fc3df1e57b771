"""Train one reward model in this process: config → data → model → fit → save.

    result = train_local(load_config(None, ["train.epochs=1"]))
    result.model_dir        # <output_dir>/model: load_model / RewardModelInference open it
    result.metrics["val_accuracy"]

``<output_dir>`` then holds ``model/`` (weights, tokenizer, metadata with reward normalisation and reference
distributions), ``metrics.json`` (final validation metrics, throughput, truncation counts), ``config.yaml`` (the
resolved config) and ``checkpoints/`` (resumable, see ``raw_rm.train.checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from raw_rm.config import Config
from raw_rm.runtime import seed_everything
from raw_rm.train.loop import FitResult, RewardModelTrainer, TrainResult
from raw_rm.train.objectives import record_kind

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "train_local", "data_fingerprint", "write_run_files"]


def data_fingerprint(records: Sequence[Any]) -> str:
    """A short content hash of training records (order-sensitive), stored in the model's metadata."""
    digest = hashlib.sha256()
    for rec in records:
        digest.update(repr(sorted(asdict(rec).items(), key=lambda kv: kv[0])).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


def write_run_files(output_dir: str | Path, cfg: Config, metrics: dict[str, Any]) -> None:
    """``metrics.json`` and the resolved ``config.yaml`` beside the saved model."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))


def summarise_fit(fit: FitResult) -> dict[str, float]:
    """The numbers of a fit worth keeping: final validation metrics plus throughput and truncation counts."""
    metrics = {k: float(v) for k, v in fit.final_metrics.items()}
    metrics.update(
        steps=float(fit.steps), epochs=float(fit.epochs), train_time_s=fit.train_time_s,
        pairs_per_s=fit.pairs_per_s, tokens_per_s=fit.tokens_per_s, padding_fraction=fit.padding_fraction,
        n_truncated=float(fit.n_truncated), stopped_early=float(fit.stopped_early),
    )
    if fit.best_metric is not None:
        metrics["best_metric"] = float(fit.best_metric)
        metrics["best_step"] = float(fit.best_step or 0)
    return metrics


def train_local(
    cfg: Config,
    *,
    callbacks: Iterable[Any] = (),
    records: tuple[Sequence[Any], Sequence[Any]] | None = None,
    resume_from: str | None = None,
    model_factory: Callable[[Config], tuple[Any, Any]] | None = None,
) -> TrainResult:
    """Train on ``cfg`` in this process and save ``<cfg.train.output_dir>/model``.

    Args:
        cfg: the run's config.
        callbacks: loop callbacks (MLflow, Tune), see ``raw_rm.train.loop.Callback``.
        records: (train, val) records to use instead of loading ``cfg.data`` (ensembles pass resamples).
        resume_from: a checkpoint folder to continue from (``cfg.train.resume`` picks the latest one).
        model_factory: builds (model, tokenizer) from cfg; default ``raw_rm.models.build_model(cfg.model)``.
    """
    from raw_rm.data import load_train_val
    from raw_rm.models import build_model, save_model

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)  # fresh heads are drawn from the global RNG: same seed, same initial model
    model, tokenizer = (model_factory or (lambda c: build_model(c.model)))(cfg)
    report_text, report = "", None
    if records is None:
        train_records, val_records, report = load_train_val(cfg, tokenizer=tokenizer)
        report_text = report.summary() if hasattr(report, "summary") else str(report)
        logger.info("data: %s", report_text)
    else:
        train_records, val_records = records
    logger.info("training on %d %s, validating on %d", len(train_records), record_kind(train_records), len(val_records))
    if getattr(model.metadata, "data_fingerprint", None) is None:
        model.metadata.data_fingerprint = data_fingerprint(train_records)
    trainer = RewardModelTrainer(cfg, model, tokenizer, train_records, val_records, callbacks=callbacks)
    fit = trainer.fit(resume_from=resume_from)
    model_dir = out / "model"
    save_model(model, tokenizer, model_dir)
    metrics = summarise_fit(fit)
    metrics.update(n_train=float(len(train_records)), n_val=float(len(val_records)))
    bayes = getattr(report, "bayes_accuracy", None) if records is None else None
    if bayes and "val" in bayes:
        metrics["bayes_accuracy_val"] = float(bayes["val"])  # synthetic data: the best any model can do
    write_run_files(out, cfg, metrics)
    logger.info(
        "saved %s; %d truncated sequences (max_len_tokens=%d); %.1f pairs/s; final %s",
        model_dir, fit.n_truncated, cfg.data.max_len_tokens, fit.pairs_per_s,
        ", ".join(f"{k}={v:.4f}" for k, v in fit.final_metrics.items() if k in ("val_accuracy", "val_loss", "val_ece", "val_nll")),
    )
    return TrainResult(model_dir=str(model_dir), metrics=metrics, fit=fit, config=asdict(cfg), data_report=report_text)
