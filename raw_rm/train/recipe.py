"""THE training recipe: config -> data -> model -> fit -> save (-> the gate evaluation when asked), written once.

    result = run_recipe(cfg)                         # what train_local does
    result.model_dir, result.metrics["val_accuracy"]

Every way raw_rm trains a model calls :func:`run_recipe`, passing in only what differs:

- ``train_local`` (``raw_rm.train.local``): the recipe as is, in this process;
- a Ray Train worker (``raw_rm.train.ray_train``): ``prepare_model`` (DDP / FSDP2), ``rank``/``world_size`` (a
  disjoint shard per worker), Ray's checkpoint as ``resume_from``, the report callback, ``model_dir`` in the
  checkpoint that travels back to the driver;
- a Tune trial (``raw_rm.tune.driver``): the trial's config, its reporter callback, Tune's checkpoint;
- an ensemble member (``raw_rm.train.ensemble.train_member``): ``records`` (a bootstrap resample) and its seed.

The loop itself (``RewardModelTrainer``) knows nothing of Ray, Tune or MLflow: they plug in through
``prepare_model`` and callbacks. A callback with an ``attach(trainer)`` method is handed the trainer before
``fit`` (tests use it to trace what each rank trains on).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from raw_rm.config import Config
from raw_rm.data import load_train_val
from raw_rm.eval.gate import evaluate_for_gate
from raw_rm.models import build_model, save_model
from raw_rm.runtime import seed_everything
from raw_rm.train import fsdp
from raw_rm.train.loop import RewardModelTrainer
from raw_rm.train.objectives import record_kind
from raw_rm.train.results import FitResult

logger = logging.getLogger(__name__)

ModelFactory = Callable[[Config], tuple[Any, Any]]  # cfg -> (model, tokenizer)


@dataclass
class RecipeResult:
    """What :func:`run_recipe` returns (on every rank; ``model_dir`` is None where nothing was saved)."""

    trainer: RewardModelTrainer  # the loop, with the trained model (best weights when train.restore_best)
    fit: FitResult
    metrics: dict[str, float]  # summarise_fit, n_train, n_val, bayes_accuracy_val (synthetic), eval.* (evaluate)
    model_dir: Path | None  # where rank 0 saved the model
    data_report: str = ""  # the loader's summary ("" when the caller passed records)


def run_recipe(
    cfg: Config,
    *,
    callbacks: Iterable[Any] = (),
    records: tuple[Sequence[Any], Sequence[Any]] | None = None,
    model_factory: ModelFactory | None = None,
    prepare_model: Callable[[Any], Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    resume_from: str | Path | None = None,
    model_dir: str | Path | None = None,
    evaluate: bool = False,
) -> RecipeResult:
    """Train one reward model on ``cfg`` and save it (see the module doc for who passes what).

    Args:
        cfg: the run's config.
        callbacks: loop callbacks (``raw_rm.train.results.Callback``; optionally ``attach(trainer)``).
        records: (train, validation) records instead of loading ``cfg.data``.
        model_factory: builds (model, tokenizer) from cfg; default ``raw_rm.models.build_model(cfg.model)``.
        prepare_model, rank, world_size: as ``RewardModelTrainer`` (Ray Train's DDP/FSDP wrapping and data shard).
        resume_from: a checkpoint folder to continue from (``cfg.train.resume`` picks the latest one).
        model_dir: where rank 0 saves the trained model; default ``<cfg.train.output_dir>/model``. ``metrics.json``
            and the resolved ``config.yaml`` are written beside it.
        evaluate: after saving, run the gate evaluation (``raw_rm.eval.gate.evaluate_for_gate``): T fitted on the
            calibration split and saved into the model, the report in ``eval_report/`` beside the model, its flat
            metrics in ``metrics`` as ``eval.<name>``.
    """
    # 1. config -> seeds: a fresh reward head is drawn from the global RNG, so the same seed gives the same model
    seed_everything(cfg.train.seed)
    # 2. model
    model, tokenizer = (model_factory or _build_model)(cfg)
    # 3. data (every Ray rank loads the same records; the sampler gives each rank its shard)
    train_records, val_records, report_text, bayes = _records(cfg, tokenizer, records)
    if getattr(model.metadata, "data_fingerprint", None) is None:
        model.metadata.data_fingerprint = records_fingerprint(train_records)
    # 4. fit
    callbacks = list(callbacks)
    trainer = RewardModelTrainer(
        cfg,
        model,
        tokenizer,
        train_records,
        val_records,
        callbacks=callbacks,
        prepare_model=prepare_model,
        rank=rank,
        world_size=world_size,
    )
    for cb in callbacks:
        if callable(getattr(cb, "attach", None)):
            cb.attach(trainer)
    fit = trainer.fit(resume_from=resume_from)
    metrics = summarise_fit(fit)
    metrics.update(n_train=float(len(train_records)), n_val=float(len(val_records)))
    if bayes is not None:
        metrics["bayes_accuracy_val"] = bayes  # synthetic data: the best any model can do
    # 5. save: under FSDP every rank helps gather the full weights, rank 0 writes them
    saved = _save(cfg, trainer, Path(model_dir) if model_dir is not None else Path(cfg.train.output_dir) / "model")
    if saved is None:
        return RecipeResult(trainer, fit, metrics, None, report_text)
    shown = ("val_accuracy", "val_loss", "val_ece", "val_nll")
    logger.info(
        "saved %s; %d truncated sequences (max_len_tokens=%d); %.1f pairs/s; final %s",
        saved,
        fit.n_truncated,
        cfg.data.max_len_tokens,
        fit.pairs_per_s,
        ", ".join(f"{k}={v:.4f}" for k, v in fit.final_metrics.items() if k in shown),
    )
    # 6. the gate evaluation, when the caller asks for it
    if evaluate:
        report = evaluate_for_gate(cfg, saved, report_dir=saved.parent / "eval_report")
        metrics.update({f"eval.{k}": v for k, v in (report.flat_metrics() if report is not None else {}).items()})
    write_run_files(saved.parent, cfg, metrics)
    return RecipeResult(trainer, fit, metrics, saved, report_text)


def _build_model(cfg: Config) -> tuple[Any, Any]:
    return build_model(cfg.model)


def _records(
    cfg: Config, tokenizer: Any, records: tuple[Sequence[Any], Sequence[Any]] | None
) -> tuple[list, list, str, float | None]:
    """(train, val, the loader's summary, the synthetic validation Bayes accuracy or None)."""
    if records is not None:
        train, val = records
        report_text, bayes = "", None
    else:
        train, val, report = load_train_val(cfg, tokenizer=tokenizer)
        report_text = report.summary()
        logger.info("data: %s", report_text)
        bayes = (getattr(report, "bayes_accuracy", None) or {}).get("val")
    logger.info("training on %d %s, validating on %d", len(train), record_kind(train), len(val))
    return list(train), list(val), report_text, float(bayes) if bayes is not None else None


def _save(cfg: Config, trainer: RewardModelTrainer, model_dir: Path) -> Path | None:
    """Save the trained model on rank 0 (None on the others); a sharded model is gathered by every rank first."""

    model = fsdp.unsharded_copy(trainer.model, lambda: _build_model(cfg)[0])
    if trainer.rank != 0 or model is None:
        return None
    save_model(model, trainer.tokenizer, model_dir)
    return model_dir


def records_fingerprint(records: Sequence[Any]) -> str:
    """A short content hash of training records (order-sensitive), stored in the model's metadata as
    ``data_fingerprint`` (the MLflow tag of that name is ``raw_rm.tracking.runs.source_fingerprint``)."""
    digest = hashlib.sha256()
    for rec in records:
        digest.update(repr(sorted(asdict(rec).items(), key=lambda kv: kv[0])).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


def summarise_fit(fit: FitResult) -> dict[str, float]:
    """The numbers of a fit worth keeping: final validation metrics plus throughput and truncation counts."""
    metrics = {k: float(v) for k, v in fit.final_metrics.items()}
    metrics.update(
        steps=float(fit.steps),
        epochs=float(fit.epochs),
        train_time_s=fit.train_time_s,
        pairs_per_s=fit.pairs_per_s,
        tokens_per_s=fit.tokens_per_s,
        padding_fraction=fit.padding_fraction,
        n_truncated=float(fit.n_truncated),
        stopped_early=float(fit.stopped_early),
    )
    if fit.best_metric is not None:
        metrics["best_metric"] = float(fit.best_metric)
        metrics["best_step"] = float(fit.best_step or 0)
    return metrics


def write_run_files(output_dir: str | Path, cfg: Config, metrics: dict[str, Any]) -> None:
    """``metrics.json`` and the resolved ``config.yaml`` beside the saved model."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
