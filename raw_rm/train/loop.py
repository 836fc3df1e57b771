"""THE training loop: plain torch, one code path for every record kind (the kind lives in ``raw_rm.train.objectives``).

Every later layer reuses it unchanged. Ray Train, Ray Tune and MLflow touch it only through
``prepare_model`` (wraps the model, e.g. DDP; default identity), ``rank``/``world_size`` (sampler shards) and
``callbacks`` (``on_step``, ``on_eval``, ``on_checkpoint``, ``on_fit_end``); checkpoints are plain folders
(``raw_rm.train.checkpoint``) that ``save_checkpoint`` writes and ``fit(resume_from=...)`` reads, so an edge can
move them wherever it likes.

    trainer = RewardModelTrainer(cfg, model, tokenizer, train_records, val_records)
    result = trainer.fit()            # FitResult; model.metadata now holds reward_mean/std
    result.final_metrics["val_accuracy"]
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raw_rm.config import Config, ConfigError
from raw_rm.data.batching import LengthGroupedSampler
from raw_rm.losses import param_l2
from raw_rm.runtime import (
    prepare_process,
    resolve_precision,
)
from raw_rm.train import checkpoint as ckpt
from raw_rm.train import fsdp, validation
from raw_rm.train.objectives import Objective, build_objective
from raw_rm.train.optim import build_optimizer, lr_lambda
from raw_rm.train.progress import postfix, progress_bar, step_line, step_rates, window_mean
from raw_rm.train.results import FitResult, StopTraining

__all__ = ["RewardModelTrainer"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- trainer
class RewardModelTrainer:
    """Train one reward model on pairs, k-wise groups, per-aspect ratings or a teacher's scores.

    Args:
        cfg: the run's Config (data.max_len_tokens, loss.*, train.* are read here).
        model: a ``RewardModelBase`` (``forward(**features) -> RewardOutput``, ``metadata``, ``input_kind``).
        tokenizer: its tokenizer.
        train_records / val_records: lists of one record type (kind inferred from the records).
        callbacks: objects with any of ``on_step``, ``on_eval``, ``on_checkpoint``, ``on_fit_end``.
        prepare_model: wraps the model for training (Ray: ``ray.train.torch.prepare_model``); default identity.
            Checkpoints and metadata always use the unwrapped model (an FSDP-sharded one is gathered in full).
        rank / world_size: shard of the training data this process sees; only rank 0 logs, shows progress and
            writes checkpoints.
        device: where to train; None = CUDA when available (and no prepare_model), else the model's device.
        objective: what to learn; default ``build_objective`` for the records' kind (distillation passes its own).
    """

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        tokenizer: Any,
        train_records: Sequence[Any],
        val_records: Sequence[Any],
        *,
        callbacks: Iterable[Any] = (),
        prepare_model: Callable[[nn.Module], nn.Module] | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device | None = None,
        objective: Objective | None = None,
    ) -> None:
        if not train_records:
            raise ValueError("no training records: the data source gave 0 usable records (see the loader's report)")
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        model.metadata.record_training_input(
            cfg.data.max_len_tokens
        )  # scoring reads it back: models.base.effective_max_len
        self.train_records, self.val_records = list(train_records), list(val_records)
        self.callbacks = list(callbacks)
        self.rank, self.world_size, self.is_main = rank, world_size, rank == 0
        tc = cfg.train
        prepare_process(tc)
        if device is None:
            device = "cuda" if torch.cuda.is_available() and prepare_model is None else _model_device(model)
        self.device = torch.device(device)
        if prepare_model is None:
            self.model.to(self.device)
            self.train_model = self.model
        else:
            self.train_model = prepare_model(self.model)
            self.device = _model_device(self.train_model)
        self.precision = resolve_precision(tc.precision, self.device)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.objective = objective or build_objective(cfg, model, tokenizer, self.train_records, self.val_records)
        self.kind = self.objective.kind

        self.sampler = LengthGroupedSampler(
            self._lengths(self.train_records),
            tc.batch_size,
            seed=tc.seed,
            shuffle=True,
            rank=rank,
            world_size=world_size,
        )
        self.batches_per_epoch = len(self._epoch_batches(0))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / tc.grad_accum_steps)
        self.total_steps = tc.max_steps if tc.max_steps is not None else tc.epochs * self.steps_per_epoch
        self.warmup_steps = math.ceil(tc.warmup_ratio * self.total_steps)
        self.optimizer = build_optimizer(self.model, lr=tc.lr, weight_decay=tc.weight_decay)
        for group in self.objective.param_groups():
            self.optimizer.add_param_group(group)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.total_steps, self.warmup_steps, tc.schedule)
        )
        # loop state (all of it goes into checkpoints)
        self.step = 0
        self.epoch = 0
        self.batch_index = 0  # next micro-batch within self.epoch
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.evals_without_improvement = 0
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: str | None = None
        logger.info(
            "trainer: %d %s for training, %d for validation; %d steps (%d per epoch, batch %d x accum %d x %d "
            "workers); precision %s on %s",
            len(self.train_records),
            self.kind,
            len(self.val_records),
            self.total_steps,
            self.steps_per_epoch,
            tc.batch_size,
            tc.grad_accum_steps,
            world_size,
            self.precision,
            self.device,
        )

    def _lengths(self, records: Sequence[Any]) -> list[int]:
        return validation.record_lengths(
            self.tokenizer, self.objective, records, max_len_tokens=self.cfg.data.max_len_tokens
        )

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        return [list(b) for b in self.sampler]

    # ------------------------------------------------------------------------------------ batches
    def collate(self, indices: Sequence[int], records: Sequence[Any] | None = None) -> dict[str, Any]:
        """The objective's batch for ``records[indices]`` (training records by default), with ``index``."""
        return self.objective.collate(self.train_records if records is None else records, indices)

    def _features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return validation.batch_features(batch, self.device)

    def _autocast(self) -> Any:
        dtype = self.autocast_dtype or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None)

    # -------------------------------------------------------------------------------------- steps
    def train_step(self, batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over one batch, or over a list of micro-batches (gradient accumulation).

        Micro-batch losses are weighted by their share of the items, so accumulating micro-batches gives the
        same gradient as one batch of all their items. Returns the step's metrics (loss, accuracy, reward_mean,
        reward_std, margin_mean, grad_norm, lr, n_items, n_tokens, n_padded, n_truncated).
        """
        micro = batch if isinstance(batch, list) else [batch]
        self.train_model.train()
        shares = [self.objective.share(b) for b in micro]
        if sum(shares) <= 0:  # every example weighted 0: fall back to item counts (the loss is 0 anyway)
            shares = [float(self.objective.n_items(b)) for b in micro]
        losses, collected = [], []
        for i, mb in enumerate(micro):
            # DDP: all-reduce gradients only on the last micro-batch of the step (forward and backward inside)
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last else fsdp.no_gradient_sync(self.train_model):
                with self._autocast():
                    output = self.train_model(**self._features(mb))
                loss, parts = self.objective.loss(output, mb, training=True)
                if self.cfg.loss.param_l2_coef > 0:
                    loss = loss + param_l2(self.model.parameters(), self.cfg.loss.param_l2_coef)
                share = shares[i] / sum(shares)
                scaled = loss * share
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            losses.append(float(loss.detach()) * share)
            collected.append(parts)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.max_grad_norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        # FSDP: the norm of the full gradient over DTensor shards (raw_rm/train/fsdp.py); else clip_grad_norm_
        grad_norm = fsdp.clip_grad_norm(params, max_norm if max_norm is not None else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.objective.step_metrics(collected)
        metrics.update(
            loss=sum(losses),
            grad_norm=float(grad_norm),
            lr=float(lr),
            n_items=float(sum(self.objective.n_items(b) for b in micro)),
        )
        for key in ("n_tokens", "n_padded", "n_truncated"):
            metrics[key] = float(sum(int(b.get(key, 0)) for b in micro))
        return metrics

    # ----------------------------------------------------------------------------------- evaluate
    def predict_records(
        self, records: Sequence[Any], *, batch_size: int | None = None, fp32: bool = True
    ) -> list[dict[str, torch.Tensor]]:
        """Run the model over ``records`` in length-sorted batches; per batch: ``Objective.predict``'s tensors.

        ``fp32`` (the default for validation) runs without autocast: bf16 rounds rewards to ~3 significant
        digits, which turns close pairs into ties and ties count as errors in accuracy.
        """
        return validation.predict_records(
            self.train_model,
            self.objective,
            self.tokenizer,
            records,
            max_len_tokens=self.cfg.data.max_len_tokens,
            batch_size=batch_size or max(2 * self.cfg.train.batch_size, 8),
            device=self.device,
            autocast=None if fp32 else self._autocast,
        )

    def evaluate(self, records: Sequence[Any] | None = None) -> dict[str, float]:
        """val_loss, the objective's metrics (val_accuracy, val_nll, val_ece, ...), val_reward_mean/std."""
        records = self.val_records if records is None else records
        return validation.validation_metrics(self.objective, self.predict_records(records), records) if records else {}

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Loop position and early-stopping state (JSON-serialisable)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement,
            "history": self.history,
            # the sampler's own position format, for readers of the checkpoint; resume uses epoch + batch_index
            "sampler": {
                "epoch": self.epoch,
                "position": self.batch_index,
                "seed": self.cfg.train.seed,
                "world_size": self.world_size,
            },
            "precision": self.precision,
            "world_size": self.world_size,
            "fsdp": fsdp.is_sharded(self.model),  # optimizer.pt keyed by parameter name (FSDP) or by position
        }

    def save_checkpoint(self, path: str | Path | None = None) -> str | None:
        """Write a resumable checkpoint folder (default ``<output_dir>/checkpoints/step_<N>``) and return its path.

        FSDP-sharded model: every rank must call it (the full state is gathered); rank 0 writes, the others get None.
        """
        written = ckpt.save_checkpoint(
            path if path is not None else ckpt.checkpoint_path(self.cfg.train.output_dir, self.step),
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            best_state=self.best_state,
            trainer_state=self.state_dict(),
            config=asdict(self.cfg),
            is_main=self.is_main,
        )
        if written is not None:
            self.last_checkpoint = written
        return written

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimiser, scheduler, scaler, RNG and loop position from a checkpoint folder."""
        state, self.best_state = ckpt.load_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            device=self.device,
        )
        self.step, self.epoch, self.batch_index = state["step"], state["epoch"], state["batch_index"]
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.history = state["history"]
        logger.info("resumed from %s: step %d, epoch %d, batch %d", path, self.step, self.epoch, self.batch_index)

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, resume_from: str | Path | None = None) -> FitResult:
        """Train until epochs / max_steps / early stopping; restore the best weights; store reward stats in metadata."""
        tc = self.cfg.train
        if resume_from is None and tc.resume:
            resume_from = ckpt.latest_checkpoint(tc.output_dir)
            if resume_from is None:
                logger.info("train.resume=true but no checkpoint under %s/checkpoints: starting fresh", tc.output_dir)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        bar = self._progress_bar()
        totals = {"time": 0.0, "cpu": 0.0, "items": 0.0, "tokens": 0.0, "padded": 0.0, "truncated": 0.0}
        window: list[dict[str, float]] = []
        stopped_early = False
        try:
            while self.step < self.total_steps and self.epoch < _epoch_limit(tc, self.steps_per_epoch):
                batches = self._epoch_batches(self.epoch)
                while self.batch_index < len(batches) and self.step < self.total_steps and not stopped_early:
                    group = batches[self.batch_index : self.batch_index + tc.grad_accum_steps]
                    t0, c0 = time.perf_counter(), time.process_time()
                    metrics = self.train_step([self.collate(idx) for idx in group])
                    dt = time.perf_counter() - t0
                    totals["cpu"] += time.process_time() - c0
                    self.batch_index += len(group)
                    self.step += 1
                    totals["time"] += dt
                    for total, key in (
                        ("items", "n_items"),
                        ("tokens", "n_tokens"),
                        ("padded", "n_padded"),
                        ("truncated", "n_truncated"),
                    ):
                        totals[total] += metrics[key]
                    metrics.update(step_rates(metrics, dt))
                    window.append(metrics)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(postfix(metrics), refresh=False)
                    if self.step % tc.log_every_steps == 0 or self.step == self.total_steps:
                        self._report_steps(window)
                        window = []
                    epoch_done = self.batch_index >= len(batches)
                    if self._due(tc.eval_every_steps, epoch_done) and self.val_records and self._run_eval():
                        stopped_early = True
                    if epoch_done:
                        self.epoch += 1
                        self.batch_index = 0
                    if self._due(tc.checkpoint_every_steps, epoch_done):
                        self._checkpoint()
                if stopped_early:
                    break
        except StopTraining:
            stopped_early = True
            logger.info("a callback stopped training at step %d", self.step)
        finally:
            if bar is not None:
                bar.close()
        if window:
            self._report_steps(window)
        if not self.history or self.history[-1].get("step") != self.step:
            self._run_eval(final=True)
        result = self._finish(stopped_early, totals, resume_from)
        self._emit("on_fit_end", result)
        return result

    def _finish(self, stopped_early: bool, totals: dict[str, float], resume_from: Any) -> FitResult:
        """Restore the best weights (train.restore_best), store reward statistics, and build the FitResult."""
        tc, final_step = self.cfg.train, self.step
        if tc.restore_best and self.best_state is not None and self.best_step != self.step:
            fsdp.load_model_state_dict(self.model, self.best_state, device=self.device)
            final_step = self.best_step
            logger.info(
                "restored the best weights (step %d, %s=%.4f)",
                self.best_step,
                tc.early_stopping_metric,
                self.best_metric,
            )
        # The weights left in the model were evaluated at final_step already (fp32, deterministic): reuse that.
        evaluated = [h for h in self.history if h.get("step") == final_step]
        if evaluated:
            final = {k: v for k, v in evaluated[-1].items() if k not in ("step", "epoch")}
        else:
            final = self.evaluate() if self.val_records else {}
        self.objective.finish(self.model)
        self.store_reward_stats()
        seconds = totals["time"]
        result = FitResult(
            steps=self.step,
            epochs=self.epoch + (self.batch_index / max(1, self.batches_per_epoch)),
            stopped_early=stopped_early,
            best_metric=self.best_metric,
            best_step=self.best_step,
            final_metrics=final,
            history=list(self.history),
            train_time_s=seconds,
            pairs_per_s=totals["items"] * self.world_size / seconds if seconds else 0.0,
            tokens_per_s=totals["tokens"] * self.world_size / seconds if seconds else 0.0,
            padding_fraction=totals["padded"] / max(1.0, totals["padded"] + totals["tokens"]),
            n_truncated=int(totals["truncated"]),
            last_checkpoint=self.last_checkpoint,
            resumed_from=str(resume_from) if resume_from is not None else None,
            train_cpu_s=totals["cpu"],
        )
        if self.is_main:
            logger.info(
                "fit: %d steps in %.1fs of training, %.1f %s/s, %.0f tokens/s, padding %.1f%%, %d truncated "
                "sequences; %s",
                result.steps,
                result.train_time_s,
                result.pairs_per_s,
                self.kind,
                result.tokens_per_s,
                100 * result.padding_fraction,
                result.n_truncated,
                ", ".join(f"{k}={v:.4f}" for k, v in final.items() if not k.endswith(("_low", "_high"))),
            )
        return result

    def _due(self, every: int | None, epoch_done: bool) -> bool:
        """Evaluation / checkpoint cadence: every ``every`` steps, else at the end of each epoch."""
        return self.step % every == 0 if every is not None else epoch_done

    def _checkpoint(self) -> None:
        # Every rank gets on_checkpoint (Ray Train's report() is a barrier all workers must reach) and enters
        # save_checkpoint (under FSDP gathering the full state is a collective); only rank 0 writes the folder,
        # the others get path=None.
        path = self.save_checkpoint()
        metrics = dict(self.history[-1]) if self.history and self.history[-1].get("step") == self.step else {}
        metrics["step"] = float(self.step)
        self._emit("on_checkpoint", self.step, path, metrics)

    def _run_eval(self, *, final: bool = False) -> bool:
        """Evaluate, update best / patience; True when early stopping says stop."""
        tc = self.cfg.train
        metrics = self.evaluate()
        if not metrics:
            return False
        metrics["step"], metrics["epoch"] = float(self.step), float(self.epoch)
        self.history.append(metrics)
        name = tc.early_stopping_metric
        if name not in metrics:
            raise ConfigError(
                f"train.early_stopping_metric={name!r} is not a validation metric; known: {', '.join(sorted(metrics))}"
            )
        value = metrics[name]
        if self.best_metric is None:
            better = True
        else:
            better = value > self.best_metric if tc.early_stopping_mode == "max" else value < self.best_metric
        if better and not math.isnan(value):
            self.best_metric, self.best_step = value, self.step
            self.evals_without_improvement = 0
            if tc.restore_best:
                self.best_state = fsdp.cpu_model_state_dict(self.model)  # FSDP: gathered on rank 0 (all ranks call)
        else:
            self.evals_without_improvement += 1
        if self.is_main:
            shown = {k: v for k, v in metrics.items() if k.startswith("val_") and not k.endswith(("_low", "_high"))}
            logger.info("eval at step %d: %s", self.step, ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
        self._emit("on_eval", self.step, metrics)
        if not final and tc.patience is not None and self.evals_without_improvement >= tc.patience:
            logger.info(
                "early stopping at step %d: %s has not improved for %d evaluations (best %.4f at step %s)",
                self.step,
                name,
                tc.patience,
                self.best_metric,
                self.best_step,
            )
            return True
        return False

    def _report_steps(self, window: list[dict[str, float]]) -> None:
        mean = window_mean(window)
        if self.is_main:
            logger.info(step_line(self.step, self.total_steps, mean))
        self._emit("on_step", self.step, mean)

    def _emit(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(*args)

    def _progress_bar(self) -> Any:
        return progress_bar(self.total_steps, self.step, enabled=self.is_main and self.cfg.train.progress)

    # ------------------------------------------------------------------------------- after training
    def store_reward_stats(self, max_sequences: int = 1024) -> None:
        """Reward mean/std over (a capped, seeded sample of) training rewards, plus reference histograms, into
        metadata.

        Runs at the training precision: mean and std do not need more than bf16 gives, and this runs on up to
        ``max_sequences`` texts at the end of every fit.
        """
        meta = getattr(self.model, "metadata", None)
        if meta is None:
            return
        records = validation.reward_sample(
            self.train_records, self.objective, max_sequences=max_sequences, seed=self.cfg.train.seed
        )
        rewards = self.objective.rewards(self.predict_records(records, fp32=False))
        validation.store_reward_stats(meta, rewards, self._lengths(records))
        logger.info(
            "reward normalisation over %d training rewards: mean %.4f std %.4f",
            rewards.numel(),
            meta.reward_mean,
            meta.reward_std,
        )


# ---------------------------------------------------------------------------------------- helpers
def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _epoch_limit(tc: Any, steps_per_epoch: int) -> int:
    if tc.max_steps is not None:
        return math.ceil(tc.max_steps / max(1, steps_per_epoch)) + 1
    return tc.epochs
