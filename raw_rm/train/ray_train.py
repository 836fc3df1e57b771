"""Data-parallel training on Ray Train: the same recipe, the same Config, DDP or FSDP2 (edge).

    result = train_ray(load_config(None, ["ray.num_workers=2"]))
    result.model_dir            # <output_dir>/model, exactly as train_local writes it

Each worker runs ``raw_rm.train.recipe.run_recipe``; Ray touches it only at its documented points:
``prepare_model`` (``ray.train.torch.prepare_model`` for DDP; torch's ``fully_shard`` via raw_rm/train/fsdp.py for
FSDP), ``rank``/``world_size`` (each worker's sampler reads a disjoint shard), Ray's checkpoint as ``resume_from``
and a callback that calls ``ray.train.report`` on the loop's checkpoint schedule.

- Global batch = ``train.batch_size`` (per worker) x ``ray.num_workers`` x ``train.grad_accum_steps``; logged.
- Checkpoints: rank 0 writes the loop's checkpoint folder (model, optimiser, scheduler, RNG, sampler position;
  under FSDP every rank first helps gather the full state) and every rank calls ``ray.train.report`` (a barrier in Ray Train V2); Ray keeps the best
  ``ray.keep_checkpoints`` by ``train.early_stopping_metric`` plus the latest.
- Fault tolerance: ``FailureConfig(max_failures)`` restarts the worker group; each worker resumes from
  ``ray.train.get_checkpoint()`` at the exact next micro-batch, so no example is repeated or skipped.
- Resume after the driver stopped: the same ``ray.run_name`` and ``train.resume=true`` (``raw-rm train --ray
  --resume``); without a run name, the newest run under the storage path.
- The final model (best weights when ``train.restore_best``) travels back in a last checkpoint and is saved
  to ``<output_dir>/model`` with ``metrics.json`` and ``config.yaml`` beside it, as ``train_local`` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raw_rm.config import Config, ConfigError, apply_overrides, config_from_dict
from raw_rm.cpu_threads import plan_threads
from raw_rm.models.backbones import TINY_BACKBONES
from raw_rm.runtime import resolve_precision
from raw_rm.train.fsdp import shard_model
from raw_rm.train.recipe import RecipeResult, run_recipe, summarise_fit, write_run_files
from raw_rm.train.results import FitResult, TrainResult

log = logging.getLogger(__name__)

FINISHED_MARKER = "raw_rm_finished.json"  # written in the run folder when a run completed
FINAL_MARKER = "final.json"  # inside the last checkpoint: it holds the saved model, not a resumable state


# --------------------------------------------------------------------------------------------- driver
def init_ray(address: str | None) -> None:
    """Connect to ``address`` if given; else Ray's own discovery: $RAY_ADDRESS (set inside `ray job submit`), then
    the cluster a local `ray start` recorded; with neither, a local Ray starts in this process.

    Does nothing when Ray is already initialised (a test session, a Ray job's driver that called it first).
    """
    if ray.is_initialized():
        return
    ray.init(address=address)
    ctx = ray.get_runtime_context()
    log.info(
        "Ray: %s (GCS %s), resources %s",
        "cluster" if address or os.environ.get("RAY_ADDRESS") else "local or discovered",
        ctx.gcs_address,
        ray.cluster_resources(),
    )


def global_batch_size(cfg: Config) -> int:
    """Pairs per optimiser step across the run: per-worker batch x workers x accumulation steps."""
    return cfg.train.batch_size * cfg.ray.num_workers * cfg.train.grad_accum_steps


def train_ray(cfg: Config, *, callbacks: Iterable[Any] = (), worker_callbacks: Iterable[Any] = ()) -> TrainResult:
    """Train ``cfg`` with a ``TorchTrainer`` of ``cfg.ray.num_workers`` workers; save ``<output_dir>/model``.

    Args:
        cfg: the run's config (``ray.*`` picks workers, GPUs, strategy, failures, storage and run name).
        callbacks: loop callbacks (e.g. ``raw_rm.tracking.runs.MlflowCallback``); they are pickled to the workers
            and run on rank 0 only, so metrics are sent once.
        worker_callbacks: loop callbacks every rank attaches to its loop (each worker gets its own unpickled copy;
            ``attach(trainer)`` is called when defined, see ``raw_rm.train.recipe``).

    Raises:
        ConfigError: a run name that exists without ``train.resume``, or nothing to resume.
        ray.train.TrainingFailedError: the workers failed more than ``ray.max_failures`` times.
    """
    _check_strategy(cfg)
    out = Path(cfg.train.output_dir).resolve()
    # Workers may start in another working directory: give them absolute paths.
    cfg = apply_overrides(cfg, {"train.output_dir": str(out), **_absolute_local_paths(cfg)})
    storage = _storage_path(cfg, out)
    run_name = _run_name(cfg, storage)
    init_ray(cfg.ray.address)
    log.info(
        "Ray Train run %r in %s: %d worker(s) x batch %d x accumulation %d = global batch %d pairs per step; "
        "strategy %s, %s, max_failures %d",
        run_name,
        storage,
        cfg.ray.num_workers,
        cfg.train.batch_size,
        cfg.train.grad_accum_steps,
        global_batch_size(cfg),
        cfg.ray.strategy,
        "GPU" if cfg.ray.use_gpu else "CPU",
        cfg.ray.max_failures,
    )
    # Without validation data there is no metric to rank by: keep the latest checkpoints instead.
    has_val = cfg.data.eval_path is not None or cfg.data.val_fraction > 0
    metric = cfg.train.early_stopping_metric if has_val else None
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "config": asdict(cfg),
            "callbacks": list(callbacks),
            "worker_callbacks": list(worker_callbacks),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if cfg.ray.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.ray.keep_checkpoints,
                checkpoint_score_attribute=metric,
                checkpoint_score_order=cfg.train.early_stopping_mode,
            ),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
        ),
    )
    result = trainer.fit()
    return _collect(cfg, result, out, storage, run_name)


def _check_strategy(cfg: Config) -> None:
    """Refuse FSDP combinations the loop does not support, before any worker starts.

    FSDP here is torch's FSDP2 (``fully_shard``, raw_rm/train/fsdp.py), not Ray 2.60's
    ``prepare_model(parallel_strategy="fsdp")``, which is FSDP1, CUDA-only and skips world size 1.
    """
    if cfg.ray.strategy != "fsdp":
        return
    if cfg.train.precision == "fp16":
        raise ConfigError(
            "ray.strategy=fsdp with train.precision=fp16: the loop's GradScaler does not handle sharded "
            "gradients; use train.precision=bf16 (or fp32)"
        )
    if cfg.loss.param_l2_coef > 0:
        raise ConfigError(
            "ray.strategy=fsdp with loss.param_l2_coef > 0: the penalty sums sharded parameters; use "
            "train.weight_decay instead, or ray.strategy=ddp"
        )


def _absolute_local_paths(cfg: Config) -> dict[str, str]:
    """Relative data and backbone paths that exist here, made absolute (``--data pairs.jsonl`` from the CLI)."""
    found = {}
    for key, value in (
        ("data.train_path", cfg.data.train_path),
        ("data.eval_path", cfg.data.eval_path),
        ("model.backbone", cfg.model.backbone),
    ):
        if key == "model.backbone" and value in ("minilm", *TINY_BACKBONES):  # packaged names, not paths
            continue
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute() and Path(value).exists():
            found[key] = str(Path(value).resolve())
    return found


def _storage_path(cfg: Config, out: Path) -> str:
    path = cfg.ray.storage_path
    if path is None:
        return str(out / "ray")
    return path if "://" in path else str(Path(path).resolve())


def _run_name(cfg: Config, storage: str) -> str:
    """A fresh unique name, the given one (refusing to silently reload a finished run), or the one to resume.

    Reusing the name of a finished run makes Ray reload it and return the old result without training, hence the checks.
    """
    name, local = cfg.ray.run_name, "://" not in storage
    if cfg.train.resume:
        if name is None:
            runs = (
                sorted((p for p in Path(storage).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
                if local and Path(storage).is_dir()
                else []
            )
            if not runs:
                raise ConfigError(f"train.resume=true but no Ray Train run under {storage} to resume: set ray.run_name")
            name = runs[-1].name
        if local and (Path(storage) / name / FINISHED_MARKER).exists():
            raise ConfigError(
                f"ray.run_name={name!r} already finished (see {Path(storage) / name}); nothing to resume: "
                "start a new run (leave ray.run_name unset for a unique name)"
            )
        log.info("resuming Ray Train run %r from its latest checkpoint", name)
        return name
    if name is None:
        return f"raw_rm-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if local and (Path(storage) / name).exists():
        raise ConfigError(
            f"ray.run_name={name!r} exists under {storage}: pass --resume (train.resume=true) to continue it, "
            "or choose another name"
        )
    return name


def _collect(cfg: Config, result: Any, out: Path, storage: str, run_name: str) -> TrainResult:
    """Copy the final model out of the last checkpoint; write metrics.json/config.yaml; mark the run finished."""

    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name!r} ended without a checkpoint (see {result.path})")
    model_dir = out / "model"
    with result.checkpoint.as_directory() as ckpt:
        ckpt = Path(ckpt)
        if not (ckpt / FINAL_MARKER).exists():
            raise RuntimeError(
                f"the last checkpoint of run {run_name!r} ({result.checkpoint.path}) holds no final model"
            )
        final = json.loads((ckpt / FINAL_MARKER).read_text())
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(ckpt / "model", model_dir)
    fit = FitResult(**final["fit"])
    metrics = summarise_fit(fit)
    metrics["global_batch_size"] = float(global_batch_size(cfg))
    metrics["num_workers"] = float(cfg.ray.num_workers)
    write_run_files(out, cfg, metrics)
    if "://" not in storage:
        marker = {"model_dir": str(model_dir), "steps": fit.steps, "finished_at": time.time()}
        (Path(storage) / run_name / FINISHED_MARKER).write_text(json.dumps(marker))
    log.info("Ray Train run %r: %d steps, saved %s", run_name, fit.steps, model_dir)
    return TrainResult(
        model_dir=str(model_dir), metrics=metrics, fit=fit, config=asdict(cfg), data_report=final.get("data_report", "")
    )


# -------------------------------------------------------------------------------------------- workers
class RayReportCallback:
    """Reports each loop checkpoint to Ray Train; every rank reports (a barrier), only rank 0 with files.

    The reported metrics carry the latest validation metrics, so Ray can rank checkpoints by
    ``train.early_stopping_metric`` even when a checkpoint falls between evaluations.
    """

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.last_eval: dict[str, float] = {}

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.last_eval = dict(metrics)

    def on_checkpoint(self, step: int, path: str | None, metrics: dict[str, float]) -> None:
        report = {**self.last_eval, **metrics, "step": float(step)}
        checkpoint = Checkpoint.from_directory(path) if path is not None and self.rank == 0 else None
        # The loop's local copy is redundant once Ray has persisted it to storage.
        ray.train.report(report, checkpoint=checkpoint, delete_local_checkpoint_after_upload=checkpoint is not None)


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the Config, run the recipe on this rank's shard (resuming if Ray has a
    checkpoint), then send the saved model back in a last report."""
    cfg = config_from_dict(loop_config["config"], source="<ray train_loop_config>")
    # Ray's checkpoint is the resume source here, never the worker's local output_dir.
    cfg = replace(cfg, train=replace(cfg.train, resume=False))
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg.train.num_threads:  # Ray set OMP_NUM_THREADS to the reserved CPUs (1 for <= 1): size from what is usable
        plan = plan_threads(cfg.ray.cpus_per_worker, ctx.get_local_world_size())
        cfg = replace(cfg, train=replace(cfg.train, num_threads=plan.threads))  # the trainer sets torch's threads
        log.info("rank %d: torch %s", rank, plan.reason)
    callbacks: list[Any] = [RayReportCallback(rank), *(loop_config.get("worker_callbacks") or [])]
    if rank == 0:
        callbacks += list(loop_config.get("callbacks") or [])
    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        resume_dir = None
        if checkpoint is not None:
            resume_dir = stack.enter_context(checkpoint.as_directory())
            if (Path(resume_dir) / FINAL_MARKER).exists():
                raise RuntimeError("this Ray Train run already finished; start a new run instead of resuming it")
            log.info("rank %d resuming from Ray checkpoint %s", rank, checkpoint.path)
        final = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="raw_rm_final_")))
        run = run_recipe(
            cfg,
            callbacks=callbacks,
            prepare_model=lambda m: _prepare(m, cfg),
            rank=rank,
            world_size=world_size,
            resume_from=resume_dir,
            model_dir=final / "model",
        )
        _report_final(cfg, run, final)


def _prepare(model: Any, cfg: Config) -> Any:
    """DDP: Ray's ``prepare_model`` (device move; DDP when world_size > 1). FSDP: torch's FSDP2 on this device."""
    if cfg.ray.strategy != "fsdp":
        return ray.train.torch.prepare_model(model, parallel_strategy=cfg.ray.strategy)

    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model.to(device)
    # bf16 blocks through FSDP's MixedPrecisionPolicy on GPU; on CPU the loop's autocast alone (as under DDP).
    is_bf16 = device.type == "cuda" and resolve_precision(cfg.train.precision, device) == "bf16"
    return shard_model(model, mp_dtype=torch.bfloat16 if is_bf16 else None, cpu_offload=cfg.ray.cpu_offload)


def _report_final(cfg: Config, run: RecipeResult, final: Path) -> None:
    """The last report: rank 0 ships the saved model (best weights if restore_best) and the FitResult."""
    fit = run.fit
    metrics = {**fit.final_metrics, "step": float(fit.steps), "final": 1.0}
    if fit.best_metric is not None:
        metrics[cfg.train.early_stopping_metric] = fit.final_metrics.get(
            cfg.train.early_stopping_metric, fit.best_metric
        )
    if run.model_dir is None:  # ranks > 0
        ray.train.report(metrics, checkpoint=None)
        return
    (final / FINAL_MARKER).write_text(json.dumps({"fit": asdict(fit), "data_report": run.data_report}))
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(final)))
